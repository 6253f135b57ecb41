//! `tcf-demo`: a small HTTP service (the binary is built by the tcf-platform package, beside
//! `tcf-platform`, where the process runtime finds it) that stands in for the TCF services in demos and tests.
//!
//! It listens on 127.0.0.1:$PORT and answers:
//! - `GET /health`: 200 `ok` (503 when told to fail health)
//! - `GET /env-sha256/NAME`: the SHA-256 (hex) of environment variable NAME's value (404 when
//!   unset), so a test can check a secret arrived without the value ever being shown
//! - anything else: 200 with JSON `{"service", "version", "instance", "pid", "path"}`
//!
//! Knobs that make it behave like a bad release (environment variables):
//! - `DEMO_FAIL_HEALTH=1`: /health answers 503
//! - `DEMO_START_DELAY_MS=N`: wait N ms before listening (a slow start)
//! - `DEMO_ERROR_RATE=0.3`: answer that share of requests (not /health) with 500
//! - `DEMO_LATENCY_MS=N`: add N ms to every answer (not /health)
//! - `DEMO_HOLD_MS=N`, or `?hold_ms=N` on one request: hold the request open N ms
//! - `?status=N` on one request: answer it with status N (a 404, say, for status counters)
//! - `?say=WORD` on a request: write WORD as a line to stdout (to follow output into the log)
//!
//! A version name can carry the same faults, so a deploy can pick them per release:
//! `unhealthy` in the version fails health, `errors` answers every request with 500 (or
//! `DEMO_ERROR_RATE`), `slow` starts after 5 s (or `DEMO_START_DELAY_MS`).
//!
//! SIGTERM: stop accepting, finish the requests in flight, exit 0.
//!
//! `tcf-demo healthcheck` probes a running one on $PORT (exit 0 healthy), for a container's
//! `HEALTHCHECK`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;

struct Knobs {
    service: String,
    version: String,
    instance: String,
    fail_health: bool,
    error_rate: f64,
    latency: Duration,
    hold: Duration,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_ms(name: &str) -> Option<Duration> {
    env(name)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

impl Knobs {
    fn from_env() -> (Knobs, Duration) {
        let version = env("TCF_VERSION").unwrap_or_else(|| "dev".into());
        let error_rate = env("DEMO_ERROR_RATE")
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(if version.contains("errors") { 1.0 } else { 0.0 });
        let start_delay = env_ms("DEMO_START_DELAY_MS").unwrap_or(if version.contains("slow") {
            Duration::from_secs(5)
        } else {
            Duration::ZERO
        });
        let knobs = Knobs {
            service: env("TCF_SERVICE").unwrap_or_else(|| "demo".into()),
            instance: env("TCF_INSTANCE").unwrap_or_else(|| "demo-1".into()),
            fail_health: env("DEMO_FAIL_HEALTH").is_some_and(|v| v != "0")
                || version.contains("unhealthy"),
            error_rate: error_rate.clamp(0.0, 1.0),
            latency: env_ms("DEMO_LATENCY_MS").unwrap_or_default(),
            hold: env_ms("DEMO_HOLD_MS").unwrap_or_default(),
            version,
        };
        (knobs, start_delay)
    }
}

fn query_u64(query: Option<&str>, key: &str) -> Option<u64> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

fn query_ms(query: Option<&str>, key: &str) -> Option<Duration> {
    query_u64(query, key).map(Duration::from_millis)
}

fn json_escape(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

async fn handle(knobs: Arc<Knobs>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        let (status, body) = if knobs.fail_health {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "failing health on purpose\n",
            )
        } else {
            (StatusCode::OK, "ok\n")
        };
        let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *resp.status_mut() = status;
        return resp;
    }
    if let Some(name) = path.strip_prefix("/env-sha256/") {
        use sha2::Digest;
        return match std::env::var_os(name) {
            Some(v) => Response::new(Full::new(Bytes::from(format!(
                "{}\n",
                hex::encode(sha2::Sha256::digest(v.as_encoded_bytes()))
            )))),
            None => {
                let mut resp = Response::new(Full::new(Bytes::from_static(b"unset\n")));
                *resp.status_mut() = StatusCode::NOT_FOUND;
                resp
            }
        };
    }
    if path == "/echo" && req.headers().contains_key("upgrade") {
        return echo_upgrade(req);
    }
    if let Some((_, word)) = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "say")
    }) {
        println!("{word}");
    }
    let hold = query_ms(req.uri().query(), "hold_ms").unwrap_or(knobs.hold);
    let wait = knobs.latency + hold;
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let failing = knobs.error_rate > 0.0 && fastrand::f64() < knobs.error_rate;
    let body = format!(
        "{{\"service\":{},\"version\":{},\"instance\":{},\"pid\":{},\"path\":{}}}\n",
        json_escape(&knobs.service),
        json_escape(&knobs.version),
        json_escape(&knobs.instance),
        std::process::id(),
        json_escape(&path)
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("static header"),
    );
    if failing {
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    } else if let Some(asked) = query_u64(req.uri().query(), "status")
        .and_then(|n| u16::try_from(n).ok())
        .and_then(|n| StatusCode::from_u16(n).ok())
    {
        *resp.status_mut() = asked;
    }
    resp
}

