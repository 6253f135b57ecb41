//! One `[services.NAME]` table resolved: defaults filled in, every key checked, with its
//! proxy limits and Docker settings.

use crate::overlay::{overlay_health, overlay_proxy};
use crate::raw::*;
use crate::resolve::*;
use crate::units::ByteSize;
use crate::{Diagnostic, Health, Probe, ProxyLimits, RuntimeKind, Service, UnderscoreHeaders};
use std::net::SocketAddr;
use std::time::Duration;
use toml::Spanned;

pub(crate) fn resolve_service(
    key: &Spanned<String>,
    raw: &RawService,
    defaults: &RawDefaults,
    known: &[String],
    platform_name: &str,
    errors: &mut Vec<Diagnostic>,
) -> Option<Service> {
    let name = key.get_ref().clone();
    let before = errors.len();
    if !valid_name(&name) {
        errors.push(
            Diagnostic::new(format!("invalid service name {name:?}"), Some(key.span()))
                .hint("use letters, digits, '-' and '_' only"),
        );
    }
    let runtime_value = raw.runtime.as_ref().or(defaults.runtime.as_ref());
    let runtime = match runtime_value.map(|r| (r.get_ref().as_str(), r.span())) {
        None | Some(("process", _)) => RuntimeKind::Process,
        Some(("docker", _)) => RuntimeKind::Docker,
        Some(("swarm", _)) => RuntimeKind::Swarm,
        Some((other, span)) => {
            errors.push(
                Diagnostic::new(
                    format!("unknown runtime {other:?} for service {name:?}"),
                    Some(span),
                )
                .hint("use runtime = \"process\" (the default), \"docker\" or \"swarm\""),
            );
            RuntimeKind::Process
        }
    };
    let docker = if runtime.is_container() {
        let d = defaults;
        let effective = RawService {
            image: raw.image.clone().or_else(|| d.image.clone()),
            container_port: raw
                .container_port
                .clone()
                .or_else(|| d.container_port.clone()),
            entrypoint: raw.entrypoint.clone().or_else(|| d.entrypoint.clone()),
            memory: raw.memory.or(d.memory),
            cpus: raw.cpus.clone().or_else(|| d.cpus.clone()),
            user: raw.user.clone().or_else(|| d.user.clone()),
            read_only: raw.read_only.or(d.read_only),
            volumes: raw.volumes.clone().or_else(|| d.volumes.clone()),
            network: raw.network.clone().or_else(|| d.network.clone()),
            pull: raw.pull.clone().or_else(|| d.pull.clone()),
            ..Default::default()
        };
        resolve_docker(key, &effective, platform_name, errors)
    } else {
        None
    };
    let swarm = (runtime == RuntimeKind::Swarm).then(|| {
        resolve_swarm(
            &crate::overlay::overlay_swarm(defaults.swarm.clone(), raw.swarm.clone()),
            errors,
        )
    });
    let command = match &raw.command {
        // A container's command is optional: the image's CMD runs.
        None if runtime.is_container() => vec![],
        Some(c) if runtime.is_container() => c.get_ref().clone(),
        Some(c) if c.get_ref().is_empty() || c.get_ref()[0].trim().is_empty() => {
            errors.push(
                Diagnostic::new(format!("service {name:?} has an empty command"), Some(c.span()))
                    .hint("command is the program and its arguments, such as [\"tcf-demo\", \"--port-env\", \"PORT\"]"),
            );
            vec![]
        }
        Some(c) => c.get_ref().clone(),
        None => {
            errors.push(
                Diagnostic::new(format!("service {name:?} has no command"), Some(key.span()))
                    .hint("add command = [\"program\", \"arg\", ...]; {version}, {service} and {instance} are replaced"),
            );
            vec![]
        }
    };
    let version = match &raw.version {
        Some(v) if v.get_ref().trim().is_empty() => {
            errors.push(
                Diagnostic::new("version must not be empty", Some(v.span()))
                    .hint("set version = \"v1\""),
            );
            String::new()
        }
        Some(v) => {
            if let Err(e) = crate::check_version(v.get_ref()) {
                errors.push(
                    Diagnostic::new(e, Some(v.span())).hint("write it as \"v1\" or \"1.2.3\""),
                );
            }
            v.get_ref().clone()
        }
        None => {
            errors.push(
                Diagnostic::new(format!("service {name:?} has no version"), Some(key.span())).hint(
                    "add version = \"v1\": the version `up` starts when nothing was deployed yet",
                ),
            );
            String::new()
        }
    };
    let listen = match &raw.listen {
        Some(l) => match l.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(
                    Diagnostic::new(format!("invalid listen address {:?}", l.get_ref()), Some(l.span()))
                        .hint("write an IP address and a port, such as \"127.0.0.1:3000\" or \"0.0.0.0:8080\""),
                );
                None
            }
        },
        None => {
            errors.push(
                Diagnostic::new(
                    format!("service {name:?} has no listen address"),
                    Some(key.span()),
                )
                .hint("add listen = \"127.0.0.1:PORT\": the public address our proxy serves"),
            );
            None
        }
    };
    let instances = raw.instances.clone().or_else(|| defaults.instances.clone());
    let instances = at_least_one(&instances, "instances", errors).unwrap_or(1);
    if instances > MAX_INSTANCES {
        errors.push(
            Diagnostic::new(
                format!("instances = {instances} is more than one platform runs ({MAX_INSTANCES} per service)"),
                raw.instances.as_ref().map(|i| i.span()).or(Some(key.span())),
            )
            .hint("run fewer, larger instances, or spread the service over a Swarm"),
        );
    }
    for (var, _) in raw.env.iter().chain(defaults.env.iter()) {
        if var == "PORT" || var.starts_with("TCF_") {
            errors.push(
                Diagnostic::new(
                    format!("env {var} is set by the platform for every instance and would be overridden"),
                    Some(key.span()),
                )
                .hint("use another name; PORT is the instance's own port, TCF_SERVICE/TCF_VERSION/TCF_INSTANCE say which instance it is"),
            );
        }
    }
    for dep in &raw.depends_on {
        let d = dep.get_ref();
        if d == &name {
            errors.push(
                Diagnostic::new(
                    format!("service {name:?} depends on itself"),
                    Some(dep.span()),
                )
                .hint("remove it from depends_on"),
            );
        } else if !known.iter().any(|k| k == d) {
            errors.push(
                Diagnostic::new(
                    format!("service {name:?} depends on unknown {d:?}"),
                    Some(dep.span()),
                )
                .hint(if known.is_empty() {
                    "define it under [services] or [dependencies]".to_string()
                } else {
                    format!("known services and dependencies: {}", known.join(", "))
                }),
            );
        }
    }
    let h = overlay_health(defaults.health.clone(), raw.health.clone());
    let probe = match h.probe.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
        None | Some(("http", _)) => {
            let path = h.path.clone().unwrap_or_else(|| "/health".to_string());
            if !path.starts_with('/') {
                errors.push(
                    Diagnostic::new(
                        format!("health path {path:?} must start with '/'"),
                        Some(key.span()),
                    )
                    .hint("write it as \"/health\""),
                );
            }
            Probe::Http { path }
        }
        Some(("tcp", _)) => Probe::Tcp,
        Some((other, span)) => {
            errors.push(
                Diagnostic::new(format!("unknown health probe {other:?}"), Some(span))
                    .hint("use probe = \"http\" (GET path, 2xx passes) or probe = \"tcp\" (connect passes)"),
            );
            Probe::Tcp
        }
    };
    let health = Health {
        probe,
        interval: at_least(
            h.interval.map_or(Duration::from_secs(1), |d| d.0),
            Duration::from_millis(50),
            &format!("services.{}.health.interval", key.get_ref()),
            Some(key.span()),
            errors,
        ),
        timeout: at_least(
            h.timeout.map_or(Duration::from_secs(2), |d| d.0),
            Duration::from_millis(10),
            &format!("services.{}.health.timeout", key.get_ref()),
            Some(key.span()),
            errors,
        ),
        healthy_threshold: at_least_one(&h.healthy_threshold, "healthy_threshold", errors)
            .unwrap_or(1),
        unhealthy_threshold: at_least_one(&h.unhealthy_threshold, "unhealthy_threshold", errors)
            .unwrap_or(3),
        panic_threshold: match &h.panic_threshold {
            Some(p) if *p.get_ref() > 100 => {
                errors.push(
                    Diagnostic::new(
                        format!(
                            "panic_threshold is a percentage, {} is over 100",
                            p.get_ref()
                        ),
                        Some(p.span()),
                    )
                    .hint("set it between 0 (never route to unhealthy instances) and 100"),
                );
                crate::DEFAULT_PANIC_THRESHOLD
            }
            Some(p) => *p.get_ref(),
            None => crate::DEFAULT_PANIC_THRESHOLD,
        },
        start_period: h.start_period.map_or(Duration::ZERO, |d| d.0),
        deadline: h.deadline.map_or(Duration::from_secs(30), |d| d.0),
    };
    let mut env = defaults.env.clone();
    env.extend(raw.env.clone());
    if errors.len() > before {
        return None;
    }
    let name_for_proxy = name.clone();
    Some(Service {
        name,
        runtime,
        command,
        version,
        listen: listen?,
        tls: None,
        instances,
        env,
        depends_on: raw.depends_on.iter().map(|d| d.get_ref().clone()).collect(),
        health,
        stop_timeout: at_most(
            raw.stop_timeout
                .or(defaults.stop_timeout)
                .map_or(Duration::from_secs(10), |d| d.0),
            Duration::from_secs(3600),
            &format!("services.{}.stop_timeout", key.get_ref()),
            Some(key.span()),
            errors,
        ),
        max_request_body: raw
            .max_request_body
            .or(defaults.max_request_body)
            .map_or(16 << 20, |b| b.0),
        upstream_timeout: at_least(
            raw.upstream_timeout
                .or(defaults.upstream_timeout)
                .map_or(Duration::from_secs(60), |d| d.0),
            Duration::from_millis(1),
            &format!("services.{}.upstream_timeout", key.get_ref()),
            Some(key.span()),
            errors,
        ),
        connect_timeout: raw
            .connect_timeout
            .or(defaults.connect_timeout)
            .map_or(Duration::from_secs(5), |d| d.0),
        log_max_size: {
            let size = raw
                .log_max_size
                .or(defaults.log_max_size)
                .map_or(10 << 20, |b| b.0);
            if !(4 << 10..=100 << 30).contains(&size) {
                errors.push(
                    Diagnostic::new(
                        format!("services.{}.log_max_size = {size} bytes is out of range", key.get_ref()),
                        Some(key.span()),
                    )
                    .hint("use between \"4KiB\" and \"100GiB\" (each instance keeps its log and one rotated file)"),
                );
            }
            size
        },
        proxy: resolve_proxy_limits(
            &name_for_proxy,
            &overlay_proxy(defaults.proxy.clone(), raw.proxy.clone()),
            errors,
        )?,
        docker,
        swarm,
    })
}

