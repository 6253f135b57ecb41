//! `prod validate` and the deploy gate: can this version be deployed now, and if not, why.
//! Every check says PASS, FAIL, or WARN when it could not look (never a pass it did not earn).

use crate::platform::{lock, Platform};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tcf_config::{Config, Service};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pass,
    Fail,
    /// The check could not run (or found something worth knowing that does not block).
    Warn,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub state: State,
    pub service: Option<String>,
    pub message: String,
    pub remedy: Option<String>,
}

impl Check {
    fn new(id: &'static str, state: State, service: Option<&str>, message: String) -> Check {
        Check {
            id,
            state,
            service: service.map(str::to_string),
            message,
            remedy: None,
        }
    }

    fn remedy(mut self, remedy: impl Into<String>) -> Check {
        self.remedy = Some(remedy.into());
        self
    }
}

/// The check ids, stable (docs/deploys.md lists them).
pub const CONFIG: &str = "VAL-CONFIG";
pub const ARTIFACT: &str = "VAL-ARTIFACT";
pub const MEMORY: &str = "VAL-MEMORY";
pub const DISK: &str = "VAL-DISK";
pub const PORTS: &str = "VAL-PORTS";
pub const LOCK: &str = "VAL-LOCK";
pub const RELEASE: &str = "VAL-RELEASE";
pub const ALERTS: &str = "VAL-ALERTS";
pub const DEPENDENCY: &str = "VAL-DEPENDENCY";
pub const HOOK: &str = "VAL-HOOK";
pub const SECURITY: &str = "VAL-SECURITY";

/// What to validate.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The version to deploy; None: each service's serving version.
    pub version: Option<String>,
    /// The services (empty: all).
    pub services: Vec<String>,
    pub check_dependencies: bool,
    pub security_scan: bool,
    /// Run from inside a release, which holds the lock itself.
    pub in_release: bool,
}

/// Free disk below this on the state directory's filesystem fails the check.
const MIN_FREE_DISK: u64 = 100 << 20;

/// Run every check. `fresh` is the config file as it is now (None when it does not load: that
/// is the first check's FAIL).
pub async fn run(p: &Arc<Platform>, fresh: Result<&Config, String>, opts: &Options) -> Vec<Check> {
    let mut checks = Vec::new();
    let names: Vec<String> = p
        .config
        .start_order()
        .into_iter()
        .filter(|s| opts.services.is_empty() || opts.services.contains(s))
        .collect();
    let fresh = match fresh {
        Ok(c) => c,
        Err(e) => {
            checks.push(
                Check::new(
                    CONFIG,
                    State::Fail,
                    None,
                    format!("the config file does not validate: {e}"),
                )
                .remedy("fix it (`tcf-platform config validate` shows where)"),
            );
            return checks;
        }
    };
    // The spec each service would run with, and what changes against what runs.
    let mut targets: Vec<(String, String, Arc<Service>)> = Vec::new();
    for name in &names {
        let Some(svc) = p.services.get(name) else {
            continue;
        };
        let Some(new) = fresh.services.get(name) else {
            checks.push(
                Check::new(
                    CONFIG,
                    State::Fail,
                    Some(name),
                    "not in the config file any more".into(),
                )
                .remedy("removing a service needs `tcf-platform down` and `up`"),
            );
            continue;
        };
        let version = opts
            .version
            .clone()
            .unwrap_or_else(|| svc.serving_version());
        if let Err(e) = tcf_config::check_version(&version) {
            checks.push(Check::new(CONFIG, State::Fail, Some(name), e));
            continue;
        }
        let running = svc.active_colour().map(|c| c.current_spec());
        let changes = running
            .as_deref()
            .map(|r| changed_keys(r, new))
            .unwrap_or_default();
        let message = if changes.is_empty() {
            format!("{} → {version}; spec unchanged", svc.serving_version())
        } else {
            format!(
                "{} → {version}; changes: {}",
                svc.serving_version(),
                changes.join(", ")
            )
        };
        if new.listen != svc.config.listen {
            checks.push(
                Check::new(
                    CONFIG,
                    State::Fail,
                    Some(name),
                    format!("listen changed to {}", new.listen),
                )
                .remedy("a new public address needs `tcf-platform down` and `up`"),
            );
        } else {
            checks.push(Check::new(CONFIG, State::Pass, Some(name), message));
        }
        targets.push((name.clone(), version, Arc::new(new.clone())));
    }

    for (name, version, spec) in &targets {
        checks.push(artifact(p, name, version, spec).await);
    }
    checks.push(memory(p, &targets));
    checks.push(disk(p));
    checks.push(ports(&targets));
    if !opts.in_release {
        checks.extend(platform_state(p, &names).await);
    }
    checks.push(alerts(p));
    checks.push(hook(p));
    if opts.check_dependencies {
        checks.extend(dependencies(p, &names).await);
    }
    if opts.security_scan {
        checks.extend(security(fresh, &names));
    }
    checks
}

