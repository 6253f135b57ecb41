//! Zero-downtime deploys for real: the daemon, the demo services and a steady load through
//! the proxy while the platform deploys, reverts and rolls back.

mod common;

use common::load::Load;
use common::sequence::*;
use common::*;
use serde_json::Value;
use std::time::Duration;

const START: Duration = Duration::from_secs(60);

#[test]
fn deploys_revert_and_rollbacks_drop_no_request() {
    let mut p = Platform::new(&deploy_config(&[("retire_after", "\"10m\"")]));
    p.up();
    let status = p.wait_for("all healthy", START, all_healthy);
    let gateway = listen(&status, "gateway");
    let personas = listen(&status, "personas");
    zero_downtime_sequence(&mut p, &gateway, &personas);
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
    // A slow release holds the lock for seconds.
    let first = deploy_in_background(&p, "v2-slow", "tokens");
    let lock_status = || -> Value {
        serde_json::from_slice(&p.cli(&["lock", "status", "--format", "json"]).stdout).unwrap()
    };
    wait_until("the first release to hold the lock", START, || {
        lock_status()["held"] == true
    });
    let lock = lock_status();
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
    let deploy = deploy_in_background(&p, "v2-slow", "gateway");
    // Mid-deploy: the new colour is starting (slowly).
    let mid = p.wait_for("the new colour starting", START, |s| {
        s["services"].as_array().unwrap().iter().any(|svc| {
            svc["instances"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["version"] == "v2-slow" && i["pid"].is_u64())
        })
    });
    p.kill_daemon();
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
    // The active release's instances are adopted (same pids); the half-started colour of the
    // interrupted release is stopped.
    let serving = instance_pids(&after);
    for pid in before {
        assert!(
            !alive(pid) || serving.contains(&pid),
            "pid {pid} from before the kill is alive but not adopted"
        );
    }
    for svc in mid["services"].as_array().unwrap() {
        for i in svc["instances"].as_array().unwrap() {
            if i["version"] == "v2-slow" {
                if let Some(pid) = i["pid"].as_u64() {
                    assert!(!alive(pid as u32), "v2-slow pid {pid} still alive");
                }
            }
        }
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

/// The pids of every instance in a status.
fn instance_pids(status: &Value) -> std::collections::BTreeSet<u32> {
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["instances"].as_array().unwrap().iter())
        .filter_map(|i| i["pid"].as_u64().map(|p| p as u32))
        .collect()
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
    // ...which ends at its deadline, when the old instance stops: an end of stream or a reset,
    // well before the 15 s read timeout (a timeout is a failure, not a close).
    match ws.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the upgraded connection was not closed at its drain deadline: {other:?}"),
    }
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_secs(2),
        "cut before its drain deadline: {closed_after:?}"
    );
    assert!(
        closed_after < Duration::from_secs(12),
        "closed long after its 3 s drain deadline: {closed_after:?}"
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
    // The idle sweep runs every 2 s; the 15 s idle limit must not be what closes them.
    wait_until(
        "no connection left to a retired colour",
        Duration::from_secs(5),
        || open_connections_to(&retired_ports) == 0,
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

#[test]
fn down_during_a_release_interrupts_it_and_reverts_nothing() {
    let mut p = Platform::new(&deploy_config(&[]));
    p.up();
    p.wait_for("all healthy", START, all_healthy);
    // A release whose new version takes 5 s to start, stopped half-way through.
    let deploy = deploy_in_background(&p, "v2-slow", "tokens");
    wait_until("the release to start its instance", START, || {
        p.status()
            .is_some_and(|s| s["deploy_in_progress"].is_string())
    });
    // Plain `down` refuses while a release runs, saying how to go on.
    let refused = p.cli(&["down"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("down --force"));
    assert!(p.cli(&["down", "--force"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(60)), Some(0));
    let out = deploy.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("interrupted (platform stopping)"),
        "{stdout}"
    );
    for pid in &p.seen_pids {
        assert!(!alive(*pid), "pid {pid} still alive after down");
    }
    // The next start serves the last active release and the history says what happened.
    p.up();
    let status = p.wait_for("all healthy again", START, all_healthy);
    assert_eq!(version_at(&listen(&status, "tokens")), "v1");
    let history: Vec<Value> =
        serde_json::from_slice(&p.cli(&["history", "--format", "json"]).stdout).unwrap();
    assert_eq!(history[0]["status"], "interrupted", "{history:#?}");
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(60)), Some(0));
}

#[test]
fn a_deleted_state_store_is_noticed_and_written_again_before_it_matters() {
    let mut p = Platform::new(&deploy_config(&[("watch", "\"0s\"")]));
    p.up();
    let status = p.wait_for("all healthy", START, all_healthy);
    let (code, out, _) = run(&p, &["prod", "deploy", "v2", "--service", "tokens"]);
    assert_eq!(code, 0, "{out}");
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(p.dir.path().join(".tcf").join(f));
    }
    let warned = p.wait_for("a warning in status", Duration::from_secs(20), |s| {
        s["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|m| m.as_str().unwrap().contains("deleted")))
    });
    let table = String::from_utf8_lossy(&p.cli(&["status"]).stdout).to_string();
    assert!(
        table.contains("WARNING: the state store was deleted"),
        "{table}\n{warned}"
    );
    assert!(p.dir.path().join(".tcf/state.db").exists());
    // The next crash loses nothing: the release, and the instances to adopt.
    p.kill_daemon();
    let old: Vec<u32> = p.seen_pids.iter().copied().collect();
    p.up();
    let after = p.wait_for("all healthy after the restart", START, all_healthy);
    assert_eq!(version_at(&listen(&after, "tokens")), "v2");
    assert_eq!(
        listen(&after, "tokens"),
        listen(&status, "tokens"),
        "same platform"
    );
    let serving = instance_pids(&after);
    for pid in &old {
        assert!(
            !alive(*pid) || serving.contains(pid),
            "pid {pid} of the killed daemon is alive but not adopted"
        );
    }
    let events: Vec<Value> = serde_json::from_slice(
        &p.cli(&["events", "--format", "json", "--limit", "1000"])
            .stdout,
    )
    .unwrap();
    assert!(events.iter().any(|e| e["kind"] == "store.rewritten"));
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(60)), Some(0));
}

