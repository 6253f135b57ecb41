//! Proxy workers: threads each with its own single-threaded runtime and listener per service,
//! as nginx's worker model.

use super::*;

/// Most proxy worker threads. Per-worker structures (idle queues, stats shards) have one slot
/// per possible worker, so no two workers ever share one whatever `TCF_WORKER_THREADS` says;
/// a slot is allocated on its worker's first use, so an unused one costs a pointer.
pub const MAX_WORKERS: usize = 16;

thread_local! {
    /// Which proxy worker this thread is (0 outside the workers).
    pub(crate) static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Where this thread's next least-outstanding scan starts.
    pub(crate) static ROTATION: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Which proxy worker runs on this thread (0 outside the workers): below [`MAX_WORKERS`].
pub(crate) fn worker_index() -> usize {
    WORKER.with(|w| w.get()) % MAX_WORKERS
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

/// One listener on `addr` that a daemon taking over can bind beside this one (SO_REUSEPORT):
/// the daemon's other public addresses (plain HTTP, the remote API, the dashboard). Unless
/// `taking_over`, first check that nobody else holds it (a plain bind fails if anyone does);
/// taking over, the old daemon holds it on purpose until it has drained.
pub fn bind_handover_safe(
    addr: SocketAddr,
    taking_over: bool,
) -> std::io::Result<std::net::TcpListener> {
    if !taking_over {
        drop(std::net::TcpListener::bind(addr)?);
    }
    bind_shared(addr)
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
