//! Zero-downtime deploys for real: the daemon, the demo services and a steady load through
//! the proxy while the platform deploys, reverts and rolls back.

mod common;

use common::load::{Load, Report};
use common::*;
use serde_json::Value;
use std::process::Output;
use std::time::Duration;

const START: Duration = Duration::from_secs(60);

/// The example platform with quick gates and watches, so the sequence runs in seconds.
fn deploy_config(overrides: &[(&str, &str)]) -> String {
    let text = example_config()
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

fn listen(status: &Value, service: &str) -> String {
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

fn version_at(addr: &str) -> String {
    let (code, body) = http_get(addr, "/").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<Value>(body.trim()).unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string()
}

fn run(p: &Platform, args: &[&str]) -> (i32, String, Vec<Value>) {
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

fn has_step(lines: &[Value], step: &str) -> bool {
    lines.iter().any(|l| l["step"] == step)
}

/// Distinct values in order of first appearance.
fn first_appearances(report: &Report) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for s in &report.samples {
        if !seen.contains(&s.version) {
            seen.push(s.version.clone());
        }
    }
    seen
}

#[test]
fn deploys_revert_and_rollbacks_drop_no_request() {
    let mut p = Platform::new(&deploy_config(&[("retire_after", "\"10m\"")]));
    p.up();
    let status = p.wait_for("all healthy", START, all_healthy);
    let gateway = listen(&status, "gateway");
    let personas = listen(&status, "personas");
    let gateway_load = Load::start(&gateway, 8);
    let personas_load = Load::start(&personas, 4);
    std::thread::sleep(Duration::from_millis(300));

    // A request held open across the switch completes, answered by the old version.
    let held_addr = gateway.clone();
    let held = std::thread::spawn(move || http_get(&held_addr, "/?hold_ms=1500").unwrap());
    std::thread::sleep(Duration::from_millis(100));

    // 1. Blue-green v2 of every service.
    let (code, out, lines) = run(&p, &["prod", "deploy", "v2"]);
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
        &p,
        &["prod", "deploy", "v3-unhealthy", "--service", "gateway"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        has_step(&lines, "deploy.gate_failed") && !has_step(&lines, "deploy.switched"),
        "{out}"
    );
    assert_eq!(version_at(&gateway), "v2");

    // 3. A release that is healthy but answers 500s: switched, then reverted in the watch.
    let (code, out, lines) = run(&p, &["prod", "deploy", "v4-errors", "--service", "gateway"]);
    assert_eq!(code, 1, "{out}");
    assert!(has_step(&lines, "deploy.breach"), "{out}");
    assert_eq!(lines.last().unwrap()["result"], "reverted");
    assert_eq!(version_at(&gateway), "v2");

    // 4. Canary v3, 5. rolling v4.
    let (code, out, lines) = run(
        &p,
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
        &p,
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
    let (code, out, lines) = run(&p, &["prod", "rollback", "v3", "--service", "gateway"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("instant rollback to v3") && !has_step(&lines, "rollback.cold"),
        "{out}"
    );
    assert_eq!(version_at(&gateway), "v3");
    let (code, out, lines) = run(
        &p,
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
            (200..300).contains(&s.status) || (s.status == 500 && s.version == "v4-errors");
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
        ["v1", "v2", "v4-errors", "v3", "v4"],
        "versions in order of first answer"
    );
    assert_eq!(first_appearances(&pe), ["v1", "v2"]);
    assert_eq!(g.samples.last().unwrap().version, "v1");

    // History has every release with the right status.
    let out = p.cli(&["history", "--format", "json", "--limit", "20"]);
    let history: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let statuses: Vec<(&str, &str)> = history
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
            ("initial", "superseded"),
            // It still holds every service but the gateway.
            ("blue_green", "active"),
            ("blue_green", "failed"),
            ("blue_green", "reverted"),
            ("canary", "superseded"),
            ("rolling", "rolled_back"),
            ("rollback", "rolled_back"),
            ("rollback", "active"),
        ],
        "{history:#?}"
    );

    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(60)), Some(0));
    for pid in &p.seen_pids {
        assert!(!alive(*pid), "pid {pid} still alive after down");
    }
}

