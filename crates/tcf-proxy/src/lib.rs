//! The reverse proxy in front of every service.
//!
//! Hot-path rules (see docs/ARCHITECTURE.md): no database, no lock. A service's healthy
//! backends live in an [`ArcSwap`]; a request loads the route once and keeps it, so swapping the
//! table never breaks a request in flight. Counters are relaxed atomics.

pub mod stats;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Empty, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
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

type Sender = hyper::client::conn::http1::SendRequest<UpstreamBody>;

/// Idle keep-alive connections kept per backend; more are closed when they come back.
const IDLE_PER_BACKEND: usize = 512;
/// An idle connection older than this is closed rather than reused: shorter than the usual
/// server-side keep-alive timeouts, so we never send on a connection the server is closing.
const MAX_IDLE: Duration = Duration::from_secs(15);

/// One upstream instance the proxy may send requests to, with its own idle connections in a
/// lock-free queue: taking and returning a connection takes no lock.
pub struct Backend {
    pub instance: String,
    pub addr: SocketAddr,
    /// Requests sent to it whose response has not finished: the balancing signal.
    outstanding: AtomicUsize,
    /// Upgraded connections (WebSocket and the like) open through it.
    upgraded: AtomicUsize,
    /// One queue per proxy worker thread: a connection is reused by the thread that made it,
    /// so a request and its upstream connection stay on one thread.
    idle: Box<[crossbeam_queue::ArrayQueue<(Sender, Instant)>]>,
}

thread_local! {
    /// Which proxy worker this thread is (0 outside the workers).
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many idle queues a backend keeps: one per possible worker.
fn worker_slots() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16)
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("instance", &self.instance)
            .field("addr", &self.addr)
            .field("outstanding", &self.outstanding())
            .field("idle", &self.idle_connections())
            .finish()
    }
}

impl Backend {
    pub fn new(instance: impl Into<String>, addr: SocketAddr) -> Arc<Backend> {
        Arc::new(Backend {
            instance: instance.into(),
            addr,
            outstanding: AtomicUsize::new(0),
            upgraded: AtomicUsize::new(0),
            idle: (0..worker_slots())
                .map(|_| crossbeam_queue::ArrayQueue::new(IDLE_PER_BACKEND))
                .collect(),
        })
    }

    /// Idle connections kept for reuse.
    pub fn idle_connections(&self) -> usize {
        self.idle.iter().map(|q| q.len()).sum()
    }

    /// Close every idle connection (the instance is going away).
    pub fn close_idle(&self) {
        for q in self.idle.iter() {
            while q.pop().is_some() {}
        }
    }

    fn local_idle(&self) -> &crossbeam_queue::ArrayQueue<(Sender, Instant)> {
        &self.idle[WORKER.with(|w| w.get()) % self.idle.len()]
    }

