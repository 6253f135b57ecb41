//! `tcf-platform backup …`: runs in the CLI process against the config's `[backup]` (no daemon
//! needed); when a daemon runs, each result is also recorded as an event through its API.
//!
//! Exit codes: 0 success; 1 the backup, verify, restore or prune failed (verify: damage
//! found); 2 usage or config error; 3 the repository is locked by another run; 4 verify could
//! not run a check (nothing failed, but the backup is not proven).

use crate::cli::{BackupCommand, Format, VerifyLevel};
use crate::output;
use crate::{actor, confirm, print_json, print_text, CmdResult, Failure};
use anyhow::anyhow;
use serde::Serialize;
use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tcf_backup::{BackupError, Backups, Identities, Level, Listed, Progress, Settings, Trigger};
use tcf_config::Config;

/// Progress lines on stderr, when it is a terminal.
struct Terminal(bool);

impl Progress for Terminal {
    fn step(&self, message: &str) {
        if self.0 {
            eprintln!("{message}");
        }
    }
}

fn failure(code: u8, error: anyhow::Error) -> Failure {
    Failure { code, error }
}

fn backup_failure(e: BackupError) -> Failure {
    let code = match e {
        BackupError::Locked { .. } => 3,
        BackupError::UnknownSource(_)
        | BackupError::Retention(_)
        | BackupError::Schedule { .. } => 2,
        _ => 1,
    };
    failure(code, e.into())
}

fn settings(config: &Config) -> Result<Settings, Failure> {
    let Some(backup) = &config.backup else {
        return Err(failure(
            2,
            anyhow!(
                "{} has no [backup] section\nhint: add [backup] with repository = \"/var/backups/tcf\" and [backup.sources.NAME]; docs/backups.md shows how",
                config.path.display()
            ),
        ));
    };
    // Secrets are resolved by the platform's secret store once it exists; until then only
    // plain-text passwords (or PGPASSWORD) work here, and the error says which secret.
    Settings::from_config(backup, &|_| None).map_err(backup_failure)
}

fn identities(config: &Config, flag: Option<&PathBuf>) -> Result<Identities, Failure> {
    match flag.or(config.backup.as_ref().and_then(|b| b.identity.as_ref())) {
        Some(path) => Identities::from_file(path).map_err(backup_failure),
        None => Ok(Identities::none()),
    }
}

/// Run blocking backup work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| failure(1, anyhow!("the backup task failed: {e}")))?
        .map_err(backup_failure)
}

/// Record an event with the daemon, if one runs; a platform without a daemon has no event log.
async fn record_event(config: &Config, kind: &str, message: String) {
    let client = tcf_api::Client::new(config.daemon.socket.clone());
    // One line of plain text: the daemon refuses control characters in events.
    let message: String = message
        .replace('\n', " | ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let body = tcf_api::BackupEventRequest {
        kind: kind.to_string(),
        message,
        actor: actor(),
    };
    let _ = client
        .post::<serde_json::Value>("/v1/backup/events", &body)
        .await;
}

pub async fn run(config: Config, command: &BackupCommand) -> CmdResult {
    let progress = Arc::new(Terminal(std::io::stderr().is_terminal()));
    match command {
        BackupCommand::Create { source, format } => {
            create(config, source.clone(), *format, progress).await
        }
        BackupCommand::List { format } => list(config, *format).await,
        BackupCommand::Verify {
            id,
            level,
            identity,
            format,
        } => {
            verify(
                config,
                id.clone(),
                *level,
                identity.as_ref(),
                *format,
                progress,
            )
            .await
        }
        BackupCommand::Restore {
            id,
            source,
            force,
            identity,
            format,
        } => {
            restore(
                config,
                id.clone(),
                source.clone(),
                *force,
                identity.as_ref(),
                *format,
                progress,
            )
            .await
        }
        BackupCommand::Prune { dry_run, format } => {
            prune(config, *dry_run, *format, progress).await
        }
    }
}

