//! The container checks (TCF-CTR-*). Without `--comprehensive` TCF-CTR-001–004 read the
//! config's Docker services; with it, every container of the platform on the engine is
//! inspected (what actually runs), and the services with no container are still read from the
//! config. TCF-CTR-005–008 need the engine: only a running container shows them.

use crate::checks::{line_of, LiveContainer};
use crate::model::{CheckResult, Finding, Location, Rule};
use tcf_config::Config;

fn is_root(user: &str) -> bool {
    let user = user.trim();
    user.is_empty()
        || user == "root"
        || user == "0"
        || user.starts_with("0:")
        || user.starts_with("root:")
}

fn is_docker_socket(source: &str) -> bool {
    source == "/var/run/docker.sock" || source == "/run/docker.sock"
}

/// What the config says about a service's containers, for TCF-CTR-001–004.
fn from_config(
    rule: &'static Rule,
    config: &Config,
    text: &str,
    service: &tcf_config::Service,
) -> Option<Finding> {
    let docker = service.docker.as_ref()?;
    let section = format!("[services.{}", service.name);
    let (key, detail) = match rule.id {
        "TCF-CTR-001" => match docker.user.as_deref().map(str::trim) {
            None | Some("") => (
                "user",
                "no `user`: the container runs as the image's default user, root for most images"
                    .to_string(),
            ),
            Some(u) if is_root(u) => ("user", format!("user = {u:?} runs the container as root")),
            Some(_) => return None,
        },
        "TCF-CTR-002" => (!docker.read_only).then(|| {
            (
                "read_only",
                "read_only is not set: the container may write its root filesystem".to_string(),
            )
        })?,
        "TCF-CTR-003" => docker.memory.is_none().then(|| {
            (
                "memory",
                "no `memory` limit: the container may use all of the host's memory".to_string(),
            )
        })?,
        "TCF-CTR-004" => docker
            .volumes
            .iter()
            .find(|v| is_docker_socket(v.split(':').next().unwrap_or("")))
            .map(|v| {
                (
                    "volumes",
                    format!("volume {v:?} gives the container the Docker engine's socket"),
                )
            })?,
        _ => return None,
    };
    Some(Finding::new(
        rule,
        Location::resource(format!("service {}", service.name))
            .in_file(&config.path, line_of(text, &section, key)),
        detail,
    ))
}

/// What a running container shows, for every TCF-CTR check.
fn from_container(rule: &'static Rule, c: &LiveContainer) -> Option<Finding> {
    let detail = match rule.id {
        "TCF-CTR-001" => is_root(&c.user).then(|| {
            if c.user.trim().is_empty() {
                "runs as root: neither the container nor its image sets a user".to_string()
            } else {
                format!("runs as root (user {:?})", c.user)
            }
        }),
        "TCF-CTR-002" => (!c.read_only).then(|| "its root filesystem is writable".to_string()),
        "TCF-CTR-003" => (c.memory <= 0).then(|| "has no memory limit".to_string()),
        "TCF-CTR-004" => c
            .mounts
            .iter()
            .find(|m| is_docker_socket(m))
            .map(|m| format!("has the Docker engine's socket {m} mounted")),
        "TCF-CTR-005" => c.privileged.then(|| "runs privileged".to_string()),
        "TCF-CTR-006" => (c.network_mode == "host")
            .then(|| "shares the host's network namespace (network mode host)".to_string()),
        "TCF-CTR-007" => (!c.healthcheck)
            .then(|| "has no HEALTHCHECK (neither its image nor its own config)".to_string()),
        "TCF-CTR-008" => {
            let open: Vec<String> = c
                .published
                .iter()
                .filter(|(ip, _, _)| ip.is_empty() || ip == "0.0.0.0" || ip == "::")
                .map(|(ip, port, inner)| {
                    let ip = if ip.is_empty() { "0.0.0.0" } else { ip };
                    format!("{ip}:{port} -> {inner}")
                })
                .collect();
            (!open.is_empty()).then(|| format!("publishes {} on every interface", open.join(", ")))
        }
        _ => None,
    }?;
    Some(Finding::new(
        rule,
        Location::resource(format!("container {} (service {})", c.name, c.service))
            .with_uri(format!("docker://{}", c.name)),
        format!("container {} {detail}", c.name),
    ))
}

pub fn check(
    rule: &'static Rule,
    config: &Config,
    text: &str,
    containers: Option<&Result<Vec<LiveContainer>, String>>,
) -> CheckResult {
    let docker_services: Vec<&tcf_config::Service> = config
        .services
        .values()
        .filter(|s| s.docker.is_some())
        .collect();
    let live_only = !matches!(
        rule.id,
        "TCF-CTR-001" | "TCF-CTR-002" | "TCF-CTR-003" | "TCF-CTR-004"
    );
    match containers {
        None if live_only => {
            if rule.comprehensive {
                CheckResult::not_run(
                    rule,
                    "inspects the running containers: it runs with --comprehensive",
                )
            } else {
                CheckResult::not_run(rule, "needs the Docker engine")
            }
        }
        None => CheckResult::ran(
            rule,
            docker_services
                .iter()
                .filter_map(|s| from_config(rule, config, text, s))
                .collect(),
        ),
        Some(Err(why)) => {
            // The engine could not be asked: the config's findings stand, but nothing found
            // there is no pass.
            let findings: Vec<Finding> = if live_only {
                Vec::new()
            } else {
                docker_services
                    .iter()
                    .filter_map(|s| from_config(rule, config, text, s))
                    .collect()
            };
            if findings.is_empty() && !docker_services.is_empty() {
                CheckResult::not_run(rule, format!("the Docker engine could not be asked: {why}"))
            } else {
                CheckResult::ran(rule, findings)
            }
        }
        Some(Ok(list)) => {
            let mut findings: Vec<Finding> = list
                .iter()
                .filter_map(|c| from_container(rule, c))
                .collect();
            if !live_only {
                // A Docker service with no container now is judged by what the config says.
                findings.extend(
                    docker_services
                        .iter()
                        .filter(|s| !list.iter().any(|c| c.service == s.name))
                        .filter_map(|s| from_config(rule, config, text, s)),
                );
            }
            CheckResult::ran(rule, findings)
        }
    }
}