    fn checkout(&self) -> Option<Sender> {
        while let Some((sender, since)) = self.local_idle().pop() {
            if since.elapsed() < MAX_IDLE && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn checkin(&self, sender: Sender) {
        if sender.is_ready() {
            // Full: the connection is dropped, which closes it.
            let _ = self.local_idle().push((sender, Instant::now()));
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<Sender, ProxyError> {
        let stream =
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(self.addr)).await {
                Err(_) => {
                    return Err(ProxyError::Connect(
                        self.addr,
                        format!("no connection within {timeout:?}"),
                    ))
                }
                Ok(Err(e)) => return Err(ProxyError::Connect(self.addr, e.to_string())),
                Ok(Ok(s)) => s,
            };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::Connect(self.addr, e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn upgraded(&self) -> usize {
        self.upgraded.load(Ordering::Relaxed)
    }
}

/// One colour of a service: its instances and its own stats.
///
/// A colour keeps its `Pool` for its whole life, so health changes only swap `backends`.
pub struct Pool {
    pub colour: String,
    pub version: String,
    backends: ArcSwap<Vec<Arc<Backend>>>,
    stats: Stats,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("colour", &self.colour)
            .field("version", &self.version)
            .field("backends", &self.backends.load().len())
            .finish()
    }
}

impl Pool {
    pub fn new(
        colour: impl Into<String>,
        version: impl Into<String>,
        _settings: &Settings,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            colour: colour.into(),
            version: version.into(),
            backends: ArcSwap::from_pointee(Vec::new()),
            stats: Stats::default(),
        })
    }

    /// Replace the instances that take traffic in this colour.
    pub fn set_backends(&self, backends: Vec<Arc<Backend>>) {
        self.backends.store(Arc::new(backends));
    }

    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends.load_full()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// How a client keeps to one colour while traffic is split.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Sticky {
    /// A cookie the proxy sets on the first answer.
    #[default]
    Cookie,
    /// A hash of this request header (falling back to the client address).
    Header(HeaderName),
    /// A hash of the client's IP address.
    ClientIp,
}

/// The name of the cookie that keeps a client on one colour during a split.
pub const STICKY_COOKIE: &str = "tcf_sticky";

/// Where a service's requests go right now: one or more colours with weights.
#[derive(Debug, Default, Clone)]
pub struct Route {
    pub pools: Vec<(Arc<Pool>, u32)>,
    pub sticky: Sticky,
}

impl Route {
    pub fn single(pool: Arc<Pool>) -> Route {
        Route {
            pools: vec![(pool, 100)],
            sticky: Sticky::default(),
        }
    }

    /// The colour for a client whose sticky key hashes to `key`: the first pools take the
    /// lowest buckets, so raising the first pool's weight only ever moves clients into it.
    fn choose(&self, key: u64) -> Option<&Arc<Pool>> {
        // The common case, one colour, allocates nothing and hashes nothing.
        if let [(pool, w)] = self.pools.as_slice() {
            return (*w > 0).then_some(pool);
        }
        let total: u64 = self.pools.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let mut bucket = key % total;
        for (pool, w) in self.pools.iter().filter(|(_, w)| *w > 0) {
            if bucket < u64::from(*w) {
                return Some(pool);
            }
            bucket -= u64::from(*w);
        }
        None
    }

    fn is_split(&self) -> bool {
        self.pools.iter().filter(|(_, w)| *w > 0).count() > 1
    }
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

/// The proxy of one service: its route and its stats.
pub struct ServiceProxy {
    name: String,
    route: ArcSwap<Route>,
    settings: Settings,
    stats: Stats,
    /// Rotates the starting point of the least-outstanding scan so ties spread evenly.
    next: AtomicUsize,
}

impl ServiceProxy {
    pub fn new(name: impl Into<String>, settings: Settings) -> Arc<ServiceProxy> {
        Arc::new(ServiceProxy {
            name: name.into(),
            route: ArcSwap::from_pointee(Route::default()),
            settings,
            stats: Stats::default(),
            next: AtomicUsize::new(0),
        })
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

    pub fn route(&self) -> Arc<Route> {
        self.route.load_full()
    }

    /// Atomically replace the route; requests already in flight keep the one they started with.
    pub fn set_route(&self, route: Route) {
        self.route.store(Arc::new(route));
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
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<&Arc<Backend>> = None;
        for i in 0..n {
            let b = &backends[(start + i) % n];
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
        let client_ip = client_ip_value(client_addr);
        self.handle_with(req, client_addr, &client_ip).await
    }

    /// [`handle`](Self::handle) with the client's address already rendered as a header value
    /// (once per connection, not per request).
    pub async fn handle_with(
        self: Arc<Self>,
        req: Request<Incoming>,
        client_addr: SocketAddr,
        client_ip: &HeaderValue,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        // The route is loaded once: a switch never changes where this request goes.
        let route = self.route.load_full();
        let (sticky_key, new_cookie) = sticky_key(&route, &req, client_addr);
        let pool = route.choose(sticky_key).cloned();
        let result = match &pool {
            Some(pool) => self.forward(pool, req, client_ip).await,
            None => Err(ProxyError::NoBackend(self.name.clone())),
        };
        let (mut resp, by_proxy) = match result {
            Ok(resp) => (resp, false),
            Err(e) => {
                tracing::debug!(service = %self.name, "proxy error: {e}");
                (error_response(e.status(), &e.to_string()), true)
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
        resp
    }

    async fn forward(
        &self,
        pool: &Arc<Pool>,
        req: Request<Incoming>,
        client_ip: &HeaderValue,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        if let Some(len) = content_length(&parts.headers) {
            if len > self.settings.max_request_body {
                return Err(ProxyError::BodyTooLarge(self.settings.max_request_body));
            }
        }
        let client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let upgrade = requested_upgrade(&parts.headers);
        let original_host = parts.headers.get(header::HOST).cloned();
        strip_hop_by_hop(&mut parts.headers);
        add_forwarded(&mut parts.headers, client_ip, original_host.as_ref());
        if let Some(proto) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, proto.clone());
        }
        // The request goes out in origin form (path and query), as it came in; Host is kept.
        let upstream_body = if body.is_end_stream() {
            Either::Right(Empty::new())
        } else {
            Either::Left(Limited::new(body, self.settings.max_request_body as usize))
        };
        let mut request = Request::from_parts(parts, upstream_body);

        let backends = pool.backends();
        let mut tried: Option<Arc<Backend>> = None;
        // Nothing was sent yet whenever we loop: another connection or backend is safe.
        for _attempt in 0..3 {
            let backend = self
                .pick(&backends, tried.as_ref())
                .or_else(|| tried.clone())
                .ok_or_else(|| ProxyError::NoBackend(self.name.clone()))?;
            let guard = OutstandingGuard::new(backend.clone());
            let mut sender = match backend.checkout() {
                Some(s) => s,
                None => match backend.connect(self.settings.connect_timeout).await {
                    Ok(s) => s,
                    Err(e) if backends.len() > 1 && tried.is_none() => {
                        tracing::debug!(service = %self.name, "{e}; trying another instance");
                        tried = Some(backend);
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            let sent = tokio::time::timeout(
                self.settings.upstream_timeout,
                sender.try_send_request(request),
            )
            .await;
            match sent {
                Err(_) => {
                    return Err(ProxyError::Timeout(
                        backend.addr,
                        self.settings.upstream_timeout,
                    ))
                }
                Ok(Ok(mut resp)) => {
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        if let Some(client_side) = client_upgrade {
                            let upstream_side = hyper::upgrade::on(&mut resp);
                            tunnel(client_side, upstream_side, backend.clone());
                        }
                        let (mut rparts, _) = resp.into_parts();
                        let proto = rparts.headers.get(header::UPGRADE).cloned();
                        strip_hop_by_hop(&mut rparts.headers);
                        if let Some(proto) = proto {
                            rparts
                                .headers
                                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                            rparts.headers.insert(header::UPGRADE, proto);
                        }
                        return Ok(Response::from_parts(
                            rparts,
                            Either::Right(Full::new(Bytes::new())),
                        ));
                    }
                    let (mut rparts, rbody) = resp.into_parts();
                    strip_hop_by_hop(&mut rparts.headers);
                    return Ok(Response::from_parts(
                        rparts,
                        Either::Left(Tracked {
                            inner: rbody,
                            sender: Some(sender),
                            _guard: guard,
                        }),
                    ));
                }
                Ok(Err(mut e)) => match e.take_message() {
                    // The connection closed before the request went out: use another one.
                    Some(back) => {
                        request = back;
                        continue;
                    }
                    None => {
                        let e = e.into_error();
                        if is_body_limit(&e) {
                            return Err(ProxyError::BodyTooLarge(self.settings.max_request_body));
                        }
                        return Err(ProxyError::Upstream(backend.addr, error_chain(&e)));
                    }
                },
            }
        }
        Err(ProxyError::Upstream(
            tried.map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)), |b| b.addr),
            "no connection could carry the request".into(),
        ))
    }
}

/// The protocol a client asks to upgrade to (`Connection: upgrade` + `Upgrade: X`).
fn requested_upgrade(h: &HeaderMap) -> Option<HeaderValue> {
    // Most requests have no Upgrade header: one lookup and done.
    let proto = h.get(header::UPGRADE)?;
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
        .then(|| proto.clone())
}

/// Splice an upgraded client connection to the upgraded upstream one, counting it on the
/// backend until either side closes.
fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    backend: Arc<Backend>,
) {
    tokio::spawn(async move {
        backend.upgraded.fetch_add(1, Ordering::Relaxed);
        if let (Ok(c), Ok(u)) = (client.await, upstream.await) {
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(u)).await;
        }
        backend.upgraded.fetch_sub(1, Ordering::Relaxed);
    });
}

/// The key that keeps a client on one colour, and the cookie to set when we made one up.
fn sticky_key(
    route: &Route,
    req: &Request<Incoming>,
    client: SocketAddr,
) -> (u64, Option<HeaderValue>) {
    if !route.is_split() {
        return (0, None);
    }
    let hash = |bytes: &[u8]| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        h.finish()
    };
    let ip = client.ip().to_string();
    match &route.sticky {
        Sticky::ClientIp => (hash(ip.as_bytes()), None),
        Sticky::Header(name) => match req.headers().get(name) {
            Some(v) => (hash(v.as_bytes()), None),
            None => (hash(ip.as_bytes()), None),
        },
        Sticky::Cookie => {
            let existing = req
                .headers()
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| *k == STICKY_COOKIE)
                .map(|(_, v)| v.to_string());
            match existing {
                Some(v) => (hash(v.as_bytes()), None),
                None => {
                    let id = format!("{:016x}", fastrand::u64(..));
                    let cookie = HeaderValue::from_str(&format!(
                        "{STICKY_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax"
                    ))
                    .ok();
                    (hash(id.as_bytes()), cookie)
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

/// Whether a header describes one hop only (RFC 9110 7.6.1).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Remove the headers that must not be forwarded. One pass over the (few) headers first:
/// most messages have none of them, and removing absent names costs a hash lookup each.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
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

fn client_ip_value(client: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&client.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

fn add_forwarded(h: &mut HeaderMap, client_ip: &HeaderValue, host: Option<&HeaderValue>) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let value = match h.get(&xff).and_then(|v| v.to_str().ok()) {
        // Appending to what an earlier proxy wrote needs a new value; the usual case does not.
        Some(prev) => {
            HeaderValue::from_str(&format!("{prev}, {}", client_ip.to_str().unwrap_or("")))
                .unwrap_or_else(|_| client_ip.clone())
        }
        None => client_ip.clone(),
    };
    h.insert(xff, value);
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

/// An upstream response body that keeps its backend counted as busy while it streams, and
/// gives its connection back for reuse once it has been read to the end.
pub struct Tracked {
    inner: Incoming,
    sender: Option<Sender>,
    _guard: OutstandingGuard,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // A body that was complete from the start may never be polled to its end.
        if let Some(sender) = self.sender.take() {
            if self.inner.is_end_stream() {
                self._guard.0.checkin(sender);
            }
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            if let Some(sender) = self.sender.take() {
                self._guard.0.checkin(sender);
            }
        }
        polled
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
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    // Every connection task holds a sender; when all are gone, the receiver sees the end.
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
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
                let client_ip = client_ip_value(client_addr);
                let svc = hyper::service::service_fn(move |req| {
                    let (p, ip) = (p.clone(), client_ip.clone());
                    async move { Ok::<_, std::convert::Infallible>(p.handle_with(req, client_addr, &ip).await) }
                });
                let mut conn = http.serve_connection(TokioIo::new(stream), svc).with_upgrades();
                let mut stop = shutdown.clone();
                let open = open_tx.clone();
                tokio::spawn(async move {
                    let _open = open;
                    tokio::select! {
                        _ = &mut conn => return,
                        _ = stop.wait_for(|s| *s) => {}
                    }
                    // Finish the request in flight (if any), then close instead of keeping alive.
                    Pin::new(&mut conn).graceful_shutdown();
                    let _ = conn.await;
                });
            }
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
        }
    }
    drop(listener);
    drop(open_tx);
    if tokio::time::timeout(drain, open_rx.recv()).await.is_err() {
        tracing::warn!(service = %proxy.name, "connections still open after the {drain:?} drain; closing them");
    }
}

/// A listener for one service's address that several workers can each bind (SO_REUSEPORT):
/// the kernel spreads connections over them.
pub fn bind_shared(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Check that nobody else holds `addr` (a plain bind, without SO_REUSEPORT, fails if anyone
/// does), then bind it once per worker.
pub fn bind_for_workers(
    addr: SocketAddr,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    drop(std::net::TcpListener::bind(addr)?);
    (0..workers.max(1)).map(|_| bind_shared(addr)).collect()
}

/// Run the proxies on `listeners.len()` worker threads, each a single-threaded runtime with its
/// own listener per service: a connection, its requests and their upstream connections stay on
/// one thread, as in nginx's worker model. Returns when every worker has drained.
pub async fn serve_workers(
    services: Vec<(Arc<ServiceProxy>, Vec<std::net::TcpListener>)>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    drain: Duration,
) -> std::io::Result<()> {
    let workers = services.first().map_or(0, |(_, l)| l.len());
    let mut per_worker: Vec<Vec<(Arc<ServiceProxy>, std::net::TcpListener)>> =
        (0..workers).map(|_| Vec::new()).collect();
    for (proxy, listeners) in services {
        for (i, l) in listeners.into_iter().enumerate() {
            per_worker[i].push((proxy.clone(), l));
        }
    }
    let mut done = Vec::new();
    for (index, assigned) in per_worker.into_iter().enumerate() {
        let shutdown = shutdown.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("tcf-proxy-{index}"))
            .spawn(move || {
                WORKER.with(|w| w.set(index));
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    for (proxy, listener) in assigned {
                        match TcpListener::from_std(listener) {
                            Ok(l) => {
                                tasks.push(tokio::spawn(serve(l, proxy, shutdown.clone(), drain)))
                            }
                            Err(e) => tracing::error!("proxy worker {index}: {e}"),
                        }
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                });
                let _ = tx.send(());
            })?;
        done.push(rx);
    }
    for rx in done {
        let _ = rx.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod header_tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::HOST, HeaderValue::from_static("example"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::HOST));
        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("example"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }
}
