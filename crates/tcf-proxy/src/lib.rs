//! The reverse proxy in front of every service.
//!
//! Hot-path rules (see docs/ARCHITECTURE.md): no database, no lock. A service's healthy
//! backends live in an [`ArcSwap`]; a request loads the route once and keeps it, so swapping the
//! table never breaks a request in flight. Counters are relaxed atomics.

mod checks;
mod deadline;
mod slab;
pub mod stats;
mod tunnel;
mod upstream;

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

pub use stats::{Snapshot, Stats};

/// Boxed when streamed: the usual answer is `Full`, and a small response moves cheaply through
/// the layers between the upstream and hyper (each move is a copy of the whole value).
pub type ProxyBody = Either<Box<Streamed>, Full<Bytes>>;

/// Most proxy worker threads. Per-worker structures (idle queues, stats shards) have one slot
/// per possible worker, so no two workers ever share one whatever `TCF_WORKER_THREADS` says;
/// a slot is allocated on its worker's first use, so an unused one costs a pointer.
pub const MAX_WORKERS: usize = 16;

/// Idle keep-alive connections kept per backend and worker; more are closed when they come
/// back. Its queue is allocated whole on the worker's first connection to the backend:
/// `IDLE_PER_BACKEND` entries of about 144 bytes (measured in `tests`): 36 KiB, where 512
/// entries on every core-count slot used to be allocated up front for every backend.
const IDLE_PER_BACKEND: usize = 256;
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
    /// Bumped by [`close_idle`](Backend::close_idle): a connection made before is never reused,
    /// even one that was carrying a request at that moment.
    generation: std::sync::atomic::AtomicU64,
    /// One queue per proxy worker thread, made on its first use: a connection is reused by
    /// the thread that made it (and whose reactor it is registered with).
    idle: Box<[std::sync::OnceLock<IdleQueue>]>,
}

