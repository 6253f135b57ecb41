//! `init --from-compose` end to end on a real Docker engine: a compose file for two services
//! built from local images → `init` → `up` → both answer through their public ports →
//! `prod deploy` of a new tag under load with zero failed requests.
//!
//! Needs a running Docker engine (scripts/test installs docker.io and starts dockerd).

mod common;

use common::docker::*;
use common::load::Load;
use common::sequence::*;
use common::*;
use std::process::Command;
use std::time::Duration;

const START: Duration = Duration::from_secs(120);

#[test]
fn a_compose_project_moves_in_and_deploys_without_dropping_a_request() {
    require_engine();
    let run_id = std::process::id();
    let repo = format!("tcf-compose-test-{run_id}/demo");
    let label = format!("tcf.test=compose-{run_id}");
    let images = build_demo_images(&repo, &label, &["v1", "v2"]);

    let platform = format!("tcf-compose-test-{run_id}");
    let (api_port, web_port) = (free_port(), free_port());
    let project = tempfile::tempdir().unwrap();
    let compose = project.path().join("compose.yaml");
    std::fs::write(
        &compose,
        format!(
            r#"name: {platform}
services:
  api:
    image: {repo}:${{TAG:-v1}}
    ports: ["127.0.0.1:{api_port}:8080"]
    environment:
      DEMO_BIND: 0.0.0.0
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://localhost:8080/health"]
      interval: 2s
    read_only: true
    deploy:
      resources:
        limits: {{ memory: 64M, cpus: "0.5" }}
  web:
    image: {repo}:${{TAG:-v1}}
    ports:
      - target: 8080
        published: "{web_port}"
        host_ip: 127.0.0.1
    depends_on:
      api:
        condition: service_healthy
    healthcheck:
      test: curl -fsS http://127.0.0.1:8080/health
    privileged: true
"#
        ),
    )
    .unwrap();

    let config_path = project.path().join("tcf-platform.toml");
    let init = Command::new(bin())
        .args(["init", "--from-compose"])
        .arg(&compose)
        .arg("--output")
        .arg(&config_path)
        .env_remove("TAG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&init.stderr);
    assert!(init.status.success(), "init failed: {stderr}");
    // What has no equivalent is said, not dropped.
    assert!(stderr.contains("services.web.privileged"), "{stderr}");
    // A second init does not overwrite it.
    let again = Command::new(bin())
        .args(["init", "--from-compose"])
        .arg(&compose)
        .arg("--output")
        .arg(&config_path)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    // It validates as written.
    let validate = Command::new(bin())
        .args(["config", "validate", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    let written = std::fs::read_to_string(&config_path).unwrap();
    assert!(
        written.contains(&format!("image = \"{repo}:{{version}}\"")),
        "{written}"
    );

    // Dropped after `p` has stopped the daemon, before `images`.
    let objects = PlatformObjects {
        platform: platform.clone(),
    };
    // Only the deploy's watch is shortened so the test runs in seconds; the rest is as written.
    let mut p = Platform::new(&deploy_config_from(&written, &[]));
    p.up();
    let status = p.wait_for("both services healthy", START, all_healthy);
    let api = listen(&status, "api");
    let web = listen(&status, "web");
    assert_eq!(api, format!("127.0.0.1:{api_port}"));
    assert_eq!(web, format!("127.0.0.1:{web_port}"));
    for (addr, service) in [(&api, "api"), (&web, "web")] {
        let (code, body) = http_get(addr, "/").unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains(&format!("\"service\":\"{service}\""))
                && body.contains("\"version\":\"v1\""),
            "{body}"
        );
    }

    let api_load = Load::start(&api, 4);
    let web_load = Load::start(&web, 4);
    std::thread::sleep(Duration::from_millis(300));
    let (code, out, lines) = run(&p, &["prod", "deploy", "v2"]);
    assert_eq!(code, 0, "{out}");
    assert!(has_step(&lines, "release.active"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    for (report, addr) in [(api_load.stop(), &api), (web_load.stop(), &web)] {
        assert!(
            report.errors.is_empty(),
            "connection errors on {addr}: {:?}",
            &report.errors[..report.errors.len().min(5)]
        );
        assert!(report.samples.len() > 100, "too little load on {addr}");
        for s in &report.samples {
            assert!(
                (200..300).contains(&s.status) && !s.by_proxy,
                "{addr}: {} from {} (by proxy: {})",
                s.status,
                s.version,
                s.by_proxy
            );
        }
        assert_eq!(first_appearances(&report), ["v1", "v2"], "{addr}");
        assert_eq!(version_at(addr), "v2");
    }

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
    drop(p);
    drop(objects);
    drop(images);
}