/// The audit's checks that concern a release (its secrets, its container's privileges, its
/// lockfile's advisories), as validate checks: high and critical findings fail, lower ones warn,
/// a check that could not run warns with why. Values are never shown, only where they are.
fn security(fresh: &Config, names: &[String]) -> Vec<Check> {
    const RELEASE_RULES: &[&str] = &[
        "TCF-SEC-001",
        "TCF-SEC-003",
        "TCF-CTR-001",
        "TCF-CTR-002",
        "TCF-CTR-003",
        "TCF-CTR-004",
        "TCF-DEP-001",
    ];
    let rules: Vec<&'static tcf_audit::Rule> = RELEASE_RULES
        .iter()
        .filter_map(|id| tcf_audit::rules::find(id))
        .collect();
    let inputs = tcf_audit::Inputs {
        config: fresh,
        live: Err("a release's checks look at its config and files".into()),
        advisories: None,
        comprehensive: false,
        containers: None,
        secrets: Err("a release's checks look at its config and files".into()),
    };
    let concerns = |resource: &str| {
        names.is_empty()
            || names
                .iter()
                .any(|n| resource.contains(&format!("service {n}")))
    };
    let mut checks = Vec::new();
    for result in tcf_audit::checks::run(&inputs, &rules) {
        match result.findings {
            Err(why) => checks.push(Check::new(
                SECURITY,
                State::Warn,
                None,
                format!("{} could not run: {why}", result.rule.id),
            )),
            Ok(findings) => {
                for f in findings.iter().filter(|f| concerns(&f.location.resource)) {
                    let state = if f.severity >= tcf_audit::Severity::High {
                        State::Fail
                    } else {
                        State::Warn
                    };
                    checks.push(
                        Check::new(
                            SECURITY,
                            state,
                            None,
                            format!(
                                "{} {}: {} ({})",
                                f.rule_id, f.title, f.location.resource, f.detail
                            ),
                        )
                        .remedy(f.remediation.clone()),
                    );
                }
            }
        }
    }
    if !checks.iter().any(|c| c.state != State::Pass) {
        checks.push(Check::new(
            SECURITY,
            State::Pass,
            None,
            format!("{} security checks found nothing", rules.len()),
        ));
    }
    checks
}

