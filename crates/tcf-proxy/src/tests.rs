//! Proxy behaviour against real upstream servers on loopback.

use super::*;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as TestClient;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::AtomicU32;

mod access_log;
mod allocations;
mod conformance;
mod early_answers;
mod tls;

/// A tiny upstream that answers with its name, optionally after a delay.
pub(crate) async fn upstream(
    name: &'static str,
    delay: Duration,
    hits: Arc<AtomicU32>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let hits = hits.clone();
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let xff = req
                            .headers()
                            .get("x-forwarded-for")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            format!("{name} xff={xff} body={body}"),
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

pub(crate) fn route_of(backends: Vec<Arc<Backend>>) -> Route {
    let pool = Pool::new("blue", "v1", &settings());
    pool.set_backends(backends);
    Route::single(pool)
}

pub(crate) fn settings() -> Settings {
    Settings {
        max_request_body: 1024,
        upstream_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        limits: RequestLimits::default(),
        tunnel_idle_timeout: Duration::from_secs(5),
        ..Settings::default()
    }
}

pub(crate) async fn start_proxy(
    proxy: Arc<ServiceProxy>,
) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve(listener, proxy, rx, Duration::from_secs(2)));
    (addr, tx)
}

/// A proxy in front of one backend at `upstream`: the proxy's address, its shutdown switch and
/// the backend.
async fn proxy_to(
    upstream: SocketAddr,
) -> (SocketAddr, tokio::sync::watch::Sender<bool>, Arc<Backend>) {
    let proxy = ServiceProxy::new("svc", settings());
    let backend = Backend::new("b", upstream);
    proxy.set_route(route_of(vec![backend.clone()]));
    let (addr, stop) = start_proxy(proxy).await;
    (addr, stop, backend)
}

pub(crate) async fn get(addr: SocketAddr, path: &str, body: Option<&str>) -> (u16, String, bool) {
    let client: TestClient<HttpConnector, Full<Bytes>> =
        TestClient::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .method(if body.is_some() { "POST" } else { "GET" })
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let by_proxy = resp.headers().contains_key(PROXY_ERROR_HEADER);
    let text =
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).to_string();
    (status, text, by_proxy)
}

#[tokio::test]
async fn forwards_balances_and_adds_forwarded_headers() {
    let (hits_a, hits_b) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let (a, _ta) = upstream("a", Duration::ZERO, hits_a.clone()).await;
    let (b, _tb) = upstream("b", Duration::ZERO, hits_b.clone()).await;
    let proxy = ServiceProxy::new("svc", settings());
    proxy.set_route(route_of(vec![Backend::new("a", a), Backend::new("b", b)]));
    let (addr, _stop) = start_proxy(proxy.clone()).await;
    for _ in 0..20 {
        let (status, text, by_proxy) = get(addr, "/x?y=1", None).await;
        assert_eq!(status, 200);
        assert!(!by_proxy);
        assert!(text.contains("xff=127.0.0.1"), "{text}");
    }
    // One request at a time: nothing outstanding, so the rotating scan alternates.
    let (a, b) = (hits_a.load(Ordering::SeqCst), hits_b.load(Ordering::SeqCst));
    assert!((9..=11).contains(&a) && a + b == 20, "split {a}/{b}");
    assert_eq!(proxy.stats().snapshot().requests, 20);
}

