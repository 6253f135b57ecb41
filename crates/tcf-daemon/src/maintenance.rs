//! Maintenance: a service's proxy answers every request 503 with `Retry-After` while its
//! instances keep running (a restore writing the data the service reads, say). Set and lifted
//! through the API (`tcf-platform maintenance on|off`, and `backup restore` around its writes);
//! every change is an event naming who made it. Not kept across a daemon restart: a new daemon
//! serves (and says so in the log of the restore that set it, which lifts it at its end anyway).

use crate::api::{ApiError, ApiJson};
use crate::caller::{check_text, Peer};
use crate::platform::{lock, Platform};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;
use tcf_api::{Maintenance, MaintenanceRequest, MaintenanceResponse};

/// What clients are told to wait when the caller does not say.
const DEFAULT_RETRY_AFTER_S: u32 = 60;

pub fn routes() -> Router<Arc<Platform>> {
    Router::new().route("/v1/maintenance", post(set_maintenance))
}

async fn set_maintenance(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    ApiJson(req): ApiJson<MaintenanceRequest>,
) -> Result<Json<MaintenanceResponse>, ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    check_text("the reason", &req.reason).map_err(bad)?;
    check_text("the actor", &req.actor).map_err(bad)?;
    if req.services.is_empty() {
        return Err(bad("name at least one service".into()));
    }
    let services = crate::api::services_in_order(&p, &req.services)?;
    let actor = peer.actor(&req.actor);
    let retry_after_s = req.retry_after_s.unwrap_or(DEFAULT_RETRY_AFTER_S).max(1);
    let changed = set(
        &p,
        &services,
        req.on.then_some(retry_after_s),
        &req.reason,
        &actor,
    );
    Ok(Json(MaintenanceResponse { changed }))
}

/// Put `services` in maintenance (`Some(retry after)`) or back in service; one event per
/// change, by `actor`. Returns the services that changed. The API route and a restore run
/// by the daemon both come here.
pub(crate) fn set(
    p: &Platform,
    services: &[String],
    retry_after_s: Option<u32>,
    reason: &str,
    actor: &str,
) -> Vec<String> {
    let mut changed = Vec::new();
    for name in services {
        let Some(svc) = p.services.get(name) else {
            continue;
        };
        let mut current = lock(&svc.maintenance);
        if let Some(retry_after_s) = retry_after_s {
            svc.proxy
                .set_maintenance(Some(Duration::from_secs(u64::from(retry_after_s))));
            let was_on = current.is_some();
            *current = Some(Maintenance {
                retry_after_s,
                reason: reason.to_string(),
                since: crate::deploy::rfc3339(tcf_monitor::now_ms()),
                by: actor.to_string(),
            });
            drop(current);
            if !was_on {
                changed.push(name.clone());
                p.event_by(
                    actor,
                    "service.maintenance_on",
                    Some(name),
                    None,
                    format!(
                        "in maintenance: every request answered 503 (Retry-After {retry_after_s} s){}",
                        reason_suffix(reason)
                    ),
                );
            }
        } else if current.take().is_some() {
            svc.proxy.set_maintenance(None);
            drop(current);
            changed.push(name.clone());
            p.event_by(
                actor,
                "service.maintenance_off",
                Some(name),
                None,
                format!("back in service{}", reason_suffix(reason)),
            );
        }
    }
    changed
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}
