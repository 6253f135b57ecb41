//! The monitoring API: `/v1/metrics`, `/v1/alerts`, `/v1/monitor`, and the Prometheus
//! `GET /metrics` on `[monitor] metrics_listen`. Shapes come from `tcf_api::monitor`.

use crate::api::{ApiJson, ApiQuery};
use crate::caller::{check_text, Peer};
use crate::monitor::{MonitorService, COLLECTED};
use crate::platform::lock;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tcf_api::monitor::{
    AlertInfo, AlertTransition, AlertsList, MetricPoint, MetricsList, MetricsQuery, MonitorRequest,
    MonitorStatus, NotifierStatus, SeriesInfo, ServiceHealth, SilenceInfo, SilenceRequest, Trend,
    UnsilenceRequest,
};
use tcf_api::ErrorBody;
use tcf_monitor::rules::{Alert, Silence, State as AlertState};
use tcf_monitor::{rfc3339, Agg};

pub struct MonitorApiError(StatusCode, String);

impl IntoResponse for MonitorApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

fn bad(msg: impl Into<String>) -> MonitorApiError {
    MonitorApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn unavailable(svc: &MonitorService) -> MonitorApiError {
    MonitorApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the metric history is not open: {}\nhint: check the state directory, then `tcf-platform prod monitor --action restart`",
            lock(&svc.last_error).clone().unwrap_or_default()
        ),
    )
}

type ApiResult<T> = Result<Json<T>, MonitorApiError>;

pub fn router(svc: Arc<MonitorService>) -> Router {
    Router::new()
        .route("/v1/metrics", get(list))
        .route("/v1/metrics/query", get(query))
        .route("/v1/alerts", get(alerts))
        .route("/v1/alerts/history", get(history))
        .route("/v1/alerts/silences", post(silence))
        .route("/v1/alerts/silences/{id}/expire", post(unsilence))
        .route("/v1/monitor", get(status).post(control))
        .with_state(svc)
}

async fn list(State(svc): State<Arc<MonitorService>>) -> ApiResult<MetricsList> {
    let guard = lock(&svc.monitor);
    let m = guard.as_ref().ok_or_else(|| unavailable(&svc))?;
    let series = m
        .series()
        .into_iter()
        .map(|(key, hist)| {
            let mut parts = key.splitn(3, '/');
            SeriesInfo {
                target: parts.next().unwrap_or_default().to_string(),
                metric: parts.next().unwrap_or_default().to_string(),
                sub: parts.next().map(str::to_string),
                kind: if hist { "histogram" } else { "gauge" }.to_string(),
            }
        })
        .collect();
    Ok(Json(MetricsList { series }))
}

#[derive(Deserialize)]
struct QueryParams {
    target: String,
    metric: String,
    sub: Option<String>,
    since: Option<String>,
    until: Option<String>,
    step: Option<String>,
    agg: Option<String>,
}

/// `1h` (that long ago), `now`, or an RFC 3339 time.
fn parse_time(s: &str, now_ms: i64) -> Result<i64, MonitorApiError> {
    if s == "now" {
        return Ok(now_ms);
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ms - d.as_millis() as i64);
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        })
        .map_err(|_| {
            bad(format!(
                "bad time {s:?}: write a duration ago (1h, 30m), now, or a time (2026-11-25T10:00:00Z)"
            ))
        })
}

