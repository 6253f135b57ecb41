//! The JSON API on the daemon's Unix socket. Shapes come from `tcf-api`; this module maps the
//! live state onto them.

use crate::logs;
use crate::metrics::service_metrics;
use crate::platform::{lock, Platform};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tcf_api::{
    DependencyStatus, DownResponse, ErrorBody, Event, InstanceStatus, Ping, ServiceStatus, Status,
};

pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

pub fn router(p: Arc<Platform>) -> Router {
    Router::new()
        .route("/v1/ping", get(ping))
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/v1/logs/{service}", get(logs_handler))
        .route("/v1/down", post(down))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such API endpoint".into()) })
        .with_state(p)
}

async fn ping(State(p): State<Arc<Platform>>) -> Json<Ping> {
    Json(Ping {
        platform: p.config.platform.name.clone(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        config: p.config.path.display().to_string(),
    })
}

#[derive(Deserialize)]
struct StatusQuery {
    #[serde(default)]
    metrics: bool,
}

/// The live state in the wire shape.
pub fn build_status(p: &Platform, with_metrics: bool) -> Status {
    let services = p
        .config
        .start_order()
        .iter()
        .filter_map(|name| p.services.get(name))
        .map(|svc| {
            let instances: Vec<InstanceStatus> = svc
                .instances()
                .iter()
                .map(|i| {
                    let info = i.info();
                    InstanceStatus {
                        id: i.id.clone(),
                        colour: i.colour.clone(),
                        version: i.version.clone(),
                        pid: info.pid,
                        port: i.port,
                        state: info.state.as_str().to_string(),
                        health: info.health.as_str().to_string(),
                        restarts: info.restarts,
                        uptime_s: info
                            .started
                            .filter(|_| info.pid.is_some())
                            .map_or(0, |s| s.elapsed().as_secs()),
                    }
                })
                .collect();
            ServiceStatus {
                name: svc.config.name.clone(),
                version: svc.serving_version(),
                traffic: lock(&svc.traffic)
                    .iter()
                    .map(|(colour, weight)| tcf_api::Traffic {
                        colour: colour.clone(),
                        version: svc
                            .colour(colour)
                            .map(|c| c.version.clone())
                            .unwrap_or_default(),
                        weight: *weight,
                    })
                    .collect(),
                listen: svc.config.listen.to_string(),
                healthy: *svc.healthy.borrow(),
                instances,
                metrics: with_metrics.then(|| service_metrics(svc)),
            }
        })
        .collect();
    let dependencies = p
        .dependencies
        .values()
        .map(|d| {
            let info = lock(&d.info).clone();
            DependencyStatus {
                name: d.config.name.clone(),
                kind: serde_json::to_value(d.config.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                target: crate::health::dependency_target(&d.config),
                healthy: info.healthy,
                last_error: info.last_error,
            }
        })
        .collect();
    Status {
        platform: p.config.platform.name.clone(),
        services,
        dependencies,
    }
}

async fn status(State(p): State<Arc<Platform>>, Query(q): Query<StatusQuery>) -> Json<Status> {
    Json(build_status(&p, q.metrics))
}

#[derive(Deserialize)]
struct EventsQuery {
    service: Option<String>,
    #[serde(default)]
    after: i64,
    limit: Option<u32>,
}

pub fn wire_event(e: tcf_store::Event) -> Event {
    let at = UNIX_EPOCH + Duration::from_millis(e.ts_ms.max(0) as u64);
    Event {
        id: e.id,
        time: humantime::format_rfc3339_millis(at).to_string(),
        actor: e.actor,
        kind: e.kind,
        service: e.service,
        instance: e.instance,
        message: e.message,
    }
}

async fn events(
    State(p): State<Arc<Platform>>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let rows = p
        .store
        .events(
            q.service.as_deref(),
            q.after,
            q.limit.unwrap_or(100).min(10_000),
        )
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(rows.into_iter().map(wire_event).collect()))
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<usize>,
}

async fn logs_handler(
    State(p): State<Arc<Platform>>,
    Path(service): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let Some(svc) = p.services.get(&service) else {
        let known: Vec<&str> = p.services.keys().map(String::as_str).collect();
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no service {service:?}; services: {}", known.join(", ")),
        ));
    };
    let ids: Vec<String> = svc.instances().iter().map(|i| i.id.clone()).collect();
    let body = logs::stream(p.clone(), ids, q.tail.unwrap_or(100), q.follow);
    Ok(([("content-type", "text/plain; charset=utf-8")], body).into_response())
}

async fn down(State(p): State<Arc<Platform>>) -> Json<DownResponse> {
    p.event(
        "daemon.stop_requested",
        None,
        None,
        "stop requested through the API (tcf-platform down)",
    );
    p.shutdown.send_replace(true);
    Json(DownResponse { stopping: true })
}
