//! Backups in the daemon: the `[backup] schedule`, run here; what the daemon's backup routes
//! (`api_backup.rs`) and the CLI running a backup itself (no daemon) share: the results' wire
//! shapes, exit codes, retention's pins; and `/v1/backup/events`, through which a client that
//! ran a backup elsewhere records it in the audit trail.

use crate::api::ApiJson;
use crate::caller::{check_text, Peer};
use crate::platform::Platform;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tcf_api::backup::{
    BackupArtifact, BackupArtifactCheck, BackupDecision, BackupEntry, BackupPruneReport,
    BackupRestoreReport, BackupTrigger, BackupVerifyRecord, BackupVerifyReport,
};
use tcf_api::{BackupEventRequest, ErrorBody};

const KINDS: &[&str] = &[
    "backup.created",
    "backup.failed",
    "backup.verified",
    "backup.verify_failed",
    "backup.restored",
    "backup.restore_failed",
    "backup.pruned",
];

/// Run `[backup] schedule` (cron, UTC) until the daemon stops: at each firing a backup of every
/// source with the trigger `schedule`, then an event `backup.created` or `backup.failed`.
pub fn spawn_scheduler(p: Arc<Platform>) {
    let Some(config) = p.config.backup.clone() else {
        return;
    };
    let Some(expression) = config.schedule.clone() else {
        return;
    };
    let schedule = match tcf_backup::Schedule::parse(&expression) {
        Ok(s) => s,
        Err(e) => {
            p.event(
                "backup.failed",
                None,
                None,
                format!("scheduled backups are off: {e}"),
            );
            return;
        }
    };
    let mut shutdown = p.shutdown.subscribe();
    tokio::spawn(async move {
        loop {
            let now = tcf_backup::time::now_unix();
            let Some(next) = schedule.next_after(now) else {
                return;
            };
            let wait = std::time::Duration::from_secs((next - now).max(0) as u64);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if p.is_stopping() {
                return;
            }
            let settings = match p.backup_settings(&config).await {
                Ok(s) => s,
                Err(e) => {
                    p.scheduled_backup_failures.fetch_add(1, Ordering::Relaxed);
                    p.event(
                        "backup.failed",
                        None,
                        None,
                        format!("scheduled backup: {e}"),
                    );
                    continue;
                }
            };
            let result = tokio::task::spawn_blocking(move || {
                tcf_backup::Backups::new(settings).create(
                    tcf_backup::Trigger::Schedule,
                    None,
                    &tcf_backup::Silent,
                )
            })
            .await;
            let failures = &p.scheduled_backup_failures;
            match result {
                Ok(Ok(m)) => {
                    failures.store(0, Ordering::Relaxed);
                    p.event(
                        "backup.created",
                        None,
                        None,
                        format!(
                            "scheduled backup {} ({} artifacts, {} bytes)",
                            m.id,
                            m.artifacts.len(),
                            m.total_size()
                        ),
                    )
                }
                Ok(Err(e)) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    p.event(
                        "backup.failed",
                        None,
                        None,
                        format!("scheduled backup: {e}"),
                    )
                }
                Err(e) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    p.event(
                        "backup.failed",
                        None,
                        None,
                        format!("scheduled backup task: {e}"),
                    )
                }
            }
        }
    });
}

pub fn routes() -> Router<Arc<Platform>> {
    Router::new().route("/v1/backup/events", post(record_event))
}

async fn record_event(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    ApiJson(req): ApiJson<BackupEventRequest>,
) -> Result<Json<serde_json::Value>, (StatusCode, Json<ErrorBody>)> {
    let bad = |error: String| (StatusCode::BAD_REQUEST, Json(ErrorBody { error }));
    if !KINDS.contains(&req.kind.as_str()) {
        return Err(bad(format!(
            "{:?} is not a backup event kind (one of {})",
            req.kind,
            KINDS.join(", ")
        )));
    }
    check_text("the message", &req.message).map_err(bad)?;
    check_text("the actor", &req.actor).map_err(bad)?;
    // The Unix user of the caller is the actor; the client's claim is only detail.
    p.event_by(&peer.actor(&req.actor), &req.kind, None, None, req.message);
    Ok(Json(serde_json::json!({ "recorded": true })))
}

