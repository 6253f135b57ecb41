//! The checks themselves. Each gets what it needs from [`Inputs`] and returns its findings,
//! or why it could not run.

use crate::advisories::{self, Database};
use crate::model::{CheckResult, Finding, Location, Rule, Severity};
use crate::procnet;
use crate::secrets;
use crate::{certs, containers};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tcf_config::{Config, RuntimeKind};

/// The running platform as the daemon reports it: the narrow view the online checks need.
#[derive(Debug, Clone)]
pub struct LiveView {
    pub daemon_pid: u32,
    pub socket: PathBuf,
    pub services: Vec<LiveService>,
    /// The remote API's tokens (never their values), or why they could not be read.
    pub tokens: Result<Vec<LiveToken>, String>,
    /// The refused authentications of the last day (the daemon's auth.failed events), or why
    /// they could not be read.
    pub failed_auths: Result<Vec<FailedAuth>, String>,
}

/// One refused authentication on the remote API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAuth {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// The client's IP address.
    pub address: String,
}

impl FailedAuth {
    /// From an event's actor (`remote 203.0.113.9`), the address; None for another actor.
    pub fn address_of_actor(actor: &str) -> Option<&str> {
        actor.strip_prefix("remote ").map(str::trim)
    }
}

/// A secret in the store: its name and when it was last set (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    pub name: String,
    /// Unix milliseconds.
    pub updated_ms: i64,
    pub updated_by: String,
}

#[derive(Debug, Clone)]
pub struct LiveToken {
    pub name: String,
    pub role: String,
    /// Unix milliseconds.
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
    pub revoked: bool,
}

/// A container of the platform as the Docker engine describes it (`docker inspect`).
#[derive(Debug, Clone, Default)]
pub struct LiveContainer {
    pub name: String,
    /// Its `tcf.service` label.
    pub service: String,
    /// `Config.User` (the image's USER when the container sets none); empty: root.
    pub user: String,
    pub privileged: bool,
    /// `HostConfig.NetworkMode`.
    pub network_mode: String,
    /// Host paths mounted into it (binds and volumes' sources).
    pub mounts: Vec<String>,
    /// `HostConfig.Memory` in bytes; 0: no limit.
    pub memory: i64,
    pub read_only: bool,
    /// A HEALTHCHECK other than NONE.
    pub healthcheck: bool,
    /// Published ports: (host IP, host port, container port/proto).
    pub published: Vec<(String, String, String)>,
}

#[derive(Debug, Clone)]
pub struct LiveService {
    pub name: String,
    pub listen: String,
    pub instances: Vec<LiveInstance>,
}

#[derive(Debug, Clone)]
pub struct LiveInstance {
    pub id: String,
    pub pid: Option<u32>,
    /// The PORT it was given.
    pub port: u16,
}

/// Everything an audit looks at.
pub struct Inputs<'a> {
    pub config: &'a Config,
    /// The daemon's view, or why there is none (no daemon: an offline audit).
    pub live: Result<LiveView, String>,
    /// `--advisories`: loaded, or why it could not be.
    pub advisories: Option<Result<Database, String>>,
    pub comprehensive: bool,
    /// With `--comprehensive`: the platform's containers on the Docker engine, or why they
    /// could not be listed (`None`: not asked).
    pub containers: Option<Result<Vec<LiveContainer>, String>>,
    /// The secrets in the store (from the daemon, or from the store itself when none runs),
    /// or why they could not be read.
    pub secrets: Result<Vec<StoredSecret>, String>,
}

/// Run `selected` checks, in catalogue order.
pub fn run(inputs: &Inputs<'_>, selected: &[&'static Rule]) -> Vec<CheckResult> {
    let config_text = std::fs::read_to_string(&inputs.config.path)
        .map_err(|e| format!("cannot read {}: {e}", inputs.config.path.display()));
    let wants_tls = selected
        .iter()
        .any(|r| r.id.starts_with("TCF-TLS-") && r.id != "TCF-TLS-002");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let ctx = Ctx {
        config: inputs.config,
        text: config_text.as_deref().unwrap_or(""),
        text_ok: config_text.as_ref().map(|_| ()).map_err(Clone::clone),
        tls: wants_tls.then(|| certs::gather(inputs.config, inputs.comprehensive, now)),
    };
    selected
        .iter()
        .map(|rule| run_one(rule, inputs, &ctx))
        .collect()
}

struct Ctx<'a> {
    config: &'a Config,
    text: &'a str,
    text_ok: Result<(), String>,
    /// The certificates, gathered once when a TLS check is selected.
    tls: Option<certs::TlsView>,
}

fn run_one(rule: &'static Rule, inputs: &Inputs<'_>, ctx: &Ctx<'_>) -> CheckResult {
    if rule.comprehensive && !inputs.comprehensive {
        return CheckResult::not_run(rule, "a slower check: it runs with --comprehensive");
    }
    if rule.online {
        let live = match &inputs.live {
            Ok(live) => live,
            Err(why) => {
                return CheckResult::not_run(rule, format!("needs the running daemon ({why})"))
            }
        };
        return match rule.id {
            "TCF-NET-002" => listeners_vs_config(rule, ctx.config, live),
            "TCF-NET-003" => instance_extra_ports(rule, live),
            "TCF-NET-005" => unexpected_listeners(rule, ctx.config, live),
            "TCF-PROC-001" => instances_as_root(rule, live),
            "TCF-API-001" => socket_mode(rule, live),
            "TCF-AUTH-001" | "TCF-AUTH-002" => tokens(rule, live),
            "TCF-AUTH-003" => crate::access::too_many_admins(rule, ctx.config, live),
            "TCF-AUTH-004" => crate::access::failed_auth_bursts(rule, ctx.config, live),
            other => CheckResult::not_run(rule, format!("no online check is wired for {other}")),
        };
    }
    if let (Some(view), true) = (
        &ctx.tls,
        rule.id.starts_with("TCF-TLS-") && rule.id != "TCF-TLS-002",
    ) {
        return certs::check(rule, view);
    }
    if rule.id.starts_with("TCF-CTR-") {
        return containers::check(rule, ctx.config, ctx.text, inputs.containers.as_ref());
    }
    match rule.id {
        "TCF-DEP-002" => return advisories_age(rule, ctx.config, inputs.advisories.as_ref()),
        // Nothing to look at is not a failure to look (WARN) nor a pass: INFO.
        "TCF-FS-006" | "TCF-BAK-002" | "TCF-BAK-003" | "TCF-BAK-004"
            if ctx.config.backup.is_none() =>
        {
            return CheckResult::info(
                rule,
                "the config has no [backup]: nothing to inspect (TCF-BAK-001 reports that)",
            )
        }
        _ => {}
    }
    let result = match rule.id {
        "TCF-FS-001" => state_dir_mode(rule, ctx.config),
        "TCF-FS-002" => store_file_modes(rule, ctx.config),
        "TCF-FS-003" => config_file_mode(rule, ctx.config),
        "TCF-FS-004" => commands_writable(rule, ctx.config),
        "TCF-FS-005" => hooks_writable(rule, ctx.config),
        "TCF-FS-006" => backup_repository_mode(rule, ctx.config),
        "TCF-FS-007" => file_owners(rule, ctx.config, inputs.live.as_ref().ok()),
        "TCF-SEC-001" => Ok(plaintext_secrets(rule, ctx)),
        "TCF-SEC-002" => Ok(url_credentials(rule, ctx)),
        "TCF-SEC-003" => Ok(weak_secrets(rule, ctx)),
        "TCF-SEC-004" => Ok(secrets_in_files(rule, ctx.config)),
        "TCF-SEC-005" => crate::access::unused_secrets(rule, ctx.config, &inputs.secrets),
        "TCF-SEC-006" => crate::access::stale_secrets(rule, ctx.config, &inputs.secrets),
        "TCF-SEC-007" => crate::scan::check(rule, ctx.config),
        "TCF-NET-004" => exposed_dependencies(rule, ctx),
        "TCF-NET-001" => Ok(public_without_tls(rule, ctx)),
        "TCF-TLS-002" => Ok(no_hsts(rule, ctx)),
        "TCF-CFG-001" => Ok(body_limits(rule, ctx)),
        "TCF-CFG-002" => ctx.text_ok.clone().and_then(|()| health_checks(rule, ctx)),
        "TCF-DEP-001" => dependencies(rule, ctx.config, inputs.advisories.as_ref()),
        "TCF-BAK-001" | "TCF-BAK-002" | "TCF-BAK-003" | "TCF-BAK-004" => backups(rule, ctx),
        other => Err(format!("no check is wired for {other}")),
    };
    match result {
        Ok(findings) => CheckResult::ran(rule, findings),
        Err(reason) => CheckResult::not_run(rule, reason),
    }
}