/// Top-level keys of a service spec that differ (the version aside).
fn changed_keys(running: &Service, new: &Service) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(running), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    a.keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .filter(|k| *k != "version" && a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

async fn artifact(p: &Arc<Platform>, name: &str, version: &str, spec: &Service) -> Check {
    let instance =
        crate::supervisor::instance_spec(p, spec, &format!("{name}-check"), "check", version, 0);
    let what = match &instance.container {
        Some(c) => format!("image {}", c.image),
        None => format!(
            "program {}",
            instance.command.first().cloned().unwrap_or_default()
        ),
    };
    match p.runtime_for(spec).check(&instance).await {
        Ok(()) => Check::new(ARTIFACT, State::Pass, Some(name), format!("{what} is there")),
        Err(e) => Check::new(ARTIFACT, State::Fail, Some(name), e).remedy(match instance.container {
            Some(_) => "build or load the image (`docker images` lists what is there), or set pull = \"missing\"",
            None => "install the release's program where the command points, and make it executable",
        }),
    }
}

/// MemAvailable from /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// The new colour's instances need about what the current ones use (or their memory limit).
fn memory(p: &Platform, targets: &[(String, String, Arc<Service>)]) -> Check {
    let Some(available) = mem_available() else {
        return Check::new(
            MEMORY,
            State::Warn,
            None,
            "could not read /proc/meminfo".into(),
        );
    };
    let mut need = 0u64;
    let mut unknown = Vec::new();
    for (name, _, spec) in targets {
        let per_instance = spec.docker.as_ref().and_then(|d| d.memory).or_else(|| {
            let svc = p.services.get(name)?;
            let rss: Vec<u64> = svc
                .active_colour()?
                .instances()
                .iter()
                .filter_map(|i| {
                    // Read now rather than wait for the sampler's next round.
                    let info = i.info();
                    info.pid
                        .and_then(tcf_runtime::procfs::rss_bytes)
                        .or(Some(info.rss_bytes))
                })
                .filter(|r| *r > 0)
                .collect();
            (!rss.is_empty()).then(|| rss.iter().sum::<u64>() / rss.len() as u64)
        });
        match per_instance {
            Some(m) => need += m * u64::from(spec.instances),
            None => unknown.push(name.clone()),
        }
    }
    let mb = |b: u64| b >> 20;
    if need > available {
        return Check::new(
            MEMORY,
            State::Fail,
            None,
            format!("the new instances need about {} MiB; {} MiB is available", mb(need), mb(available)),
        )
        .remedy("free memory, lower `instances`, or deploy with the rolling strategy (one new instance at a time)");
    }
    if !unknown.is_empty() {
        return Check::new(
            MEMORY,
            State::Warn,
            None,
            format!(
                "{} MiB available; no measure yet for {} (no running instance, no memory limit)",
                mb(available),
                unknown.join(", ")
            ),
        );
    }
    Check::new(
        MEMORY,
        State::Pass,
        None,
        format!(
            "the new instances need about {} MiB; {} MiB is available",
            mb(need),
            mb(available)
        ),
    )
}

fn disk(p: &Platform) -> Check {
    let dir = &p.config.platform.state_dir;
    match nix::sys::statvfs::statvfs(dir) {
        Err(e) => Check::new(
            DISK,
            State::Warn,
            None,
            format!("could not read free space of {}: {e}", dir.display()),
        ),
        Ok(s) => {
            let free = s.blocks_available() * s.fragment_size();
            let text = format!(
                "{} MiB free on {} (state and logs)",
                free >> 20,
                dir.display()
            );
            if free < MIN_FREE_DISK {
                Check::new(DISK, State::Fail, None, text).remedy(
                    "free disk space: below 100 MiB the store and the logs may fail to write",
                )
            } else {
                Check::new(DISK, State::Pass, None, text)
            }
        }
    }
}

/// A loopback port for each new instance, and file descriptors to spare.
fn ports(targets: &[(String, String, Arc<Service>)]) -> Check {
    let wanted: u32 = targets.iter().map(|(_, _, s)| s.instances).sum();
    let mut held = Vec::new();
    for _ in 0..wanted {
        match std::net::TcpListener::bind("127.0.0.1:0") {
            Ok(l) => held.push(l),
            Err(e) => {
                return Check::new(
                    PORTS,
                    State::Fail,
                    None,
                    format!(
                        "only {} of {wanted} loopback ports could be had: {e}",
                        held.len()
                    ),
                )
                .remedy("free ports or raise the limit on open files (ulimit -n)");
            }
        }
    }
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .ok();
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft);
    match (open_fds, limit) {
        (Some(open), Some(limit)) if open + u64::from(wanted) * 8 > limit => Check::new(
            PORTS,
            State::Fail,
            None,
            format!("{open} of {limit} file descriptors in use; the new instances need more"),
        )
        .remedy("raise the daemon's limit on open files (LimitNOFILE= in its unit, ulimit -n)"),
        (Some(open), Some(limit)) => Check::new(
            PORTS,
            State::Pass,
            None,
            format!("{wanted} loopback port(s) free; {open} of {limit} file descriptors in use"),
        ),
        _ => Check::new(
            PORTS,
            State::Warn,
            None,
            format!("{wanted} loopback port(s) free; could not read the file descriptor limit"),
        ),
    }
}

async fn platform_state(p: &Arc<Platform>, names: &[String]) -> Vec<Check> {
    let mut checks = Vec::new();
    match lock(&p.deploying).clone() {
        Some(running) => checks.push(
            Check::new(
                RELEASE,
                State::Fail,
                None,
                format!("a release is running: {running}"),
            )
            .remedy("wait for it (`tcf-platform status`), or `tcf-platform prod abort`"),
        ),
        None => {
            let unhealthy: Vec<&str> = names
                .iter()
                .filter(|n| p.services.get(*n).is_some_and(|s| !*s.healthy.borrow()))
                .map(String::as_str)
                .collect();
            checks.push(if unhealthy.is_empty() {
                Check::new(RELEASE, State::Pass, None, "no release running; every service healthy".into())
            } else {
                Check::new(RELEASE, State::Fail, None, format!("not healthy now: {}", unhealthy.join(", ")))
                    .remedy("see `tcf-platform status --health` and `tcf-platform logs SERVICE`; a rollback may be the answer")
            });
        }
    }
    match p.with_store(|s| s.lock(crate::deploy::DEPLOY_LOCK)).await {
        Ok(None) => checks.push(Check::new(
            LOCK,
            State::Pass,
            None,
            "the deploy lock is free".into(),
        )),
        Ok(Some(held)) => checks.push(
            Check::new(
                LOCK,
                State::Fail,
                None,
                format!("the deploy lock is held by {} on {}", held.owner, held.host),
            )
            .remedy("wait for it (deploy with --lock-wait), or see `tcf-platform lock status`"),
        ),
        Err(e) => checks.push(Check::new(
            LOCK,
            State::Warn,
            None,
            format!("could not read the lock: {e}"),
        )),
    }
    checks
}

