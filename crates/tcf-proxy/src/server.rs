//! Serving one service's listener: client connections on hyper, the idle and stall checks,
//! the idle sweep, and the graceful stop.

use super::*;

pub(crate) fn client_ip_value(client: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&client.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// How often each worker closes the idle upstream connections their servers closed.
pub(crate) const SWEEP_EVERY: Duration = if cfg!(test) {
    Duration::from_millis(100)
} else {
    Duration::from_secs(2)
};

/// How long a client connection may go without starting a request (idle keep-alive, or a
/// request head that never completes) before it is closed: closed after one to two periods.
pub(crate) const CLIENT_IDLE: Duration = if cfg!(test) {
    Duration::from_millis(300)
} else {
    Duration::from_secs(30)
};

/// When a listener stops (a daemon stopping or handing over), how long an idle keep-alive
/// connection is kept for one more request, which is answered with `Connection: close`: its
/// client then moves to a new connection instead of racing the close with its next request.
pub(crate) const DRAIN_IDLE: Duration = if cfg!(test) {
    Duration::from_millis(300)
} else {
    Duration::from_secs(2)
};

/// Idle-check periods a streamed response body may go without moving a byte (60 s, nginx's
/// `proxy_read_timeout` and `send_timeout` default).
pub(crate) const STALLED_PERIODS: u32 = 2;

/// What the requests of one client connection share. Cloned per request, but only ever touched
/// by the thread serving the connection: no cache line shared between workers.
pub(crate) struct ClientConn {
    pub(crate) proxy: Arc<ServiceProxy>,
    pub(crate) addr: SocketAddr,
    pub(crate) ip: HeaderValue,
    /// A request began since the idle check last looked.
    pub(crate) active: std::sync::atomic::AtomicBool,
    /// Requests whose response is being produced or whose body streams (one at a time over
    /// HTTP/1.1, up to the stream limit over HTTP/2): the connection is idle only at zero.
    pub(crate) busy: std::sync::atomic::AtomicU32,
    /// Streamed response bodies on their way to the client.
    pub(crate) streaming: std::sync::atomic::AtomicU32,
    /// Bytes of it moved since the idle check last looked.
    pub(crate) progress: std::sync::atomic::AtomicBool,
    /// The listener's stop: once set, every answer closes its connection.
    pub(crate) stop: Arc<StopSignal>,
}

/// One request in flight on a client connection, counted in [`ClientConn::busy`] (and, once its
/// body streams, in [`ClientConn::streaming`]) until dropped: when its response is written, its
/// streamed body ends, or hyper drops the request (a reset HTTP/2 stream, a closed connection).
pub(crate) struct InFlight {
    client: Arc<ClientConn>,
    streaming: bool,
}

impl InFlight {
    pub(crate) fn begin(client: Arc<ClientConn>) -> InFlight {
        client.active.store(true, Ordering::Relaxed);
        client.busy.fetch_add(1, Ordering::Relaxed);
        InFlight {
            client,
            streaming: false,
        }
    }

    /// Its response body streams from now on.
    pub(crate) fn streaming(mut self) -> InFlight {
        if !self.streaming {
            self.client.streaming.fetch_add(1, Ordering::Relaxed);
            self.streaming = true;
        }
        self
    }
}

impl std::ops::Deref for InFlight {
    type Target = ClientConn;
    fn deref(&self) -> &ClientConn {
        &self.client
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.streaming {
            self.client.streaming.fetch_sub(1, Ordering::Relaxed);
        }
        self.client.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Tells one listener's client connections to finish up. Each connection registers its waker
/// once and then reads a flag when polled; a watch channel's receiver would instead re-check
/// its registration, under a lock shared by every connection, each time a connection is polled.
#[derive(Default)]
pub(crate) struct StopSignal {
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    pub(crate) wakers: std::sync::Mutex<slab::Slab<std::task::Waker>>,
}

impl StopSignal {
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let wakers = match self.wakers.lock() {
            Ok(mut w) => w.drain(),
            Err(_) => Vec::new(),
        };
        wakers.into_iter().for_each(std::task::Waker::wake);
    }

    /// Resolves once [`stop`](Self::stop) was called.
    pub(crate) async fn wait(&self) {
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

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Drive one client connection until it ends, closing it when idle or stalled (see
/// [`CLIENT_IDLE`]); on `stop`, let the request in flight finish, then close.
async fn drive<C, T, E>(
    mut conn: Pin<&mut C>,
    client: &ClientConn,
    stop: &StopSignal,
    graceful_shutdown: impl Fn(Pin<&mut C>),
) where
    C: std::future::Future<Output = Result<T, E>>,
{
    let mut stalled_periods = 0;
    loop {
        let deadline = Instant::now() + CLIENT_IDLE;
        tokio::select! {
            biased;
            ended = deadline::until(deadline, conn.as_mut()) => match ended {
                Ok(_) => return,
                // No request began for a whole period and none is running.
                Err(_) if !client.active.swap(false, Ordering::Relaxed)
                    && client.busy.load(Ordering::Relaxed) == 0 => return,
                // A response body that moved no byte for two whole periods: the upstream
                // stalled, or the client reads nothing. Closing drops the body, which closes
                // its upstream connection.
                Err(_) if client.streaming.load(Ordering::Relaxed) > 0 => {
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
    // Idle: wait a moment for one more request (answered with `Connection: close`, or after
    // HTTP/2's GOAWAY, so the client reconnects) rather than close under its feet.
    if client.busy.load(Ordering::Relaxed) == 0
        && deadline::until(Instant::now() + DRAIN_IDLE, conn.as_mut())
            .await
            .is_ok()
    {
        return;
    }
    // Finish the request in flight (if any), then close instead of keeping alive.
    graceful_shutdown(conn.as_mut());
    let _ = conn.await;
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
    // HTTPS: the handshake runs in the connection's task; ALPN picks HTTP/2 or HTTP/1.1.
    let tls = proxy.settings.tls.clone().map(|config| {
        let mut h2 = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        h2.max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(proxy.settings.h2_max_concurrent_streams);
        (tokio_rustls::TlsAcceptor::from(config), h2)
    });
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
                    busy: 0.into(),
                    streaming: 0.into(),
                    progress: false.into(),
                    stop: stop_signal.clone(),
                });
                let for_requests = client.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let c = InFlight::begin(for_requests.clone());
                    async move {
                        let mut resp = c.proxy.handle(req, c.addr, &c.ip).await;
                        if c.stop.stopping.load(Ordering::Relaxed) {
                            resp.headers_mut().insert(
                                hyper::header::CONNECTION,
                                HeaderValue::from_static("close"),
                            );
                        }
                        // A streamed body keeps the request counted until it ends; any other
                        // answer is done here.
                        if let Either::Left(streamed) = resp.body_mut() {
                            streamed.client = Some(c.streaming());
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let stop = stop_signal.clone();
                let open = open_tx.clone();
                match &tls {
                    None => {
                        let conn = http.serve_connection(TokioIo::new(stream), svc).with_upgrades();
                        tokio::spawn(async move {
                            let _open = open;
                            drive(std::pin::pin!(conn), &client, &stop, |c| c.graceful_shutdown()).await;
                        });
                    }
                    Some((acceptor, h2)) => {
                        let (acceptor, h2, http) = (acceptor.clone(), h2.clone(), http.clone());
                        tokio::spawn(async move {
                            let _open = open;
                            let handshake = acceptor.accept(stream);
                            let stream = tokio::select! {
                                // The worker's deadline table, not a tokio timer per handshake (see deadline.rs).
                                done = deadline::until(Instant::now() + TLS_HANDSHAKE, handshake) => match done {
                                    Ok(Ok(s)) => s,
                                    // A failed or slow handshake: nothing to answer over.
                                    Ok(Err(e)) => {
                                        tracing::debug!(service = %client.proxy.name, "TLS handshake failed: {e}");
                                        return;
                                    }
                                    Err(_) => return,
                                },
                                _ = stop.wait() => return,
                            };
                            let alpn = stream.get_ref().1.alpn_protocol();
                            if alpn == Some(crate::tls::ACME_TLS_ALPN) {
                                // TLS-ALPN-01: the handshake was the answer; nothing follows.
                                return;
                            }
                            if alpn == Some(b"h2") {
                                let conn = h2.serve_connection(TokioIo::new(stream), svc);
                                drive(std::pin::pin!(conn), &client, &stop, |c| c.graceful_shutdown()).await;
                            } else {
                                let conn = http.serve_connection(TokioIo::new(stream), svc).with_upgrades();
                                drive(std::pin::pin!(conn), &client, &stop, |c| c.graceful_shutdown()).await;
                            }
                        });
                    }
                }
                // One accept per turn (nginx's `multi_accept off`): without this the loop takes
                // every pending connection (up to tokio's budget) before any of them runs, so a
                // burst of handshakes queues ahead of requests already in progress.
                tokio::task::yield_now().await;
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
