//! The whole platform, for real: `up` on the example, traffic through every public port,
//! status contract, crash recovery, `down`, and no process left behind.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const START: Duration = Duration::from_secs(60);

/// Replace values that change from run to run, keeping the shape of the JSON contract.
fn normalise(v: &Value) -> Value {
    let mut v = v.clone();
    for svc in v["services"].as_array_mut().unwrap() {
        svc["listen"] = "<addr>".into();
        for i in svc["instances"].as_array_mut().unwrap() {
            for key in ["pid", "port", "uptime_s"] {
                assert!(i[key].is_u64(), "{key} should be a number: {i}");
                i[key] = format!("<{key}>").into();
            }
        }
    }
    v
}

#[test]
fn up_serve_recover_and_down_leaves_nothing_behind() {
    let mut p = Platform::new(&example_config());
    p.up();
    let status = p.wait_for("all six services healthy", START, all_healthy);
    insta::assert_json_snapshot!("status_contract", normalise(&status));

    // Every public port answers through the proxy, from the service it fronts.
    for svc in status["services"].as_array().unwrap() {
        let name = svc["name"].as_str().unwrap();
        let addr = svc["listen"].as_str().unwrap();
        for _ in 0..3 {
            let (code, body) = http_get(addr, "/hello").unwrap();
            assert_eq!(code, 200, "{name} via {addr}: {body}");
            let answer: Value = serde_json::from_str(body.trim()).unwrap();
            assert_eq!(answer["service"], name);
            assert_eq!(answer["version"], "v1");
            assert_eq!(answer["path"], "/hello");
        }
    }

    // An instance killed with SIGKILL is restarted and healthy again.
    let gateway = &status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "gateway")
        .unwrap()["instances"][0];
    let (victim_id, victim_pid) = (
        gateway["id"].as_str().unwrap().to_string(),
        gateway["pid"].as_u64().unwrap(),
    );
    kill9(victim_pid as u32);
    let after = p.wait_for("the killed instance back and healthy", START, |s| {
        all_healthy(s)
            && s["services"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|svc| svc["instances"].as_array().unwrap())
                .any(|i| {
                    i["id"] == victim_id.as_str()
                        && i["restarts"].as_u64() >= Some(1)
                        && i["pid"].as_u64() != Some(victim_pid)
                })
    });
    assert!(!alive(victim_pid as u32));
    let gateway_addr = after["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "gateway")
        .unwrap()["listen"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(http_get(&gateway_addr, "/").unwrap().0, 200);

    // The crash and the restart are in the audit trail.
    let events = p.cli(&["events", "--format", "json", "--limit", "500"]);
    assert!(events.status.success());
    let events: Vec<Value> = serde_json::from_slice(&events.stdout).unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e["instance"] == victim_id.as_str())
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "instance.started",
        "instance.healthy",
        "instance.exited",
        "instance.restarting",
    ] {
        assert!(kinds.contains(&k), "missing {k} in {kinds:?}");
    }

    // Logs of a service come back per instance.
    let logs = p.cli(&["logs", "gateway", "--tail", "5"]);
    assert!(logs.status.success());
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(
        text.contains("gateway-blue-2 | tcf-demo: gateway v1"),
        "{text}"
    );

    // prod status with metrics has the contract's extra fields.
    let out = p.cli(&["prod", "status", "--metrics", "--format", "json"]);
    assert!(out.status.success());
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    for svc in m["services"].as_array().unwrap() {
        for key in [
            "requests_per_s",
            "errors_5xx_per_s",
            "error_ratio_5xx",
            "cpu_percent",
            "rss_bytes",
        ] {
            assert!(
                svc["metrics"][key].is_number(),
                "{key} missing in {}",
                svc["metrics"]
            );
        }
    }

    // A second `up` on the same state directory is refused, naming the running daemon.
    let second = p.cli(&["up"]);
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another tcf-platform daemon"), "{err}");

    // down: exit 0, the daemon exits 0, and every process the platform started is gone.
    p.status();
    let down = p.cli(&["down"]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
    assert!(p.seen_pids.len() >= 8, "saw {:?}", p.seen_pids);
    for pid in &p.seen_pids {
        assert!(!alive(*pid), "instance pid {pid} still alive after down");
    }
    // Without a daemon, commands say so and how to start one.
    let out = p.cli(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no tcf-platform daemon is running") && err.contains("tcf-platform up"),
        "{err}"
    );
}

