//! `prod audit` with the real binary: offline on an insecure config (findings by ID, exit code
//! by --fail-on, ignores), and online against a real daemon (its listeners, its instances'
//! uids, its socket's mode), with SARIF written to a file.

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const PASSWORD: &str = "Zq9-not-a-real-password-41";

/// The example platform with a plain-text database password in the gateway's env.
fn insecure_config() -> String {
    let text = example_config();
    let with_env = text.replacen(
        "[services.gateway]\n",
        &format!("[services.gateway]\nenv = {{ DB_PASSWORD = \"{PASSWORD}\" }}\n"),
        1,
    );
    assert_ne!(text, with_env, "the example's [services.gateway] moved");
    with_env
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn finding<'a>(report: &'a Value, id: &str) -> Option<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
}

fn check_status<'a>(report: &'a Value, id: &str) -> &'a Value {
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in the report"));
    &check["status"]
}

fn open_state_dir(p: &Platform) -> std::path::PathBuf {
    let state = p.dir.path().join(".tcf");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    state
}

#[test]
fn offline_audit_finds_the_password_and_the_open_state_dir() {
    let p = Platform::new(&insecure_config());
    let state = open_state_dir(&p);

    let out = p.cli(&["prod", "audit", "--format", "json", "--fail-on", "high"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));
    let report = json_of(&out);
    assert_eq!(report["schema_version"], 1);
    assert_eq!(report["mode"], "offline");
    assert!(report["offline_reason"]
        .as_str()
        .unwrap()
        .contains("no daemon answers"));

    let secret = finding(&report, "TCF-SEC-001").expect("TCF-SEC-001");
    assert_eq!(secret["severity"], "high");
    assert_eq!(
        secret["location"]["resource"],
        "service gateway, env DB_PASSWORD"
    );
    assert!(secret["location"]["line"].as_u64().unwrap() > 0);
    let dir = finding(&report, "TCF-FS-001").expect("TCF-FS-001");
    assert_eq!(dir["location"]["file"], state.display().to_string());
    assert!(dir["detail"].as_str().unwrap().contains("0755"));

    // Without the daemon, its checks are not run, with the reason, and never passes.
    for id in ["TCF-NET-002", "TCF-NET-003", "TCF-PROC-001", "TCF-API-001"] {
        assert_eq!(check_status(&report, id), "not_run", "{id}");
    }
    assert!(report["summary"]["not_run"].as_u64().unwrap() >= 4);
    assert!(stderr.contains("offline audit"), "{stderr}");
    assert!(stderr.contains("--fail-on high"), "{stderr}");

    // The table says so too.
    let table = p.cli(&["prod", "audit"]);
    assert_eq!(table.status.code(), Some(0), "no --fail-on: exit 0");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("Mode: OFFLINE"), "{text}");
    assert!(
        text.contains("Not checked (never counted as a pass)"),
        "{text}"
    );
    assert!(!text.contains(PASSWORD));

    // Fixed: nothing at high or above (the online checks still not run, not failing).
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Encrypted backups, with the identity at hand so a restore-verify can run.
    let identity = age::x25519::Identity::generate();
    let hardened = Platform::new(&format!(
        "{}\n[backup]\nrepository = \"backups\"\nrecipients = [\"{}\"]\nidentity = \"backup-key.txt\"\nschedule = \"0 3 * * *\"\n\n[backup.sources.state]\nkind = \"directory\"\npath = \"data\"\n",
        example_config(),
        identity.to_public()
    ));
    {
        use age::secrecy::ExposeSecret;
        let key = hardened.dir.path().join("backup-key.txt");
        std::fs::write(&key, format!("{}\n", identity.to_string().expose_secret())).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::create_dir_all(hardened.dir.path().join(".tcf")).unwrap();
    std::fs::set_permissions(
        hardened.dir.path().join(".tcf"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    // Backups proven restorable (TCF-BAK-004): one taken and restore-verified.
    std::fs::create_dir_all(hardened.dir.path().join("data")).unwrap();
    std::fs::write(hardened.dir.path().join("data/a"), "a").unwrap();
    let out = hardened.cli(&[
        "prod",
        "audit",
        "--format",
        "json",
        "--check",
        "TCF-BAK-004",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(finding(&report, "TCF-BAK-004").is_some(), "{report:#}");
    let created = hardened.cli(&["backup", "create", "--format", "json"]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let id = serde_json::from_slice::<Value>(&created.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let verified = hardened.cli(&["backup", "verify", &id, "--level", "restore"]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let out = hardened.cli(&["prod", "audit", "--format", "json", "--fail-on", "medium"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn ignored_findings_disappear_until_their_ignore_expires() {
    let p = Platform::new(&insecure_config());
    open_state_dir(&p);
    let ignore = p.dir.path().join("audit-ignore.toml");
    std::fs::write(
        &ignore,
        r#"
[[ignore]]
id = "TCF-SEC-001"
resource = "service gateway, env DB_PASSWORD"
statement = "a test database"
expires = "2999-12-31"

[[ignore]]
id = "TCF-FS-001"
statement = "expired long ago"
expires = "2000-01-01"
"#,
    )
    .unwrap();
    let ignore_arg = ignore.to_str().unwrap();
    let out = p.cli(&["prod", "audit", "--format", "json", "--ignore", ignore_arg]);
    assert_eq!(out.status.code(), Some(0));
    let report = json_of(&out);
    assert!(finding(&report, "TCF-SEC-001").is_none());
    assert_eq!(report["ignored"][0]["id"], "TCF-SEC-001");
    assert_eq!(report["ignored"][0]["statement"], "a test database");
    // The expired ignore hides nothing and is reported.
    assert!(finding(&report, "TCF-FS-001").is_some());
    assert_eq!(report["expired_ignores"][0]["id"], "TCF-FS-001");
    assert!(String::from_utf8_lossy(&out.stderr).contains("expired on 2000-01-01"));

    // With the state dir left out by --skip, nothing at high remains: exit 0.
    let out = p.cli(&[
        "prod",
        "audit",
        "--ignore",
        ignore_arg,
        "--skip",
        "TCF-FS-001",
        "TCF-FS-002",
        "--fail-on",
        "high",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // --check narrows the report to what was asked.
    let out = p.cli(&["prod", "audit", "--format", "json", "--check", "SEC"]);
    let report = json_of(&out);
    let ids: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![
            "TCF-SEC-001",
            "TCF-SEC-002",
            "TCF-SEC-003",
            "TCF-SEC-004",
            "TCF-SEC-005",
            "TCF-SEC-006",
            "TCF-SEC-007"
        ]
    );

    // Usage errors: exit 2.
    for args in [
        &["prod", "audit", "--check", "TCF-NOPE-001"][..],
        &["prod", "audit", "--fail-on", "severe"][..],
        &["prod", "audit", "--ignore", "/nonexistent/ignore.toml"][..],
    ] {
        assert_eq!(p.cli(args).status.code(), Some(2), "{args:?}");
    }
    let bad = p.dir.path().join("bad-ignore.toml");
    std::fs::write(
        &bad,
        "[[ignore]]\nid = \"TCF-SEC-001\"\nstatement = \"no expiry\"\n",
    )
    .unwrap();
    let out = p.cli(&["prod", "audit", "--ignore", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expires"));
}

/// The structure SARIF 2.1.0 requires of what code-scanning tools read.
fn assert_valid_sarif(log: &Value) {
    assert_eq!(log["version"], "2.1.0");
    let run = &log["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().expect("rules");
    assert!(!rules.is_empty());
    for rule in rules {
        assert!(rule["id"].as_str().unwrap().starts_with("TCF-"));
        assert!(rule["shortDescription"]["text"].is_string());
        assert!(rule["properties"]["security-severity"].is_string());
    }
    for result in run["results"].as_array().expect("results") {
        let id = result["ruleId"].as_str().unwrap();
        assert!(rules.iter().any(|r| r["id"] == id));
        assert!(["note", "warning", "error"].contains(&result["level"].as_str().unwrap()));
        assert!(result["message"]["text"].is_string());
        assert!(!result["locations"].as_array().unwrap().is_empty());
        assert!(result["partialFingerprints"].is_object());
    }
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

#[test]
fn online_audit_reads_the_running_platform() {
    let mut p = Platform::new(&example_config());
    p.up();
    p.wait_for("all healthy", Duration::from_secs(60), all_healthy);
    let status = p.status().unwrap();
    let instances: usize = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["instances"].as_array().unwrap().len())
        .sum();

    // A deployer token without an expiry, and one with: only the first is a finding.
    assert!(p
        .cli(&["tokens", "create", "ci", "--role", "deployer"])
        .status
        .success());
    assert!(p
        .cli(&[
            "tokens",
            "create",
            "grafana",
            "--role",
            "viewer",
            "--expires",
            "30d"
        ])
        .status
        .success());

    let out = p.cli(&["prod", "audit", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let report = json_of(&out);
    assert_eq!(report["mode"], "online", "{report:#}");
    let never_expire: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "TCF-AUTH-001")
        .collect();
    assert_eq!(never_expire.len(), 1, "{report:#}");
    assert_eq!(never_expire[0]["location"]["resource"], "token ci");
    assert_eq!(check_status(&report, "TCF-AUTH-002"), "pass", "{report:#}");
    // No HTTPS service here: nothing to expire, a pass that really read the daemon's list.
    assert_eq!(check_status(&report, "TCF-TLS-001"), "pass", "{report:#}");
    // Every public address is bound by the daemon and nothing else: a pass, really checked.
    assert_eq!(check_status(&report, "TCF-NET-002"), "pass", "{report:#}");
    assert_eq!(check_status(&report, "TCF-NET-003"), "pass", "{report:#}");
    assert_eq!(check_status(&report, "TCF-API-001"), "pass", "{report:#}");
    // The instances run as the user the test runs as: root in CI, which is a finding.
    let root_findings = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "TCF-PROC-001")
        .count();
    if euid() == 0 {
        assert_eq!(root_findings, instances, "{report:#}");
        assert_eq!(check_status(&report, "TCF-PROC-001"), "fail");
    } else {
        assert_eq!(root_findings, 0);
        assert_eq!(check_status(&report, "TCF-PROC-001"), "pass");
    }

    // SARIF to a file, the format from its extension.
    let sarif = p.dir.path().join("audit.sarif");
    let out = p.cli(&["prod", "audit", "--output", sarif.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    let log: Value = serde_json::from_str(&std::fs::read_to_string(&sarif).unwrap()).unwrap();
    assert_valid_sarif(&log);
    let junit = p.dir.path().join("audit.xml");
    let out = p.cli(&["prod", "audit", "--output", junit.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.starts_with("<?xml") && xml.contains("<testcase"),
        "{xml}"
    );

    // Someone opens the API socket to everyone: a critical finding, and --fail-on says so.
    let socket = p.dir.path().join(".tcf/tcf.sock");
    assert!(Path::new(&socket).exists());
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = p.cli(&["prod", "audit", "--format", "json", "--fail-on", "critical"]);
    assert_eq!(out.status.code(), Some(1));
    let report = json_of(&out);
    let open = finding(&report, "TCF-API-001").expect("TCF-API-001");
    assert_eq!(open["severity"], "critical");
    assert!(open["detail"].as_str().unwrap().contains("0666"));
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();

    let out = p.cli(&["down"]);
    assert!(out.status.success());
    p.wait_daemon_exit(Duration::from_secs(30));
}

#[test]
fn online_audit_finds_an_instance_listening_beyond_its_port() {
    // A service whose command also starts a second demo on a port of its own choosing (PORT=0):
    // a listener the proxy knows nothing about, in the instance's process group.
    let demo = bin().with_file_name("tcf-demo");
    // A dependency the config declares, and a listener nobody declares: both this test's.
    let dependency = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dep_port = dependency.local_addr().unwrap().port();
    let unexpected = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unexpected_port = unexpected.local_addr().unwrap().port();
    let config = format!(
        "{}\n[services.leaky]\ncommand = [\"sh\", \"-c\", \"PORT=0 '{demo}' & exec '{demo}'\"]\nversion = \"v1\"\nlisten = \"127.0.0.1:{port}\"\n\n[dependencies.cache]\nkind = \"tcp\"\naddress = \"127.0.0.1:{dep_port}\"\n",
        example_config(),
        demo = demo.display(),
        port = free_port()
    );
    let mut p = Platform::new(&config);
    p.up();
    p.wait_for("all healthy", Duration::from_secs(60), all_healthy);
    let leaky_port = p.status().unwrap()["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "leaky")
        .unwrap()["instances"][0]["port"]
        .as_u64()
        .unwrap();
    let report = json_of(&p.cli(&["prod", "audit", "--format", "json", "--check", "NET"]));
    assert_eq!(report["mode"], "online");
    let extra: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "TCF-NET-003")
        .collect();
    assert_eq!(extra.len(), 1, "{report:#}");
    let resource = extra[0]["location"]["resource"].as_str().unwrap();
    assert!(
        resource.starts_with("service leaky, instance"),
        "{resource}"
    );
    assert!(!resource.ends_with(&format!(":{leaky_port}")), "{resource}");
    // The daemon's own listeners still match the config.
    assert_eq!(check_status(&report, "TCF-NET-002"), "pass", "{report:#}");

    // TCF-NET-005, every listener of the host: this test's undeclared one is reported with
    // this test's pid (info: loopback only); the declared dependency, the daemon's addresses
    // and the instances' (the leaky extra listener is TCF-NET-003's) are not. Other
    // processes of this machine may be reported too: only ours are asserted.
    let host: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "TCF-NET-005")
        .collect();
    let at = |port: u64| {
        host.iter()
            .filter(|f| {
                f["location"]["uri"]
                    .as_str()
                    .is_some_and(|u| u.ends_with(&format!(":{port}")))
            })
            .collect::<Vec<_>>()
    };
    let ours = at(u64::from(unexpected_port));
    assert_eq!(ours.len(), 1, "{report:#}");
    assert_eq!(
        ours[0]["location"]["uri"],
        format!("tcp://127.0.0.1:{unexpected_port}")
    );
    assert_eq!(ours[0]["severity"], "info");
    let detail = ours[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("(pid {}, uid ", std::process::id())),
        "{detail}"
    );
    assert!(at(u64::from(dep_port)).is_empty(), "{report:#}");
    assert!(at(leaky_port).is_empty(), "{report:#}");
    let status = p.status().unwrap();
    for service in status["services"].as_array().unwrap() {
        let listen = service["listen"].as_str().unwrap_or_default();
        if let Some((_, port)) = listen.rsplit_once(':') {
            assert!(at(port.parse().unwrap()).is_empty(), "{listen}: {report:#}");
        }
    }
    drop((dependency, unexpected));
    let out = p.cli(&["down"]);
    assert!(out.status.success());
    p.wait_daemon_exit(Duration::from_secs(30));
}

/// An rcgen certificate for `name`, valid from `from_days` to `to_days` around now, signed by
/// `ca` (cert, key, params); PEM (cert, key).
fn signed_cert(
    name: &str,
    from_days: i64,
    to_days: i64,
    ca: &(rcgen::Certificate, rcgen::KeyPair, rcgen::CertificateParams),
) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let day = Duration::from_secs(86_400);
    let now = std::time::SystemTime::now();
    let at = |d: i64| {
        if d >= 0 {
            now + day * d as u32
        } else {
            now - day * (-d) as u32
        }
    };
    params.not_before = at(from_days).into();
    params.not_after = at(to_days).into();
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::from_params(&ca.2, &ca.1);
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// `--comprehensive` against a running insecure platform on the real engine: two HTTPS services
/// serving an expired and a soon-expiring certificate (from a CA the audit is told to trust, so
/// only the dates are wrong), and a container running as root with the Docker socket mounted.
/// The TLS and container checks find exactly that, in the files and in what is served.
#[test]
fn comprehensive_audit_handshakes_and_inspects_the_containers() {
    common::docker::require_engine();
    let run_id = std::process::id();
    let repo = format!("tcf-audit-test-{run_id}/demo");
    let label = format!("tcf.test={run_id}");
    let _images = common::docker::build_demo_images(&repo, &label, &["v1"]);
    let platform = format!("tcf-audit-test-{run_id}");
    let _objects = common::docker::PlatformObjects {
        platform: platform.clone(),
    };

    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Audit Test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = (ca_cert, ca_key, ca_params);

    let (secure_port, renewing_port, box_port) = (free_port(), free_port(), free_port());
    let config = format!(
        r#"{example}
[services.secure]
command = ["tcf-demo"]
version = "v1"
listen = "127.0.0.1:{secure_port}"
hsts = "max-age=60"
tls = {{ cert = "expired.pem", key = "expired.key" }}

[services.renewing]
command = ["tcf-demo"]
version = "v1"
listen = "127.0.0.1:{renewing_port}"
hsts = "max-age=60"
tls = {{ cert = "soon.pem", key = "soon.key" }}

[services.box]
runtime = "docker"
image = "{repo}:{{version}}"
container_port = 8080
version = "v1"
listen = "127.0.0.1:{box_port}"
volumes = ["/var/run/docker.sock:/var/run/docker.sock"]
"#,
        example = example_config().replace("name = \"tcf\"", &format!("name = \"{platform}\"")),
    );
    let mut p = Platform::new(&config);
    for (name, from, to, file) in [
        ("secure.test", -90, -2, "expired"),
        ("renewing.test", -60, 3, "soon"),
    ] {
        let (cert, key) = signed_cert(name, from, to, &ca);
        std::fs::write(p.dir.path().join(format!("{file}.pem")), cert).unwrap();
        let key_file = p.dir.path().join(format!("{file}.key"));
        std::fs::write(&key_file, key).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let ca_file = p.dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.0.pem()).unwrap();
    p.up();
    p.wait_for("all healthy", Duration::from_secs(120), all_healthy);

    let out = std::process::Command::new(bin())
        .args(["prod", "audit", "--comprehensive", "--format", "json"])
        .args(["--check", "TLS", "CTR", "--config"])
        .arg(&p.config)
        .env("SSL_CERT_FILE", &ca_file)
        .env_remove("TCF_ENV")
        .output()
        .unwrap();
    let report = json_of(&out);
    assert_eq!(report["mode"], "online", "{report:#}");
    let found: std::collections::BTreeSet<(String, String, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let location = &f["location"];
            let where_ = match (location["uri"].as_str(), location["file"].as_str()) {
                (Some(uri), _) if uri.starts_with("docker://") => {
                    // Containers are named by the runtime: the service is what is stable.
                    let resource = location["resource"].as_str().unwrap();
                    assert!(resource.contains("(service box)"), "{resource}");
                    "container of box".to_string()
                }
                (Some(uri), _) => uri.to_string(),
                (None, Some(file)) => Path::new(file)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .to_string(),
                _ => location["resource"].as_str().unwrap().to_string(),
            };
            (
                f["id"].as_str().unwrap().to_string(),
                where_,
                f["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let s =
        |id: &str, at: &str, severity: &str| (id.to_string(), at.to_string(), severity.to_string());
    let expected: std::collections::BTreeSet<(String, String, String)> = [
        s("TCF-TLS-001", "expired.pem", "critical"),
        s("TCF-TLS-001", "soon.pem", "high"),
        s(
            "TCF-TLS-001",
            &format!("tls://127.0.0.1:{secure_port}"),
            "critical",
        ),
        s(
            "TCF-TLS-001",
            &format!("tls://127.0.0.1:{renewing_port}"),
            "high",
        ),
        s("TCF-CTR-001", "container of box", "medium"),
        s("TCF-CTR-002", "container of box", "low"),
        s("TCF-CTR-003", "container of box", "medium"),
        s("TCF-CTR-004", "container of box", "critical"),
    ]
    .into_iter()
    .collect();
    assert_eq!(found, expected, "{report:#}");
    // Every check ran: the handshakes reached both listeners, the engine answered.
    for check in report["checks"].as_array().unwrap() {
        assert_ne!(check["status"], "not_run", "{check:#}");
    }
    // SARIF names the served certificates by tls:// URI.
    let sarif = p.dir.path().join("audit.sarif");
    let out = std::process::Command::new(bin())
        .args([
            "prod",
            "audit",
            "--comprehensive",
            "--check",
            "TLS",
            "--output",
        ])
        .arg(&sarif)
        .arg("--config")
        .arg(&p.config)
        .env("SSL_CERT_FILE", &ca_file)
        .env_remove("TCF_ENV")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log: Value = serde_json::from_str(&std::fs::read_to_string(&sarif).unwrap()).unwrap();
    assert_valid_sarif(&log);
    let text = log.to_string();
    assert!(
        text.contains(&format!("tls://127.0.0.1:{secure_port}")),
        "{text}"
    );

    let out = p.cli(&["down"]);
    assert!(out.status.success());
    p.wait_daemon_exit(Duration::from_secs(30));
}

/// A zip archive (deflated) of `files`.
fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, text) in files {
        writer.start_file(*name, options).unwrap();
        std::io::Write::write_all(&mut writer, text.as_bytes()).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// A mirror of OSV's bucket on loopback: `GET /ECOSYSTEM/all.zip`, HTTP/1.1, one request per
/// connection. Serves until the returned guard is dropped.
struct Mirror {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mirror {
    fn start(archives: Vec<(String, Vec<u8>)>) -> Mirror {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let (stream, _) = match listener.accept() {
                    Ok(s) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                };
                stream.set_nonblocking(false).unwrap();
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                }
                let mut stream = stream;
                match archives.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\ncontent-type: application/zip\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(body);
                    }
                    None => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        );
                    }
                }
            }
        });
        Mirror {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn update_advisories_downloads_swaps_in_and_fails_offline() {
    let advisory = |id: &str, ecosystem: &str, name: &str, fixed: &str| {
        format!(
            r#"{{"id":"{id}","summary":"test advisory","affected":[{{"package":{{"ecosystem":"{ecosystem}","name":"{name}"}},"ranges":[{{"type":"SEMVER","events":[{{"introduced":"0"}},{{"fixed":"{fixed}"}}]}}]}}]}}"#
        )
    };
    let crates = advisory("RUSTSEC-2099-0001", "crates.io", "smallvec", "1.6.1");
    let npm = advisory("GHSA-test-0001", "npm", "left-pad", "1.3.1");
    let pypi = advisory("PYSEC-2099-1", "PyPI", "requests", "2.32.0");
    let gems = advisory("GHSA-test-0002", "RubyGems", "rack", "3.0.1");
    let mirror = Mirror::start(vec![
        (
            "/crates.io/all.zip".into(),
            zip_of(&[("RUSTSEC-2099-0001.json", &crates)]),
        ),
        (
            "/npm/all.zip".into(),
            zip_of(&[("GHSA-test-0001.json", &npm)]),
        ),
        (
            "/PyPI/all.zip".into(),
            zip_of(&[("PYSEC-2099-1.json", &pypi)]),
        ),
        (
            "/RubyGems/all.zip".into(),
            zip_of(&[("GHSA-test-0002.json", &gems)]),
        ),
    ]);

    let config = format!(
        "[platform]\nname = \"adv\"\nstate_dir = \".tcf\"\n\n[services.api]\ncommand = [\"./app/api\"]\nversion = \"v1\"\nlisten = \"127.0.0.1:{}\"\n",
        free_port()
    );
    let p = Platform::new(&config);
    let app = p.dir.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("api"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(app.join("api"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        app.join("Cargo.lock"),
        "version = 3\n[[package]]\nname = \"smallvec\"\nversion = \"1.6.0\"\n",
    )
    .unwrap();

    let url = format!("http://127.0.0.1:{}", mirror.port);
    let out = p.cli(&[
        "prod",
        "audit",
        "--update-advisories",
        "--advisories-url",
        &url,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("crates.io: 1 advisories"), "{stderr}");
    assert!(stderr.contains("4 advisories in"), "{stderr}");
    let dir = p.dir.path().join(".tcf/advisories");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "GHSA-test-0001.json",
            "GHSA-test-0002.json",
            "PYSEC-2099-1.json",
            "RUSTSEC-2099-0001.json"
        ]
    );
    // Nothing left beside it (the staging directory was renamed in).
    let leftovers: Vec<_> = std::fs::read_dir(p.dir.path().join(".tcf"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The audit reads it without being told where, and says how old it is.
    let out = p.cli(&[
        "prod",
        "audit",
        "--comprehensive",
        "--check",
        "DEP",
        "--format",
        "json",
    ]);
    let report = json_of(&out);
    let dep = finding(&report, "TCF-DEP-001").expect("TCF-DEP-001");
    assert!(
        dep["location"]["resource"]
            .as_str()
            .unwrap()
            .contains("smallvec@1.6.0"),
        "{dep:#}"
    );
    let advisories = report["advisories"].to_string();
    assert!(advisories.contains("updated 0 days ago"), "{advisories}");

    // Offline: a clear error, exit 2, and the database as it was.
    drop(mirror);
    let out = p.cli(&[
        "prod",
        "audit",
        "--update-advisories",
        "--advisories-url",
        &url,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot download"), "{stderr}");
    assert!(stderr.contains("--advisories-url"), "{stderr}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 4);
}

/// The CLI against a remote daemon only (`--host`, a token, the pinned fingerprint; no config).
fn remote_cli(url: &str, fingerprint: &str, token: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .args(args)
        .args(["--host", url, "--fingerprint", fingerprint])
        .env("TCF_TOKEN", token)
        .env_remove("TCF_CONFIG")
        .current_dir(std::env::temp_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn create_token(p: &Platform, name: &str, role: &str) -> String {
    let out = p.cli(&["tokens", "create", name, "--role", role]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn set_secret(p: &Platform, name: &str, value: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(bin())
        .args(["secrets", "set", name, "--config"])
        .arg(&p.config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{value}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `prod audit --host`: the remote daemon runs the checks on its host and answers the JSON
/// report; the CLI applies its ignores and renders every format from it. Only an admin may
/// ask. The platform has a secret nothing uses (also found offline, from the store), three
/// admin tokens, a burst of refused authentications from 127.0.0.1 and a dependency whose
/// port listens on every interface.
#[test]
fn remote_audit_over_the_api_needs_an_admin_and_renders_every_format() {
    const ORPHAN_VALUE: &str = "orphan-value-Zk3-not-real";
    let dependency = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let dep_port = dependency.local_addr().unwrap().port();
    let listen = free_port();
    let config = format!(
        "{}\n[daemon]\nlisten = \"127.0.0.1:{listen}\"\n\n[dependencies.cache]\nkind = \"tcp\"\naddress = \"127.0.0.1:{dep_port}\"\n\n[audit]\nfailed_auth_burst = 3\n",
        example_config()
    );
    let mut p = Platform::new(&config);
    set_secret(&p, "orphan", ORPHAN_VALUE);

    // Offline, the unused secret is found in the store itself, which the audit reads without
    // changing anything: the state directory opened up keeps its mode and is reported.
    let state = p.dir.path().join(".tcf");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o750)).unwrap();
    let out = p.cli(&[
        "prod",
        "audit",
        "--format",
        "json",
        "--check",
        "SEC",
        "TCF-FS-001",
    ]);
    let report = json_of(&out);
    assert_eq!(report["mode"], "offline");
    let orphan = finding(&report, "TCF-SEC-005").expect("TCF-SEC-005 offline");
    assert_eq!(orphan["location"]["resource"], "secret orphan");
    assert_eq!(check_status(&report, "TCF-SEC-006"), "pass", "{report:#}");
    assert!(finding(&report, "TCF-FS-001").is_some(), "{report:#}");
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o750, "the audit changed the state directory's mode");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();

    p.up();
    let status = p.wait_for("all healthy", Duration::from_secs(60), all_healthy);
    let fingerprint = status["api"]["fingerprint_sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("status names the remote API: {status:#}"))
        .to_string();
    let url = format!("https://127.0.0.1:{listen}");
    let admin = create_token(&p, "ops-1", "admin");
    create_token(&p, "ops-2", "admin");
    create_token(&p, "ops-3", "admin");
    let viewer = create_token(&p, "watcher", "viewer");

    // Three refused authentications from 127.0.0.1: a burst by this config's [audit].
    for _ in 0..3 {
        let out = remote_cli(&url, &fingerprint, "tcfp_guess", &["status"]);
        assert!(!out.status.success());
    }

    // A viewer may not: the report maps the platform's weak points.
    let out = remote_cli(
        &url,
        &fingerprint,
        &viewer,
        &["prod", "audit", "--format", "json"],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("admin"), "{stderr}");

    let out = remote_cli(
        &url,
        &fingerprint,
        &admin,
        &["prod", "audit", "--format", "json"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(ORPHAN_VALUE));
    let report = json_of(&out);
    assert_eq!(report["mode"], "online", "{report:#}");
    assert_eq!(
        report["target"]["config"],
        p.config.display().to_string(),
        "the daemon's own config"
    );
    let found = |id: &str| {
        finding(&report, id).unwrap_or_else(|| panic!("{id} not found: {report:#}"))["location"]
            ["resource"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(found("TCF-SEC-005"), "secret orphan");
    assert_eq!(found("TCF-AUTH-003"), "admin tokens");
    assert_eq!(found("TCF-AUTH-004"), "address 127.0.0.1");
    assert_eq!(found("TCF-NET-004"), "dependency cache");
    // The daemon's own view: its listeners, its socket.
    assert_eq!(check_status(&report, "TCF-NET-002"), "pass", "{report:#}");
    assert_eq!(check_status(&report, "TCF-API-001"), "pass", "{report:#}");

    // The local audit (through the socket) sees the same.
    let local = json_of(&p.cli(&[
        "prod",
        "audit",
        "--format",
        "json",
        "--check",
        "AUTH",
        "TCF-SEC-005",
        "TCF-NET-004",
    ]));
    assert_eq!(local["mode"], "online", "{local:#}");
    for id in ["TCF-SEC-005", "TCF-AUTH-003", "TCF-AUTH-004", "TCF-NET-004"] {
        let here = finding(&local, id).unwrap_or_else(|| panic!("{id} locally: {local:#}"));
        assert_eq!(here["location"]["resource"], found(id), "{id}");
    }

    // Every format, rendered here from the daemon's report; ignores apply here too.
    let dir = tempfile::tempdir().unwrap();
    let sarif = dir.path().join("audit.sarif");
    let out = remote_cli(
        &url,
        &fingerprint,
        &admin,
        &["prod", "audit", "--output", sarif.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log: Value = serde_json::from_str(&std::fs::read_to_string(&sarif).unwrap()).unwrap();
    assert_valid_sarif(&log);
    assert!(log["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["ruleId"] == "TCF-AUTH-004"));
    let out = remote_cli(
        &url,
        &fingerprint,
        &admin,
        &["prod", "audit", "--format", "junit"],
    );
    let xml = String::from_utf8_lossy(&out.stdout);
    assert!(
        xml.contains("<testsuites") && xml.contains("TCF-NET-004"),
        "{xml}"
    );
    let out = remote_cli(&url, &fingerprint, &admin, &["prod", "audit"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("Mode: online"), "{table}");
    assert!(table.contains("TCF-AUTH-003"), "{table}");

    let ignore = dir.path().join("ignore.toml");
    std::fs::write(
        &ignore,
        "[[ignore]]\nid = \"TCF-AUTH-003\"\nstatement = \"three operators on call\"\nexpires = \"2999-01-01\"\n",
    )
    .unwrap();
    let out = remote_cli(
        &url,
        &fingerprint,
        &admin,
        &[
            "prod",
            "audit",
            "--format",
            "json",
            "--check",
            "AUTH",
            "--ignore",
            ignore.to_str().unwrap(),
            "--fail-on",
            "high",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "TCF-AUTH-004 is high");
    let report = json_of(&out);
    assert!(finding(&report, "TCF-AUTH-003").is_none(), "{report:#}");
    assert_eq!(report["ignored"][0]["id"], "TCF-AUTH-003");
    assert_eq!(
        report["checks"].as_array().unwrap().len(),
        4,
        "--check AUTH only"
    );

    // What needs the client's files is refused with a remote daemon.
    let out = remote_cli(
        &url,
        &fingerprint,
        &admin,
        &["prod", "audit", "--advisories", "/nonexistent"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("local audit only"));

    let out = p.cli(&["down"]);
    assert!(out.status.success());
    p.wait_daemon_exit(Duration::from_secs(30));
    drop(dependency);
}
