//! The JSON contracts of `--format json` and the API, pinned: a renamed or removed field fails
//! here. Values are fixed examples; the shapes are what matter (docs/api.md describes them).

use std::collections::BTreeMap;
use tcf_api::*;

#[test]
fn event() {
    insta::assert_json_snapshot!(Event {
        id: 42,
        time: "2026-11-25T16:00:00.000Z".into(),
        actor: "alice@host".into(),
        kind: "deploy.switched".into(),
        service: Some("gateway".into()),
        instance: None,
        message: "all traffic to v2 (green)".into(),
    });
}

#[test]
fn release() {
    insta::assert_json_snapshot!(Release {
        id: 7,
        versions: BTreeMap::from([("gateway".to_string(), "v2".to_string())]),
        strategy: "rolling".into(),
        status: "reverted".into(),
        actor: "alice@host".into(),
        reason: Some("hotfix".into()),
        started: "2026-11-25T16:00:00.000Z".into(),
        duration_s: Some(12.5),
        backup: Some("20261125T160000Z-a1b2".into()),
    });
}

#[test]
fn lock_held_and_free() {
    insta::assert_json_snapshot!(
        "lock_held",
        LockStatus {
            held: true,
            owner: Some("alice@host (release by daemon pid 10)".into()),
            host: Some("host".into()),
            pid: Some(10),
            reason: Some("hotfix".into()),
            acquired: Some("2026-11-25T16:00:00.000Z".into()),
            heartbeat: Some("2026-11-25T16:00:10.000Z".into()),
            expires: Some("2026-11-25T16:00:40.000Z".into()),
        }
    );
    insta::assert_json_snapshot!(
        "lock_free",
        LockStatus {
            held: false,
            owner: None,
            host: None,
            pid: None,
            reason: None,
            acquired: None,
            heartbeat: None,
            expires: None,
        }
    );
}

/// The NDJSON deploy stream: progress lines, then one result line with the exit code.
#[test]
fn deploy_stream() {
    let step = ProgressLine {
        time: "2026-11-25T16:00:00.000Z".into(),
        step: "deploy.switched".into(),
        service: Some("gateway".into()),
        message: "all traffic to v2 (green) (route switched in 12 µs)".into(),
        release: Some(7),
        result: None,
        exit_code: None,
        report: None,
    };
    let result = ProgressLine {
        time: "2026-11-25T16:00:05.000Z".into(),
        step: "result".into(),
        service: None,
        message: "release 7 is active".into(),
        release: Some(7),
        result: Some("deployed".into()),
        exit_code: Some(0),
        report: None,
    };
    let stream: String = [step, result]
        .iter()
        .map(|l| serde_json::to_string(l).unwrap() + "\n")
        .collect();
    insta::assert_snapshot!(stream);
}

#[test]
fn metrics_and_dependencies() {
    insta::assert_json_snapshot!(
        "metrics",
        ServiceMetrics {
            window_s: 10.0,
            requests_per_s: 250.5,
            errors_5xx_per_s: 0.5,
            error_ratio_5xx: 0.002,
            p50_ms: Some(1.2),
            p99_ms: None,
            cpu_percent: 3.5,
            rss_bytes: 12_345_678,
            health_score: Some(92.5),
            health_band: Some("excellent".into()),
        }
    );
    insta::assert_json_snapshot!(
        "dependency",
        DependencyStatus {
            name: "postgres".into(),
            kind: "postgres".into(),
            target: "127.0.0.1:5432".into(),
            healthy: Some(false),
            last_error: Some("cannot connect to 127.0.0.1:5432: refused".into()),
        }
    );
}

#[test]
fn errors_ping_and_down() {
    insta::assert_json_snapshot!(
        "error",
        ErrorBody {
            error: "no such service: gatway".into()
        }
    );
    insta::assert_json_snapshot!(
        "ping",
        Ping {
            platform: "tcf".into(),
            pid: 10,
            version: "0.1.0".into(),
            config: "/srv/tcf-platform.toml".into(),
        }
    );
    insta::assert_json_snapshot!("down", DownResponse { stopping: true });
}

#[test]
fn handover_and_reload() {
    insta::assert_json_snapshot!(
        "handover",
        HandoverResponse {
            old_pid: 4100,
            new_pid: 4242,
            binary: "/usr/bin/tcf-platform".into(),
        }
    );
    insta::assert_json_snapshot!(
        "reload",
        ReloadResponse {
            added: vec!["search".into()],
            removed: vec!["tokens".into()],
            scaled: vec![ScaleChange {
                service: "personas".into(),
                from: 1,
                to: 2,
            }],
            changed: vec!["gateway".into()],
            old_pid: 5002,
            new_pid: 5120,
        }
    );
}

/// `backup list --format json` (one entry) and the streamed backup command's last line: the
/// same shapes whether the daemon or the CLI ran the work.
#[test]
fn backup_entry_and_result_line() {
    use tcf_api::backup::*;
    let entry = BackupEntry {
        id: "20261125T160000Z-a1b2".into(),
        time: Some("2026-11-25T16:00:00.000Z".into()),
        trigger: Some("pre-deploy of 7".into()),
        trigger_detail: Some(BackupTrigger::PreDeploy {
            release: "7".into(),
        }),
        sources: vec!["main".into()],
        size: 2048,
        encrypted: false,
        artifacts: vec![BackupArtifact {
            file: "main.db.app.dump.zst".into(),
            source: "main".into(),
            kind: "postgres_database".into(),
            database: Some("app".into()),
            size: 2048,
            sha256: "ab".repeat(32),
            tool: "pg_dump (PostgreSQL) 15.8".into(),
            server_version: Some("15.8".into()),
            duration_ms: 120,
        }],
        last_verify: Some(BackupVerifyRecord {
            level: "checksums".into(),
            time: "2026-11-25T16:00:01.000Z".into(),
            ok: true,
            problems: vec![],
        }),
        damaged: None,
    };
    insta::assert_json_snapshot!("backup_entry", entry);
    let last = ProgressLine {
        time: "2026-11-25T16:00:02.000Z".into(),
        step: "result".into(),
        service: None,
        message: "backup 20261125T160000Z-a1b2 verify --level restore: ok".into(),
        release: None,
        result: Some("verified".into()),
        exit_code: Some(0),
        report: Some(
            serde_json::to_value(BackupVerifyReport {
                id: "20261125T160000Z-a1b2".into(),
                level: "restore".into(),
                ok: true,
                problems: vec![],
                artifacts: vec![BackupArtifactCheck {
                    artifact: "main.db.app.dump.zst".into(),
                    status: "ok".into(),
                    detail: vec!["1 table(s), 100 row(s) match".into()],
                }],
            })
            .unwrap(),
        ),
    };
    insta::assert_snapshot!("backup_result_line", serde_json::to_string(&last).unwrap());
}