/// Firing critical alerts (not silenced) say the platform is not in a state to deploy into.
fn alerts(p: &Platform) -> Check {
    let Some(service) = p.monitor.get() else {
        return Check::new(
            ALERTS,
            State::Warn,
            None,
            "could not check alerts: the monitor is not running".into(),
        );
    };
    let guard = lock(&service.monitor);
    let Some(m) = guard.as_ref() else {
        return Check::new(
            ALERTS,
            State::Warn,
            None,
            "could not check alerts: the metric history could not be opened".into(),
        )
        .remedy("see `tcf-platform prod monitor --action status`");
    };
    if !service.control().alerts {
        return Check::new(
            ALERTS,
            State::Warn,
            None,
            "could not check alerts: alert evaluation is stopped".into(),
        )
        .remedy("`tcf-platform prod monitor --action start --alerts`");
    }
    let now = tcf_monitor::now_ms();
    let firing: Vec<String> = m
        .active_alerts()
        .into_iter()
        .filter(|a| {
            a.state == tcf_monitor::rules::State::Firing
                && a.severity == tcf_monitor::rules::Severity::Critical
                && !m.silenced(&a.labels, now)
        })
        .map(|a| format!("{} ({})", a.rule, a.summary))
        .collect();
    if firing.is_empty() {
        Check::new(ALERTS, State::Pass, None, "no critical alert firing".into())
    } else {
        Check::new(
            ALERTS,
            State::Fail,
            None,
            format!("critical alert(s) firing: {}", firing.join("; ")),
        )
        .remedy("deal with them first (`tcf-platform alerts`), or silence one you accept")
    }
}

fn hook(p: &Platform) -> Check {
    let Some(argv) = &p.config.hooks.pre_deploy else {
        return Check::new(HOOK, State::Pass, None, "no pre_deploy hook".into());
    };
    let program = argv.first().cloned().unwrap_or_default();
    let workdir = p.config.path.parent().unwrap_or(std::path::Path::new("."));
    let rt = tcf_runtime::process::ProcessRuntime::new(workdir);
    match rt.resolve_program(&program) {
        Some(path) if tcf_runtime::process::is_executable(&path) => Check::new(
            HOOK,
            State::Pass,
            None,
            format!("pre_deploy hook {} is executable", path.display()),
        ),
        _ => Check::new(
            HOOK,
            State::Fail,
            None,
            format!("pre_deploy hook program {program:?} not found or not executable"),
        )
        .remedy("fix [hooks] pre_deploy"),
    }
}

async fn dependencies(p: &Platform, names: &[String]) -> Vec<Check> {
    let mut users: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for n in names {
        if let Some(svc) = p.services.get(n) {
            for d in &svc.config.depends_on {
                users.entry(d.as_str()).or_default().push(n.as_str());
            }
        }
    }
    let mut checks = Vec::new();
    for (name, dep) in &p.dependencies {
        let start = Instant::now();
        let result = crate::health::dependency(&dep.config).await;
        let took = start.elapsed().as_millis();
        let needed_by = users
            .get(name.as_str())
            .map(|u| format!(" (needed by {})", u.join(", ")))
            .unwrap_or_default();
        checks.push(match result {
            Ok(()) => Check::new(
                DEPENDENCY,
                State::Pass,
                None,
                format!("{name} answers in {took} ms{needed_by}"),
            ),
            Err(e) => Check::new(
                DEPENDENCY,
                State::Fail,
                None,
                format!("{name} does not answer: {e}{needed_by}"),
            )
            .remedy(format!(
                "start {name} or fix its address in [dependencies.{name}]"
            )),
        });
    }
    checks
}

/// The checks in the wire shape.
pub fn report(checks: &[Check]) -> tcf_api::ValidateReport {
    tcf_api::ValidateReport {
        ready: !checks.iter().any(|c| c.state == State::Fail),
        checks: checks
            .iter()
            .map(|c| tcf_api::ValidateCheck {
                id: c.id.to_string(),
                state: match c.state {
                    State::Pass => "pass",
                    State::Fail => "fail",
                    State::Warn => "warn",
                }
                .to_string(),
                service: c.service.clone(),
                message: c.message.clone(),
                remedy: c.remedy.clone(),
            })
            .collect(),
    }
}

/// Load the config file as it is now, off the runtime threads.
pub async fn load_fresh(p: &Platform) -> Result<Config, String> {
    let path = p.config.path.clone();
    let environment = p.config.environment.clone();
    tokio::task::spawn_blocking(move || tcf_config::load(&path, environment.as_deref()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}
