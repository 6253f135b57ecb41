//! The deploy sequence both runtimes must get through without dropping a request, and the
//! helpers the deploy tests share.

use super::load::{Load, Report};
use super::*;
use serde_json::Value;
use std::process::Output;
use std::time::Duration;

/// The example platform with quick gates and watches, so the sequence runs in seconds.
pub fn deploy_config(overrides: &[(&str, &str)]) -> String {
    deploy_config_from(&example_config(), overrides)
}

/// `config` with quick gates and watches and the given `[deploy]` settings.
pub fn deploy_config_from(config: &str, overrides: &[(&str, &str)]) -> String {
    let text = config
        .replace("deadline = \"30s\"", "deadline = \"8s\"")
        .replace("interval = \"2s\"", "interval = \"500ms\"");
    let mut settings = vec![
        ("watch", "\"3s\""),
        ("step_interval", "\"400ms\""),
        ("min_requests", "10"),
    ];
    for (k, v) in overrides {
        settings.retain(|(key, _)| key != k);
        settings.push((k, v));
    }
    let deploy: String = settings
        .iter()
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect();
    format!("{text}\n[deploy]\n{deploy}")
}

pub fn listen(status: &Value, service: &str) -> String {
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .unwrap()["listen"]
        .as_str()
        .unwrap()
        .to_string()
}

pub fn version_at(addr: &str) -> String {
    let (code, body) = http_get(addr, "/").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<Value>(body.trim()).unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string()
}