fn mode_text(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

/// Who besides the owner may do what, in words: "others may read and enter".
fn who_may(mode: u32, is_dir: bool) -> String {
    let mut parts = Vec::new();
    for (shift, who) in [(3, "group"), (0, "others")] {
        let bits = (mode >> shift) & 0o7;
        let mut can = Vec::new();
        if bits & 0o4 != 0 {
            can.push(if is_dir { "list" } else { "read" });
        }
        if bits & 0o2 != 0 {
            can.push("write");
        }
        if bits & 0o1 != 0 {
            can.push(if is_dir { "enter" } else { "execute" });
        }
        if !can.is_empty() {
            parts.push(format!("{who} may {}", can.join(", ")));
        }
    }
    parts.join("; ")
}

fn state_dir_mode(rule: &'static Rule, config: &Config) -> Result<Vec<Finding>, String> {
    let dir = &config.platform.state_dir;
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "the state directory {} does not exist yet (the daemon creates it 0700 at its first start)",
                dir.display()
            ))
        }
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    let mode = meta.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(Vec::new());
    }
    let severity = if mode & 0o002 != 0 {
        Severity::Critical
    } else if mode & 0o005 != 0 {
        Severity::High
    } else {
        Severity::Medium
    };
    Ok(vec![Finding::new(
        rule,
        Location::file(dir),
        format!("mode {}: {}", mode_text(mode), who_may(mode, true)),
    )
    .severity(severity)])
}

fn store_file_modes(rule: &'static Rule, config: &Config) -> Result<Vec<Finding>, String> {
    let dir = &config.platform.state_dir;
    let dir_mode = match std::fs::metadata(dir) {
        Ok(m) => m.permissions().mode(),
        Err(e) => {
            return Err(format!(
                "cannot read the state directory {}: {e}",
                dir.display()
            ))
        }
    };
    // A file is only as exposed as the directory lets it be: who can enter the directory.
    let mut reachable_bits = 0;
    if dir_mode & 0o010 != 0 {
        reachable_bits |= 0o060;
    }
    if dir_mode & 0o001 != 0 {
        reachable_bits |= 0o006;
    }
    // The secrets key and the remote API's private key too (see docs/security.md).
    let mut files: Vec<PathBuf> = PRIVATE_STATE_FILES
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.exists())
        .collect();
    if let Ok(logs) = std::fs::read_dir(dir.join("logs")) {
        let mut log_files: Vec<PathBuf> = logs.flatten().map(|e| e.path()).collect();
        log_files.sort();
        files.extend(log_files);
    }
    if files.is_empty() {
        return Err(format!(
            "no store or logs in {} yet (nothing ran from this state directory)",
            dir.display()
        ));
    }
    let mut findings = Vec::new();
    for file in files {
        let Ok(meta) = std::fs::symlink_metadata(&file) else {
            continue;
        };
        let mode = meta.permissions().mode();
        let exposed = mode & reachable_bits;
        if exposed != 0 && meta.is_file() {
            findings.push(Finding::new(
                rule,
                Location::file(&file),
                format!(
                    "mode {} in a directory of mode {}: {}",
                    mode_text(mode),
                    mode_text(dir_mode),
                    who_may(exposed, false)
                ),
            ));
        }
    }
    Ok(findings)
}

/// A uid with its user name when the system knows it: `1001 (alice)`.
fn uid_text(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{uid} ({})", user.name),
        _ => uid.to_string(),
    }
}

/// The files whose owner TCF-FS-007 checks, those that exist: the state directory, the store,
/// the key files and the config.
/// The state directory's files that only the daemon's user may read: the store, its lock, the
/// secrets key and the remote API's private key (see docs/security.md).
const PRIVATE_STATE_FILES: [&str; 6] = [
    "state.db",
    "state.db-wal",
    "state.db-shm",
    "daemon.lock",
    "secrets.key",
    "api-key.pem",
];

fn owned_files(config: &Config) -> Vec<PathBuf> {
    let dir = &config.platform.state_dir;
    let mut files = vec![dir.clone()];
    files.extend(
        PRIVATE_STATE_FILES
            .iter()
            .chain(&["api-cert.pem"])
            .map(|f| dir.join(f)),
    );
    if let Some((cert, key)) = &config.daemon.tls {
        files.push(key.clone());
        files.push(cert.clone());
    }
    for service in config.services.values() {
        if let Some(tcf_config::TlsSource::Files(pairs)) = service.tls.as_ref().map(|t| &t.source) {
            files.extend(pairs.iter().map(|p| p.key.clone()));
        }
    }
    if let Some(identity) = config.backup.as_ref().and_then(|b| b.identity.clone()) {
        files.push(identity);
    }
    files.push(config.path.clone());
    let mut seen = BTreeSet::new();
    files.retain(|f| f.exists() && seen.insert(f.clone()));
    files
}

/// Owners: each file of [`owned_files`] must belong to the daemon's user or root. Online the
/// daemon's user is its process's effective uid; offline it is taken to be the state
/// directory's owner (the daemon creates it), else the user running the audit.
fn file_owners(
    rule: &'static Rule,
    config: &Config,
    live: Option<&LiveView>,
) -> Result<Vec<Finding>, String> {
    let (daemon_uid, whose) = match live {
        Some(live) => {
            let uid = procnet::effective_uid(live.daemon_pid).map_err(|e| {
                format!(
                    "cannot read the daemon's uid (/proc/{}/status): {e}",
                    live.daemon_pid
                )
            })?;
            (uid, format!("the daemon (pid {}) runs as", live.daemon_pid))
        }
        None => match std::fs::metadata(&config.platform.state_dir) {
            Ok(meta) => (
                meta.uid(),
                "offline, the daemon's user is taken to be the state directory's owner:"
                    .to_string(),
            ),
            Err(_) => (
                nix::unistd::geteuid().as_raw(),
                "offline with no state directory, the daemon's user is taken to be the one running the audit:"
                    .to_string(),
            ),
        },
    };
    let files = owned_files(config);
    if files.is_empty() {
        return Err(format!(
            "neither the state directory {} nor the config {} can be read",
            config.platform.state_dir.display(),
            config.path.display()
        ));
    }
    let mut findings = Vec::new();
    for file in files {
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        let owner = meta.uid();
        if owner == 0 || owner == daemon_uid {
            continue;
        }
        findings.push(Finding::new(
            rule,
            Location::file(&file),
            format!(
                "owned by uid {}, neither root nor the daemon's user ({whose} uid {}): that user may change its mode and rewrite it",
                uid_text(owner),
                uid_text(daemon_uid)
            ),
        ));
    }
    Ok(findings)
}

