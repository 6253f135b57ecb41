//! The web dashboard the daemon serves (`[monitor.dashboard]`, `prod monitor --dashboard`):
//! server-rendered pages, live regions pushed over Server-Sent Events, a token login with a
//! session cookie off loopback, and a CSRF token on every action. Every asset is embedded.
//!
//! The daemon provides the data and the actions through [`DataSource`] and the token check
//! through [`TokenVerifier`]; this crate never sees the daemon's state.

pub mod auth;
pub mod chart;
pub mod html;
pub mod pages;
pub mod source;

pub use auth::{Access, AuthError, Role, TokenVerifier, Viewer};
pub use source::{BoxFuture, Change, DataSource, HostInfo, Point, SeriesQuery, SourceError};

use auth::Sessions;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use html::{page, region};
use pages::View;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

const STYLE: &str = include_str!("../assets/style.css");
const SCRIPT: &str = include_str!("../assets/app.js");
const ICON: &str = include_str!("../assets/icon.svg");

/// How often live pages are re-rendered when nothing happened (metrics move on their own).
pub const LIVE_REFRESH: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("could not make the dashboard's CSRF secret: {0}")]
    Random(#[from] std::io::Error),
}

/// What the dashboard needs from its host.
pub struct Dashboard {
    data: Arc<dyn DataSource>,
    sessions: Sessions,
    /// Served under TLS: the session cookie gets `Secure`.
    secure: bool,
    platform: String,
}

impl Dashboard {
    pub fn new(
        data: Arc<dyn DataSource>,
        access: Access,
        secure: bool,
        platform: &str,
    ) -> Result<Dashboard, DashboardError> {
        Ok(Dashboard {
            data,
            sessions: Sessions::new(access)?,
            secure,
            platform: platform.to_string(),
        })
    }
}

type App = State<Arc<Dashboard>>;