async fn query(
    State(svc): State<Arc<MonitorService>>,
    ApiQuery(q): ApiQuery<QueryParams>,
) -> ApiResult<MetricsQuery> {
    let now = tcf_monitor::now_ms();
    let since = parse_time(q.since.as_deref().unwrap_or("1h"), now)?;
    let until = parse_time(q.until.as_deref().unwrap_or("now"), now)?;
    if until <= since {
        return Err(bad("--until must be later than --since"));
    }
    let step = match &q.step {
        Some(s) => humantime::parse_duration(s)
            .map_err(|e| bad(format!("bad step {s:?}: {e} (write 10s, 1m or 1h)")))?,
        // About 60 points by default, at least the collection interval.
        None => Duration::from_millis(((until - since) / 60).max(1000) as u64)
            .max(svc.platform.config.monitor.interval),
    };
    let agg_name = q.agg.as_deref().unwrap_or("avg");
    let agg = Agg::parse(agg_name).ok_or_else(|| {
        bad(format!(
            "unknown aggregation {agg_name:?}: use avg, min, max, sum, count, p50 or p99"
        ))
    })?;
    let key = tcf_monitor::collect::key(&q.target, &q.metric, q.sub.as_deref());
    let s = svc.clone();
    let points = tokio::task::spawn_blocking(move || {
        let guard = lock(&s.monitor);
        match guard.as_ref() {
            None => Err(unavailable(&s)),
            Some(m) => m
                .query(&key, since, until, step, agg, now)
                .map_err(|e| match e {
                    tcf_monitor::MonitorError::Store(tcf_monitor::StoreError::UnknownSeries(_)) => {
                        MonitorApiError(StatusCode::NOT_FOUND, e.to_string())
                    }
                    tcf_monitor::MonitorError::Store(tcf_monitor::StoreError::Io { .. }) => {
                        MonitorApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                    }
                    other => bad(other.to_string()),
                }),
        }
    })
    .await
    .map_err(|e| MonitorApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(MetricsQuery {
        target: q.target,
        metric: q.metric,
        sub: q.sub,
        agg: agg.as_str().to_string(),
        step_s: step.as_secs(),
        since: rfc3339(since),
        until: rfc3339(until),
        points: points
            .into_iter()
            .map(|p| MetricPoint {
                time: rfc3339(p.at_ms),
                value: p.value,
            })
            .collect(),
    }))
}

fn alert_info(a: &Alert, silenced: bool) -> AlertInfo {
    AlertInfo {
        rule: a.rule.clone(),
        service: a.target.clone(),
        state: a.state.as_str().to_string(),
        severity: a.severity.as_str().to_string(),
        value: a.value,
        summary: a.summary.clone(),
        labels: a.labels.clone(),
        active_since: rfc3339(a.active_since_ms),
        fired_at: a.fired_at_ms.map(rfc3339),
        resolved_at: a.resolved_at_ms.map(rfc3339),
        silenced,
    }
}

fn silence_info(s: &Silence) -> SilenceInfo {
    SilenceInfo {
        id: s.id.clone(),
        matchers: s.matchers.iter().map(|m| m.to_string()).collect(),
        starts: rfc3339(s.starts_ms),
        ends: rfc3339(s.ends_ms),
        author: s.author.clone(),
        comment: s.comment.clone(),
    }
}

/// Pending and firing alerts and the silences in force; None when the history is not open.
pub fn alerts_list(svc: &MonitorService) -> Option<AlertsList> {
    let now = tcf_monitor::now_ms();
    let guard = lock(&svc.monitor);
    let m = guard.as_ref()?;
    Some(AlertsList {
        alerts: m
            .active_alerts()
            .iter()
            .map(|a| alert_info(a, m.silenced(&a.labels, now)))
            .collect(),
        silences: m.silences(now).iter().map(silence_info).collect(),
        evaluating: svc.control().alerts && svc.control().collecting,
    })
}

async fn alerts(State(svc): State<Arc<MonitorService>>) -> ApiResult<AlertsList> {
    alerts_list(&svc).map(Json).ok_or_else(|| unavailable(&svc))
}

/// Alert transitions, oldest first; None when the history is not open.
pub fn alert_history(svc: &MonitorService, limit: usize) -> Option<Vec<AlertTransition>> {
    let guard = lock(&svc.monitor);
    let m = guard.as_ref()?;
    Some(
        m.history(limit)
            .iter()
            .map(|e| AlertTransition {
                time: rfc3339(e.at_ms),
                from: e.from.as_str().to_string(),
                alert: alert_info(&e.alert, e.silenced),
            })
            .collect(),
    )
}