fn backup_repository_mode(rule: &'static Rule, config: &Config) -> Result<Vec<Finding>, String> {
    let Some(backup) = &config.backup else {
        return Err(
            "the config has no [backup] repository to inspect (see TCF-BAK-001)".to_string(),
        );
    };
    let repo = &backup.repository;
    let meta = match std::fs::metadata(repo) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "the backup repository {} does not exist yet (the first `backup create` makes it)",
                repo.display()
            ))
        }
        Err(e) => return Err(format!("cannot read {}: {e}", repo.display())),
    };
    let mode = meta.permissions().mode();
    if mode & 0o007 == 0 {
        return Ok(Vec::new());
    }
    let encrypted = !backup.recipients.is_empty();
    Ok(vec![Finding::new(
        rule,
        Location::file(repo),
        format!(
            "mode {}: {}; the dumps in it are {}",
            mode_text(mode),
            who_may(mode & 0o007, true),
            if encrypted {
                "encrypted (age)"
            } else {
                "NOT encrypted"
            }
        ),
    )
    .severity(if encrypted && mode & 0o002 == 0 {
        Severity::Medium
    } else {
        Severity::High
    })])
}

fn config_file_mode(rule: &'static Rule, config: &Config) -> Result<Vec<Finding>, String> {
    let path = &config.path;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode();
    let mut findings = Vec::new();
    if mode & 0o022 != 0 {
        findings.push(Finding::new(
            rule,
            Location::file(path),
            format!("mode {}: {}", mode_text(mode), who_may(mode & 0o022, false)),
        ));
    }
    if let Some(dir) = path.parent() {
        if let Some(finding) = world_writable_dir(rule, dir, "the config's directory") {
            findings.push(finding);
        }
    }
    Ok(findings)
}

/// A directory others may write without the sticky bit: anyone may replace what is in it.
fn world_writable_dir(rule: &'static Rule, dir: &Path, what: &str) -> Option<Finding> {
    let mode = std::fs::metadata(dir).ok()?.permissions().mode();
    (mode & 0o002 != 0 && mode & 0o1000 == 0).then(|| {
        Finding::new(
            rule,
            Location::file(dir),
            format!(
                "{what} has mode {} (others may write, no sticky bit): anyone may replace the files in it",
                mode_text(mode)
            ),
        )
    })
}

/// A file others may write, or one in a directory others may write.
fn writable_by_others(rule: &'static Rule, file: &Path, what: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Ok(meta) = std::fs::metadata(file) {
        let mode = meta.permissions().mode();
        if mode & 0o002 != 0 {
            findings.push(Finding::new(
                rule,
                Location::file(file),
                format!("{what}: mode {}, others may write it", mode_text(mode)),
            ));
        }
    }
    if let Some(dir) = file.parent() {
        findings.extend(world_writable_dir(
            rule,
            dir,
            &format!("{what}'s directory"),
        ));
    }
    findings
}

pub(crate) fn config_dir(config: &Config) -> PathBuf {
    config
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A service's program as the process runtime finds it, with the config's version filled in.
pub(crate) fn service_program(config: &Config, service: &tcf_config::Service) -> Option<PathBuf> {
    let program = service
        .command
        .first()?
        .replace("{version}", &service.version)
        .replace("{service}", &service.name)
        .replace("{instance}", "1");
    let found =
        tcf_runtime::process::ProcessRuntime::new(config_dir(config)).resolve_program(&program)?;
    // `./app/bin/api` resolves to `DIR/./app/bin/api`: report it as `DIR/app/bin/api`.
    Some(
        found
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect(),
    )
}

fn commands_writable(rule: &'static Rule, config: &Config) -> Result<Vec<Finding>, String> {
    let mut findings = Vec::new();
    let mut checked = 0;
    let mut missing = Vec::new();
    for service in config.services.values() {
        if service.runtime != RuntimeKind::Process {
            continue;
        }
        match service_program(config, service) {
            Some(program) => {
                checked += 1;
                findings.extend(writable_by_others(
                    rule,
                    &program,
                    &format!("the program of service {}", service.name),
                ));
            }
            None => missing.push(service.name.clone()),
        }
    }
    if checked == 0 && !missing.is_empty() {
        return Err(format!(
            "the programs of {} were not found (checked as the process runtime looks them up)",
            missing.join(", ")
        ));
    }
    dedup(&mut findings);
    Ok(findings)
}

fn hooks_writable(rule: &'static Rule, config: &Config) -> Result<Vec<Finding>, String> {
    let dir = config_dir(config);
    let mut findings = Vec::new();
    let hooks = [
        ("pre_deploy", &config.hooks.pre_deploy),
        ("post_deploy", &config.hooks.post_deploy),
        ("post_rollback", &config.hooks.post_rollback),
    ];
    for (name, argv) in hooks {
        let Some(argv) = argv else { continue };
        for (i, arg) in argv.iter().enumerate() {
            // The program (looked up as the hook runner does), and any argument naming a
            // file: the script a shell or interpreter runs.
            let path = if i == 0 && !arg.contains('/') {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join(arg))
                        .find(|p| p.is_file())
                })
            } else {
                Some(dir.join(arg)).filter(|p| p.is_file())
            };
            if let Some(path) = path {
                findings.extend(writable_by_others(
                    rule,
                    &path,
                    &format!("a file of the {name} hook"),
                ));
            }
        }
    }
    dedup(&mut findings);
    Ok(findings)
}

pub(crate) fn dedup(findings: &mut Vec<Finding>) {
    let mut seen = BTreeSet::new();
    findings.retain(|f| seen.insert(f.fingerprint.clone()));
}

/// The line of `key = …` in the config text, searching from `section`'s header when it is found.
pub(crate) fn line_of(text: &str, section: &str, key: &str) -> Option<u32> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with(section))
        .unwrap_or(0);
    let matches_key = |l: &str| {
        let l = l.trim_start().trim_start_matches('{').trim_start();
        l.strip_prefix(key)
            .or_else(|| l.strip_prefix(&format!("\"{key}\"")))
            .is_some_and(|rest| rest.trim_start().starts_with('='))
            || l.contains(&format!(" {key} ="))
            || l.contains(&format!("{{{key} ="))
            || l.contains(&format!(", {key} ="))
    };
    lines
        .iter()
        .enumerate()
        .skip(start)
        .chain(lines.iter().enumerate().take(start))
        .find(|(_, l)| matches_key(l))
        .map(|(i, _)| i as u32 + 1)
}