/// `[services.NAME.proxy]` over `[defaults.proxy]`, with nginx-like defaults and bounds that
/// keep the proxy safe (hyper cannot take a request line of 64 KiB or more).
pub(crate) fn resolve_proxy_limits(
    service: &str,
    raw: &RawProxyLimits,
    errors: &mut Vec<Diagnostic>,
) -> Option<ProxyLimits> {
    let before = errors.len();
    let mut bytes = |v: Option<ByteSize>, key: &str, default: u64, min: u64, max: u64| {
        let n = v.map_or(default, |b| b.0);
        if !(min..=max).contains(&n) {
            errors.push(
                Diagnostic::new(
                    format!(
                        "proxy.{key} of service {service:?} is {n} bytes, outside {min}..={max}"
                    ),
                    None,
                )
                .hint(format!("the default is {default} bytes")),
            );
        }
        n
    };
    let max_header_size = bytes(
        raw.max_header_size,
        "max_header_size",
        32 << 10,
        1 << 10,
        1 << 20,
    );
    let max_request_line = bytes(
        raw.max_request_line,
        "max_request_line",
        8 << 10,
        256,
        60 << 10,
    );
    let max_headers = match &raw.max_headers {
        Some(n) if !(1..=1000).contains(n.get_ref()) => {
            errors.push(
                Diagnostic::new(
                    "proxy.max_headers must be between 1 and 1000",
                    Some(n.span()),
                )
                .hint("the default is 100 (more costs an allocation per request head)"),
            );
            100
        }
        Some(n) => *n.get_ref(),
        None => 100,
    };
    let headers_with_underscores = match raw
        .headers_with_underscores
        .as_ref()
        .map(|v| (v.get_ref().as_str(), v.span()))
    {
        None | Some(("forward", _)) => UnderscoreHeaders::Forward,
        Some(("drop", _)) => UnderscoreHeaders::Drop,
        Some(("refuse", _)) => UnderscoreHeaders::Refuse,
        Some((other, span)) => {
            errors.push(
                Diagnostic::new(
                    format!("unknown headers_with_underscores {other:?}"),
                    Some(span),
                )
                .hint("use \"forward\" (the default), \"drop\" or \"refuse\""),
            );
            UnderscoreHeaders::Forward
        }
    };
    let tunnel_idle_timeout = raw
        .tunnel_idle_timeout
        .map_or(Duration::from_secs(300), |d| d.0);
    if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&tunnel_idle_timeout) {
        errors.push(
            Diagnostic::new(
                format!(
                    "proxy.tunnel_idle_timeout of service {service:?} must be between 1s and 24h"
                ),
                None,
            )
            .hint("the default is \"5m\""),
        );
    }
    (errors.len() == before).then_some(ProxyLimits {
        max_header_size,
        max_headers,
        max_request_line,
        headers_with_underscores,
        tunnel_idle_timeout,
        access_log: raw.access_log.unwrap_or(false),
        access_log_query: raw.access_log_query.unwrap_or(false),
    })
}

