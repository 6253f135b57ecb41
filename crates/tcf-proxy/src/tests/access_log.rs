//! The access log (issue 11, item 15): one JSON line per request with the right fields, for
//! answers relayed, made by the proxy and answered early; a writer that falls behind costs
//! lines (counted and said in the file), never a request.

use super::early_answers::{early_answer_service, upload};
use super::*;
use crate::access_log::{AccessLog, AccessLogOptions, Sink};
use std::sync::Mutex;

/// What the log's writer wrote, shared with the test.
#[derive(Clone, Default)]
struct Written(Arc<Mutex<Vec<u8>>>);

impl Written {
    fn sink(&self) -> Sink {
        let out = self.0.clone();
        Box::new(move |bytes: &[u8]| {
            out.lock().unwrap().extend_from_slice(bytes);
            Ok(())
        })
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Wait until `n` lines are written; all the lines.
    async fn wait_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let me = self.clone();
        wait_for(&format!("{n} access log lines"), move || {
            me.lines().len() >= n
        })
        .await;
        self.lines()
    }
}

fn logging_proxy(settings: Settings, options: AccessLogOptions) -> (Arc<ServiceProxy>, Written) {
    let written = Written::default();
    let log = AccessLog::start("svc", 64, options, written.sink()).unwrap();
    (
        ServiceProxy::with_access_log("svc", settings, Some(log)),
        written,
    )
}

fn fields(line: &serde_json::Value) -> (&str, &str, u64, bool, Option<&str>) {
    (
        line["method"].as_str().unwrap(),
        line["path"].as_str().unwrap(),
        line["status"].as_u64().unwrap(),
        line["by_proxy"].as_bool().unwrap(),
        line["error"].as_str(),
    )
}

