//! The backup routes: `tcf-platform backup …` run by the daemon, so they work remotely and
//! under the roles like every other command (`tcf_auth::roles::ROUTES`). Each reads the config
//! file as it is now (as a deploy does), resolves `${secret:NAME}` passwords from the store,
//! and runs tcf-backup on a blocking thread. Create, verify, restore and prune stream their
//! progress as NDJSON lines (the deploy stream's `ProgressLine`); the last line carries the
//! exit code and the report that `--format json` prints. Every result is an event by the
//! caller. A restore puts the running services that use what it replaces in maintenance while
//! it writes.

use crate::api::{ApiError, ApiJson, ApiQuery};
use crate::backup::{
    error_text, exit_code, no_backup_section, services_using, verify_verdict, wire_entry,
    wire_listed, wire_prune, wire_restore, wire_verify,
};
use crate::caller::{check_text, Peer};
use crate::deploy::rfc3339;
use crate::platform::Platform;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use tcf_api::backup::{
    BackupEntry, CreateBackup, PruneBackups, RestoreBackup, RestorePlan, VerifyBackup,
};
use tcf_api::ProgressLine;
use tcf_backup::{BackupError, Backups, Identities, Level, Progress, Trigger};
use tokio::sync::mpsc::UnboundedSender;

/// What clients of a service in maintenance during a restore are told to wait.
const MAINTENANCE_RETRY_AFTER_S: u32 = 30;

pub fn routes() -> Router<Arc<Platform>> {
    Router::new()
        .route("/v1/backups", get(list).post(create))
        .route("/v1/backups/prune", post(prune))
        .route("/v1/backups/{id}/verify", post(verify))
        .route("/v1/backups/{id}/restore", get(restore_plan).post(restore))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// The config file as it is now, with its `[backup]`: a file that does not validate, or has
/// no `[backup]`, is the caller's error.
async fn fresh_config(
    p: &Platform,
) -> Result<(tcf_config::Config, tcf_config::BackupConfig), ApiError> {
    let path = p.config.path.clone();
    let environment = p.config.environment.clone();
    let config =
        tokio::task::spawn_blocking(move || tcf_config::load(&path, environment.as_deref()))
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| bad(format!("the config file does not validate:\n{e}")))?;
    let backup = config
        .backup
        .clone()
        .ok_or_else(|| bad(no_backup_section(&config)))?;
    Ok((config, backup))
}

async fn settings(
    p: &Platform,
    backup: &tcf_config::BackupConfig,
) -> Result<tcf_backup::Settings, ApiError> {
    p.backup_settings(backup).await.map_err(bad)
}

/// Blocking backup work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, BackupError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackupError::Invalid(format!("the backup task failed: {e}")))?
}

/// A backup command's stream: progress lines as tcf-backup reports its steps, then the end.
#[derive(Clone)]
struct Lines(UnboundedSender<ProgressLine>);

impl Lines {
    fn send(&self, step: &str, message: String, end: Option<(&str, u8, serde_json::Value)>) {
        let (result, exit_code, report) = match end {
            Some((r, c, v)) => (Some(r.to_string()), Some(c), (!v.is_null()).then_some(v)),
            None => (None, None, None),
        };
        let _ = self.0.send(ProgressLine {
            time: rfc3339(tcf_store::now_ms()),
            step: step.to_string(),
            service: None,
            message,
            release: None,
            result,
            exit_code,
            report,
        });
    }

    /// The last line: the outcome, its exit code and the report (`--format json`'s output).
    fn end(&self, result: &str, exit_code: u8, message: String, report: impl serde::Serialize) {
        let report = serde_json::to_value(report).unwrap_or_default();
        self.send("result", message, Some((result, exit_code, report)));
    }

    /// The last line of a command that failed with `e`.
    fn failed(&self, e: &BackupError) {
        self.send(
            "result",
            error_text(e),
            Some(("failed", exit_code(e), serde_json::Value::Null)),
        );
    }
}

impl Progress for Lines {
    fn step(&self, message: &str) {
        self.send("backup.progress", message.to_string(), None);
    }
}

/// Answer with the stream that `job` writes; it runs to its end even if the client leaves.
fn stream<F>(job: impl FnOnce(Lines) -> F) -> Response
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(job(Lines(tx)));
    crate::api::ndjson(rx)
}