/// `GET /echo` with `Upgrade: echo`: switch protocols and echo every byte back, for testing
/// upgraded connections (WebSocket-like) through the proxy.
fn echo_upgrade(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if let Ok(up) = on.await {
            let mut io = TokioIo::new(up);
            let mut buf = [0u8; 1024];
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
        .insert("upgrade", "echo".parse().expect("static header"));
    resp.headers_mut()
        .insert("connection", "upgrade".parse().expect("static header"));
    resp
}

/// GET /health on our own port with a plain socket; 0 when it answers 200.
fn healthcheck() -> i32 {
    use std::io::{Read, Write};
    let port = env("PORT").unwrap_or_else(|| "8080".into());
    let Ok(mut s) =
        std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap_or(8080)))
    else {
        return 1;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return 1;
    }
    let mut head = [0u8; 12];
    match s.read_exact(&mut head) {
        Ok(()) if head.starts_with(b"HTTP/1.1 200") => 0,
        _ => 1,
    }
}

/// Run the demo service until SIGTERM; exits the process on a fatal error.
pub fn main() {
    // `tcf-demo healthcheck`: for a container's HEALTHCHECK (FROM scratch has no curl).
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        std::process::exit(healthcheck());
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tcf-demo: cannot start: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(serve());
}

async fn serve() {
    let (knobs, start_delay) = Knobs::from_env();
    let port: u16 = match env("PORT").map(|p| p.parse()) {
        Some(Ok(p)) => p,
        _ => {
            eprintln!(
                "tcf-demo: set PORT to the port to listen on (tcf-platform does this for you)"
            );
            std::process::exit(2);
        }
    };
    let host = env("DEMO_BIND").unwrap_or_else(|| "127.0.0.1".into());
    if !start_delay.is_zero() {
        eprintln!("tcf-demo: starting slowly on purpose ({start_delay:?})");
        tokio::time::sleep(start_delay).await;
    }
    let listener = match tokio::net::TcpListener::bind((host.as_str(), port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tcf-demo: cannot listen on {host}:{port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "tcf-demo: {} {} ({}) listening on {host}:{port}",
        knobs.service, knobs.version, knobs.instance
    );
    let knobs = Arc::new(knobs);
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tcf-demo: cannot handle SIGTERM: {e}");
            std::process::exit(1);
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Every connection holds a sender; when all are gone, the receiver sees the end.
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let k = knobs.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let k = k.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(k, req).await) }
                });
                let mut conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades();
                let mut stop = stop_rx.clone();
                let open = open_tx.clone();
                tokio::spawn(async move {
                    let _open = open;
                    tokio::select! {
                        _ = &mut conn => return,
                        _ = stop.wait_for(|s| *s) => {}
                    }
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                    let _ = conn.await;
                });
            }
            _ = term.recv() => break,
        }
    }
    drop(listener);
    eprintln!("tcf-demo: SIGTERM: finishing requests in flight");
    let _ = stop_tx.send(true);
    drop(open_tx);
    let _ = tokio::time::timeout(Duration::from_secs(30), open_rx.recv()).await;
    eprintln!("tcf-demo: stopped");
}