#[tokio::test]
async fn relayed_answers_get_a_line_with_their_instance_status_bytes_and_time() {
    let (addr, _) = raw_upstream(|request, _| {
        let path = request.split(' ').nth(1).unwrap_or("");
        match path {
            "/fail" => answer(vec![
                "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\noops",
            ]),
            // Chunked and in pieces: streamed, so logged when its body ends (body.rs).
            "/stream" => answer(vec![
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                "6\r\n world\r\n0\r\n\r\n",
            ]),
            _ => answer(vec!["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]),
        }
    })
    .await;
    let (proxy, written) = logging_proxy(settings(), AccessLogOptions::default());
    let pool = Pool::new("green", "v7", &settings());
    pool.set_backends(vec![Backend::new("svc-green-1", addr)]);
    proxy.set_route(Route::single(pool));
    let (proxy_addr, _stop) = start_proxy(proxy.clone()).await;
    let before = std::time::SystemTime::now();

    assert_eq!(get(proxy_addr, "/ok?token=secret", None).await.0, 200);
    assert_eq!(get(proxy_addr, "/fail", None).await.0, 500);
    let (status, text, _) = get(proxy_addr, "/stream", None).await;
    assert_eq!((status, text.as_str()), (200, "hello world"));

    let lines = written.wait_lines(3).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    let ok = &lines[0];
    // Without the query string: tokens in it stay out of the log.
    assert_eq!(fields(ok), ("GET", "/ok", 200, false, None));
    assert_eq!(ok["service"], "svc");
    assert_eq!(ok["upstream"], "svc-green-1");
    assert_eq!(ok["colour"], "green");
    assert_eq!(ok["version"], "v7");
    assert_eq!(ok["bytes"], 2);
    assert!(ok["duration_ms"].as_f64().unwrap() > 0.0, "{ok}");
    assert!(
        ok["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{ok}"
    );
    let time = humantime::parse_rfc3339(ok["time"].as_str().unwrap()).unwrap();
    assert!(time >= before - Duration::from_millis(1), "{ok}");
    assert_eq!(
        ok["time"].as_str().unwrap().len(),
        24,
        "millisecond precision: {ok}"
    );

    // The service's own 500 is relayed: not the proxy's doing.
    assert_eq!(fields(&lines[1]), ("GET", "/fail", 500, false, None));
    assert_eq!(lines[1]["bytes"], 4);
    assert_eq!(lines[1]["upstream"], "svc-green-1");

    assert_eq!(fields(&lines[2]), ("GET", "/stream", 200, false, None));
    assert_eq!(lines[2]["bytes"], 11, "the body's bytes: {}", lines[2]);
}

#[tokio::test]
async fn answers_the_proxy_makes_say_so_and_why() {
    let (proxy, written) = logging_proxy(settings(), AccessLogOptions { with_query: true });
    let (addr, _stop) = start_proxy(proxy.clone()).await;
    // No instance at all: 503.
    assert_eq!(get(addr, "/a?x=1", None).await.0, 503);
    // An instance that refuses connections: 502, and which one it was.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    proxy.set_route(route_of(vec![Backend::new("svc-blue-2", dead)]));
    assert_eq!(get(addr, "/b", Some("data")).await.0, 502);

    let lines = written.wait_lines(2).await;
    // `with_query` keeps the query string.
    assert_eq!(
        fields(&lines[0]),
        ("GET", "/a?x=1", 503, true, Some("no_backend"))
    );
    assert_eq!(lines[0]["upstream"], serde_json::Value::Null);
    assert_eq!(
        fields(&lines[1]),
        ("POST", "/b", 502, true, Some("connect"))
    );
    assert_eq!(lines[1]["upstream"], "svc-blue-2");
    assert_eq!(lines[1]["colour"], "blue");
    // The proxy's own message went to the client.
    assert!(lines[1]["bytes"].as_u64().unwrap() > 0, "{}", lines[1]);
}

#[tokio::test]
async fn an_upload_answered_early_is_logged_as_the_services_answer() {
    let service = early_answer_service().await;
    let (proxy, written) = logging_proxy(
        Settings {
            max_request_body: 64 << 20,
            upstream_timeout: Duration::from_secs(30),
            ..settings()
        },
        AccessLogOptions::default(),
    );
    proxy.set_route(route_of(vec![Backend::new("b", service)]));
    let (addr, _stop) = start_proxy(proxy.clone()).await;
    let (status, text, _) = upload(addr, 1 << 20).await;
    assert_eq!((status, text.as_str()), (401, "unauthorized"));
    let lines = written.wait_lines(1).await;
    assert_eq!(fields(&lines[0]), ("POST", "/upload", 401, false, None));
    assert_eq!(lines[0]["bytes"], 12);
    assert_eq!(lines[0]["upstream"], "b");
}

#[tokio::test]
async fn a_writer_that_falls_behind_drops_and_counts_lines_but_never_blocks_a_request() {
    let (ok, _t) = upstream("ok", Duration::ZERO, Arc::new(AtomicU32::new(0))).await;
    // A disk that hangs until the test lets it go.
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let written = Written::default();
    let sink: Sink = {
        let (gate, out) = (gate.clone(), written.0.clone());
        Box::new(move |bytes: &[u8]| {
            let (open, cv) = &*gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            out.lock().unwrap().extend_from_slice(bytes);
            Ok(())
        })
    };
    let log = AccessLog::start("svc", 2, AccessLogOptions::default(), sink).unwrap();
    let proxy = ServiceProxy::with_access_log("svc", settings(), Some(log));
    proxy.set_route(route_of(vec![Backend::new("ok", ok)]));
    let (addr, _stop) = start_proxy(proxy.clone()).await;
    const REQUESTS: u64 = 200;
    // Every request is answered while the writer hangs.
    tokio::time::timeout(Duration::from_secs(60), async {
        for _ in 0..REQUESTS {
            assert_eq!(get(addr, "/", None).await.0, 200);
        }
    })
    .await
    .expect("requests are never held up by the access log");
    let log = proxy.access_log().unwrap();
    let dropped = log.dropped();
    // The writer holds at most a batch, the queue two lines: the rest was dropped.
    assert!(dropped >= REQUESTS / 2, "dropped {dropped}");
    assert_eq!(written.lines().len(), 0);

    {
        let (open, cv) = &*gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
    let me = written.clone();
    wait_for("the drops are said in the file", move || {
        let lines = me.lines();
        let said: u64 = lines.iter().filter_map(|l| l["dropped"].as_u64()).sum();
        let logged = lines.iter().filter(|l| l.get("status").is_some()).count() as u64;
        said == dropped && logged + said == REQUESTS
    })
    .await;
    let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains(" lines dropped\"}"), "{text}");
}
