//! Monitoring end to end with the real binary and real parts: a service that starts answering
//! 500s fires the 5xx rule; a webhook receiver on loopback gets exactly one notification and
//! one resolution; a silence holds a second breach back until it expires; a real Alertmanager
//! shows the alert through its API; a real SMTP server (aiosmtpd, STARTTLS required) receives
//! the mail;
//! `promtool check metrics` accepts /metrics and a real Prometheus scrapes it; `metrics query`
//! returns history across a daemon restart (SIGKILL).
//!
//! One platform for the whole sequence: starting one costs seconds, and each step builds on the
//! state the previous one left.

mod common;

use common::{free_port, http_get, Platform};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A helper server (Alertmanager, Prometheus, aiosmtpd) started by the test, killed by pid on
/// drop, even when the test fails.
struct Server {
    name: &'static str,
    child: Child,
    log: std::path::PathBuf,
}

impl Server {
    fn start(name: &'static str, cmd: &mut Command, dir: &Path) -> Server {
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e} (is its Debian package installed? scripts/test installs it)"));
        Server { name, child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.name;
    }
}

/// Find a tool: PATH first, then where Debian puts it.
fn tool(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p.display().to_string();
        }
    }
    name.to_string()
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A webhook receiver on loopback that keeps every JSON body it gets, with the body's
/// `X-TCF-Signature` header checked against `openssl dgst -hmac` of the raw body (`_signed`).
fn webhook_receiver(key: &'static str) -> (u16, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let body = loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .and_then(|v| v.trim().parse().ok())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        let signature = head.lines().find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("x-tcf-signature:")
                                .map(|v| v.trim().to_string())
                        });
                        break Some((body.to_string(), signature));
                    }
                }
            };
            if let Some((b, signature)) = body {
                if let Ok(mut v) = serde_json::from_str::<Value>(&b) {
                    v["_signed"] = Value::Bool(signature == Some(hmac_sha256(key, &b)));
                    g.lock().unwrap().push(v);
                }
            }
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, got)
}

/// `sha256=HEX` of HMAC-SHA256(key, body), computed by openssl, not by our code.
fn hmac_sha256(key: &str, body: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key, "-r"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let hex = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    format!("sha256={hex}")
}

