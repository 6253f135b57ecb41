//! The reverse proxy in front of every service.
//!
//! Hot-path rules (see docs/ARCHITECTURE.md): no database, no lock. A service's healthy
//! backends live in an [`ArcSwap`]; a request loads the route once and keeps it, so swapping the
//! table never breaks a request in flight. Counters are relaxed atomics.

pub mod access_log;
mod body;
mod checks;
mod deadline;
mod forward;
pub mod plain;
mod pool;
mod route;
mod server;
mod slab;
pub mod stats;
pub mod tls;
mod tunnel;
mod upstream;
mod workers;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use upstream::{Chunked, Conn, Decoded, Framing, ReadError};

pub use access_log::{AccessLog, AccessLogOptions};
pub use body::Streamed;
pub use pool::{Backend, Pool};
pub use route::{Route, Sticky, STICKY_COOKIE};
pub use server::serve;
pub use stats::{Snapshot, Stats};
pub use workers::{bind_for_workers, bind_handover_safe, bind_shared, serve_workers, MAX_WORKERS};

use body::*;
#[cfg(test)]
use forward::*;
use pool::*;
use route::*;
use server::*;
use workers::*;

/// Boxed when streamed: the usual answer is `Full`, and a small response moves cheaply through
/// the layers between the upstream and hyper (each move is a copy of the whole value).
pub type ProxyBody = Either<Box<Streamed>, Full<Bytes>>;

#[derive(Debug, Clone)]
pub struct Settings {
    pub max_request_body: u64,
    pub upstream_timeout: Duration,
    pub connect_timeout: Duration,
    /// What the proxy refuses in a request head (docs/running.md, "What the proxy refuses").
    pub limits: RequestLimits,
    /// An upgraded connection (WebSocket) that carries no byte either way for this long is
    /// closed (within twice this).
    pub tunnel_idle_timeout: Duration,
    /// HTTPS on the listener (`None`: plain HTTP): the rustls server side, whose certificate
    /// resolver is the service's [`tls::CertStore`].
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Added to every answer as `Strict-Transport-Security` (HTTPS only).
    pub hsts: Option<HeaderValue>,
    /// HTTP/2 streams a client connection may have open at once.
    pub h2_max_concurrent_streams: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_request_body: 16 << 20,
            upstream_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            limits: RequestLimits::default(),
            tunnel_idle_timeout: Duration::from_secs(300),
            tls: None,
            hsts: None,
            // nginx's http2_max_concurrent_streams.
            h2_max_concurrent_streams: 128,
        }
    }
}

/// Limits on a request's head, checked by hyper's parser (size, count) or once per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLimits {
    /// The whole head: request line and header fields (431 above it). At least 8 KiB, hyper's
    /// smallest read buffer.
    pub max_header_bytes: usize,
    /// Header fields in a head (431 above it). Up to 100 costs nothing; more, an allocation
    /// per request head.
    pub max_headers: usize,
    /// The request line (414 above it).
    pub max_request_line: usize,
    pub underscores: UnderscoreHeaders,
}

/// The smallest head limit hyper accepts.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;
/// hyper's own read buffer limit (about 400 KiB) less the smallest head: a head limit is added
/// to it, so reading request bodies keeps its usual chunk size whatever the head limit.
const HYPER_READ_BUFFER: usize = 4096 * 100;

impl Default for RequestLimits {
    fn default() -> Self {
        // nginx: large_client_header_buffers 4 8k (a request line fits one buffer, 32 KiB in
        // all); hyper's default of 100 header fields.
        RequestLimits {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_request_line: 8 * 1024,
            underscores: UnderscoreHeaders::Forward,
        }
    }
}

/// What to do with a header whose name holds an underscore. CGI-style frameworks (WSGI, Rack,
/// PHP) read `X_User` and `X-User` as the same variable, so a client can pass one off as the
/// other past a layer that checks only the dashed name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnderscoreHeaders {
    #[default]
    Forward,
    /// Leave such headers out of the forwarded request (nginx's default).
    Drop,
    /// Answer 400.
    Refuse,
}