/// Each instance's id with its pid and internal port, from a status.
fn instance_pids(status: &Value) -> std::collections::BTreeMap<String, (u64, u64)> {
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["instances"].as_array().unwrap().iter())
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                (i["pid"].as_u64().unwrap(), i["port"].as_u64().unwrap()),
            )
        })
        .collect()
}

#[test]
fn a_daemon_killed_with_sigkill_leaves_its_instances_serving_and_the_next_start_adopts_them() {
    let mut p = Platform::new(&example_config());
    p.up();
    let before = p.wait_for("all healthy", START, all_healthy);
    let instances = instance_pids(&before);
    p.kill_daemon();

    // No daemon: every instance still runs and answers on its own port, and what it writes
    // still reaches its log file (the log shim, not the daemon, holds its output).
    for (id, (pid, port)) in &instances {
        assert!(alive(*pid as u32), "{id} (pid {pid}) died with the daemon");
        let (code, _) = http_get(
            &format!("127.0.0.1:{port}"),
            &format!("/x?say=said-while-no-daemon-{id}"),
        )
        .unwrap();
        assert_eq!(code, 200, "{id} does not answer without the daemon");
    }
    let logs = p.dir.path().join(".tcf/logs");
    for id in instances.keys() {
        wait_until(&format!("{id}'s line in its log"), START, || {
            std::fs::read_to_string(logs.join(format!("{id}.log")))
                .is_ok_and(|l| l.contains(&format!("said-while-no-daemon-{id}")))
        });
    }

    // Started again: everything is adopted (same pids, same ports), nothing restarted.
    p.up();
    let after = p.wait_for("all healthy after restart", START, all_healthy);
    assert_eq!(instance_pids(&after), instances, "instances were replaced");
    let gateway = listen_of(&after, "gateway");
    let (code, _) = http_get(&gateway, "/through-the-new-daemon?say=after-adoption").unwrap();
    assert_eq!(code, 200);
    let events: Vec<Value> = serde_json::from_slice(
        &p.cli(&["events", "--format", "json", "--limit", "1000"])
            .stdout,
    )
    .unwrap();
    assert!(
        events.iter().any(|e| e["kind"] == "daemon.started"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("did not stop cleanly")),
        "the restart should note the unclean stop"
    );
    let adopted = events
        .iter()
        .filter(|e| e["kind"] == "recovery.adopted")
        .count();
    assert_eq!(adopted, instances.len(), "every instance should be adopted");
    assert!(
        !events.iter().any(|e| e["kind"] == "recovery.cleaned_up"),
        "nothing should be cleaned up"
    );
    // Output is still captured for the adopted instances.
    wait_until("the gateway's line after adoption", START, || {
        ["gateway-blue-1", "gateway-blue-2"].iter().any(|id| {
            std::fs::read_to_string(logs.join(format!("{id}.log")))
                .is_ok_and(|l| l.contains("after-adoption"))
        })
    });

    // `down` still stops everything; the next `up` starts fresh.
    let down = p.cli(&["down"]);
    assert!(down.status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
    for (id, (pid, _)) in &instances {
        assert!(
            !alive(*pid as u32),
            "{id} (pid {pid}) still alive after down"
        );
    }
    p.up();
    let fresh = p.wait_for("all healthy after down and up", START, all_healthy);
    for (id, (pid, _)) in instance_pids(&fresh) {
        assert_ne!(Some(pid), instances.get(&id).map(|i| i.0), "{id} not fresh");
    }
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
    for pid in &p.seen_pids {
        assert!(!alive(*pid), "pid {pid} still alive after down");
    }
}

#[test]
fn sigterm_stops_the_platform_cleanly() {
    let mut p = Platform::new(&example_config());
    p.up();
    p.wait_for("all healthy", START, all_healthy);
    let daemon_pid = p.daemon.as_ref().unwrap().id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
    for pid in &p.seen_pids {
        assert!(!alive(*pid), "pid {pid} still alive after SIGTERM");
    }
    let log = std::fs::read_to_string(p.daemon_log()).unwrap();
    assert!(log.contains("daemon.stopped"), "{log}");
}

#[test]
fn a_service_waits_for_its_external_dependency() {
    let db_port = free_port();
    let api_port = free_port();
    let config = format!(
        r#"[platform]
name = "deps"

[dependencies.db]
kind = "tcp"
address = "127.0.0.1:{db_port}"
interval = "200ms"

[services.api]
command = ["tcf-demo"]
version = "v1"
listen = "127.0.0.1:{api_port}"
depends_on = ["db"]
"#
    );
    let mut p = Platform::new(&config);
    p.up();
    let waiting = p.wait_for("the dependency probed", START, |s| {
        s["dependencies"][0]["healthy"] == false
    });
    assert_eq!(
        waiting["services"][0]["instances"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "api must not start before db is up"
    );
    assert!(waiting["dependencies"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("cannot connect"));
    // Until it has a healthy instance, the proxy answers 503 and says why.
    let (code, body) = http_get(&format!("127.0.0.1:{api_port}"), "/").unwrap();
    assert_eq!(code, 503);
    assert!(
        body.contains("no healthy instance of service api"),
        "{body}"
    );

    let db = std::net::TcpListener::bind(("127.0.0.1", db_port)).unwrap();
    p.wait_for("api started once db is healthy", START, all_healthy);
    assert_eq!(
        http_get(&format!("127.0.0.1:{api_port}"), "/").unwrap().0,
        200
    );
    drop(db);

    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn an_instance_that_keeps_crashing_is_marked_crashloop() {
    let port = free_port();
    let config = format!(
        r#"[platform]
name = "crashy"

[services.broken]
command = ["sh", "-c", "echo starting {{version}}; exit 3"]
version = "v1"
listen = "127.0.0.1:{port}"
"#
    );
    let mut p = Platform::new(&config);
    p.up();
    let s = p.wait_for("crashloop", START, |s| {
        s["services"][0]["instances"][0]["state"] == "crashloop"
    });
    assert!(
        s["services"][0]["instances"][0]["restarts"]
            .as_u64()
            .unwrap()
            >= 5
    );
    assert_eq!(s["services"][0]["healthy"], false);
    let events: Vec<Value> =
        serde_json::from_slice(&p.cli(&["events", "--format", "json"]).stdout).unwrap();
    let crashloop = events
        .iter()
        .find(|e| e["kind"] == "instance.crashloop")
        .expect("a crashloop event");
    assert!(crashloop["message"]
        .as_str()
        .unwrap()
        .contains("tcf-platform logs broken"));
    // Backoff grows: the restarts are not a busy loop.
    let restarts: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "instance.restarting")
        .collect();
    assert_eq!(restarts[0]["message"], "restarting in 250ms");
    assert_eq!(restarts[1]["message"], "restarting in 500ms");
    // Its output is in its log, placeholders replaced.
    let logs = String::from_utf8_lossy(&p.cli(&["logs", "broken"]).stdout).to_string();
    assert!(logs.contains("broken-blue-1 | starting v1"), "{logs}");
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn a_typo_in_the_config_does_not_lock_the_operator_out() {
    let mut p = Platform::new(&example_config());
    p.up();
    p.wait_for("all healthy", START, all_healthy);
    // Log lines carry the time they were written, shown on request only.
    let plain = String::from_utf8_lossy(&p.cli(&["logs", "tokens"]).stdout).to_string();
    let stamped =
        String::from_utf8_lossy(&p.cli(&["logs", "tokens", "--timestamps"]).stdout).to_string();
    let first = stamped.lines().next().expect("tokens logged something");
    let (_, rest) = first.split_once(" | ").unwrap();
    assert!(
        rest.len() > 25 && &rest[10..11] == "T" && &rest[23..25] == "Z ",
        "{first}"
    );
    assert_eq!(
        plain.lines().next().unwrap().split_once(" | ").unwrap().1,
        &rest[25..]
    );
    // One rule for versions: no path traversal, nothing an image tag would refuse.
    for bad in ["..", "v1+build", "../v1;$(id)"] {
        let out = p.cli(&["prod", "deploy", bad, "--force"]);
        assert_eq!(out.status.code(), Some(2), "{bad:?} accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid version"));
    }
    // A reason cannot forge a line of history.
    let out = p.cli(&[
        "prod",
        "deploy",
        "v2",
        "--force",
        "--reason",
        "ok
2026-01-01 release 99 by admin",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let good = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(&p.config, good.replace("instances = 2", "instnces = 2")).unwrap();
    let out = p.cli(&["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("does not validate"), "{err}");
    assert!(p.cli(&["history"]).status.success());
    assert!(p.cli(&["logs", "tokens"]).status.success());
    // A deploy from a broken file is refused before anything is asked of the daemon.
    let deploy = p.cli(&["prod", "deploy", "v2", "--force"]);
    assert_eq!(deploy.status.code(), Some(2));
    // Not even TOML any more: still reachable.
    std::fs::write(&p.config, format!("{good}\n[services.broken\n")).unwrap();
    assert!(p.cli(&["status"]).status.success());
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn a_stuck_down_can_be_forced() {
    let port = free_port();
    let config = format!(
        "[platform]\nname = \"stuck\"\n\n[services.stubborn]\ncommand = [\"sh\", \"-c\", \"trap '' TERM; while true; do sleep 1; done\"]\nversion = \"v1\"\nlisten = \"127.0.0.1:{port}\"\nstop_timeout = \"5m\"\nhealth = {{ probe = \"tcp\" }}\n"
    );
    let mut p = Platform::new(&config);
    p.up();
    let status = p.wait_for("the instance running", START, |s| {
        s["services"][0]["instances"][0]["pid"].is_u64()
    });
    let pid = status["services"][0]["instances"][0]["pid"]
        .as_u64()
        .unwrap() as u32;
    // It ignores SIGTERM and has five minutes to stop: a plain down gives up and says how on.
    let out = p.cli(&["down", "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("down --force"));
    let out = p.cli(&["down", "--force", "--timeout", "1s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    // The API is gone already (the daemon is stopping): found by its lock file, and killed.
    assert!(err.contains("killed the daemon"), "{err}");
    wait_until(
        "the stubborn instance gone",
        Duration::from_secs(10),
        || !alive(pid),
    );
    assert!(p.wait_daemon_exit(Duration::from_secs(10)).is_some());
}

/// One raw HTTP/1.1 request on the daemon's socket: (status, body).
fn api_raw(p: &Platform, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s =
        std::os::unix::net::UnixStream::connect(p.dir.path().join(".tcf/tcf.sock")).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1.to_string();
    (code, body)
}

#[test]
fn every_api_error_has_the_documented_shape() {
    let mut p = Platform::new(&example_config());
    p.up();
    p.wait_for("all healthy", START, all_healthy);
    let post = |body: &str, ctype: &str| {
        format!(
            "POST /v1/deploy HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let cases = [
        (post("{not json", "application/json"), 400),
        (post("{\"version\": \"v2\"}", "text/plain"), 415),
        (post("{\"version\": \"v2\"}", "application/json"), 422),
        (
            post("{\"version\": 2, \"actor\": \"a\"}", "application/json"),
            422,
        ),
        (
            "GET /v1/deploy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
            405,
        ),
        (
            "GET /v1/events?limit=many HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                .to_string(),
            400,
        ),
        (
            "GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
            404,
        ),
    ];
    for (request, want) in cases {
        let (code, body) = api_raw(&p, &request);
        assert_eq!(code, want, "{request}\n{body}");
        let v: Value = serde_json::from_str(body.trim())
            .unwrap_or_else(|_| panic!("not JSON for {request}: {body}"));
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    }
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn history_and_events_are_readable_when_the_daemon_is_down() {
    let mut p = Platform::new(&example_config());
    p.up();
    p.wait_for("all healthy", START, all_healthy);
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
    let files = |p: &Platform| {
        let mut f: Vec<_> = std::fs::read_dir(p.dir.path().join(".tcf"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        f.sort();
        f
    };
    let before = files(&p);
    let out = p.cli(&["history", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let history: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history[0]["strategy"], "initial");
    let out = p.cli(&["events", "--format", "json"]);
    assert!(out.status.success());
    let events: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(events.last().unwrap()["kind"], "daemon.stopped");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon is running"));
    // Other commands still say there is no daemon.
    assert_eq!(p.cli(&["status"]).status.code(), Some(1));
    assert_eq!(
        before,
        files(&p),
        "reading wrote nothing in the state directory"
    );
}

#[test]
fn a_store_lost_while_the_daemon_was_down_is_no_first_start() {
    let mut p = Platform::new(&example_config());
    p.up();
    p.wait_for("all healthy", START, all_healthy);
    p.kill_daemon();
    let old: Vec<u32> = p.seen_pids.iter().copied().collect();
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(p.dir.path().join(".tcf").join(f));
    }
    p.up();
    let s = p.wait_for("all healthy again", START, all_healthy);
    for pid in &old {
        assert!(!alive(*pid), "pid {pid} left running unmanaged");
    }
    assert!(
        s["warnings"].as_array().is_some_and(|w| w
            .iter()
            .any(|m| m.as_str().unwrap().contains("was missing at start"))),
        "{s:#}"
    );
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn the_access_log_is_written_for_the_services_that_ask_for_it_only() {
    let config = example_config().replace(
        "[services.personas]",
        "[services.gateway.proxy]\naccess_log = true\n\n[services.personas]",
    );
    let mut p = Platform::new(&config);
    p.up();
    let status = p.wait_for("all healthy", START, all_healthy);
    let gateway = listen_of(&status, "gateway");
    let personas = listen_of(&status, "personas");
    for _ in 0..3 {
        assert_eq!(http_get(&gateway, "/hello?token=secret").unwrap().0, 200);
        assert_eq!(http_get(&personas, "/hello").unwrap().0, 200);
    }
    let mut lines: Vec<Value> = Vec::new();
    common::wait_until("three access log lines", Duration::from_secs(10), || {
        let out = p.cli(&["logs", "gateway", "--access"]);
        assert!(out.status.success(), "{out:?}");
        lines = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        lines.len() >= 3
    });
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in &lines {
        assert_eq!(line["service"], "gateway");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["path"], "/hello", "no query string: {line}");
        assert_eq!(line["status"], 200);
        assert_eq!(line["by_proxy"], false);
        assert_eq!(line["error"], Value::Null);
        assert_eq!(line["colour"], "blue");
        assert_eq!(line["version"], "v1");
        assert!(
            line["upstream"]
                .as_str()
                .unwrap()
                .starts_with("gateway-blue-"),
            "{line}"
        );
        assert!(line["bytes"].as_u64().unwrap() > 0, "{line}");
        assert!(line["duration_ms"].as_f64().is_some(), "{line}");
        assert!(line["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        humantime::parse_rfc3339(line["time"].as_str().unwrap()).unwrap();
    }
    // Off by default: the service that did not ask for one has no file.
    let logs = p.dir.path().join(".tcf/logs");
    assert!(logs.join("access-gateway.log").exists());
    assert!(!logs.join("access-personas.log").exists());
    let out = p.cli(&["logs", "personas", "--access"]);
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
}

fn listen_of(status: &Value, service: &str) -> String {
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
