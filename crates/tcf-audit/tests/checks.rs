//! The offline checks on a deliberately insecure platform directory and on a hardened one,
//! both made here: the insecure one yields exactly the expected IDs, the hardened one nothing
//! at medium or above.

mod schema;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tcf_audit::checks::{self, Inputs};
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
listen = "0.0.0.0:18080"
max_request_body = "2GiB"
env = { DB_PASSWORD = "letmein", DATABASE_URL = "postgres://app:hunter2-long-enough@db/app", DB_PASSWORD_FILE = "/run/secrets/db", RUST_LOG = "info" }

[services.worker]
runtime = "docker"
image = "worker:{version}"
container_port = 8080
version = "v1"
listen = "127.0.0.1:18081"
volumes = ["/var/run/docker.sock:/var/run/docker.sock"]

[services.worker.health]
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
listen = "127.0.0.1:18080"
env = { DB_PASSWORD_FILE = "/run/secrets/db", RUST_LOG = "info" }

[services.worker]
runtime = "docker"
image = "worker:{version}"
container_port = 8080
version = "v1"
listen = "127.0.0.1:18081"
user = "1000:1000"
read_only = true
memory = "256MiB"

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
"database_specific":{"severity":"CRITICAL"}}]"#;

struct Fixture {
    _dir: tempfile::TempDir,
    config: tcf_config::Config,
    osv: std::path::PathBuf,
}

fn fixture(config_text: &str, insecure: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    chmod(root, 0o755);
    let config_path = root.join("tcf-platform.toml");
    write(
        &config_path,
        config_text,
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
    write(
        &root.join("hooks/pre.sh"),
        "true\n",
        if insecure { 0o666 } else { 0o755 },
    );
    chmod(&root.join("hooks"), 0o755);
    if insecure {
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
    std::fs::create_dir_all(root.join("state/logs")).unwrap();
    write(&root.join("state/state.db"), "", 0o644);
    write(
        &root.join("state/secrets.key"),
        "00",
        if insecure { 0o644 } else { 0o600 },
    );
    chmod(&root.join("state"), if insecure { 0o755 } else { 0o700 });
    let osv = root.join("osv.json");
    write(&osv, OSV, 0o644);
    let config = tcf_config::load(&config_path, None).unwrap();
    Fixture {
        _dir: dir,
        config,
        osv,
    }
}

fn audit(f: &Fixture) -> Report {
    let inputs = Inputs {
        config: &f.config,
        live: Err("no daemon in this test".into()),
        advisories: Some(Database::load(&f.osv).map_err(|e| e.to_string())),
        comprehensive: true,
    };
    let results = checks::run(&inputs, &rules::ALL);
    let meta = Meta {
        tool_version: "test".into(),
        generated_at: "2026-11-25T12:00:00Z".into(),
        config: f.config.path.clone(),
        platform: f.config.platform.name.clone(),
        environment: None,
        offline_reason: Some("no daemon in this test".into()),
        comprehensive: true,
        advisories: None,
    };
    Report::build(meta, results, &Ignores::default())
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
        ("TCF-NET-001", "service api".into()),
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
    ]
    .into_iter()
    .collect();
    assert_eq!(ids(&report), expected);
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
    let dep = report
        .findings
        .iter()
        .find(|f| f.rule_id == "TCF-DEP-001")
        .unwrap();
    assert_eq!(dep.severity, Severity::Critical);
    assert!(dep.remediation.contains("1.6.1"));
    let sec = report
        .findings
        .iter()
        .find(|f| f.rule_id == "TCF-SEC-001")
        .unwrap();
    assert_eq!(sec.location.line, Some(14));
    // Offline: the online checks are reported as not run, with the reason.
    for id in [
        "TCF-NET-002",
        "TCF-NET-003",
        "TCF-PROC-001",
        "TCF-API-001",
        "TCF-BAK-002",
    ] {
        let check = report.checks.iter().find(|c| c.rule.id == id).unwrap();
        assert!(
            matches!(&check.outcome, Outcome::NotRun { reason } if !reason.is_empty()),
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
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
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
    // Without [backup], its details are not run (nothing to inspect), never passed.
    let plain = audit(&fixture(INSECURE, true));
    for id in ["TCF-BAK-002", "TCF-BAK-003", "TCF-BAK-004", "TCF-FS-006"] {
        let check = plain.checks.iter().find(|c| c.rule.id == id).unwrap();
        assert!(matches!(check.outcome, Outcome::NotRun { .. }), "{id}");
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
        };
        checks::run(&inputs, &[&rules::VULNERABLE_DEPENDENCY])
            .remove(0)
            .findings
            .unwrap_err()
    };
    assert!(run(None, false).contains("--comprehensive"));
    assert!(run(None, true).contains("--advisories"));
}
