//! `tcf-platform backup …`: through the daemon whenever one answers (its Unix socket, or
//! `--host` with a token), so the roles apply and it works remotely; the daemon runs the work
//! and streams its progress (`/v1/backups`, tcf-daemon `api_backup.rs`). With no daemon
//! running here and no `--host`, the work runs in this process (tcf-backup), with the same
//! output and exit codes: the results are the same wire types either way.
//!
//! Exit codes: 0 success; 1 the backup, verify, restore or prune failed (verify: damage
//! found); 2 usage or config error; 3 the repository is locked by another run; 4 verify could
//! not run a check (nothing failed, but the backup is not proven).

use crate::cli::{BackupCommand, Cli, Format, VerifyLevel};
use crate::output;
use crate::{actor, confirm, print_json, print_text, CmdResult, Failure};
use anyhow::{anyhow, Context};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tcf_api::backup::{
    BackupEntry, BackupPruneReport, BackupRestoreReport, BackupVerifyReport, CreateBackup,
    PruneBackups, RestoreBackup, RestorePlan, VerifyBackup,
};
use tcf_api::{Client, ClientError};
use tcf_backup::{BackupError, Backups, Identities, Level, Progress, Settings, Trigger};
use tcf_config::Config;
use tcf_daemon::backup as shared;

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
    failure(shared::exit_code(&e), e.into())
}

/// A refusal by the daemon: a bad request (no `[backup]`, a missing secret, an unknown
/// level) is a usage or config error as it is locally; a missing backup is a failure.
fn api_failure(e: ClientError) -> Failure {
    match e {
        ClientError::Api {
            status: 400,
            message,
        } => failure(2, anyhow!(message)),
        ClientError::Api {
            status: 404,
            message,
        } => failure(1, anyhow!(message)),
        other => other.into(),
    }
}

/// `[backup]` of the config, its secrets from the store: for running the work here.
fn settings(config: &Config) -> Result<Settings, Failure> {
    let Some(backup) = &config.backup else {
        return Err(failure(2, anyhow!(shared::no_backup_section(config))));
    };
    shared::offline_settings(config, backup).map_err(|e| failure(2, anyhow!(e)))
}

/// For reading the repository only (list, prune, a restore's plan).
fn repository_settings(config: &Config) -> Result<Settings, Failure> {
    let Some(backup) = &config.backup else {
        return Err(failure(2, anyhow!(shared::no_backup_section(config))));
    };
    Settings::for_repository(backup).map_err(|e| failure(2, e.into()))
}

fn identities(config: &Config, flag: Option<&PathBuf>) -> Result<Identities, Failure> {
    match flag.or(config.backup.as_ref().and_then(|b| b.identity.as_ref())) {
        Some(path) => Identities::from_file(path).map_err(backup_failure),
        None => Ok(Identities::none()),
    }
}

/// The text of `--identity FILE`, sent to the daemon for one verify or restore.
fn identity_text(flag: Option<&PathBuf>) -> Result<Option<String>, Failure> {
    flag.map(|path| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the age identity file {}", path.display()))
            .map_err(|e| failure(1, e))
    })
    .transpose()
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

/// Where the work runs: the daemon (local or remote), or this process when none runs.
struct Target {
    client: Client,
    cli_config: Option<PathBuf>,
    environment: Option<String>,
}

impl Target {
    /// This process runs the work only when the local daemon is not running.
    fn offline(&self, e: &ClientError) -> bool {
        matches!(e, ClientError::NotRunning { .. }) && !self.client.is_remote()
    }

    fn config(&self) -> Result<Config, Failure> {
        let path = tcf_config::locate(self.cli_config.as_deref()).map_err(anyhow::Error::from)?;
        Ok(tcf_config::load(&path, self.environment.as_deref()).map_err(anyhow::Error::from)?)
    }
}

/// The end of a backup command: its report (or the error) and its exit code.
type Outcome<T> = Result<(T, u8), Failure>;

/// POST `body` to a streamed backup route and follow it: progress on a terminal, then the
/// report of the last line. `None`: no daemon answers here (run the work in this process).
async fn follow<T: DeserializeOwned>(
    target: &Target,
    path: &str,
    body: &impl serde::Serialize,
    progress: &Terminal,
) -> Option<Outcome<T>> {
    let body = match serde_json::to_vec(body) {
        Ok(b) => b,
        Err(e) => return Some(Err(failure(1, e.into()))),
    };
    let resp = match target.client.send("POST", path, Some(body)).await {
        Ok(r) => r,
        Err(e) if target.offline(&e) => return None,
        Err(e) => return Some(Err(api_failure(e))),
    };
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut last = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                return Some(Err(failure(
                    1,
                    anyhow!(
                        "the daemon stopped answering mid-run ({e}); see `tcf-platform events`"
                    ),
                )))
            }
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(line) = serde_json::from_slice::<tcf_api::ProgressLine>(&line) else {
                continue;
            };
            if line.exit_code.is_some() {
                last = Some(line);
            } else {
                progress.step(&line.message);
            }
        }
    }
    let Some(end) = last else {
        return Some(Err(failure(
            1,
            anyhow!("the backup stream ended without a result; see `tcf-platform events`"),
        )));
    };
    let code = end.exit_code.unwrap_or(1);
    Some(match end.report {
        Some(report) => serde_json::from_value::<T>(report)
            .map(|r| (r, code))
            .map_err(|e| {
                failure(
                    1,
                    anyhow!("the daemon sent a report this CLI cannot read: {e}"),
                )
            }),
        None => Err(failure(code, anyhow!(end.message))),
    })
}

