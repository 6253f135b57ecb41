//! HTTPS termination: SNI, certificate replacement with connections open, HTTP/2 next to
//! HTTP/1.1, HSTS and X-Forwarded-Proto, with certificates made by rcgen.

use super::*;
use crate::tls::{server_config, CertStore, FileCerts};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::{Path, PathBuf};
use tokio_rustls::client::TlsStream;

pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub(crate) pem: String,
}

pub(crate) fn test_ca() -> TestCa {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tcf test CA");
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let pem = issuer.pem();
    TestCa { issuer, pem }
}

/// A leaf for `names` signed by `ca`: (certificate chain PEM, key PEM).
pub(crate) fn leaf(ca: &TestCa, names: &[&str], expired: bool) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub(crate) fn write_pair(
    dir: &Path,
    name: &str,
    (cert, key): &(String, String),
) -> (PathBuf, PathBuf) {
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    // Written aside and renamed, as an operator's tooling (or ours, for ACME) would.
    std::fs::write(dir.join("tmp"), cert).unwrap();
    std::fs::rename(dir.join("tmp"), &c).unwrap();
    std::fs::write(dir.join("tmp"), key).unwrap();
    std::fs::rename(dir.join("tmp"), &k).unwrap();
    (c, k)
}

pub(crate) fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub(crate) async fn connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .unwrap()
}

fn peer_leaf(s: &TlsStream<tokio::net::TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// An upstream that answers with what reached it: the forwarded proto and host, the path.
/// A path starting with `/slow` is answered after [`SLOW_ANSWER`].
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    if req.uri().path().starts_with("/slow") {
                        tokio::time::sleep(SLOW_ANSWER).await;
                    }
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string()
                    };
                    let text = format!(
                        "{:?} proto={} host={} path={}",
                        req.version(),
                        h("x-forwarded-proto"),
                        h("host"),
                        req.uri()
                    );
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Several of the proxy's idle-check periods ([`CLIENT_IDLE`](crate::server::CLIENT_IDLE)).
const SLOW_ANSWER: Duration = Duration::from_millis(1500);

