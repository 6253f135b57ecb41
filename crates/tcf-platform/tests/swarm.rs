//! The Swarm runtime on a real three-node swarm (scripts/swarm-cluster, three dockerd in their
//! own network namespaces): the TCF services spread over the nodes, the deploy sequence under
//! load with zero failed requests, a node's engine stopped mid-run and its tasks followed to
//! other nodes, reconcile after SIGKILL of the daemon, secrets kept out of the service specs,
//! and `down` leaving no service, secret or network. One cluster for the whole binary.

mod common;

use common::docker::*;
use common::load::Load;
use common::sequence::*;
use common::swarm::SwarmCluster;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const START: Duration = Duration::from_secs(180);
const SECRET_VALUE: &str = "sw-secret-value-7f3a9c";

/// Every instance of every service: (id, node, health).
fn instances(status: &Value) -> Vec<(String, String, String)> {
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["instances"].as_array().unwrap().iter())
        .map(|i| {
            (
                i["id"].as_str().unwrap_or_default().to_string(),
                i["node"].as_str().unwrap_or_default().to_string(),
                i["health"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn node_state(status: &Value, name: &str) -> Option<String> {
    status["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .map(|n| n["state"].as_str().unwrap_or_default().to_string())
}

/// The platform's Swarm objects of one kind (`service`, `secret`, `network`), by name.
fn objects(cluster: &SwarmCluster, kind: &str, platform: &str) -> BTreeSet<String> {
    cluster
        .docker(&[
            kind,
            "ls",
            "--format",
            "{{.Name}}",
            "--filter",
            &format!("label=tcf.platform={platform}"),
        ])
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn set_secret(p: &Platform, name: &str, value: &str) {
    let mut child = Command::new(bin())
        .args(["secrets", "set", name, "--config"])
        .arg(&p.config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{value}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn swarm_services_spread_deploy_follow_a_failed_node_and_reconcile() {
    require_engine();
    if let Some(why) = SwarmCluster::unavailable() {
        panic!("no swarm can be formed here: {why} — this test does not skip");
    }
    let cluster = SwarmCluster::up().expect("a three-node swarm (scripts/swarm-cluster up)");
    let run_id = std::process::id();
    let repo = format!("tcf-test-{run_id}/swarm-demo");
    let label = format!("tcf.test={run_id}");
    let versions = [
        "v1",
        "v2",
        "v3",
        "v4",
        "v3-unhealthy",
        "v4-errors",
        "v5-errors",
    ];
    let images = build_demo_images(&repo, &label, &versions);
    let names: Vec<String> = versions.iter().map(|v| format!("{repo}:{v}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    cluster.load(&names).expect("images loaded on every node");

    let platform = format!("tcf-swarm-test-{run_id}");
    let config = example_config_at("examples/tcf-swarm/tcf-platform.toml")
        .replace("name = \"tcf-swarm\"", &format!("name = \"{platform}\""))
        .replace("tcf/demo:{version}", &format!("{repo}:{{version}}"))
        .replace(
            "# [swarm]\n# endpoint = \"unix:///run/tcf-swarm/node1/docker.sock\"",
            &format!("[swarm]\nendpoint = \"{}\"", cluster.docker_host()),
        )
        .replace(
            "[services.personas]\n",
            "[services.personas]\nenv = { API_KEY = \"${secret:api_key}\" }\n",
        );
    assert!(config.contains("[swarm]\nendpoint"), "{config}");
    // Each node's engine, for the CPU and memory of the tasks it runs.
    let engines: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| format!("{} = \"{}\"", n.name, n.docker_host))
        .collect();
    let config = config.replace(
        "[swarm]\n",
        &format!("[swarm]\nnode_engines = {{ {} }}\n", engines.join(", ")),
    );
    // Swarm schedules each task before its node's engine starts it: on a loaded machine a cold
    // start of three tasks took longer than the quick 8 s gate the process tests use (a
    // rollback to a stopped release failed so once), so the gates here get 20 s.
    let config = deploy_config_from(&config, &[("retire_after", "\"10m\"")])
        .replace("deadline = \"8s\"", "deadline = \"20s\"");
    assert!(config.contains("deadline = \"20s\""), "{config}");
    let mut p = Platform::new(&config);
    set_secret(&p, "api_key", SECRET_VALUE);
    p.up();
    let status = p.wait_for("every task healthy", START, all_healthy);
    let all = instances(&status);
    assert_eq!(all.len(), 13, "{status:#}");
    // Spread: the instances run on at least two of the three nodes, each one named.
    let nodes: BTreeSet<&str> = all.iter().map(|(_, n, _)| n.as_str()).collect();
    assert!(nodes.iter().all(|n| n.starts_with("node")), "{all:?}");
    assert!(nodes.len() >= 2, "instances on one node only: {all:?}");
    assert_eq!(objects(&cluster, "service", &platform).len(), 13);
    let node_states: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["state"].as_str().unwrap())
        .collect();
    assert_eq!(node_states, ["ready", "ready", "ready"], "{status:#}");
    // Every service's memory and CPU come from the engines of the nodes its tasks run on
    // (most run on workers, whose stats the manager cannot give).
    let with_metrics = |p: &Platform| -> Value {
        serde_json::from_slice(&p.cli(&["status", "--metrics", "--format", "json"]).stdout)
            .unwrap_or_default()
    };
    let every_service_has_memory = |s: &Value| {
        s["services"].as_array().is_some_and(|all| {
            all.iter()
                .all(|svc| svc["metrics"]["rss_bytes"].as_u64() > Some(0))
        })
    };
    let mut metrics = with_metrics(&p);
    for _ in 0..60 {
        if every_service_has_memory(&metrics) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        metrics = with_metrics(&p);
    }
    assert!(every_service_has_memory(&metrics), "{metrics:#}");
    for svc in metrics["services"].as_array().unwrap() {
        assert!(
            svc["metrics"]["cpu_percent"].as_f64() >= Some(0.0),
            "{svc:#}"
        );
        for i in svc["instances"].as_array().unwrap() {
            assert!(i["pid"].is_null(), "a remote task has no pid here: {i:#}");
        }
    }
    // The table has the node of every instance and the nodes.
    let table = String::from_utf8_lossy(&p.cli(&["status", "--services"]).stdout).to_string();
    assert!(table.contains("NODE") && table.contains("node1"), "{table}");

    // The secret is a Swarm secret: the spec has only where to read it.
    let personas_service = format!("{platform}-personas-blue-1");
    let spec = cluster
        .docker(&["service", "inspect", &personas_service])
        .unwrap();
    assert!(
        !spec.contains(SECRET_VALUE),
        "the secret's value is in the spec"
    );
    assert!(spec.contains("API_KEY_FILE=/run/secrets/API_KEY"), "{spec}");
    assert_eq!(objects(&cluster, "secret", &platform).len(), 2);

    let gateway = listen(&status, "gateway");
    let personas = listen(&status, "personas");
    zero_downtime_sequence(&mut p, &gateway, &personas);

    // Task logs come through `tcf-platform logs`.
    let logs = String::from_utf8_lossy(&p.cli(&["logs", "personas"]).stdout).to_string();
    assert!(logs.contains("tcf-demo: personas v2"), "{logs}");

    // Killed with SIGKILL: the tasks keep running; the next daemon adopts the services of the
    // active release and removes the rest (the warm previous colours).
    let before = objects(&cluster, "service", &platform);
    p.kill_daemon();
    p.up();
    let after = p.wait_for("every task healthy after the restart", START, all_healthy);
    let kept = objects(&cluster, "service", &platform);
    assert_eq!(kept.len(), 13, "{kept:?}");
    assert!(
        kept.is_subset(&before),
        "services replaced: {before:?} → {kept:?}"
    );
    for svc in after["services"].as_array().unwrap() {
        for i in svc["instances"].as_array().unwrap() {
            assert_eq!(i["restarts"], 0, "adopted, never restarted: {i}");
        }
    }
    assert_eq!(version_at(&listen(&after, "gateway")), "v1");
    assert_eq!(version_at(&listen(&after, "personas")), "v2");
    let events: Vec<Value> = serde_json::from_slice(
        &p.cli(&["events", "--format", "json", "--limit", "3000"])
            .stdout,
    )
    .unwrap();
    let second_start = events
        .iter()
        .rposition(|e| e["kind"] == "daemon.started")
        .unwrap();
    let count = |kind: &str| {
        events[second_start..]
            .iter()
            .filter(|e| e["kind"] == kind)
            .count()
    };
    assert_eq!(count("recovery.adopted"), 13, "every task of the release");
    assert_eq!(
        count("recovery.adopted") + count("recovery.removed"),
        before.len(),
        "every service found is adopted or removed"
    );

    // A worker's engine stopped under load: its tasks fail their probes and leave the pool,
    // Swarm starts them elsewhere, the proxy follows; only requests in flight on it fail.
    let placed: BTreeMap<String, String> = instances(&after)
        .into_iter()
        .map(|(id, node, _)| (id, node))
        .collect();
    // The worker with the most tasks, among those that leave the gateway (under load) an
    // instance elsewhere: with all of a service's instances on the failed node, nothing could
    // answer until Swarm has started them again.
    let gateway_status = after["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "gateway")
        .unwrap();
    let serving = gateway_status["traffic"][0]["colour"].as_str().unwrap();
    let gateway_nodes: BTreeSet<String> = gateway_status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["colour"] == serving)
        .map(|i| i["node"].as_str().unwrap_or_default().to_string())
        .collect();
    let victim = ["node2", "node3"]
        .into_iter()
        .filter(|n| gateway_nodes.iter().any(|g| g.as_str() != *n))
        .max_by_key(|n| placed.values().filter(|v| v == n).count())
        .unwrap_or_else(|| panic!("no worker leaves the gateway an instance: {placed:?}"));
    let on_victim: Vec<String> = placed
        .iter()
        .filter(|(_, n)| n.as_str() == victim)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(!on_victim.is_empty(), "{placed:?}");
    let victim_number: usize = victim.trim_start_matches("node").parse().unwrap();
    let gateway = listen(&after, "gateway");
    let load = Load::start(&gateway, 6);
    std::thread::sleep(Duration::from_millis(500));
    cluster.stop_node(victim_number).expect("stop-node");
    let moved = p.wait_for(
        "the failed node's tasks healthy on the other nodes, the node down",
        START,
        |s| {
            node_state(s, victim).as_deref() == Some("down")
                && all_healthy(s)
                && instances(s).iter().all(|(_, n, _)| n != victim)
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    assert!(
        report.errors.is_empty(),
        "connection errors while a node failed: {:?}",
        &report.errors[..report.errors.len().min(5)]
    );
    // A request already on its way to a task when the node's engine killed it cannot succeed
    // (the proxy retries only what it has not yet sent): at most one per load connection, and
    // only as the proxy's 502/504. Everything else succeeds.
    let lost: Vec<&common::load::Sample> = report
        .samples
        .iter()
        .filter(|s| !(200..300).contains(&s.status) || s.by_proxy)
        .collect();
    eprintln!("requests in flight on the failed node: {}", lost.len());
    assert!(
        lost.len() <= 6
            && lost
                .iter()
                .all(|s| s.by_proxy && (s.status == 502 || s.status == 504)),
        "while a node failed: {} failed, e.g. {:?}; placed: {placed:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // Once the probes have failed and the tasks run elsewhere, no request reaches a dead task.
    let followed = Load::start(&gateway, 6);
    std::thread::sleep(Duration::from_secs(2));
    let followed = followed.stop();
    assert!(followed.errors.is_empty(), "{:?}", followed.errors);
    assert!(
        followed
            .samples
            .iter()
            .all(|s| (200..300).contains(&s.status) && !s.by_proxy),
        "after the tasks moved: {:?}",
        followed
            .samples
            .iter()
            .filter(|s| !(200..300).contains(&s.status) || s.by_proxy)
            .collect::<Vec<_>>()
    );
    assert!(report.samples.len() > 100, "too little load");
    let table = String::from_utf8_lossy(&p.cli(&["status"]).stdout).to_string();
    assert!(table.contains("down"), "{table}");
    let events: Vec<Value> = serde_json::from_slice(
        &p.cli(&["events", "--format", "json", "--limit", "3000"])
            .stdout,
    )
    .unwrap();
    for id in &on_victim {
        assert!(
            events.iter().any(|e| e["instance"] == id.as_str()
                && e["kind"] == "instance.started"
                && e["message"].as_str().unwrap_or("").contains("on node")
                && !e["message"].as_str().unwrap_or("").contains(victim)),
            "{id} was not followed to another node: {moved:#}"
        );
    }
    cluster.start_node(victim_number).expect("start-node");

    // A worker's engine stopped during a deploy: the release completes or fails and reverts,
    // never half: every answer comes from one version, the one the outcome names, and the
    // gateway is healthy on it.
    let deploy = deploy_in_background(&p, "v2", "gateway");
    wait_until("the release running", START, || {
        p.status()
            .is_some_and(|s| s["deploy_in_progress"].is_string())
    });
    std::thread::sleep(Duration::from_millis(300));
    let during = if victim_number == 2 { 3 } else { 2 };
    cluster
        .stop_node(during)
        .expect("stop-node during the deploy");
    let out = deploy.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let expected = match out.status.code() {
        Some(0) => "v2",
        Some(1) => "v1",
        other => panic!("deploy during a node failure ended with {other:?}:\n{stdout}"),
    };
    let settled = p.wait_for("the gateway healthy after the deploy", START, |s| {
        s["services"].as_array().is_some_and(|all| {
            all.iter()
                .any(|svc| svc["name"] == "gateway" && svc["healthy"] == true)
        })
    });
    let gateway_now = listen(&settled, "gateway");
    for _ in 0..20 {
        assert_eq!(version_at(&gateway_now), expected, "{stdout}");
    }
    let history: Vec<Value> =
        serde_json::from_slice(&p.cli(&["history", "--format", "json"]).stdout).unwrap();
    let newest = history[0]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        (expected == "v2" && newest == "active") || (expected == "v1" && newest != "active"),
        "release {newest} but {expected} serves:\n{stdout}"
    );
    eprintln!("deploy while node{during} stopped: {newest}, {expected} serves");
    cluster.start_node(during).expect("start-node");

    // down removes the platform's services, secrets and network; images are the test's.
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(120)), Some(0));
    let log = std::fs::read_to_string(p.daemon_log()).unwrap_or_default();
    let cleanup_warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot remove the platform's Swarm"))
        .collect();
    for kind in ["service", "secret", "network"] {
        let left = objects(&cluster, kind, &platform);
        assert!(
            left.is_empty(),
            "{kind}s left after down: {left:?}\ndaemon: {cleanup_warnings:#?}"
        );
    }
    assert!(cleanup_warnings.is_empty(), "{cleanup_warnings:#?}");
    drop(p);
    drop(images);
    cluster.down().expect("swarm-cluster down");
}