/// Why the proxy answered itself; the variant says which side failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no healthy instance of service {0}")]
    NoBackend(String),
    #[error("request body larger than the limit of {0} bytes")]
    BodyTooLarge(u64),
    #[error("cannot connect to upstream {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("upstream {0} did not answer within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("upstream {0} failed: {1}")]
    Upstream(SocketAddr, String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("method {0} is not served through this proxy")]
    MethodNotAllowed(http::Method),
    #[error("request line longer than the limit of {0} bytes")]
    RequestLineTooLong(usize),
    #[error("not implemented: {0}")]
    NotImplemented(String),
    #[error("the request body did not start within {0:?}")]
    RequestTimeout(Duration),
    /// The operator took the service out of service for a while (a restore writing its data).
    #[error("the service is in maintenance; retry in {0} s")]
    Maintenance(u32),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoBackend(_) | ProxyError::Maintenance(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Connect(..) | ProxyError::Upstream(..) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(..) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::RequestLineTooLong(_) => StatusCode::URI_TOO_LONG,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The access log's name for what went wrong.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoBackend(_) => "no_backend",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::Connect(..) => "connect",
            ProxyError::Timeout(..) => "timeout",
            ProxyError::Upstream(..) => "upstream",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::RequestLineTooLong(_) => "request_line_too_long",
            ProxyError::NotImplemented(_) => "not_implemented",
            ProxyError::RequestTimeout(_) => "request_timeout",
            ProxyError::Maintenance(_) => "maintenance",
        }
    }

    /// What the client is told: the whole story for its own mistakes, nothing about our
    /// internals (instance addresses) for the upstream's.
    fn public_message(&self) -> String {
        match self {
            ProxyError::Connect(..) => "the service could not be reached".into(),
            ProxyError::Upstream(..) => "the service failed to answer".into(),
            ProxyError::Timeout(..) => "the service did not answer in time".into(),
            e => e.to_string(),
        }
    }

    /// Whether the client's connection is closed after this answer: after a request we refused
    /// we cannot trust where the next one starts (RFC 9112 §6.3 point 8 and §11.2).
    fn closes_connection(&self) -> bool {
        self.status().is_client_error() || self.status() == StatusCode::NOT_IMPLEMENTED
    }
}

/// The proxy of one service: its route and its stats.
pub struct ServiceProxy {
    name: String,
    route: ArcSwap<Route>,
    /// Colours that had traffic before and may still be held (warm, for an instant rollback):
    /// their idle connections are swept too. Weak, so a retired colour is simply gone.
    warm: ArcSwap<Vec<std::sync::Weak<Pool>>>,
    settings: Settings,
    stats: Stats,
    /// Off (`None`) unless the service asks for it.
    access_log: Option<AccessLog>,
    /// While non-zero, every request is answered 503 with this `Retry-After` (seconds): one
    /// relaxed load per request.
    maintenance: std::sync::atomic::AtomicU32,
}

impl ServiceProxy {
    pub fn new(name: impl Into<String>, settings: Settings) -> Arc<ServiceProxy> {
        ServiceProxy::with_access_log(name, settings, None)
    }

