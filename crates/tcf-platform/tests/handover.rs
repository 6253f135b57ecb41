//! Restarting and upgrading the daemon itself under load: the listeners are handed over to the
//! new process, the instances are adopted, and no request fails.

mod common;

use common::load::Load;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

const START: Duration = Duration::from_secs(60);

/// Each instance's id with its pid.
fn instance_pids(status: &Value) -> BTreeMap<String, u64> {
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["instances"].as_array().unwrap().iter())
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["pid"].as_u64().unwrap(),
            )
        })
        .collect()
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

/// Every daemon a test started (the first is the test's child; the others were started by
/// their predecessors): SIGKILLed at the end if still alive, so a failed test leaves none.
struct Daemons(Vec<u32>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for pid in &self.0 {
            if alive(*pid) {
                kill9(*pid);
            }
        }
    }
}

fn daemon_pid(p: &Platform) -> u32 {
    let out = p.cli(&["status", "--format", "json"]);
    assert!(out.status.success());
    std::fs::read_to_string(p.dir.path().join(".tcf/daemon.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Run `daemon ARGS`; returns the new daemon's pid once the old one is gone.
fn hand_over(p: &Platform, daemons: &mut Daemons, args: &[&str]) -> u32 {
    let old = daemon_pid(p);
    let mut full = vec!["daemon"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--format", "json"]);
    let out = p.cli(&full);
    assert!(
        out.status.success(),
        "daemon {args:?} failed: {}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(p.daemon_log()).unwrap_or_default()
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["old_pid"], old);
    let new = answer["new_pid"].as_u64().unwrap() as u32;
    assert_ne!(new, old);
    daemons.0.push(new);
    wait_until("the old daemon to drain and exit", START, || !alive(old));
    assert_eq!(daemon_pid(p), new);
    new
}

#[test]
fn restarts_and_an_upgrade_under_load_fail_no_request_and_keep_every_instance() {
    // The daemon's own addresses that are not handed over (the remote API, the dashboard) are
    // bound again beside the old daemon's: every takeover must manage that too.
    let (remote_port, dashboard_port) = (free_port(), free_port());
    let mut p = Platform::new(&format!(
        "{}\n[daemon]\nlisten = \"127.0.0.1:{remote_port}\"\n\n[monitor.dashboard]\nlisten = \"127.0.0.1:{dashboard_port}\"\n",
        example_config()
    ));
    p.up();
    let mut daemons = Daemons(vec![p.daemon.as_ref().unwrap().id()]);
    let before = p.wait_for("all healthy", START, all_healthy);
    let pids = instance_pids(&before);
    let gateway = listen_of(&before, "gateway");
    let personas = listen_of(&before, "personas");

    let load = Load::start(&gateway, 16);
    let other_load = Load::start(&personas, 4);
    // A request held open across the first restart: the old daemon finishes it.
    let held = {
        let addr = gateway.clone();
        std::thread::spawn(move || http_get(&addr, "/held?hold_ms=3000"))
    };
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        hand_over(&p, &mut daemons, &["restart"]);
        std::thread::sleep(Duration::from_millis(200));
    }
    // An upgrade to a copy of the binary (beside it, where the demo service is found too).
    let copy = bin().with_file_name(format!("tcf-platform-upgrade-{}", std::process::id()));
    std::fs::copy(bin(), &copy).unwrap();
    let _remove_copy = RemoveFile(copy.clone());
    hand_over(
        &p,
        &mut daemons,
        &["upgrade", "--binary", copy.to_str().unwrap()],
    );
    std::thread::sleep(Duration::from_millis(300));

    let (code, body) = held.join().unwrap().expect("the held request");
    assert_eq!(code, 200, "{body}");
    let report = load.stop();
    let other = other_load.stop();
    for (name, r) in [("gateway", &report), ("personas", &other)] {
        assert!(
            r.errors.is_empty(),
            "{name}: connection errors: {:?}",
            r.errors
        );
        assert!(!r.samples.is_empty(), "{name}: no requests were made");
        let failed: Vec<_> = r.samples.iter().filter(|s| s.status / 100 != 2).collect();
        assert!(
            failed.is_empty(),
            "{name}: {} of {} requests failed, e.g. {:?}",
            failed.len(),
            r.samples.len(),
            failed.first()
        );
    }
    let after = p.wait_for("all healthy after the upgrade", START, all_healthy);
    assert_eq!(instance_pids(&after), pids, "instances were replaced");
    assert_eq!(
        after["api"]["listen"],
        format!("127.0.0.1:{remote_port}"),
        "{after}"
    );
    std::net::TcpStream::connect(("127.0.0.1", remote_port)).expect("the remote API listens");
    let (code, _) = http_get(&format!("127.0.0.1:{dashboard_port}"), "/").expect("the dashboard");
    assert_eq!(code, 200);

    // The trail is continuous in the one store: each takeover and each release kept.
    let events: Vec<Value> = serde_json::from_slice(
        &p.cli(&["events", "--format", "json", "--limit", "2000"])
            .stdout,
    )
    .unwrap();
    let took_over = events
        .iter()
        .filter(|e| e["kind"] == "daemon.took_over")
        .count();
    assert_eq!(took_over, 6, "five restarts and one upgrade");

    assert!(p.cli(&["down"]).status.success());
    let last = *daemons.0.last().unwrap();
    wait_until("the last daemon to stop", START, || !alive(last));
    for pid in pids.values() {
        assert!(!alive(*pid as u32), "pid {pid} still alive after down");
    }
}

#[test]
fn a_new_daemon_that_fails_to_start_leaves_the_old_one_serving() {
    let mut p = Platform::new(&example_config());
    p.up();
    let _daemons = Daemons(vec![p.daemon.as_ref().unwrap().id()]);
    let before = p.wait_for("all healthy", START, all_healthy);
    let gateway = listen_of(&before, "gateway");
    let old = daemon_pid(&p);

    // A "binary" that exits at once, before it could take anything over.
    let broken = p.dir.path().join("broken-tcf-platform");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'this build is broken' >&2\nexit 3\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = p.cli(&["daemon", "upgrade", "--binary", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exited before taking over"), "{err}");
    assert!(err.contains("keeps serving") || alive(old), "{err}");

    // A file that is not executable is refused before anything starts.
    let not_exec = p.dir.path().join("not-executable");
    std::fs::write(&not_exec, "").unwrap();
    let out = p.cli(&["daemon", "upgrade", "--binary", not_exec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an executable"));

    // The old daemon still serves, records and supervises.
    assert_eq!(daemon_pid(&p), old);
    let (code, _) = http_get(&gateway, "/still-here").unwrap();
    assert_eq!(code, 200);
    let events: Vec<Value> = serde_json::from_slice(
        &p.cli(&["events", "--format", "json", "--limit", "500"])
            .stdout,
    )
    .unwrap();
    assert!(events.iter().any(|e| e["kind"] == "daemon.handover_failed"));
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
}

struct RemoveFile(std::path::PathBuf);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn service<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

#[test]
fn reload_adds_removes_scales_and_switches_services_under_load() {
    let text = example_config();
    let mut p = Platform::new(&text);
    p.up();
    let mut daemons = Daemons(vec![p.daemon.as_ref().unwrap().id()]);
    let before = p.wait_for("all healthy", START, all_healthy);
    let pids = instance_pids(&before);
    let tokens_addr = listen_of(&before, "tokens");
    let loads: Vec<(&str, Load)> = ["gateway", "projects", "personas"]
        .into_iter()
        .map(|s| (s, Load::start(&listen_of(&before, s), 8)))
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // tokens goes, search comes, personas runs two instances, the gateway's settings change.
    let search_port = free_port();
    let tokens_at = text.find("[services.tokens]").unwrap();
    let mut changed = text[..tokens_at].to_string();
    changed = changed
        .replace(
            "depends_on = [\"personas\", \"workflows\", \"projects\", \"context\", \"tokens\"]",
            "depends_on = [\"personas\", \"workflows\", \"projects\", \"context\"]\nenv = { GATEWAY_MODE = \"reloaded\" }",
        )
        .replacen(
            "[services.personas]\ncommand = [\"tcf-demo\"]",
            "[services.personas]\ninstances = 2\ncommand = [\"tcf-demo\"]",
            1,
        );
    changed.push_str(&format!(
        "[services.search]\ncommand = [\"tcf-demo\"]\nversion = \"v1\"\nlisten = \"127.0.0.1:{search_port}\"\n"
    ));
    assert_ne!(changed, text[..tokens_at]);
    std::fs::write(&p.config, &changed).unwrap();

    let out = p.cli(&["reload", "--format", "json"]);
    assert!(
        out.status.success(),
        "reload failed: {}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(p.daemon_log()).unwrap_or_default()
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["added"], serde_json::json!(["search"]));
    assert_eq!(summary["removed"], serde_json::json!(["tokens"]));
    assert_eq!(
        summary["scaled"],
        serde_json::json!([{"service": "personas", "from": 1, "to": 2}])
    );
    assert_eq!(summary["changed"], serde_json::json!(["gateway"]));
    let old = summary["old_pid"].as_u64().unwrap() as u32;
    daemons.0.push(summary["new_pid"].as_u64().unwrap() as u32);
    wait_until("the old daemon to drain and exit", START, || !alive(old));

    // The gateway's switch is a release with its watch period: allow for it.
    let after = p.wait_for("the new config applied", START * 3, |s| {
        service(s, "tokens").is_none()
            && service(s, "search").is_some_and(|v| v["healthy"] == true)
            && service(s, "personas").is_some_and(|v| {
                v["instances"]
                    .as_array()
                    .is_some_and(|i| i.len() == 2 && i.iter().all(|i| i["health"] == "healthy"))
            })
            && s["deploy_in_progress"].is_null()
            && service(s, "gateway").is_some_and(|v| {
                // Switched to new instances (the old colour may stay warm for a rollback).
                v["instances"].as_array().is_some_and(|i| {
                    i.iter().any(|i| {
                        !pids.contains_key(i["id"].as_str().unwrap()) && i["health"] == "healthy"
                    })
                })
            })
            && all_healthy(s)
    });
    std::thread::sleep(Duration::from_millis(300));
    for (name, load) in loads {
        let r = load.stop();
        assert!(
            r.errors.is_empty(),
            "{name}: connection errors: {:?}",
            r.errors
        );
        assert!(!r.samples.is_empty(), "{name}: no requests were made");
        let failed = r.samples.iter().filter(|s| s.status / 100 != 2).count();
        assert_eq!(failed, 0, "{name}: {failed} of {} failed", r.samples.len());
    }
    // Unchanged services kept their instances; the removed one's are gone.
    let now = instance_pids(&after);
    for id in [
        "projects-blue-1",
        "context-blue-1",
        "workflows-blue-1",
        "personas-blue-1",
    ] {
        assert_eq!(now.get(id), pids.get(id), "{id} was replaced");
    }
    wait_until("tokens' instance stopped", START, || {
        !alive(pids["tokens-blue-1"] as u32)
    });
    wait_until("tokens' address closed", START, || {
        std::net::TcpStream::connect(&tokens_addr).is_err()
    });
    let (code, _) = http_get(&format!("127.0.0.1:{search_port}"), "/hello").unwrap();
    assert_eq!(code, 200);

    // An invalid file is refused and changes nothing.
    let daemon = daemon_pid(&p);
    std::fs::write(&p.config, format!("{changed}\n[services.broken\n")).unwrap();
    let out = p.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not validate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(daemon_pid(&p), daemon);
    std::fs::write(&p.config, &changed).unwrap();
    assert_eq!(
        instance_pids(&p.status().unwrap()),
        instance_pids(&after),
        "a refused reload changed something"
    );

    assert!(p.cli(&["down"]).status.success());
    wait_until("the daemon to stop", START, || !alive(daemon));
}

#[test]
fn a_new_daemon_that_fails_after_the_old_one_let_go_hands_everything_back() {
    let text = example_config();
    let mut p = Platform::new(&text);
    p.up();
    let _daemons = Daemons(vec![p.daemon.as_ref().unwrap().id()]);
    let before = p.wait_for("all healthy", START, all_healthy);
    let pids = instance_pids(&before);
    let gateway = listen_of(&before, "gateway");
    let old = daemon_pid(&p);
    let load = Load::start(&gateway, 8);

    // The new daemon gets the listeners and the store, then cannot bind a new service's
    // address (someone else holds it): it fails after the old daemon let go of everything.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    std::fs::write(
        &p.config,
        format!("{text}\n[services.blocked]\ncommand = [\"tcf-demo\"]\nversion = \"v1\"\nlisten = \"{taken}\"\n"),
    )
    .unwrap();
    let out = p.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on"), "{err}");
    assert_eq!(daemon_pid(&p), old);

    // The old daemon has its store, lock and supervisors back: it records, and it restarts an
    // instance that dies.
    std::fs::write(&p.config, &text).unwrap();
    let victim = pids["projects-blue-1"] as u32;
    kill9(victim);
    let after = p.wait_for("projects restarted", START, |s| {
        all_healthy(s) && instance_pids(s)["projects-blue-1"] != victim as u64
    });
    let report = load.stop();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.samples.iter().all(|s| s.status / 100 == 2));
    let now = instance_pids(&after);
    for (id, pid) in &pids {
        if id != "projects-blue-1" {
            assert_eq!(now.get(id), Some(pid), "{id} was replaced");
        }
    }
    let events: Vec<Value> = serde_json::from_slice(
        &p.cli(&["events", "--format", "json", "--limit", "500"])
            .stdout,
    )
    .unwrap();
    for kind in ["daemon.handover_failed", "daemon.handover_aborted"] {
        assert!(events.iter().any(|e| e["kind"] == kind), "no {kind} event");
    }
    drop(squatter);
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn sighup_reloads_and_an_invalid_file_changes_nothing() {
    let text = example_config();
    let mut p = Platform::new(&text);
    p.up();
    let mut daemons = Daemons(vec![p.daemon.as_ref().unwrap().id()]);
    p.wait_for("all healthy", START, all_healthy);
    let first = daemon_pid(&p);
    let hup = |pid: u32| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap()
    };

    // Invalid: refused, the daemon keeps running (SIGHUP does not kill it) and says why.
    std::fs::write(&p.config, format!("{text}\n[services.broken\n")).unwrap();
    hup(first);
    wait_until("the refusal in the daemon's log", START, || {
        std::fs::read_to_string(p.daemon_log()).is_ok_and(|l| l.contains("SIGHUP: reload refused"))
    });
    assert!(alive(first));

    // Valid: personas gets a second instance from a new daemon.
    std::fs::write(
        &p.config,
        text.replacen(
            "[services.personas]\ncommand = [\"tcf-demo\"]",
            "[services.personas]\ninstances = 2\ncommand = [\"tcf-demo\"]",
            1,
        ),
    )
    .unwrap();
    hup(first);
    wait_until("the old daemon replaced", START, || !alive(first));
    let second = daemon_pid(&p);
    daemons.0.push(second);
    p.wait_for("personas scaled to 2", START, |s| {
        all_healthy(s)
            && service(s, "personas")
                .is_some_and(|v| v["instances"].as_array().is_some_and(|i| i.len() == 2))
    });
    assert!(p.cli(&["down"]).status.success());
    wait_until("the daemon to stop", START, || !alive(second));
}