#[tokio::test]
async fn maps_failures_to_the_right_status() {
    let proxy = ServiceProxy::new("svc", settings());
    let (addr, _stop) = start_proxy(proxy.clone()).await;
    // No backend at all.
    assert_eq!(get(addr, "/", None).await.0, 503);
    // A backend that refuses connections.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    proxy.set_route(route_of(vec![Backend::new("dead", dead)]));
    let (status, text, by_proxy) = get(addr, "/", None).await;
    assert_eq!((status, by_proxy), (502, true));
    // The client is not told where our instances live.
    assert!(
        !text.contains("127.0.0.1") && !text.contains(&dead.port().to_string()),
        "{text}"
    );
    // A backend slower than the upstream timeout.
    let (slow, _t) = upstream("slow", Duration::from_secs(2), Arc::new(AtomicU32::new(0))).await;
    proxy.set_route(route_of(vec![Backend::new("slow", slow)]));
    let (status, text, _) = get(addr, "/", None).await;
    assert_eq!(status, 504);
    assert!(!text.contains("127.0.0.1"), "{text}");
    // A body over the limit.
    let (ok, _t2) = upstream("ok", Duration::ZERO, Arc::new(AtomicU32::new(0))).await;
    proxy.set_route(route_of(vec![Backend::new("ok", ok)]));
    assert_eq!(get(addr, "/", Some(&"x".repeat(2000))).await.0, 413);
    let (status, text, _) = get(addr, "/", Some("hello")).await;
    assert_eq!(status, 200);
    assert!(text.ends_with("body=5"), "{text}");
    assert_eq!(proxy.stats().snapshot().proxy_errors, 4);
}

