//! Let's Encrypt's test ACME server (Debian package `pebble`) on loopback, with
//! `pebble-challtestsrv` as its DNS (every name is 127.0.0.1), stopped by pid on drop.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Pebble {
    children: Vec<Child>,
    pub api: u16,
    pub management: u16,
    /// The CA of Pebble's own HTTPS listeners (its API), for `ca = PATH`.
    pub api_ca: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Pebble {
    /// Start Pebble validating HTTP-01 on `http_port` (our plain listener); files in `dir`.
    pub fn start(dir: &Path, http_port: u16) -> Pebble {
        let (api, management, dns, dns_management, tls_port) = (
            super::free_port(),
            super::free_port(),
            super::free_port(),
            super::free_port(),
            super::free_port(),
        );
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let api_ca = dir.join("pebble-api-ca.pem");
        std::fs::write(&api_ca, ca.pem()).unwrap();
        std::fs::write(dir.join("pebble-api.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("pebble-api.key"), key.serialize_pem()).unwrap();
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{api}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.join("pebble-api.pem"),
            "privateKey": dir.join("pebble-api.key"),
            "httpPort": http_port,
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
        let mut pebble = Pebble {
            children: vec![dns_server],
            api,
            management,
            api_ca,
        };
        let server = Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("pebble (Debian package pebble; scripts/test installs it)");
        pebble.children.push(server);
        let started = Instant::now();
        while pebble
            .fetch(&format!("https://127.0.0.1:{api}/dir"))
            .is_none()
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "pebble did not start: {}",
                std::fs::read_to_string(dir.join("pebble.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pebble
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.api)
    }

    /// GET over HTTPS trusting Pebble's API CA (rustls; a plain HTTP/1.0 exchange).
    pub fn fetch(&self, url: &str) -> Option<Vec<u8>> {
        use rustls::pki_types::pem::PemObject;
        use std::io::{Read, Write};
        let rest = url.strip_prefix("https://127.0.0.1:")?;
        let (port, path) = rest.split_at(rest.find('/')?);
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&self.api_ca).ok()?;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.ok()?).ok()?;
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").ok()?;
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).ok()?;
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().ok()?)).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        write!(tls, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut answer = Vec::new();
        // A server that closes without close_notify still sent the whole answer.
        let _ = tls.read_to_end(&mut answer);
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
        answer
            .starts_with(b"HTTP/1.0 200")
            .then(|| answer[split + 4..].to_vec())
            .or_else(|| {
                answer
                    .starts_with(b"HTTP/1.1 200")
                    .then(|| answer[split + 4..].to_vec())
            })
    }

    /// The root Pebble issues under (it makes a new one each start).
    pub fn root_pem(&self) -> Vec<u8> {
        self.fetch(&format!("https://127.0.0.1:{}/roots/0", self.management))
            .expect("pebble's root from its management interface")
    }
}
