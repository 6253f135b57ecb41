//! The web dashboard (`tcf-dashboard`) wired to the live state: the daemon's side of its
//! `DataSource`, the listener from `[monitor.dashboard] listen` or `prod monitor --dashboard`,
//! and `POST /v1/dashboard` that starts it in a running daemon.
//!
//! Until the daemon checks tokens with roles, the dashboard is served on loopback only, where
//! no login is needed and every action is recorded as `dashboard (local)`.

use crate::api::{build_status, rollback_plan, wire_event, wire_releases, ApiJson};
use crate::caller::{check_text, Peer};
use crate::monitor::MonitorService;
use crate::platform::{lock, Platform};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures_util::stream::BoxStream;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tcf_api::monitor::{
    AlertTransition, AlertsList, DashboardRequest, DashboardStatus, SilenceInfo,
};
use tcf_api::ErrorBody;
use tcf_dashboard::{BoxFuture, Change, DataSource, HostInfo, Point, SeriesQuery, SourceError};

/// Recorded as the actor of what the local dashboard does.
pub const LOCAL_ACTOR: &str = "dashboard (local)";

struct Source {
    p: Arc<Platform>,
    monitor: Arc<MonitorService>,
}

fn internal(e: impl std::fmt::Display) -> SourceError {
    SourceError::Internal(e.to_string())
}

fn from_api(e: crate::api::ApiError) -> SourceError {
    let m = e.message().to_string();
    match e.status() {
        StatusCode::BAD_REQUEST => SourceError::BadRequest(m),
        StatusCode::NOT_FOUND => SourceError::NotFound(m),
        StatusCode::CONFLICT => SourceError::Conflict(m),
        _ => SourceError::Internal(m),
    }
}

fn rollback_request(service: String, reason: Option<String>) -> tcf_api::RollbackRequest {
    tcf_api::RollbackRequest {
        version: None,
        services: vec![service],
        reason,
        lock_wait_ms: 0,
        actor: String::new(),
    }
}

impl Source {
    fn unavailable(&self) -> SourceError {
        SourceError::Unavailable(format!(
            "the metric history is not open: {}",
            lock(&self.monitor.last_error).clone().unwrap_or_default()
        ))
    }

    fn changes_of(&self, plan: &crate::deploy::Plan) -> Vec<Change> {
        plan.targets
            .iter()
            .map(|(s, to)| Change {
                service: s.clone(),
                from: self.p.services[s].serving_version(),
                to: to.clone(),
            })
            .collect()
    }
}