#[derive(Deserialize)]
struct HistoryParams {
    limit: Option<usize>,
}

async fn history(
    State(svc): State<Arc<MonitorService>>,
    ApiQuery(q): ApiQuery<HistoryParams>,
) -> ApiResult<Vec<AlertTransition>> {
    alert_history(&svc, q.limit.unwrap_or(50))
        .map(Json)
        .ok_or_else(|| unavailable(&svc))
}

async fn silence(
    State(svc): State<Arc<MonitorService>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    ApiJson(req): ApiJson<SilenceRequest>,
) -> ApiResult<SilenceInfo> {
    check_text("the comment", &req.comment).map_err(bad)?;
    for m in &req.matchers {
        check_text("a matcher", m).map_err(bad)?;
    }
    // The kernel's word for who is calling, not the client's (docs/api.md).
    let actor = peer.actor(&req.actor);
    add_silence(
        &svc,
        &req.matchers,
        Duration::from_secs(req.duration_s),
        &req.comment,
        &actor,
    )
    .map(Json)
    .map_err(|(status, m)| MonitorApiError(status, m))
}

/// Add a silence and record it as an event (the API and the dashboard).
pub fn add_silence(
    svc: &MonitorService,
    matchers: &[String],
    duration: Duration,
    comment: &str,
    actor: &str,
) -> Result<SilenceInfo, (StatusCode, String)> {
    let now = tcf_monitor::now_ms();
    let s = {
        let mut guard = lock(&svc.monitor);
        let m = guard.as_mut().ok_or_else(|| {
            let e = unavailable(svc);
            (e.0, e.1)
        })?;
        m.add_silence(matchers, duration, actor, comment, now)
            .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?
    };
    let info = silence_info(&s);
    svc.platform.event_by(
        actor,
        "alert.silenced",
        None,
        None,
        format!(
            "silence {} for {} until {}: {}{}",
            s.id,
            info.matchers.join(" "),
            info.ends,
            s.comment,
            if s.comment.is_empty() {
                "(no comment)"
            } else {
                ""
            }
        ),
    );
    Ok(info)
}

async fn unsilence(
    State(svc): State<Arc<MonitorService>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UnsilenceRequest>,
) -> ApiResult<SilenceInfo> {
    let actor = peer.actor(&req.actor);
    expire_silence(&svc, &id, &actor)
        .map(Json)
        .map_err(|(status, m)| MonitorApiError(status, m))
}

/// End a silence now and record it as an event (the API and the dashboard).
pub fn expire_silence(
    svc: &MonitorService,
    id: &str,
    actor: &str,
) -> Result<SilenceInfo, (StatusCode, String)> {
    let now = tcf_monitor::now_ms();
    let s = {
        let mut guard = lock(&svc.monitor);
        let m = guard.as_mut().ok_or_else(|| {
            let e = unavailable(svc);
            (e.0, e.1)
        })?;
        m.expire_silence(id, now)
            .map_err(|e| (StatusCode::NOT_FOUND, e.to_string()))?
    };
    svc.platform.event_by(
        actor,
        "alert.unsilenced",
        None,
        None,
        format!("silence {} ended", s.id),
    );
    Ok(silence_info(&s))
}