thread_local! {
    /// Which proxy worker this thread is (0 outside the workers).
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Where this thread's next least-outstanding scan starts.
    static ROTATION: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

type IdleQueue = crossbeam_queue::ArrayQueue<(Conn, Instant)>;

/// Which proxy worker runs on this thread (0 outside the workers): below [`MAX_WORKERS`].
fn worker_index() -> usize {
    WORKER.with(|w| w.get()) % MAX_WORKERS
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
            generation: 0.into(),
            idle: (0..MAX_WORKERS)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
        })
    }

    /// Idle connections kept for reuse.
    pub fn idle_connections(&self) -> usize {
        self.idle
            .iter()
            .filter_map(|q| q.get())
            .map(|q| q.len())
            .sum()
    }

    /// Close every idle connection, and those in use once their request is done (the instance
    /// is going away).
    pub fn close_idle(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        for q in self.idle.iter().filter_map(|q| q.get()) {
            while q.pop().is_some() {}
        }
    }

    /// This worker's idle queue, if it ever used this backend.
    fn local_idle(&self) -> Option<&IdleQueue> {
        self.idle[worker_index()].get()
    }

    /// Whether an idle connection may carry another request: young enough, made since the
    /// instance last went away, and not closed or written to by the server meanwhile.
    fn still_good(&self, conn: &Conn, since: Instant) -> bool {
        since.elapsed() < MAX_IDLE
            && conn.generation == self.generation.load(Ordering::Relaxed)
            && conn.is_usable()
    }

    fn checkout(&self) -> Option<Conn> {
        let queue = self.local_idle()?;
        while let Some((mut conn, since)) = queue.pop() {
            if self.still_good(&conn, since) {
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    /// Close this worker's idle connections that the server closed (or that aged out) since
    /// they came back, keeping the others in their order. No system call for a quiet one.
    fn sweep_local(&self) {
        let Some(queue) = self.local_idle() else {
            return;
        };
        for _ in 0..queue.len() {
            let Some((conn, since)) = queue.pop() else {
                break;
            };
            if self.still_good(&conn, since) {
                let _ = queue.push((conn, since));
            }
        }
    }

    fn checkin(&self, conn: Conn) {
        if conn.generation != self.generation.load(Ordering::Relaxed) {
            return;
        }
        // Full: the connection is dropped, which closes it.
        let queue = self.idle[worker_index()].get_or_init(|| IdleQueue::new(IDLE_PER_BACKEND));
        let _ = queue.push((conn, Instant::now()));
    }

    async fn connect(&self, timeout: Duration) -> Result<Conn, ProxyError> {
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
        let mut conn = Conn::new(stream);
        conn.generation = self.generation.load(Ordering::Relaxed);
        Ok(conn)
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
    /// What the proxy refuses in a request head (docs/running.md, "What the proxy refuses").
    pub limits: RequestLimits,
    /// An upgraded connection (WebSocket) that carries no byte either way for this long is
    /// closed (within twice this).
    pub tunnel_idle_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_request_body: 10 << 20,
            upstream_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            limits: RequestLimits::default(),
            tunnel_idle_timeout: Duration::from_secs(300),
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
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoBackend(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Connect(..) | ProxyError::Upstream(..) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(..) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::RequestLineTooLong(_) => StatusCode::URI_TOO_LONG,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
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
}

impl ServiceProxy {
    pub fn new(name: impl Into<String>, settings: Settings) -> Arc<ServiceProxy> {
        Arc::new(ServiceProxy {
            name: name.into(),
            route: ArcSwap::from_pointee(Route::default()),
            warm: ArcSwap::from_pointee(Vec::new()),
            settings,
            stats: Stats::default(),
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
        let (mut pool, mut new_cookie) = (None, None);
        let result = match checks::check_request(&parts, &self.settings.limits) {
            Err(e) => Err(e),
            Ok(host) => {
                let (key, cookie) = sticky_key(&route, &parts.headers, client_addr);
                new_cookie = cookie;
                pool = route.choose(key).cloned();
                match &pool {
                    Some(pool) => {
                        self.forward(pool, parts, body, host, client_ip, started)
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
                let mut resp = error_response(e.status(), &e.public_message());
                if e.closes_connection() {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
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
        resp
    }

    async fn forward(
        &self,
        pool: &Arc<Pool>,
        mut parts: http::request::Parts,
        mut body: Incoming,
        host: Option<HeaderValue>,
        client_ip: &HeaderValue,
        started: Instant,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let limit = self.settings.max_request_body;
        if content_length(&parts.headers).is_some_and(|len| len > limit) {
            return Err(ProxyError::BodyTooLarge(limit));
        }
        let client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let mut framing = if body.is_end_stream() {
            RequestFraming::Empty
        } else {
            match body.size_hint().exact() {
                Some(n) => RequestFraming::Length(n),
                None => RequestFraming::Chunked,
            }
        };
        // A chunked body's first chunk is read before anything goes upstream: a body that is
        // malformed from its start gets its 400 without the service seeing half a request.
        let mut first_chunk = None;
        if framing == RequestFraming::Chunked {
            checks::check_transfer_encoding(&parts.headers)?;
            let deadline = started + self.settings.upstream_timeout;
            match deadline::until(deadline, body.frame()).await {
                Err(_) => return Err(ProxyError::BadRequest("no request body in time".into())),
                Ok(None) => framing = RequestFraming::Length(0),
                Ok(Some(Err(e))) => {
                    return Err(ProxyError::BadRequest(format!("invalid request body: {e}")))
                }
                Ok(Some(Ok(frame))) => {
                    let data = frame.into_data().unwrap_or_default();
                    if data.len() as u64 > limit {
                        return Err(ProxyError::BodyTooLarge(limit));
                    }
                    first_chunk = Some(data);
                }
            }
        }
        // Upgrades (WebSocket) are asked for with a GET and no body (RFC 6455 §4.1); elsewhere
        // the Upgrade header is dropped like any other hop-by-hop header.
        let upgrade = if parts.method == http::Method::GET && framing == RequestFraming::Empty {
            requested_upgrade(&parts.headers)
        } else {
            None
        };
        let head_request = parts.method == http::Method::HEAD;
        // A request that reached a server which then closed without answering may be sent again
        // only if repeating it is harmless and nothing of it is lost.
        let repeatable = parts.method.is_idempotent() && framing == RequestFraming::Empty;
        let mut body = (framing != RequestFraming::Empty).then_some(body);

        let backends = pool.backends();
        let mut tried: Option<Arc<Backend>> = None;
        // Nothing was lost whenever we loop: another connection or backend is safe.
        for _attempt in 0..3 {
            let backend = self
                .pick(&backends, tried.as_ref())
                .or_else(|| tried.clone())
                .ok_or_else(|| ProxyError::NoBackend(self.name.clone()))?;
            let guard = OutstandingGuard::new(backend.clone());
            let mut conn = match backend.checkout() {
                Some(c) => c,
                None => match backend.connect(self.settings.connect_timeout).await {
                    Ok(c) => c,
                    Err(e) if backends.len() > 1 && tried.is_none() => {
                        tracing::debug!(service = %self.name, "{e}; trying another instance");
                        tried = Some(backend);
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            // The head is written into the connection's own buffer (no allocation once it has
            // carried a request), again for each try.
            let mut head = std::mem::take(&mut conn.out);
            head.clear();
            request_head(
                &mut head,
                &parts,
                host.as_ref(),
                client_ip,
                upgrade.as_ref(),
                framing,
                self.settings.limits.underscores,
            );
            let exchange = exchange(
                &mut conn,
                &head,
                &mut body,
                &mut first_chunk,
                framing,
                limit,
                head_request,
            );
            let deadline = started + self.settings.upstream_timeout;
            let result = deadline::until(deadline, exchange).await;
            conn.out = head;
            match result {
                Err(_) => {
                    return Err(ProxyError::Timeout(
                        backend.addr,
                        self.settings.upstream_timeout,
                    ))
                }
                Ok(Ok(answer)) => {
                    // Still there: the upstream answered before taking all of it.
                    if let Some(rest) = body.take() {
                        drain_in_background(rest, limit, self.settings.upstream_timeout);
                    }
                    return respond(
                        answer,
                        conn,
                        guard,
                        pool,
                        client_upgrade,
                        upgrade.is_some(),
                        self.settings.tunnel_idle_timeout,
                    );
                }
                // A reused connection the server closed meanwhile: take another one.
                Ok(Err(Failure::NotSent(_))) if conn.reused => continue,
                Ok(Err(Failure::Unanswered(_))) if conn.reused && repeatable => continue,
                Ok(Err(Failure::NotSent(e) | Failure::Unanswered(e))) => {
                    return Err(ProxyError::Upstream(backend.addr, e.to_string()))
                }
                Ok(Err(Failure::Proxy(e))) => return Err(e),
                Ok(Err(Failure::Io(e))) => {
                    return Err(ProxyError::Upstream(backend.addr, e.to_string()))
                }
            }
        }
        Err(ProxyError::Upstream(
            tried.map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)), |b| b.addr),
            "no connection could carry the request".into(),
        ))
    }
}

/// How the request body goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestFraming {
    Empty,
    Length(u64),
    Chunked,
}

/// Why one try at a backend failed.
enum Failure {
    /// Writing the head failed: the body (if any) is untouched.
    NotSent(std::io::Error),
    /// Sent, then the connection closed before any byte of an answer.
    Unanswered(std::io::Error),
    Proxy(ProxyError),
    Io(String),
}

/// Send the request on `conn` and read the answer's head.
///
/// An upstream may answer before it has read the whole body (a 401 or 413 for an upload it
/// does not want) and then close or reset the connection: that answer is the request's answer,
/// relayed as it came, never turned into a 502. The connection is not reused after it, and the
/// body is left in `body` for the caller to drain (so the client gets to read the answer).
async fn exchange(
    conn: &mut Conn,
    head: &[u8],
    body: &mut Option<Incoming>,
    first_chunk: &mut Option<Bytes>,
    framing: RequestFraming,
    limit: u64,
    head_request: bool,
) -> Result<upstream::Head, Failure> {
    conn.write_all(head).await.map_err(Failure::NotSent)?;
    if let Some(incoming) = body.as_mut() {
        match send_body(conn, incoming, first_chunk.take(), framing, limit).await {
            // The body is gone: this request cannot be sent again.
            Ok(()) => *body = None,
            Err(BodyStop::Client(e)) => return Err(Failure::Proxy(e)),
            Err(BodyStop::Upstream(why, sent)) => {
                return match conn.read_head(head_request).await {
                    Ok(mut answer) => {
                        answer.keep_alive = false;
                        Ok(answer)
                    }
                    Err(_) => {
                        // Nothing came back. A body over the limit is still the client's
                        // fault, whoever noticed first: 413, not 502.
                        let over = body_exceeds(incoming, limit.saturating_sub(sent)).await;
                        *body = None;
                        Err(if over {
                            Failure::Proxy(ProxyError::BodyTooLarge(limit))
                        } else {
                            Failure::Io(why.to_string())
                        })
                    }
                };
            }
        }
    }
    conn.read_head(head_request).await.map_err(|e| match e {
        ReadError::ClosedBeforeAnswer(e) => Failure::Unanswered(e),
        e => Failure::Io(e.to_string()),
    })
}

/// Why sending the request body stopped before its end.
enum BodyStop {
    /// The client's body is malformed or over the limit.
    Client(ProxyError),
    /// The upstream answered, closed or failed first, after `.1` bytes of the body.
    Upstream(std::io::Error, u64),
}

/// Stream the client's body upstream, watching the upstream for an early answer whenever the
/// body or the upstream's window makes us wait (never on a body that goes at once).
async fn send_body(
    conn: &mut Conn,
    incoming: &mut Incoming,
    mut first_chunk: Option<Bytes>,
    framing: RequestFraming,
    limit: u64,
) -> Result<(), BodyStop> {
    let mut sent = 0u64;
    let mut scratch = bytes::BytesMut::new();
    loop {
        let frame = match first_chunk.take() {
            Some(data) => Some(Ok(Frame::data(data))),
            None => tokio::select! {
                biased;
                frame = incoming.frame() => frame,
                why = upstream::answered_early(&conn.stream, &mut conn.buf) => {
                    return Err(BodyStop::Upstream(why, sent));
                }
            },
        };
        let Some(frame) = frame else {
            break;
        };
        let frame = frame.map_err(|e| {
            BodyStop::Client(ProxyError::BadRequest(format!("invalid request body: {e}")))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        sent += data.len() as u64;
        if sent > limit {
            return Err(BodyStop::Client(ProxyError::BodyTooLarge(limit)));
        }
        let bytes: &[u8] = if framing == RequestFraming::Chunked {
            scratch.clear();
            upstream::encode_chunk(&mut scratch, &data);
            &scratch
        } else {
            &data
        };
        write_watching(conn, bytes)
            .await
            .map_err(|e| BodyStop::Upstream(e, sent))?;
    }
    if framing == RequestFraming::Chunked {
        write_watching(conn, b"0\r\n\r\n")
            .await
            .map_err(|e| BodyStop::Upstream(e, sent))?;
    }
    Ok(())
}

/// Write all of `data`; while the upstream's window is full, stop as soon as it answers early
/// or closes (a service that answers 401 and stops reading would otherwise stall us here).
async fn write_watching(conn: &mut Conn, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match conn.stream.try_write(data) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::select! {
                    biased;
                    ready = conn.stream.writable() => ready?,
                    why = upstream::answered_early(&conn.stream, &mut conn.buf) => return Err(why),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read the rest of a request body; whether it is longer than `allowance` bytes. Stops as soon
/// as it is, or on the first error.
async fn body_exceeds(incoming: &mut Incoming, allowance: u64) -> bool {
    let mut seen = 0u64;
    while let Some(Ok(frame)) = incoming.frame().await {
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
            if seen > allowance {
                return true;
            }
        }
    }
    false
}

/// After an early answer, read and drop the rest of the client's body (up to `limit` bytes,
/// for at most `within`), so the client, still sending, gets to read the answer instead of a
/// reset; what is past that is cut off by closing the connection (nginx's lingering close).
fn drain_in_background(mut rest: Incoming, limit: u64, within: Duration) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(within, body_exceeds(&mut rest, limit)).await;
    });
}

/// Turn the upstream's answer into the client's response.
fn respond(
    head: upstream::Head,
    mut conn: Conn,
    guard: OutstandingGuard,
    pool: &Arc<Pool>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    upgrade_requested: bool,
    tunnel_idle: Duration,
) -> Result<Response<ProxyBody>, ProxyError> {
    let addr = guard.0.addr;
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(client_side), Some(proto), true) =
            (client_upgrade, head.upgrade, upgrade_requested)
        else {
            return Err(ProxyError::Upstream(
                addr,
                "switched protocols without being asked to".into(),
            ));
        };
        let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
        *resp.status_mut() = head.status;
        *resp.headers_mut() = head.headers;
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        resp.headers_mut().insert(header::UPGRADE, proto);
        // Counted as upgraded before `guard` stops counting it as outstanding.
        let counted = tunnel::UpgradedGuard::new(guard.0.clone());
        tunnel::tunnel(client_side, conn, counted, tunnel_idle);
        return Ok(resp);
    }
    let body = match head.framing {
        Framing::Empty => {
            if head.keep_alive {
                guard.0.checkin(conn);
            }
            Either::Right(Full::new(Bytes::new()))
        }
        // The usual small answer arrived with its head: the connection is free already.
        Framing::Length(n) if conn.buf.len() as u64 >= n => {
            let data = conn.buf.split_to(n as usize).freeze();
            if head.keep_alive {
                guard.0.checkin(conn);
            }
            Either::Right(Full::new(data))
        }
        framing => Either::Left(Box::new(Streamed {
            conn: Some(conn),
            framing: match framing {
                Framing::Length(n) => BodyFraming::Length(n),
                Framing::Chunked => BodyFraming::Chunked(Chunked::default()),
                _ => BodyFraming::UntilClose,
            },
            keep_alive: head.keep_alive,
            _guard: guard,
            pool: pool.clone(),
            client: None,
        })),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    Ok(resp)
}

/// The head of the request as it goes upstream: origin form as it came in, hop-by-hop
/// headers (and those named in `Connection`) removed, `X-Forwarded-*` added, our framing.
fn request_head(
    out: &mut bytes::BytesMut,
    parts: &http::request::Parts,
    host: Option<&HeaderValue>,
    client_ip: &HeaderValue,
    upgrade: Option<&HeaderValue>,
    framing: RequestFraming,
    underscores: UnderscoreHeaders,
) {
    let h = &parts.headers;
    out.reserve(256 + h.len() * 48);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // Host first, and never dropped for being named in Connection (an end-to-end field).
    if let Some(host) = host {
        put_header(out, b"host", host.as_bytes());
    }
    let connection: Vec<&HeaderValue> = h.get_all(header::CONNECTION).iter().collect();
    let mut forwarded_for: Vec<&[u8]> = Vec::new();
    let mut had_length = false;
    for (name, value) in h {
        let n = name.as_str();
        match n {
            "x-forwarded-for" => {
                forwarded_for.push(value.as_bytes());
                continue;
            }
            "x-forwarded-proto" | "x-forwarded-host" | "host" => continue,
            "content-length" => {
                had_length = true;
                continue;
            }
            _ => {}
        }
        if upstream::is_hop_by_hop(n.as_bytes())
            || connection
                .iter()
                .any(|c| upstream::lists_token(c.as_bytes(), n))
        {
            continue;
        }
        if underscores == UnderscoreHeaders::Drop && n.contains('_') {
            continue;
        }
        put_header(out, n.as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    for prev in forwarded_for {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client_ip.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
    if let Some(host) = host {
        put_header(out, b"x-forwarded-host", host.as_bytes());
    }
    if let Some(proto) = upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
        put_header(out, b"upgrade", proto.as_bytes());
    }
    match framing {
        RequestFraming::Length(n) => {
            out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes())
        }
        RequestFraming::Empty if had_length => out.extend_from_slice(b"content-length: 0\r\n"),
        RequestFraming::Empty => {}
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

fn put_header(out: &mut bytes::BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The protocol a client asks to upgrade to (`Connection: upgrade` + `Upgrade: X`).
fn requested_upgrade(h: &HeaderMap) -> Option<HeaderValue> {
    // Most requests have no Upgrade header: one lookup and done.
    let proto = h.get(header::UPGRADE)?;
    h.get_all(header::CONNECTION)
        .iter()
        .any(|v| upstream::lists_token(v.as_bytes(), "upgrade"))
        .then(|| proto.clone())
}

/// The key that keeps a client on one colour, and the cookie to set when we made one up.
fn sticky_key(
    route: &Route,
    headers: &HeaderMap,
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
        Sticky::Header(name) => match headers.get(name) {
            Some(v) => (hash(v.as_bytes()), None),
            None => (hash(ip.as_bytes()), None),
        },
        Sticky::Cookie => {
            let existing = headers
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

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn client_ip_value(client: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&client.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
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

/// An upstream response body read as the client takes it. It keeps its backend counted as
/// busy while it streams, and gives the connection back for reuse once read to its end.
pub struct Streamed {
    conn: Option<Conn>,
    framing: BodyFraming,
    keep_alive: bool,
    _guard: OutstandingGuard,
    /// The colour it came from, whose stats count an answer that breaks off.
    pool: Arc<Pool>,
    /// The client connection this body goes to: busy until the body is done.
    client: Option<Arc<ClientConn>>,
}

impl Drop for Streamed {
    fn drop(&mut self) {
        if let Some(client) = &self.client {
            client.streaming.store(false, Ordering::Relaxed);
            client.busy.store(false, Ordering::Relaxed);
        }
    }
}

enum BodyFraming {
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

impl Streamed {
    /// The upstream's answer broke off after its head went to the client: the client sees a
    /// cut connection, so it is an upstream failure in the stats and the log.
    fn broke(&mut self, e: std::io::Error) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.conn = None;
        let backend = &self._guard.0;
        tracing::warn!(
            instance = %backend.instance,
            upstream = %backend.addr,
            "the upstream's answer broke off in its body: {e}"
        );
        self.pool.stats.record_broken();
        if let Some(client) = &self.client {
            client.proxy.stats.record_broken();
        }
        Poll::Ready(Some(Err(e)))
    }

    /// The body is complete: the connection goes back to the pool if the server keeps it open.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keep_alive {
                self._guard.0.checkin(conn);
            }
        }
    }
}

impl Streamed {
    /// The next piece the buffer holds: data, the end of the body, or nothing yet.
    fn take_buffered(&mut self) -> Result<Decoded, std::io::Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Decoded::Done);
        };
        match &mut self.framing {
            BodyFraming::Length(0) => Ok(Decoded::Done),
            _ if conn.buf.is_empty() => Ok(Decoded::NeedMore),
            BodyFraming::Length(left) => {
                let n = (conn.buf.len() as u64).min(*left);
                *left -= n;
                Ok(Decoded::Data(conn.buf.split_to(n as usize).freeze()))
            }
            BodyFraming::Chunked(decoder) => {
                decoder.decode(&mut conn.buf).map_err(std::io::Error::other)
            }
            BodyFraming::UntilClose => Ok(Decoded::Data(conn.buf.split().freeze())),
        }
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        loop {
            match this.take_buffered() {
                Ok(Decoded::Data(data)) => {
                    if let Some(client) = &this.client {
                        client.progress.store(true, Ordering::Relaxed);
                    }
                    // The last bytes of a length-framed body: hyper may not poll again.
                    if matches!(this.framing, BodyFraming::Length(0)) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Done) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => return this.broke(e),
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if matches!(this.framing, BodyFraming::UntilClose) => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    return this.broke(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection in the middle of the body",
                    ))
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.broke(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.framing, BodyFraming::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            BodyFraming::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// How often each worker closes the idle upstream connections their servers closed.
const SWEEP_EVERY: Duration = if cfg!(test) {
    Duration::from_millis(100)
} else {
    Duration::from_secs(2)
};

/// How long a client connection may go without starting a request (idle keep-alive, or a
/// request head that never completes) before it is closed: closed after one to two periods.
const CLIENT_IDLE: Duration = if cfg!(test) {
    Duration::from_millis(300)
} else {
    Duration::from_secs(30)
};

/// Idle-check periods a streamed response body may go without moving a byte (60 s, nginx's
/// `proxy_read_timeout` and `send_timeout` default).
const STALLED_PERIODS: u32 = 2;

/// What the requests of one client connection share. Cloned per request, but only ever touched
/// by the thread serving the connection: no cache line shared between workers.
pub(crate) struct ClientConn {
    proxy: Arc<ServiceProxy>,
    addr: SocketAddr,
    ip: HeaderValue,
    /// A request began since the idle check last looked.
    active: std::sync::atomic::AtomicBool,
    /// A response is being produced or its body streamed.
    busy: std::sync::atomic::AtomicBool,
    /// A streamed response body is on its way to the client.
    streaming: std::sync::atomic::AtomicBool,
    /// Bytes of it moved since the idle check last looked.
    progress: std::sync::atomic::AtomicBool,
}

/// Tells one listener's client connections to finish up. Each connection registers its waker
/// once and then reads a flag when polled; a watch channel's receiver would instead re-check
/// its registration, under a lock shared by every connection, each time a connection is polled.
#[derive(Default)]
struct StopSignal {
    stopping: std::sync::atomic::AtomicBool,
    wakers: std::sync::Mutex<slab::Slab<std::task::Waker>>,
}

impl StopSignal {
    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let wakers = match self.wakers.lock() {
            Ok(mut w) => w.drain(),
            Err(_) => Vec::new(),
        };
        wakers.into_iter().for_each(std::task::Waker::wake);
    }

    /// Resolves once [`stop`](Self::stop) was called.
    async fn wait(&self) {
        struct Registered<'a>(&'a StopSignal, Option<usize>);
        impl Drop for Registered<'_> {
            fn drop(&mut self) {
                if let (Some(i), Ok(mut w)) = (self.1, self.0.wakers.lock()) {
                    w.remove(i);
                }
            }
        }
        let mut registered = Registered(self, None);
        std::future::poll_fn(|cx| {
            if self.stopping.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            if registered.1.is_none() {
                // A task's waker stays the same for its life: registering once is enough.
                if let Ok(mut w) = self.wakers.lock() {
                    registered.1 = Some(w.insert(cx.waker().clone()));
                }
                if self.stopping.load(Ordering::Acquire) {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
        .await
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
    // No header-read timer: hyper's costs a timer per request; the idle check below (one
    // deadline per connection and period) closes idle and slow-header connections instead.
    http.keep_alive(true).header_read_timeout(None);
    // hyper refuses a head over these with 431 and closes the connection (RFC 6585 §5).
    let limits = &proxy.settings.limits;
    http.max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES) + HYPER_READ_BUFFER);
    // Up to 100 header slots live on hyper's stack; asking for another count costs a heap
    // allocation per request head, so only then is it set.
    if limits.max_headers != 100 {
        http.max_headers(limits.max_headers);
    }
    // Every connection task holds a sender; when all are gone, the receiver sees the end.
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
    let stop_signal = Arc::new(StopSignal::default());
    // Idle upstream connections are not watched one by one; a server that closed one leaves it
    // in CLOSE_WAIT here until this sweep (or the next checkout) finds it.
    let sweeper = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                proxy.sweep_idle();
            }
        }
    });
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
                let client = Arc::new(ClientConn {
                    proxy: proxy.clone(),
                    addr: client_addr,
                    ip: client_ip_value(client_addr),
                    active: false.into(),
                    busy: false.into(),
                    streaming: false.into(),
                    progress: false.into(),
                });
                let for_requests = client.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let c = for_requests.clone();
                    async move {
                        c.active.store(true, Ordering::Relaxed);
                        c.busy.store(true, Ordering::Relaxed);
                        let mut resp = c.proxy.handle(req, c.addr, &c.ip).await;
                        match resp.body_mut() {
                            Either::Left(streamed) => {
                                c.streaming.store(true, Ordering::Relaxed);
                                streamed.client = Some(c.clone());
                            }
                            Either::Right(_) => c.busy.store(false, Ordering::Relaxed),
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let conn = http.serve_connection(TokioIo::new(stream), svc).with_upgrades();
                let stop = stop_signal.clone();
                let open = open_tx.clone();
                tokio::spawn(async move {
                    let _open = open;
                    let mut conn = std::pin::pin!(conn);
                    let mut stalled_periods = 0;
                    loop {
                        let deadline = Instant::now() + CLIENT_IDLE;
                        tokio::select! {
                            biased;
                            ended = deadline::until(deadline, conn.as_mut()) => match ended {
                                Ok(_) => return,
                                // No request began for a whole period and none is running.
                                Err(_) if !client.active.swap(false, Ordering::Relaxed)
                                    && !client.busy.load(Ordering::Relaxed) => return,
                                // A response body that moved no byte for two whole periods:
                                // the upstream stalled, or the client reads nothing. Closing
                                // drops the body, which closes its upstream connection.
                                Err(_) if client.streaming.load(Ordering::Relaxed) => {
                                    if client.progress.swap(false, Ordering::Relaxed) {
                                        stalled_periods = 0;
                                    } else {
                                        stalled_periods += 1;
                                    }
                                    if stalled_periods >= STALLED_PERIODS {
                                        tracing::warn!(
                                            service = %client.proxy.name,
                                            "closing a response that moved no byte for {:?}",
                                            CLIENT_IDLE * STALLED_PERIODS
                                        );
                                        return;
                                    }
                                }
                                Err(_) => stalled_periods = 0,
                            },
                            _ = stop.wait() => break,
                        }
                    }
                    // Finish the request in flight (if any), then close instead of keeping alive.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                });
            }
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
        }
    }
    drop(listener);
    sweeper.abort();
    stop_signal.stop();
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
    if workers > MAX_WORKERS {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{workers} proxy workers asked for; at most {MAX_WORKERS}"),
        ));
    }
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
                deadline::enter_worker();
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
mod head_tests {
    use super::*;

    fn head_of(req: Request<()>, framing: RequestFraming) -> String {
        let (parts, _) = req.into_parts();
        let ip = HeaderValue::from_static("10.0.0.9");
        let upgrade = requested_upgrade(&parts.headers);
        let host = parts.headers.get(header::HOST).cloned();
        let mut out = bytes::BytesMut::new();
        request_head(
            &mut out,
            &parts,
            host.as_ref(),
            &ip,
            upgrade.as_ref(),
            framing,
            UnderscoreHeaders::Forward,
        );
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let req = Request::post("http://example/a?b=1")
            .header("host", "example")
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("transfer-encoding", "chunked")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-proto", "https")
            .header("x-kept", "yes")
            .body(())
            .unwrap();
        assert_eq!(
            head_of(req, RequestFraming::Chunked),
            "POST /a?b=1 HTTP/1.1\r\nhost: example\r\nx-kept: yes\r\nx-forwarded-for: 1.2.3.4, 10.0.0.9\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: example\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn an_upgrade_is_asked_for_again_and_lengths_are_ours() {
        let req = Request::get("/ws")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("content-length", "0")
            .body(())
            .unwrap();
        assert_eq!(
            head_of(req, RequestFraming::Empty),
            "GET /ws HTTP/1.1\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n\
             connection: upgrade\r\nupgrade: websocket\r\ncontent-length: 0\r\n\r\n"
        );
    }
}
