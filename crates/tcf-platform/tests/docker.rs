//! The Docker runtime on a real engine: the TCF services as FROM-scratch containers, the same
//! zero-downtime deploy sequence as with processes, a missing image refused before any traffic
//! moves, reconcile after the daemon is killed, and nothing left behind.
//!
//! Needs a running Docker engine (scripts/test installs docker.io and starts dockerd).

mod common;

use common::docker::*;
use common::sequence::*;
use common::*;
use serde_json::Value;
use std::time::Duration;

const START: Duration = Duration::from_secs(120);

#[test]
fn containers_deploy_without_dropping_a_request_and_reconcile_after_a_kill() {
    require_engine();
    let run_id = std::process::id();
    let repo = format!("tcf-test-{run_id}/demo");
    let label = format!("tcf.test={run_id}");
    let images = build_demo_images(
        &repo,
        &label,
        &[
            "v1",
            "v2",
            "v3",
            "v4",
            "v3-unhealthy",
            "v4-errors",
            "v5-errors",
        ],
    );

    let platform = format!("tcf-docker-test-{run_id}");
    let config = example_config_at("examples/tcf-docker/tcf-platform.toml")
        .replace("name = \"tcf-docker\"", &format!("name = \"{platform}\""))
        .replace("tcf/demo:{version}", &format!("{repo}:{{version}}"));
    // Dropped after `p` (declared later) has stopped the daemon, before `images`.
    let objects = PlatformObjects {
        platform: platform.clone(),
    };
    let mut p = Platform::new(&deploy_config_from(&config, &[("retire_after", "\"10m\"")]));
    p.up();
    let status = p.wait_for("all containers healthy", START, all_healthy);
    assert_eq!(
        count(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=tcf.platform={platform}")
        ]),
        7
    );
    // Published on loopback only.
    let ports = docker(&[
        "ps",
        "--format",
        "{{.Ports}}",
        "--filter",
        &format!("label=tcf.platform={platform}"),
    ]);
    assert!(
        ports.lines().all(|l| l.starts_with("127.0.0.1:")),
        "{ports}"
    );
    let gateway = listen(&status, "gateway");
    let personas = listen(&status, "personas");
    // The image's own HEALTHCHECK is shown beside our probe.
    p.wait_for("the containers' HEALTHCHECK reported", START, |s| {
        s["services"].as_array().unwrap().iter().all(|svc| {
            svc["instances"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["runtime_health"] == "healthy")
        })
    });

    // A tag that is not present locally fails before any traffic changes, naming the image.
    let (code, out, lines) = run(&p, &["prod", "deploy", "v9", "--service", "gateway"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("image {repo}:v9 is not present")),
        "{out}"
    );
    assert!(!has_step(&lines, "deploy.starting"), "{out}");

    zero_downtime_sequence(&mut p, &gateway, &personas);

    // Container logs come through `tcf-platform logs`.
    let logs = String::from_utf8_lossy(&p.cli(&["logs", "personas"]).stdout).to_string();
    assert!(logs.contains("tcf-demo: personas v2"), "{logs}");
    // CPU and memory of containers in status --metrics.
    let m: Value =
        serde_json::from_slice(&p.cli(&["status", "--metrics", "--format", "json"]).stdout)
            .unwrap();
    let rss = m["services"][0]["metrics"]["rss_bytes"].as_u64().unwrap();
    assert!(rss > 0, "containers report memory: {m}");

    // Killed with SIGKILL: the containers keep running; the next daemon adopts those of the
    // active release and removes the rest (the warm previous colours).
    let ids = || -> std::collections::BTreeSet<String> {
        docker(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=tcf.platform={platform}"),
        ])
        .lines()
        .map(str::to_string)
        .collect()
    };
    let ids_before = ids();
    let before = ids_before.len();
    p.kill_daemon();
    p.up();
    let after = p.wait_for("all healthy after the restart", START, all_healthy);
    // Adopted means the same containers, never restarted: not a replacement with the same name.
    let ids_after = ids();
    assert_eq!(ids_after.len(), 7, "{ids_after:?}");
    assert!(
        ids_after.is_subset(&ids_before),
        "containers were replaced: before {ids_before:?}, after {ids_after:?}"
    );
    for svc in after["services"].as_array().unwrap() {
        for i in svc["instances"].as_array().unwrap() {
            assert_eq!(i["restarts"], 0, "{i}");
        }
    }
    assert_eq!(version_at(&listen(&after, "gateway")), "v1");
    assert_eq!(version_at(&listen(&after, "personas")), "v2");
    let events: Vec<Value> = serde_json::from_slice(
        &p.cli(&["events", "--format", "json", "--limit", "2000"])
            .stdout,
    )
    .unwrap();
    // Nothing of the containers went through the process runtime's leftover clean-up.
    let second_start = events
        .iter()
        .rposition(|e| e["kind"] == "daemon.started")
        .unwrap();
    let cleaned: Vec<&Value> = events[second_start..]
        .iter()
        .filter(|e| e["kind"] == "recovery.cleaned_up")
        .collect();
    assert!(cleaned.is_empty(), "{cleaned:#?}");
    let adopted = events
        .iter()
        .filter(|e| e["kind"] == "recovery.adopted")
        .count();
    let removed = events
        .iter()
        .filter(|e| e["kind"] == "recovery.removed")
        .count();
    assert_eq!(
        adopted, 7,
        "every container of the active release is adopted"
    );
    assert_eq!(
        adopted + removed,
        before,
        "every container found is adopted or removed"
    );

    // down removes what the platform created: containers and network (images are the test's).
    assert!(p.cli(&["down"]).status.success());
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(60)), Some(0));
    assert_eq!(
        count(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=tcf.platform={platform}")
        ]),
        0
    );
    assert_eq!(
        count(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label=tcf.platform={platform}")
        ]),
        0
    );
    drop(p);
    drop(objects);
    drop(images);
    assert_eq!(
        count(&["image", "ls", "-q", "--filter", &format!("label={label}")]),
        0
    );
}
