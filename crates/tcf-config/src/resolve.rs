//! From the file as written to the effective [`Config`]: overlay, defaults, checks.

use crate::raw::*;
use crate::units::ByteSize;
use crate::{
    Config, Daemon, Dependency, DependencyKind, Diagnostic, Health, Platform, Probe, ProxyLimits,
    RuntimeKind, Service, UnderscoreHeaders,
};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

const KEYS_HINT: &str = "check the spelling; docs/configuration.md lists every key";
/// The longest path a Unix socket address can hold on Linux (sun_path minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Resolve the text of a config file at `path` (absolute) into the effective config.
pub fn resolve(
    path: &Path,
    source: &str,
    environment: Option<&str>,
) -> Result<Config, Vec<Diagnostic>> {
    let mut file: RawFile = toml::from_str(source).map_err(|e| vec![parse_diagnostic(&e)])?;
    let mut errors = Vec::new();

    if let Some(env_name) = environment {
        apply_environment(&mut file, env_name, &mut errors);
    }

    let base_dir = path.parent().unwrap_or(Path::new("."));
    let name = file.platform.name.get_ref().trim().to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        errors.push(
            Diagnostic::new(
                format!("invalid platform name {name:?}"),
                Some(file.platform.name.span()),
            )
            .hint("use letters, digits, '-' and '_' only; it names containers, networks and files"),
        );
    }
    let state_dir = base_dir.join(file.platform.state_dir.as_deref().unwrap_or(".tcf"));
    let socket = state_dir.join(file.daemon.socket.as_deref().unwrap_or("tcf.sock"));
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        errors.push(
            Diagnostic::new(
                format!(
                    "the API socket path {} is {} bytes long; Unix sockets allow at most {MAX_SOCKET_PATH}",
                    socket.display(),
                    socket.as_os_str().len()
                ),
                None,
            )
            .hint("set [daemon] socket to a shorter absolute path, such as \"/run/tcf/tcf.sock\""),
        );
    }

    let known: Vec<String> = file
        .services
        .keys()
        .chain(file.dependencies.keys())
        .map(|k| k.get_ref().clone())
        .collect();

    let mut dependencies = BTreeMap::new();
    for (key, raw) in &file.dependencies {
        if file.services.keys().any(|s| s.get_ref() == key.get_ref()) {
            errors.push(
                Diagnostic::new(
                    format!("{:?} is both a service and a dependency", key.get_ref()),
                    Some(key.span()),
                )
                .hint("rename one of them; depends_on must name exactly one thing"),
            );
        }
        if let Some(d) = resolve_dependency(key, raw, &mut errors) {
            dependencies.insert(d.name.clone(), d);
        }
    }

    let mut services = BTreeMap::new();
    let mut listeners: HashMap<SocketAddr, (String, std::ops::Range<usize>)> = HashMap::new();
    for (key, raw) in &file.services {
        let Some(svc) = resolve_service(key, raw, &file.defaults, &known, &name, &mut errors)
        else {
            continue;
        };
        let listen_span = raw.listen.as_ref().map(|l| l.span());
        // 0.0.0.0:P takes P on every address, 127.0.0.1:P included: the two cannot both bind.
        let overlapping = listeners.iter().find(|(addr, _)| {
            **addr != svc.listen
                && addr.port() == svc.listen.port()
                && (addr.ip().is_unspecified() || svc.listen.ip().is_unspecified())
        });
        if let Some((addr, (other, _))) = overlapping {
            errors.push(
                Diagnostic::new(
                    format!(
                        "services {other:?} ({addr}) and {:?} ({}) cannot both listen on port {}: an unspecified address takes the port on every address",
                        svc.name,
                        svc.listen,
                        svc.listen.port()
                    ),
                    listen_span.clone(),
                )
                .hint("use another port for one of them"),
            );
        }
        if let Some((other, _)) = listeners.get(&svc.listen) {
            errors.push(
                Diagnostic::new(
                    format!(
                        "services {other:?} and {:?} both listen on {}",
                        svc.name, svc.listen
                    ),
                    listen_span,
                )
                .hint("give each service its own public address"),
            );
        } else {
            listeners.insert(svc.listen, (svc.name.clone(), listen_span.unwrap_or(0..0)));
        }
        services.insert(svc.name.clone(), svc);
    }

    let deploy = resolve_deploy(&file.deploy, &mut errors);
    let hooks = crate::Hooks {
        pre_deploy: file.hooks.pre_deploy.clone().filter(|c| !c.is_empty()),
        post_deploy: file.hooks.post_deploy.clone().filter(|c| !c.is_empty()),
        post_rollback: file.hooks.post_rollback.clone().filter(|c| !c.is_empty()),
        timeout: file.hooks.timeout.map_or(Duration::from_secs(60), |d| d.0),
    };
    let backup = file
        .backup
        .as_ref()
        .and_then(|b| crate::backup::resolve_backup(b, base_dir, &dependencies, &mut errors));
    let monitor = crate::monitor::resolve_monitor(&file.monitor, &mut errors);
    let alerts = crate::monitor::resolve_alerts(
        &file.alerts,
        path.parent().unwrap_or(Path::new("/")),
        &mut errors,
    );
    if errors.is_empty() {
        check_cycles(&file, &mut errors);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Config {
        path: path.to_path_buf(),
        environment: environment.map(str::to_string),
        platform: Platform { name, state_dir },
        daemon: Daemon { socket },
        services,
        dependencies,
        deploy,
        hooks,
        backup,
        monitor,
        alerts,
    })
}

