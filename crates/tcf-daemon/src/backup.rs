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
            match result {
                Ok(Ok(m)) => p.event(
                    "backup.created",
                    None,
                    None,
                    format!(
                        "scheduled backup {} ({} artifacts, {} bytes)",
                        m.id,
                        m.artifacts.len(),
                        m.total_size()
                    ),
                ),
                Ok(Err(e)) => p.event(
                    "backup.failed",
                    None,
                    None,
                    format!("scheduled backup: {e}"),
                ),
                Err(e) => p.event(
                    "backup.failed",
                    None,
                    None,
                    format!("scheduled backup task: {e}"),
                ),
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
