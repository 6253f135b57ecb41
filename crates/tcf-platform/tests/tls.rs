//! HTTPS end to end on the real binary: certificates from files (made here by rcgen), SNI,
//! HSTS, the plain listener's redirect, `tls status` (an expired certificate flagged, exit 2),
//! a replaced file picked up without a restart, `tls reload`.

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tcf platform test CA");
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn write_leaf(
    dir: &Path,
    file: &str,
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    expired: bool,
) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    // Key first, then the certificate, each renamed into place.
    std::fs::write(dir.join("tmp"), key.serialize_pem()).unwrap();
    std::fs::rename(dir.join("tmp"), dir.join(format!("{file}.key"))).unwrap();
    std::fs::write(dir.join("tmp"), cert.pem()).unwrap();
    std::fs::rename(dir.join("tmp"), dir.join(format!("{file}.pem"))).unwrap();
}

/// curl over HTTPS to `name` (resolved to loopback), verified against the test CA: status
/// line and headers, then the body.
fn curl_https(dir: &Path, name: &str, port: u16, path: &str) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "--cacert"])
        .arg(dir.join("ca.pem"))
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .expect("curl must be installed (scripts/test installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn tls_status(p: &Platform) -> (Option<i32>, Value) {
    let out = p.cli(&["tls", "status", "--format", "json"]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), v)
}

