//! The web dashboard in a real browser: Debian's headless Chromium, driven over WebDriver by
//! chromedriver, against the real daemon on the example platform. Screenshots of each page go
//! to `target/dashboard/`.

mod common;

use common::webdriver::{base64_decode, Driver, Session};
use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn screenshots() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One HTTP/1.1 exchange on a fresh connection (`tcf_testkit::http_exchange`).
fn raw_http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> tcf_testkit::HttpAnswer {
    tcf_testkit::http_exchange(addr, method, path, headers, body).unwrap()
}

fn json(p: &Platform, args: &[&str]) -> Value {
    let out = p.cli(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn serving(status: &Value, service: &str) -> Vec<(String, u64)> {
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .map(|s| {
            s["traffic"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        t["version"].as_str().unwrap().to_string(),
                        t["weight"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Requests to one service on a thread until dropped, so its 5xx ratio has something to count.
struct Load(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Load {
    fn start(addr: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let t = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let _ = http_get(&addr, "/");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Load(stop, Some(t))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn base64_of_screenshots() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YWJj"), b"abc");
}

#[test]
fn the_dashboard_in_a_real_browser() {
    let config = example_config()
        + r#"
[monitor]
interval = "1s"

[deploy]
# The 500s of the breaking release are the point: no automatic revert.
max_error_ratio = 1.0
watch = "1s"

[alerts.rules.high_5xx_ratio]
for = "2s"
"#;
    let mut p = Platform::new(&config);
    p.up();
    p.wait_for("six healthy services", WAIT, all_healthy);

    // --- `prod monitor --dashboard --port N` starts it in the running daemon, prints the URL.
    let port = free_port();
    let out = p.cli(&[
        "prod",
        "monitor",
        "--dashboard",
        "--port",
        &port.to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        stdout.contains(&format!("dashboard started at {base}/")),
        "{stdout}"
    );
    let monitor = json(&p, &["prod", "monitor", "--format", "json"]);
    assert_eq!(monitor["dashboard_url"], format!("{base}/"));

    // The overview's weight, everything it loads included, stays far under 300 KB.
    let addr = format!("127.0.0.1:{port}");
    let (code, html) = http_get(&addr, "/").unwrap();
    assert_eq!(code, 200);
    assert!(
        html.contains("<table class=\"services\">"),
        "rendered on the server: {html}"
    );
    let weight: usize = ["/", "/assets/style.css", "/assets/app.js", "/favicon.ico"]
        .iter()
        .map(|path| http_get(&addr, path).unwrap().1.len())
        .sum();
    assert!(weight < 300 * 1024, "overview weighs {weight} bytes");

    let shots = screenshots();
    let driver = Driver::start(free_port());
    let profile = tempfile::tempdir().unwrap();
    let b: Session = driver.session(profile.path());

    // --- Overview: the six services, healthy, and the live stream connected.
    b.go(&format!("{base}/"));
    b.wait("six healthy services on the overview", WAIT, |b| {
        b.count("table.services tbody tr") == 6
            && b.count("table.services td.health .dot.healthy") == 6
    });
    for s in [
        "gateway",
        "personas",
        "workflows",
        "projects",
        "context",
        "tokens",
    ] {
        let health = b.text(&format!("#svc-{s} td.health"));
        assert!(health.starts_with("healthy"), "{s}: {health}");
    }
    assert_eq!(b.text("#svc-gateway td.inst"), "2/2");
    b.wait("the live stream", WAIT, |b| {
        b.text("#live-state").contains("live")
    });
    b.screenshot(&shots.join("overview.png"));
    // Reported, not asserted (a shared machine's timing proves nothing): first render time.
    let rendered = b.script(
        "const n = performance.getEntriesByType('navigation')[0]; return n ? n.domContentLoadedEventEnd : null;",
    );
    eprintln!("overview: DOMContentLoaded after {rendered} ms");

    // Keyboard: the first Tab lands on "skip to content", the next one on the navigation.
    b.key("\u{E004}");
    assert_eq!(b.script("return document.activeElement.className;"), "skip");
    b.key("\u{E004}");
    assert_eq!(
        b.script("return document.activeElement.getAttribute('href');"),
        "/"
    );
    // Dark theme when the browser prefers it; the charts' colours follow the same variables.
    b.prefer_colour_scheme("dark");
    b.wait("the dark theme", WAIT, |b| {
        b.script("return getComputedStyle(document.body).backgroundColor;") == "rgb(15, 20, 25)"
    });
    b.screenshot(&shots.join("overview-dark.png"));
    b.prefer_colour_scheme("light");

    // --- A deploy started from the CLI moves the traffic split on the open page, no reload.
    b.script("window.__sameDocument = 'yes';");
    assert!(b.text("#svc-personas td.traffic").contains("v1"));
    let deploy = Command::new(bin())
        .args([
            "prod",
            "deploy",
            "v2",
            "--service",
            "personas",
            "--force",
            "--config",
        ])
        .arg(&p.config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut deploy = scopeguard_child(deploy);
    b.wait("personas' traffic on v2 without a reload", WAIT, |b| {
        b.text("#svc-personas td.traffic").starts_with("v2")
    });
    assert_eq!(b.script("return window.__sameDocument;"), "yes");
    assert!(deploy.0.wait().unwrap().success());
    b.screenshot(&shots.join("overview-after-deploy.png"));

    // --- A breaking release fires an alert; it is silenced from the alerts page.
    let status = p.status().unwrap();
    let tokens_addr = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "tokens")
        .unwrap()["listen"]
        .as_str()
        .unwrap()
        .to_string();
    let out = p.cli(&[
        "prod",
        "deploy",
        "v2-errors",
        "--service",
        "tokens",
        "--force",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let load = Load::start(tokens_addr);
    b.go(&format!("{base}/alerts"));
    let firing = r#"#t-firing tr[data-rule="high_5xx_ratio"][data-service="tokens"]"#;
    b.wait("the high_5xx_ratio alert of tokens firing", WAIT, |b| {
        b.find(firing).is_some()
    });
    b.screenshot(&shots.join("alerts-firing.png"));
    b.click(&format!("{firing} button[data-action=silence]"));
    b.wait("the alert among the silenced", WAIT, |b| {
        b.find(r#"#t-silenced tr[data-rule="high_5xx_ratio"][data-service="tokens"]"#)
            .is_some()
            && b.find(firing).is_none()
    });
    let alerts = json(&p, &["alerts", "list", "--format", "json"]);
    let silence = &alerts["silences"][0];
    assert_eq!(silence["author"], "dashboard (local)", "{alerts}");
    assert!(
        silence["matchers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "service=tokens"),
        "{alerts}"
    );
    b.screenshot(&shots.join("alerts-silenced.png"));

    // --- A rollback from the service page, after a confirmation naming the change.
    b.go(&format!("{base}/services/tokens"));
    b.wait("the service page", WAIT, |b| {
        b.find("#charts figure.chart").is_some()
    });
    b.screenshot(&shots.join("service.png"));
    b.click("a.button.danger");
    b.wait("the confirmation", WAIT, |b| {
        b.find("#confirm-rollback").is_some()
    });
    let changes = b.text("ul.changes");
    assert!(changes.contains("tokens: v2-errors → v1"), "{changes}");
    b.screenshot(&shots.join("rollback-confirm.png"));
    b.click("#confirm-rollback");
    b.wait("the releases page", WAIT, |b| {
        b.url().ends_with("/releases")
    });
    p.wait_for("tokens' route back on v1", WAIT, |s| {
        serving(s, "tokens") == [("v1".to_string(), 100)]
    });
    drop(load);
    b.wait("the rollback in the timeline", WAIT, |b| {
        b.text("ol.timeline").contains("dashboard (local)")
    });
    b.screenshot(&shots.join("releases.png"));
    let events = json(&p, &["events", "--format", "json", "--limit", "200"]);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "release.started" && e["actor"] == "dashboard (local)"),
        "the rollback is recorded with its actor"
    );

    // --- Events, filtered by service and kind.
    b.go(&format!(
        "{base}/events?service=tokens&kind=instance&since=1h"
    ));
    b.wait("filtered events", WAIT, |b| {
        b.count("table.events tbody tr") > 0
    });
    let rows = b.script(
        "return [...document.querySelectorAll('table.events tbody tr')].map(tr => [tr.cells[1].textContent, tr.cells[2].textContent]);",
    );
    for row in rows.as_array().unwrap() {
        assert!(row[0].as_str().unwrap().starts_with("instance"), "{rows}");
        assert_eq!(row[1], "tokens", "{rows}");
    }
    b.screenshot(&shots.join("events.png"));

    // --- 390 px wide: nothing wider than the screen, the tables scroll inside their box.
    b.resize(390, 844);
    b.go(&format!("{base}/"));
    b.wait("the overview", WAIT, |b| {
        b.count("table.services tbody tr") == 6
    });
    let fits = b.script(
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1;",
    );
    assert_eq!(fits, true, "the page is wider than 390 px");
    b.screenshot(&shots.join("overview-390.png"));
}

/// Kills a child still running when the test fails.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn scopeguard_child(c: std::process::Child) -> ChildGuard {
    ChildGuard(c)
}

#[test]
fn the_dashboard_from_the_config_and_what_is_refused() {
    // Off loopback it asks for a login with an API token, and the token's role decides: a
    // viewer sees the pages and is refused a rollback (403).
    let port = free_port();
    let mut exposed = Platform::new(
        &(example_config() + &format!("\n[monitor.dashboard]\nlisten = \"0.0.0.0:{port}\"\n")),
    );
    exposed.up();
    exposed.wait_for("six healthy services", WAIT, all_healthy);
    let addr = format!("127.0.0.1:{port}");
    let first = raw_http(&addr, "GET", "/", &[], "");
    assert_eq!(first.status, 303, "{first:?}");
    assert!(
        first.header("location").as_deref() == Some("/login"),
        "{first:?}"
    );
    let made = exposed.cli(&["tokens", "create", "vera", "--role", "viewer"]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let token = String::from_utf8(made.stdout).unwrap().trim().to_string();
    let wrong = raw_http(&addr, "POST", "/login", &[], "token=tcfp_not-a-token");
    assert_eq!(wrong.status, 401, "{wrong:?}");
    let login = raw_http(&addr, "POST", "/login", &[], &format!("token={token}"));
    assert_eq!(login.status, 303, "{login:?}");
    let cookie = login.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_string();
    let page = raw_http(&addr, "GET", "/", &[("Cookie", &cookie)], "");
    assert_eq!(page.status, 200, "{page:?}");
    let page = page.body;
    assert!(page.contains("vera (dashboard) · viewer"), "{page}");
    let at = page.find(r#"name="csrf" value=""#).expect("a CSRF field") + 19;
    let csrf = page[at..at + 64].to_string();
    let denied = raw_http(
        &addr,
        "POST",
        "/services/personas/rollback",
        &[("Cookie", &cookie)],
        &format!("csrf={csrf}&reason=x"),
    );
    assert_eq!(denied.status, 403, "{denied:?}");
    assert!(denied.body.contains("has the viewer role"), "{denied:?}");
    // The same in the browser: the login page first, then the viewer shown the refusal.
    let driver = Driver::start(free_port());
    let profile = tempfile::tempdir().unwrap();
    let b: Session = driver.session(profile.path());
    b.go(&format!("http://{addr}/services/personas"));
    b.wait("the login page", WAIT, |b| {
        b.url().ends_with("/login") && b.count("input[name=token]") == 1
    });
    b.screenshot(&screenshots().join("login.png"));
    b.script(&format!(
        "document.getElementById('token').value = {};",
        serde_json::Value::String(token.clone())
    ));
    b.click("form.login button[type=submit]");
    b.wait("the overview, logged in", WAIT, |b| {
        !b.url().ends_with("/login") && b.text("body").contains("vera (dashboard)")
    });
    assert!(
        b.count("button.danger, a[href$='/rollback']") == 0,
        "no rollback offered to a viewer"
    );
    b.go(&format!("http://{addr}/services/personas/rollback"));
    b.wait("the refusal", WAIT, |b| {
        b.text("body").contains("has the viewer role")
    });
    b.screenshot(&screenshots().join("viewer-refused.png"));
    drop(b);
    drop(driver);
    drop(exposed);

    // On loopback it is served from startup.
    let port = free_port();
    let mut p = Platform::new(
        &(example_config() + &format!("\n[monitor.dashboard]\nlisten = \"127.0.0.1:{port}\"\n")),
    );
    p.up();
    p.wait_for("six healthy services", WAIT, all_healthy);
    let addr = format!("127.0.0.1:{port}");
    let (code, html) = http_get(&addr, "/").unwrap();
    assert_eq!(code, 200);
    assert_eq!(html.matches("<tr id=\"svc-").count(), 6, "{html}");
    // Asking again says where it is; another port while it runs is refused.
    let again = p.cli(&["prod", "monitor", "--dashboard"]);
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert!(
        text.contains(&format!("dashboard already served at http://{addr}/")),
        "{text}"
    );
    let other = p.cli(&[
        "prod",
        "monitor",
        "--dashboard",
        "--port",
        &free_port().to_string(),
    ]);
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("already runs at"), "{err}");
    // A form without the CSRF token changes nothing.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    let body = "reason=x";
    write!(
        s,
        "POST /services/tokens/rollback HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 422"), "{answer}");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    let body = "csrf=0123&reason=x";
    write!(
        s,
        "POST /services/tokens/rollback HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let history = json(&p, &["history", "--format", "json"]);
    assert_eq!(
        history.as_array().unwrap().len(),
        1,
        "only the initial release: {history}"
    );
}
