//! Backup routes. Backups run in the CLI process against the config (tcf-backup); the daemon
//! records what they did in the audit trail, with the actor who ran them.

use crate::platform::Platform;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use std::sync::Arc;
use tcf_api::{BackupEventRequest, ErrorBody};
use tcf_store::NewEvent;

const KINDS: &[&str] = &[
    "backup.created",
    "backup.failed",
    "backup.verified",
    "backup.verify_failed",
    "backup.restored",
    "backup.restore_failed",
    "backup.pruned",
];

pub fn routes() -> Router<Arc<Platform>> {
    Router::new().route("/v1/backup/events", post(record_event))
}

async fn record_event(
    State(p): State<Arc<Platform>>,
    Json(req): Json<BackupEventRequest>,
) -> Result<Json<tcf_api::Event>, (StatusCode, Json<ErrorBody>)> {
    let fail = |status, error| (status, Json(ErrorBody { error }));
    if !KINDS.contains(&req.kind.as_str()) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!(
                "{:?} is not a backup event kind (one of {})",
                req.kind,
                KINDS.join(", ")
            ),
        ));
    }
    tracing::info!(
        "{:<24} {:<14} {} ({})",
        req.kind,
        "platform",
        req.message,
        req.actor
    );
    let event = p
        .store
        .append_event(&NewEvent {
            actor: req.actor,
            kind: req.kind,
            service: None,
            instance: None,
            message: req.message,
        })
        .map_err(|e| {
            fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot record the event: {e}"),
            )
        })?;
    let _ = p.events.send(event.clone());
    Ok(Json(crate::api::wire_event(event)))
}
