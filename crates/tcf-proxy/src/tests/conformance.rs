//! The proxy's own conformance table (issue 10, item 2): hostile and borderline HTTP/1.1
//! requests from RFC 9112 §2–§7 and §11 and the published request-smuggling variants, each
//! with the bytes a client sends, what a backend that records every raw byte must and must not
//! receive, and the answers the client must get. A smuggled request would show up at the
//! backend as one request too many, or as bytes it must not see.

use super::*;
use crate::upstream::{Chunked, Decoded};
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What reached the recording backend.
#[derive(Default)]
struct Recorded {
    /// Every byte, of every connection, in arrival order.
    raw: Vec<u8>,
    requests: usize,
    /// Bytes it could not read as a request (what a desync would leave).
    unparseable: bool,
    /// The proxy closed a connection to it.
    closed: bool,
}

/// A backend that records raw bytes, reads each request (Content-Length or chunked body, as
/// the proxy frames them) and answers `200 ok` to each.
async fn recording_backend() -> (SocketAddr, Arc<Mutex<Recorded>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let shared = recorded.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let recorded = shared.clone();
            tokio::spawn(async move {
                let mut buf = bytes::BytesMut::new();
                let mut chunk = [0u8; 8192];
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => {
                            recorded.lock().unwrap().closed = true;
                            return;
                        }
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            recorded.lock().unwrap().raw.extend_from_slice(&chunk[..n]);
                        }
                    }
                    loop {
                        match take_request(&mut buf) {
                            Ok(Some(())) => {
                                recorded.lock().unwrap().requests += 1;
                                let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                                if s.write_all(ok).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(()) => {
                                recorded.lock().unwrap().unparseable = true;
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, recorded)
}

/// Consume one complete request from `buf`; `None` if it is not all there yet.
fn take_request(buf: &mut bytes::BytesMut) -> Result<Option<()>, ()> {
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_string())
    };
    if header("transfer-encoding").is_some_and(|te| te == "chunked") {
        let mut body = bytes::BytesMut::from(&buf[head_len..]);
        let mut dec = Chunked::default();
        loop {
            match dec.decode(&mut body).map_err(|_| ())? {
                Decoded::Data(_) => {}
                Decoded::NeedMore => return Ok(None),
                Decoded::Done => break,
            }
        }
        let used = buf.len() - body.len();
        let _ = buf.split_to(used);
        return Ok(Some(()));
    }
    let len: usize = match header("content-length") {
        Some(v) => v.parse().map_err(|_| ())?,
        None => 0,
    };
    if buf.len() < head_len + len {
        return Ok(None);
    }
    let _ = buf.split_to(head_len + len);
    Ok(Some(()))
}

/// Send `bytes` and read final answers (interim 1xx skipped) until `expected` came, the proxy
/// closed, or nothing came for a while. The statuses, and whether the connection was closed.
async fn answers_to(addr: SocketAddr, bytes: &[u8], expected: usize) -> (Vec<u16>, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    let mut closed = false;
    let mut chunk = [0u8; 8192];
    loop {
        // Parse what is there.
        loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut slots);
            let Ok(httparse::Status::Complete(n)) = resp.parse(&buf) else {
                break;
            };
            let code = resp.code.unwrap();
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |h| {
                    std::str::from_utf8(h.value).unwrap().parse().unwrap()
                });
            if (100..200).contains(&code) {
                buf.drain(..n);
                continue;
            }
            if buf.len() < n + len {
                break;
            }
            buf.drain(..n + len);
            statuses.push(code);
        }
        if closed || statuses.len() > expected {
            break;
        }
        // Once all expected answers came, wait a little only to see whether it closes.
        let wait = if statuses.len() == expected {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(3)
        };
        match tokio::time::timeout(wait, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed = true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    (statuses, closed)
}

/// What the backend must see for one case.
enum Seen {
    /// Not a byte.
    Nothing,
    /// At most the start of a request, never a whole one, on a connection then closed.
    Cut,
    /// Exactly this many requests, with these (lower-cased) bytes in them and not those.
    Requests(usize, &'static [&'static str], &'static [&'static str]),
}