impl DataSource for Source {
    fn status(&self) -> BoxFuture<'_, tcf_api::Status> {
        Box::pin(async move { build_status(&self.p, true) })
    }

    fn events(
        &self,
        service: Option<String>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<tcf_api::Event>, SourceError>> {
        Box::pin(async move {
            let rows = self
                .p
                .with_store(move |s| s.events(service.as_deref(), 0, limit))
                .await
                .map_err(internal)?;
            Ok(rows.into_iter().map(wire_event).collect())
        })
    }

    fn releases(&self, limit: usize) -> BoxFuture<'_, Result<Vec<tcf_api::Release>, SourceError>> {
        Box::pin(async move {
            let all = self
                .p
                .with_store(|s| s.releases(10_000))
                .await
                .map_err(internal)?;
            Ok(wire_releases(&all, None, limit))
        })
    }

    fn series(&self, q: SeriesQuery) -> BoxFuture<'_, Result<Vec<Point>, SourceError>> {
        Box::pin(async move {
            let agg = tcf_monitor::Agg::parse(q.agg)
                .ok_or_else(|| SourceError::BadRequest(format!("unknown aggregation {}", q.agg)))?;
            let key = tcf_monitor::collect::key(&q.target, &q.metric, q.sub.as_deref());
            let svc = self.monitor.clone();
            let step = q.step.max(svc.platform.config.monitor.interval);
            tokio::task::spawn_blocking(move || {
                let guard = lock(&svc.monitor);
                let m = guard.as_ref().ok_or(())?;
                // A series not recorded yet is an empty chart, not an error.
                Ok(m.query(
                    &key,
                    q.since_ms,
                    q.until_ms,
                    step,
                    agg,
                    tcf_monitor::now_ms(),
                )
                .map(|points| points.into_iter().map(|p| (p.at_ms, p.value)).collect())
                .unwrap_or_default())
            })
            .await
            .map_err(internal)?
            .map_err(|()| self.unavailable())
        })
    }

    fn alerts(&self) -> BoxFuture<'_, Result<AlertsList, SourceError>> {
        Box::pin(async move {
            crate::api_monitor::alerts_list(&self.monitor).ok_or_else(|| self.unavailable())
        })
    }

    fn alert_history(
        &self,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<AlertTransition>, SourceError>> {
        Box::pin(async move {
            crate::api_monitor::alert_history(&self.monitor, limit)
                .ok_or_else(|| self.unavailable())
        })
    }

    fn silence(
        &self,
        matchers: Vec<String>,
        duration: Duration,
        comment: String,
        actor: String,
    ) -> BoxFuture<'_, Result<SilenceInfo, SourceError>> {
        Box::pin(async move {
            check_text("the comment", &comment).map_err(SourceError::BadRequest)?;
            for m in &matchers {
                check_text("a matcher", m).map_err(SourceError::BadRequest)?;
            }
            crate::api_monitor::add_silence(&self.monitor, &matchers, duration, &comment, &actor)
                .map_err(|(status, m)| match status {
                    StatusCode::SERVICE_UNAVAILABLE => SourceError::Unavailable(m),
                    _ => SourceError::BadRequest(m),
                })
        })
    }

    fn unsilence(
        &self,
        id: String,
        actor: String,
    ) -> BoxFuture<'_, Result<SilenceInfo, SourceError>> {
        Box::pin(async move {
            crate::api_monitor::expire_silence(&self.monitor, &id, &actor).map_err(|(status, m)| {
                match status {
                    StatusCode::SERVICE_UNAVAILABLE => SourceError::Unavailable(m),
                    _ => SourceError::NotFound(m),
                }
            })
        })
    }

    fn rollback_preview(&self, service: String) -> BoxFuture<'_, Result<Vec<Change>, SourceError>> {
        Box::pin(async move {
            let plan = rollback_plan(&self.p, rollback_request(service, None), String::new())
                .await
                .map_err(from_api)?;
            Ok(self.changes_of(&plan))
        })
    }

    fn rollback(
        &self,
        service: String,
        actor: String,
        reason: String,
    ) -> BoxFuture<'_, Result<Vec<Change>, SourceError>> {
        Box::pin(async move {
            let plan = rollback_plan(&self.p, rollback_request(service, Some(reason)), actor)
                .await
                .map_err(from_api)?;
            let changes = self.changes_of(&plan);
            // The release path writes every step as an event; the pages follow those.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(crate::deploy::run(self.p.clone(), plan, tx));
            tokio::spawn(async move { while rx.recv().await.is_some() {} });
            Ok(changes)
        })
    }

    fn logs_tail(
        &self,
        service: String,
        lines: usize,
    ) -> BoxFuture<'_, Result<Vec<String>, SourceError>> {
        Box::pin(async move {
            let svc = self
                .p
                .services
                .get(&service)
                .ok_or_else(|| SourceError::NotFound(format!("no service {service:?}")))?;
            let files: Vec<(String, std::path::PathBuf)> = svc
                .instances()
                .iter()
                .map(|i| {
                    (
                        i.id.clone(),
                        self.p.logs_dir().join(format!("{}.log", i.id)),
                    )
                })
                .collect();
            tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                for (id, path) in files {
                    let (tail, _) = crate::logs::last_lines(&path, lines);
                    out.extend(
                        tail.into_iter()
                            .map(|l| format!("{id} | {}", tcf_runtime::logfile::strip_stamp(&l))),
                    );
                }
                out
            })
            .await
            .map_err(internal)
        })
    }

    fn host(&self) -> BoxFuture<'_, HostInfo> {
        Box::pin(async move {
            let name = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default();
            let percent = |v: Option<(u64, u64)>| {
                v.filter(|(_, total)| *total > 0)
                    .map(|(used, total)| used as f64 * 100.0 / total as f64)
            };
            let guard = lock(&self.monitor.monitor);
            let host = guard
                .as_ref()
                .and_then(|m| m.last_tick())
                .map(|t| t.host.clone());
            match host {
                None => HostInfo {
                    name,
                    ..HostInfo::default()
                },
                Some(h) => HostInfo {
                    name,
                    cpu_percent: h.cpu_percent,
                    memory_percent: percent(h.memory),
                    disk_percent: percent(h.disk),
                    load1: h.load1,
                },
            }
        })
    }

    fn changes(&self) -> BoxStream<'static, ()> {
        let events = self.p.events.subscribe();
        let shutdown = self.p.shutdown.subscribe();
        Box::pin(futures_util::stream::unfold(
            (events, shutdown),
            |(mut events, mut shutdown)| async move {
                if *shutdown.borrow() {
                    return None;
                }
                let happened = tokio::select! {
                    // A lagging receiver still means "something happened".
                    r = events.recv() => !matches!(
                        r,
                        Err(tokio::sync::broadcast::error::RecvError::Closed)
                    ),
                    _ = shutdown.wait_for(|s| *s) => false,
                };
                happened.then_some(((), (events, shutdown)))
            },
        ))
    }
}

/// Logins off loopback: the platform's API tokens, with their roles (docs/security.md).
struct PlatformTokens(Arc<Platform>);