#[test]
fn https_from_files_status_redirect_and_reload() {
    let (https, plain) = (free_port(), free_port());
    let config = format!(
        r#"[platform]
name = "tlstest"
state_dir = ".tcf"

[services.web]
command = ["tcf-demo"]
version = "v1"
listen = "127.0.0.1:{https}"
http_listen = "127.0.0.1:{plain}"
hsts = "max-age=600"
tls = {{ cert = "web.pem", key = "web.key", certificates = [{{ cert = "old.pem", key = "old.key" }}] }}
health = {{ path = "/health", interval = "300ms" }}
"#
    );
    let mut p = Platform::new(&config);
    let dir = p.dir.path().to_path_buf();
    let ca = ca();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    write_leaf(&dir, "web", &ca, &["a.test"], false);
    write_leaf(&dir, "old", &ca, &["old.test"], true);
    p.up();
    p.wait_for("the service healthy", Duration::from_secs(30), all_healthy);

    // HTTPS with the right certificate for the name asked (curl verifies it), HSTS added.
    let (ok, text) = curl_https(&dir, "a.test", https, "/");
    assert!(ok, "{text}");
    assert!(
        text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/2 200"),
        "{text}"
    );
    assert!(
        text.contains("strict-transport-security: max-age=600"),
        "{text}"
    );
    // The expired certificate is served for its name, and curl refuses it.
    let (ok, text) = curl_https(&dir, "old.test", https, "/");
    assert!(!ok && text.contains("expired"), "{text}");

    // The plain listener sends clients to HTTPS with path and query kept.
    let (code, _) = http_get(&format!("127.0.0.1:{plain}"), "/x/y?z=1").unwrap();
    assert_eq!(code, 301);
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{redirect_url}",
            "-H",
            "Host: a.test",
        ])
        .arg(format!("http://127.0.0.1:{plain}/x/y?z=1"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("https://a.test:{https}/x/y?z=1")
    );

    // tls status: both certificates, the expired one flagged, exit 2.
    let (code, status) = tls_status(&p);
    assert_eq!(code, Some(2), "{status}");
    let certs = status["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 2, "{status}");
    assert_eq!(certs[0]["service"], "web");
    assert_eq!(certs[0]["hostnames"], serde_json::json!(["a.test"]));
    assert_eq!(certs[0]["issuer"], "tcf platform test CA");
    assert_eq!(certs[0]["expired"], false);
    assert_eq!(certs[0]["source"], "file");
    assert!(certs[0]["days_left"].as_i64().unwrap() > 365);
    assert_eq!(certs[1]["hostnames"], serde_json::json!(["old.test"]));
    assert_eq!(certs[1]["expired"], true);
    assert_eq!(certs[1]["not_after"], "2021-01-01T00:00:00Z");
    assert!(certs[1]["days_left"].as_i64().unwrap() < 0);
    let table = p.cli(&["tls", "status"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("EXPIRED"));

    // A replaced certificate file is picked up without a restart or a command.
    write_leaf(&dir, "web", &ca, &["a.test", "c.test"], false);
    wait_until(
        "the new certificate in tls status",
        Duration::from_secs(20),
        || {
            tls_status(&p).1["certificates"][0]["hostnames"]
                == serde_json::json!(["a.test", "c.test"])
        },
    );
    let (ok, text) = curl_https(&dir, "c.test", https, "/");
    assert!(ok, "{text}");
    let events = p.cli(&["events", "--format", "json", "--limit", "50"]);
    assert!(String::from_utf8_lossy(&events.stdout).contains("tls.reloaded"));

    // tls reload reloads now; a key that does not match fails it and keeps what is served.
    let out = p.cli(&["tls", "reload"]);
    assert!(out.status.success(), "{out:?}");
    std::fs::copy(dir.join("old.key"), dir.join("web.key")).unwrap();
    let out = p.cli(&["tls", "reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match"),
        "{out:?}"
    );
    let (ok, text) = curl_https(&dir, "c.test", https, "/");
    assert!(ok, "{text}");
    let (_, status) = tls_status(&p);
    assert!(status["certificates"][0]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("does not match")));

    let out = p.cli(&["down"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
}

fn client_config(ca_pem: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

fn version_over_https(dir: &Path, port: u16) -> String {
    let (ok, text) = curl_https(dir, "a.test", port, "/");
    assert!(ok, "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str::<Value>(body.trim()).unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Deploys under load over HTTPS (keep-alive TLS connections, verified against the test
/// CA): blue-green, rolling and a rollback drop no request.
#[test]
fn deploys_under_https_load_drop_no_request() {
    use common::load::{Load, Transport};
    use common::sequence::{deploy_config_from, run};
    let https = free_port();
    let config = deploy_config_from(
        &format!(
            r#"[platform]
name = "tlsdeploy"
state_dir = ".tcf"

[services.gateway]
command = ["tcf-demo"]
version = "v1"
instances = 2
listen = "127.0.0.1:{https}"
tls = {{ cert = "web.pem", key = "web.key" }}
health = {{ path = "/health", interval = "300ms" }}
"#
        ),
        &[],
    );
    let mut p = Platform::new(&config);
    let dir = p.dir.path().to_path_buf();
    let ca = ca();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    write_leaf(&dir, "web", &ca, &["a.test"], false);
    p.up();
    p.wait_for("the service healthy", Duration::from_secs(30), all_healthy);
    assert_eq!(version_over_https(&dir, https), "v1");

    let transport = Transport::Tls(client_config(&ca.pem()), "a.test".into());
    let load = Load::start_over(&format!("127.0.0.1:{https}"), 6, transport);
    std::thread::sleep(Duration::from_millis(300));
    let (code, out, _) = run(&p, &["prod", "deploy", "v2"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(version_over_https(&dir, https), "v2");
    let (code, out, _) = run(&p, &["prod", "deploy", "v3", "--strategy", "rolling"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(version_over_https(&dir, https), "v3");
    let (code, out, _) = run(&p, &["prod", "rollback", "v2"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(version_over_https(&dir, https), "v2");
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();

    assert!(
        report.errors.is_empty(),
        "failed requests: {:?}",
        report.errors
    );
    let failed: Vec<_> = report
        .samples
        .iter()
        .filter(|s| s.status != 200 || s.by_proxy)
        .collect();
    assert!(failed.is_empty(), "failed answers: {failed:?}");
    for v in ["v1", "v2", "v3"] {
        assert!(
            report.samples.iter().any(|s| s.version == v),
            "no answer from {v} under load"
        );
    }
    let out = p.cli(&["down"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
}

/// ACME end to end: `up` obtains a certificate from a real Pebble (HTTP-01 validated on our
/// plain listener), serves it verified against Pebble's root, keeps account and certificate
/// owner-only in the state directory; `tls renew` gets a new one.
#[test]
fn certificates_from_acme_are_obtained_at_start_and_renewed_on_demand() {
    use common::pebble::Pebble;
    let (https, plain) = (free_port(), free_port());
    let mut p = Platform::new("");
    let dir = p.dir.path().to_path_buf();
    let pebble = Pebble::start(&dir, plain);
    let config = format!(
        r#"[platform]
name = "acmetest"
state_dir = ".tcf"

[services.web]
command = ["tcf-demo"]
version = "v1"
listen = "127.0.0.1:{https}"
http_listen = "127.0.0.1:{plain}"
tls = {{ acme = {{ directory = "{}", email = "ops@acme.test", domains = ["acme.test"], ca = "pebble-api-ca.pem" }} }}
health = {{ path = "/health", interval = "300ms" }}
"#,
        pebble.directory()
    );
    std::fs::write(&p.config, config).unwrap();
    p.up();
    p.wait_for("the service healthy", Duration::from_secs(30), all_healthy);
    let mut serial = String::new();
    wait_until("a certificate from ACME", Duration::from_secs(60), || {
        let (_, status) = tls_status(&p);
        let cert = &status["certificates"][0];
        serial = cert["serial"].as_str().unwrap_or_default().to_string();
        cert["source"] == "acme" && cert["hostnames"] == serde_json::json!(["acme.test"])
    });
    std::fs::write(dir.join("ca.pem"), pebble.root_pem()).unwrap();
    let (ok, text) = curl_https(&dir, "acme.test", https, "/");
    assert!(ok, "{text}");
    assert!(text.contains("\"version\":\"v1\""), "{text}");
    use std::os::unix::fs::PermissionsExt;
    for f in ["account.key", "cert.pem", "key.pem"] {
        let path = dir.join(".tcf/acme/web").join(f);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }

    let out = p.cli(&["tls", "renew"]);
    assert!(out.status.success(), "{out:?}");
    let (code, status) = tls_status(&p);
    assert_eq!(code, Some(0), "{status}");
    let cert = &status["certificates"][0];
    assert_ne!(cert["serial"].as_str().unwrap(), serial, "{status}");
    assert!(
        cert["last_attempt"].is_string() && cert["last_error"].is_null(),
        "{status}"
    );
    let (ok, text) = curl_https(&dir, "acme.test", https, "/");
    assert!(ok, "{text}");
    let events = p.cli(&["events", "--format", "json", "--limit", "50"]);
    assert!(String::from_utf8_lossy(&events.stdout).contains("tls.renewed"));

    let out = p.cli(&["down"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
}

/// An ACME server that cannot be reached: the daemon still starts, the failure is an event
/// and `tls status` shows nothing served; `tls renew` fails with the reason (exit 1).
#[test]
fn a_failing_acme_renewal_is_an_event_and_an_error() {
    let (https, plain, closed) = (free_port(), free_port(), free_port());
    let config = format!(
        r#"[platform]
name = "acmefail"
state_dir = ".tcf"

[services.web]
command = ["tcf-demo"]
version = "v1"
listen = "127.0.0.1:{https}"
http_listen = "127.0.0.1:{plain}"
tls = {{ acme = {{ directory = "http://127.0.0.1:{closed}/dir", domains = ["acme.test"] }} }}
health = {{ path = "/health", interval = "300ms" }}
"#
    );
    let mut p = Platform::new(&config);
    p.up();
    p.wait_for("the service healthy", Duration::from_secs(30), all_healthy);
    wait_until(
        "a tls.renewal_failed event",
        Duration::from_secs(20),
        || {
            let events = p.cli(&["events", "--format", "json", "--limit", "50"]);
            String::from_utf8_lossy(&events.stdout).contains("tls.renewal_failed")
        },
    );
    let (code, status) = tls_status(&p);
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status["certificates"], serde_json::json!([]), "{status}");
    let out = p.cli(&["tls", "renew"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("were not renewed"),
        "{out:?}"
    );
    let out = p.cli(&["down"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
}