/// Every env entry of every service, with its location in the config.
fn env_entries<'a>(
    ctx: &'a Ctx<'a>,
) -> impl Iterator<Item = (&'a str, &'a str, &'a str, Location)> + 'a {
    ctx.config.services.values().flat_map(move |service| {
        service.env.iter().map(move |(key, value)| {
            let line = line_of(ctx.text, &format!("[services.{}", service.name), key);
            let location = Location::resource(format!("service {}, env {key}", service.name))
                .in_file(&ctx.config.path, line);
            (
                service.name.as_str(),
                key.as_str(),
                value.as_str(),
                location,
            )
        })
    })
}

fn plaintext_secrets(rule: &'static Rule, ctx: &Ctx<'_>) -> Vec<Finding> {
    let backup = backup_passwords(ctx)
        .into_iter()
        .filter(|(_, password, _)| secrets::is_literal_secret(password))
        .map(|(what, _, location)| {
            Finding::new(
                rule,
                location,
                format!(
                    "{what} is written in the config file (value not shown; use ${{secret:NAME}})"
                ),
            )
        });
    env_entries(ctx)
        .filter_map(|(service, key, value, location)| {
            let why = if secrets::is_credential_key(key) && secrets::is_literal_secret(value) {
                "credential keyword in the key"
            } else {
                secrets::secret_shaped(value)?
            };
            Some(Finding::new(
                rule,
                location,
                format!(
                    "env {key} of service {service} holds a literal credential in the config file (value not shown; rule: {why})"
                ),
            ))
        })
        .chain(backup)
        .collect()
}

fn url_credentials(rule: &'static Rule, ctx: &Ctx<'_>) -> Vec<Finding> {
    let mut findings: Vec<Finding> = env_entries(ctx)
        .filter_map(|(service, key, value, location)| {
            let user = secrets::url_with_password(value)?;
            Some(Finding::new(
                rule,
                location,
                format!(
                    "env {key} of service {service} is a URL with a password for user {user:?} (password not shown)"
                ),
            ))
        })
        .collect();
    for dep in ctx.config.dependencies.values() {
        if let Some(user) = dep.url.as_deref().and_then(secrets::url_with_password) {
            let line = line_of(ctx.text, &format!("[dependencies.{}", dep.name), "url");
            findings.push(Finding::new(
                rule,
                Location::resource(format!("dependency {}, url", dep.name))
                    .in_file(&ctx.config.path, line),
                format!(
                    "the url of dependency {} holds a password for user {user:?} (password not shown)",
                    dep.name
                ),
            ));
        }
    }
    findings
}

fn weak_secrets(rule: &'static Rule, ctx: &Ctx<'_>) -> Vec<Finding> {
    let backup = backup_passwords(ctx)
        .into_iter()
        .filter(|(_, password, _)| secrets::is_literal_secret(password))
        .filter_map(|(what, password, location)| {
            let why = secrets::weakness(password)?;
            Some(Finding::new(
                rule,
                location,
                format!("{what} is {why} (value not shown)"),
            ))
        });
    env_entries(ctx)
        .filter(|(_, key, value, _)| {
            secrets::is_credential_key(key) && secrets::is_literal_secret(value)
        })
        .filter_map(|(service, key, value, location)| {
            let why = secrets::weakness(value)?;
            Some(Finding::new(
                rule,
                location,
                format!("env {key} of service {service} is {why} (value not shown)"),
            ))
        })
        .chain(backup)
        .collect()
}

/// Env and compose files, by name.
pub(crate) fn is_env_or_compose_file(name: &str) -> bool {
    let yaml = name.ends_with(".yml") || name.ends_with(".yaml");
    name == ".env"
        || name.starts_with(".env.")
        || name.ends_with(".env")
        || (yaml && (name.starts_with("compose") || name.starts_with("docker-compose")))
}

/// `KEY=value`, `export KEY=value`, `- KEY=value`, `KEY: value`: the key and the unquoted value.
pub(crate) fn key_value(line: &str) -> Option<(&str, &str)> {
    let line = line.trim();
    if line.starts_with('#') {
        return None;
    }
    let line = line.strip_prefix("export ").unwrap_or(line);
    let line = line.strip_prefix("- ").unwrap_or(line).trim_start();
    let (key, value) = match (line.find('='), line.find(": ")) {
        (Some(eq), Some(colon)) if colon < eq => line.split_at(colon),
        (Some(eq), _) => line.split_at(eq),
        (None, Some(colon)) => line.split_at(colon),
        (None, None) => return None,
    };
    let key = key.trim().trim_matches(['"', '\'']);
    let value = value[1..].trim().trim_matches(['"', '\'']);
    let key_ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    key_ok.then_some((key, value))
}

fn secrets_in_files(rule: &'static Rule, config: &Config) -> Vec<Finding> {
    let mut dirs = BTreeSet::new();
    dirs.insert(config_dir(config));
    for service in config.services.values() {
        if service.runtime != RuntimeKind::Process {
            continue;
        }
        if let Some(dir) = service_program(config, service)
            .as_deref()
            .and_then(Path::parent)
        {
            dirs.insert(dir.to_path_buf());
            dirs.extend(dir.parent().map(Path::to_path_buf));
        }
    }
    let mut findings = Vec::new();
    for dir in dirs {
        for file in advisories::files_named(&dir, is_env_or_compose_file) {
            // Binary or unreadable files are not env files.
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            for (number, line) in text.lines().enumerate() {
                let Some((key, value)) = key_value(line) else {
                    continue;
                };
                let rule_hit =
                    if secrets::is_credential_key(key) && secrets::is_literal_secret(value) {
                        Some("credential keyword in the key")
                    } else if secrets::url_with_password(value).is_some() {
                        Some("URL with a password")
                    } else {
                        secrets::secret_shaped(value)
                    };
                if let Some(why) = rule_hit {
                    let line_no = number as u32 + 1;
                    findings.push(Finding::new(
                        rule,
                        Location::resource(format!("{}:{line_no} {key}", file.display()))
                            .in_file(&file, Some(line_no)),
                        format!("{key} holds a literal credential (value not shown; rule: {why})"),
                    ));
                }
            }
        }
    }
    findings
}

fn backups(rule: &'static Rule, ctx: &Ctx<'_>) -> Result<Vec<Finding>, String> {
    let section = || {
        Location::resource("config [backup]").in_file(
            &ctx.config.path,
            line_of(ctx.text, "[backup]", "repository"),
        )
    };
    let Some(backup) = &ctx.config.backup else {
        return if rule.id == "TCF-BAK-001" {
            Ok(vec![Finding::new(
                rule,
                Location::resource("config [backup]").in_file(&ctx.config.path, None),
                "the config has no [backup]: nothing is backed up, and no restore has been proven",
            )])
        } else {
            Err("the config has no [backup] to inspect (see TCF-BAK-001)".to_string())
        };
    };
    let finding = match rule.id {
        "TCF-BAK-001" => backup
            .sources
            .is_empty()
            .then(|| "[backup] has no sources: nothing is backed up".to_string()),
        "TCF-BAK-002" => backup.recipients.is_empty().then(|| {
            format!(
                "[backup] has no recipients: the artifacts in {} are not encrypted",
                backup.repository.display()
            )
        }),
        "TCF-BAK-004" => restore_not_proven(backup)?,
        _ => backup.schedule.is_none().then(|| {
            "[backup] has no schedule: backups run only by hand or with a deploy's --backup"
                .to_string()
        }),
    };
    Ok(finding
        .map(|detail| Finding::new(rule, section(), detail))
        .into_iter()
        .collect())
}

/// How many days a restore-verify stays recent enough (the monitor's restore_verify_stale too).
const RESTORE_PROOF_DAYS: i64 = 7;

/// Why no backup counts as proven restorable, if so: read from the repository (a listing of
/// manifests and their verify records; no key and no server needed).
fn restore_not_proven(backup: &tcf_config::BackupConfig) -> Result<Option<String>, String> {
    let settings = tcf_backup::Settings::for_repository(backup)
        .map_err(|e| format!("cannot read [backup]: {e}"))?;
    let backups = tcf_backup::Backups::new(settings);
    let last = backups
        .last_passed_verify(tcf_backup::Level::Restore)
        .map_err(|e| {
            format!(
                "cannot read the repository {}: {e}",
                backup.repository.display()
            )
        })?;
    let Some(last) = last else {
        return Ok(Some(format!(
            "no backup in {} ever passed `backup verify --level restore`",
            backup.repository.display()
        )));
    };
    let at = tcf_backup::time::parse_rfc3339_ms(&last)
        .ok_or_else(|| format!("the repository records a verify time {last:?} it cannot read"))?;
    let days = (tcf_backup::time::now_unix_ms() - at) / 86_400_000;
    Ok((days >= RESTORE_PROOF_DAYS).then(|| {
        format!(
            "the last backup that passed a restore-verify was verified {days} days ago ({last})"
        )
    }))
}

/// Passwords written into `[backup.sources.NAME]` (or the URL they came from).
fn backup_passwords<'a>(ctx: &'a Ctx<'a>) -> Vec<(String, &'a str, Location)> {
    let Some(backup) = &ctx.config.backup else {
        return Vec::new();
    };
    backup
        .sources
        .values()
        .filter_map(|source| {
            let password = match &source.kind {
                tcf_config::BackupSourceKind::Postgres { password, .. }
                | tcf_config::BackupSourceKind::Redis { password, .. } => password.as_deref()?,
                _ => return None,
            };
            let line = line_of(
                ctx.text,
                &format!("[backup.sources.{}]", source.name),
                "password",
            )
            .or_else(|| {
                line_of(
                    ctx.text,
                    &format!("[backup.sources.{}]", source.name),
                    "url",
                )
            });
            let what = format!("backup source {}, password", source.name);
            Some((
                what.clone(),
                password,
                Location::resource(what).in_file(&ctx.config.path, line),
            ))
        })
        .collect()
}

