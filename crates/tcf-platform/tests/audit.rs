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
        vec!["TCF-SEC-001", "TCF-SEC-002", "TCF-SEC-003", "TCF-SEC-004"]
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
    let config = format!(
        "{}\n[services.leaky]\ncommand = [\"sh\", \"-c\", \"PORT=0 '{demo}' & exec '{demo}'\"]\nversion = \"v1\"\nlisten = \"127.0.0.1:{port}\"\n",
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
    let out = p.cli(&["down"]);
    assert!(out.status.success());
    p.wait_daemon_exit(Duration::from_secs(30));
}
