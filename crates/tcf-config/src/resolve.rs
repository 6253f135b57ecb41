//! From the file as written to the effective [`Config`]: overlay, defaults, checks.

use crate::overlay::*;
use crate::raw::*;
use crate::service::*;
use crate::{Config, Daemon, Dependency, DependencyKind, Diagnostic, Platform};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

pub(crate) const KEYS_HINT: &str = "check the spelling; docs/configuration.md lists every key";
/// The longest path a Unix socket address can hold on Linux (sun_path minus the NUL).
pub(crate) const MAX_SOCKET_PATH: usize = 107;

/// Resolve the text of a config file at `path` (absolute) into the effective config.
pub fn resolve(
    path: &Path,
    source: &str,
    environment: Option<&str>,
) -> Result<Config, Vec<Diagnostic>> {
    let mut file: RawFile = toml::from_str(source).map_err(|e| every_error(source, &e))?;
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
        let tls = crate::tls::resolve_tls(
            key.get_ref(),
            raw.tls.as_ref(),
            raw.http_listen.as_ref(),
            raw.hsts.as_ref(),
            base_dir,
            &mut errors,
        );
        let Some(mut svc) = resolve_service(key, raw, &file.defaults, &known, &name, &mut errors)
        else {
            continue;
        };
        svc.tls = tls;
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
        if let Some(plain) = svc.tls.as_ref().and_then(|t| t.http_listen) {
            let span = raw.http_listen.as_ref().map(|h| h.span());
            if let Some((other, _)) = listeners.get(&plain) {
                errors.push(
                    Diagnostic::new(
                        format!(
                            "http_listen {plain} of service {:?} is also the address of {other:?}",
                            svc.name
                        ),
                        span,
                    )
                    .hint("give the plain listener an address of its own, such as \"0.0.0.0:80\""),
                );
            } else {
                listeners.insert(plain, (svc.name.clone(), span.unwrap_or(0..0)));
            }
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
    let listen = file.daemon.listen.as_ref().and_then(|l| {
        match l.get_ref().parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(
                    Diagnostic::new(
                        format!("[daemon] listen {:?} is not an address", l.get_ref()),
                        Some(l.span()),
                    )
                    .hint("use IP:PORT, such as \"0.0.0.0:8443\""),
                );
                None
            }
        }
    });
    let tls = match (&file.daemon.tls_cert, &file.daemon.tls_key) {
        (Some(c), Some(k)) => Some((base_dir.join(c), base_dir.join(k))),
        (None, None) => None,
        _ => {
            errors.push(
                Diagnostic::new("[daemon] tls_cert and tls_key go together", None)
                    .hint("set both (PEM files), or neither for a self-signed certificate"),
            );
            None
        }
    };
    let audit = resolve_audit(&file.audit, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Config {
        path: path.to_path_buf(),
        environment: environment.map(str::to_string),
        platform: Platform { name, state_dir },
        daemon: Daemon {
            socket,
            listen,
            tls,
        },
        services,
        dependencies,
        deploy,
        hooks,
        backup,
        monitor,
        alerts,
        swarm: crate::SwarmCluster {
            endpoint: file.swarm.endpoint.as_ref().map(|e| e.get_ref().clone()),
            node_engines: file.swarm.node_engines.clone(),
        },
        audit,
    })
}

fn resolve_audit(raw: &crate::raw::RawAudit, errors: &mut Vec<Diagnostic>) -> crate::AuditSettings {
    let defaults = crate::AuditSettings::default();
    let burst = match &raw.failed_auth_burst {
        Some(b) if *b.get_ref() == 0 => {
            errors.push(
                Diagnostic::new("[audit] failed_auth_burst must be at least 1", Some(b.span()))
                    .hint("the number of failed authentications from one address that is a burst, such as 10"),
            );
            defaults.failed_auth_burst
        }
        Some(b) => *b.get_ref(),
        None => defaults.failed_auth_burst,
    };
    crate::AuditSettings {
        max_admins: raw.max_admins.unwrap_or(defaults.max_admins),
        secret_max_age: raw.secret_max_age.map_or(defaults.secret_max_age, |d| d.0),
        failed_auth_burst: burst,
        failed_auth_window: raw
            .failed_auth_window
            .map_or(defaults.failed_auth_window, |d| d.0),
        advisories_max_age: raw
            .advisories_max_age
            .map_or(defaults.advisories_max_age, |d| d.0),
    }
}