fn public_without_tls(rule: &'static Rule, ctx: &Ctx<'_>) -> Vec<Finding> {
    ctx.config
        .services
        .values()
        .filter(|s| !s.listen.ip().is_loopback() && s.tls.is_none())
        .map(|s| {
            let which = if s.listen.ip().is_unspecified() {
                "every interface".to_string()
            } else {
                format!("the non-loopback address {}", s.listen.ip())
            };
            let line = line_of(ctx.text, &format!("[services.{}", s.name), "listen");
            Finding::new(
                rule,
                Location::resource(format!("service {}", s.name))
                    .in_file(&ctx.config.path, line)
                    .with_uri(format!("tcp://{}", s.listen)),
                format!(
                    "service {} listens on {} ({}) over plain HTTP: it has no tls, so nothing encrypts this traffic",
                    s.name, s.listen, which
                ),
            )
        })
        .collect()
}

/// The host of `host:port` (`[::1]:5432` too) and the port.
fn split_address(address: &str) -> Option<(String, u16)> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Some((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = address.rsplit_once(':')?;
    Some((
        host.trim_matches(['[', ']']).to_ascii_lowercase(),
        port.parse().ok()?,
    ))
}

fn exposed_dependencies(rule: &'static Rule, ctx: &Ctx<'_>) -> Result<Vec<Finding>, String> {
    let with_address: Vec<&tcf_config::Dependency> = ctx
        .config
        .dependencies
        .values()
        .filter(|d| d.address.is_some())
        .collect();
    if with_address.is_empty() {
        return Err("no [dependencies] entry has an address (host:port) to look up".to_string());
    }
    let listeners = procnet::host_listeners()
        .map_err(|e| format!("cannot read this host's listeners (/proc/net/tcp): {e}"))?;
    let mut findings = Vec::new();
    let mut local = 0;
    for dep in with_address {
        let address = dep.address.as_deref().unwrap_or_default();
        let Some((host, port)) = split_address(address) else {
            continue;
        };
        let ip = host.parse::<std::net::IpAddr>().ok();
        let loopback = host == "localhost" || ip.is_some_and(|ip| ip.is_loopback());
        let on_port: Vec<&SocketAddr> = listeners.iter().filter(|a| a.port() == port).collect();
        // A non-loopback address is this host's when something here listens on it (or on
        // every interface); any other host is not ours to look at.
        let ours = loopback
            || ip.is_some_and(|ip| {
                on_port
                    .iter()
                    .any(|a| a.ip() == ip || a.ip().is_unspecified())
            });
        if !ours {
            continue;
        }
        local += 1;
        let exposed: BTreeSet<String> = on_port
            .iter()
            .filter(|a| !a.ip().is_loopback())
            .map(|a| a.to_string())
            .collect();
        if exposed.is_empty() {
            continue;
        }
        let line = line_of(ctx.text, &format!("[dependencies.{}", dep.name), "address");
        let everywhere = on_port.iter().any(|a| a.ip().is_unspecified());
        findings.push(
            Finding::new(
                rule,
                Location::resource(format!("dependency {}", dep.name))
                    .in_file(&ctx.config.path, line)
                    .with_uri(format!("tcp://{address}")),
                format!(
                    "dependency {} ({address}) is listened for on {}{}",
                    dep.name,
                    exposed.into_iter().collect::<Vec<_>>().join(", "),
                    if everywhere {
                        ": every interface of this host"
                    } else {
                        ": a non-loopback address"
                    }
                ),
            )
            .severity(if everywhere {
                Severity::High
            } else {
                Severity::Medium
            }),
        );
    }
    if local == 0 {
        return Err(
            "no [dependencies] address is on this host (loopback, localhost or an address it listens on)"
                .to_string(),
        );
    }
    Ok(findings)
}

fn no_hsts(rule: &'static Rule, ctx: &Ctx<'_>) -> Vec<Finding> {
    ctx.config
        .services
        .values()
        .filter(|s| s.tls.as_ref().is_some_and(|t| t.hsts.is_none()))
        .map(|s| {
            let line = line_of(ctx.text, &format!("[services.{}", s.name), "tls");
            Finding::new(
                rule,
                Location::resource(format!("service {}", s.name)).in_file(&ctx.config.path, line),
                format!("service {} serves HTTPS without an hsts header", s.name),
            )
        })
        .collect()
}

/// How long a token may go unused before TCF-AUTH-002 reports it.
const TOKEN_UNUSED_DAYS: i64 = 90;

fn tokens(rule: &'static Rule, live: &LiveView) -> CheckResult {
    let tokens = match &live.tokens {
        Ok(t) => t,
        Err(why) => return CheckResult::not_run(rule, why.clone()),
    };
    let now = tcf_backup::time::now_unix_ms();
    let location = |t: &LiveToken| Location::resource(format!("token {}", t.name));
    let findings = tokens
        .iter()
        .filter(|t| !t.revoked && t.expires_ms.is_none_or(|e| e > now))
        .filter_map(|t| match rule.id {
            "TCF-AUTH-001" => t.expires_ms.is_none().then(|| {
                let finding = Finding::new(
                    rule,
                    location(t),
                    format!("the {} token {} never expires", t.role, t.name),
                );
                if t.role == "viewer" {
                    finding.severity(Severity::Low)
                } else {
                    finding
                }
            }),
            _ => {
                let since = t.last_used_ms.unwrap_or(t.created_ms);
                let days = (now - since) / 86_400_000;
                (days > TOKEN_UNUSED_DAYS).then(|| {
                    let what = if t.last_used_ms.is_some() {
                        "last used"
                    } else {
                        "created, never used,"
                    };
                    Finding::new(
                        rule,
                        location(t),
                        format!("the {} token {} was {what} {days} days ago", t.role, t.name),
                    )
                })
            }
        })
        .collect();
    CheckResult::ran(rule, findings)
}

/// Above this a body limit protects nothing.
const LARGEST_SENSIBLE_BODY: u64 = 1 << 30;

fn body_limits(rule: &'static Rule, ctx: &Ctx<'_>) -> Vec<Finding> {
    ctx.config
        .services
        .values()
        .filter(|s| s.max_request_body > LARGEST_SENSIBLE_BODY)
        .map(|s| {
            Finding::new(
                rule,
                Location::resource(format!("service {}", s.name)).in_file(
                    &ctx.config.path,
                    line_of(
                        ctx.text,
                        &format!("[services.{}", s.name),
                        "max_request_body",
                    ),
                ),
                format!(
                    "max_request_body is {} bytes (over 1 GiB): effectively unlimited",
                    s.max_request_body
                ),
            )
        })
        .collect()
}

fn health_checks(rule: &'static Rule, ctx: &Ctx<'_>) -> Result<Vec<Finding>, String> {
    let doc: toml::Table = ctx
        .text
        .parse()
        .map_err(|e| format!("cannot parse {}: {e}", ctx.config.path.display()))?;
    let has_health = |table: Option<&toml::Value>| {
        table
            .and_then(|t| t.get("health"))
            .is_some_and(|h| h.as_table().is_some_and(|t| !t.is_empty()))
    };
    let env = ctx
        .config
        .environment
        .as_deref()
        .and_then(|e| doc.get("environments").and_then(|envs| envs.get(e)));
    let defaults_health =
        has_health(doc.get("defaults")) || has_health(env.and_then(|e| e.get("defaults")));
    if defaults_health {
        return Ok(Vec::new());
    }
    Ok(ctx
        .config
        .services
        .values()
        .filter(|s| {
            let own = doc.get("services").and_then(|t| t.get(&s.name));
            let overlay = env
                .and_then(|e| e.get("services"))
                .and_then(|t| t.get(&s.name));
            !has_health(own) && !has_health(overlay)
        })
        .map(|s| {
            Finding::new(
                rule,
                Location::resource(format!("service {}", s.name)).in_file(
                    &ctx.config.path,
                    line_of(ctx.text, &format!("[services.{}]", s.name), "command"),
                ),
                format!(
                    "service {} has no [health] of its own or in [defaults]: it is probed with GET /health by default",
                    s.name
                ),
            )
        })
        .collect())
}

fn dependencies(
    rule: &'static Rule,
    config: &Config,
    advisories: Option<&Result<Database, String>>,
) -> Result<Vec<Finding>, String> {
    let mut lockfiles = BTreeSet::new();
    let mut looked = BTreeSet::new();
    for service in config.services.values() {
        if service.runtime != RuntimeKind::Process {
            continue;
        }
        let Some(program) = service_program(config, service) else {
            continue;
        };
        let Some(dir) = program.parent() else {
            continue;
        };
        for candidate_dir in [Some(dir), dir.parent()].into_iter().flatten() {
            looked.insert(candidate_dir.to_path_buf());
            for file in advisories::lockfiles_in(candidate_dir) {
                lockfiles.insert((service.name.clone(), file));
            }
        }
    }
    if lockfiles.is_empty() {
        let dirs: Vec<String> = looked.iter().map(|d| d.display().to_string()).collect();
        return Err(format!(
            "no {} next to any service's program (looked in {})",
            advisories::LOCKFILE_NAMES,
            if dirs.is_empty() {
                "no directory: no process service's program was found".to_string()
            } else {
                dirs.join(", ")
            }
        ));
    }
    let db = match advisories {
        None => {
            return Err(format!(
                "{} lockfile(s) found but no advisory database: pass --advisories FILE|DIR (OSV JSON); nothing is fetched from the network",
                lockfiles.len()
            ))
        }
        Some(Err(why)) => return Err(why.clone()),
        Some(Ok(db)) => db,
    };
    let mut findings = Vec::new();
    for (service, lockfile) in &lockfiles {
        let locked = advisories::read_lockfile(lockfile).map_err(|e| e.to_string())?;
        for package in &locked {
            for advisory in &db.advisories {
                if !advisory.affects(package.ecosystem, &package.name, &package.version) {
                    continue;
                }
                let fixed = advisory.fixed_versions(package.ecosystem, &package.name);
                let remediation = if fixed.is_empty() {
                    format!(
                        "No fixed version of {} is named in {}: replace the package or accept the risk with an ignore.",
                        package.name, advisory.id
                    )
                } else {
                    format!(
                        "Upgrade {} to {} or later ({}), rebuild and deploy service {service}.",
                        package.name,
                        fixed.join(" / "),
                        update_hint(package.ecosystem)
                    )
                };
                findings.push(
                    Finding::new(
                        rule,
                        Location::resource(format!(
                            "{} {}@{} ({})",
                            package.ecosystem, package.name, package.version, advisory.id
                        ))
                        .in_file(lockfile, None),
                        format!(
                            "{} {} of service {service} is affected by {}: {}",
                            package.name, package.version, advisory.id, advisory.summary
                        ),
                    )
                    .severity(advisory.severity().unwrap_or(rule.severity))
                    .remediation(remediation),
                );
            }
        }
    }
    Ok(findings)
}

/// The advisory database's age against `[audit] advisories_max_age`: a finding when stale,
/// INFO with the age when fresh.
fn advisories_age(
    rule: &'static Rule,
    config: &Config,
    advisories: Option<&Result<Database, String>>,
) -> CheckResult {
    let db = match advisories {
        None => {
            return CheckResult::not_run(
                rule,
                "no advisory database: pass --advisories FILE|DIR, or fill STATE_DIR/advisories with `prod audit --update-advisories`",
            )
        }
        Some(Err(why)) => return CheckResult::not_run(rule, why.clone()),
        Some(Ok(db)) => db,
    };
    let Some(modified) = db.modified else {
        return CheckResult::not_run(
            rule,
            format!(
                "the advisory database {} holds no advisory file to date it by",
                db.path.display()
            ),
        );
    };
    let max_age = config.audit.advisories_max_age;
    // A file dated in the future (a clock set back) is as fresh as now.
    let age = std::time::SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default();
    if age <= max_age {
        return CheckResult::info(
            rule,
            format!(
                "the advisory database {} ({} advisories) was updated {} ago, within [audit] advisories_max_age ({})",
                db.path.display(),
                db.advisories.len(),
                days_text(age),
                days_text(max_age)
            ),
        );
    }
    CheckResult::ran(
        rule,
        vec![Finding::new(
            rule,
            Location::file(&db.path),
            format!(
                "the advisory database ({} advisories) was last updated {} ago, over [audit] advisories_max_age ({}): advisories published since are not matched",
                db.advisories.len(),
                days_text(age),
                days_text(max_age)
            ),
        )],
    )
}

/// `12 days`, `1 day`, or hours under a day.
fn days_text(age: std::time::Duration) -> String {
    let days = age.as_secs() / 86_400;
    match days {
        0 => format!("{} hours", age.as_secs() / 3_600),
        1 => "1 day".to_string(),
        n => format!("{n} days"),
    }
}

/// How a package of `ecosystem` is upgraded in its lockfile.
fn update_hint(ecosystem: &str) -> &'static str {
    match ecosystem {
        "crates.io" => "cargo update -p NAME",
        "npm" => "npm update NAME",
        "PyPI" => "raise the pin in requirements, or poetry update NAME",
        "RubyGems" => "bundle update NAME",
        _ => "update the lockfile",
    }
}