fn resolve_deploy(raw: &RawDeploy, errors: &mut Vec<Diagnostic>) -> crate::DeploySettings {
    use crate::{StickyBy, Strategy};
    let strategy = match &raw.strategy {
        None => Strategy::BlueGreen,
        Some(s) => Strategy::parse(s.get_ref()).unwrap_or_else(|| {
            errors.push(
                Diagnostic::new(
                    format!("unknown deploy strategy {:?}", s.get_ref()),
                    Some(s.span()),
                )
                .hint("use blue_green, canary or rolling"),
            );
            Strategy::BlueGreen
        }),
    };
    let max_error_ratio = match &raw.max_error_ratio {
        Some(r) if !(0.0..=1.0).contains(r.get_ref()) => {
            errors.push(
                Diagnostic::new("max_error_ratio must be between 0 and 1", Some(r.span()))
                    .hint("0.05 reverts when more than 5% of the new colour's answers are 5xx"),
            );
            0.05
        }
        Some(r) => *r.get_ref(),
        None => 0.05,
    };
    let canary_steps = match &raw.canary_steps {
        Some(steps) => {
            let v = steps.get_ref();
            let increasing = v.windows(2).all(|w| w[0] < w[1]);
            if v.is_empty()
                || !increasing
                || v.iter().any(|s| *s == 0 || *s > 100)
                || v.last() != Some(&100)
            {
                errors.push(
                    Diagnostic::new(
                        "canary_steps must rise from above 0 to exactly 100",
                        Some(steps.span()),
                    )
                    .hint(
                        "for example [10, 25, 50, 75, 100] (percent of traffic on the new colour)",
                    ),
                );
            }
            v.clone()
        }
        None => vec![10, 25, 50, 75, 100],
    };
    let sticky = match raw
        .sticky
        .as_ref()
        .map(|s| (s.get_ref().as_str(), s.span()))
    {
        None | Some(("cookie", _)) => StickyBy::Cookie,
        Some(("client_ip", _)) => StickyBy::ClientIp,
        Some((h, _)) if h.starts_with("header:") && h.len() > 7 => {
            StickyBy::Header(h[7..].to_string())
        }
        Some((other, span)) => {
            errors.push(
                Diagnostic::new(format!("unknown sticky mode {other:?}"), Some(span))
                    .hint("use \"cookie\", \"client_ip\" or \"header:NAME\""),
            );
            StickyBy::Cookie
        }
    };
    let max_surge = at_least_one(&raw.max_surge, "max_surge", errors).unwrap_or(1);
    crate::DeploySettings {
        strategy,
        drain_timeout: raw.drain_timeout.map_or(Duration::from_secs(30), |d| d.0),
        upgrade_drain_timeout: raw
            .upgrade_drain_timeout
            .map_or(Duration::from_secs(300), |d| d.0),
        watch: raw.watch.map_or(Duration::from_secs(30), |d| d.0),
        retire_after: raw.retire_after.map_or(Duration::from_secs(300), |d| d.0),
        max_error_ratio,
        max_p99: raw.max_p99.map(|d| d.0),
        min_requests: raw.min_requests.unwrap_or(20),
        canary_steps,
        step_interval: raw.step_interval.map_or(Duration::from_secs(10), |d| d.0),
        sticky,
        max_surge,
        lock_ttl: at_least(
            raw.lock_ttl.map_or(Duration::from_secs(30), |d| d.0),
            Duration::from_secs(1),
            "deploy.lock_ttl",
            None,
            errors,
        ),
        validate: raw.validate.unwrap_or(true),
        backup: raw.backup.unwrap_or(false),
    }
}

