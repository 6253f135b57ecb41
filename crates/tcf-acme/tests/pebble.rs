//! Against a real ACME server: Let's Encrypt's Pebble (Debian package `pebble`) on loopback,
//! validating HTTP-01 by fetching from our proxy's plain listener, its DNS answered by
//! `pebble-challtestsrv` (every name is 127.0.0.1). A certificate is obtained and served, a
//! request through it verified against Pebble's root; a forced renewal reaches a new
//! connection while one opened before keeps working.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tcf_acme::{AcmeClient, AcmeState, Http, Validation};
use tcf_proxy::plain::Challenges;
use tcf_proxy::tls::{CertStore, LoadedCert};

/// Stops the servers the test started, by pid, whatever happens.
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Pebble serves its API over HTTPS: a certificate for 127.0.0.1 from a CA of ours.
fn pebble_listener_cert(dir: &Path) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("api-ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("api.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("api.key"), key.serialize_pem()).unwrap();
}

/// Pebble validating HTTP-01 on `plain_port` and TLS-ALPN-01 on `tls_port`.
fn start_pebble(dir: &Path, plain_port: u16, tls_port: u16) -> (Servers, u16, u16) {
    let (api, management, dns, dns_management) =
        (free_port(), free_port(), free_port(), free_port());
    pebble_listener_cert(dir);
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{api}"),
        "managementListenAddress": format!("127.0.0.1:{management}"),
        "certificate": dir.join("api.pem"),
        "privateKey": dir.join("api.key"),
        "httpPort": plain_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false
    }});
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    let dns_server = Command::new("pebble-challtestsrv")
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .args(["-dns01", &format!("127.0.0.1:{dns}")])
        .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
        .args(["-management", &format!("127.0.0.1:{dns_management}")])
        .stdout(log("challtestsrv.log"))
        .stderr(log("challtestsrv.err"))
        .spawn()
        .expect("pebble-challtestsrv (Debian package pebble; scripts/test installs it)");
    let mut servers = Servers(vec![dns_server]);
    let pebble = Command::new("pebble")
        .arg("-config")
        .arg(dir.join("pebble.json"))
        .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
        // No random sleeps before validating.
        .env("PEBBLE_VA_NOSLEEP", "1")
        .stdin(Stdio::null())
        .stdout(log("pebble.log"))
        .stderr(log("pebble.err"))
        .spawn()
        .expect("pebble (Debian package pebble; scripts/test installs it)");
    servers.0.push(pebble);
    (servers, api, management)
}