/// The backups as the monitor's `backup` series see them: read from the repository (a listing
/// of manifests: the caller does it every few minutes, off the async threads). None without
/// `[backup]`, or when the repository cannot be read (the error is the answer's second part).
pub fn backup_tick(p: &Platform, now_ms: i64) -> (Option<tcf_monitor::BackupTick>, Option<String>) {
    let Some(config) = &p.config.backup else {
        return (None, None);
    };
    let failures = p.scheduled_backup_failures.load(Ordering::Relaxed);
    let facts = tcf_backup::Settings::for_repository(config)
        .map_err(|e| e.to_string())
        .and_then(|settings| {
            let backups = tcf_backup::Backups::new(settings);
            let listed = backups.repository().list().map_err(|e| e.to_string())?;
            let times: Vec<i64> = listed
                .iter()
                .filter_map(|l| l.manifest.as_ref().ok())
                .filter_map(|m| tcf_backup::time::parse_rfc3339_ms(&m.time))
                .collect();
            let verified = backups
                .last_passed_verify(tcf_backup::Level::Restore)
                .map_err(|e| e.to_string())?
                .and_then(|t| tcf_backup::time::parse_rfc3339_ms(&t));
            Ok((
                times.iter().max().copied(),
                times.iter().min().copied(),
                verified,
            ))
        });
    const HOUR_MS: f64 = 3_600_000.0;
    match facts {
        Ok((newest, oldest, verified)) => (
            Some(tcf_monitor::BackupTick {
                scheduled_failures: failures,
                newest_age_hours: newest.map(|t| (now_ms - t).max(0) as f64 / HOUR_MS),
                restore_verify_age_days: verified
                    .or(oldest)
                    .map(|t| (now_ms - t).max(0) as f64 / HOUR_MS / 24.0),
            }),
            None,
        ),
        // The failures still count: they are this daemon's own knowledge.
        Err(e) => (
            Some(tcf_monitor::BackupTick {
                scheduled_failures: failures,
                ..Default::default()
            }),
            Some(e),
        ),
    }
}

// --- What the daemon's backup routes and the CLI without a daemon share: the wire shapes of
// the results, exit codes, and which backups retention must keep.

/// A backup as `backup list` and `backup create` show it.
pub fn wire_entry(
    m: &tcf_backup::Manifest,
    last_verify: Option<tcf_backup::VerifyRecord>,
) -> BackupEntry {
    BackupEntry {
        id: m.id.clone(),
        time: Some(m.time.clone()),
        trigger: Some(m.trigger.to_string()),
        trigger_detail: Some(wire_trigger(&m.trigger)),
        sources: m.sources(),
        size: m.total_size(),
        encrypted: !m.recipients.is_empty(),
        artifacts: m
            .artifacts
            .iter()
            .map(|a| BackupArtifact {
                file: a.file.clone(),
                source: a.source.clone(),
                kind: enum_text(&a.kind),
                database: a.database.clone(),
                size: a.size,
                sha256: a.sha256.clone(),
                tool: a.tool.clone(),
                server_version: a.server_version.clone(),
                duration_ms: a.duration_ms,
            })
            .collect(),
        last_verify: last_verify.map(wire_verify_record),
        damaged: None,
    }
}

/// One entry of `backup list`, readable or damaged.
pub fn wire_listed(l: &tcf_backup::Listed) -> BackupEntry {
    match &l.manifest {
        Ok(m) => wire_entry(m, l.last_verify.clone()),
        Err(problem) => BackupEntry {
            id: l.id.clone(),
            time: None,
            trigger: None,
            trigger_detail: None,
            sources: vec![],
            size: 0,
            encrypted: false,
            artifacts: vec![],
            last_verify: l.last_verify.clone().map(wire_verify_record),
            damaged: Some(problem.clone()),
        },
    }
}

fn wire_trigger(t: &tcf_backup::Trigger) -> BackupTrigger {
    match t {
        tcf_backup::Trigger::Manual => BackupTrigger::Manual,
        tcf_backup::Trigger::Schedule => BackupTrigger::Schedule,
        tcf_backup::Trigger::PreDeploy { release } => BackupTrigger::PreDeploy {
            release: release.clone(),
        },
        tcf_backup::Trigger::RecoveryPoint { restoring } => BackupTrigger::RecoveryPoint {
            restoring: restoring.clone(),
        },
    }
}

fn wire_verify_record(v: tcf_backup::VerifyRecord) -> BackupVerifyRecord {
    BackupVerifyRecord {
        level: v.level,
        time: v.time,
        ok: v.ok,
        problems: v.problems,
    }
}