// --- online ------------------------------------------------------------------------------

fn instances_with_pids(live: &LiveView) -> Vec<(&LiveService, &LiveInstance, u32)> {
    live.services
        .iter()
        .flat_map(|s| s.instances.iter().map(move |i| (s, i)))
        .filter_map(|(s, i)| i.pid.map(|pid| (s, i, pid)))
        .collect()
}

/// The processes of an instance: its pid and, when it leads a process group (the process
/// runtime puts each instance in its own), everything started in that group since, such as
/// the children of a `sh -c` command.
fn instance_processes(pid: u32) -> Vec<u32> {
    use tcf_runtime::procfs;
    let mut pids = vec![pid];
    if procfs::process_group(pid) == Some(pid) {
        if let Some(started) = procfs::start_ticks(pid) {
            pids.extend(
                procfs::group_members(pid, started)
                    .into_iter()
                    .filter(|p| *p != pid),
            );
        }
    }
    pids.sort_unstable();
    pids
}

fn instance_location(service: &LiveService, instance: &LiveInstance, pid: u32) -> Location {
    Location::resource(format!(
        "service {}, instance {}",
        service.name, instance.id
    ))
    .with_uri(format!("proc://{pid}"))
}

fn instances_as_root(rule: &'static Rule, live: &LiveView) -> CheckResult {
    let instances = instances_with_pids(live);
    if instances.is_empty() {
        return CheckResult::not_run(rule, "no running instance with a process id to inspect");
    }
    let mut findings = Vec::new();
    let mut read = 0;
    for (service, instance, pid) in instances {
        // An instance that exited since the status was read is skipped.
        let Ok(uid) = procnet::effective_uid(pid) else {
            continue;
        };
        read += 1;
        let as_root: Vec<u32> = std::iter::once(pid)
            .filter(|_| uid == 0)
            .chain(
                instance_processes(pid)
                    .into_iter()
                    .filter(|p| *p != pid && procnet::effective_uid(*p).is_ok_and(|u| u == 0)),
            )
            .collect();
        if !as_root.is_empty() {
            let pids: Vec<String> = as_root.iter().map(u32::to_string).collect();
            findings.push(Finding::new(
                rule,
                instance_location(service, instance, pid),
                format!(
                    "instance {} runs as root (effective uid 0): pid {}",
                    instance.id,
                    pids.join(", ")
                ),
            ));
        }
    }
    if read == 0 {
        return CheckResult::not_run(rule, "no instance's /proc/PID/status could be read");
    }
    CheckResult::ran(rule, findings)
}