/// A client of Pebble's API once it answers.
async fn wait_for_pebble(dir: &Path, directory: &str) -> Http {
    let http = Http::new(Some(&dir.join("api-ca.pem"))).unwrap();
    let started = Instant::now();
    loop {
        match http.request(http::Method::GET, directory, None).await {
            Ok(a) if a.status == 200 => return http,
            other => {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "pebble did not start: {:?} {}",
                    other.err(),
                    std::fs::read_to_string(dir.join("pebble.err")).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                    let proto = req
                        .headers()
                        .get("x-forwarded-proto")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        format!("hello over {proto}"),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn client_config(roots_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A verified HTTPS connection to `acme.test` at `addr`: its sender and the leaf it was given.
async fn connect(addr: SocketAddr, roots: &[u8]) -> (Sender, CertificateDer<'static>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_config(roots))
        .connect(ServerName::try_from("acme.test").unwrap(), tcp)
        .await
        .expect("a certificate that verifies against Pebble's root");
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (sender, leaf)
}

async fn get(sender: &mut Sender) -> String {
    sender.ready().await.unwrap();
    let req = hyper::Request::get("/")
        .header("host", "acme.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_pebble_is_served_and_renewed_without_dropping_a_connection() {
    let dir = std::env::temp_dir().join(format!("tcf-acme-pebble-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Our plain listener is where Pebble validates HTTP-01.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_port = plain.local_addr().unwrap().port();
    let (_servers, api, management) = start_pebble(&dir, plain_port, free_port());
    let challenges = Arc::new(Challenges::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(tcf_proxy::plain::serve_plain(
        plain,
        443,
        challenges.clone(),
        stop_rx.clone(),
    ));

    let directory = format!("https://127.0.0.1:{api}/dir");
    let ca = dir.join("api-ca.pem");
    let http = wait_for_pebble(&dir, &directory).await;

    // The account key is kept in the state directory, owner-only.
    let state = AcmeState::new(&dir.join("state"), "web");
    let account_key = state.account_key().unwrap();
    let mut client =
        AcmeClient::connect(&directory, Some(&ca), &account_key, Some("ops@acme.test"))
            .await
            .unwrap();
    client.poll = Duration::from_millis(200);
    let domains = vec!["acme.test".to_string()];
    let issued = client
        .obtain(&domains, Validation::Http01(&challenges))
        .await
        .unwrap();
    state.save(&issued).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for f in ["account.key", "cert.pem", "key.pem"] {
        let mode = std::fs::metadata(state.dir.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let first = state.load().expect("the saved certificate loads");
    assert_eq!(first.facts.names, domains);

    // Serve it: the HTTPS side of a service, its certificate store holding what ACME gave.
    let store = CertStore::new(vec![first]);
    let settings = tcf_proxy::Settings {
        tls: Some(tcf_proxy::tls::server_config(store.clone(), true).unwrap()),
        ..Default::default()
    };
    let proxy = tcf_proxy::ServiceProxy::new("web", settings);
    let backend = tcf_proxy::Backend::new("b", upstream().await);
    let pool = tcf_proxy::Pool::new("blue", "v1", &tcf_proxy::Settings::default());
    pool.set_backends(vec![backend]);
    proxy.set_route(tcf_proxy::Route::single(pool));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = listener.local_addr().unwrap();
    tokio::spawn(tcf_proxy::serve(
        listener,
        proxy,
        stop_rx,
        Duration::from_secs(1),
    ));

    // Verified against Pebble's root, fetched from its management interface.
    let root = http
        .request(
            http::Method::GET,
            &format!("https://127.0.0.1:{management}/roots/0"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(root.status, 200);
    let (mut old, old_leaf) = connect(https, &root.body).await;
    assert_eq!(get(&mut old).await, "hello over https");

    // A forced renewal: a new certificate, on new connections only.
    let renewed = client
        .obtain(&domains, Validation::Http01(&challenges))
        .await
        .unwrap();
    state.save(&renewed).unwrap();
    let loaded: LoadedCert = tcf_acme::loaded(&renewed, &state).unwrap();
    store.replace(vec![loaded]);
    let (mut new, new_leaf) = connect(https, &root.body).await;
    assert_ne!(
        new_leaf, old_leaf,
        "the new connection has the renewed certificate"
    );
    assert_eq!(get(&mut new).await, "hello over https");
    for _ in 0..3 {
        assert_eq!(get(&mut old).await, "hello over https");
    }
    let _ = stop_tx.send(true);
    drop(_servers);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_is_answered_by_the_https_listener_without_a_plain_port() {
    let dir = std::env::temp_dir().join(format!("tcf-acme-alpn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Only the HTTPS listener, bound first: Pebble validates TLS-ALPN-01 on its port; its
    // HTTP-01 port is one where nothing listens.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = listener.local_addr().unwrap();
    let (_servers, api, management) = start_pebble(&dir, free_port(), https.port());
    let directory = format!("https://127.0.0.1:{api}/dir");
    let http = wait_for_pebble(&dir, &directory).await;

    // A service with no certificate yet: handshakes fail until ACME gives it one.
    let store = CertStore::new(Vec::new());
    let settings = tcf_proxy::Settings {
        tls: Some(tcf_proxy::tls::server_config(store.clone(), true).unwrap()),
        ..Default::default()
    };
    let proxy = tcf_proxy::ServiceProxy::new("web", settings);
    let pool = tcf_proxy::Pool::new("blue", "v1", &tcf_proxy::Settings::default());
    pool.set_backends(vec![tcf_proxy::Backend::new("b", upstream().await)]);
    proxy.set_route(tcf_proxy::Route::single(pool));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(tcf_proxy::serve(
        listener,
        proxy,
        stop_rx,
        Duration::from_secs(1),
    ));

    let state = AcmeState::new(&dir.join("state"), "web");
    let mut client = AcmeClient::connect(
        &directory,
        Some(&dir.join("api-ca.pem")),
        &state.account_key().unwrap(),
        None,
    )
    .await
    .unwrap();
    client.poll = Duration::from_millis(200);
    let domains = vec!["acme.test".to_string(), "www.acme.test".to_string()];
    let issued = client
        .obtain(&domains, Validation::TlsAlpn01(&store))
        .await
        .expect("Pebble validates both names over TLS-ALPN-01 against our listener");
    let cert = tcf_acme::loaded(&issued, &state).unwrap();
    assert_eq!(cert.facts.names, domains);
    store.replace(vec![cert]);

    // Served and verified against Pebble's root, like an HTTP-01 certificate.
    let root = http
        .request(
            http::Method::GET,
            &format!("https://127.0.0.1:{management}/roots/0"),
            None,
        )
        .await
        .unwrap();
    let (mut sender, _) = connect(https, &root.body).await;
    assert_eq!(get(&mut sender).await, "hello over https");

    // The challenge certificates are gone with the order: a handshake offering acme-tls/1
    // now gets nothing.
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAnything))
    .with_no_client_auth();
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("acme.test").unwrap(), tcp)
        .await;
    assert!(handshake.is_err(), "no challenge pending: no certificate");
    let _ = stop_tx.send(true);
    drop(_servers);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Accepts any server certificate: only for looking at a handshake that must fail anyway.
#[derive(Debug)]
struct AcceptAnything;

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
