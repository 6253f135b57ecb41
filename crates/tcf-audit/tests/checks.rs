//! Every check on a deliberately insecure platform directory and on a hardened one, both made
//! here (certificates made on the fly and served by a stand-in for the daemon's listeners, the
//! API socket, the daemon's tokens): the insecure one yields exactly the expected IDs, the
//! hardened one nothing at medium or above.

mod schema;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tcf_audit::checks::{self, Inputs, LiveToken, LiveView, StoredSecret};
use tcf_audit::{advisories::Database, rules, Ignores, Meta, Outcome, Report, Severity};

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

const INSECURE: &str = r#"
[platform]
name = "insecure"
state_dir = "state"

[hooks]
pre_deploy = ["sh", "hooks/pre.sh"]

[services.api]
command = ["./app/bin/api"]
version = "v1"
listen = "0.0.0.0:{api_port}"
max_request_body = "2GiB"
env = { DB_PASSWORD = "letmein", DATABASE_URL = "postgres://app:hunter2-long-enough@db/app", DB_PASSWORD_FILE = "/run/secrets/db", RUST_LOG = "info" }

[services.worker]
runtime = "docker"
image = "worker:{version}"
container_port = 8080
version = "v1"
listen = "127.0.0.1:{worker_port}"
volumes = ["/var/run/docker.sock:/var/run/docker.sock"]

[services.worker.health]
path = "/up"

[dependencies.cache]
kind = "redis"
address = "127.0.0.1:{dep_port}"

# HTTPS with an expired certificate, and with one that expires in a few days.
[services.shop]
command = ["true"]
version = "v1"
listen = "127.0.0.1:{shop_port}"
hsts = "max-age=31536000"
tls = { cert = "tls/shop.pem", key = "tls/shop.key" }

[services.shop.health]
path = "/up"

[services.billing]
command = ["true"]
version = "v1"
listen = "127.0.0.1:{billing_port}"
hsts = "max-age=31536000"
tls = { cert = "tls/billing.pem", key = "tls/billing.key" }

[services.billing.health]
path = "/up"
"#;

/// An insecure [backup]: unencrypted, unscheduled, a literal weak password.
const INSECURE_BACKUP: &str = r#"
[backup]
repository = "backups"

[backup.sources.db]
kind = "postgres"
url = "postgres://app@127.0.0.1:5432/"
password = "admin"
"#;

const HARDENED: &str = r#"
[platform]
name = "hardened"
state_dir = "state"

[defaults.health]
path = "/health"

[services.api]
command = ["./app/bin/api"]
version = "v1"
listen = "127.0.0.1:{api_port}"
env = { DB_PASSWORD_FILE = "/run/secrets/db", RUST_LOG = "info" }

[services.worker]
runtime = "docker"
image = "worker:{version}"
container_port = 8080
version = "v1"
listen = "127.0.0.1:{worker_port}"
user = "1000:1000"
read_only = true
memory = "256MiB"

# HTTPS with a certificate valid for a year from a CA the roots hold.
[services.web]
command = ["true"]
version = "v1"
listen = "127.0.0.1:{web_port}"
hsts = "max-age=31536000; includeSubDomains"
tls = { cert = "tls/web.pem", key = "tls/web.key" }

[dependencies.cache]
kind = "redis"
address = "127.0.0.1:{dep_port}"

[backup]
repository = "backups"
recipients = ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]
schedule = "0 3 * * *"

[backup.sources.db]
kind = "postgres"
url = "postgres://app@127.0.0.1:5432/"
password = "${secret:pg_password}"
"#;