pub async fn run(cli: &Cli, command: &BackupCommand) -> CmdResult {
    let target = Target {
        client: crate::client(cli).map_err(|e| failure(2, e))?,
        cli_config: cli.config.clone(),
        environment: cli.environment.clone(),
    };
    let progress = Arc::new(Terminal(std::io::stderr().is_terminal()));
    match command {
        BackupCommand::Create { source, format } => {
            let (entry, code) = create(&target, source.clone(), progress).await?;
            match format {
                Format::Json => print_json(&entry)?,
                Format::Table => print_text(&format!(
                    "backup {} completed and verified (checksums): {} artifacts, {}\n",
                    entry.id,
                    entry.artifacts.len(),
                    output::bytes(entry.size)
                ))?,
            }
            Ok(ExitCode::from(code))
        }
        BackupCommand::List { format } => {
            let entries = list(&target).await?;
            print_list(&entries, *format)?;
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Verify {
            id,
            level,
            identity,
            format,
        } => {
            let (report, code) = verify(&target, id, *level, identity.as_ref(), progress).await?;
            match format {
                Format::Json => print_json(&report)?,
                Format::Table => print_text(&verify_text(&report))?,
            }
            Ok(ExitCode::from(code))
        }
        BackupCommand::Restore {
            id,
            source,
            force,
            identity,
            format,
        } => {
            let Some((report, code)) = restore(
                &target,
                id,
                source.clone(),
                *force,
                identity.as_ref(),
                progress,
            )
            .await?
            else {
                eprintln!("not restored");
                return Ok(ExitCode::from(1));
            };
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
            Ok(ExitCode::from(code))
        }
        BackupCommand::Prune { dry_run, format } => {
            let (report, code) = prune(&target, *dry_run, progress).await?;
            match format {
                Format::Json => print_json(&report)?,
                Format::Table => print_text(&prune_text(&report))?,
            }
            Ok(ExitCode::from(code))
        }
    }
}

async fn create(
    target: &Target,
    source: Option<String>,
    progress: Arc<Terminal>,
) -> Outcome<BackupEntry> {
    let req = CreateBackup {
        source: source.clone(),
        actor: actor(),
    };
    if let Some(done) = follow(target, "/v1/backups", &req, &progress).await {
        return done;
    }
    let backups = Backups::new(settings(&target.config()?)?);
    let m = blocking(move || backups.create(Trigger::Manual, source.as_deref(), progress.as_ref()))
        .await?;
    Ok((shared::wire_entry(&m, None), 0))
}

async fn list(target: &Target) -> Result<Vec<BackupEntry>, Failure> {
    match target.client.get::<Vec<BackupEntry>>("/v1/backups").await {
        Ok(entries) => return Ok(entries),
        Err(e) if target.offline(&e) => {}
        Err(e) => return Err(api_failure(e)),
    }
    let backups = Backups::new(repository_settings(&target.config()?)?);
    let listed = blocking(move || backups.list()).await?;
    Ok(listed.iter().map(shared::wire_listed).collect())
}

fn print_list(entries: &[BackupEntry], format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => print_json(&entries),
        Format::Table if entries.is_empty() => {
            print_text("no backups yet: `tcf-platform backup create` takes one\n")
        }
        Format::Table => {
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
            ))
        }
    }
}

async fn verify(
    target: &Target,
    id: &str,
    level: VerifyLevel,
    identity: Option<&PathBuf>,
    progress: Arc<Terminal>,
) -> Outcome<BackupVerifyReport> {
    let level = match level {
        VerifyLevel::Checksums => Level::Checksums,
        VerifyLevel::Restore => Level::Restore,
    };
    let req = VerifyBackup {
        level: Some(level.as_str().to_string()),
        identity: identity_text(identity)?,
        actor: actor(),
    };
    let path = format!("/v1/backups/{}/verify", path_segment(id)?);
    if let Some(done) = follow(target, &path, &req, &progress).await {
        return done;
    }
    let config = target.config()?;
    let backups = Backups::new(settings(&config)?);
    let ids = identities(&config, identity)?;
    let id = id.to_string();
    let report = blocking(move || backups.verify(&id, level, &ids, progress.as_ref())).await?;
    let report = shared::wire_verify(&report);
    let (code, _) = shared::verify_verdict(&report);
    Ok((report, code))
}