fn monitor_status(svc: &MonitorService) -> MonitorStatus {
    let now = tcf_monitor::now_ms();
    let control = svc.control();
    let guard = lock(&svc.monitor);
    let notifiers = lock(&svc.hub)
        .as_ref()
        .map(|h| h.status())
        .unwrap_or_default()
        .into_iter()
        .map(|(name, s)| NotifierStatus {
            name,
            kind: s.kind,
            last_attempt: s.last_attempt_ms.map(rfc3339),
            last_success: s.last_success_ms.map(rfc3339),
            last_error: s.last_error,
            delivered: s.delivered,
            failed: s.failed,
        })
        .collect();
    let (mut firing, mut pending, mut services) = (Vec::new(), Vec::new(), Vec::new());
    let (mut series, mut bytes, mut per_sample, mut last_eval) = (0, 0, None, None);
    if let Some(m) = guard.as_ref() {
        for a in m.active_alerts() {
            let info = alert_info(&a, m.silenced(&a.labels, now));
            if a.state == AlertState::Firing {
                firing.push(info);
            } else {
                pending.push(info);
            }
        }
        let st = m.store_stats();
        series = st.series;
        bytes = st.bytes_on_disk;
        per_sample = (st.raw_samples_written > 0)
            .then(|| st.raw_bytes_written as f64 / st.raw_samples_written as f64);
        last_eval = m.last_evaluation_ms().map(rfc3339);
        for (name, h) in m.health() {
            services.push(ServiceHealth {
                service: name.clone(),
                score: h.score,
                band: h.band.as_str().to_string(),
                trend: m.trend(name, "requests_per_s", now).map(|t| Trend {
                    metric: t.metric,
                    last_hour: t.last_hour,
                    baseline_mean: t.baseline_mean,
                    baseline_stddev: t.baseline_stddev,
                    baseline_days: t.baseline_days,
                    z: t.z.filter(|z| z.is_finite()),
                    anomaly: t.anomaly,
                }),
            });
        }
    }
    MonitorStatus {
        collecting: control.collecting,
        alerts: control.alerts,
        interval_s: svc.platform.config.monitor.interval.as_secs_f64(),
        collected: COLLECTED.iter().map(|s| s.to_string()).collect(),
        series,
        bytes_on_disk: bytes,
        bytes_per_sample: per_sample,
        last_collection: lock(&svc.last_collection_ms).map(rfc3339),
        last_evaluation: last_eval,
        last_error: lock(&svc.last_error).clone(),
        firing,
        pending,
        notifiers,
        metrics_url: svc.metrics_addr.map(|a| format!("http://{a}/metrics")),
        dashboard_url: lock(&svc.dashboard_url).clone(),
        services,
    }
}

async fn status(State(svc): State<Arc<MonitorService>>) -> Json<MonitorStatus> {
    let s = svc.clone();
    Json(
        tokio::task::spawn_blocking(move || monitor_status(&s))
            .await
            .unwrap_or_else(|_| monitor_status(&svc)),
    )
}

async fn control(
    State(svc): State<Arc<MonitorService>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    ApiJson(req): ApiJson<MonitorRequest>,
) -> ApiResult<MonitorStatus> {
    let actor = peer.actor(&req.actor);
    let s = svc.clone();
    tokio::task::spawn_blocking(move || s.apply(&req.action, req.alerts, &actor))
        .await
        .map_err(|e| MonitorApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(bad)?;
    Ok(status(State(svc)).await)
}

/// `GET /metrics` in the Prometheus text format, from the last tick.
pub async fn serve_metrics(svc: Arc<MonitorService>, listener: tokio::net::TcpListener) {
    let app = Router::new()
        .route("/metrics", get(prometheus))
        .with_state(svc.clone());
    let mut shutdown = svc.platform.shutdown.subscribe();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = shutdown.wait_for(|s| *s).await;
    });
    if let Err(e) = server.await {
        tracing::error!("the metrics server failed: {e}");
    }
}

async fn prometheus(State(svc): State<Arc<MonitorService>>) -> Response {
    let text = {
        let guard = lock(&svc.monitor);
        match guard.as_ref() {
            Some(m) => tcf_monitor::prom::render(m.last_tick(), m.health(), &m.active_alerts()),
            None => tcf_monitor::prom::render(None, &Default::default(), &[]),
        }
    };
    (
        [(header::CONTENT_TYPE, tcf_monitor::prom::CONTENT_TYPE)],
        text,
    )
        .into_response()
}