#[test]
fn a_second_deploy_gets_exit_3_naming_the_holder() {
    let mut p = Platform::new(&deploy_config(&[]));
    p.up();
    p.wait_for("all healthy", START, all_healthy);
    let config = p.config.clone();
    // A slow release holds the lock for seconds.
    let first = std::thread::spawn(move || {
        std::process::Command::new(bin())
            .args([
                "prod",
                "deploy",
                "v2-slow",
                "--service",
                "tokens",
                "--force",
                "--config",
            ])
            .arg(&config)
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(700));
    let lock = p.cli(&["lock", "status", "--format", "json"]);
    let lock: Value = serde_json::from_slice(&lock.stdout).unwrap();
    assert_eq!(lock["held"], true);
    let (code, out, lines) = run(&p, &["prod", "deploy", "v3", "--service", "gateway"]);
    assert_eq!(code, 3, "{out}");
    let msg = lines.last().unwrap()["message"].as_str().unwrap();
    assert!(
        msg.contains("held by") && msg.contains(lock["owner"].as_str().unwrap()),
        "{msg}"
    );
    let first = first.join().unwrap();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    // Waiting for the lock instead works once it is free.
    let (code, out, _) = run(
        &p,
        &[
            "prod",
            "deploy",
            "v3",
            "--service",
            "gateway",
            "--lock-wait",
            "30s",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let lock: Value =
        serde_json::from_slice(&p.cli(&["lock", "status", "--format", "json"]).stdout).unwrap();
    assert_eq!(lock["held"], false);
    // Rollback refuses unknown versions with the list of known ones.
    let (code, out, _) = run(&p, &["prod", "rollback", "v9", "--service", "gateway"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("known versions: v1, v3"), "{out}");
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(60)), Some(0));
}

#[test]
fn a_daemon_killed_mid_deploy_comes_back_on_the_last_active_release() {
    let mut p = Platform::new(&deploy_config(&[]));
    p.up();
    let status = p.wait_for("all healthy", START, all_healthy);
    let config = p.config.clone();
    let deploy = std::thread::spawn(move || {
        std::process::Command::new(bin())
            .args([
                "prod",
                "deploy",
                "v2-slow",
                "--service",
                "gateway",
                "--force",
                "--config",
            ])
            .arg(&config)
            .output()
            .unwrap()
    });
    // Mid-deploy: the new colour is starting (slowly).
    p.wait_for("the new colour starting", START, |s| {
        s["services"].as_array().unwrap().iter().any(|svc| {
            svc["instances"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["version"] == "v2-slow" && i["pid"].is_u64())
        })
    });
    let daemon = p.daemon.as_ref().unwrap().id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(10)), Some(-1));
    let cli = deploy.join().unwrap();
    assert_ne!(
        cli.status.code(),
        Some(0),
        "a deploy whose daemon died must not report success"
    );
    let before: Vec<u32> = p.seen_pids.iter().copied().collect();

    p.up();
    let after = p.wait_for("all healthy after restart", START, all_healthy);
    assert_eq!(version_at(&listen(&after, "gateway")), "v1");
    assert_eq!(listen(&after, "gateway"), listen(&status, "gateway"));
    for pid in before {
        assert!(!alive(pid), "pid {pid} from before the kill is still alive");
    }
    let history: Vec<Value> =
        serde_json::from_slice(&p.cli(&["history", "--format", "json"]).stdout).unwrap();
    assert_eq!(history[0]["status"], "interrupted", "{history:#?}");
    let lock: Value =
        serde_json::from_slice(&p.cli(&["lock", "status", "--format", "json"]).stdout).unwrap();
    assert_eq!(lock["held"], false);
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(60)), Some(0));
    for pid in &p.seen_pids {
        assert!(!alive(*pid), "pid {pid} still alive after down");
    }
}