pub fn router(d: Dashboard) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/services/{name}", get(service))
        .route(
            "/services/{name}/rollback",
            get(rollback_confirm).post(rollback),
        )
        .route("/releases", get(releases))
        .route("/alerts", get(alerts))
        .route("/alerts/silence", post(silence))
        .route("/alerts/silences/{id}/expire", post(unsilence))
        .route("/events", get(events))
        .route("/live", get(live))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/assets/style.css", get(|| asset("text/css", STYLE)))
        .route("/assets/app.js", get(|| asset("text/javascript", SCRIPT)))
        .route("/favicon.ico", get(|| asset("image/svg+xml", ICON)))
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(Arc::new(d))
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Nothing but our own scripts and styles, never in a frame, no referrer to other sites
/// (`same-origin`: with `no-referrer` browsers send `Origin: null` on our own forms).
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    res
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    auth::cookie_value(
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

impl Dashboard {
    /// The viewer, or the login page.
    #[allow(clippy::result_large_err)] // the handler's early answer, returned at once
    fn viewer(&self, headers: &HeaderMap) -> Result<Viewer, Response> {
        self.sessions
            .viewer(cookie(headers))
            .ok_or_else(|| Redirect::to("/login").into_response())
    }

    fn page(
        &self,
        title: &str,
        current: &str,
        view: &str,
        v: Option<&Viewer>,
        body: &str,
    ) -> Html<String> {
        Html(page(
            title,
            &self.platform,
            current,
            view,
            v,
            self.sessions.needs_login(),
            body,
        ))
    }

    fn error_page(&self, status: StatusCode, v: Option<&Viewer>, text: &str) -> Response {
        let title = status.canonical_reason().map_or_else(
            || status.as_str().to_string(),
            |r| format!("{} {r}", status.as_str()),
        );
        (
            status,
            self.page(&title, "", "", v, &pages::message_box("error", text)),
        )
            .into_response()
    }

    /// An action's checks: a session, a same-origin post, its CSRF token, a role that may act.
    #[allow(clippy::result_large_err)] // the handler's early answer, returned at once
    fn action(&self, headers: &HeaderMap, csrf: &str, what: &str) -> Result<Viewer, Response> {
        let v = self.viewer(headers)?;
        let header = |name| {
            headers
                .get(name)
                .and_then(|h: &HeaderValue| h.to_str().ok())
        };
        if auth::cross_origin(header(header::ORIGIN), header(header::HOST)) {
            return Err(self.error_page(
                StatusCode::FORBIDDEN,
                Some(&v),
                "This form was sent from another site; nothing was done.",
            ));
        }
        if !auth::same(csrf, &v.csrf) {
            return Err(self.error_page(
                StatusCode::FORBIDDEN,
                Some(&v),
                "This form is out of date (its CSRF token does not match your session); reload the page and try again. Nothing was done.",
            ));
        }
        if !v.role.can_act() {
            return Err(self.error_page(
                StatusCode::FORBIDDEN,
                Some(&v),
                &format!(
                    "{} has the {} role: to {what} you need a deployer or admin token. Nothing was done.",
                    v.actor,
                    v.role.as_str()
                ),
            ));
        }
        Ok(v)
    }
}

async fn not_found(State(d): App, headers: HeaderMap) -> Response {
    let v = d.sessions.viewer(cookie(&headers));
    d.error_page(StatusCode::NOT_FOUND, v.as_ref(), "There is no such page.")
}

fn sections(regions: &[(&'static str, String)], labels: &[(&str, &str)]) -> String {
    regions
        .iter()
        .map(|(id, html)| {
            let label = labels
                .iter()
                .find(|(i, _)| i == id)
                .map_or(*id, |(_, l)| *l);
            region(id, label, html)
        })
        .collect()
}

async fn overview(State(d): App, headers: HeaderMap) -> Response {
    let v = match d.viewer(&headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let view = View::Overview;
    let regions = pages::regions(d.data.as_ref(), &view, &v).await;
    let body = sections(
        &regions,
        &[
            ("deploy", "Release in progress"),
            ("services", "Services"),
            ("dependencies", "Dependencies"),
            ("host", "Host"),
        ],
    );
    d.page("Overview", "/", &view.name(), Some(&v), &body)
        .into_response()
}

#[derive(Deserialize)]
struct RangeQuery {
    range: Option<String>,
}

async fn service(
    State(d): App,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Response {
    let v = match d.viewer(&headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let status = d.data.status().await;
    let Some(svc) = status.services.iter().find(|s| s.name == name) else {
        return d.error_page(
            StatusCode::NOT_FOUND,
            Some(&v),
            &format!("There is no service {name:?}."),
        );
    };
    let view = View::Service(name.clone());
    let regions = pages::regions(d.data.as_ref(), &view, &v).await;
    let releases = d.data.releases(1000).await.unwrap_or_default();
    let charts = pages::service_charts(
        d.data.as_ref(),
        svc,
        q.range.as_deref().unwrap_or("1h"),
        &releases,
    )
    .await;
    let mut body = sections(
        &regions,
        &[
            ("deploy", "Release in progress"),
            ("summary", "Summary"),
            ("instances", "Instances"),
            ("logs", "Logs"),
        ],
    );
    // Charts sit between the summary and the instances.
    let at = body
        .find(r#"<section id="instances""#)
        .unwrap_or(body.len());
    body.insert_str(
        at,
        &format!(r#"<section id="charts" aria-label="Charts"><h2>History</h2>{charts}</section>"#),
    );
    d.page(&name, "", &view.name(), Some(&v), &body)
        .into_response()
}

async fn rollback_confirm(State(d): App, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let v = match d.viewer(&headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !v.role.can_act() {
        return d.error_page(
            StatusCode::FORBIDDEN,
            Some(&v),
            &format!(
                "{} has the {} role: to roll back you need a deployer or admin token.",
                v.actor,
                v.role.as_str()
            ),
        );
    }
    match d.data.rollback_preview(name.clone()).await {
        Ok(changes) => d
            .page(
                &format!("Roll back {name}?"),
                "",
                "",
                Some(&v),
                &pages::rollback_confirm(&name, &changes, &v),
            )
            .into_response(),
        Err(e) => d.error_page(e.status(), Some(&v), &e.to_string()),
    }
}

#[derive(Deserialize)]
struct RollbackForm {
    csrf: String,
    #[serde(default)]
    reason: String,
}

async fn rollback(
    State(d): App,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<RollbackForm>,
) -> Response {
    let v = match d.action(&headers, &f.csrf, "roll back") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let reason = if f.reason.trim().is_empty() {
        "rolled back from the dashboard".to_string()
    } else {
        f.reason
    };
    match d.data.rollback(name, v.actor.clone(), reason).await {
        Ok(_) => Redirect::to("/releases").into_response(),
        Err(e) => d.error_page(e.status(), Some(&v), &e.to_string()),
    }
}

async fn releases(State(d): App, headers: HeaderMap) -> Response {
    let v = match d.viewer(&headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let view = View::Releases;
    let regions = pages::regions(d.data.as_ref(), &view, &v).await;
    let body = sections(
        &regions,
        &[("deploy", "Release now"), ("timeline", "History")],
    );
    d.page("Releases", "/releases", &view.name(), Some(&v), &body)
        .into_response()
}

async fn alerts(State(d): App, headers: HeaderMap) -> Response {
    let v = match d.viewer(&headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let view = View::Alerts;
    let regions = pages::regions(d.data.as_ref(), &view, &v).await;
    let body = sections(
        &regions,
        &[
            ("active", "Active alerts"),
            ("silences", "Silences"),
            ("resolved", "Resolved"),
        ],
    );
    d.page("Alerts", "/alerts", &view.name(), Some(&v), &body)
        .into_response()
}

#[derive(Deserialize)]
struct SilenceForm {
    csrf: String,
    matchers: String,
    duration: String,
    #[serde(default)]
    comment: String,
}

async fn silence(State(d): App, headers: HeaderMap, Form(f): Form<SilenceForm>) -> Response {
    let v = match d.action(&headers, &f.csrf, "silence alerts") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let duration = match humantime::parse_duration(f.duration.trim()) {
        Ok(d) => d,
        Err(e) => {
            return d.error_page(
                StatusCode::BAD_REQUEST,
                Some(&v),
                &format!("bad duration {:?}: {e} (write 30m, 2h or 1d)", f.duration),
            )
        }
    };
    let matchers = f.matchers.split_whitespace().map(str::to_string).collect();
    match d
        .data
        .silence(matchers, duration, f.comment, v.actor.clone())
        .await
    {
        Ok(_) => Redirect::to("/alerts").into_response(),
        Err(e) => d.error_page(e.status(), Some(&v), &e.to_string()),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn unsilence(
    State(d): App,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let v = match d.action(&headers, &f.csrf, "end silences") {
        Ok(v) => v,
        Err(r) => return r,
    };
    match d.data.unsilence(id, v.actor.clone()).await {
        Ok(_) => Redirect::to("/alerts").into_response(),
        Err(e) => d.error_page(e.status(), Some(&v), &e.to_string()),
    }
}

async fn events(
    State(d): App,
    headers: HeaderMap,
    Query(filter): Query<pages::EventFilter>,
) -> Response {
    let v = match d.viewer(&headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let service = filter.service.clone().filter(|s| !s.is_empty());
    let list = match d.data.events(service, 1000).await {
        Ok(l) => l,
        Err(e) => return d.error_page(e.status(), Some(&v), &e.to_string()),
    };
    let names: Vec<String> = d
        .data
        .status()
        .await
        .services
        .into_iter()
        .map(|s| s.name)
        .collect();
    match pages::events_page(&list, &filter, &names) {
        Ok(body) => d
            .page("Events", "/events", "", Some(&v), &body)
            .into_response(),
        Err(e) => d.error_page(StatusCode::BAD_REQUEST, Some(&v), &e),
    }
}

#[derive(Deserialize)]
struct LiveQuery {
    view: String,
}

/// The live stream of a page: each changed region as an SSE event named after it.
async fn live(State(d): App, headers: HeaderMap, Query(q): Query<LiveQuery>) -> Response {
    let Some(v) = d.sessions.viewer(cookie(&headers)) else {
        return (StatusCode::UNAUTHORIZED, "log in first").into_response();
    };
    let Some(view) = View::parse(&q.view) else {
        return (StatusCode::BAD_REQUEST, "unknown view").into_response();
    };
    struct LiveState {
        d: Arc<Dashboard>,
        view: View,
        viewer: Viewer,
        cookie: Option<String>,
        changes: futures_util::stream::BoxStream<'static, ()>,
        sent: HashMap<&'static str, String>,
        queue: VecDeque<SseEvent>,
        first: bool,
    }
    let state = LiveState {
        changes: d.data.changes(),
        d: d.clone(),
        view,
        viewer: v,
        cookie: cookie(&headers).map(str::to_string),
        sent: HashMap::new(),
        queue: VecDeque::new(),
        first: true,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(e) = s.queue.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(e), s));
            }
            if !s.first {
                tokio::select! {
                    change = s.changes.next() => {
                        // The daemon is stopping: end the stream so shutdown is not held up.
                        change?;
                    }
                    _ = tokio::time::sleep(LIVE_REFRESH) => {}
                }
            }
            s.first = false;
            // A logout, an expired session or a revoked token ends the stream.
            s.viewer = s.d.sessions.viewer(s.cookie.as_deref())?;
            for (id, html) in pages::regions(s.d.data.as_ref(), &s.view, &s.viewer).await {
                if s.sent.get(id) != Some(&html) {
                    s.queue
                        .push_back(SseEvent::default().event(id).data(if html.is_empty() {
                            // An event without data is never dispatched: send a space.
                            " "
                        } else {
                            html.as_str()
                        }));
                    s.sent.insert(id, html);
                }
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn login_form(State(d): App, headers: HeaderMap) -> Response {
    if !d.sessions.needs_login() || d.sessions.viewer(cookie(&headers)).is_some() {
        return Redirect::to("/").into_response();
    }
    d.page("Log in", "", "", None, LOGIN_FORM).into_response()
}

const LOGIN_FORM: &str = r#"<form method="post" action="/login" class="stack login"><p>This dashboard is served on a network address: log in with an API token (<code>tcf-platform tokens create</code>).</p><label>Token <input type="password" name="token" id="token" autocomplete="off" required autofocus></label><button type="submit">Log in</button></form>"#;

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(d): App, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    let header = |name| {
        headers
            .get(name)
            .and_then(|h: &HeaderValue| h.to_str().ok())
    };
    if auth::cross_origin(header(header::ORIGIN), header(header::HOST)) {
        return d.error_page(
            StatusCode::FORBIDDEN,
            None,
            "This login was sent from another site.",
        );
    }
    match d.sessions.login(&f.token) {
        Ok((id, _)) => {
            let mut res = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&auth::session_cookie(&id, d.secure)) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        Err(auth::LoginError::NotNeeded) => Redirect::to("/").into_response(),
        Err(e) => {
            let status = match e {
                auth::LoginError::Auth(AuthError::InvalidToken) => StatusCode::UNAUTHORIZED,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            (
                status,
                d.page(
                    "Log in",
                    "",
                    "",
                    None,
                    &format!(
                        "{}{LOGIN_FORM}",
                        pages::message_box("error", &e.to_string())
                    ),
                ),
            )
                .into_response()
        }
    }
}

async fn logout(State(d): App, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let Some(v) = d.sessions.viewer(cookie(&headers)) else {
        return Redirect::to("/login").into_response();
    };
    if !auth::same(&f.csrf, &v.csrf) {
        return d.error_page(
            StatusCode::FORBIDDEN,
            Some(&v),
            "This form is out of date; reload the page.",
        );
    }
    d.sessions.logout(cookie(&headers));
    let mut res = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::expired_cookie(d.secure)) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// The URL a listener answers on, for `prod monitor --dashboard` to print.
pub fn url_of(addr: std::net::SocketAddr, tls: bool) -> String {
    format!("{}://{addr}/", if tls { "https" } else { "http" })
}

/// Whether an address only this machine can reach (no login needed there).
pub fn is_loopback(addr: std::net::SocketAddr) -> bool {
    addr.ip().is_loopback()
}
