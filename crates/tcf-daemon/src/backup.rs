//! Backups in the daemon: the route through which the CLI's backup commands (which run in the
//! CLI process, tcf-backup) record what they did in the audit trail, and the `[backup]
//! schedule`, run here.

use crate::api::ApiJson;
use crate::caller::{check_text, Peer};
use crate::platform::Platform;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use std::sync::atomic::Ordering;
use std::sync::Arc;
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
            // Secrets are not resolved here yet: plain-text passwords or PGPASSWORD only.
            let settings = match tcf_backup::Settings::from_config(&config, &|_| None) {
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
    let facts = tcf_backup::Settings::from_config(config, &|_| None)
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