#[test]
fn restart_drops_no_request_and_abort_reverts_a_running_release() {
    let mut p = Platform::new(&deploy_config(&[("watch", "\"0s\"")]));
    p.up();
    let status = p.wait_for("all healthy", START, all_healthy);
    let gateway = listen(&status, "gateway");
    let load = Load::start(&gateway, 4);
    let (code, out, lines) = run(&p, &["restart", "gateway"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(lines.last().unwrap()["result"], "restarted");
    let report = load.stop();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let bad: Vec<_> = report
        .samples
        .iter()
        .filter(|s| s.status != 200 || s.by_proxy)
        .map(|s| (s.status, s.by_proxy, s.version.clone()))
        .collect();
    assert!(bad.is_empty(), "{bad:?}\n{out}");
    let after = p.status().unwrap();
    let pids = |s: &Value| -> Vec<u64> {
        s["services"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"] == "gateway")
            .flat_map(|s| s["instances"].as_array().unwrap().clone())
            .filter_map(|i| i["pid"].as_u64())
            .collect()
    };
    assert!(
        pids(&after).iter().any(|p| !pids(&status).contains(p)),
        "new processes serve after a restart"
    );

    // Scale up and down under load: no request dropped.
    let load = Load::start(&gateway, 4);
    for n in ["3", "1"] {
        let (code, out, lines) = run(&p, &["scale", "gateway", n]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(lines.last().unwrap()["result"], "scaled");
    }
    let report = load.stop();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report
        .samples
        .iter()
        .all(|s| s.status == 200 && !s.by_proxy));
    let s = p.status().unwrap();
    let gw = s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "gateway")
        .unwrap()
        .clone();
    // The colour serving (the restart left the previous one warm beside it).
    let serving = gw["traffic"][0]["colour"].as_str().unwrap();
    let running = gw["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["colour"] == serving)
        .count();
    assert_eq!(running, 1, "{gw:#}");
    let (code, out, _) = run(&p, &["scale", "gateway", "0"]);
    assert_eq!(code, 2, "{out}");

    // Nothing to abort.
    let none = p.cli(&["prod", "abort"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no release is running"));
    // A slow release, aborted while it waits for its new version.
    let deploy = deploy_in_background(&p, "v2-slow", "tokens");
    wait_until("the release running", START, || {
        p.status()
            .is_some_and(|s| s["deploy_in_progress"].is_string())
    });
    let abort = p.cli(&["prod", "deploy", "--abort"]);
    assert!(
        abort.status.success(),
        "{}",
        String::from_utf8_lossy(&abort.stderr)
    );
    let out = deploy.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("aborted by"), "{stdout}");
    assert_eq!(version_at(&listen(&status, "tokens")), "v1");
    let history: Vec<Value> =
        serde_json::from_slice(&p.cli(&["history", "--format", "json"]).stdout).unwrap();
    assert_eq!(history[0]["status"], "aborted");
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(60)), Some(0));
}

#[test]
fn a_deploy_applies_the_config_file_and_a_rollback_restores_the_spec_it_ran_with() {
    let mut p = Platform::new(&deploy_config(&[
        ("watch", "\"0s\""),
        ("retire_after", "\"0s\""),
    ]));
    p.up();
    let status = p.wait_for("all healthy", START, all_healthy);
    let tokens_instances = |s: &Value| {
        s["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == "tokens")
            .unwrap()["instances"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(tokens_instances(&status), 1);
    // The file now asks for two instances of tokens: status says it is not applied yet.
    let original = std::fs::read_to_string(&p.config).unwrap();
    let two = original.replace("[services.tokens]\n", "[services.tokens]\ninstances = 2\n");
    assert_ne!(two, original);
    std::fs::write(&p.config, &two).unwrap();
    let s = p.status().unwrap();
    let tokens = s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "tokens")
        .unwrap()
        .clone();
    assert_eq!(tokens["config_changed"], true, "{tokens:#}");
    // A broken file refuses the deploy and changes nothing.
    std::fs::write(&p.config, format!("{two}\n[services.tokens.oops\n")).unwrap();
    let (code, out, _) = run(&p, &["prod", "deploy", "v2", "--service", "tokens"]);
    assert_eq!(code, 2, "{out}");
    std::fs::write(&p.config, &two).unwrap();
    // The deploy applies the file.
    let (code, out, _) = run(&p, &["prod", "deploy", "v2", "--service", "tokens"]);
    assert_eq!(code, 0, "{out}");
    let s = p.wait_for("two tokens instances on v2", START, |s| {
        all_healthy(s) && tokens_instances(s) == 2
    });
    assert!(s["services"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["config_changed"].is_null()));
    // The rollback (cold: v1 was retired at once) brings back v1 as it ran: one instance,
    // whatever the file says now.
    let (code, out, lines) = run(&p, &["prod", "rollback", "--service", "tokens"]);
    assert_eq!(code, 0, "{out}");
    assert!(has_step(&lines, "rollback.cold"), "{out}");
    let s = p.wait_for("one tokens instance on v1", START, |s| {
        all_healthy(s) && tokens_instances(s) == 1
    });
    assert_eq!(version_at(&listen(&s, "tokens")), "v1");
    let tokens = s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "tokens")
        .unwrap()
        .clone();
    assert_eq!(
        tokens["config_changed"], true,
        "the file still says 2: {tokens:#}"
    );
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(60)), Some(0));
}

#[test]
fn a_deploy_with_backup_records_it_and_a_failed_backup_starts_nothing() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("upload.bin"), b"precious").unwrap();
    let repo = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[backup]\nrepository = \"{}\"\n\n[backup.sources.uploads]\nkind = \"directory\"\npath = \"{}\"\n",
        deploy_config(&[("watch", "\"0s\"")]),
        repo.path().display(),
        data.path().display()
    );
    let mut p = Platform::new(&config);
    p.up();
    let status = p.wait_for("all healthy", START, all_healthy);
    let gateway = listen(&status, "gateway");
    let load = Load::start(&gateway, 4);
    let (code, out, lines) = run(
        &p,
        &["prod", "deploy", "v2", "--service", "gateway", "--backup"],
    );
    assert_eq!(code, 0, "{out}");
    let report = load.stop();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let backup_step = lines
        .iter()
        .position(|l| l["step"] == "backup.done")
        .expect(&out);
    let start_step = lines
        .iter()
        .position(|l| l["step"] == "deploy.starting")
        .expect(&out);
    assert!(
        backup_step < start_step,
        "the backup comes before anything starts: {out}"
    );
    let history: Vec<Value> =
        serde_json::from_slice(&p.cli(&["history", "--format", "json"]).stdout).unwrap();
    let id = history[0]["backup"]
        .as_str()
        .expect("the release names its backup")
        .to_string();
    let listed = String::from_utf8_lossy(&p.cli(&["backup", "list"]).stdout).to_string();
    assert!(listed.contains(&id), "{listed}");
    // Rolling that release back says how to restore its data.
    let (code, out, lines) = run(&p, &["prod", "rollback", "--service", "gateway"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        lines.iter().any(|l| l["step"] == "rollback.backup"
            && l["message"]
                .as_str()
                .unwrap()
                .contains(&format!("backup restore {id}"))),
        "{out}"
    );
    // A backup that fails (its source is gone): exit 1, nothing started.
    drop(data);
    let before = p.status().unwrap();
    // (Without --force, which would only warn; no terminal, so no question is asked.)
    let o = p.cli(&[
        "prod",
        "deploy",
        "v3",
        "--service",
        "tokens",
        "--backup",
        "--format",
        "json",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("the backup failed, nothing started"), "{out}");
    assert!(!out.contains("deploy.starting"), "{out}");
    assert_eq!(version_at(&listen(&before, "tokens")), "v1");
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(60)), Some(0));
}