/// An event message is one line of plain text.
fn one_line(text: &str) -> String {
    text.replace('\n', " | ")
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

/// The identities to decrypt with: the caller's (the text of an identity file), else
/// `[backup] identity` on this host, else none.
fn identities(
    given: Option<&str>,
    backup: &tcf_config::BackupConfig,
) -> Result<Identities, BackupError> {
    match (given, &backup.identity) {
        (Some(text), _) => Identities::from_text(text),
        (None, Some(path)) => Identities::from_file(path),
        (None, None) => Ok(Identities::none()),
    }
}

async fn list(State(p): State<Arc<Platform>>) -> Result<Json<Vec<BackupEntry>>, ApiError> {
    let (_, backup) = fresh_config(&p).await?;
    let settings = tcf_backup::Settings::for_repository(&backup).map_err(|e| bad(e.to_string()))?;
    let listed = blocking(move || Backups::new(settings).list())
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, error_text(&e)))?;
    Ok(Json(listed.iter().map(wire_listed).collect()))
}

async fn create(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    ApiJson(req): ApiJson<CreateBackup>,
) -> Result<Response, ApiError> {
    check_text("the actor", &req.actor).map_err(bad)?;
    let (_, backup) = fresh_config(&p).await?;
    let settings = settings(&p, &backup).await?;
    let actor = peer.actor(&req.actor);
    Ok(stream(move |lines| async move {
        let progress = lines.clone();
        let source = req.source.clone();
        let result = blocking(move || {
            Backups::new(settings).create(Trigger::Manual, source.as_deref(), &progress)
        })
        .await;
        match result {
            Ok(m) => {
                let message = format!(
                    "backup {} ({} artifacts, {} bytes)",
                    m.id,
                    m.artifacts.len(),
                    m.total_size()
                );
                p.event_by(&actor, "backup.created", None, None, message.clone());
                lines.end("created", 0, message, wire_entry(&m, None));
            }
            Err(e) => {
                p.event_by(
                    &actor,
                    "backup.failed",
                    None,
                    None,
                    one_line(&error_text(&e)),
                );
                lines.failed(&e);
            }
        }
    }))
}

async fn verify(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<VerifyBackup>,
) -> Result<Response, ApiError> {
    check_text("the actor", &req.actor).map_err(bad)?;
    let level = match req.level.as_deref() {
        None | Some("checksums") => Level::Checksums,
        Some("restore") => Level::Restore,
        Some(other) => return Err(bad(format!("level {other:?}: use checksums or restore"))),
    };
    let (_, backup) = fresh_config(&p).await?;
    let settings = settings(&p, &backup).await?;
    let actor = peer.actor(&req.actor);
    Ok(stream(move |lines| async move {
        let progress = lines.clone();
        let given = req.identity.clone();
        let result = blocking(move || {
            let ids = identities(given.as_deref(), &backup)?;
            Backups::new(settings).verify(&id, level, &ids, &progress)
        })
        .await;
        match result {
            Ok(report) => {
                let report = wire_verify(&report);
                let (code, verdict) = verify_verdict(&report);
                let message = format!(
                    "backup {} verify --level {}: {verdict}",
                    report.id,
                    level.as_str()
                );
                let kind = if report.ok {
                    "backup.verified"
                } else {
                    "backup.verify_failed"
                };
                p.event_by(&actor, kind, None, None, message.clone());
                let result = match code {
                    0 => "verified",
                    4 => "not_proven",
                    _ => "failed",
                };
                lines.end(result, code, message, report);
            }
            Err(e) => {
                p.event_by(
                    &actor,
                    "backup.verify_failed",
                    None,
                    None,
                    one_line(&error_text(&e)),
                );
                lines.failed(&e);
            }
        }
    }))
}

#[derive(serde::Deserialize)]
struct PlanQuery {
    source: Option<String>,
}

/// What restoring `id` (or only `source` of it) replaces, and which running services use it.
async fn plan(
    p: &Platform,
    config: &tcf_config::Config,
    backup: &tcf_config::BackupConfig,
    id: &str,
    source: Option<&str>,
) -> Result<RestorePlan, BackupError> {
    let settings = tcf_backup::Settings::for_repository(backup)?;
    let manifest = {
        let id = id.to_string();
        blocking(move || Backups::new(settings).repository().manifest(&id)).await?
    };
    let sources: Vec<String> = manifest
        .sources()
        .into_iter()
        .filter(|s| source.is_none_or(|only| only == s))
        .collect();
    let mut users: Vec<String> = sources
        .iter()
        .flat_map(|s| services_using(config, s))
        .collect();
    users.sort();
    users.dedup();
    let maintenance = users
        .into_iter()
        .filter(|name| {
            p.services
                .get(name)
                .is_some_and(|svc| !svc.instances().is_empty())
        })
        .collect();
    Ok(RestorePlan {
        id: id.to_string(),
        sources,
        maintenance,
    })
}