#[tokio::test]
async fn maintenance_answers_503_with_retry_after_and_leaves_the_route_alone() {
    let hits = Arc::new(AtomicU32::new(0));
    let (up, _t) = upstream("a", Duration::ZERO, hits.clone()).await;
    let proxy = ServiceProxy::new("svc", settings());
    proxy.set_route(route_of(vec![Backend::new("a", up)]));
    let (addr, _stop) = start_proxy(proxy.clone()).await;
    proxy.set_maintenance(Some(Duration::from_millis(1500)));
    assert_eq!(proxy.maintenance(), Some(2));
    let client: TestClient<HttpConnector, Full<Bytes>> =
        TestClient::builder(TokioExecutor::new()).build_http();
    let resp = client
        .get(format!("http://{addr}/x").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
    assert!(resp.headers().contains_key(PROXY_ERROR_HEADER));
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the instance was not asked");
    proxy.set_maintenance(None);
    assert_eq!(get(addr, "/x", None).await.0, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[test]
fn a_request_whose_loaded_colour_was_emptied_takes_the_current_route() {
    let proxy = ServiceProxy::new("svc", settings());
    // What a request loaded: the old colour, emptied since (its last instances parked).
    let old = Pool::new("blue", "v1", &settings());
    let loaded = Route::single(old.clone());
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let new = route_of(vec![Backend::new("green-1", addr)]);
    let new_pool = new.pools[0].0.clone();
    proxy.set_route(new);
    let chosen = proxy.choose_pool(&loaded, 0).unwrap();
    assert!(Arc::ptr_eq(&chosen, &new_pool));
    // A colour that still has instances keeps the request, whatever the route says now.
    old.set_backends(vec![Backend::new("blue-1", addr)]);
    assert!(Arc::ptr_eq(&proxy.choose_pool(&loaded, 0).unwrap(), &old));
    // Empty everywhere: the loaded colour answers for it (503, no backend).
    old.set_backends(Vec::new());
    proxy.set_route(loaded.clone());
    assert!(Arc::ptr_eq(&proxy.choose_pool(&loaded, 0).unwrap(), &old));
}

#[tokio::test]
async fn instances_that_refuse_are_passed_over_while_another_answers() {
    // Two of three instances just died (a node went down): they refuse at once and have
    // nothing outstanding, so least-outstanding balancing would prefer them.
    let mut dead = Vec::new();
    for _ in 0..2 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        dead.push(l.local_addr().unwrap());
    }
    let hits = Arc::new(AtomicU32::new(0));
    let (ok, _t) = upstream("ok", Duration::ZERO, hits.clone()).await;
    let backends = vec![
        Backend::new("dead-1", dead[0]),
        Backend::new("dead-2", dead[1]),
        Backend::new("ok", ok),
    ];
    let proxy = ServiceProxy::new("svc", settings());
    proxy.set_route(route_of(backends.clone()));
    let (addr, _stop) = start_proxy(proxy).await;
    for _ in 0..30 {
        assert_eq!(get(addr, "/", None).await.0, 200);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 30);
    assert!(!backends[0].reachable() && !backends[1].reachable());
    assert!(backends[2].reachable());
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_backend() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (ok, _t) = upstream("ok", Duration::ZERO, Arc::new(AtomicU32::new(0))).await;
    let proxy = ServiceProxy::new("svc", settings());
    proxy.set_route(route_of(vec![
        Backend::new("dead", dead),
        Backend::new("ok", ok),
    ]));
    let (addr, _stop) = start_proxy(proxy).await;
    for _ in 0..10 {
        assert_eq!(get(addr, "/", None).await.0, 200);
    }
}

#[tokio::test]
async fn a_request_in_flight_keeps_its_route_across_a_switch() {
    let (old, _t1) = upstream(
        "old",
        Duration::from_millis(300),
        Arc::new(AtomicU32::new(0)),
    )
    .await;
    let (new, _t2) = upstream("new", Duration::ZERO, Arc::new(AtomicU32::new(0))).await;
    let proxy = ServiceProxy::new("svc", settings());
    proxy.set_route(route_of(vec![Backend::new("old", old)]));
    let (addr, _stop) = start_proxy(proxy.clone()).await;
    let held = tokio::spawn(async move { get(addr, "/", None).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    proxy.set_route(route_of(vec![Backend::new("new", new)]));
    assert!(get(addr, "/", None).await.1.starts_with("new"));
    let (status, text, _) = held.await.unwrap();
    assert_eq!(status, 200);
    assert!(text.starts_with("old"));
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let hits = Arc::new(AtomicU32::new(0));
    let (slow, _t) = upstream("slow", Duration::from_millis(300), hits.clone()).await;
    let proxy = ServiceProxy::new("svc", settings());
    proxy.set_route(route_of(vec![Backend::new("b", slow)]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let served = tokio::spawn(serve(listener, proxy, rx, Duration::from_secs(5)));
    let held = tokio::spawn(async move { get(addr, "/", None).await });
    // The request is at the upstream before the stop.
    let deadline = Instant::now() + Duration::from_secs(5);
    while hits.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(true).unwrap();
    // It finishes, the listener is gone, and serving ends once it is answered.
    assert_eq!(held.await.unwrap().0, 200);
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("serve returns after its drain")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}

async fn get_with_cookie(addr: SocketAddr, cookie: Option<&str>) -> (String, Option<String>) {
    let client: TestClient<HttpConnector, Full<Bytes>> =
        TestClient::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().uri(format!("http://{addr}/"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let set = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string());
    let text =
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).to_string();
    (text, set)
}

#[tokio::test]
async fn a_weighted_split_keeps_each_client_on_one_colour() {
    let (old, _t1) = upstream("old", Duration::ZERO, Arc::new(AtomicU32::new(0))).await;
    let (new, _t2) = upstream("new", Duration::ZERO, Arc::new(AtomicU32::new(0))).await;
    let proxy = ServiceProxy::new("svc", settings());
    let (blue, green) = (
        Pool::new("blue", "v1", &settings()),
        Pool::new("green", "v2", &settings()),
    );
    blue.set_backends(vec![Backend::new("old", old)]);
    green.set_backends(vec![Backend::new("new", new)]);
    proxy.set_route(Route {
        pools: vec![(green.clone(), 25), (blue.clone(), 75)],
        sticky: Sticky::Cookie,
    });
    let (addr, _stop) = start_proxy(proxy.clone()).await;
    let mut on_new = 0;
    let mut clients = Vec::new();
    for _ in 0..200 {
        let (text, cookie) = get_with_cookie(addr, None).await;
        let cookie = cookie.expect("a split sets the sticky cookie");
        if text.starts_with("new") {
            on_new += 1;
        }
        clients.push((cookie, text.starts_with("new")));
    }
    assert!(
        (25..=80).contains(&on_new),
        "about a quarter should see the canary, saw {on_new}/200"
    );
    // Each client keeps its colour, and raising the canary's weight never moves one back.
    proxy.set_route(Route {
        pools: vec![(green.clone(), 50), (blue.clone(), 50)],
        sticky: Sticky::Cookie,
    });
    for (cookie, was_new) in clients.iter().take(60) {
        let (text, set) = get_with_cookie(addr, Some(cookie)).await;
        assert!(set.is_none(), "a client with a cookie keeps it");
        if *was_new {
            assert!(
                text.starts_with("new"),
                "a canary client went back to the old colour"
            );
        }
    }
    assert!(green.stats().snapshot().requests >= on_new as u64);
    assert_eq!(proxy.stats().snapshot().requests, 260);
}

/// `sticky = "header:X-User"` and `sticky = "client_ip"`: the same key always lands on the
/// same colour, no cookie is set, and different keys spread over both colours.
#[tokio::test]
async fn header_and_client_ip_sticky_modes_keep_a_key_on_one_colour() {
    let (old, _t1) = upstream("old", Duration::ZERO, Arc::new(AtomicU32::new(0))).await;
    let (new, _t2) = upstream("new", Duration::ZERO, Arc::new(AtomicU32::new(0))).await;
    let proxy = ServiceProxy::new("svc", settings());
    let (blue, green) = (
        Pool::new("blue", "v1", &settings()),
        Pool::new("green", "v2", &settings()),
    );
    blue.set_backends(vec![Backend::new("old", old)]);
    green.set_backends(vec![Backend::new("new", new)]);
    let user = hyper::header::HeaderName::from_static("x-user");
    proxy.set_route(Route {
        pools: vec![(green.clone(), 50), (blue.clone(), 50)],
        sticky: Sticky::Header(user),
    });
    let (addr, _stop) = start_proxy(proxy.clone()).await;
    let client: TestClient<HttpConnector, Full<Bytes>> =
        TestClient::builder(TokioExecutor::new()).build_http();
    let get = |who: Option<String>| {
        let client = client.clone();
        async move {
            let mut req = Request::builder().uri(format!("http://{addr}/"));
            if let Some(w) = who {
                req = req.header("x-user", w);
            }
            let resp = client
                .request(req.body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            assert!(
                resp.headers().get("set-cookie").is_none(),
                "no cookie in header mode"
            );
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8_lossy(&body).starts_with("new")
        }
    };
    let mut on_new = 0;
    for u in 0..40 {
        let first = get(Some(format!("user-{u}"))).await;
        for _ in 0..3 {
            assert_eq!(
                get(Some(format!("user-{u}"))).await,
                first,
                "user-{u} moved"
            );
        }
        on_new += first as u32;
    }
    assert!(
        (5..=35).contains(&on_new),
        "40 users should spread, {on_new} on new"
    );
    // Without the header: the client's address decides, always the same for this client.
    let first = get(None).await;
    for _ in 0..5 {
        assert_eq!(get(None).await, first);
    }
    // client_ip mode: one client (one address) always on one colour, no cookie.
    proxy.set_route(Route {
        pools: vec![(green.clone(), 50), (blue.clone(), 50)],
        sticky: Sticky::ClientIp,
    });
    let first = get(Some("ignored".into())).await;
    for u in 0..10 {
        assert_eq!(get(Some(format!("other-{u}"))).await, first);
    }
}

#[tokio::test]
async fn an_upgraded_connection_is_tunnelled_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that accepts an upgrade and then echoes bytes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(up) = on.await {
                            let mut io = TokioIo::new(up);
                            let mut buf = [0u8; 64];
                            while let Ok(n) = io.read(&mut buf).await {
                                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    });
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    resp.headers_mut()
                        .insert("upgrade", HeaderValue::from_static("echo"));
                    resp.headers_mut()
                        .insert("connection", HeaderValue::from_static("upgrade"));
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    let (addr, _stop, backend) = proxy_to(up_addr).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    assert_eq!(backend.upgraded(), 1);
    drop(s);
    wait_for("the closed tunnel no longer counted", || {
        backend.upgraded() == 0
    })
    .await;
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU32::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"ok",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let (paddr, _stop, backend) = proxy_to(addr).await;
    for _ in 0..50 {
        assert_eq!(get(paddr, "/", None).await.0, 200);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "sequential requests should share one upstream connection"
    );
    assert_eq!(backend.idle_connections(), 1);
    backend.close_idle();
    assert_eq!(backend.idle_connections(), 0);
}

#[tokio::test]
async fn a_connection_busy_when_its_instance_goes_away_is_not_kept() {
    let (slow, _t) = upstream(
        "slow",
        Duration::from_millis(200),
        Arc::new(AtomicU32::new(0)),
    )
    .await;
    let (paddr, _stop, backend) = proxy_to(slow).await;
    let held = tokio::spawn(async move { get(paddr, "/", None).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    backend.close_idle();
    assert_eq!(held.await.unwrap().0, 200);
    assert_eq!(backend.idle_connections(), 0);
    // Connections made afterwards are pooled as usual.
    assert_eq!(get(paddr, "/", None).await.0, 200);
    assert_eq!(backend.idle_connections(), 1);
}

#[tokio::test]
async fn a_backend_allocates_idle_queues_only_for_the_workers_that_use_it() {
    let entry = std::mem::size_of::<(upstream::Conn, Instant)>();
    // The measured cost of one worker's queue (see IDLE_PER_BACKEND).
    assert!(entry <= 160, "an idle entry is {entry} bytes");
    let backend = Backend::new("b", "127.0.0.1:1".parse().unwrap());
    assert_eq!(backend.idle.len(), MAX_WORKERS);
    assert!(backend.idle.iter().all(|q| q.get().is_none()));
    let settings = Settings::default();
    let workers = (0..MAX_WORKERS + 1)
        .map(|_| bind_shared("127.0.0.1:0".parse().unwrap()).unwrap())
        .collect();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let proxy = ServiceProxy::new("svc", settings);
    let refused = serve_workers(vec![(proxy, workers)], rx, Duration::ZERO).await;
    assert!(refused.is_err(), "more workers than slots");
}

#[tokio::test]
async fn a_taken_address_is_refused_even_though_workers_share_it() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = addr.local_addr().unwrap();
    // Someone else holds it (without SO_REUSEPORT): refused.
    assert!(bind_for_workers(taken, 2).is_err());
    drop(addr);
    // Our own workers share it; a second platform on the same address is refused.
    let ours = bind_for_workers(taken, 2).unwrap();
    assert!(
        bind_for_workers(taken, 2).is_err(),
        "a second platform must not share the address"
    );
    drop(ours);
}

#[tokio::test]
async fn workers_serve_one_address_together() {
    let (ok, _t) = upstream("ok", Duration::ZERO, Arc::new(AtomicU32::new(0))).await;
    let proxy = ServiceProxy::new("svc", settings());
    let backend = Backend::new("ok", ok);
    proxy.set_route(route_of(vec![backend.clone()]));
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let listeners = bind_for_workers(addr, 2).unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let served = tokio::spawn(serve_workers(
        vec![(proxy.clone(), listeners)],
        rx,
        Duration::from_secs(2),
    ));
    for _ in 0..40 {
        assert_eq!(get(addr, "/", None).await.0, 200);
    }
    // Each request came on its own connection, which the kernel spread over both workers'
    // listeners (all 40 on one: a chance of 2^-39); each worker counted in its own shard and
    // pooled its upstream connections in its own queue.
    let per_worker = proxy.stats().requests_per_worker();
    assert_eq!(
        per_worker.iter().filter(|n| **n > 0).count(),
        2,
        "{per_worker:?}"
    );
    assert_eq!(
        backend.idle.iter().filter(|q| q.get().is_some()).count(),
        2,
        "one idle queue per worker"
    );
    // Workers time out slow upstreams with their own deadline table: 504 after 500 ms.
    let (slow, _t2) = upstream("slow", Duration::from_secs(2), Arc::new(AtomicU32::new(0))).await;
    proxy.set_route(route_of(vec![Backend::new("slow", slow)]));
    let started = Instant::now();
    let (status, _, by_proxy) = get(addr, "/", None).await;
    assert_eq!((status, by_proxy), (504, true));
    // Not before the timeout; the 504 itself shows it came before the 2 s answer.
    assert!(started.elapsed() >= Duration::from_millis(500));
    tx.send(true).unwrap();
    served.await.unwrap().unwrap();
    assert_eq!(proxy.stats().snapshot().requests, 41);
}

/// What a scripted upstream does with one request: the pieces of its answer (written with a
/// pause between them, so the proxy has to stream), and whether it then closes.
pub(crate) struct Script {
    pub(crate) pieces: Vec<&'static str>,
    pub(crate) close: bool,
}

/// An upstream speaking raw HTTP/1.1, so tests control every byte. `script(head, n)` gets the
/// request (head and body) and how many requests its connection carried before; `None` closes
/// the connection without answering. Returns its address and how many connections it accepted.
pub(crate) async fn raw_upstream(
    script: impl Fn(&str, u32) -> Option<Script> + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicU32>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU32::new(0));
    let (counter, script) = (accepted.clone(), Arc::new(script));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for served in 0.. {
                    // A request: its head, then a length-framed or chunked body.
                    let request = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end + 4]).to_lowercase();
                            let body_end = if head.contains("transfer-encoding: chunked") {
                                buf.windows(5)
                                    .position(|w| w == b"0\r\n\r\n")
                                    .map(|p| p + 5)
                            } else {
                                let len = head
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length: "))
                                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                                (buf.len() >= end + 4 + len).then_some(end + 4 + len)
                            };
                            if let Some(body_end) = body_end {
                                let r: Vec<u8> = buf.drain(..body_end).collect();
                                break String::from_utf8_lossy(&r).to_string();
                            }
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let Some(answer) = script(&request, served) else {
                        return;
                    };
                    for (i, piece) in answer.pieces.iter().enumerate() {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        if s.write_all(piece.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    if answer.close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Send raw bytes to the proxy and read until it closes (the requests ask it to).
pub(crate) async fn raw_exchange(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the proxy closes the connection")
        .unwrap();
    String::from_utf8_lossy(&out).to_string()
}

pub(crate) fn answer(pieces: Vec<&'static str>) -> Option<Script> {
    Some(Script {
        pieces,
        close: false,
    })
}

#[tokio::test]
async fn every_response_framing_reaches_the_client_intact() {
    let (addr, accepted) = raw_upstream(|request, _| {
        let path = request.split(' ').nth(1).unwrap_or("");
        match path {
            "/chunked" => answer(vec![
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n5\r\nhello\r\n",
                "6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            ]),
            "/split-length" => answer(vec![
                "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello",
                " world",
            ]),
            "/no-content" => answer(vec!["HTTP/1.1 204 No Content\r\n\r\n"]),
            "/head" => answer(vec!["HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"]),
            "/interim" => answer(vec![
                "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            ]),
            "/until-close" => Some(Script {
                pieces: vec!["HTTP/1.1 200 OK\r\n\r\nhello", " world"],
                close: true,
            }),
            _ => answer(vec!["HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"]),
        }
    })
    .await;
    let (paddr, _stop, backend) = proxy_to(addr).await;

    for path in ["/chunked", "/split-length", "/until-close"] {
        let (status, text, by_proxy) = get(paddr, path, None).await;
        assert_eq!(
            (status, text.as_str(), by_proxy),
            (200, "hello world", false),
            "{path}"
        );
    }
    let (status, text, _) = get(paddr, "/interim", None).await;
    assert_eq!((status, text.as_str()), (200, "ok"));
    assert_eq!(get(paddr, "/no-content", None).await.0, 204);
    let head = raw_exchange(
        paddr,
        "HEAD /head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 11"), "{head}");
    assert!(
        head.ends_with("\r\n\r\n"),
        "a HEAD answer has no body: {head:?}"
    );
    // Every answer but the one that closed left its connection reusable: two connections.
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(backend.outstanding(), 0);
}

#[tokio::test]
async fn a_chunked_request_body_is_forwarded_and_limited() {
    let (up, _t) = upstream("ok", Duration::ZERO, Arc::new(AtomicU32::new(0))).await;
    let (paddr, _stop, _) = proxy_to(up).await;
    let answer = raw_exchange(
        paddr,
        "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("body=7"), "{answer}");
    // Over the 1024-byte limit without a length announced: found while streaming.
    let big = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
        "x".repeat(0x800)
    );
    let answer = raw_exchange(paddr, &big).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn a_kept_alive_connection_closed_unanswered_is_retried_only_when_harmless() {
    // Every connection answers its first request and drops the second without a word, as a
    // server closing an idle connection just as the proxy reuses it.
    let (addr, accepted) = raw_upstream(|_, served| {
        (served == 0).then(|| Script {
            pieces: vec!["HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
            close: false,
        })
    })
    .await;
    let (paddr, _stop, _) = proxy_to(addr).await;
    assert_eq!(get(paddr, "/", None).await.0, 200);
    // GET: sent again on a new connection.
    let (status, text, _) = get(paddr, "/", None).await;
    assert_eq!((status, text.as_str()), (200, "ok"));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // POST: it may have been acted on, so it is not repeated.
    let (status, _, by_proxy) = get(paddr, "/", Some("once")).await;
    assert_eq!((status, by_proxy), (502, true));
}

#[tokio::test]
async fn idle_and_slow_header_connections_are_closed_but_slow_answers_are_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Slower than the idle period (300 ms in tests), within the upstream timeout (500 ms).
    let (up, _t) = upstream(
        "slow",
        Duration::from_millis(400),
        Arc::new(AtomicU32::new(0)),
    )
    .await;
    let (paddr, _stop, _) = proxy_to(up).await;

    // Never a request: closed after one to two periods.
    let mut idle = tokio::net::TcpStream::connect(paddr).await.unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert!(started.elapsed() >= CLIENT_IDLE);

    // A head that trickles in and never ends (slowloris): closed as well.
    let slow = tokio::net::TcpStream::connect(paddr).await.unwrap();
    let (mut rd, mut wr) = slow.into_split();
    let trickle = tokio::spawn(async move {
        let _ = wr.write_all(b"GET / HTTP/1.1\r\n").await;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if wr.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let read = tokio::time::timeout(Duration::from_secs(5), rd.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    trickle.abort();

    // A request in flight longer than a period keeps its connection.
    let (status, text, by_proxy) = get(paddr, "/", None).await;
    assert_eq!((status, by_proxy), (200, false), "{text}");
}

/// An upstream that answers each request `ok` and closes its connections when told, as a
/// server's keep-alive timeout does.
async fn closing_upstream() -> (SocketAddr, Arc<tokio::sync::Notify>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let close = Arc::new(tokio::sync::Notify::new());
    let signal = close.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let signal = signal.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let closing = signal.notified();
                tokio::pin!(closing);
                loop {
                    tokio::select! {
                        _ = &mut closing => return,
                        read = s.read(&mut buf) => match read {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {
                                let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                                if s.write_all(ok).await.is_err() {
                                    return;
                                }
                            }
                        },
                    }
                }
            });
        }
    });
    (addr, close)
}

/// Wait until `condition` holds, for at most five seconds.
pub(crate) async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn idle_connections_the_server_closed_are_swept_out() {
    let (addr, close) = closing_upstream().await;
    let (paddr, _stop, backend) = proxy_to(addr).await;
    assert_eq!(get(paddr, "/", None).await.0, 200);
    // Pooled first (the server closes only when told)...
    assert_eq!(backend.idle_connections(), 1);
    tokio::time::sleep(SWEEP_EVERY * 2).await;
    assert_eq!(backend.idle_connections(), 1, "a live connection was swept");
    // ...then swept once the server closed it.
    close.notify_waiters();
    wait_for("the closed idle connection swept out", || {
        backend.idle_connections() == 0
    })
    .await;
    assert_eq!(get(paddr, "/", None).await.0, 200);
}

#[tokio::test]
async fn a_warm_previous_colour_is_swept_too() {
    let (addr, close) = closing_upstream().await;
    let proxy = ServiceProxy::new("svc", settings());
    let (old, new) = (
        Pool::new("blue", "v1", &settings()),
        Pool::new("green", "v2", &settings()),
    );
    let old_backend = Backend::new("old", addr);
    old.set_backends(vec![old_backend.clone()]);
    let (new_addr, _) = closing_upstream().await;
    new.set_backends(vec![Backend::new("new", new_addr)]);
    proxy.set_route(Route::single(old.clone()));
    let (paddr, _stop) = start_proxy(proxy.clone()).await;
    assert_eq!(get(paddr, "/", None).await.0, 200);
    assert_eq!(old_backend.idle_connections(), 1);
    // Traffic moves on; the old colour stays warm (held) for an instant rollback.
    proxy.set_route(Route::single(new.clone()));
    close.notify_waiters();
    wait_for("the warm colour's closed connection swept out", || {
        old_backend.idle_connections() == 0
    })
    .await;
    // Once the colour is let go, the proxy forgets it.
    drop(old);
    proxy.set_route(Route::single(new));
    assert_eq!(proxy.warm.load().len(), 0);
}

#[tokio::test]
async fn a_response_body_the_upstream_stops_sending_is_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Promises 10 bytes, sends 5, then neither sends nor closes.
    let (addr, _) = raw_upstream(|_, _| {
        Some(Script {
            pieces: vec!["HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"],
            close: false,
        })
    })
    .await;
    let (paddr, _stop, backend) = proxy_to(addr).await;
    let mut s = tokio::net::TcpStream::connect(paddr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    // Cut after two idle periods (600 ms in tests) without a byte.
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the stalled response was never cut");
    assert!(String::from_utf8_lossy(&got).ends_with("hello"), "{got:?}");
    wait_for("the backend no longer counted busy", || {
        backend.outstanding() == 0
    })
    .await;
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_cut_and_its_upstream_released() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Streams an endless chunked body until its connection breaks.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (broke_tx, broke_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 1024];
        let _ = s.read(&mut head).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await;
        let chunk = format!("4000\r\n{}\r\n", "z".repeat(0x4000));
        while s.write_all(chunk.as_bytes()).await.is_ok() {}
        let _ = broke_tx.send(());
    });
    let (paddr, _stop, backend) = proxy_to(up).await;
    let mut client = tokio::net::TcpStream::connect(paddr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // The client never reads: buffers fill, nothing moves, the proxy gives up on it.
    tokio::time::timeout(Duration::from_secs(10), broke_rx)
        .await
        .expect("the upstream connection of a client that reads nothing was never closed")
        .unwrap();
    wait_for("the backend no longer counted busy", || {
        backend.outstanding() == 0
    })
    .await;
    drop(client);
}

#[tokio::test]
async fn an_idle_upgraded_connection_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Answers the upgrade, then echoes.
    let (addr, _) = raw_upstream(|_, _| {
        Some(Script {
            pieces: vec![
                "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
            ],
            close: false,
        })
    })
    .await;
    let proxy = ServiceProxy::new(
        "svc",
        Settings {
            tunnel_idle_timeout: Duration::from_millis(200),
            ..settings()
        },
    );
    let backend = Backend::new("b", addr);
    proxy.set_route(route_of(vec![backend.clone()]));
    let (paddr, _stop) = start_proxy(proxy).await;
    let mut s = tokio::net::TcpStream::connect(paddr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the idle tunnel was never closed");
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"),
        "{got:?}"
    );
    wait_for("the tunnel no longer counted", || backend.upgraded() == 0).await;
}

#[tokio::test]
async fn an_upgrade_is_counted_before_its_request_stops_being_outstanding() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let backend = Backend::new("b", addr);
    let pool = Pool::new("blue", "v1", &settings());
    let switched = upstream::Head {
        status: StatusCode::SWITCHING_PROTOCOLS,
        headers: HeaderMap::new(),
        framing: upstream::Framing::Empty,
        keep_alive: false,
        upgrade: Some(HeaderValue::from_static("websocket")),
    };
    let mut client_request = Request::new(());
    let client_upgrade = hyper::upgrade::on(&mut client_request);
    // Answering the 101 hands the request's count over to the tunnel's, with no await in
    // between: a drain never sees the instance with neither (its "idle" condition).
    let resp = respond(
        switched,
        upstream::Conn::new(stream),
        OutstandingGuard::new(backend.clone()),
        &pool,
        Some(client_upgrade),
        true,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!((backend.outstanding(), backend.upgraded()), (0, 1));
}
