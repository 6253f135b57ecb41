//! The reverse proxy in front of every service.
//!
//! Hot-path rules (see docs/ARCHITECTURE.md): no database, no lock. A service's healthy
//! backends live in an [`ArcSwap`]; a request loads the route once and keeps it, so swapping the
//! table never breaks a request in flight. Counters are relaxed atomics.

pub mod stats;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Empty, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

pub use stats::{Snapshot, Stats};

type UpstreamBody = Either<Limited<Incoming>, Empty<Bytes>>;
pub type ProxyBody = Either<Tracked, Full<Bytes>>;

/// One upstream instance the proxy may send requests to.
#[derive(Debug)]
pub struct Backend {
    pub instance: String,
    pub addr: SocketAddr,
    /// Requests sent to it whose response has not finished: the balancing signal.
    outstanding: AtomicUsize,
}

impl Backend {
    pub fn new(instance: impl Into<String>, addr: SocketAddr) -> Arc<Backend> {
        Arc::new(Backend {
            instance: instance.into(),
            addr,
            outstanding: AtomicUsize::new(0),
        })
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }
}

/// The backends a service's requests go to right now.
#[derive(Debug, Default)]
pub struct Route {
    pub backends: Vec<Arc<Backend>>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub max_request_body: u64,
    pub upstream_timeout: Duration,
    pub connect_timeout: Duration,
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
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoBackend(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Connect(..) | ProxyError::Upstream(..) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(..) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// The proxy of one service: its route, its stats and its upstream connection pool.
pub struct ServiceProxy {
    name: String,
    route: ArcSwap<Route>,
    settings: Settings,
    stats: Stats,
    client: Client<HttpConnector, UpstreamBody>,
    /// Rotates the starting point of the least-outstanding scan so ties spread evenly.
    next: AtomicUsize,
}

impl ServiceProxy {
    pub fn new(name: impl Into<String>, settings: Settings) -> Arc<ServiceProxy> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Arc::new(ServiceProxy {
            name: name.into(),
            route: ArcSwap::from_pointee(Route::default()),
            settings,
            stats: Stats::default(),
            client,
            next: AtomicUsize::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn route(&self) -> Arc<Route> {
        self.route.load_full()
    }

    /// Atomically replace the route; requests already in flight keep the one they started with.
    pub fn set_route(&self, route: Route) {
        self.route.store(Arc::new(route));
    }

    fn pick(&self, route: &Route, exclude: Option<&Arc<Backend>>) -> Option<Arc<Backend>> {
        let n = route.backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<&Arc<Backend>> = None;
        for i in 0..n {
            let b = &route.backends[(start + i) % n];
            if exclude.is_some_and(|x| Arc::ptr_eq(x, b)) {
                continue;
            }
            if best.is_none_or(|cur| b.outstanding() < cur.outstanding()) {
                best = Some(b);
            }
        }
        best.cloned()
    }

    /// Proxy one request; never fails: errors become responses with the right status.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        client_addr: SocketAddr,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        match self.forward(req, client_addr).await {
            Ok(resp) => {
                self.stats
                    .record(resp.status().as_u16(), started.elapsed(), false);
                resp
            }
            Err(e) => {
                let status = e.status();
                self.stats.record(status.as_u16(), started.elapsed(), true);
                tracing::debug!(service = %self.name, "proxy error: {e}");
                error_response(status, &e.to_string())
            }
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        client_addr: SocketAddr,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        if let Some(len) = content_length(&parts.headers) {
            if len > self.settings.max_request_body {
                return Err(ProxyError::BodyTooLarge(self.settings.max_request_body));
            }
        }
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let original_host = parts.headers.get(header::HOST).cloned();
        strip_hop_by_hop(&mut parts.headers);
        add_forwarded(&mut parts.headers, client_addr, original_host.as_ref());

        // A request without a body can be sent again if the first backend refused the connection.
        let replayable = body.is_end_stream();
        let mut body = Some(body);
        let route = self.route.load_full();
        let mut tried: Option<Arc<Backend>> = None;
        loop {
            let backend = self
                .pick(&route, tried.as_ref())
                .ok_or_else(|| ProxyError::NoBackend(self.name.clone()))?;
            let uri: Uri = format!("http://{}{}", backend.addr, path)
                .parse()
                .map_err(|e| ProxyError::BadRequest(format!("{e}")))?;
            let upstream_body = match body.take() {
                Some(b) if !replayable => {
                    Either::Left(Limited::new(b, self.settings.max_request_body as usize))
                }
                _ => Either::Right(Empty::new()),
            };
            let mut up = Request::from_parts(parts.clone(), upstream_body);
            *up.uri_mut() = uri;
            let guard = OutstandingGuard::new(backend.clone());
            let sent =
                tokio::time::timeout(self.settings.upstream_timeout, self.client.request(up)).await;
            match sent {
                Err(_) => {
                    return Err(ProxyError::Timeout(
                        backend.addr,
                        self.settings.upstream_timeout,
                    ))
                }
                Ok(Ok(resp)) => {
                    let (mut rparts, rbody) = resp.into_parts();
                    strip_hop_by_hop(&mut rparts.headers);
                    return Ok(Response::from_parts(
                        rparts,
                        Either::Left(Tracked {
                            inner: rbody,
                            _guard: guard,
                        }),
                    ));
                }
                Ok(Err(e)) => {
                    if is_body_limit(&e) {
                        return Err(ProxyError::BodyTooLarge(self.settings.max_request_body));
                    }
                    if e.is_connect() {
                        if replayable && tried.is_none() && route.backends.len() > 1 {
                            tried = Some(backend);
                            continue;
                        }
                        return Err(ProxyError::Connect(backend.addr, error_chain(&e)));
                    }
                    return Err(ProxyError::Upstream(backend.addr, error_chain(&e)));
                }
            }
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn is_body_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = c.source();
    }
    false
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 7.6.1).
fn strip_hop_by_hop(h: &mut HeaderMap) {
    if let Some(conn) = h.get(header::CONNECTION).cloned() {
        if let Ok(list) = conn.to_str() {
            for name in list.split(',') {
                if let Ok(n) = HeaderName::from_bytes(name.trim().as_bytes()) {
                    h.remove(n);
                }
            }
        }
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(name);
    }
}

fn add_forwarded(h: &mut HeaderMap, client: SocketAddr, host: Option<&HeaderValue>) {
    let ip = client.ip().to_string();
    let xff = HeaderName::from_static("x-forwarded-for");
    let value = match h.get(&xff).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(xff, v);
    }
    h.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    if let Some(host) = host {
        h.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
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

/// Counts a request against its backend until the response body is finished or dropped.
struct OutstandingGuard(Arc<Backend>);

impl OutstandingGuard {
    fn new(b: Arc<Backend>) -> Self {
        b.outstanding.fetch_add(1, Ordering::Relaxed);
        OutstandingGuard(b)
    }
}

impl Drop for OutstandingGuard {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream response body that keeps its backend counted as busy while it streams.
pub struct Tracked {
    inner: Incoming,
    _guard: OutstandingGuard,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serve `proxy` on `listener` until `shutdown` flips to true; then stop accepting and let the
/// connections finish their in-flight requests, for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<ServiceProxy>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    drain: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, client_addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(service = %proxy.name, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let p = proxy.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let p = p.clone();
                    async move { Ok::<_, std::convert::Infallible>(p.handle(req, client_addr).await) }
                });
                let conn = http.serve_connection(TokioIo::new(stream), svc);
                let watched = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = watched.await;
                });
            }
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(service = %proxy.name, "connections still open after the {drain:?} drain; closing them");
    }
}

#[cfg(test)]
mod tests;
