//! Where requests go inside a colour: each instance (`Backend`) with its outstanding count and
//! its idle keep-alive connections (one lock-free queue per worker), and the colour (`Pool`).

use super::*;

/// Idle keep-alive connections kept per backend and worker; more are closed when they come
/// back. Its queue is allocated whole on the worker's first connection to the backend:
/// `IDLE_PER_BACKEND` entries of about 144 bytes (measured in `tests`): 36 KiB, where 512
/// entries on every core-count slot used to be allocated up front for every backend.
pub(crate) const IDLE_PER_BACKEND: usize = 256;
/// An idle connection older than this is closed rather than reused: shorter than the usual
/// server-side keep-alive timeouts, so we never send on a connection the server is closing.
pub(crate) const MAX_IDLE: Duration = Duration::from_secs(15);
/// How long an instance that refused a connection (or let it time out) is passed over while
/// others can take its requests: an instance that just died refuses at once and has nothing
/// outstanding, so least-outstanding balancing would otherwise send it the most requests
/// until its health probes fail (nginx's `max_fails`/`fail_timeout`, on the first failure).
pub(crate) const UNREACHABLE_FOR: Duration = Duration::from_secs(1);

/// Milliseconds on a process-wide monotonic clock, from 1 (0 means "never").
fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One upstream instance the proxy may send requests to, with its own idle connections in a
/// lock-free queue: taking and returning a connection takes no lock.
pub struct Backend {
    pub instance: String,
    pub addr: SocketAddr,
    /// Requests sent to it whose response has not finished: the balancing signal.
    pub(crate) outstanding: AtomicUsize,
    /// Upgraded connections (WebSocket and the like) open through it.
    pub(crate) upgraded: AtomicUsize,
    /// Bumped by [`close_idle`](Backend::close_idle): a connection made before is never reused,
    /// even one that was carrying a request at that moment.
    pub(crate) generation: std::sync::atomic::AtomicU64,
    /// Until when (on [`clock_ms`]) it is passed over after a failed connect; 0: reachable.
    unreachable_until: std::sync::atomic::AtomicU64,
    /// One queue per proxy worker thread, made on its first use: a connection is reused by
    /// the thread that made it (and whose reactor it is registered with).
    pub(crate) idle: Box<[std::sync::OnceLock<IdleQueue>]>,
}

pub(crate) type IdleQueue = crossbeam_queue::ArrayQueue<(Conn, Instant)>;

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
            unreachable_until: 0.into(),
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
    pub(crate) fn local_idle(&self) -> Option<&IdleQueue> {
        self.idle[worker_index()].get()
    }

    /// Whether an idle connection may carry another request: young enough, made since the
    /// instance last went away, and not closed or written to by the server meanwhile.
    pub(crate) fn still_good(&self, conn: &Conn, since: Instant) -> bool {
        since.elapsed() < MAX_IDLE
            && conn.generation == self.generation.load(Ordering::Relaxed)
            && conn.is_usable()
    }

    pub(crate) fn checkout(&self) -> Option<Conn> {
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
    pub(crate) fn sweep_local(&self) {
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

    pub(crate) fn checkin(&self, conn: Conn) {
        if conn.generation != self.generation.load(Ordering::Relaxed) {
            return;
        }
        // Full: the connection is dropped, which closes it.
        let queue = self.idle[worker_index()].get_or_init(|| IdleQueue::new(IDLE_PER_BACKEND));
        let _ = queue.push((conn, Instant::now()));
    }

    /// False for a moment after it failed to take a connection (see [`UNREACHABLE_FOR`]).
    /// No clock is read while it is reachable.
    pub(crate) fn reachable(&self) -> bool {
        match self.unreachable_until.load(Ordering::Relaxed) {
            0 => true,
            until => clock_ms() >= until,
        }
    }

    pub(crate) async fn connect(&self, timeout: Duration) -> Result<Conn, ProxyError> {
        let failed = |why: String| {
            self.unreachable_until.store(
                clock_ms() + UNREACHABLE_FOR.as_millis() as u64,
                Ordering::Relaxed,
            );
            ProxyError::Connect(self.addr, why)
        };
        let stream =
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(self.addr)).await {
                Err(_) => return Err(failed(format!("no connection within {timeout:?}"))),
                Ok(Err(e)) => return Err(failed(e.to_string())),
                Ok(Ok(s)) => s,
            };
        if self.unreachable_until.load(Ordering::Relaxed) != 0 {
            self.unreachable_until.store(0, Ordering::Relaxed);
        }
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
    pub(crate) backends: ArcSwap<Vec<Arc<Backend>>>,
    pub(crate) stats: Stats,
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

/// Counts a request against its backend until the response body is finished or dropped.
pub(crate) struct OutstandingGuard(pub(crate) Arc<Backend>);

impl OutstandingGuard {
    pub(crate) fn new(b: Arc<Backend>) -> Self {
        b.outstanding.fetch_add(1, Ordering::Relaxed);
        OutstandingGuard(b)
    }
}

impl Drop for OutstandingGuard {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}
