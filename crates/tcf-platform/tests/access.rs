//! Access control and secrets with the real binary and a real daemon: the remote API over
//! HTTPS with tokens and roles (401, 403, revoked, expired, the failed-auth limit), remote
//! status, `logs -f` and a streamed deploy with `--fingerprint`; the token from `--token-file`,
//! `TCF_TOKEN_FILE` or `TCF_TOKEN` and the host and pin from `TCF_HOST`/`TCF_FINGERPRINT`; the
//! API served from `[daemon] tls_cert`/`tls_key` and trusted with `--ca`/`TCF_CA`; secrets set
//! on stdin reaching an instance's environment and nothing else.

mod common;

use common::{all_healthy, free_port, wait_until, Platform};
use serde_json::Value;
use std::io::{BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn config(api_port: u16, listen: Option<u16>, env: &str) -> String {
    let daemon = listen.map_or(String::new(), |p| {
        format!("[daemon]\nlisten = \"127.0.0.1:{p}\"\n")
    });
    format!(
        r#"[platform]
name = "access"

{daemon}
[services.api]
command = ["tcf-demo"]
version = "v1"
listen = "127.0.0.1:{api_port}"
{env}

[deploy]
watch = "1s"
retire_after = "1s"
"#
    )
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The CLI against the remote API (no --config: only --host and the pin).
fn remote(url: &str, fingerprint: &str, token: &str, args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .args(["--host", url, "--fingerprint", fingerprint])
        .env("TCF_TOKEN", token)
        .env_remove("TCF_CONFIG")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The CLI with none of the remote settings (TCF_HOST, TCF_TOKEN, ...) inherited from the
/// test's environment: each case sets exactly what it tests.
fn bare_cli(args: &[&str]) -> Command {
    let mut cmd = Command::new(common::bin());
    cmd.args(args)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null());
    for var in [
        "TCF_CONFIG",
        "TCF_HOST",
        "TCF_TOKEN",
        "TCF_TOKEN_FILE",
        "TCF_FINGERPRINT",
        "TCF_CA",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A remote command given neither --fingerprint nor --ca fails, saying to give one of them.
fn assert_refused_for_want_of_trust(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("--fingerprint SHA256") && err.contains("--ca FILE"),
        "{}",
        text(&out)
    );
}

/// A raw HTTPS request with curl (pinning is the CLI's job; here the status codes matter).
fn curl(url: &str, token: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "-o", "-", "-w", "\n%{http_code}", url]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.output().expect("curl runs (scripts/test installs it)");
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = body.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn create_token(p: &Platform, name: &str, role: &str, extra: &[&str]) -> String {
    let mut args = vec!["tokens", "create", name, "--role", role];
    args.extend_from_slice(extra);
    let out = p.cli(&args);
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("tcfp_"), "{token}");
    token
}

#[test]
fn the_remote_api_needs_a_token_with_the_right_role() {
    let (api_port, listen) = (free_port(), free_port());
    let mut p = Platform::new(&config(api_port, Some(listen), ""));
    p.up();
    let status = p.wait_for("healthy", Duration::from_secs(30), all_healthy);
    let fingerprint = status["api"]["fingerprint_sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("status names the remote API: {status:#}"))
        .to_string();
    assert_eq!(status["api"]["listen"], format!("127.0.0.1:{listen}"));
    let log = std::fs::read_to_string(p.daemon_log()).unwrap();
    assert!(
        log.contains(&fingerprint),
        "the daemon prints the fingerprint:\n{log}"
    );
    let url = format!("https://127.0.0.1:{listen}");

    let viewer = create_token(&p, "watcher", "viewer", &[]);
    let deployer = create_token(&p, "ci-deploy", "deployer", &[]);
    let short = create_token(&p, "short-lived", "viewer", &["--expires", "1s"]);
    let listed = p.cli(&["tokens", "list", "--format", "json"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let listed_text = String::from_utf8_lossy(&listed.stdout).to_string();
    for t in [&viewer, &deployer, &short] {
        assert!(
            !listed_text.contains(t.as_str()),
            "tokens list never shows a token"
        );
    }
    let listed: Value = serde_json::from_str(&listed_text).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed:#}");

    // No token, an unknown one: 401.
    let (code, body) = curl(&format!("{url}/v1/status"), None);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("Bearer"), "{body}");

    // A viewer reads, remotely, with the pin; it cannot deploy (403).
    let out = remote(&url, &fingerprint, &viewer, &["status", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let remote_status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(remote_status["platform"], "access");
    let out = remote(&url, &fingerprint, &viewer, &["prod", "deploy", "v2"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("403") && err.contains("needs deployer"),
        "{err}"
    );

    // Or trust the certificate as a CA (here the self-signed one itself).
    let ca = p.dir.path().join(".tcf/api-cert.pem");
    let out = Command::new(common::bin())
        .args(["status", "--host", &url, "--ca"])
        .arg(&ca)
        .env("TCF_TOKEN", &viewer)
        .env_remove("TCF_CONFIG")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // The token from --token-file (a trailing newline is fine); it wins over TCF_TOKEN, which
    // here holds no token at all (sent, it would be a 401).
    let token_file = p.dir.path().join("viewer.token");
    std::fs::write(&token_file, format!("{viewer}\n")).unwrap();
    let with_token_file = || {
        bare_cli(&["status", "--host", &url, "--fingerprint", &fingerprint])
            .arg("--token-file")
            .arg(&token_file)
            .env("TCF_TOKEN", "tcfp_not_a_token")
            .output()
            .unwrap()
    };
    // Readable by others: it works, with a warning naming the fix.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = with_token_file();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("can be read by others (mode 644): chmod 600"),
        "{}",
        text(&out)
    );
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = with_token_file();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{}",
        text(&out)
    );

    // Everything from the environment: TCF_HOST, TCF_TOKEN_FILE, and TCF_FINGERPRINT pasted as
    // `openssl x509 -fingerprint` prints it (upper case, colons).
    let pasted = fingerprint
        .as_bytes()
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).unwrap().to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    let out = bare_cli(&["status", "--format", "json"])
        .env("TCF_HOST", &url)
        .env("TCF_TOKEN_FILE", &token_file)
        .env("TCF_FINGERPRINT", &pasted)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let env_status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(env_status["platform"], "access");
    // TCF_TOKEN and TCF_HOST, with --host winning over TCF_HOST (which names a closed port).
    let out = bare_cli(&["status", "--host", &url, "--fingerprint", &fingerprint])
        .env("TCF_HOST", "https://127.0.0.1:1")
        .env("TCF_TOKEN", &viewer)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // A token file that cannot be read, or holds no token: said, nothing sent.
    let missing = p.dir.path().join("no-such.token");
    let out = bare_cli(&["status", "--host", &url, "--fingerprint", &fingerprint])
        .arg("--token-file")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr_of(&out).contains(&format!("cannot read the token file {}", missing.display())),
        "{}",
        text(&out)
    );
    let empty = p.dir.path().join("empty.token");
    std::fs::write(&empty, "\n").unwrap();
    let out = bare_cli(&["status", "--fingerprint", &fingerprint])
        .env("TCF_HOST", &url)
        .env("TCF_TOKEN_FILE", &empty)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(stderr_of(&out).contains("needs a token"), "{}", text(&out));
    // A host with no way to trust its certificate is refused before connecting.
    assert_refused_for_want_of_trust(
        bare_cli(&["status"])
            .env("TCF_HOST", &url)
            .env("TCF_TOKEN", &viewer),
    );

    // Stopping the platform is the admin's.
    let out = remote(&url, &fingerprint, &viewer, &["down"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs admin"),
        "{}",
        text(&out)
    );

    // A wrong pin is refused before any request.
    let out = remote(&url, &"00".repeat(32), &viewer, &["status"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fingerprint"),
        "{}",
        text(&out)
    );

    // `logs -f` remotely: lines arrive while it follows.
    let mut follow = Command::new(common::bin())
        .args([
            "logs",
            "api",
            "-f",
            "--host",
            &url,
            "--fingerprint",
            &fingerprint,
        ])
        .env("TCF_TOKEN", &viewer)
        .env_remove("TCF_CONFIG")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let follow_pid = follow.id();
    let mut lines = std::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Some(Ok(line)) = lines.next() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(20));
    assert!(first.is_ok(), "logs -f printed nothing remotely");
    common::kill9(follow_pid);
    let _ = follow.wait();

    // A deployer deploys (the progress streamed remotely); release and events name the token.
    let out = remote(&url, &fingerprint, &deployer, &["prod", "deploy", "v2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("v2")
            || String::from_utf8_lossy(&out.stderr).contains("v2"),
        "the deploy's progress streams: {}",
        text(&out)
    );
    let out = remote(
        &url,
        &fingerprint,
        &viewer,
        &["history", "--format", "json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let history: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history[0]["actor"], "ci-deploy", "{history:#}");
    let out = p.cli(&["events", "--limit", "500", "--format", "json"]);
    let events: Value = serde_json::from_slice(&out.stdout).unwrap();
    let events = events.as_array().unwrap();
    assert!(
        events.iter().any(
            |e| e["actor"] == "ci-deploy" && e["kind"].as_str().unwrap().starts_with("release")
        ),
        "{events:#?}"
    );

    // Revoked and expired: 401.
    let out = p.cli(&["tokens", "revoke", "watcher"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(curl(&format!("{url}/v1/status"), Some(&viewer)).0, 401);
    wait_until("the short token expires", Duration::from_secs(10), || {
        curl(&format!("{url}/v1/status"), Some(&short)).0 == 401
    });
    let (code, body) = curl(&format!("{url}/v1/status"), Some(&short));
    assert_eq!(code, 401);
    assert!(body.contains("expired"), "{body}");
    assert_eq!(curl(&format!("{url}/v1/status"), Some(&deployer)).0, 200);

    // Failed authentications are recorded; past 10 a minute from one address, even a good
    // token is refused: it is never checked.
    let failed_so_far = auth_failures(&p);
    assert!((3..10).contains(&failed_so_far), "{failed_so_far}");
    for _ in failed_so_far..10 {
        assert_eq!(curl(&format!("{url}/v1/status"), Some("tcfp_guess")).0, 401);
    }
    let (code, body) = curl(&format!("{url}/v1/status"), Some(&deployer));
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("too many failed"), "{body}");
    assert_eq!(auth_failures(&p), 10);
    // The local user on the Unix socket is unaffected.
    assert!(p.cli(&["status"]).status.success());
    let daemon_log = std::fs::read_to_string(p.daemon_log()).unwrap();
    for t in [&viewer, &deployer, &short] {
        assert!(
            !daemon_log.contains(t.as_str()),
            "a token reached the daemon's log"
        );
    }
}

fn auth_failures(p: &Platform) -> usize {
    let out = p.cli(&["events", "--limit", "1000", "--format", "json"]);
    let events: Value = serde_json::from_slice(&out.stdout).unwrap();
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "auth.failed")
        .count()
}

fn sha256_hex(value: impl AsRef<[u8]>) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(value.as_ref())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn set_secret(p: &Platform, name: &str, value: &str) -> Output {
    let mut child = Command::new(common::bin())
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
    child.wait_with_output().unwrap()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn a_secret_reaches_the_instance_and_nothing_else() {
    let api_port = free_port();
    let env = "env = { DB_PASSWORD = \"${secret:db_password}\" }";
    let mut p = Platform::new(&config(api_port, None, env));
    let value = format!("pw-{}-{}", std::process::id(), free_port());

    // Before the first `up`, with no daemon: the store and key are written directly.
    let out = set_secret(&p, "db_password", &value);
    assert!(out.status.success(), "{}", text(&out));
    let state = p.dir.path().join(".tcf");
    for (file, mode) in [("", 0o700), ("secrets.key", 0o600), ("state.db", 0o600)] {
        let m = std::fs::metadata(state.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, mode, "{file}");
    }

    // Modes loosened behind the platform's back are said at start (and made private again).
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        state.join("secrets.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    p.up();
    let s = p.wait_for("healthy", Duration::from_secs(30), all_healthy);
    let warnings = s["warnings"].to_string();
    assert!(
        warnings.contains("mode 0755") && warnings.contains("secrets.key has mode 0644"),
        "{warnings}"
    );
    for (file, mode) in [("", 0o700), ("secrets.key", 0o600)] {
        let m = std::fs::metadata(state.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, mode, "{file}");
    }
    let addr = format!("127.0.0.1:{api_port}");
    let (code, body) = common::http_get(&addr, "/env-sha256/DB_PASSWORD").unwrap();
    assert_eq!((code, body.trim()), (200, sha256_hex(&value).as_str()));

    // Nowhere else: config, config show, status, events, secrets list, the daemon's log, the
    // store's bytes, the instance's command line.
    let status = p.cli(&["status", "--format", "json"]);
    let shown = p.cli(&["config", "show"]);
    assert!(shown.status.success(), "{}", text(&shown));
    let events = p.cli(&["events", "--limit", "1000", "--format", "json"]);
    let listed = p.cli(&["secrets", "list", "--format", "json"]);
    let list: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(list[0]["name"], "db_password");
    assert_eq!(list[0]["used_by"], serde_json::json!(["api"]));
    let s: Value = serde_json::from_slice(&status.stdout).unwrap();
    let pid = s["services"][0]["instances"][0]["pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        contains(&environ, &value),
        "the instance's environment has it"
    );
    let mut store_bytes = std::fs::read(state.join("state.db")).unwrap();
    store_bytes.extend(std::fs::read(state.join("state.db-wal")).unwrap_or_default());
    for (what, bytes) in [
        ("the config", std::fs::read(&p.config).unwrap()),
        ("config show", shown.stdout.clone()),
        ("status", status.stdout.clone()),
        ("events", events.stdout.clone()),
        ("secrets list", listed.stdout.clone()),
        ("the daemon's log", std::fs::read(p.daemon_log()).unwrap()),
        ("the store", store_bytes),
        ("the instance's cmdline", cmdline),
    ] {
        assert!(!contains(&bytes, &value), "the secret's value is in {what}");
    }
    assert!(contains(&shown.stdout, "${secret:db_password}"));

    // Rotation: a new value through the daemon makes the service stale until the next deploy.
    let rotated = format!("{value}-rotated");
    let out = set_secret(&p, "db_password", &rotated);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("api"),
        "{}",
        text(&out)
    );
    let s = p.status().unwrap();
    assert_eq!(
        s["services"][0]["stale_secrets"],
        serde_json::json!(["db_password"])
    );
    let out = p.cli(&["prod", "deploy", "v2"]);
    assert!(out.status.success(), "{}", text(&out));
    let (_, body) = common::http_get(&addr, "/env-sha256/DB_PASSWORD").unwrap();
    assert_eq!(body.trim(), sha256_hex(&rotated));
    let s = p.status().unwrap();
    assert!(s["services"][0]["stale_secrets"].is_null(), "{s:#}");

    // Import from a .env file and remove, through the daemon; values never printed.
    let env_file = p.dir.path().join("prod.env");
    std::fs::write(
        &env_file,
        "# shared\nAPI_KEY=k-123\nexport SMTP_PASSWORD=\"p w\"\n",
    )
    .unwrap();
    let value_file = p.dir.path().join("from-file.txt");
    std::fs::write(&value_file, "file-value\n").unwrap();
    let out = p.cli(&[
        "secrets",
        "set",
        "from_file",
        "--from-file",
        value_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.cli(&["secrets", "import", env_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.cli(&["secrets", "rm", "API_KEY"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.cli(&["secrets", "list", "--format", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["SMTP_PASSWORD", "db_password", "from_file"]);
    assert!(!contains(&out.stdout, "p w"));

    // A reference to a secret that does not exist fails the deploy, naming it.
    let text_now = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(
        &p.config,
        text_now.replace("${secret:db_password}", "${secret:db_pasword}"),
    )
    .unwrap();
    let out = p.cli(&["prod", "deploy", "v3"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("db_pasword"),
        "{}",
        text(&out)
    );
    let out = p.cli(&["config", "validate"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("db_pasword"),
        "{}",
        text(&out)
    );
    std::fs::write(
        &p.config,
        text_now.replace("${secret:db_password}", "${secret:db_password"),
    )
    .unwrap();
    let out = p.cli(&["config", "validate"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unterminated"),
        "{}",
        text(&out)
    );
    std::fs::write(&p.config, text_now).unwrap();

    // A lost key: a clear error, no crash.
    let out = p.cli(&["down"]);
    assert!(out.status.success(), "{}", text(&out));
    p.wait_daemon_exit(Duration::from_secs(30));
    std::fs::remove_file(state.join("secrets.key")).unwrap();
    let out = set_secret(&p, "another", "x");
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("secrets.key is missing"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // The daemon says so for the instance it cannot start, and keeps running.
    p.up();
    wait_until(
        "the instance's start fails naming the key",
        Duration::from_secs(30),
        || {
            let out = p.cli(&["events", "--limit", "200", "--format", "json"]);
            String::from_utf8_lossy(&out.stdout).contains("secrets.key is missing")
        },
    );
    assert!(p.status().is_some(), "the daemon still answers");
    let log = std::fs::read_to_string(p.daemon_log()).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains(&value) && !log.contains(&rotated));
}

#[test]
fn an_admin_stops_the_platform_remotely_and_no_local_pid_is_signalled() {
    let (api_port, listen) = (free_port(), free_port());
    let mut p = Platform::new(&config(api_port, Some(listen), ""));
    p.up();
    let status = p.wait_for("healthy", Duration::from_secs(30), all_healthy);
    let fingerprint = status["api"]["fingerprint_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("https://127.0.0.1:{listen}");
    let admin = create_token(&p, "ops", "admin", &[]);
    let out = remote(&url, &fingerprint, &admin, &["down"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("remote API has closed"),
        "{}",
        text(&out)
    );
    assert_eq!(p.wait_daemon_exit(Duration::from_secs(30)), Some(0));
    // With the daemon gone, `events` reads the store: the stop is the token's.
    let out = p.cli(&["events", "--limit", "100", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let events: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "daemon.stop_requested" && e["actor"] == "ops"),
        "{events:#}"
    );
}

#[test]
fn the_remote_api_serves_the_configured_certificate_and_a_client_trusts_its_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tcf_testkit::openssl_ca_and_cert(certs.path());
    let (api_port, listen) = (free_port(), free_port());
    let text_with_tls = config(api_port, Some(listen), "").replace(
        "[daemon]\n",
        &format!("[daemon]\ntls_cert = {cert:?}\ntls_key = {key:?}\n"),
    );
    assert!(text_with_tls.contains("tls_key"), "{text_with_tls}");
    let mut p = Platform::new(&text_with_tls);
    p.up();
    let status = p.wait_for("healthy", Duration::from_secs(30), all_healthy);

    // The daemon serves the configured certificate (its fingerprint is the file's), and makes
    // no self-signed one.
    let der = Command::new("openssl")
        .args(["x509", "-outform", "der", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(der.status.success(), "{}", text(&der));
    assert_eq!(
        status["api"]["fingerprint_sha256"].as_str(),
        Some(sha256_hex(&der.stdout).as_str()),
        "{status:#}"
    );
    assert!(!p.dir.path().join(".tcf/api-cert.pem").exists());

    let url = format!("https://127.0.0.1:{listen}");
    let viewer = create_token(&p, "watcher", "viewer", &[]);

    // --ca, no fingerprint: the chain and the name (IP 127.0.0.1) are checked.
    let out = bare_cli(&["status", "--format", "json", "--host", &url, "--ca"])
        .arg(&ca)
        .env("TCF_TOKEN", &viewer)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let remote_status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(remote_status["platform"], "access");
    // The same from TCF_CA.
    let out = bare_cli(&["status"])
        .env("TCF_HOST", &url)
        .env("TCF_CA", &ca)
        .env("TCF_TOKEN", &viewer)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // No --ca nor --fingerprint: refused, saying what to give.
    assert_refused_for_want_of_trust(
        bare_cli(&["status", "--host", &url]).env("TCF_TOKEN", &viewer),
    );

    // Another CA did not issue it: the TLS handshake fails, no request is made. (Both test CAs
    // have the same name, so rustls reports a bad signature rather than an unknown issuer.)
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = tcf_testkit::openssl_ca_and_cert(other.path());
    let out = bare_cli(&["status", "--host", &url, "--ca"])
        .arg(&other_ca)
        .env("TCF_TOKEN", &viewer)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("TLS: invalid peer certificate"),
        "{}",
        text(&out)
    );
    assert_eq!(
        auth_failures(&p),
        0,
        "nothing reached the API unauthenticated"
    );
}