impl tcf_dashboard::TokenVerifier for PlatformTokens {
    fn verify(
        &self,
        token: &str,
    ) -> Result<(String, tcf_dashboard::Role), tcf_dashboard::AuthError> {
        use tcf_auth::Role as R;
        use tcf_dashboard::Role as D;
        match crate::access::verify_in(&self.0.store, token) {
            Ok((name, role)) => Ok((
                name,
                match role {
                    R::Viewer => D::Viewer,
                    R::Deployer => D::Deployer,
                    R::Admin => D::Admin,
                },
            )),
            Err(tcf_auth::AuthError::Unavailable(m)) => {
                Err(tcf_dashboard::AuthError::Unavailable(m))
            }
            Err(_) => Err(tcf_dashboard::AuthError::InvalidToken),
        }
    }
}

/// Who may use the dashboard at `addr`: on loopback, the daemon's local user; elsewhere,
/// whoever logs in with a token.
fn access_at(p: &Arc<Platform>, addr: SocketAddr) -> tcf_dashboard::Access {
    if tcf_dashboard::is_loopback(addr) {
        tcf_dashboard::Access::Local {
            actor: LOCAL_ACTOR.into(),
        }
    } else {
        tcf_dashboard::Access::Tokens(Arc::new(PlatformTokens(p.clone())))
    }
}

/// Bind `[monitor.dashboard] listen` before anything starts, like every other address.
pub async fn bind(
    config: &tcf_config::Config,
    taking_over: bool,
) -> Result<Option<tokio::net::TcpListener>, crate::DaemonError> {
    let Some(addr) = config.monitor.dashboard_listen else {
        return Ok(None);
    };
    tcf_proxy::bind_handover_safe(addr, taking_over)
        .and_then(tokio::net::TcpListener::from_std)
        .map(Some)
        .map_err(|source| crate::DaemonError::Bind {
            service: "[monitor.dashboard] listen".into(),
            addr,
            source,
        })
}

/// Serve the dashboard on a bound listener until the daemon stops; returns its URL.
pub fn serve(
    monitor: Arc<MonitorService>,
    listener: tokio::net::TcpListener,
) -> Result<String, String> {
    let p = monitor.platform.clone();
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let dashboard = tcf_dashboard::Dashboard::new(
        Arc::new(Source {
            p: p.clone(),
            monitor: monitor.clone(),
        }),
        access_at(&p, addr),
        false,
        &p.config.platform.name,
    )
    .map_err(|e| e.to_string())?;
    let url = tcf_dashboard::url_of(addr, false);
    *lock(&monitor.dashboard_url) = Some(url.clone());
    let app = tcf_dashboard::router(dashboard);
    let mut shutdown = p.shutdown.subscribe();
    tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        });
        if let Err(e) = server.await {
            tracing::error!("the dashboard server failed: {e}");
        }
    });
    p.event(
        "dashboard.started",
        None,
        None,
        format!("dashboard at {url}"),
    );
    Ok(url)
}

struct DashboardApiError(StatusCode, String);

impl IntoResponse for DashboardApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

/// `POST /v1/dashboard`: serve the dashboard now (`prod monitor --dashboard [--port N]`).
pub fn router(monitor: Arc<MonitorService>) -> Router {
    Router::new()
        .route("/v1/dashboard", post(start))
        .with_state(monitor)
}

async fn start(
    State(monitor): State<Arc<MonitorService>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    ApiJson(req): ApiJson<DashboardRequest>,
) -> Result<Json<DashboardStatus>, DashboardApiError> {
    let configured = monitor.platform.config.monitor.dashboard_listen;
    let default: SocketAddr = tcf_config::DEFAULT_DASHBOARD_LISTEN
        .parse()
        .map_err(|_| DashboardApiError(StatusCode::INTERNAL_SERVER_ERROR, "bad default".into()))?;
    let mut addr = configured.unwrap_or(default);
    if let Some(port) = req.port {
        addr.set_port(port);
    }
    // One dashboard per daemon: asking again answers where it is.
    let running = lock(&monitor.dashboard_url).clone();
    if let Some(url) = running {
        if req.port.is_none_or(|p| url.ends_with(&format!(":{p}/"))) {
            return Ok(Json(DashboardStatus {
                url,
                started: false,
            }));
        }
        return Err(DashboardApiError(
            StatusCode::CONFLICT,
            format!("the dashboard already runs at {url}; a daemon serves one (restart the daemon to move it)"),
        ));
    }
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        DashboardApiError(
            StatusCode::CONFLICT,
            format!("cannot listen on {addr}: {e}; pick another with --port"),
        )
    })?;
    let url = serve(monitor.clone(), listener)
        .map_err(|m| DashboardApiError(StatusCode::INTERNAL_SERVER_ERROR, m))?;
    monitor.platform.event_by(
        &peer.user(),
        "dashboard.requested",
        None,
        None,
        format!("dashboard started at {url} (prod monitor --dashboard)"),
    );
    Ok(Json(DashboardStatus { url, started: true }))
}