async fn create(
    config: Config,
    source: Option<String>,
    format: Format,
    progress: Arc<Terminal>,
) -> CmdResult {
    let backups = Backups::new(settings(&config)?);
    let result =
        blocking(move || backups.create(Trigger::Manual, source.as_deref(), progress.as_ref()))
            .await;
    match result {
        Ok(m) => {
            record_event(
                &config,
                "backup.created",
                format!(
                    "backup {} ({} artifacts, {} bytes)",
                    m.id,
                    m.artifacts.len(),
                    m.total_size()
                ),
            )
            .await;
            match format {
                Format::Json => print_json(&ListEntry::from_manifest(&m, None))?,
                Format::Table => print_text(&format!(
                    "backup {} completed and verified (checksums): {} artifacts, {}\n",
                    m.id,
                    m.artifacts.len(),
                    output::bytes(m.total_size())
                ))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(f) => {
            record_event(&config, "backup.failed", format!("{:#}", f.error)).await;
            Err(f)
        }
    }
}

/// One backup in `backup list --format json` (a stable contract: fields are added, never renamed).
#[derive(Serialize)]
struct ListEntry {
    id: String,
    /// RFC 3339, UTC.
    time: Option<String>,
    /// Readable: `manual`, `schedule`, `pre-deploy of 42`, `recovery point before restoring ID`.
    trigger: Option<String>,
    /// The trigger as data: `{"kind": "pre_deploy", "release": "42"}`.
    trigger_detail: Option<Trigger>,
    sources: Vec<String>,
    size: u64,
    encrypted: bool,
    artifacts: Vec<ArtifactEntry>,
    last_verify: Option<tcf_backup::VerifyRecord>,
    /// Why this backup cannot be used (its manifest is missing or does not match its checksum).
    #[serde(skip_serializing_if = "Option::is_none")]
    damaged: Option<String>,
}

#[derive(Serialize)]
struct ArtifactEntry {
    file: String,
    source: String,
    kind: tcf_backup::ArtifactKind,
    database: Option<String>,
    size: u64,
    sha256: String,
    tool: String,
    server_version: Option<String>,
    duration_ms: u64,
}

impl ListEntry {
    fn from_manifest(
        m: &tcf_backup::Manifest,
        last_verify: Option<tcf_backup::VerifyRecord>,
    ) -> ListEntry {
        ListEntry {
            id: m.id.clone(),
            time: Some(m.time.clone()),
            trigger: Some(m.trigger.to_string()),
            trigger_detail: Some(m.trigger.clone()),
            sources: m.sources(),
            size: m.total_size(),
            encrypted: !m.recipients.is_empty(),
            artifacts: m
                .artifacts
                .iter()
                .map(|a| ArtifactEntry {
                    file: a.file.clone(),
                    source: a.source.clone(),
                    kind: a.kind,
                    database: a.database.clone(),
                    size: a.size,
                    sha256: a.sha256.clone(),
                    tool: a.tool.clone(),
                    server_version: a.server_version.clone(),
                    duration_ms: a.duration_ms,
                })
                .collect(),
            last_verify,
            damaged: None,
        }
    }

    fn from_listed(l: &Listed) -> ListEntry {
        match &l.manifest {
            Ok(m) => ListEntry::from_manifest(m, l.last_verify.clone()),
            Err(problem) => ListEntry {
                id: l.id.clone(),
                time: None,
                trigger: None,
                trigger_detail: None,
                sources: vec![],
                size: 0,
                encrypted: false,
                artifacts: vec![],
                last_verify: l.last_verify.clone(),
                damaged: Some(problem.clone()),
            },
        }
    }
}

async fn list(config: Config, format: Format) -> CmdResult {
    let backups = Backups::new(settings(&config)?);
    let listed = blocking(move || backups.list()).await?;
    let entries: Vec<ListEntry> = listed.iter().map(ListEntry::from_listed).collect();
    match format {
        Format::Json => print_json(&entries)?,
        Format::Table => {
            if entries.is_empty() {
                print_text("no backups yet: `tcf-platform backup create` takes one\n")?;
            } else {
                let rows: Vec<Vec<String>> = entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.id.clone(),
                            e.time.clone().unwrap_or_else(|| "-".into()),
                            e.trigger.clone().unwrap_or_else(|| "-".into()),
                            e.sources.join(","),
                            output::bytes(e.size),
                            match (&e.damaged, &e.last_verify) {
                                (Some(d), _) => format!("DAMAGED: {d}"),
                                (None, Some(v)) => format!(
                                    "{} {} ({})",
                                    if v.ok { "ok" } else { "FAILED" },
                                    v.level,
                                    v.time
                                ),
                                (None, None) => "never".into(),
                            },
                        ]
                    })
                    .collect();
                print_text(&output::table(
                    &["ID", "TIME", "TRIGGER", "SOURCES", "SIZE", "LAST VERIFY"],
                    &rows,
                ))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify(
    config: Config,
    id: String,
    level: VerifyLevel,
    identity: Option<&PathBuf>,
    format: Format,
    progress: Arc<Terminal>,
) -> CmdResult {
    let backups = Backups::new(settings(&config)?);
    let ids = identities(&config, identity)?;
    let level = match level {
        VerifyLevel::Checksums => Level::Checksums,
        VerifyLevel::Restore => Level::Restore,
    };
    let report = blocking(move || backups.verify(&id, level, &ids, progress.as_ref())).await?;
    let not_run = report
        .artifacts
        .iter()
        .any(|a| a.status == tcf_backup::CheckStatus::NotRun);
    let failed = !report.problems.is_empty()
        || report
            .artifacts
            .iter()
            .any(|a| a.status == tcf_backup::CheckStatus::Failed);
    let verdict = if failed {
        "FAILED"
    } else if not_run {
        "NOT PROVEN (a check could not run)"
    } else {
        "ok"
    };
    record_event(
        &config,
        if report.ok {
            "backup.verified"
        } else {
            "backup.verify_failed"
        },
        format!(
            "backup {} verify --level {}: {verdict}",
            report.id,
            level.as_str()
        ),
    )
    .await;
    match format {
        Format::Json => print_json(&report)?,
        Format::Table => {
            let mut text = String::new();
            for p in &report.problems {
                text += &format!("FAILED  {}: {p}\n", report.id);
            }
            for a in &report.artifacts {
                let status = match a.status {
                    tcf_backup::CheckStatus::Ok => "ok",
                    tcf_backup::CheckStatus::Failed => "FAILED",
                    tcf_backup::CheckStatus::NotRun => "NOT RUN",
                };
                text += &format!("{status:<8}{}: {}\n", a.artifact, a.detail.join("; "));
            }
            text += &format!(
                "backup {} (verify --level {}): {verdict}\n",
                report.id,
                level.as_str()
            );
            print_text(&text)?;
        }
    }
    Ok(ExitCode::from(if failed {
        1
    } else if not_run {
        4
    } else {
        0
    }))
}

/// What clients of a service in maintenance during a restore are told to wait.
const MAINTENANCE_RETRY_AFTER_S: u32 = 30;

/// Services that use a source: those whose `depends_on` names the source's dependency.
fn services_using(config: &Config, source: &str) -> Vec<String> {
    let Some(dep) = config
        .backup
        .as_ref()
        .and_then(|b| b.sources.get(source))
        .and_then(|s| s.dependency.clone())
    else {
        return vec![];
    };
    config
        .services
        .values()
        .filter(|s| s.depends_on.contains(&dep))
        .map(|s| s.name.clone())
        .collect()
}

/// Of `services`, those the daemon reports with a running instance (none without a daemon).
async fn running(config: &Config, services: &[String]) -> Vec<String> {
    let client = tcf_api::Client::new(config.daemon.socket.clone());
    let Ok(status) = client.get::<tcf_api::Status>("/v1/status").await else {
        return vec![];
    };
    status
        .services
        .iter()
        .filter(|s| services.contains(&s.name) && !s.instances.is_empty())
        .map(|s| s.name.clone())
        .collect()
}

#[allow(clippy::too_many_arguments)]
async fn restore(
    config: Config,
    id: String,
    source: Option<String>,
    force: bool,
    identity: Option<&PathBuf>,
    format: Format,
    progress: Arc<Terminal>,
) -> CmdResult {
    let backups = Backups::new(settings(&config)?);
    let manifest = {
        let b = Backups::new(settings(&config)?);
        let id = id.clone();
        blocking(move || b.repository().manifest(&id)).await?
    };
    let sources: Vec<String> = manifest
        .sources()
        .into_iter()
        .filter(|s| source.as_deref().is_none_or(|only| only == s))
        .collect();
    let mut users: Vec<String> = sources
        .iter()
        .flat_map(|s| services_using(&config, s))
        .collect();
    users.sort();
    users.dedup();
    // Running services that use what is restored answer 503 while it writes (maintenance),
    // rather than read and write data being replaced under them.
    let busy = running(&config, &users).await;
    let in_maintenance = if busy.is_empty() {
        String::new()
    } else {
        format!(
            "; {} (using {}) will answer 503 while it writes",
            busy.join(", "),
            sources.join(", ")
        )
    };
    if !force {
        if !std::io::stdin().is_terminal() {
            return Err(failure(
                2,
                anyhow!("refusing to restore without a terminal to confirm on{in_maintenance}; pass --force"),
            ));
        }
        if !confirm(&format!(
            "Replace the live data of {} with backup {id} (a recovery point is taken first{in_maintenance})?",
            sources.join(", ")
        )) {
            eprintln!("not restored");
            return Ok(ExitCode::from(1));
        }
    }
    let ids = identities(&config, identity)?;
    let daemon = tcf_api::Client::new(config.daemon.socket.clone());
    let reason = format!("restoring backup {id}");
    if !busy.is_empty() {
        crate::set_maintenance(&daemon, &busy, Some(MAINTENANCE_RETRY_AFTER_S), &reason)
            .await
            .map_err(|e| {
                failure(
                    1,
                    e.context(format!(
                        "cannot put {} in maintenance; nothing was restored",
                        busy.join(", ")
                    )),
                )
            })?;
        progress.step(&format!(
            "{} in maintenance (503) while the restore writes",
            busy.join(", ")
        ));
    }
    let result =
        blocking(move || backups.restore(&id, source.as_deref(), &ids, progress.as_ref())).await;
    if !busy.is_empty() {
        if let Err(e) = crate::set_maintenance(&daemon, &busy, None, &reason).await {
            eprintln!(
                "warning: {} are still in maintenance: {e:#}\nhint: tcf-platform maintenance off {}",
                busy.join(", "),
                busy.join(" ")
            );
        }
    }
    match result {
        Ok(report) => {
            record_event(
                &config,
                "backup.restored",
                format!(
                    "backup {} restored ({}); recovery point {}",
                    report.id,
                    report.restored.join(", "),
                    report.recovery_point.as_deref().unwrap_or("none")
                ),
            )
            .await;
            match format {
                Format::Json => print_json(&report)?,
                Format::Table => {
                    let mut text = String::new();
                    for r in &report.restored {
                        text += &format!("restored {r}\n");
                    }
                    for n in &report.notes {
                        text += &format!("note: {n}\n");
                    }
                    if let Some(rp) = &report.recovery_point {
                        text += &format!("recovery point (what was there before): {rp}\n");
                    }
                    print_text(&text)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(f) => {
            record_event(&config, "backup.restore_failed", format!("{:#}", f.error)).await;
            Err(f)
        }
    }
}

/// The pre-deploy backups of the active and the previous release are never pruned. With a
/// daemon, those releases come from its history; without one, the two newest releases that
/// have a pre-deploy backup stand in for them.
async fn pinned(config: &Config, listed: &[Listed]) -> BTreeSet<String> {
    let pre_deploy: Vec<(String, String)> = listed
        .iter()
        .filter_map(|l| match &l.manifest.as_ref().ok()?.trigger {
            Trigger::PreDeploy { release } => Some((l.id.clone(), release.clone())),
            _ => None,
        })
        .collect();
    let client = tcf_api::Client::new(config.daemon.socket.clone());
    let releases: BTreeSet<String> = match client
        .get::<Vec<tcf_api::Release>>("/v1/releases?limit=50")
        .await
    {
        Ok(rels) => {
            let active = rels.iter().find(|r| r.status == "active");
            let previous = active.and_then(|a| {
                rels.iter()
                    .find(|r| r.id < a.id && r.status == "superseded")
            });
            active
                .into_iter()
                .chain(previous)
                .map(|r| r.id.to_string())
                .collect()
        }
        Err(_) => {
            let mut all: Vec<&String> = pre_deploy.iter().map(|(_, r)| r).collect();
            all.sort_by_key(|r| (r.parse::<i64>().unwrap_or(i64::MIN), (*r).clone()));
            all.dedup();
            all.into_iter().rev().take(2).cloned().collect()
        }
    };
    pre_deploy
        .into_iter()
        .filter(|(_, r)| releases.contains(r))
        .map(|(id, _)| id)
        .collect()
}

async fn prune(
    config: Config,
    dry_run: bool,
    format: Format,
    progress: Arc<Terminal>,
) -> CmdResult {
    let backups = Backups::new(settings(&config)?);
    let listed = {
        let b = Backups::new(settings(&config)?);
        blocking(move || b.list()).await?
    };
    let pins = pinned(&config, &listed).await;
    let report = blocking(move || backups.prune(dry_run, &pins, progress.as_ref())).await?;
    let removed: Vec<&str> = report
        .decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.id.as_str())
        .collect();
    if !dry_run {
        record_event(
            &config,
            "backup.pruned",
            format!(
                "removed {} backup(s): {}",
                removed.len(),
                removed.join(", ")
            ),
        )
        .await;
    }
    match format {
        Format::Json => print_json(&report)?,
        Format::Table => {
            let mut text = String::new();
            for d in &report.decisions {
                if d.keep {
                    text += &format!("keep    {}  ({})\n", d.id, d.reasons.join(", "));
                } else {
                    text += &format!(
                        "{}  {}\n",
                        if dry_run { "would remove" } else { "removed" },
                        d.id
                    );
                }
            }
            for d in &report.damaged {
                text += &format!("damaged {d}  (not touched: inspect it and remove it by hand)\n");
            }
            text += &format!(
                "{} kept, {} {}\n",
                report.decisions.len() - removed.len(),
                removed.len(),
                if dry_run {
                    "would be removed (dry run)"
                } else {
                    "removed"
                }
            );
            print_text(&text)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