/// Open TCP connections (not TIME_WAIT) to any of `ports` on loopback, from /proc/net/tcp.
fn open_connections_to(ports: &std::collections::BTreeSet<u16>) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = f[2]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let state = f[3];
            // 01 ESTABLISHED, 08 CLOSE_WAIT: held open by someone.
            remote_port.is_some_and(|p| ports.contains(&p)) && (state == "01" || state == "08")
        })
        .count()
}

#[test]
fn upgraded_connections_get_their_drain_and_retired_colours_keep_no_connections() {
    let mut p = Platform::new(&deploy_config(&[
        ("retire_after", "\"0s\""),
        ("watch", "\"0s\""),
        ("upgrade_drain_timeout", "\"3s\""),
        ("drain_timeout", "\"2s\""),
    ]));
    p.up();
    let status = p.wait_for("all healthy", START, all_healthy);
    let gateway = listen(&status, "gateway");

    // An upgraded connection through the proxy to v1.
    use std::io::{Read, Write};
    let mut ws = std::net::TcpStream::connect(&gateway).unwrap();
    ws.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    ws.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ws.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"));
    let started = std::time::Instant::now();
    let (code, out, _) = run(&p, &["prod", "deploy", "v2", "--service", "gateway"]);
    assert_eq!(code, 0, "{out}");
    // Switched, but the upgraded connection still works: it has its own drain.
    ws.write_all(b"still here").unwrap();
    let mut buf = [0u8; 10];
    ws.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
    // ...which ends at its deadline, when the old instance stops.
    let n = ws.read(&mut buf).unwrap_or(0);
    assert_eq!(
        n, 0,
        "the upgraded connection should be closed at the drain deadline"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "cut before its drain deadline: {:?}",
        started.elapsed()
    );

    // Ten switches under light load; then nothing stays connected to a retired colour.
    let load = Load::start(&gateway, 2);
    let mut retired_ports = std::collections::BTreeSet::new();
    for i in 3..13 {
        let s = p.status().unwrap();
        for svc in s["services"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"] == "gateway")
        {
            for inst in svc["instances"].as_array().unwrap() {
                retired_ports.insert(inst["port"].as_u64().unwrap() as u16);
            }
        }
        let (code, out, _) = run(
            &p,
            &["prod", "deploy", &format!("v{i}"), "--service", "gateway"],
        );
        assert_eq!(code, 0, "{out}");
    }
    let report = load.stop();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report
        .samples
        .iter()
        .all(|s| s.status == 200 && !s.by_proxy));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        open_connections_to(&retired_ports),
        0,
        "connections left open to retired colours"
    );
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(60)), Some(0));
}

#[test]
fn hooks_run_with_the_release_in_their_environment_and_a_failing_pre_deploy_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hooks.log");
    let gate = dir.path().join("allow");
    let hooks = format!(
        "\n[hooks]\npre_deploy = [\"sh\", \"-c\", \"test -e {gate} && echo pre $TCF_VERSION $TCF_SERVICES >> {log}\"]\npost_deploy = [\"sh\", \"-c\", \"echo post $TCF_VERSION $TCF_RELEASE >> {log}\"]\ntimeout = \"10s\"\n",
        gate = gate.display(),
        log = log.display()
    );
    let mut p = Platform::new(&format!("{}{hooks}", deploy_config(&[("watch", "\"0s\"")])));
    p.up();
    let status = p.wait_for("all healthy", START, all_healthy);
    // The pre-deploy hook fails (no gate file): nothing is deployed.
    let (code, out, _) = run(&p, &["prod", "deploy", "v2", "--service", "tokens"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("pre_deploy hook failed"), "{out}");
    assert_eq!(version_at(&listen(&status, "tokens")), "v1");
    std::fs::write(&gate, "").unwrap();
    let (code, out, lines) = run(&p, &["prod", "deploy", "v2", "--service", "tokens"]);
    assert_eq!(code, 0, "{out}");
    let release = lines.last().unwrap()["release"].as_i64().unwrap();
    let written = std::fs::read_to_string(&log).unwrap();
    assert_eq!(written, format!("pre v2 tokens\npost v2 {release}\n"));
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(60)), Some(0));
}