struct Case {
    name: &'static str,
    send: Vec<u8>,
    answers: &'static [u16],
    backend: Seen,
}

fn case(
    name: &'static str,
    send: impl Into<Vec<u8>>,
    answers: &'static [u16],
    backend: Seen,
) -> Case {
    Case {
        name,
        send: send.into(),
        answers,
        backend,
    }
}

use Seen::{Cut, Nothing, Requests};

fn table() -> Vec<Case> {
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "p".repeat(9 * 1024));
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(64 * 1024)
    );
    let near_limit = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(30 * 1024)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..101)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let big_chunk = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
        "x".repeat(0x800)
    );
    vec![
        // RFC 9112 §3: the request line.
        case("plain GET", "GET /p?q=1 HTTP/1.1\r\nHost: a\r\n\r\n", &[200], Requests(1, &["get /p?q=1 http/1.1\r\n", "host: a\r\n", "x-forwarded-for: 127.0.0.1"], &[])),
        case("HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", &[200], Requests(1, &["get / http/1.1\r\n"], &["host:"])),
        case("HTTP/1.1 without Host (§3.2)", "GET / HTTP/1.1\r\n\r\n", &[400], Nothing),
        case("Host twice (§3.2)", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", &[400], Nothing),
        case("Host with a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", &[400], Nothing),
        case("Host with a slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", &[400], Nothing),
        case("Host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", &[400], Nothing),
        case("empty Host", "GET / HTTP/1.1\r\nHost: \r\n\r\n", &[400], Nothing),
        case("absolute form replaces Host (§3.2.2)", "GET http://other.example/p HTTP/1.1\r\nHost: a\r\n\r\n", &[200], Requests(1, &["get /p http/1.1\r\n", "host: other.example\r\n", "x-forwarded-host: other.example\r\n"], &["host: a\r\n"])),
        case("absolute form, https and a port", "GET https://other.example:8443/ HTTP/1.1\r\nHost: a\r\n\r\n", &[200], Requests(1, &["host: other.example:8443\r\n"], &["host: a\r\n"])),
        case("absolute form with userinfo", "GET http://u:p@other/ HTTP/1.1\r\nHost: a\r\n\r\n", &[400], Nothing),
        case("absolute form, another scheme", "GET ftp://other/ HTTP/1.1\r\nHost: a\r\n\r\n", &[400], Nothing),
        case("authority form outside CONNECT (§3.2.3)", "GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n", &[400], Nothing),
        case("asterisk form for OPTIONS (§3.2.4)", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", &[200], Requests(1, &["options * http/1.1\r\n"], &[])),
        case("asterisk form for GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", &[400], Nothing),
        case("CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", &[405], Nothing),
        case("TRACE", "TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", &[405], Nothing),
        case("bad method token", "G<T / HTTP/1.1\r\nHost: a\r\n\r\n", &[400], Nothing),
        case("HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", &[400], Nothing),
        case("HTTP/2.0 in an HTTP/1 line", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", &[400], Nothing),
        // hyper knows the HTTP/2 preface and closes without an answer.
        case("HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &[], Nothing),
        case("HTTP/0.9 line", "GET /\r\n\r\n", &[400], Nothing),
        case("lower-case version", "GET / http/1.1\r\nHost: a\r\n\r\n", &[400], Nothing),
        case("two spaces in the request line", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", &[400], Nothing),
        case("space in the target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", &[400], Nothing),
        case("control character in the target", "GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", &[400], Nothing),
        case("bare CR ends the request line", "GET / HTTP/1.1\rHost: a\r\n\r\n", &[400], Nothing),
        case("request line over 8 KiB", long_target, &[414], Nothing),
        // RFC 9112 §5 and RFC 6585: header fields.
        case("64 KiB header over the 32 KiB head limit", big_header, &[431], Nothing),
        case("30 KiB header under it", near_limit, &[200], Requests(1, &["x-big: bbbb"], &[])),
        case("101 header fields", many_headers, &[431], Nothing),
        case("whitespace before the colon (§5.1)", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", &[400], Nothing),
        case("obs-fold (§5.2)", "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n", &[400], Nothing),
        case("NUL in a value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\x002\r\n\r\n", &[400], Nothing),
        case("bare CR in a value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r2\r\n\r\n", &[400], Nothing),
        case("a line without a colon", "GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", &[400], Nothing),
        case("space in a field name", "GET / HTTP/1.1\r\nHost: a\r\nX A: 1\r\n\r\n", &[400], Nothing),
        case("bare LF line ends (§2.2), forwarded with CRLF", "GET / HTTP/1.1\nHost: a\nX-A: 1\n\n", &[200], Requests(1, &["get / http/1.1\r\nhost: a\r\n", "x-a: 1\r\n"], &[])),
        case("Connection: host keeps Host", "GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n", &[200], Requests(1, &["host: a\r\n"], &["connection:"])),
        case("fields named in Connection are dropped", "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\n\r\n", &[200], Requests(1, &[], &["x-secret", "keep-alive"])),
        case("forwarded headers are ours", "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n", &[200], Requests(1, &["x-forwarded-host: a\r\n", "x-forwarded-proto: http\r\n", "x-forwarded-for: 1.2.3.4, 127.0.0.1\r\n"], &["evil", "proto: https"])),
        case("underscores are forwarded by default", "GET / HTTP/1.1\r\nHost: a\r\nX_User: 1\r\n\r\n", &[200], Requests(1, &["x_user: 1\r\n"], &[])),
        // RFC 9112 §6: message body length.
        case("Content-Length body", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", &[200], Requests(1, &["content-length: 5\r\n\r\nhello"], &[])),
        case("Content-Length with a plus", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", &[400], Nothing),
        case("negative Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", &[400], Nothing),
        case("hex Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello", &[400], Nothing),
        case("Content-Length overflow", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", &[400], Nothing),
        case("two differing Content-Lengths (§6.3)", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", &[400], Nothing),
        case("two equal Content-Lengths", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", &[200], Requests(1, &["content-length: 5\r\n\r\nhello"], &["content-length: 5\r\ncontent-length"])),
        // RFC 9110 §8.6 allows a list of equal values or a refusal; nginx and hyper refuse.
        case("Content-Length list of one value", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", &[400], Nothing),
        case("Content-Length over the body limit", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2048\r\n\r\n", &[413], Nothing),
        case("chunked body", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", &[200], Requests(1, &["transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"], &["ext=1"])),
        case("chunked body with a trailer", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Trailer: t\r\n\r\n", &[200], Requests(1, &["2\r\nhi\r\n"], &["x-trailer"])),
        case("empty chunked body", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", &[200], Requests(1, &["content-length: 0\r\n"], &["transfer-encoding"])),
        case("chunk size overflow", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nx\r\n0\r\n\r\n", &[400], Nothing),
        case("chunk size with a plus", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n", &[400], Nothing),
        case("chunk size not hex", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", &[400], Nothing),
        // The first chunk looked whole, so it went; the upstream connection is then closed.
        case("chunk data longer than its size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n", &[400], Cut),
        case("chunked body over the body limit", big_chunk, &[413], Nothing),
        // Request smuggling: CL.TE, TE.CL, TE.TE (RFC 9112 §6.1, §6.3, §11.2).
        case("CL.TE: chunked wins, the rest is never read", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", &[200], Requests(1, &["content-length: 0\r\n"], &["smuggled"])),
        case("TE.CL: chunked wins", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", &[200], Requests(1, &["transfer-encoding: chunked\r\n\r\n8\r\nsmuggled\r\n0\r\n\r\n"], &["content-length"])),
        case("TE.TE: xchunked", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", &[400], Nothing),
        case("TE.TE: space before the colon", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", &[400], Nothing),
        case("TE.TE: a second, unknown coding line", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n", &[400], Nothing),
        case("TE.TE: chunked then identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", &[400], Nothing),
        case("TE.TE: gzip below chunked (§6.1: 501)", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", &[501], Nothing),
        case("TE.TE: chunked twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", &[400], Nothing),
        case("TE.TE: quoted chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n", &[400], Nothing),
        case("TE.TE: folded onto the previous line", "POST / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", &[400], Nothing),
        case("TE.TE: tab before the value", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", &[200], Requests(1, &["transfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"], &[])),
        case("TE.TE: upper case", "POST / HTTP/1.1\r\nHost: a\r\nTRANSFER-ENCODING: CHUNKED\r\n\r\n2\r\nhi\r\n0\r\n\r\n", &[200], Requests(1, &["transfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"], &[])),
        case("Transfer-Encoding in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", &[400], Nothing),
        // §9.3 and §11: pipelining; what follows a refused request is never read.
        case("two pipelined requests", "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", &[200, 200], Requests(2, &["get /1 ", "get /2 "], &[])),
        case("a request pipelined after a refused one", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n", &[400], Nothing),
        case("a request pipelined after a body", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", &[200, 200], Requests(2, &["\r\n\r\nhello", "get /2 "], &[])),
        // RFC 9110 §10.1.1 and §7.8: Expect and Upgrade.
        case("Expect: 100-continue", "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", &[200], Requests(1, &["\r\n\r\nhello"], &[])),
        case("Upgrade on a POST is not asked for upstream", "POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello", &[200], Requests(1, &["\r\n\r\nhello"], &["upgrade"])),
    ]
}

#[tokio::test]
async fn the_conformance_table() {
    let cases = table();
    assert!(cases.len() >= 50, "{} cases", cases.len());
    let proxy = ServiceProxy::new("svc", settings());
    let (addr, _stop) = start_proxy(proxy.clone()).await;
    let mut failures = Vec::new();
    let mut failed_cases = 0;
    for case in &cases {
        let before = failures.len();
        let (backend, recorded) = recording_backend().await;
        proxy.set_route(route_of(vec![Backend::new("rec", backend)]));
        let (statuses, closed) = answers_to(addr, &case.send, case.answers.len()).await;
        if statuses != case.answers {
            failures.push(format!(
                "{}: answers {statuses:?}, want {:?}",
                case.name, case.answers
            ));
        }
        if case.answers.last().is_none_or(|s| *s >= 400) && !closed {
            failures.push(format!(
                "{}: the connection stayed open after a refusal",
                case.name
            ));
        }
        // The proxy's answer came after the backend's, so what reached it is recorded; a cut
        // connection is closed before the answer is written, seen by the backend soon after.
        if matches!(case.backend, Cut) {
            let deadline = Instant::now() + Duration::from_secs(3);
            while !recorded.lock().unwrap().closed && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let rec = recorded.lock().unwrap();
        let raw = String::from_utf8_lossy(&rec.raw).to_lowercase();
        if rec.unparseable {
            failures.push(format!(
                "{}: the backend got bytes it cannot read: {raw:?}",
                case.name
            ));
        }
        match &case.backend {
            Nothing if !rec.raw.is_empty() => {
                failures.push(format!("{}: the backend got {raw:?}", case.name))
            }
            Nothing => {}
            Cut if rec.requests != 0 || !rec.closed => failures.push(format!(
                "{}: the backend got a whole request, or its connection stayed open: {raw:?}",
                case.name
            )),
            Cut => {}
            Requests(n, must, must_not) => {
                if rec.requests != *n {
                    failures.push(format!(
                        "{}: the backend got {} requests: {raw:?}",
                        case.name, rec.requests
                    ));
                }
                for m in must.iter().filter(|m| !raw.contains(*m)) {
                    failures.push(format!(
                        "{}: the backend did not get {m:?}: {raw:?}",
                        case.name
                    ));
                }
                for m in must_not.iter().filter(|m| raw.contains(*m)) {
                    failures.push(format!("{}: the backend got {m:?}: {raw:?}", case.name));
                }
            }
        }
        if failures.len() > before {
            failed_cases += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{failed_cases} of {} cases failed:\n{}",
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn underscored_headers_can_be_dropped_or_refused() {
    for (underscores, answer, seen) in [
        (UnderscoreHeaders::Drop, 200u16, false),
        (UnderscoreHeaders::Refuse, 400, false),
        (UnderscoreHeaders::Forward, 200, true),
    ] {
        let mut s = settings();
        s.limits.underscores = underscores;
        let proxy = ServiceProxy::new("svc", s);
        let (backend, recorded) = recording_backend().await;
        proxy.set_route(route_of(vec![Backend::new("rec", backend)]));
        let (addr, _stop) = start_proxy(proxy).await;
        let request = b"GET / HTTP/1.1\r\nHost: a\r\nX_User: admin\r\nX-Kept: 1\r\n\r\n";
        let (statuses, _) = answers_to(addr, request, 1).await;
        assert_eq!(statuses, [answer], "{underscores:?}");
        let raw = String::from_utf8_lossy(&recorded.lock().unwrap().raw).to_lowercase();
        assert_eq!(raw.contains("x_user"), seen, "{underscores:?}: {raw:?}");
        if answer == 200 {
            assert!(raw.contains("x-kept: 1"), "{raw:?}");
        }
    }
}

#[tokio::test]
async fn head_limits_are_per_service() {
    let mut s = settings();
    s.limits.max_header_bytes = 16 * 1024;
    s.limits.max_headers = 20;
    s.limits.max_request_line = 1024;
    let proxy = ServiceProxy::new("svc", s);
    let (backend, _) = recording_backend().await;
    proxy.set_route(route_of(vec![Backend::new("rec", backend)]));
    let (addr, _stop) = start_proxy(proxy).await;
    let header = |n: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "b".repeat(n)
        )
    };
    assert_eq!(
        answers_to(addr, header(15 * 1024).as_bytes(), 1).await.0,
        [200]
    );
    assert_eq!(
        answers_to(addr, header(17 * 1024).as_bytes(), 1).await.0,
        [431]
    );
    let fields = |n: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
            (1..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
        )
    };
    assert_eq!(answers_to(addr, fields(20).as_bytes(), 1).await.0, [200]);
    assert_eq!(answers_to(addr, fields(21).as_bytes(), 1).await.0, [431]);
    let line = |n: usize| format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "p".repeat(n));
    assert_eq!(answers_to(addr, line(900).as_bytes(), 1).await.0, [200]);
    assert_eq!(answers_to(addr, line(1100).as_bytes(), 1).await.0, [414]);
}

#[tokio::test]
async fn a_chunk_gone_bad_after_the_first_gets_400_and_the_upstream_connection_is_closed() {
    let (backend, recorded) = recording_backend().await;
    let proxy = ServiceProxy::new("svc", settings());
    let b = Backend::new("rec", backend);
    proxy.set_route(route_of(vec![b.clone()]));
    let (addr, _stop) = start_proxy(proxy).await;
    let (statuses, closed) = answers_to(
        addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\nzz\r\n",
        1,
    )
    .await;
    assert_eq!((statuses, closed), (vec![400], true));
    // The head and the good chunk went, then the connection closed: never reused for another.
    assert_eq!(recorded.lock().unwrap().requests, 0);
    assert_eq!(b.idle_connections(), 0);
}

#[tokio::test]
async fn a_chunked_body_that_never_starts_gets_408_and_reaches_nobody() {
    let (backend, recorded) = recording_backend().await;
    let proxy = ServiceProxy::new("svc", settings());
    proxy.set_route(route_of(vec![Backend::new("rec", backend)]));
    let (addr, _stop) = start_proxy(proxy).await;
    // The head, then nothing for longer than the upstream timeout (500 ms in tests).
    let (statuses, closed) = answers_to(
        addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        1,
    )
    .await;
    assert_eq!((statuses, closed), (vec![408], true));
    assert!(recorded.lock().unwrap().raw.is_empty());
}