fn json(p: &Platform, args: &[&str]) -> Value {
    let out = p.cli(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn deploy(p: &Platform, version: &str) {
    let out = p.cli(&["prod", "deploy", version, "--force"]);
    assert!(
        out.status.success(),
        "deploy {version} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn statuses(hooks: &[Value]) -> Vec<String> {
    hooks
        .iter()
        .map(|h| h["status"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn alerts_notifications_prometheus_and_history_across_a_restart() {
    let api_port = free_port();
    let metrics_port = free_port();
    let am_port = free_port();
    let am_cluster_port = free_port();
    let smtp_port = free_port();
    let prom_port = free_port();
    // The daemon (a child of this test) reads the webhook's HMAC key from its environment.
    std::env::set_var("TCF_TEST_HOOK_KEY", "monitoring-test-key");
    let (hook_port, hooks) = webhook_receiver("monitoring-test-key");
    let dead_port = free_port();
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tcf_testkit::openssl_ca_and_cert(certs.path());
    let (ca, cert, key) = (
        ca.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    let config = format!(
        r#"
[platform]
name = "mon"
state_dir = ".tcf"

[defaults.health]
interval = "500ms"

[services.api]
command = ["tcf-demo"]
version = "v1"
listen = "127.0.0.1:{api_port}"

[deploy]
# The 500s are the point: no revert, and the old colour goes at once.
max_error_ratio = 1.0
watch = "1s"
retire_after = "1s"

[monitor]
interval = "1s"
metrics_listen = "127.0.0.1:{metrics_port}"

[alerts.rules.high_5xx_ratio]
for = "3s"

[alerts.notify.hook]
kind = "webhook"
url = "http://127.0.0.1:{hook_port}/hook"
hmac_secret_env = "TCF_TEST_HOOK_KEY"
group_wait = "1s"
group_interval = "2s"

# Nothing listens here: its failures are events, and it delays no other receiver.
[alerts.notify.dead]
kind = "webhook"
url = "http://127.0.0.1:{dead_port}/hook"
group_wait = "1s"
retries = 0

[alerts.notify.am]
kind = "alertmanager"
url = "http://127.0.0.1:{am_port}"

[alerts.notify.mail]
kind = "email"
smtp = "127.0.0.1:{smtp_port}"
from = "tcf@example.test"
to = ["ops@example.test"]
group_wait = "1s"
# The server requires STARTTLS; its certificate is signed by the test's CA.
starttls = true
ca_file = "{ca}"
"#
    );
    let mut p = Platform::new(&config);
    let dir = p.dir.path().to_path_buf();
    let am_config = dir.join("alertmanager.yml");
    std::fs::write(
        &am_config,
        "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n",
    )
    .unwrap();
    let _am = Server::start(
        "alertmanager",
        Command::new(tool("prometheus-alertmanager"))
            .arg(format!("--config.file={}", am_config.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg(format!(
                "--cluster.listen-address=127.0.0.1:{am_cluster_port}"
            )),
        &dir,
    );
    let smtp = Server::start(
        "aiosmtpd",
        Command::new(tool("aiosmtpd"))
            .env("PYTHONUNBUFFERED", "1")
            .args(["-n", "-l"])
            .arg(format!("127.0.0.1:{smtp_port}"))
            .args(["--tlscert", &cert, "--tlskey", &key]),
        &dir,
    );
    p.up();
    p.wait_for(
        "a healthy platform",
        Duration::from_secs(60),
        common::all_healthy,
    );

    // Steady traffic, so every tick has requests to take a 5xx ratio of.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let addr = format!("127.0.0.1:{api_port}");
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let _ = http_get(&addr, "/work");
                // Some client errors, so the 4xx counters have something to count.
                let _ = http_get(&addr, "/missing?status=404");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // The health score shows in `status --metrics` and in `prod monitor`.
    let st = json(&p, &["status", "--metrics", "--format", "json"]);
    let m = &st["services"][0]["metrics"];
    assert!(
        m["health_score"]
            .as_f64()
            .is_some_and(|s| (0.0..=100.0).contains(&s)),
        "{m}"
    );
    assert!(
        ["excellent", "good", "warning", "critical"].contains(&m["health_band"].as_str().unwrap())
    );
    wait_until(
        "a health score in prod monitor",
        Duration::from_secs(30),
        || {
            let s = json(&p, &["prod", "monitor", "--format", "json"]);
            (s["services"][0]["service"] == "api" && s["services"][0]["score"].is_number())
                .then_some(())
        },
    );

    // --- Prometheus: promtool accepts /metrics, a real Prometheus scrapes it.
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    // The api's answers by status class, summed over its colours.
    let counted = |exposition: &str, family: &str| -> f64 {
        exposition
            .lines()
            .filter(|l| l.starts_with(&format!("{family}{{service=\"api\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let exposition = wait_until("2xx and 4xx in /metrics", Duration::from_secs(30), || {
        let (code, body) = http_get(&metrics_addr, "/metrics").ok()?;
        (code == 200
            && counted(&body, "tcf_responses_2xx_total") > 0.0
            && counted(&body, "tcf_responses_4xx_total") > 0.0)
            .then_some(body)
    });
    assert!(exposition.contains("# TYPE tcf_request_duration_seconds histogram"));
    assert!(exposition.contains("tcf_requests_total{service=\"api\""));
    let mut promtool = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let prom_config = dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tcf\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .unwrap();
    let prometheus = Server::start(
        "prometheus",
        Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prom-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}")),
        &dir,
    );
    let prom_addr = format!("127.0.0.1:{prom_port}");
    let scraped = wait_until(
        "Prometheus to scrape our counter",
        Duration::from_secs(60),
        || {
            let (code, body) = http_get(
                &prom_addr,
                "/api/v1/query?query=tcf_requests_total%7Bservice%3D%22api%22%7D",
            )
            .ok()?;
            let v: Value = serde_json::from_str(&body).ok()?;
            let value: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
            (code == 200 && value > 0.0).then_some(value)
        },
    );
    assert!(scraped > 0.0, "{}", prometheus.log());
    drop(prometheus);

    // --- The service starts answering 500s: pending, firing, one notification per receiver.
    deploy(&p, "v2-errors");
    let firing = wait_until(
        "the webhook's firing notification",
        Duration::from_secs(60),
        || {
            let h = hooks.lock().unwrap();
            (!h.is_empty()).then(|| h[0].clone())
        },
    );
    assert_eq!(firing["status"], "firing", "{firing:#}");
    assert_eq!(
        firing["_signed"], true,
        "the HMAC signature checks out: {firing:#}"
    );
    assert_eq!(firing["alerts"][0]["labels"]["alertname"], "high_5xx_ratio");
    assert_eq!(firing["alerts"][0]["labels"]["service"], "api");
    let alerts = json(&p, &["alerts", "list", "--format", "json"]);
    assert!(
        alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["rule"] == "high_5xx_ratio" && a["state"] == "firing"),
        "{alerts:#}"
    );
    let history = json(&p, &["alerts", "history", "--format", "json"]);
    let transitions: Vec<(String, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["alert"]["rule"] == "high_5xx_ratio")
        .map(|t| {
            (
                t["from"].as_str().unwrap().to_string(),
                t["alert"]["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        transitions[..2],
        [
            ("inactive".to_string(), "pending".to_string()),
            ("pending".to_string(), "firing".to_string())
        ],
        "{history:#}"
    );

    // Alertmanager shows our alert through its own API.
    let am_addr = format!("127.0.0.1:{am_port}");
    wait_until("the alert in Alertmanager", Duration::from_secs(60), || {
        let (code, body) = http_get(&am_addr, "/api/v2/alerts").ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200
            && v.as_array()?.iter().any(|a| {
                a["labels"]["alertname"] == "high_5xx_ratio" && a["labels"]["service"] == "api"
            }))
        .then_some(())
    });
    // The SMTP server got the mail.
    wait_until("the alert mail", Duration::from_secs(60), || {
        let log = smtp.log();
        (log.contains("Subject: [FIRING:1] mon: high_5xx_ratio")
            && log.contains("ops@example.test"))
        .then_some(())
    });

    // --- Recovery: the alert resolves, the webhook gets the resolution, once.
    deploy(&p, "v3");
    wait_until("the resolution", Duration::from_secs(60), || {
        (hooks.lock().unwrap().len() >= 2).then_some(())
    });
    wait_until("the resolved transition", Duration::from_secs(30), || {
        let h = json(&p, &["alerts", "history", "--format", "json"]);
        h.as_array()?
            .iter()
            .any(|t| t["alert"]["rule"] == "high_5xx_ratio" && t["alert"]["state"] == "resolved")
            .then_some(())
    });
    // Later evaluations (one a second) must not notify again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        statuses(&hooks.lock().unwrap()),
        vec!["firing", "resolved"],
        "exactly one notification and one resolution"
    );

    // --- A silence made before a second breach holds its notification back until it expires.
    let silence = json(
        &p,
        &[
            "alerts",
            "silence",
            "alertname=high_5xx_ratio",
            "service=api",
            "--for",
            "20s",
            "--comment",
            "planned errors",
            "--format",
            "json",
        ],
    );
    assert!(
        silence["author"].as_str().unwrap().contains('@'),
        "{silence:#}"
    );
    let silenced_at = Instant::now();
    deploy(&p, "v4-errors");
    wait_until(
        "the silenced alert to fire",
        Duration::from_secs(60),
        || {
            let a = json(&p, &["alerts", "list", "--format", "json"]);
            a["alerts"]
                .as_array()?
                .iter()
                .any(|a| {
                    a["rule"] == "high_5xx_ratio" && a["state"] == "firing" && a["silenced"] == true
                })
                .then_some(())
        },
    );
    assert_eq!(
        hooks.lock().unwrap().len(),
        2,
        "the silence holds the notification back"
    );
    // After expiry the still-firing alert is notified.
    let third = wait_until(
        "the notification after the silence expired",
        Duration::from_secs(60),
        || {
            let h = hooks.lock().unwrap();
            (h.len() >= 3).then(|| h[2].clone())
        },
    );
    assert!(
        silenced_at.elapsed() >= Duration::from_secs(19),
        "notified {:?} into a 20 s silence",
        silenced_at.elapsed()
    );
    assert_eq!(third["status"], "firing");

    // Every transition was an event.
    let events = json(&p, &["events", "--limit", "500", "--format", "json"]);
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for kind in [
        "alert.pending",
        "alert.firing",
        "alert.resolved",
        "alert.silenced",
    ] {
        assert!(kinds.contains(&kind), "no {kind} event in {kinds:?}");
    }

    // Each notifier's deliveries show in `prod monitor`.
    wait_until("the notifiers' status", Duration::from_secs(30), || {
        let st = json(&p, &["prod", "monitor", "--format", "json"]);
        let notifier = |name: &str| {
            st["notifiers"]
                .as_array()
                .and_then(|ns| ns.iter().find(|n| n["name"] == name).cloned())
        };
        let (hook, dead) = (notifier("hook")?, notifier("dead")?);
        (hook["delivered"].as_u64()? >= 3
            && dead["failed"].as_u64()? >= 1
            && dead["last_error"].is_string())
        .then_some(())
    });

    // --- History across a restart: a SIGKILLed daemon's samples are still there, and the
    // monitor control choice (alerts off) persists.
    let off = json(
        &p,
        &[
            "prod", "monitor", "--action", "stop", "--alerts", "--format", "json",
        ],
    );
    assert_eq!(
        (off["collecting"].as_bool(), off["alerts"].as_bool()),
        (Some(true), Some(false))
    );
    stop.store(true, Ordering::SeqCst);
    traffic.join().unwrap();
    let before = json(
        &p,
        &[
            "metrics", "query", "api", "requests", "--since", "10m", "--step", "1s", "--agg",
            "sum", "--format", "json",
        ],
    );
    let before_points = before["points"].as_array().unwrap().clone();
    let before_total: f64 = before_points
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .sum();
    assert!(before_total > 50.0, "{before:#}");
    p.kill_daemon();
    p.up();
    p.wait_for(
        "the platform after a restart",
        Duration::from_secs(60),
        common::all_healthy,
    );
    let control = json(&p, &["prod", "monitor", "--format", "json"]);
    assert_eq!(
        control["alerts"], false,
        "the choice survives the restart: {control:#}"
    );
    let after = json(
        &p,
        &[
            "metrics", "query", "api", "requests", "--since", "10m", "--step", "1s", "--agg",
            "sum", "--format", "json",
        ],
    );
    let after_points = after["points"].as_array().unwrap();
    for point in &before_points {
        assert!(
            after_points.contains(point),
            "{point} from before the restart is missing afterwards"
        );
    }
    let csv = p.cli(&[
        "metrics", "query", "api", "requests", "--since", "10m", "--agg", "sum", "--format", "csv",
    ]);
    assert!(String::from_utf8_lossy(&csv.stdout).starts_with("time,value\n"));
    let list = json(&p, &["metrics", "list", "--format", "json"]);
    assert!(list["series"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["target"] == "api" && s["metric"] == "latency" && s["kind"] == "histogram"));
}