/// A unit enum's serde name (`postgres_database`, `not_run`).
fn enum_text(v: &impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

pub fn wire_verify(r: &tcf_backup::VerifyReport) -> BackupVerifyReport {
    BackupVerifyReport {
        id: r.id.clone(),
        level: r.level.as_str().to_string(),
        ok: r.ok,
        problems: r.problems.clone(),
        artifacts: r
            .artifacts
            .iter()
            .map(|a| BackupArtifactCheck {
                artifact: a.artifact.clone(),
                status: enum_text(&a.status),
                detail: a.detail.clone(),
            })
            .collect(),
    }
}

pub fn wire_restore(r: &tcf_backup::RestoreReport) -> BackupRestoreReport {
    BackupRestoreReport {
        id: r.id.clone(),
        recovery_point: r.recovery_point.clone(),
        restored: r.restored.clone(),
        notes: r.notes.clone(),
    }
}

pub fn wire_prune(r: &tcf_backup::PruneReport) -> BackupPruneReport {
    BackupPruneReport {
        dry_run: r.dry_run,
        decisions: r
            .decisions
            .iter()
            .map(|d| BackupDecision {
                id: d.id.clone(),
                keep: d.keep,
                reasons: d.reasons.clone(),
            })
            .collect(),
        damaged: r.damaged.clone(),
    }
}

/// The exit code of a backup command that failed with `e`: 3 the repository is locked by
/// another run; 2 a usage or config error; 1 the rest.
pub fn exit_code(e: &tcf_backup::BackupError) -> u8 {
    use tcf_backup::BackupError;
    match e {
        BackupError::Locked { .. } => 3,
        BackupError::UnknownSource(_)
        | BackupError::Retention(_)
        | BackupError::Schedule { .. } => 2,
        _ => 1,
    }
}

/// A verify's verdict: its exit code (0 ok, 1 damage found, 4 a check could not run) and
/// the words for it.
pub fn verify_verdict(r: &BackupVerifyReport) -> (u8, &'static str) {
    let failed = !r.problems.is_empty() || r.artifacts.iter().any(|a| a.status == "failed");
    let not_run = r.artifacts.iter().any(|a| a.status == "not_run");
    if failed {
        (1, "FAILED")
    } else if not_run {
        (4, "NOT PROVEN (a check could not run)")
    } else {
        (0, "ok")
    }
}

/// An error with its causes, as one line of text (`outer: cause: cause`).
pub fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

/// The pre-deploy backups retention must keep: those of the active and the previous release.
/// Without the release history (no daemon), the two newest releases that have a pre-deploy
/// backup stand in for them.
pub fn pinned(
    listed: &[tcf_backup::Listed],
    releases: Option<&[tcf_api::Release]>,
) -> BTreeSet<String> {
    let pre_deploy: Vec<(String, String)> = listed
        .iter()
        .filter_map(|l| match &l.manifest.as_ref().ok()?.trigger {
            tcf_backup::Trigger::PreDeploy { release } => Some((l.id.clone(), release.clone())),
            _ => None,
        })
        .collect();
    let keep: BTreeSet<String> = match releases {
        Some(rels) => {
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
        None => {
            let mut all: Vec<&String> = pre_deploy.iter().map(|(_, r)| r).collect();
            all.sort_by_key(|r| (r.parse::<i64>().unwrap_or(i64::MIN), (*r).clone()));
            all.dedup();
            all.into_iter().rev().take(2).cloned().collect()
        }
    };
    pre_deploy
        .into_iter()
        .filter(|(_, r)| keep.contains(r))
        .map(|(id, _)| id)
        .collect()
}

/// Services that use a source: those whose `depends_on` names the source's dependency.
pub fn services_using(config: &tcf_config::Config, source: &str) -> Vec<String> {
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

/// The error for a config without `[backup]`.
pub fn no_backup_section(config: &tcf_config::Config) -> String {
    format!(
        "{} has no [backup] section\nhint: add [backup] with repository = \"/var/backups/tcf\" and [backup.sources.NAME]; docs/backups.md shows how",
        config.path.display()
    )
}

/// `[backup]` of a platform whose daemon is not running, its secrets read from a copy of the
/// store (so nothing is locked): what the CLI uses when it runs a backup itself.
pub fn offline_settings(
    config: &tcf_config::Config,
    backup: &tcf_config::BackupConfig,
) -> Result<tcf_backup::Settings, String> {
    // A platform that never ran has no store, so no secret: the error names the missing one.
    let wanted = !crate::access::backup_secret_users(config).is_empty()
        && config.platform.state_dir.join("state.db").exists();
    let rows = if wanted {
        tcf_store::Store::open_read_only(&config.platform.state_dir)
            .and_then(|s| s.secrets())
            .map_err(|e| {
                format!(
                    "cannot read the secrets of {}: {e}",
                    config.platform.state_dir.display()
                )
            })?
    } else {
        Vec::new()
    };
    crate::access::backup_settings(backup, &config.platform.state_dir, &rows)
}