    /// A proxy that writes a line per request to `access_log`.
    pub fn with_access_log(
        name: impl Into<String>,
        settings: Settings,
        access_log: Option<AccessLog>,
    ) -> Arc<ServiceProxy> {
        Arc::new(ServiceProxy {
            name: name.into(),
            route: ArcSwap::from_pointee(Route::default()),
            warm: ArcSwap::from_pointee(Vec::new()),
            settings,
            stats: Stats::default(),
            access_log,
            maintenance: std::sync::atomic::AtomicU32::new(0),
        })
    }

    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.as_ref()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Answer every request 503 with `Retry-After` (rounded up to whole seconds, at least 1)
    /// until called with `None`. The route and the instances are left as they are.
    pub fn set_maintenance(&self, retry_after: Option<Duration>) {
        let seconds = retry_after.map_or(0, |d| {
            u32::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0))
                .unwrap_or(u32::MAX)
                .max(1)
        });
        self.maintenance
            .store(seconds, std::sync::atomic::Ordering::Relaxed);
    }

    /// The `Retry-After` in seconds while the service is in maintenance.
    pub fn maintenance(&self) -> Option<u32> {
        match self.maintenance.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            s => Some(s),
        }
    }

    pub fn route(&self) -> Arc<Route> {
        self.route.load_full()
    }

    /// Sweep this worker's idle upstream connections of every instance in the route and in
    /// the colours still warm.
    fn sweep_idle(&self) {
        let warm = self.warm.load();
        let warm = warm.iter().filter_map(std::sync::Weak::upgrade);
        let route = self.route.load();
        for pool in route.pools.iter().map(|(p, _)| p.clone()).chain(warm) {
            for backend in pool.backends.load().iter() {
                backend.sweep_local();
            }
        }
    }

    /// Atomically replace the route; requests already in flight keep the one they started with.
    pub fn set_route(&self, route: Route) {
        let in_route = |p: &Arc<Pool>| route.pools.iter().any(|(q, _)| Arc::ptr_eq(p, q));
        let previous = self.route.load();
        let mut warm: Vec<std::sync::Weak<Pool>> = Vec::new();
        let earlier = self.warm.load();
        let candidates = previous
            .pools
            .iter()
            .map(|(p, _)| p.clone())
            .chain(earlier.iter().filter_map(std::sync::Weak::upgrade));
        for pool in candidates {
            if !in_route(&pool) && !warm.iter().any(|w| w.as_ptr() == Arc::as_ptr(&pool)) {
                warm.push(Arc::downgrade(&pool));
            }
        }
        drop(previous);
        self.route.store(Arc::new(route));
        self.warm.store(Arc::new(warm));
    }

    fn pick(
        &self,
        backends: &[Arc<Backend>],
        exclude: Option<&Arc<Backend>>,
    ) -> Option<Arc<Backend>> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        // Rotating the scan's start spreads ties evenly; per thread, so workers share nothing.
        let start = ROTATION.with(|r| {
            let v = r.get();
            r.set(v.wrapping_add(1));
            v
        });
        // Least outstanding among the reachable ones; when none is, among all (one may be back).
        let mut best: Option<&Arc<Backend>> = None;
        let mut best_unreachable: Option<&Arc<Backend>> = None;
        for i in 0..n {
            let b = &backends[(start + i) % n];
            if exclude.is_some_and(|x| Arc::ptr_eq(x, b)) {
                continue;
            }
            let slot = if b.reachable() {
                &mut best
            } else {
                &mut best_unreachable
            };
            if slot.is_none_or(|cur| b.outstanding() < cur.outstanding()) {
                *slot = Some(b);
            }
        }
        best.or(best_unreachable).cloned()
    }

    /// The colour for a request that loaded `route`. A pool is emptied of the instances a
    /// route change takes out only after the route stopped pointing at it, so a request that
    /// loaded the route just before finds that pool empty: it takes the route as it is now.
    fn choose_pool(&self, route: &Route, key: u64) -> Option<Arc<Pool>> {
        let pool = route.choose(key)?;
        if !pool.backends.load().is_empty() {
            return Some(pool.clone());
        }
        let current = self.route.load();
        Some(current.choose(key).unwrap_or(pool).clone())
    }

    /// Proxy one request; never fails: errors become responses with the right status. The
    /// client's address comes rendered as a header value (once per connection, not per request).
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        client_addr: SocketAddr,
        client_ip: &HeaderValue,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        // The route is loaded once: a switch never changes where this request goes.
        let route = self.route.load_full();
        let (parts, body) = req.into_parts();
        // Off, the access log costs this check and the one at the end.
        let mut line = self
            .access_log
            .as_ref()
            .map(|log| log.begin(&self.name, &parts.method, &parts.uri, client_addr));
        // The instance that answered (or failed to): moved out of `forward`, never cloned.
        let mut upstream = None;
        let (mut pool, mut new_cookie) = (None, None);
        let checked = checks::check_request(&parts, &self.settings.limits);
        let result = match (checked, self.maintenance()) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(seconds)) => Err(ProxyError::Maintenance(seconds)),
            (Ok(replaced_host), None) => {
                let (key, cookie) = sticky_key(&route, &parts.headers, client_addr);
                new_cookie = cookie;
                pool = self.choose_pool(&route, key);
                match &pool {
                    Some(pool) => {
                        self.forward(
                            pool,
                            parts,
                            body,
                            replaced_host,
                            client_ip,
                            started,
                            &mut upstream,
                        )
                        .await
                    }
                    None => Err(ProxyError::NoBackend(self.name.clone())),
                }
            }
        };
        let (mut resp, by_proxy) = match result {
            Ok(resp) => (resp, false),
            Err(e) => {
                tracing::debug!(service = %self.name, "proxy error: {e}");
                if let Some(line) = &mut line {
                    line.error = Some(e.kind());
                }
                let mut resp = error_response(e.status(), &e.public_message());
                if e.closes_connection() {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                if let ProxyError::Maintenance(seconds) = e {
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                }
                if let ProxyError::MethodNotAllowed(_) = e {
                    // RFC 9110 §15.5.6: a 405 says what is allowed; CONNECT and TRACE never are.
                    resp.headers_mut().insert(
                        header::ALLOW,
                        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),
                    );
                }
                (resp, true)
            }
        };
        let status = resp.status().as_u16();
        let elapsed = started.elapsed();
        self.stats.record(status, elapsed, by_proxy);
        if let Some(pool) = &pool {
            pool.stats.record(status, elapsed, by_proxy);
        }
        if let Some(cookie) = new_cookie {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
        if let Some(hsts) = &self.settings.hsts {
            resp.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        if let Some(mut line) = line {
            line.answered(status, by_proxy, pool.as_deref(), upstream.as_deref());
            match resp.body_mut() {
                // Logged when its last byte went out (or it stopped): body.rs.
                Either::Left(streamed) => streamed.access = Some((line, started)),
                Either::Right(full) => {
                    line.finish(full.size_hint().exact().unwrap_or(0), elapsed);
                }
            }
        }
        resp
    }
}

/// Responses the proxy makes itself carry this header, so clients and tests can tell them apart.
pub const PROXY_ERROR_HEADER: &str = "x-tcf-proxy-error";

fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "tcf-platform proxy: {message}\n"
    )))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(PROXY_ERROR_HEADER, HeaderValue::from_static("1"));
    resp
}

#[cfg(test)]
mod tests;