pub(crate) fn resolve_docker(
    key: &Spanned<String>,
    raw: &RawService,
    platform: &str,
    errors: &mut Vec<Diagnostic>,
) -> Option<crate::DockerSettings> {
    let name = key.get_ref();
    let image = match &raw.image {
        Some(i) if !i.get_ref().trim().is_empty() => i.get_ref().clone(),
        _ => {
            errors.push(
                Diagnostic::new(
                    format!("service {name:?} runs in Docker but has no image"),
                    Some(key.span()),
                )
                .hint("add image = \"tcf/NAME:{version}\""),
            );
            return None;
        }
    };
    let Some(port) = &raw.container_port else {
        errors.push(
            Diagnostic::new(
                format!("service {name:?} runs in Docker but has no container_port"),
                Some(key.span()),
            )
            .hint(
                "add container_port = 8080: the port the service listens on inside its container",
            ),
        );
        return None;
    };
    if let Some(c) = &raw.cpus {
        if *c.get_ref() <= 0.0 {
            errors.push(
                Diagnostic::new("cpus must be more than 0", Some(c.span()))
                    .hint("for example cpus = 0.5"),
            );
        }
    }
    let pull_missing = match raw.pull.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
        None | Some(("never", _)) => false,
        Some(("missing", _)) => true,
        Some((other, span)) => {
            errors.push(
                Diagnostic::new(format!("unknown pull policy {other:?}"), Some(span))
                    .hint("use pull = \"never\" (images are built locally) or \"missing\""),
            );
            false
        }
    };
    Some(crate::DockerSettings {
        image,
        container_port: *port.get_ref(),
        entrypoint: raw.entrypoint.clone(),
        memory: raw.memory.map(|m| m.0),
        cpus: raw.cpus.as_ref().map(|c| *c.get_ref()),
        user: raw.user.clone(),
        read_only: raw.read_only.unwrap_or(false),
        volumes: raw.volumes.clone().unwrap_or_default(),
        network: raw
            .network
            .clone()
            .unwrap_or_else(|| format!("tcf-{platform}")),
        pull_missing,
    })
}