fn listeners_vs_config(rule: &'static Rule, config: &Config, live: &LiveView) -> CheckResult {
    let bound = match procnet::listening_addrs(live.daemon_pid) {
        Ok(b) => b,
        Err(e) => {
            return CheckResult::not_run(
                rule,
                format!(
                    "cannot read the daemon's sockets (pid {}): {e}",
                    live.daemon_pid
                ),
            )
        }
    };
    // The services' addresses and the daemon's own: plain HTTP listeners, the remote API,
    // the Prometheus endpoint, the dashboard.
    let expected: BTreeSet<SocketAddr> = daemon_addresses(config).collect();
    let mut findings = Vec::new();
    for service in config.services.values() {
        if !bound.contains(&service.listen) {
            findings.push(
                Finding::new(
                    rule,
                    Location::resource(format!("service {}", service.name))
                        .with_uri(format!("tcp://{}", service.listen)),
                    format!(
                        "the config says {} but the daemon (pid {}) does not listen there",
                        service.listen, live.daemon_pid
                    ),
                )
                .severity(Severity::High),
            );
        }
    }
    for addr in bound.difference(&expected) {
        findings.push(Finding::new(
            rule,
            Location::resource(format!("tcp://{addr}")).with_uri(format!("tcp://{addr}")),
            format!(
                "the daemon (pid {}) listens on {addr}, which the config does not declare (a dashboard started with `prod monitor --dashboard` is one)",
                live.daemon_pid
            ),
        ));
    }
    CheckResult::ran(rule, findings)
}

/// Every listener of the host that is neither the platform's processes' nor on a port the
/// config declares.
/// Every address the daemon itself listens on: the services' (and their plain HTTP
/// listeners), the remote API, the Prometheus endpoint, the dashboard.
fn daemon_addresses(config: &Config) -> impl Iterator<Item = SocketAddr> + '_ {
    config
        .services
        .values()
        .flat_map(|s| [Some(s.listen), s.tls.as_ref().and_then(|t| t.http_listen)])
        .chain([
            config.daemon.listen,
            config.monitor.metrics_listen,
            config.monitor.dashboard_listen,
        ])
        .flatten()
}

fn unexpected_listeners(rule: &'static Rule, config: &Config, live: &LiveView) -> CheckResult {
    let rows = match procnet::host_listen_rows() {
        Ok(rows) => rows,
        Err(e) => {
            return CheckResult::not_run(
                rule,
                format!("cannot read this host's listeners (/proc/net/tcp): {e}"),
            )
        }
    };
    let holders = procnet::socket_holders();
    // The platform's processes: the daemon (the proxy and the API are in it) and every
    // instance with what it started.
    let mut ours: BTreeSet<u32> = BTreeSet::from([live.daemon_pid]);
    for (_, _, pid) in instances_with_pids(live) {
        ours.extend(instance_processes(pid));
    }
    // Declared ports: whatever holds them (docker-proxy publishing a container's port, a
    // dependency run outside the platform) is expected there.
    let mut ports: BTreeSet<u16> = daemon_addresses(config).map(|a| a.port()).collect();
    ports.extend(
        live.services
            .iter()
            .flat_map(|s| s.instances.iter().map(|i| i.port)),
    );
    ports.extend(
        config
            .dependencies
            .values()
            .filter_map(|d| d.address.as_deref().and_then(split_address))
            .map(|(_, port)| port),
    );
    let mut findings = Vec::new();
    for row in rows {
        let pids = holders.get(&row.inode).cloned().unwrap_or_default();
        if pids.iter().any(|p| ours.contains(p)) || ports.contains(&row.addr.port()) {
            continue;
        }
        let name = pids.iter().find_map(|p| procnet::command_name(*p));
        let who = match (&name, pids.is_empty()) {
            (Some(name), _) => {
                let list: Vec<String> = pids.iter().map(u32::to_string).collect();
                format!(
                    "{name} (pid {}, uid {})",
                    list.join(", "),
                    uid_text(row.uid)
                )
            }
            (None, false) => {
                let list: Vec<String> = pids.iter().map(u32::to_string).collect();
                format!("pid {} (uid {})", list.join(", "), uid_text(row.uid))
            }
            (None, true) => format!(
                "a process of uid {} this audit cannot see (run it as root to name it)",
                uid_text(row.uid)
            ),
        };
        let loopback = row.addr.ip().is_loopback();
        findings.push(
            Finding::new(
                rule,
                Location::resource(format!(
                    "tcp://{} ({})",
                    row.addr,
                    name.as_deref().unwrap_or("unknown process")
                ))
                .with_uri(format!("tcp://{}", row.addr)),
                format!(
                    "{} is listened on by {who}: neither the daemon, an instance, nor a port the config declares{}",
                    row.addr,
                    if loopback {
                        " (loopback only)"
                    } else {
                        "; it is reachable from the network"
                    }
                ),
            )
            .severity(if loopback {
                Severity::Info
            } else {
                Severity::Low
            }),
        );
    }
    dedup(&mut findings);
    CheckResult::ran(rule, findings)
}

