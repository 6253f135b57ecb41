//! An upstream that answers before it has read the whole request body (issue 10, item 0): its
//! answer reaches the client, whatever the body's size; one that reads everything gets it all.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A service that answers 401 as soon as it has a request head, without reading the body, and
/// closes: with the body unread, the kernel resets the connection, as many real services do.
pub(crate) async fn early_answer_service() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 12\r\nConnection: close\r\n\r\nunauthorized",
                    )
                    .await;
            });
        }
    });
    addr
}

/// A proxy whose body limit and timeouts leave room for the 16 MB uploads.
pub(crate) async fn roomy_proxy_to(upstream: SocketAddr) -> (SocketAddr, Arc<ServiceProxy>) {
    let proxy = ServiceProxy::new(
        "svc",
        Settings {
            max_request_body: 64 << 20,
            upstream_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            ..settings()
        },
    );
    proxy.set_route(route_of(vec![Backend::new("b", upstream)]));
    let (addr, stop) = start_proxy(proxy.clone()).await;
    std::mem::forget(stop);
    (addr, proxy)
}

pub(crate) async fn upload(addr: SocketAddr, size: usize) -> (u16, String, bool) {
    let client: TestClient<HttpConnector, Full<Bytes>> =
        TestClient::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://{addr}/upload"))
        .body(Full::new(Bytes::from(vec![b'u'; size])))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let by_proxy = resp.headers().contains_key(PROXY_ERROR_HEADER);
    let text =
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).to_string();
    (status, text, by_proxy)
}

const SIZES: [usize; 11] = [
    1 << 10,
    4 << 10,
    16 << 10,
    32 << 10,
    64 << 10,
    100 << 10,
    256 << 10,
    1 << 20,
    3 << 20,
    8 << 20,
    16 << 20,
];

#[tokio::test]
async fn an_early_answer_is_relayed_for_uploads_of_every_size() {
    let (addr, proxy) = roomy_proxy_to(early_answer_service().await).await;
    for size in SIZES {
        let (status, text, by_proxy) = upload(addr, size).await;
        assert_eq!(
            (status, text.as_str(), by_proxy),
            (401, "unauthorized", false),
            "upload of {size} bytes"
        );
    }
    let snap = proxy.stats().snapshot();
    assert_eq!((snap.requests, snap.proxy_errors), (SIZES.len() as u64, 0));
}

#[tokio::test]
async fn a_1_mb_upload_to_an_early_answer_gets_it_a_hundred_times_out_of_a_hundred() {
    let (addr, proxy) = roomy_proxy_to(early_answer_service().await).await;
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..100 {
        let (status, _, _) = upload(addr, 1 << 20).await;
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert_eq!(statuses, [(401, 100)].into(), "statuses seen: {statuses:?}");
    assert_eq!(proxy.stats().snapshot().proxy_errors, 0);
}

#[tokio::test]
async fn a_service_that_reads_everything_gets_uploads_of_every_size() {
    let (up, _t) = upstream("ok", Duration::ZERO, Arc::new(AtomicU32::new(0))).await;
    let (addr, _) = roomy_proxy_to(up).await;
    for size in SIZES {
        let (status, text, by_proxy) = upload(addr, size).await;
        assert_eq!(
            (status, by_proxy),
            (200, false),
            "upload of {size} bytes: {text}"
        );
        assert!(text.ends_with(&format!("body={size}")), "{size}: {text}");
    }
}

#[tokio::test]
async fn an_early_answer_to_a_service_that_keeps_the_connection_open_is_relayed() {
    // Answers at once and then neither reads nor closes: the upload fills the window, and the
    // proxy must notice the answer rather than wait for the upstream timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut chunk = [0u8; 1024];
                let _ = s.read(&mut chunk).await;
                let _ = s
                    .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
                    .await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    let (addr, _) = roomy_proxy_to(up).await;
    let (status, text, by_proxy) = upload(addr, 16 << 20).await;
    assert_eq!((status, text.as_str(), by_proxy), (413, "big", false));
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413_even_when_the_upstream_closes_first() {
    // Reads the head and closes without a word.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut chunk = [0u8; 256];
            let _ = s.read(&mut chunk).await;
        }
    });
    let proxy = ServiceProxy::new("svc", settings());
    proxy.set_route(route_of(vec![Backend::new("b", up)]));
    let (addr, _stop) = start_proxy(proxy).await;
    // 64 chunks of 64 bytes: 4 KiB, over the 1 KiB limit, sent slowly in pieces.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    for _ in 0..64 {
        let piece = format!("40\r\n{}\r\n", "c".repeat(64));
        if s.write_all(piece.as_bytes()).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn an_answer_that_breaks_off_in_its_body_counts_as_an_upstream_error() {
    let (up, _) = raw_upstream(|_, _| {
        Some(Script {
            pieces: vec![
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                "zz\r\nbroken\r\n",
            ],
            close: true,
        })
    })
    .await;
    let proxy = ServiceProxy::new("svc", settings());
    let pool = Pool::new("blue", "v1", &settings());
    pool.set_backends(vec![Backend::new("b", up)]);
    proxy.set_route(Route::single(pool.clone()));
    let (addr, _stop) = start_proxy(proxy.clone()).await;
    let client: TestClient<HttpConnector, Full<Bytes>> =
        TestClient::builder(TokioExecutor::new()).build_http();
    let resp = client
        .request(
            Request::get(format!("http://{addr}/"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.into_body().collect().await.is_err(),
        "the client sees the answer cut off"
    );
    for snap in [proxy.stats().snapshot(), pool.stats().snapshot()] {
        assert_eq!(
            (snap.broken_responses, snap.responses_5xx),
            (1, 1),
            "{snap:?}"
        );
    }
}

/// An upload of `pieces` frames of 16 KiB, announced by length or sent chunked.
struct Pieces {
    left: usize,
    announced: bool,
}

impl Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 16 << 10])))))
    }

    fn size_hint(&self) -> SizeHint {
        if self.announced {
            SizeHint::with_exact((self.left * (16 << 10)) as u64)
        } else {
            SizeHint::default()
        }
    }
}

#[tokio::test]
async fn an_upload_over_the_limit_gets_its_413_even_while_still_sending() {
    let (up, _t) = upstream("ok", Duration::ZERO, Arc::new(AtomicU32::new(0))).await;
    let proxy = ServiceProxy::new("svc", settings());
    proxy.set_route(route_of(vec![Backend::new("b", up)]));
    let (addr, _stop) = start_proxy(proxy).await;
    let mut statuses = std::collections::BTreeMap::new();
    // 1 MiB over the 1 KiB limit: announced (refused before reading) or found while streaming.
    for announced in [true, false] {
        for _ in 0..20 {
            let client: TestClient<HttpConnector, Pieces> =
                TestClient::builder(TokioExecutor::new()).build_http();
            let req = Request::post(format!("http://{addr}/"))
                .body(Pieces {
                    left: 64,
                    announced,
                })
                .unwrap();
            let status = match client.request(req).await {
                Ok(resp) => resp.status().as_u16(),
                Err(_) => 0,
            };
            *statuses.entry((announced, status)).or_insert(0) += 1;
        }
    }
    assert_eq!(
        statuses,
        [((false, 413), 20), ((true, 413), 20)].into(),
        "(announced, status): count"
    );
}