pub(crate) fn resolve_swarm(raw: &RawSwarm, errors: &mut Vec<Diagnostic>) -> crate::SwarmSettings {
    use crate::SwarmRestart;
    let restart = match raw
        .restart
        .as_ref()
        .map(|r| (r.get_ref().as_str(), r.span()))
    {
        None | Some(("any", _)) => SwarmRestart::Any,
        Some(("on-failure", _)) => SwarmRestart::OnFailure,
        Some(("none", _)) => SwarmRestart::None,
        Some((other, span)) => {
            errors.push(
                Diagnostic::new(
                    format!("unknown swarm restart policy {other:?}"),
                    Some(span),
                )
                .hint("use restart = \"any\" (the default), \"on-failure\" or \"none\""),
            );
            SwarmRestart::Any
        }
    };
    let mut preferences = Vec::new();
    for p in raw.preferences.iter().flatten() {
        match p.get_ref().split_once('=') {
            Some(("spread", descriptor)) if !descriptor.trim().is_empty() => {
                preferences.push(descriptor.trim().to_string())
            }
            _ => errors.push(
                Diagnostic::new(
                    format!("unknown placement preference {:?}", p.get_ref()),
                    Some(p.span()),
                )
                .hint("Swarm knows one kind: \"spread=node.labels.zone\""),
            ),
        }
    }
    crate::SwarmSettings {
        constraints: raw.constraints.clone().unwrap_or_default(),
        preferences,
        restart,
        restart_delay: raw.restart_delay.map_or(Duration::from_secs(1), |d| d.0),
        restart_max_attempts: raw.restart_max_attempts.unwrap_or(0),
    }
}