fn instance_extra_ports(rule: &'static Rule, live: &LiveView) -> CheckResult {
    let instances = instances_with_pids(live);
    if instances.is_empty() {
        return CheckResult::not_run(rule, "no running instance with a process id to inspect");
    }
    let mut findings = Vec::new();
    let mut errors = Vec::new();
    let mut read = 0;
    for (service, instance, pid) in instances {
        let mut listening = procnet::listening_addrs(pid);
        for member in instance_processes(pid).into_iter().filter(|p| *p != pid) {
            // A child that exited meanwhile has nothing open any more.
            if let (Ok(all), Ok(more)) = (&mut listening, procnet::listening_addrs(member)) {
                all.extend(more);
            }
        }
        match listening {
            Ok(addrs) => {
                read += 1;
                for addr in addrs.iter().filter(|a| a.port() != instance.port) {
                    findings.push(Finding::new(
                        rule,
                        Location::resource(format!(
                            "service {}, instance {}, tcp://{addr}",
                            service.name, instance.id
                        ))
                        .with_uri(format!("tcp://{addr}")),
                        format!(
                            "instance {} (pid {pid} or a process it started) listens on {addr} besides its PORT {}",
                            instance.id, instance.port
                        ),
                    ));
                }
            }
            Err(e) => errors.push(format!("pid {pid}: {e}")),
        }
    }
    if read == 0 {
        return CheckResult::not_run(
            rule,
            format!("cannot read the instances' sockets: {}", errors.join("; ")),
        );
    }
    CheckResult::ran(rule, findings)
}

fn socket_mode(rule: &'static Rule, live: &LiveView) -> CheckResult {
    let meta = match std::fs::metadata(&live.socket) {
        Ok(m) => m,
        Err(e) => {
            return CheckResult::not_run(
                rule,
                format!("cannot read the socket {}: {e}", live.socket.display()),
            )
        }
    };
    let mode = meta.permissions().mode();
    let mut findings = Vec::new();
    if mode & 0o022 != 0 || mode & 0o044 != 0 {
        // Connecting to a Unix socket needs write permission on it.
        let severity = if mode & 0o002 != 0 {
            Severity::Critical
        } else if mode & 0o020 != 0 {
            Severity::High
        } else {
            Severity::Low
        };
        findings.push(
            Finding::new(
                rule,
                Location::file(&live.socket),
                format!(
                    "mode {} (owner uid {}): {}",
                    mode_text(mode),
                    meta.uid(),
                    who_may(mode & 0o066, false)
                ),
            )
            .severity(severity),
        );
    }
    CheckResult::ran(rule, findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live_with(tokens: Result<Vec<LiveToken>, String>) -> LiveView {
        LiveView {
            daemon_pid: 1,
            socket: PathBuf::from("/run/x.sock"),
            services: vec![],
            tokens,
            failed_auths: Ok(Vec::new()),
        }
    }

    fn found(result: CheckResult) -> Vec<(String, Severity)> {
        result
            .findings
            .unwrap()
            .into_iter()
            .map(|f| (f.location.resource, f.severity))
            .collect()
    }

    #[test]
    fn tokens_that_never_expire_or_lie_unused() {
        let day = 86_400_000;
        let now = tcf_backup::time::now_unix_ms();
        let token = |name: &str, role: &str, expires, last_used, revoked| LiveToken {
            name: name.into(),
            role: role.into(),
            created_ms: now - 200 * day,
            expires_ms: expires,
            last_used_ms: last_used,
            revoked,
        };
        let live = live_with(Ok(vec![
            token("ci", "deployer", None, Some(now - day), false),
            token("grafana", "viewer", None, Some(now - day), false),
            token("old", "admin", Some(now + 30 * day), None, false),
            token("gone", "admin", None, None, true),
            token("lapsed", "admin", Some(now - day), None, false),
        ]));
        assert_eq!(
            found(tokens(&crate::rules::TOKEN_NEVER_EXPIRES, &live)),
            [
                ("token ci".to_string(), Severity::Medium),
                ("token grafana".to_string(), Severity::Low)
            ]
        );
        assert_eq!(
            found(tokens(&crate::rules::TOKEN_UNUSED, &live)),
            [("token old".to_string(), Severity::Low)]
        );
        // Tokens that could not be read: not run, never a pass.
        let unknown = live_with(Err("the daemon's tokens could not be read".into()));
        assert!(tokens(&crate::rules::TOKEN_UNUSED, &unknown)
            .findings
            .is_err());
    }

    #[test]
    fn line_of_finds_keys_in_their_section_and_inline_tables() {
        let text = "[services.a]\nenv = { DB_PASSWORD = \"x\" }\n[services.b]\nlisten = \"0.0.0.0:1\"\n[services.b.env]\nTOKEN = \"y\"\n";
        assert_eq!(line_of(text, "[services.a", "DB_PASSWORD"), Some(2));
        assert_eq!(line_of(text, "[services.b", "listen"), Some(4));
        assert_eq!(line_of(text, "[services.b", "TOKEN"), Some(6));
        assert_eq!(line_of(text, "[services.b", "NOPE"), None);
    }

    #[test]
    fn env_and_compose_lines() {
        assert_eq!(key_value("DB_PASSWORD=abc"), Some(("DB_PASSWORD", "abc")));
        assert_eq!(key_value("export TOKEN=\"x y\""), Some(("TOKEN", "x y")));
        assert_eq!(key_value("      - API_KEY=k"), Some(("API_KEY", "k")));
        assert_eq!(
            key_value("  POSTGRES_PASSWORD: 'pw'"),
            Some(("POSTGRES_PASSWORD", "pw"))
        );
        assert_eq!(key_value("# SECRET=commented"), None);
        assert_eq!(key_value("services:"), None);
        assert_eq!(
            key_value("image: postgres:16"),
            Some(("image", "postgres:16"))
        );
        assert!(is_env_or_compose_file(".env"));
        assert!(is_env_or_compose_file(".env.production"));
        assert!(is_env_or_compose_file("db.env"));
        assert!(is_env_or_compose_file("docker-compose.override.yml"));
        assert!(is_env_or_compose_file("compose.yaml"));
        assert!(!is_env_or_compose_file("config.yaml"));
        assert!(!is_env_or_compose_file("environment.rs"));
    }

    #[test]
    fn dependency_addresses_split_into_host_and_port() {
        assert_eq!(
            split_address("127.0.0.1:5432"),
            Some(("127.0.0.1".into(), 5432))
        );
        assert_eq!(split_address("[::1]:6379"), Some(("::1".into(), 6379)));
        assert_eq!(
            split_address("LocalHost:6379"),
            Some(("localhost".into(), 6379))
        );
        assert_eq!(
            split_address("db.internal:5432"),
            Some(("db.internal".into(), 5432))
        );
        assert_eq!(split_address("db.internal"), None);
        assert_eq!(split_address("db:http"), None);
    }

    #[test]
    fn who_may_in_words() {
        assert_eq!(
            who_may(0o755, true),
            "group may list, enter; others may list, enter"
        );
        assert_eq!(who_may(0o602, false), "others may write");
    }
}