pub fn run(p: &Platform, args: &[&str]) -> (i32, String, Vec<Value>) {
    let out: Output = p.cli(&[args, &["--force", "--format", "json"]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let lines = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (
        out.status.code().unwrap_or(-1),
        format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        lines,
    )
}

pub fn has_step(lines: &[Value], step: &str) -> bool {
    lines.iter().any(|l| l["step"] == step)
}

/// Distinct values in order of first appearance.
pub fn first_appearances(report: &Report) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for s in &report.samples {
        if !seen.contains(&s.version) {
            seen.push(s.version.clone());
        }
    }
    seen
}

/// Under steady load on the gateway and personas: blue-green v2, a release that never gets
/// healthy, one that answers 500s (reverted by the watch), canary v3, rolling v4, rollback to
/// v3 (a route switch) and to v1 (started afresh). Zero failed requests.
pub fn zero_downtime_sequence(p: &mut Platform, gateway: &str, personas: &str) {
    let gateway = gateway.to_string();
    let gateway_load = Load::start(&gateway, 8);
    let personas_load = Load::start(personas, 4);
    std::thread::sleep(Duration::from_millis(300));

    // A request held open across the switch completes, answered by the old version.
    let held_addr = gateway.clone();
    let held = std::thread::spawn(move || http_get(&held_addr, "/?hold_ms=1500").unwrap());
    std::thread::sleep(Duration::from_millis(100));

    // 1. Blue-green v2 of every service.
    let (code, out, lines) = run(p, &["prod", "deploy", "v2"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        has_step(&lines, "deploy.switched") && has_step(&lines, "release.active"),
        "{out}"
    );
    assert_eq!(version_at(&gateway), "v2");
    let (held_code, held_body) = held.join().unwrap();
    assert_eq!(held_code, 200);
    assert!(held_body.contains("\"version\":\"v1\""), "{held_body}");

    // 2. A release that never becomes healthy: exit 1, nothing switched.
    let (code, out, lines) = run(
        p,
        &["prod", "deploy", "v3-unhealthy", "--service", "gateway"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        has_step(&lines, "deploy.gate_failed") && !has_step(&lines, "deploy.switched"),
        "{out}"
    );
    assert_eq!(version_at(&gateway), "v2");

    // 3. A release that is healthy but answers 500s: switched, then reverted in the watch.
    let (code, out, lines) = run(p, &["prod", "deploy", "v4-errors", "--service", "gateway"]);
    assert_eq!(code, 1, "{out}");
    assert!(has_step(&lines, "deploy.breach"), "{out}");
    assert_eq!(lines.last().unwrap()["result"], "reverted");
    assert_eq!(version_at(&gateway), "v2");

    // 4. Canary v3, 5. rolling v4.
    let (code, out, lines) = run(
        p,
        &[
            "prod",
            "deploy",
            "v3",
            "--service",
            "gateway",
            "--strategy",
            "canary",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["step"] == "deploy.step_passed")
            .count(),
        5,
        "{out}"
    );
    assert_eq!(version_at(&gateway), "v3");
    let (code, out, _) = run(
        p,
        &[
            "prod",
            "deploy",
            "v4",
            "--service",
            "gateway",
            "--strategy",
            "rolling",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(version_at(&gateway), "v4");

    // 6. Rollback to v3: still warm, so a route switch. 7. Rollback to v1: started afresh.
    let (code, out, lines) = run(p, &["prod", "rollback", "v3", "--service", "gateway"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("instant rollback to v3") && !has_step(&lines, "rollback.cold"),
        "{out}"
    );
    assert_eq!(version_at(&gateway), "v3");
    let (code, out, lines) = run(
        p,
        &[
            "prod",
            "rollback",
            "--to-version",
            "v1",
            "--service",
            "gateway",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(has_step(&lines, "rollback.cold"), "{out}");
    assert_eq!(version_at(&gateway), "v1");

    // 8. A rolling deploy of a release that answers 500s: every instance replaced, then
    // reverted by the watch; the old instances it had parked take the traffic again.
    let (code, out, lines) = run(
        p,
        &[
            "prod",
            "deploy",
            "v5-errors",
            "--service",
            "gateway",
            "--strategy",
            "rolling",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(has_step(&lines, "deploy.breach"), "{out}");
    assert_eq!(lines.last().unwrap()["result"], "reverted");
    assert_eq!(version_at(&gateway), "v1");
    let status = p.status().expect("status");
    let gw = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "gateway")
        .unwrap()
        .clone();
    assert_eq!(gw["healthy"], true, "{gw:#}");
    std::thread::sleep(Duration::from_millis(300));

    let g = gateway_load.stop();
    let pe = personas_load.stop();
    assert!(
        g.errors.is_empty(),
        "connection errors on the gateway: {:?}",
        &g.errors[..g.errors.len().min(5)]
    );
    assert!(
        pe.errors.is_empty(),
        "connection errors on personas: {:?}",
        &pe.errors[..pe.errors.len().min(5)]
    );
    assert!(
        g.samples.len() > 500 && pe.samples.len() > 200,
        "too little load: {} / {}",
        g.samples.len(),
        pe.samples.len()
    );
    for s in g.samples.iter().chain(pe.samples.iter()) {
        assert!(!s.by_proxy, "the proxy answered {} itself", s.status);
        let allowed =
            (200..300).contains(&s.status) || (s.status == 500 && s.version.ends_with("errors"));
        assert!(allowed, "unexpected {} from {}", s.status, s.version);
    }
    let broken = g.samples.iter().filter(|s| s.status == 500).count();
    assert!(
        broken > 0,
        "the broken release should have been seen before its revert"
    );
    let order = first_appearances(&g);
    assert_eq!(
        order,
        ["v1", "v2", "v4-errors", "v3", "v4", "v5-errors"],
        "versions in order of first answer"
    );
    assert_eq!(first_appearances(&pe), ["v1", "v2"]);
    assert_eq!(g.samples.last().unwrap().version, "v1");

    // History has every release with the right status.
    let out = p.cli(&["history", "--format", "json", "--limit", "20"]);
    let history: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    // The sequence's own eight releases, oldest first.
    let statuses: Vec<(&str, &str)> = history[..8]
        .iter()
        .rev()
        .map(|r| {
            (
                r["strategy"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            // It still holds every service but the gateway.
            ("blue_green", "active"),
            ("blue_green", "failed"),
            ("blue_green", "reverted"),
            ("canary", "superseded"),
            ("rolling", "rolled_back"),
            ("rollback", "rolled_back"),
            ("rollback", "active"),
            ("rolling", "reverted"),
        ],
        "{history:#?}"
    );
}

/// `prod deploy VERSION --service SERVICE --force` on a thread, for what happens meanwhile.
pub fn deploy_in_background(
    p: &Platform,
    version: &str,
    service: &str,
) -> std::thread::JoinHandle<Output> {
    let (config, version, service) = (p.config.clone(), version.to_string(), service.to_string());
    std::thread::spawn(move || {
        std::process::Command::new(bin())
            .args([
                "prod",
                "deploy",
                &version,
                "--service",
                &service,
                "--force",
                "--config",
            ])
            .arg(&config)
            .output()
            .unwrap()
    })
}