pub(crate) fn resolve_deploy(
    raw: &RawDeploy,
    errors: &mut Vec<Diagnostic>,
) -> crate::DeploySettings {
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

/// serde stops at the first wrong value, but every error is reported at once: when the file is
/// TOML (else its syntax error alone is the answer), each service and dependency table is read
/// on its own, spans kept, and what each of them finds is added.
fn every_error(source: &str, first: &toml::de::Error) -> Vec<Diagnostic> {
    let mut out = vec![parse_diagnostic(first)];
    let Ok(doc) = toml::de::DeTable::parse(source) else {
        return out;
    };
    let mut add = |e: toml::de::Error| {
        let d = parse_diagnostic(&e);
        if !out
            .iter()
            .any(|o| o.span == d.span && o.message == d.message)
        {
            out.push(d);
        }
    };
    for (section, value) in doc.get_ref().iter() {
        let toml::de::DeValue::Table(entries) = value.get_ref() else {
            continue;
        };
        for entry in entries.values() {
            let each = toml::de::ValueDeserializer::from(entry.clone());
            let read = match &**section.get_ref() {
                "services" => RawService::deserialize(each).map(drop),
                "dependencies" => RawDependency::deserialize(each).map(drop),
                _ => continue,
            };
            if let Err(e) = read {
                add(e);
            }
        }
    }
    out.sort_by_key(|d| d.span.as_ref().map_or(0, |s| s.start));
    out
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

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The most instances one service may ask for.
pub const MAX_INSTANCES: u32 = 256;

/// A duration above `max` is refused: a stop that may take hours holds up `down` as long.
pub(crate) fn at_most(
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
pub(crate) fn at_least(
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

pub(crate) fn at_least_one(
    v: &Option<Spanned<u32>>,
    what: &str,
    errors: &mut Vec<Diagnostic>,
) -> Option<u32> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UnderscoreHeaders;

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

    #[test]
    fn audit_section_defaults_values_and_a_zero_burst() {
        let base = "[platform]\nname = \"p\"\n";
        let defaults = config(base).unwrap().audit;
        assert_eq!(defaults, crate::AuditSettings::default());
        assert_eq!(defaults.max_admins, 2);
        assert_eq!(defaults.secret_max_age, Duration::from_secs(90 * 86_400));
        let set = config(&format!(
            "{base}[audit]\nmax_admins = 1\nsecret_max_age = \"30d\"\nfailed_auth_burst = 5\nfailed_auth_window = \"1m\"\nadvisories_max_age = \"2d\"\n"
        ))
        .unwrap()
        .audit;
        assert_eq!(
            set,
            crate::AuditSettings {
                max_admins: 1,
                secret_max_age: Duration::from_secs(30 * 86_400),
                failed_auth_burst: 5,
                failed_auth_window: Duration::from_secs(60),
                advisories_max_age: Duration::from_secs(2 * 86_400),
            }
        );
        let errors = config(&format!("{base}[audit]\nfailed_auth_burst = 0\n")).unwrap_err();
        assert!(
            errors[0].message.contains("failed_auth_burst"),
            "{errors:?}"
        );
        assert!(config(&format!("{base}[audit]\nmax_admin = 1\n")).is_err());
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
    fn the_remote_api_address_and_certificate_files() {
        let c = config(TWO_SERVICES).unwrap();
        assert_eq!((c.daemon.listen, c.daemon.tls.clone()), (None, None));
        let with = |daemon: &str| config(&format!("{TWO_SERVICES}\n[daemon]\n{daemon}\n"));
        let c =
            with("listen = \"0.0.0.0:8443\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"").unwrap();
        assert_eq!(c.daemon.listen, Some("0.0.0.0:8443".parse().unwrap()));
        assert_eq!(
            c.daemon.tls,
            Some(("/tmp/c.pem".into(), "/tmp/k.pem".into()))
        );
        let bad = with("listen = \"localhost\"").unwrap_err();
        assert!(
            bad[0].message.contains("not an address"),
            "{:?}",
            bad[0].message
        );
        let half = with("tls_cert = \"c.pem\"").unwrap_err();
        assert!(
            half[0].message.contains("go together"),
            "{:?}",
            half[0].message
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

    #[test]
    fn type_errors_in_several_tables_are_reported_together() {
        let text = "[platform]\nname = \"t\"\n\
            [services.api]\ncommand = [\"x\"]\nversion = \"v1\"\nlisten = \"127.0.0.1:18080\"\ninstances = \"two\"\n\
            [services.db]\ncommand = [\"x\"]\nversion = \"v1\"\nlisten = \"127.0.0.1:18081\"\nstop_timeout = 5\n\
            [dependencies.pg]\nkind = \"postgres\"\naddress = 5432\n";
        let e = match resolve(std::path::Path::new("/tmp/t.toml"), text, None) {
            Err(d) => d,
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(e.len(), 3, "{e:#?}");
        let spans: Vec<usize> = e.iter().map(|d| d.span.clone().unwrap().start).collect();
        let mut sorted = spans.clone();
        sorted.sort();
        assert_eq!(spans, sorted, "in file order");
        assert!(text[spans[0]..].starts_with("\"two\""), "{e:#?}");
        assert!(text[spans[1]..].starts_with('5'), "{e:#?}");
        assert!(text[spans[2]..].starts_with("5432"), "{e:#?}");
    }
}