struct Https {
    addr: SocketAddr,
    store: Arc<CertStore>,
    files: FileCerts,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn https_proxy(pairs: Vec<(PathBuf, PathBuf)>) -> Https {
    https_proxy_with(pairs, settings()).await
}

async fn https_proxy_with(pairs: Vec<(PathBuf, PathBuf)>, mut s: Settings) -> Https {
    let files = FileCerts::new(pairs);
    let store = CertStore::new(files.load().unwrap());
    s.tls = Some(server_config(store.clone(), true).unwrap());
    s.hsts = Some(HeaderValue::from_static("max-age=60"));
    let proxy = ServiceProxy::new("web", s);
    proxy.set_route(route_of(vec![Backend::new("b", echo_upstream().await)]));
    let (addr, stop) = start_proxy(proxy).await;
    Https {
        addr,
        store,
        files,
        _stop: stop,
    }
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http1_over(stream: TlsStream<tokio::net::TcpStream>) -> H1 {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn send_h1(sender: &mut H1, host: &str, path: &str) -> (Response<()>, String) {
    sender.ready().await.unwrap();
    let req = Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let text = String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).to_string();
    (Response::from_parts(parts, ()), text)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tcf-proxy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn sni_picks_each_hostnames_certificate_and_answers_carry_https_and_hsts() {
    let dir = temp_dir("sni");
    let ca = test_ca();
    let a = leaf(&ca, &["a.test"], false);
    let b = leaf(&ca, &["b.test", "*.b.test"], false);
    let pairs = vec![write_pair(&dir, "a", &a), write_pair(&dir, "b", &b)];
    let https = https_proxy(pairs).await;
    let config = client_config(&ca.pem, &[b"http/1.1"]);
    for (name, expected) in [("a.test", &a.0), ("b.test", &b.0), ("x.b.test", &b.0)] {
        let stream = connect(https.addr, name, config.clone()).await;
        let served = peer_leaf(&stream);
        let wanted = {
            use rustls::pki_types::pem::PemObject;
            CertificateDer::from_pem_slice(expected.as_bytes()).unwrap()
        };
        assert_eq!(served, wanted, "certificate for {name}");
        let mut h1 = http1_over(stream).await;
        let (resp, text) = send_h1(&mut h1, name, "/p?q=1").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["strict-transport-security"], "max-age=60");
        assert_eq!(
            text,
            format!("HTTP/1.1 proto=https host={name} path=/p?q=1")
        );
    }
    let names: Vec<_> = https
        .store
        .certs()
        .iter()
        .map(|c| c.facts.names.clone())
        .collect();
    assert_eq!(
        names,
        vec![
            vec!["a.test".to_string()],
            vec!["b.test".into(), "*.b.test".into()]
        ]
    );
    assert_eq!(https.store.certs()[0].facts.issuer, "tcf test CA");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn replaced_files_reach_new_handshakes_while_open_connections_keep_going() {
    let dir = temp_dir("reload");
    let ca = test_ca();
    let first = leaf(&ca, &["a.test"], false);
    let https = https_proxy(vec![write_pair(&dir, "a", &first)]).await;
    let config = client_config(&ca.pem, &[b"http/1.1"]);
    let old = connect(https.addr, "a.test", config.clone()).await;
    let old_cert = peer_leaf(&old);
    let mut old = http1_over(old).await;
    assert_eq!(send_h1(&mut old, "a.test", "/1").await.0.status(), 200);
    // Nothing changed: nothing reloaded.
    assert!(!https.files.reload(&https.store, false).unwrap());

    let second = leaf(&ca, &["a.test"], false);
    write_pair(&dir, "a", &second);
    assert!(https.files.reload(&https.store, false).unwrap());
    // A new client (a resumed session would show the certificate of the session it resumes).
    let config = client_config(&ca.pem, &[b"http/1.1"]);
    let new = connect(https.addr, "a.test", config).await;
    let new_cert = peer_leaf(&new);
    assert_ne!(new_cert, old_cert);
    let mut new = http1_over(new).await;
    assert_eq!(send_h1(&mut new, "a.test", "/2").await.0.status(), 200);
    // The connection opened before the change still serves requests.
    for i in 0..3 {
        let (resp, text) = send_h1(&mut old, "a.test", &format!("/old{i}")).await;
        assert_eq!(resp.status(), 200, "{text}");
    }

    // A key that does not match its certificate is refused; the certificate in use stays.
    let other = leaf(&ca, &["a.test"], false);
    std::fs::write(dir.join("a.key"), &other.1).unwrap();
    let err = https.files.reload(&https.store, false).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(https.store.last_attempt().unwrap().error.is_some());
    let again = connect(https.addr, "a.test", client_config(&ca.pem, &[b"http/1.1"])).await;
    assert_eq!(peer_leaf(&again), new_cert);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_expired_certificate_is_loaded_and_shown_expired() {
    let dir = temp_dir("expired");
    let ca = test_ca();
    let (c, k) = write_pair(&dir, "old", &leaf(&ca, &["old.test"], true));
    let cert = crate::tls::LoadedCert::from_files(&c, &k).unwrap();
    assert_eq!(cert.facts.not_after, 1_609_459_200); // 2021-01-01T00:00:00Z
    assert!(cert.facts.not_after < crate::tls::unix_now());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn http2_and_http1_clients_share_a_service() {
    let dir = temp_dir("h2");
    let ca = test_ca();
    let https = https_proxy(vec![write_pair(&dir, "a", &leaf(&ca, &["a.test"], false))]).await;
    // HTTP/2 (ALPN h2) with several streams at once on one connection.
    let stream = connect(
        https.addr,
        "a.test",
        client_config(&ca.pem, &[b"h2", b"http/1.1"]),
    )
    .await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (h2, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut streams = Vec::new();
    for i in 0..8 {
        let mut h2 = h2.clone();
        streams.push(tokio::spawn(async move {
            let req = Request::get(format!("https://a.test/s{i}?x=1"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = h2.send_request(req).await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            assert_eq!(resp.headers()["strict-transport-security"], "max-age=60");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8_lossy(&body).to_string()
        }));
    }
    for (i, s) in streams.into_iter().enumerate() {
        // Forwarded upstream as HTTP/1.1, with the authority as Host.
        assert_eq!(
            s.await.unwrap(),
            format!("HTTP/1.1 proto=https host=a.test path=/s{i}?x=1")
        );
    }
    // An HTTP/1.1 client on the same service meanwhile.
    let h1 = connect(
        https.addr,
        "a.test",
        client_config(&ca.pem, &[b"h2", b"http/1.1"]),
    )
    .await;
    let mut h1 = http1_over_alpn_h1(h1, &ca, https.addr).await;
    assert_eq!(send_h1(&mut h1, "a.test", "/one").await.0.status(), 200);

    // curl, as a user would (--http2 over TLS, verified against the test CA).
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let port = https.addr.port();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&ca_file)
        .args(["--resolve", &format!("a.test:{port}:127.0.0.1")])
        .args([
            "-w",
            "\n%{http_version}",
            &format!("https://a.test:{port}/curl?z=2"),
        ])
        .output()
        .await
        .expect("curl must be installed (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text,
        format!("HTTP/1.1 proto=https host=a.test:{port} path=/curl?z=2\n2")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A client that offers only HTTP/1.1 gets HTTP/1.1 (the stream offered both: reconnect).
async fn http1_over_alpn_h1(
    offered_both: TlsStream<tokio::net::TcpStream>,
    ca: &TestCa,
    addr: SocketAddr,
) -> H1 {
    drop(offered_both);
    let stream = connect(addr, "a.test", client_config(&ca.pem, &[b"http/1.1"])).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    http1_over(stream).await
}

/// An HTTP/2 connection to a proxy whose upstream waits longer than the client idle check
/// (and has the time to), with a slow stream and a quick one sent at once.
async fn slow_and_quick_streams(name: &str) -> (Https, tokio::task::JoinHandle<(u16, String)>) {
    let dir = temp_dir(name);
    let ca = test_ca();
    let mut s = settings();
    s.upstream_timeout = SLOW_ANSWER * 4;
    let https = https_proxy_with(
        vec![write_pair(&dir, "a", &leaf(&ca, &["a.test"], false))],
        s,
    )
    .await;
    std::fs::remove_dir_all(&dir).unwrap();
    let stream = connect(https.addr, "a.test", client_config(&ca.pem, &[b"h2"])).await;
    let (h2, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let send = |path: &'static str| {
        let mut h2 = h2.clone();
        async move {
            let req = Request::get(format!("https://a.test{path}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = h2.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((
                status,
                String::from_utf8_lossy(&body.to_bytes()).to_string(),
            ))
        }
    };
    let slow = tokio::spawn({
        let slow = send("/slow");
        async move { slow.await.expect("the slow stream must complete") }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _) = send("/quick").await.unwrap();
    assert_eq!(status, 200);
    (https, slow)
}

#[tokio::test]
async fn an_h2_stream_that_ends_leaves_the_connection_busy_while_another_waits() {
    // The quick stream ended; the slow one waits upstream through several idle-check periods
    // with no new stream on the connection: the connection is not idle.
    let (_https, slow) = slow_and_quick_streams("h2-idle").await;
    let (status, body) = slow.await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "HTTP/1.1 proto=https host=a.test path=/slow")
    );
}

#[tokio::test]
async fn a_drain_lets_an_h2_stream_finish_after_another_ended() {
    let (https, slow) = slow_and_quick_streams("h2-drain").await;
    // The listener stops (a daemon stopping or handing over) while the slow stream waits.
    https._stop.send_replace(true);
    let (status, body) = slow.await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "HTTP/1.1 proto=https host=a.test path=/slow")
    );
}