fn verify_text(report: &BackupVerifyReport) -> String {
    let mut text = String::new();
    for p in &report.problems {
        text += &format!("FAILED  {}: {p}\n", report.id);
    }
    for a in &report.artifacts {
        let status = match a.status.as_str() {
            "ok" => "ok",
            "failed" => "FAILED",
            _ => "NOT RUN",
        };
        text += &format!("{status:<8}{}: {}\n", a.artifact, a.detail.join("; "));
    }
    text += &format!(
        "backup {} (verify --level {}): {}\n",
        report.id,
        report.level,
        shared::verify_verdict(report).1
    );
    text
}

/// A backup id in a URL path: ids are `20261125T161824Z-3fa1`; anything that would change the
/// path is refused here rather than sent.
fn path_segment(id: &str) -> Result<&str, Failure> {
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || id.starts_with('.')
    {
        return Err(failure(
            1,
            anyhow!("no backup {id:?} in the repository\nhint: `tcf-platform backup list` shows the ids"),
        ));
    }
    Ok(id)
}

/// What a restore replaces and which running services answer 503 meanwhile: from the daemon,
/// or, without one, from the repository (nothing runs then).
async fn restore_plan(
    target: &Target,
    id: &str,
    source: Option<&str>,
) -> Result<(RestorePlan, bool), Failure> {
    let query = source.map_or(String::new(), |s| format!("?source={}", query_text(s)));
    let path = format!("/v1/backups/{}/restore{query}", path_segment(id)?);
    match target.client.get::<RestorePlan>(&path).await {
        Ok(plan) => return Ok((plan, true)),
        Err(e) if target.offline(&e) => {}
        Err(e) => return Err(api_failure(e)),
    }
    let backups = Backups::new(repository_settings(&target.config()?)?);
    let manifest = {
        let id = id.to_string();
        blocking(move || backups.repository().manifest(&id)).await?
    };
    let sources = manifest
        .sources()
        .into_iter()
        .filter(|s| source.is_none_or(|only| only == s))
        .collect();
    Ok((
        RestorePlan {
            id: id.to_string(),
            sources,
            maintenance: vec![],
        },
        false,
    ))
}

/// Percent-encoding for a query value (source names are plain words; be safe anyway).
fn query_text(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `None`: the user said no.
async fn restore(
    target: &Target,
    id: &str,
    source: Option<String>,
    force: bool,
    identity: Option<&PathBuf>,
    progress: Arc<Terminal>,
) -> Result<Option<(BackupRestoreReport, u8)>, Failure> {
    if !force {
        let (plan, _) = restore_plan(target, id, source.as_deref()).await?;
        let in_maintenance = if plan.maintenance.is_empty() {
            String::new()
        } else {
            format!(
                "; {} (using {}) will answer 503 while it writes",
                plan.maintenance.join(", "),
                plan.sources.join(", ")
            )
        };
        if !std::io::stdin().is_terminal() {
            return Err(failure(
                2,
                anyhow!("refusing to restore without a terminal to confirm on{in_maintenance}; pass --force"),
            ));
        }
        if !confirm(&format!(
            "Replace the live data of {} with backup {id} (a recovery point is taken first{in_maintenance})?",
            plan.sources.join(", ")
        )) {
            return Ok(None);
        }
    }
    let req = RestoreBackup {
        source: source.clone(),
        identity: identity_text(identity)?,
        actor: actor(),
    };
    let path = format!("/v1/backups/{}/restore", path_segment(id)?);
    if let Some(done) = follow(target, &path, &req, &progress).await {
        return done.map(Some);
    }
    // No daemon: nothing runs that uses the data, so nothing to put in maintenance.
    let config = target.config()?;
    let backups = Backups::new(settings(&config)?);
    let ids = identities(&config, identity)?;
    let id = id.to_string();
    let report =
        blocking(move || backups.restore(&id, source.as_deref(), &ids, progress.as_ref())).await?;
    Ok(Some((shared::wire_restore(&report), 0)))
}

async fn prune(
    target: &Target,
    dry_run: bool,
    progress: Arc<Terminal>,
) -> Outcome<BackupPruneReport> {
    let req = PruneBackups {
        dry_run,
        actor: actor(),
    };
    if let Some(done) = follow(target, "/v1/backups/prune", &req, &progress).await {
        return done;
    }
    let backups = Backups::new(repository_settings(&target.config()?)?);
    let report = blocking(move || {
        let listed = backups.list()?;
        let pins = shared::pinned(&listed, None);
        backups.prune(dry_run, &pins, progress.as_ref())
    })
    .await?;
    Ok((shared::wire_prune(&report), 0))
}

fn prune_text(report: &BackupPruneReport) -> String {
    let mut text = String::new();
    let dry_run = report.dry_run;
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
    let removed = report.decisions.iter().filter(|d| !d.keep).count();
    text += &format!(
        "{} kept, {} {}\n",
        report.decisions.len() - removed,
        removed,
        if dry_run {
            "would be removed (dry run)"
        } else {
            "removed"
        }
    );
    text
}