async fn restore_plan(
    State(p): State<Arc<Platform>>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PlanQuery>,
) -> Result<Json<RestorePlan>, ApiError> {
    let (config, backup) = fresh_config(&p).await?;
    plan(&p, &config, &backup, &id, q.source.as_deref())
        .await
        .map(Json)
        .map_err(|e| {
            let status = match exit_code(&e) {
                2 => StatusCode::BAD_REQUEST,
                _ => StatusCode::NOT_FOUND,
            };
            ApiError(status, error_text(&e))
        })
}

async fn restore(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RestoreBackup>,
) -> Result<Response, ApiError> {
    check_text("the actor", &req.actor).map_err(bad)?;
    let (config, backup) = fresh_config(&p).await?;
    let settings = settings(&p, &backup).await?;
    let actor = peer.actor(&req.actor);
    Ok(stream(move |lines| async move {
        let plan = match plan(&p, &config, &backup, &id, req.source.as_deref()).await {
            Ok(plan) => plan,
            Err(e) => {
                p.event_by(
                    &actor,
                    "backup.restore_failed",
                    None,
                    None,
                    one_line(&error_text(&e)),
                );
                return lines.failed(&e);
            }
        };
        // Running services that use what is restored answer 503 while it writes, rather than
        // read and write data being replaced under them.
        let reason = format!("restoring backup {id}");
        let busy = plan.maintenance;
        if !busy.is_empty() {
            crate::maintenance::set(&p, &busy, Some(MAINTENANCE_RETRY_AFTER_S), &reason, &actor);
            lines.step(&format!(
                "{} in maintenance (503) while the restore writes",
                busy.join(", ")
            ));
        }
        let progress = lines.clone();
        let source = req.source.clone();
        let given = req.identity.clone();
        let result = blocking(move || {
            let ids = identities(given.as_deref(), &backup)?;
            Backups::new(settings).restore(&id, source.as_deref(), &ids, &progress)
        })
        .await;
        if !busy.is_empty() {
            crate::maintenance::set(&p, &busy, None, &reason, &actor);
        }
        match result {
            Ok(report) => {
                let message = format!(
                    "backup {} restored ({}); recovery point {}",
                    report.id,
                    report.restored.join(", "),
                    report.recovery_point.as_deref().unwrap_or("none")
                );
                p.event_by(&actor, "backup.restored", None, None, message.clone());
                lines.end("restored", 0, message, wire_restore(&report));
            }
            Err(e) => {
                p.event_by(
                    &actor,
                    "backup.restore_failed",
                    None,
                    None,
                    one_line(&error_text(&e)),
                );
                lines.failed(&e);
            }
        }
    }))
}

async fn prune(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    ApiJson(req): ApiJson<PruneBackups>,
) -> Result<Response, ApiError> {
    check_text("the actor", &req.actor).map_err(bad)?;
    let (_, backup) = fresh_config(&p).await?;
    let settings = tcf_backup::Settings::for_repository(&backup).map_err(|e| bad(e.to_string()))?;
    let releases = p
        .with_store(|s| s.releases(10_000))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let releases = crate::api::wire_releases(&releases, None, 50);
    let actor = peer.actor(&req.actor);
    let dry_run = req.dry_run;
    Ok(stream(move |lines| async move {
        let progress = lines.clone();
        let result = blocking(move || {
            let backups = Backups::new(settings);
            let listed = backups.list()?;
            let pins = crate::backup::pinned(&listed, Some(releases.as_slice()));
            backups.prune(dry_run, &pins, &progress)
        })
        .await;
        match result {
            Ok(report) => {
                let removed: Vec<&str> = report
                    .decisions
                    .iter()
                    .filter(|d| !d.keep)
                    .map(|d| d.id.as_str())
                    .collect();
                let message = format!(
                    "{} {} backup(s): {}",
                    if dry_run { "would remove" } else { "removed" },
                    removed.len(),
                    removed.join(", ")
                );
                if !dry_run {
                    p.event_by(&actor, "backup.pruned", None, None, message.clone());
                }
                lines.end("pruned", 0, message, wire_prune(&report));
            }
            Err(e) => {
                lines.failed(&e);
            }
        }
    }))
}