fn parse_diagnostic(e: &toml::de::Error) -> Diagnostic {
    let message = e.message().trim().to_string();
    let hint = if message.contains("unknown field") {
        Some(match closest_field(&message) {
            Some(near) => format!("did you mean `{near}`? {KEYS_HINT}"),
            None => KEYS_HINT.to_string(),
        })
    } else if message.contains("missing field") {
        Some("add the key; docs/configuration.md shows an example".to_string())
    } else if message.contains("invalid type") {
        Some("check the value's type against docs/configuration.md".to_string())
    } else {
        None
    };
    Diagnostic {
        message,
        span: e.span(),
        hint,
    }
}

/// For "unknown field `x`, expected one of `a`, `b`": the expected name nearest to `x`.
fn closest_field(message: &str) -> Option<String> {
    let mut names = message.split('`').skip(1).step_by(2);
    let unknown = names.next()?;
    names
        .map(|n| (edit_distance(unknown, n), n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 4))
        .min()
        .map(|(_, n)| n.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

fn apply_environment(file: &mut RawFile, env_name: &str, errors: &mut Vec<Diagnostic>) {
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

fn overlay_health(base: RawHealth, over: RawHealth) -> RawHealth {
    RawHealth {
        probe: over.probe.or(base.probe),
        path: over.path.or(base.path),
        interval: over.interval.or(base.interval),
        timeout: over.timeout.or(base.timeout),
        healthy_threshold: over.healthy_threshold.or(base.healthy_threshold),
        unhealthy_threshold: over.unhealthy_threshold.or(base.unhealthy_threshold),
        start_period: over.start_period.or(base.start_period),
        deadline: over.deadline.or(base.deadline),
    }
}

fn overlay_proxy(base: RawProxyLimits, over: RawProxyLimits) -> RawProxyLimits {
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

fn overlay_defaults(base: RawDefaults, over: RawDefaults) -> RawDefaults {
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
    }
}

fn overlay_service(base: RawService, over: RawService) -> RawService {
    let mut env = base.env;
    env.extend(over.env);
    RawService {
        runtime: over.runtime.or(base.runtime),
        command: over.command.or(base.command),
        version: over.version.or(base.version),
        listen: over.listen.or(base.listen),
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
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The most instances one service may ask for.
pub const MAX_INSTANCES: u32 = 256;

/// A duration above `max` is refused: a stop that may take hours holds up `down` as long.
fn at_most(
    value: Duration,
    max: Duration,
    what: &str,
    span: Option<std::ops::Range<usize>>,
    errors: &mut Vec<Diagnostic>,
) -> Duration {
    if value > max {
        errors.push(
            Diagnostic::new(
                format!(
                    "{what} = \"{}\" is too long",
                    humantime::format_duration(value)
                ),
                span,
            )
            .hint(format!(
                "set it to at most \"{}\"",
                humantime::format_duration(max)
            )),
        );
    }
    value
}

/// A duration below `min` is refused: a `0s` probe interval or lock TTL would make the daemon
/// spin in a loop.
fn at_least(
    value: Duration,
    min: Duration,
    what: &str,
    span: Option<std::ops::Range<usize>>,
    errors: &mut Vec<Diagnostic>,
) -> Duration {
    if value < min {
        errors.push(
            Diagnostic::new(
                format!(
                    "{what} = \"{}\" is too short",
                    humantime::format_duration(value)
                ),
                span,
            )
            .hint(format!(
                "set it to at least \"{}\"",
                humantime::format_duration(min)
            )),
        );
    }
    value
}

fn at_least_one(v: &Option<Spanned<u32>>, what: &str, errors: &mut Vec<Diagnostic>) -> Option<u32> {
    match v {
        Some(s) if *s.get_ref() == 0 => {
            errors.push(
                Diagnostic::new(format!("{what} must be at least 1"), Some(s.span()))
                    .hint("set it to 1 or more"),
            );
            None
        }
        Some(s) => Some(*s.get_ref()),
        None => None,
    }
}

fn resolve_service(
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
        Some((other, span)) => {
            errors.push(
                Diagnostic::new(
                    format!("unknown runtime {other:?} for service {name:?}"),
                    Some(span),
                )
                .hint("use runtime = \"process\" (the default) or \"docker\""),
            );
            RuntimeKind::Process
        }
    };
    let docker = if runtime == RuntimeKind::Docker {
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
    let command = match &raw.command {
        // A container's command is optional: the image's CMD runs.
        None if runtime == RuntimeKind::Docker => vec![],
        Some(c) if runtime == RuntimeKind::Docker => c.get_ref().clone(),
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
    })
}

/// `[services.NAME.proxy]` over `[defaults.proxy]`, with nginx-like defaults and bounds that
/// keep the proxy safe (hyper cannot take a request line of 64 KiB or more).
fn resolve_proxy_limits(
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

fn resolve_dependency(
    key: &Spanned<String>,
    raw: &RawDependency,
    errors: &mut Vec<Diagnostic>,
) -> Option<Dependency> {
    let name = key.get_ref().clone();
    let kind = match raw.kind.as_ref().map(|k| (k.get_ref().as_str(), k.span())) {
        Some(("postgres", _)) => DependencyKind::Postgres,
        Some(("redis", _)) => DependencyKind::Redis,
        Some(("qdrant", _)) => DependencyKind::Qdrant,
        Some(("http", _)) => DependencyKind::Http,
        Some(("tcp", _)) => DependencyKind::Tcp,
        Some((other, span)) => {
            errors.push(
                Diagnostic::new(format!("unknown dependency kind {other:?}"), Some(span))
                    .hint("use one of: postgres, redis, qdrant, http, tcp"),
            );
            return None;
        }
        None => {
            errors.push(
                Diagnostic::new(format!("dependency {name:?} has no kind"), Some(key.span()))
                    .hint("add kind = \"postgres\" (or redis, qdrant, http, tcp)"),
            );
            return None;
        }
    };
    let address = raw.address.as_ref().map(|a| a.get_ref().clone());
    let url = raw.url.as_ref().map(|u| u.get_ref().clone());
    match kind {
        DependencyKind::Http if url.is_none() => {
            errors.push(
                Diagnostic::new(
                    format!("dependency {name:?} of kind http has no url"),
                    Some(key.span()),
                )
                .hint("add url = \"http://127.0.0.1:8080/health\""),
            );
            return None;
        }
        DependencyKind::Qdrant if url.is_none() && address.is_none() => {
            errors.push(
                Diagnostic::new(
                    format!("dependency {name:?} has neither address nor url"),
                    Some(key.span()),
                )
                .hint("add address = \"127.0.0.1:6333\""),
            );
            return None;
        }
        DependencyKind::Postgres | DependencyKind::Redis | DependencyKind::Tcp
            if address.is_none() =>
        {
            errors.push(
                Diagnostic::new(
                    format!("dependency {name:?} has no address"),
                    Some(key.span()),
                )
                .hint("add address = \"host:port\""),
            );
            return None;
        }
        _ => {}
    }
    if let (Some(a), Some(span)) = (&address, raw.address.as_ref().map(|a| a.span())) {
        if !a.contains(':')
            || a.rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .is_none()
        {
            errors.push(
                Diagnostic::new(format!("invalid address {a:?}"), Some(span))
                    .hint("write host and port, such as \"127.0.0.1:5432\""),
            );
            return None;
        }
    }
    if let (Some(u), Some(span)) = (&url, raw.url.as_ref().map(|u| u.span())) {
        if !u.starts_with("http://") {
            errors.push(
                Diagnostic::new(format!("invalid url {u:?}"), Some(span))
                    .hint("write a plain http:// URL, such as \"http://127.0.0.1:6333/healthz\""),
            );
            return None;
        }
    }
    Some(Dependency {
        name,
        kind,
        address,
        url,
        interval: at_least(
            raw.interval.map_or(Duration::from_secs(5), |d| d.0),
            Duration::from_millis(50),
            &format!("dependencies.{}.interval", key.get_ref()),
            Some(key.span()),
            errors,
        ),
        timeout: at_least(
            raw.timeout.map_or(Duration::from_secs(2), |d| d.0),
            Duration::from_millis(10),
            &format!("dependencies.{}.timeout", key.get_ref()),
            Some(key.span()),
            errors,
        ),
    })
}

/// Find cycles among services' `depends_on`, naming the whole cycle once.
fn check_cycles(file: &RawFile, errors: &mut Vec<Diagnostic>) {
    let edges: BTreeMap<&str, Vec<&Spanned<String>>> = file
        .services
        .iter()
        .map(|(k, s)| (k.get_ref().as_str(), s.depends_on.iter().collect()))
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = edges.keys().map(|k| (*k, Mark::New)).collect();
    fn dfs<'a>(
        node: &'a str,
        edges: &BTreeMap<&'a str, Vec<&'a Spanned<String>>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
        errors: &mut Vec<Diagnostic>,
    ) {
        marks.insert(node, Mark::Active);
        stack.push(node);
        for dep in edges.get(node).into_iter().flatten() {
            let d = dep.get_ref().as_str();
            match marks.get(d).copied() {
                Some(Mark::New) => dfs(d, edges, marks, stack, errors),
                Some(Mark::Active) => {
                    let start = stack.iter().position(|n| *n == d).unwrap_or(0);
                    let mut cycle: Vec<&str> = stack[start..].to_vec();
                    cycle.push(d);
                    errors.push(
                        Diagnostic::new(format!("dependency cycle: {}", cycle.join(" -> ")), Some(dep.span()))
                            .hint("services must start in some order; remove one depends_on entry of this cycle"),
                    );
                }
                _ => {}
            }
        }
        stack.pop();
        marks.insert(node, Mark::Done);
    }
    let names: Vec<&str> = edges.keys().copied().collect();
    for n in names {
        if marks.get(n) == Some(&Mark::New) {
            dfs(n, &edges, &mut marks, &mut Vec::new(), errors);
        }
    }
}

fn resolve_docker(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_key() {
        let msg = "unknown field `instnces`, expected one of `runtime`, `instances`, `env`";
        assert_eq!(closest_field(msg).as_deref(), Some("instances"));
        assert_eq!(
            closest_field("unknown field `zzz`, expected `runtime`"),
            None
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    fn config(text: &str) -> Result<Config, Vec<Diagnostic>> {
        resolve(Path::new("/tmp/tcf-platform.toml"), text, None)
    }

    const TWO_SERVICES: &str = r#"
[platform]
name = "p"
[defaults.proxy]
max_headers = 50
headers_with_underscores = "drop"
[services.a]
command = ["a"]
version = "v1"
listen = "127.0.0.1:9001"
[services.a.proxy]
max_header_size = "16KiB"
[services.b]
command = ["b"]
version = "v1"
listen = "127.0.0.1:9002"
"#;

    #[test]
    fn proxy_limits_have_defaults_and_merge_key_by_key() {
        let c = config(TWO_SERVICES).unwrap();
        let a = &c.services["a"].proxy;
        assert_eq!(
            (a.max_header_size, a.max_headers, a.max_request_line),
            (16 << 10, 50, 8 << 10)
        );
        assert_eq!(a.headers_with_underscores, UnderscoreHeaders::Drop);
        assert_eq!(c.services["b"].proxy.max_header_size, 32 << 10);
        // The access log is off unless asked for, and `[defaults.proxy]` asks for every service.
        assert!(!a.access_log && !c.services["b"].proxy.access_log);
        let logged = config(
            &TWO_SERVICES.replace("[defaults.proxy]", "[defaults.proxy]\naccess_log = true"),
        )
        .unwrap();
        assert!(logged.services.values().all(|s| s.proxy.access_log));
        assert!(!logged.services["a"].proxy.access_log_query);
        let plain =
            config(&TWO_SERVICES.replace("[defaults.proxy]", "[defaults.proxy.x]")).unwrap_err();
        assert!(
            plain[0].message.contains("unknown field"),
            "{:?}",
            plain[0].message
        );
    }

    #[test]
    fn proxy_limits_out_of_bounds_are_refused() {
        for (key, value) in [
            ("max_header_size", "\"100\""),
            ("max_header_size", "\"2MiB\""),
            ("max_request_line", "\"64KiB\""),
            ("max_headers", "0"),
            ("headers_with_underscores", "\"maybe\""),
            ("tunnel_idle_timeout", "\"0s\""),
        ] {
            let text =
                TWO_SERVICES.replace("max_header_size = \"16KiB\"", &format!("{key} = {value}"));
            let errors = config(&text).unwrap_err();
            assert!(
                errors.iter().any(|e| e.message.contains(key)),
                "{key} = {value}: {:?}",
                errors.iter().map(|e| &e.message).collect::<Vec<_>>()
            );
        }
    }
    fn errors_of(text: &str) -> Vec<String> {
        match resolve(std::path::Path::new("/tmp/t.toml"), text, None) {
            Ok(_) => Vec::new(),
            Err(d) => d.iter().map(|d| d.message.clone()).collect(),
        }
    }

    const SERVICE: &str =
        "[platform]\nname = \"t\"\n[services.api]\ncommand = [\"x\"]\nversion = \"v1\"\nlisten = \"127.0.0.1:18080\"\n";

    #[test]
    fn durations_that_would_spin_or_overflow_are_refused() {
        assert!(errors_of(SERVICE).is_empty(), "{:?}", errors_of(SERVICE));
        let spin = format!("{SERVICE}health = {{ interval = \"0ms\" }}\n");
        let e = errors_of(&spin);
        assert!(
            e.iter()
                .any(|m| m.contains("health.interval") && m.contains("too short")),
            "{e:?}"
        );
        let dep = format!("{SERVICE}[dependencies.db]\nkind = \"tcp\"\naddress = \"127.0.0.1:5432\"\ninterval = \"0s\"\n");
        let e = errors_of(&dep);
        assert!(
            e.iter().any(|m| m.contains("dependencies.db.interval")),
            "{e:?}"
        );
        let ttl = format!("{SERVICE}[deploy]\nlock_ttl = \"0s\"\n");
        assert!(errors_of(&ttl).iter().any(|m| m.contains("lock_ttl")));
        for bad in ["..", ".", "v1+build", "../v1;$(id)", "v1\nx", "a/b", ""] {
            let text = SERVICE.replace("version = \"v1\"", &format!("version = {bad:?}"));
            assert!(!errors_of(&text).is_empty(), "{bad:?} accepted");
        }
        for (bad, what) in [
            ("instances = 100000\n", "instances"),
            ("env = { PORT = \"1\" }\n", "PORT"),
            ("env = { TCF_VERSION = \"1\" }\n", "TCF_VERSION"),
            ("upstream_timeout = \"0s\"\n", "upstream_timeout"),
            ("stop_timeout = \"300d\"\n", "stop_timeout"),
            ("log_max_size = \"1KiB\"\n", "log_max_size"),
        ] {
            let e = errors_of(&format!("{SERVICE}{bad}"));
            assert!(e.iter().any(|m| m.contains(what)), "{bad}: {e:?}");
        }
        let both = format!(
            "{SERVICE}[services.b]\ncommand = [\"x\"]\nversion = \"v1\"\nlisten = \"0.0.0.0:18080\"\n"
        );
        let e = errors_of(&both);
        assert!(e.iter().any(|m| m.contains("cannot both listen")), "{e:?}");
        let huge = format!("{SERVICE}upstream_timeout = \"400000000d\"\n");
        let e = errors_of(&huge);
        assert!(e.iter().any(|m| m.contains("365 days")), "{e:?}");
    }
}
