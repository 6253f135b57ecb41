//! `[environments.NAME]` overlays: an environment's keys laid over the file's, key by key.

use crate::raw::*;
use crate::Diagnostic;

pub(crate) fn apply_environment(file: &mut RawFile, env_name: &str, errors: &mut Vec<Diagnostic>) {
    let Some(key) = file
        .environments
        .keys()
        .find(|k| k.get_ref() == env_name)
        .cloned()
    else {
        let known: Vec<&str> = file
            .environments
            .keys()
            .map(|k| k.get_ref().as_str())
            .collect();
        errors.push(
            Diagnostic::new(format!("unknown environment {env_name:?}"), None).hint(
                if known.is_empty() {
                    "this file has no [environments.NAME] tables".to_string()
                } else {
                    format!("known environments: {}", known.join(", "))
                },
            ),
        );
        return;
    };
    let Some(overlay) = file.environments.remove(&key) else {
        return;
    };
    if let Some(p) = overlay.platform {
        if let Some(name) = p.name {
            file.platform.name = name;
        }
        if p.state_dir.is_some() {
            file.platform.state_dir = p.state_dir;
        }
    }
    if let Some(d) = overlay.defaults {
        let base = std::mem::take(&mut file.defaults);
        file.defaults = overlay_defaults(base, d);
    }
    for (name, over) in overlay.services {
        match file
            .services
            .keys()
            .find(|k| k.get_ref() == name.get_ref())
            .cloned()
        {
            Some(k) => {
                let base = file.services.remove(&k).unwrap_or_default();
                file.services.insert(k, overlay_service(base, over));
            }
            None => errors.push(
                Diagnostic::new(
                    format!(
                        "environment {env_name:?} overrides unknown service {:?}",
                        name.get_ref()
                    ),
                    Some(name.span()),
                )
                .hint("an environment can only change services defined in [services]"),
            ),
        }
    }
    for (name, over) in overlay.dependencies {
        match file
            .dependencies
            .keys()
            .find(|k| k.get_ref() == name.get_ref())
            .cloned()
        {
            Some(k) => {
                let base = file.dependencies.remove(&k).unwrap_or_default();
                file.dependencies.insert(
                    k,
                    RawDependency {
                        kind: over.kind.or(base.kind),
                        address: over.address.or(base.address),
                        url: over.url.or(base.url),
                        interval: over.interval.or(base.interval),
                        timeout: over.timeout.or(base.timeout),
                    },
                );
            }
            None => errors.push(
                Diagnostic::new(
                    format!(
                        "environment {env_name:?} overrides unknown dependency {:?}",
                        name.get_ref()
                    ),
                    Some(name.span()),
                )
                .hint("an environment can only change dependencies defined in [dependencies]"),
            ),
        }
    }
}

pub(crate) fn overlay_health(base: RawHealth, over: RawHealth) -> RawHealth {
    RawHealth {
        probe: over.probe.or(base.probe),
        path: over.path.or(base.path),
        interval: over.interval.or(base.interval),
        timeout: over.timeout.or(base.timeout),
        healthy_threshold: over.healthy_threshold.or(base.healthy_threshold),
        unhealthy_threshold: over.unhealthy_threshold.or(base.unhealthy_threshold),
        panic_threshold: over.panic_threshold.or(base.panic_threshold),
        start_period: over.start_period.or(base.start_period),
        deadline: over.deadline.or(base.deadline),
    }
}

pub(crate) fn overlay_proxy(base: RawProxyLimits, over: RawProxyLimits) -> RawProxyLimits {
    RawProxyLimits {
        max_header_size: over.max_header_size.or(base.max_header_size),
        max_headers: over.max_headers.or(base.max_headers),
        max_request_line: over.max_request_line.or(base.max_request_line),
        headers_with_underscores: over
            .headers_with_underscores
            .or(base.headers_with_underscores),
        tunnel_idle_timeout: over.tunnel_idle_timeout.or(base.tunnel_idle_timeout),
        access_log: over.access_log.or(base.access_log),
        access_log_query: over.access_log_query.or(base.access_log_query),
    }
}

pub(crate) fn overlay_defaults(base: RawDefaults, over: RawDefaults) -> RawDefaults {
    let mut env = base.env;
    env.extend(over.env);
    RawDefaults {
        runtime: over.runtime.or(base.runtime),
        instances: over.instances.or(base.instances),
        stop_timeout: over.stop_timeout.or(base.stop_timeout),
        env,
        health: overlay_health(base.health, over.health),
        max_request_body: over.max_request_body.or(base.max_request_body),
        upstream_timeout: over.upstream_timeout.or(base.upstream_timeout),
        connect_timeout: over.connect_timeout.or(base.connect_timeout),
        log_max_size: over.log_max_size.or(base.log_max_size),
        proxy: overlay_proxy(base.proxy, over.proxy),
        image: over.image.or(base.image),
        container_port: over.container_port.or(base.container_port),
        entrypoint: over.entrypoint.or(base.entrypoint),
        memory: over.memory.or(base.memory),
        cpus: over.cpus.or(base.cpus),
        user: over.user.or(base.user),
        read_only: over.read_only.or(base.read_only),
        volumes: over.volumes.or(base.volumes),
        network: over.network.or(base.network),
        pull: over.pull.or(base.pull),
        swarm: overlay_swarm(base.swarm, over.swarm),
    }
}

pub(crate) fn overlay_service(base: RawService, over: RawService) -> RawService {
    let mut env = base.env;
    env.extend(over.env);
    RawService {
        runtime: over.runtime.or(base.runtime),
        command: over.command.or(base.command),
        version: over.version.or(base.version),
        listen: over.listen.or(base.listen),
        tls: over.tls.or(base.tls),
        http_listen: over.http_listen.or(base.http_listen),
        hsts: over.hsts.or(base.hsts),
        instances: over.instances.or(base.instances),
        env,
        depends_on: if over.depends_on.is_empty() {
            base.depends_on
        } else {
            over.depends_on
        },
        health: overlay_health(base.health, over.health),
        stop_timeout: over.stop_timeout.or(base.stop_timeout),
        max_request_body: over.max_request_body.or(base.max_request_body),
        upstream_timeout: over.upstream_timeout.or(base.upstream_timeout),
        connect_timeout: over.connect_timeout.or(base.connect_timeout),
        log_max_size: over.log_max_size.or(base.log_max_size),
        proxy: overlay_proxy(base.proxy, over.proxy),
        image: over.image.or(base.image),
        container_port: over.container_port.or(base.container_port),
        entrypoint: over.entrypoint.or(base.entrypoint),
        memory: over.memory.or(base.memory),
        cpus: over.cpus.or(base.cpus),
        user: over.user.or(base.user),
        read_only: over.read_only.or(base.read_only),
        volumes: over.volumes.or(base.volumes),
        network: over.network.or(base.network),
        pull: over.pull.or(base.pull),
        swarm: overlay_swarm(base.swarm, over.swarm),
    }
}

pub(crate) fn overlay_swarm(base: RawSwarm, over: RawSwarm) -> RawSwarm {
    RawSwarm {
        constraints: over.constraints.or(base.constraints),
        preferences: over.preferences.or(base.preferences),
        restart: over.restart.or(base.restart),
        restart_delay: over.restart_delay.or(base.restart_delay),
        restart_max_attempts: over.restart_max_attempts.or(base.restart_max_attempts),
    }
}