const OSV: &str = r#"[{"id":"RUSTSEC-2099-0001","summary":"memory corruption in smallvec",
"affected":[{"package":{"ecosystem":"crates.io","name":"smallvec"},
"ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"1.6.1"}]}]}],
"database_specific":{"severity":"CRITICAL"}},
{"id":"PYSEC-2099-0002","summary":"arbitrary code execution in full_load",
"affected":[{"package":{"ecosystem":"PyPI","name":"PyYAML"},
"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"5.4"}]}]}]},
{"id":"GHSA-2099-rack-0003","summary":"denial of service in multipart parsing",
"affected":[{"package":{"ecosystem":"RubyGems","name":"rack"},
"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"2.2.6.4"}]}]}],
"database_specific":{"severity":"MODERATE"}}]"#;

struct Fixture {
    config: tcf_config::Config,
    osv: std::path::PathBuf,
    /// The dependency's listener: on every interface (insecure) or loopback only.
    _dependency: std::net::TcpListener,
    /// What the store holds (never a value).
    secrets: Vec<StoredSecret>,
    /// The daemon's stand-in: listens where the services do (serving HTTPS with their
    /// certificates); stopped by pid when the fixture is dropped.
    daemon: Daemon,
    /// The API socket (mode 0666 insecure, 0600 hardened) and where it is.
    _socket: std::os::unix::net::UnixListener,
    socket: std::path::PathBuf,
    /// The remote API's tokens as the daemon would report them.
    tokens: Vec<LiveToken>,
    // Last: removed after the daemon that reads its certificates is stopped.
    _dir: tempfile::TempDir,
}

const DAY_MS: i64 = 86_400_000;

/// The CA of every certificate the fixtures make, made once per test binary and put in
/// `SSL_CERT_FILE` (the roots the audit trusts) before any check reads it: nothing else in
/// this binary sets that variable.
fn test_ca() -> &'static Made {
    static CA: std::sync::OnceLock<Made> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        let ca = rcgen_cert("Audit Test CA", -10, 3650, None, true);
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        let ca_file = dir.path().join("ca.pem");
        write(&ca_file, &ca.0.pem(), 0o644);
        std::env::set_var("SSL_CERT_FILE", &ca_file);
        ca
    })
}

/// Stands in for the daemon's listeners: binds each `HOST` (an ephemeral port) or
/// `HOST|CERT|KEY` (the same, serving TLS 1.2+ with that pair), prints the ports on one line,
/// and runs until killed. The online checks read its sockets from /proc as they would the
/// daemon's.
const DAEMON: &str = r#"
import socket, ssl, sys, threading
bound = []
for spec in sys.argv[1:]:
    parts = spec.split("|")
    s = socket.socket()
    s.bind((parts[0], 0))
    s.listen(64)
    bound.append((s, parts))
print(" ".join(str(s.getsockname()[1]) for s, _ in bound), flush=True)

def handshake(ctx, conn):
    try:
        tls = ctx.wrap_socket(conn, server_side=True)
        tls.close()
    except Exception:
        conn.close()

def serve(s, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=handshake, args=(ctx, conn), daemon=True).start()

for s, parts in bound:
    if len(parts) == 3:
        threading.Thread(target=serve, args=(s, parts[1], parts[2]), daemon=True).start()
threading.Event().wait()
"#;

struct Daemon {
    child: std::process::Child,
}

impl Daemon {
    /// Start it on `binds` (see [`DAEMON`]); the ports, in order.
    fn start(binds: &[String]) -> (Daemon, Vec<u16>) {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(DAEMON)
            .args(binds)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (Debian's python3 package) runs");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ports: Vec<u16> = line
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        let daemon = Daemon { child };
        assert_eq!(
            ports.len(),
            binds.len(),
            "the daemon's stand-in did not start"
        );
        (daemon, ports)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fixture(config_text: &str, insecure: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    chmod(root, 0o755);
    let dependency =
        std::net::TcpListener::bind(if insecure { "0.0.0.0:0" } else { "127.0.0.1:0" }).unwrap();
    let dep_port = dependency.local_addr().unwrap().port();
    // The HTTPS services' certificates, made now by the test CA: insecure, one that expired
    // yesterday (shop) and one that expires in 3 days (billing); hardened, one valid for a
    // year (web). Each service's daemon address is `HOST:{NAME_port}` in the config text.
    let ca = test_ca();
    let host_of = |name: &str| -> Option<String> {
        let at = config_text.find(&format!(":{{{name}_port}}\""))?;
        let start = config_text[..at].rfind('"')? + 1;
        Some(config_text[start..at].to_string())
    };
    let mut binds: Vec<(String, String)> = ["api", "worker"]
        .into_iter()
        .filter_map(|name| Some((name.to_string(), host_of(name)?)))
        .collect();
    for (name, from, to) in [("shop", -90, -1), ("billing", -60, 3), ("web", -1, 365)] {
        let Some(host) = host_of(name) else {
            continue;
        };
        let (cert, key, _) = rcgen_cert(&format!("{name}.test"), from, to, Some(ca), false);
        let (cert_file, key_file) = (
            root.join(format!("tls/{name}.pem")),
            root.join(format!("tls/{name}.key")),
        );
        write(&cert_file, &cert.pem(), 0o644);
        write(&key_file, &key.serialize_pem(), 0o600);
        binds.push((
            name.to_string(),
            format!("{host}|{}|{}", cert_file.display(), key_file.display()),
        ));
    }
    if root.join("tls").exists() {
        chmod(&root.join("tls"), 0o755);
    }
    let (daemon, ports) = Daemon::start(&binds.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>());
    let mut config_text = config_text.replace("{dep_port}", &dep_port.to_string());
    for ((name, _), port) in binds.iter().zip(&ports) {
        config_text = config_text.replace(&format!("{{{name}_port}}"), &port.to_string());
    }
    let config_path = root.join("tcf-platform.toml");
    write(
        &config_path,
        &config_text,
        if insecure { 0o666 } else { 0o644 },
    );
    write(
        &root.join("app/bin/api"),
        "#!/bin/sh\n",
        if insecure { 0o777 } else { 0o755 },
    );
    chmod(&root.join("app/bin"), 0o755);
    chmod(&root.join("app"), 0o755);
    write(
        &root.join("app/Cargo.lock"),
        &format!(
            "version = 3\n[[package]]\nname = \"smallvec\"\nversion = \"{}\"\n",
            if insecure { "1.6.0" } else { "1.13.2" }
        ),
        0o644,
    );
    // A Python and a Ruby part of the service, pinned (vulnerable in the insecure fixture).
    write(
        &root.join("app/requirements.txt"),
        &format!(
            "# pinned\nPyYAML=={}  # via -r requirements.in\nrequests>=2.0\n",
            if insecure { "5.3.1" } else { "6.0.1" }
        ),
        0o644,
    );
    write(
        &root.join("app/Gemfile.lock"),
        &format!(
            "GEM\n  remote: https://rubygems.org/\n  specs:\n    rack ({})\n\nDEPENDENCIES\n  rack\n",
            if insecure { "2.2.3" } else { "2.2.8" }
        ),
        0o644,
    );
    write(
        &root.join("hooks/pre.sh"),
        "true\n",
        if insecure { 0o666 } else { 0o755 },
    );
    chmod(&root.join("hooks"), 0o755);
    if insecure {
        // The service's own tree: a credential in its code (found), and the same in places
        // the scan skips (version control, build output, a binary, a large file).
        write(
            &root.join("app/src/settings.py"),
            "import os\nDEBUG = False\nDB_PASSWORD = \"pw-not-real-5531\"\nHOST = os.environ.get(\"HOST\")\n",
            0o644,
        );
        for skipped in ["app/.git/config", "app/target/debug/settings.py"] {
            write(
                &root.join(skipped),
                "DB_PASSWORD = \"pw-not-real-5531\"\n",
                0o644,
            );
        }
        write(
            &root.join("app/bin/blob"),
            "DB_PASSWORD = \"pw-not-real-5531\"\n\0\u{1}",
            0o644,
        );
        write(
            &root.join("app/data/dump.sql"),
            &format!(
                "DB_PASSWORD = \"pw-not-real-5531\"\n{}",
                "-- filler\n".repeat(120_000)
            ),
            0o644,
        );
        write(
            &root.join(".env"),
            "# local settings\nRUST_LOG=debug\nexport STRIPE_SECRET_KEY=sk_live_not_real_4242\nPASSWORD_FILE=/run/secrets/pw\n",
            0o644,
        );
        write(
            &root.join("app/docker-compose.yml"),
            "services:\n  db:\n    image: postgres:16\n    environment:\n      POSTGRES_PASSWORD: \"pg-not-real-77\"\n      - CACHE_URL=redis://:cache-pw-not-real@cache:6379\n",
            0o644,
        );
    }
    if !insecure {
        // A backup that passed a restore-verify today (its password a secret: the check reads
        // the repository without it).
        let verified = tcf_backup::time::rfc3339_ms(tcf_backup::time::now_unix_ms());
        write(
            &root.join("backups/backups/20261201T030000Z-0a1b/verify.json"),
            &format!(r#"{{"level":"restore","time":"{verified}","ok":true}}"#),
            0o600,
        );
        for d in [
            "backups/backups/20261201T030000Z-0a1b",
            "backups/backups",
            "backups",
        ] {
            chmod(&root.join(d), 0o700);
        }
    }
    std::fs::create_dir_all(root.join("state/logs")).unwrap();
    write(&root.join("state/state.db"), "", 0o644);
    write(
        &root.join("state/secrets.key"),
        "00",
        if insecure { 0o644 } else { 0o600 },
    );
    // The API socket: anyone may connect to the insecure one.
    let socket_path = root.join("state/tcf.sock");
    let socket = std::os::unix::net::UnixListener::bind(&socket_path).unwrap();
    chmod(&socket_path, if insecure { 0o666 } else { 0o600 });
    chmod(&root.join("state"), if insecure { 0o755 } else { 0o700 });
    let osv = root.join("osv.json");
    write(&osv, OSV, 0o644);
    let config = tcf_config::load(&config_path, None).unwrap();
    let now = tcf_backup::time::now_unix_ms();
    let secrets = if insecure {
        // Referred to by nothing, and set 200 days ago.
        vec![StoredSecret {
            name: "legacy_token".into(),
            updated_ms: now - 200 * DAY_MS,
            updated_by: "unix alice".into(),
        }]
    } else {
        // The backup source's password, set last week.
        vec![StoredSecret {
            name: "pg_password".into(),
            updated_ms: now - 7 * DAY_MS,
            updated_by: "unix alice".into(),
        }]
    };
    let token = |name: &str, role: &str, expires_ms: Option<i64>| LiveToken {
        name: name.into(),
        role: role.into(),
        created_ms: now - 30 * DAY_MS,
        expires_ms,
        last_used_ms: Some(now - DAY_MS),
        revoked: false,
    };
    let tokens = if insecure {
        // An admin token that never expires.
        vec![
            token("root-token", "admin", None),
            token("ci", "deployer", Some(now + 30 * DAY_MS)),
        ]
    } else {
        vec![
            token("alice", "admin", Some(now + 30 * DAY_MS)),
            token("ci", "deployer", Some(now + 30 * DAY_MS)),
        ]
    };
    Fixture {
        config,
        osv,
        _dependency: dependency,
        secrets,
        daemon,
        _socket: socket,
        socket: socket_path,
        tokens,
        _dir: dir,
    }
}

/// The daemon's view of a fixture: its stand-in's pid (whose sockets the listener checks
/// read), the API socket, the tokens; no instances (the services are not run).
fn live_view(f: &Fixture) -> LiveView {
    LiveView {
        daemon_pid: f.daemon.pid(),
        socket: f.socket.clone(),
        services: Vec::new(),
        tokens: Ok(f.tokens.clone()),
        failed_auths: Ok(Vec::new()),
    }
}

fn audit(f: &Fixture) -> Report {
    let inputs = Inputs {
        config: &f.config,
        live: Ok(live_view(f)),
        advisories: Some(Database::load(&f.osv).map_err(|e| e.to_string())),
        comprehensive: true,
        containers: None,
        secrets: Ok(f.secrets.clone()),
    };
    let results = checks::run(&inputs, &rules::ALL);
    let meta = Meta {
        tool_version: "test".into(),
        generated_at: "2026-11-25T12:00:00Z".into(),
        config: f.config.path.clone(),
        platform: f.config.platform.name.clone(),
        environment: None,
        offline_reason: None,
        comprehensive: true,
        advisories: None,
    };
    Report::build(meta, results, &Ignores::default())
}

/// The report without TCF-NET-005's findings (the host's other listeners).
fn without_host_listeners(report: &Report) -> Report {
    let mut own = report.clone();
    own.findings.retain(|f| f.rule_id != "TCF-NET-005");
    own
}

/// TCF-NET-005 ran; none of its findings is about an address of the fixture's, and none is
/// above LOW.
fn assert_host_listeners_are_not_ours(report: &Report, f: &Fixture) {
    let check = report
        .checks
        .iter()
        .find(|c| c.rule.id == "TCF-NET-005")
        .unwrap();
    assert!(
        matches!(check.outcome, Outcome::Pass | Outcome::Fail),
        "{:?}",
        check.outcome
    );
    let ours: BTreeSet<u16> = f
        .config
        .services
        .values()
        .map(|s| s.listen.port())
        .collect();
    for finding in report
        .findings
        .iter()
        .filter(|f| f.rule_id == "TCF-NET-005")
    {
        assert!(finding.severity <= Severity::Low, "{finding:#?}");
        let port = finding
            .location
            .uri
            .as_deref()
            .and_then(|u| u.rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap();
        assert!(!ours.contains(&port), "{finding:#?}");
    }
}

fn ids(report: &Report) -> BTreeSet<(&'static str, String)> {
    report
        .findings
        .iter()
        .map(|f| (f.rule_id, f.location.resource.clone()))
        .collect()
}

#[test]
fn insecure_platform_yields_exactly_the_expected_findings() {
    let f = fixture(INSECURE, true);
    let report = audit(&f);
    let root = f.config.path.parent().unwrap();
    let p = |rel: &str| root.join(rel).display().to_string();
    let served = |name: &str| {
        let port = f.config.services[name].listen.port();
        format!("tls://127.0.0.1:{port} (service {name}, SNI {name}.test)")
    };
    let expected: BTreeSet<(&str, String)> = [
        ("TCF-FS-001", p("state")),
        ("TCF-FS-002", p("state/state.db")),
        ("TCF-FS-002", p("state/secrets.key")),
        ("TCF-FS-003", p("tcf-platform.toml")),
        ("TCF-FS-004", p("app/bin/api")),
        ("TCF-FS-005", p("hooks/pre.sh")),
        ("TCF-SEC-001", "service api, env DB_PASSWORD".into()),
        ("TCF-SEC-002", "service api, env DATABASE_URL".into()),
        ("TCF-SEC-003", "service api, env DB_PASSWORD".into()),
        ("TCF-SEC-004", format!("{}:3 STRIPE_SECRET_KEY", p(".env"))),
        (
            "TCF-SEC-004",
            format!("{}:5 POSTGRES_PASSWORD", p("app/docker-compose.yml")),
        ),
        (
            "TCF-SEC-004",
            format!("{}:6 CACHE_URL", p("app/docker-compose.yml")),
        ),
        ("TCF-SEC-005", "secret legacy_token".into()),
        ("TCF-SEC-006", "secret legacy_token".into()),
        (
            "TCF-SEC-007",
            format!("{}:3 DB_PASSWORD", p("app/src/settings.py")),
        ),
        ("TCF-NET-001", "service api".into()),
        ("TCF-NET-004", "dependency cache".into()),
        ("TCF-CTR-001", "service worker".into()),
        ("TCF-CTR-002", "service worker".into()),
        ("TCF-CTR-003", "service worker".into()),
        ("TCF-CTR-004", "service worker".into()),
        ("TCF-CFG-001", "service api".into()),
        ("TCF-CFG-002", "service api".into()),
        ("TCF-BAK-001", "config [backup]".into()),
        (
            "TCF-DEP-001",
            "crates.io smallvec@1.6.0 (RUSTSEC-2099-0001)".into(),
        ),
        // Found in requirements.txt (the advisory names PyYAML, the pin PyYAML: PEP 503).
        ("TCF-DEP-001", "PyPI pyyaml@5.3.1 (PYSEC-2099-0002)".into()),
        // Found in Gemfile.lock.
        (
            "TCF-DEP-001",
            "RubyGems rack@2.2.3 (GHSA-2099-rack-0003)".into(),
        ),
        // The expired and the soon-expiring certificate: in their files and as served.
        ("TCF-TLS-001", p("tls/shop.pem")),
        ("TCF-TLS-001", served("shop")),
        ("TCF-TLS-001", p("tls/billing.pem")),
        ("TCF-TLS-001", served("billing")),
        // The admin token that never expires (the deployer's does).
        ("TCF-AUTH-001", "token root-token".into()),
        // The API socket anyone may connect to.
        ("TCF-API-001", p("state/tcf.sock")),
    ]
    .into_iter()
    .collect();
    // TCF-NET-005 looks at every listener of the host, which on a shared machine is whatever
    // else runs there: compared apart (none of the fixture's own, nothing above LOW).
    assert_eq!(ids(&without_host_listeners(&report)), expected);
    assert_host_listeners_are_not_ours(&report, &f);
    let severity_of = |rule_id: &str, resource: &str| {
        report
            .findings
            .iter()
            .find(|f| f.rule_id == rule_id && f.location.resource == resource)
            .unwrap()
            .severity
    };
    for resource in [p("tls/shop.pem"), served("shop")] {
        assert_eq!(severity_of("TCF-TLS-001", &resource), Severity::Critical);
    }
    for resource in [p("tls/billing.pem"), served("billing")] {
        assert_eq!(severity_of("TCF-TLS-001", &resource), Severity::High);
    }
    // An admin's token: the rule's MEDIUM (a viewer's would be LOW).
    assert_eq!(
        severity_of("TCF-AUTH-001", "token root-token"),
        Severity::Medium
    );
    assert_eq!(
        severity_of("TCF-API-001", &p("state/tcf.sock")),
        Severity::Critical
    );
    // No secret's value appears anywhere in any format.
    for format in [
        tcf_audit::Format::Table,
        tcf_audit::Format::Json,
        tcf_audit::Format::Sarif,
        tcf_audit::Format::Junit,
    ] {
        let text = tcf_audit::render::render(&report, format);
        assert!(!text.contains("letmein"), "{format:?} leaks a value");
        assert!(!text.contains("hunter2"), "{format:?} leaks a value");
        assert!(
            !text.contains("not_real") && !text.contains("not-real"),
            "{format:?} leaks a value"
        );
    }
    let dep = |package: &str| {
        report
            .findings
            .iter()
            .find(|f| f.rule_id == "TCF-DEP-001" && f.location.resource.contains(package))
            .unwrap()
    };
    assert_eq!(dep("smallvec").severity, Severity::Critical);
    assert!(dep("smallvec").remediation.contains("1.6.1"));
    assert!(dep("pyyaml")
        .location
        .file
        .as_ref()
        .unwrap()
        .ends_with("app/requirements.txt"));
    // No severity in the advisory: the check's own.
    assert_eq!(dep("pyyaml").severity, Severity::High);
    assert!(dep("pyyaml").remediation.contains("5.4"));
    assert!(dep("rack")
        .location
        .file
        .as_ref()
        .unwrap()
        .ends_with("app/Gemfile.lock"));
    assert_eq!(dep("rack").severity, Severity::Medium);
    assert!(dep("rack").remediation.contains("bundle update"));
    let sec = report
        .findings
        .iter()
        .find(|f| f.rule_id == "TCF-SEC-001")
        .unwrap();
    assert_eq!(sec.location.line, Some(14));
    // The daemon's stand-in listens exactly where the config says: a pass, not a skip.
    let outcome = |id: &str| {
        &report
            .checks
            .iter()
            .find(|c| c.rule.id == id)
            .unwrap()
            .outcome
    };
    assert_eq!(outcome("TCF-NET-002"), &Outcome::Pass);
    // No instance runs (the services are not started): the instance checks are reported as
    // not run, with the reason.
    for id in ["TCF-NET-003", "TCF-PROC-001"] {
        assert!(
            matches!(outcome(id), Outcome::NotRun { reason } if reason.contains("no running instance")),
            "{id}: {:?}",
            outcome(id)
        );
    }
    // No [backup]: its details have nothing to inspect (INFO); a fresh advisory database's
    // age is INFO too.
    for id in ["TCF-BAK-002", "TCF-DEP-002"] {
        let check = report.checks.iter().find(|c| c.rule.id == id).unwrap();
        assert!(
            matches!(&check.outcome, Outcome::Info { note } if !note.is_empty()),
            "{id}: {:?}",
            check.outcome
        );
    }
    assert!(report.fails_at(Severity::Critical));
}

#[test]
fn hardened_platform_has_nothing_at_medium_or_above() {
    let f = fixture(HARDENED, false);
    let report = audit(&f);
    assert!(!report.fails_at(Severity::Medium), "{:#?}", report.findings);
    // Nothing at all but the host's other listeners (TCF-NET-005, at most LOW: see the
    // insecure test).
    let own = without_host_listeners(&report);
    assert!(own.findings.is_empty(), "{:#?}", own.findings);
    assert_host_listeners_are_not_ours(&report, &f);
    // The certificate, its service as served, the tokens and the listeners were looked at:
    // passes, not skips.
    for id in [
        "TCF-TLS-001",
        "TCF-TLS-002",
        "TCF-TLS-003",
        "TCF-TLS-004",
        "TCF-TLS-005",
        "TCF-TLS-006",
        "TCF-TLS-007",
        "TCF-AUTH-001",
        "TCF-AUTH-002",
        "TCF-NET-002",
        "TCF-API-001",
    ] {
        let check = report.checks.iter().find(|c| c.rule.id == id).unwrap();
        assert_eq!(check.outcome, Outcome::Pass, "{id}");
    }
    // The dependency check ran (the lockfile holds a fixed version): a pass, not a skip.
    let dep = report
        .checks
        .iter()
        .find(|c| c.rule.id == "TCF-DEP-001")
        .unwrap();
    assert_eq!(dep.outcome, Outcome::Pass);
}

#[test]
fn backup_checks_read_the_backup_section() {
    let f = fixture(&format!("{INSECURE}{INSECURE_BACKUP}"), true);
    let repository = f.config.path.parent().unwrap().join("backups");
    std::fs::create_dir(&repository).unwrap();
    chmod(&repository, 0o755);
    let report = audit(&f);
    let found: BTreeSet<_> = ids(&report)
        .into_iter()
        .filter(|(id, _)| {
            id.starts_with("TCF-BAK") || ["TCF-SEC-001", "TCF-SEC-003", "TCF-FS-006"].contains(id)
        })
        .collect();
    let expected: BTreeSet<(&str, String)> = [
        ("TCF-FS-006", repository.display().to_string()),
        ("TCF-BAK-002", "config [backup]".to_string()),
        ("TCF-BAK-003", "config [backup]".to_string()),
        // An empty repository: nothing ever passed a restore-verify.
        ("TCF-BAK-004", "config [backup]".to_string()),
        ("TCF-SEC-001", "backup source db, password".to_string()),
        ("TCF-SEC-001", "service api, env DB_PASSWORD".to_string()),
        ("TCF-SEC-003", "backup source db, password".to_string()),
        ("TCF-SEC-003", "service api, env DB_PASSWORD".to_string()),
    ]
    .into_iter()
    .collect();
    assert_eq!(found, expected);
    // Without [backup], its details have nothing to inspect: INFO, neither passed nor failed
    // (TCF-BAK-001 is the finding).
    let plain = audit(&fixture(INSECURE, true));
    for id in ["TCF-BAK-002", "TCF-BAK-003", "TCF-BAK-004", "TCF-FS-006"] {
        let check = plain.checks.iter().find(|c| c.rule.id == id).unwrap();
        assert!(
            matches!(&check.outcome, Outcome::Info { note } if note.contains("no [backup]")),
            "{id}: {:?}",
            check.outcome
        );
    }
}

#[test]
fn dependency_check_without_advisories_or_comprehensive_is_not_run() {
    let f = fixture(INSECURE, true);
    let run = |advisories, comprehensive| {
        let inputs = Inputs {
            config: &f.config,
            live: Err("offline".into()),
            advisories,
            comprehensive,
            containers: None,
            secrets: Ok(Vec::new()),
        };
        checks::run(&inputs, &[&rules::VULNERABLE_DEPENDENCY])
            .remove(0)
            .findings
            .unwrap_err()
    };
    assert!(run(None, false).contains("--comprehensive"));
    assert!(run(None, true).contains("--advisories"));
}

type Made = (rcgen::Certificate, rcgen::KeyPair, rcgen::CertificateParams);

/// A certificate made by rcgen (ECDSA P-256, SHA-256) valid from `from_days` to `to_days`
/// around now, for `name`, signed by `issuer` (else self-signed). PEM (cert, key).
fn rcgen_cert(
    name: &str,
    from_days: i64,
    to_days: i64,
    issuer: Option<&Made>,
    is_ca: bool,
) -> Made {
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let now = std::time::SystemTime::now();
    let day = std::time::Duration::from_secs(86_400);
    let at = |days: i64| {
        if days >= 0 {
            now + day * days as u32
        } else {
            now - day * (-days) as u32
        }
    };
    params.not_before = at(from_days).into();
    params.not_after = at(to_days).into();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    if is_ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = match issuer {
        Some((_, ca_key, ca_params)) => {
            let issuer = rcgen::Issuer::from_params(ca_params, ca_key);
            params.signed_by(&key, &issuer).unwrap()
        }
        None => params.self_signed(&key).unwrap(),
    };
    (cert, key, params)
}

/// Certificate files are judged offline: expiry by days left, the chain against the roots
/// (SSL_CERT_FILE here: a CA made by the test), keys and signatures.
#[test]
fn certificate_files_are_judged_offline() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ca = test_ca();
    let mut config = String::from("[platform]\nname = \"certs\"\nstate_dir = \"state\"\n");
    // name, valid from/to (days from now), signed by the CA
    let cases = [
        ("expired.test", -60, -1, true),
        ("soon.test", -60, 3, true),
        ("month.test", -60, 20, true),
        ("fine.test", -1, 200, true),
        ("selfsigned.test", -1, 200, false),
    ];
    for (i, (name, from, to, by_ca)) in cases.iter().enumerate() {
        let (cert, key, _) = rcgen_cert(name, *from, *to, by_ca.then_some(ca), false);
        let cert_file = root.join(format!("{name}.pem"));
        let key_file = root.join(format!("{name}.key"));
        write(&cert_file, &cert.pem(), 0o644);
        write(&key_file, &key.serialize_pem(), 0o600);
        config.push_str(&format!(
            "[services.s{i}]\ncommand = [\"true\"]\nversion = \"v1\"\nlisten = \"127.0.0.1:{}\"\nhsts = \"max-age=60\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
            28_443 + i,
            cert_file.display(),
            key_file.display()
        ));
    }
    let config_path = root.join("tcf-platform.toml");
    write(&config_path, &config, 0o644);
    let config = tcf_config::load(&config_path, None).unwrap();
    // The roots are the process's: SSL_CERT_FILE names the test CA (test_ca set it).
    let inputs = Inputs {
        config: &config,
        live: Err("offline".into()),
        advisories: None,
        comprehensive: false,
        containers: None,
        secrets: Ok(Vec::new()),
    };
    let tls_rules: Vec<&'static tcf_audit::Rule> = rules::all()
        .filter(|r| r.id.starts_with("TCF-TLS-"))
        .collect();
    let results = checks::run(&inputs, &tls_rules);
    let by_id = |id: &str| {
        results
            .iter()
            .find(|r| r.rule.id == id)
            .unwrap_or_else(|| panic!("{id}"))
    };
    let found = |id: &str| -> Vec<(String, Severity)> {
        let mut found: Vec<(String, Severity)> = by_id(id)
            .findings
            .as_ref()
            .unwrap_or_else(|why| panic!("{id} not run: {why}"))
            .iter()
            .map(|f| {
                let file = f.location.file.as_ref().unwrap();
                (
                    file.file_name().unwrap().to_string_lossy().to_string(),
                    f.severity,
                )
            })
            .collect();
        found.sort();
        found
    };
    assert_eq!(
        found("TCF-TLS-001"),
        [
            ("expired.test.pem".to_string(), Severity::Critical),
            ("month.test.pem".to_string(), Severity::Medium),
            ("soon.test.pem".to_string(), Severity::High),
        ]
    );
    assert_eq!(
        found("TCF-TLS-004"),
        [("selfsigned.test.pem".to_string(), Severity::High)]
    );
    // rcgen makes P-256 keys signed with SHA-256: nothing weak.
    assert!(found("TCF-TLS-005").is_empty());
    assert!(found("TCF-TLS-006").is_empty());
    // The live checks need --comprehensive: not run, never a pass.
    for id in ["TCF-TLS-003", "TCF-TLS-007"] {
        assert!(by_id(id).findings.is_err(), "{id}");
    }
}

/// Live handshakes against a real TLS server that does everything wrong: openssl s_server
/// with a 1024-bit RSA key, a SHA-1 signature, another host's name, self-signed, and TLS 1.0
/// allowed, on the address of an HTTPS service.
#[test]
fn live_handshakes_judge_what_a_dependency_serves() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (cert, key) = (root.join("weak.pem"), root.join("weak.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:1024", "-sha1", "-nodes", "-days", "90",
        ])
        .args([
            "-subj",
            "/CN=other.example",
            "-addext",
            "subjectAltName=DNS:other.example",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian's openssl package) runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut server = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-min_protocol", "TLSv1"])
        .args(["-cipher", "ALL:@SECLEVEL=0"])
        .args(["-accept", &format!("127.0.0.1:{port}")])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Until it accepts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "openssl s_server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The service's certificate file names localhost, but what listens on its address (a
    // stale server, say) serves the weak one: the handshake judges what is served.
    let (file_cert, file_key, _) = rcgen_cert("localhost", -1, 200, None, false);
    write(&root.join("api.pem"), &file_cert.pem(), 0o644);
    write(&root.join("api.key"), &file_key.serialize_pem(), 0o600);
    let config_path = root.join("tcf-platform.toml");
    write(
        &config_path,
        &format!(
            "[platform]\nname = \"served\"\nstate_dir = \"state\"\n\n[services.api]\ncommand = [\"true\"]\nversion = \"v1\"\nlisten = \"127.0.0.1:{port}\"\nhsts = \"max-age=60\"\ntls = {{ cert = \"api.pem\", key = \"api.key\" }}\n"
        ),
        0o644,
    );
    let config = tcf_config::load(&config_path, None).unwrap();
    let inputs = Inputs {
        config: &config,
        live: Err("offline".into()),
        advisories: None,
        comprehensive: true,
        containers: None,
        secrets: Ok(Vec::new()),
    };
    let tls_rules: Vec<&'static tcf_audit::Rule> = rules::all()
        .filter(|r| r.id.starts_with("TCF-TLS-"))
        .collect();
    let results = checks::run(&inputs, &tls_rules);
    let _ = server.kill();
    let _ = server.wait();
    let uri = format!("tls://127.0.0.1:{port}");
    let mut failed: Vec<&str> = Vec::new();
    for result in &results {
        let findings = result
            .findings
            .as_ref()
            .unwrap_or_else(|why| panic!("{} not run: {why}", result.rule.id));
        let served: Vec<_> = findings
            .iter()
            .filter(|f| f.location.uri.as_deref() == Some(uri.as_str()))
            .collect();
        for f in &served {
            assert!(
                f.location.resource.contains("service api, SNI localhost"),
                "{f:?}"
            );
        }
        if !served.is_empty() {
            failed.push(result.rule.id);
        }
    }
    assert_eq!(
        failed,
        [
            "TCF-TLS-003",
            "TCF-TLS-004",
            "TCF-TLS-005",
            "TCF-TLS-006",
            "TCF-TLS-007"
        ]
    );
    let detail = |id: &str| {
        results
            .iter()
            .find(|r| r.rule.id == id)
            .unwrap()
            .findings
            .as_ref()
            .unwrap()
            .iter()
            .find(|f| f.location.uri.as_deref() == Some(uri.as_str()))
            .unwrap()
            .detail
            .clone()
    };
    assert!(
        detail("TCF-TLS-003").contains("other.example"),
        "{}",
        detail("TCF-TLS-003")
    );
    assert!(
        detail("TCF-TLS-005").contains("RSA 1024"),
        "{}",
        detail("TCF-TLS-005")
    );
    assert!(
        detail("TCF-TLS-006").contains("sha1"),
        "{}",
        detail("TCF-TLS-006")
    );
    assert!(
        detail("TCF-TLS-007").contains("TLS 1.0"),
        "{}",
        detail("TCF-TLS-007")
    );
}

/// An endpoint that cannot be reached is a check not run with the reason, never a pass.
#[test]
fn an_unreachable_endpoint_is_not_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (cert, key, _) = rcgen_cert("gone.test", -1, 200, None, false);
    write(&dir.path().join("gone.pem"), &cert.pem(), 0o644);
    write(&dir.path().join("gone.key"), &key.serialize_pem(), 0o600);
    let config_path = dir.path().join("tcf-platform.toml");
    write(
        &config_path,
        &format!("[platform]\nname = \"gone\"\nstate_dir = \"state\"\n\n[services.gone]\ncommand = [\"true\"]\nversion = \"v1\"\nlisten = \"127.0.0.1:{port}\"\nhsts = \"max-age=60\"\ntls = {{ cert = \"gone.pem\", key = \"gone.key\" }}\n"),
        0o644,
    );
    let config = tcf_config::load(&config_path, None).unwrap();
    let inputs = Inputs {
        config: &config,
        live: Err("offline".into()),
        advisories: None,
        comprehensive: true,
        containers: None,
        secrets: Ok(Vec::new()),
    };
    for result in checks::run(
        &inputs,
        &[&rules::HOSTNAME_MISMATCH, &rules::LEGACY_PROTOCOL],
    ) {
        let why = result.findings.unwrap_err();
        assert!(why.contains("service gone"), "{why}");
    }
}

/// The access checks of the daemon's view: the insecure platform has three live admin tokens
/// (over the default max_admins of 2) and a burst of refused authentications from one address;
/// the hardened one an admin and a deployer, and a few scattered refusals.
#[test]
fn access_checks_count_admins_and_failed_auth_bursts() {
    use tcf_audit::checks::{FailedAuth, LiveToken, LiveView};
    let now = tcf_backup::time::now_unix_ms();
    let token = |name: &str, role: &str, revoked: bool| LiveToken {
        name: name.into(),
        role: role.into(),
        created_ms: now - DAY_MS,
        expires_ms: Some(now + 30 * DAY_MS),
        last_used_ms: Some(now - DAY_MS),
        revoked,
    };
    let refused = |address: &str, seconds_ago: i64| FailedAuth {
        address: address.into(),
        at_ms: now - seconds_ago * 1000,
    };
    let view = |tokens, failed_auths| LiveView {
        daemon_pid: std::process::id(),
        socket: "/nonexistent/tcf.sock".into(),
        services: Vec::new(),
        tokens: Ok(tokens),
        failed_auths: Ok(failed_auths),
    };
    let insecure = view(
        vec![
            token("alice", "admin", false),
            token("bob", "admin", false),
            token("ci-admin", "admin", false),
            token("old-admin", "admin", true),
            token("ci", "deployer", false),
        ],
        (0..12)
            .map(|i| refused("203.0.113.9", 1800 + 30 * i))
            .chain((0..12).map(|i| refused("198.51.100.7", 3600 * i)))
            .collect(),
    );
    let hardened = view(
        vec![
            token("alice", "admin", false),
            token("ci", "deployer", false),
        ],
        (0..9)
            .map(|i| refused("203.0.113.9", 1800 + 30 * i))
            .collect(),
    );
    let f = fixture(INSECURE, true);
    let run = |live: LiveView| {
        let inputs = Inputs {
            config: &f.config,
            live: Ok(live),
            advisories: None,
            comprehensive: false,
            containers: None,
            secrets: Ok(Vec::new()),
        };
        let results = checks::run(
            &inputs,
            &[&rules::TOO_MANY_ADMINS, &rules::FAILED_AUTH_BURST],
        );
        let meta = Meta {
            tool_version: "test".into(),
            generated_at: "2026-11-25T12:00:00Z".into(),
            config: f.config.path.clone(),
            platform: f.config.platform.name.clone(),
            environment: None,
            offline_reason: None,
            comprehensive: false,
            advisories: None,
        };
        Report::build(meta, results, &Ignores::default())
    };
    let report = run(insecure);
    let expected: BTreeSet<(&str, String)> = [
        ("TCF-AUTH-003", "admin tokens".to_string()),
        ("TCF-AUTH-004", "address 203.0.113.9".to_string()),
    ]
    .into_iter()
    .collect();
    assert_eq!(ids(&report), expected);
    let admins = &report
        .findings
        .iter()
        .find(|f| f.rule_id == "TCF-AUTH-003")
        .unwrap();
    assert!(
        admins
            .detail
            .contains("3 live admin tokens (alice, bob, ci-admin)"),
        "{}",
        admins.detail
    );
    let burst = &report
        .findings
        .iter()
        .find(|f| f.rule_id == "TCF-AUTH-004")
        .unwrap();
    assert!(
        burst
            .detail
            .starts_with("12 failed authentications from 203.0.113.9"),
        "{}",
        burst.detail
    );
    let report = run(hardened);
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert!(report.checks.iter().all(|c| c.outcome == Outcome::Pass));
}

/// `[audit]` moves the thresholds: two admins over a max of 1, a secret older than 30 days.
#[test]
fn audit_section_sets_the_thresholds() {
    let text = format!(
        "{INSECURE}\n[audit]\nmax_admins = 0\nsecret_max_age = \"30d\"\nfailed_auth_burst = 3\nfailed_auth_window = \"1m\"\n"
    );
    let f = fixture(&text, false);
    assert_eq!(f.config.audit.max_admins, 0);
    assert_eq!(f.config.audit.failed_auth_burst, 3);
    let now = tcf_backup::time::now_unix_ms();
    let secrets = vec![StoredSecret {
        name: "month_old".into(),
        updated_ms: now - 40 * DAY_MS,
        updated_by: "unix alice".into(),
    }];
    let inputs = Inputs {
        config: &f.config,
        live: Err("offline".into()),
        advisories: None,
        comprehensive: false,
        containers: None,
        secrets: Ok(secrets),
    };
    let results = checks::run(&inputs, &[&rules::SECRET_NOT_ROTATED]);
    let found = results[0].findings.as_ref().unwrap();
    assert_eq!(found.len(), 1);
    assert!(
        found[0].detail.contains("40 days ago"),
        "{}",
        found[0].detail
    );
    assert!(found[0].detail.contains("(30 days)"), "{}", found[0].detail);
    // A store that could not be read: not run, never a pass.
    let inputs = Inputs {
        secrets: Err("the store could not be opened".into()),
        ..inputs
    };
    let results = checks::run(&inputs, &[&rules::SECRET_UNUSED]);
    assert!(results[0].findings.is_err());
}

/// The advisory database's age is its newest file's time: over `[audit] advisories_max_age`
/// (7 days unless set) it is a finding that says how old; within it, not one.
#[test]
fn a_stale_advisory_database_is_a_finding() {
    let f = fixture(HARDENED, false);
    let age_db = |config: &tcf_config::Config, days_old: u64| {
        let modified =
            std::time::SystemTime::now() - std::time::Duration::from_secs(days_old * 86_400);
        std::fs::File::options()
            .write(true)
            .open(&f.osv)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        let inputs = Inputs {
            config,
            live: Err("offline".into()),
            advisories: Some(Database::load(&f.osv).map_err(|e| e.to_string())),
            comprehensive: true,
            containers: None,
            secrets: Ok(Vec::new()),
        };
        checks::run(&inputs, &[&rules::ADVISORIES_STALE]).remove(0)
    };
    let stale = age_db(&f.config, 30).findings.unwrap();
    assert_eq!(stale.len(), 1, "{stale:#?}");
    assert_eq!(stale[0].rule_id, "TCF-DEP-002");
    assert_eq!(stale[0].severity, Severity::Medium);
    assert_eq!(stale[0].location.file.as_deref(), Some(f.osv.as_path()));
    assert!(
        stale[0].detail.contains("30 days ago") && stale[0].detail.contains("(7 days)"),
        "{}",
        stale[0].detail
    );
    // Fresh: INFO with its age, not a finding.
    let fresh = age_db(&f.config, 3);
    assert!(fresh.findings.unwrap().is_empty());
    let note = fresh.note.unwrap();
    assert!(note.contains("3 days ago"), "{note}");
    // [audit] advisories_max_age moves the threshold.
    let mut lenient = f.config.clone();
    lenient.audit.advisories_max_age = std::time::Duration::from_secs(60 * 86_400);
    let lenient = age_db(&lenient, 30);
    assert!(lenient.findings.unwrap().is_empty());
    assert!(lenient.note.unwrap().contains("(60 days)"));
    // No database: not run, never a pass.
    let inputs = Inputs {
        config: &f.config,
        live: Err("offline".into()),
        advisories: None,
        comprehensive: true,
        containers: None,
        secrets: Ok(Vec::new()),
    };
    let none = checks::run(&inputs, &[&rules::ADVISORIES_STALE]).remove(0);
    assert!(none.findings.unwrap_err().contains("--update-advisories"));
}

/// TCF-FS-007: a key file and the config chowned to another user are findings; what root or
/// the daemon's user owns is not. Online, the daemon's user is its process's uid.
#[test]
fn files_owned_by_another_user_are_findings() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: chown to another uid needs root (run the tests as root)");
        return;
    }
    let f = fixture(HARDENED, false);
    let root = f.config.path.parent().unwrap();
    let key = root.join("state/secrets.key");
    let stranger = 4242;
    let run = |live: Result<tcf_audit::LiveView, String>| {
        let inputs = Inputs {
            config: &f.config,
            live,
            advisories: None,
            comprehensive: false,
            containers: None,
            secrets: Ok(Vec::new()),
        };
        let mut results = checks::run(&inputs, &[&rules::FILE_OWNER]);
        let mut found: Vec<(String, String)> = results
            .remove(0)
            .findings
            .unwrap()
            .into_iter()
            .map(|f| (f.location.resource, f.detail))
            .collect();
        found.sort();
        found
    };
    // Everything root's: nothing.
    assert!(run(Err("offline".into())).is_empty());
    std::os::unix::fs::chown(&key, Some(stranger), Some(stranger)).unwrap();
    std::os::unix::fs::chown(&f.config.path, Some(stranger), None).unwrap();
    let found = run(Err("offline".into()));
    let resources: Vec<&str> = found.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        resources,
        [
            key.display().to_string(),
            f.config.path.display().to_string()
        ]
    );
    assert!(found[0].1.contains("uid 4242"), "{}", found[0].1);
    assert!(
        found[0].1.contains("state directory's owner"),
        "{}",
        found[0].1
    );
    // Online: the daemon's uid (this process's, root) decides, with the same result.
    let live = tcf_audit::LiveView {
        daemon_pid: std::process::id(),
        socket: root.join("state/tcf.sock"),
        services: Vec::new(),
        tokens: Ok(Vec::new()),
        failed_auths: Ok(Vec::new()),
    };
    let online = run(Ok(live.clone()));
    assert_eq!(online.len(), 2, "{online:#?}");
    assert!(
        online[0].1.contains(&format!("pid {}", std::process::id())),
        "{}",
        online[0].1
    );
    // Offline, a state directory of the stranger's makes it the daemon's user: its files
    // and root's pass.
    std::os::unix::fs::chown(root.join("state"), Some(stranger), None).unwrap();
    assert!(run(Err("offline".into())).is_empty());
    // Online the daemon runs as root: the stranger's state directory is a finding.
    let online = run(Ok(live));
    assert_eq!(online.len(), 3, "{online:#?}");
    assert!(online.iter().any(|(r, _)| r.ends_with("/state")));
}
