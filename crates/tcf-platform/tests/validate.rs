//! `prod validate` and the deploy gate with the real daemon: ready on the healthy example; the
//! right check IDs fail for a missing program, a held lock and a dependency that is down; a
//! deploy of a missing version stops before anything starts.

mod common;

use common::sequence::*;
use common::*;
use serde_json::Value;
use std::time::Duration;

const START: Duration = Duration::from_secs(60);

fn validate(p: &Platform, args: &[&str]) -> (i32, Value) {
    let out = p.cli(&[&["prod", "validate", "--format", "json"], args].concat());
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), v)
}

fn failed(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "fail")
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

/// The shape of the JSON contract, values that change from run to run left out.
fn shape(report: &Value) -> Value {
    let checks: Vec<Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            serde_json::json!({
                "id": c["id"],
                "state": c["state"],
                "service": c["service"],
                "has_message": c["message"].as_str().is_some_and(|m| !m.is_empty()),
                "remedy": c["remedy"].is_string(),
            })
        })
        .collect();
    serde_json::json!({ "ready": report["ready"], "checks": checks })
}

#[test]
fn validate_passes_on_the_healthy_example_and_names_what_fails() {
    // The example's programs live under releases/VERSION/ so a version can be missing; a real
    // PostgreSQL is a dependency (no service waits for it, so the test can stop it).
    let mut pg = tcf_testkit::start_postgres_on(common::free_port());
    let demo = bin().with_file_name("tcf-demo");
    let config = deploy_config(&[]).replace(
        "command = [\"tcf-demo\"]",
        "command = [\"./releases/{version}/tcf-demo\"]",
    ) + &format!(
        "\n[dependencies.pg]\nkind = \"postgres\"\naddress = \"127.0.0.1:{}\"\n",
        pg.port
    );
    let mut p = Platform::new(&config);
    for v in ["v1", "v2", "v2-slow"] {
        let dir = p.dir.path().join("releases").join(v);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&demo, dir.join("tcf-demo")).unwrap();
    }
    p.up();
    p.wait_for("all healthy", START, all_healthy);

    let (code, report) = validate(&p, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["ready"], true);
    insta::assert_json_snapshot!("validate_ready", shape(&report));

    // A version whose program is not there.
    let (code, report) = validate(&p, &["--version", "v9"]);
    assert_eq!(code, 1, "{report:#}");
    assert!(
        failed(&report).contains(&"VAL-ARTIFACT".to_string()),
        "{report:#}"
    );
    // ...and its deploy stops before anything starts.
    let before = p.status().unwrap();
    let pids = |s: &Value| -> Vec<u64> {
        s["services"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|x| x["instances"].as_array().unwrap().clone())
            .filter_map(|i| i["pid"].as_u64())
            .collect()
    };
    let (code, out, lines) = run(
        &p,
        &["prod", "deploy", "v9", "--service", "tokens", "--validate"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("validation failed, nothing started"), "{out}");
    assert!(out.contains("VAL-ARTIFACT"), "{out}");
    assert!(!has_step(&lines, "deploy.starting"), "{out}");
    let mut a = pids(&before);
    let mut b = pids(&p.status().unwrap());
    a.sort();
    b.sort();
    assert_eq!(a, b, "no instance started or stopped");

    // A release that puts a plain-text password in its env: the security scan fails it,
    // naming where, never the value.
    let good = std::fs::read_to_string(&p.config).unwrap();
    let leaky = good.replace(
        "[services.tokens]\n",
        "[services.tokens]\nenv = { DB_PASSWORD = \"hunter2-Secret\" }\n",
    );
    assert_ne!(leaky, good);
    std::fs::write(&p.config, &leaky).unwrap();
    let out = p.cli(&[
        "prod",
        "validate",
        "--security-scan",
        "--service",
        "tokens",
        "--format",
        "json",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert!(
        failed(&report).contains(&"VAL-SECURITY".to_string()),
        "{report:#}"
    );
    assert!(
        text.contains("DB_PASSWORD") && !text.contains("hunter2"),
        "{text}"
    );
    std::fs::write(&p.config, &good).unwrap();
    let (code, report) = validate(&p, &["--security-scan", "--service", "tokens"]);
    assert_eq!(code, 0, "{report:#}");

    // The dependency answers its protocol, timed; stopped, it fails the check.
    let (code, report) = validate(&p, &["--check-dependencies"]);
    assert_eq!(code, 0, "{report:#}");
    let dep = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "VAL-DEPENDENCY")
        .unwrap()
        .clone();
    assert!(
        dep["message"].as_str().unwrap().contains("answers in"),
        "{dep}"
    );
    pg.kill_now();
    let (code, report) = validate(&p, &["--check-dependencies"]);
    assert_eq!(code, 1);
    assert_eq!(failed(&report), ["VAL-DEPENDENCY"], "{report:#}");

    // Another deploy holds the lock.
    let slow = deploy_in_background(&p, "v2-slow", "tokens");
    wait_until("the slow release running", START, || {
        p.status()
            .is_some_and(|s| s["deploy_in_progress"].is_string())
    });
    let (code, report) = validate(&p, &["--service", "gateway"]);
    assert_eq!(code, 1);
    let f = failed(&report);
    assert!(
        f.contains(&"VAL-LOCK".to_string()) && f.contains(&"VAL-RELEASE".to_string()),
        "{report:#}"
    );
    let _ = slow.join();
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(60)), Some(0));
}
