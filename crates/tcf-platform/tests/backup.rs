//! `tcf-platform backup …` as a user runs it: the real binary against a config with a real
//! Redis (started here) and a directory; create, list, verify, restore, prune, and the exit
//! codes the help promises.

mod common;

use assert_cmd::Command;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (apt-get install redis-tools)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn tcf(config: &Path, args: &[&str]) -> std::process::Output {
    Command::cargo_bin("tcf-platform")
        .unwrap()
        .arg("--config")
        .arg(config)
        .args(args)
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A real redis-server on a free loopback port with its files in `dir`, answering PING.
fn start_redis(dir: &Path) -> (Server, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server(
        std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it)"),
    );
    let start = Instant::now();
    while redis_cli(port, &["PING"]) != "PONG" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "redis did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

#[test]
fn backup_commands_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, port) = start_redis(dir.path());
    for i in 0..50 {
        redis_cli(port, &["SET", &format!("k{i}"), &format!("v{i}")]);
    }
    let uploads = dir.path().join("uploads");
    std::fs::create_dir(&uploads).unwrap();
    std::fs::write(uploads.join("a.txt"), "original").unwrap();
    let config = dir.path().join("tcf-platform.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[platform]
name = "backuptest"

[dependencies.redis]
kind = "redis"
address = "127.0.0.1:{port}"

[services.web]
command = ["sleep", "1000"]
version = "v1"
listen = "127.0.0.1:1"
depends_on = ["redis"]

[backup]
repository = "repo"
retention = {{ keep_last = 1 }}

[backup.sources.cache]
kind = "redis"
dependency = "redis"

[backup.sources.uploads]
kind = "directory"
path = "uploads"
"#
        ),
    )
    .unwrap();

    let out = tcf(&config, &["backup", "create", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["sources"], serde_json::json!(["cache", "uploads"]));

    let out = tcf(&config, &["backup", "list", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["last_verify"]["ok"], true);
    assert_eq!(listed[0]["last_verify"]["level"], "checksums");

    // Another writer holds the repository: exit 3, naming it.
    let lock_file = std::fs::File::open(dir.path().join("repo/lock")).unwrap();
    let held =
        nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let out = tcf(&config, &["backup", "create"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("is in use by another backup"),
        "{}",
        text(&out)
    );
    drop(held);

    let out = tcf(&config, &["backup", "verify", &id, "--level", "restore"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("(verify --level restore): ok"),
        "{}",
        text(&out)
    );

    // Change the data, then restore: without a terminal it needs --force.
    redis_cli(port, &["FLUSHALL"]);
    std::fs::write(uploads.join("a.txt"), "changed").unwrap();
    let out = tcf(&config, &["backup", "restore", &id]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--force"), "{}", text(&out));
    let out = tcf(&config, &["backup", "restore", &id, "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("recovery point"), "{}", text(&out));
    assert_eq!(redis_cli(port, &["DBSIZE"]), "50");
    assert_eq!(redis_cli(port, &["GET", "k7"]), "v7");
    assert_eq!(
        std::fs::read_to_string(uploads.join("a.txt")).unwrap(),
        "original"
    );

    // keep_last = 1: the recovery point (newest, verified) stays; the dry run names the
    // original as the one that would go and removes nothing.
    let out = tcf(
        &config,
        &["backup", "prune", "--dry-run", "--format", "json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let pruned: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let decisions = pruned["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 2, "{pruned}");
    assert_eq!(
        decisions[0]["reasons"],
        serde_json::json!(["last", "newest verified"]),
        "{pruned}"
    );
    assert_eq!(decisions[1]["id"], serde_json::json!(id), "{pruned}");
    assert_eq!(decisions[1]["keep"], serde_json::json!(false), "{pruned}");
    let out = tcf(&config, &["backup", "list", "--format", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed.as_array().unwrap().len(),
        2,
        "a dry run removes nothing"
    );

    // A damaged artifact: verify exits 1 and names it.
    let repo = dir.path().join("repo/backups").join(&id);
    let art = std::fs::read_dir(&repo)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".rdb.zst"))
        .unwrap();
    let mut bytes = std::fs::read(&art).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&art, bytes).unwrap();
    let out = tcf(&config, &["backup", "verify", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("FAILED  cache.dump.rdb.zst"),
        "{}",
        text(&out)
    );

    // Unknown backup, unknown source: errors that say what to do.
    let out = tcf(&config, &["backup", "verify", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("backup list"), "{}", text(&out));
    let out = tcf(&config, &["backup", "create", "--source", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn a_config_without_backup_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tcf-platform.toml");
    std::fs::write(&config, "[platform]\nname = \"x\"\n").unwrap();
    let out = tcf(&config, &["backup", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("has no [backup] section"),
        "{}",
        text(&out)
    );
}

/// With a daemon running: its `[backup] schedule` takes backups (trigger `schedule`), and the
/// CLI's backup commands are recorded in its audit trail with the user who ran them.
#[test]
fn the_daemon_runs_the_schedule_and_records_backup_events() {
    let mut p = common::Platform::new(
        "[platform]\nname = \"sched\"\n\n[monitor]\ninterval = \"1s\"\n\n[backup]\nrepository = \"repo\"\nschedule = \"* * * * *\"\n\n[backup.sources.files]\nkind = \"directory\"\npath = \"files\"\n",
    );
    std::fs::create_dir(p.dir.path().join("files")).unwrap();
    std::fs::write(p.dir.path().join("files/a"), "a").unwrap();
    p.up();
    let events = |p: &common::Platform| -> Option<Vec<serde_json::Value>> {
        let out = p.cli(&["events", "--limit", "200", "--format", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    };
    let start = Instant::now();
    while events(&p).is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the daemon did not start: {}",
            std::fs::read_to_string(p.daemon_log()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let out = p.cli(&["backup", "create", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let recorded = events(&p).unwrap();
    let created = recorded
        .iter()
        .find(|e| e["kind"] == "backup.created" && e["message"].as_str().unwrap().contains(&id))
        .unwrap_or_else(|| panic!("no backup.created event for {id}: {recorded:?}"));
    assert!(
        created["actor"].as_str().unwrap().contains('@'),
        "{created}"
    );

    // "* * * * *": the next minute boundary (at most a minute away) runs a scheduled backup.
    let start = Instant::now();
    loop {
        let recorded = events(&p).unwrap();
        if let Some(e) = recorded.iter().find(|e| {
            e["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("scheduled backup")
        }) {
            assert_eq!(e["kind"], "backup.created", "{e}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no scheduled backup within 90 s: {recorded:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = p.cli(&["backup", "list", "--format", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["trigger"] == "schedule"),
        "{listed}"
    );

    // The source goes away: the next scheduled run fails, and the built-in `backup_failed`
    // alert fires on the monitor's `backup` series.
    std::fs::remove_dir_all(p.dir.path().join("files")).unwrap();
    let start = Instant::now();
    loop {
        let out = p.cli(&["alerts", "list", "--format", "json"]);
        assert!(out.status.success(), "{}", text(&out));
        let alerts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let firing = alerts["alerts"].as_array().unwrap().iter().any(|a| {
            a["rule"] == "backup_failed" && a["state"] == "firing" && a["service"] == "backup"
        });
        if firing {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(100),
            "backup_failed did not fire: {alerts:#}\n{:?}",
            events(&p)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(events(&p)
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "backup.failed"
            && e["message"]
                .as_str()
                .unwrap()
                .starts_with("scheduled backup")));
}

/// The raw answer of the proxy to one request (head and body).
fn raw_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

fn events_of(p: &common::Platform, kind: &str) -> Vec<serde_json::Value> {
    let out = p.cli(&["events", "--limit", "200", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        .unwrap()
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

/// `maintenance on|off` by hand, and `backup restore` putting the services that use the source
/// in maintenance while it writes (503 with Retry-After; the instances keep running).
#[test]
fn restore_puts_the_services_using_the_source_in_maintenance_while_it_writes() {
    let redis_dir = tempfile::tempdir().unwrap();
    let (_redis, port) = start_redis(redis_dir.path());
    redis_cli(port, &["SET", "k", "v"]);
    let listen = common::free_port();
    let mut p = common::Platform::new(&format!(
        r#"
[platform]
name = "restoreguard"

[dependencies.cache]
kind = "redis"
address = "127.0.0.1:{port}"

[services.api]
command = ["tcf-demo"]
version = "v1"
listen = "127.0.0.1:{listen}"
depends_on = ["cache"]

[backup]
repository = "repo"

[backup.sources.sessions]
kind = "redis"
dependency = "cache"
"#
    ));
    let out = p.cli(&["backup", "create"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.cli(&["backup", "list", "--format", "json"]);
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    p.up();
    p.wait_for("api healthy", Duration::from_secs(60), common::all_healthy);
    let addr = format!("127.0.0.1:{listen}");
    let pid = p.status().unwrap()["services"][0]["instances"][0]["pid"].clone();

    // By hand: 503 with Retry-After from the proxy, shown in status, then served again.
    let out = p.cli(&[
        "maintenance",
        "on",
        "api",
        "--retry-after",
        "90s",
        "--reason",
        "disk swap",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("api: in maintenance"), "{}", text(&out));
    let answer = raw_get(&addr, "/work");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 90\r\n"),
        "{answer}"
    );
    let status = p.status().unwrap();
    let m = &status["services"][0]["maintenance"];
    assert_eq!(
        (m["retry_after_s"].as_u64(), m["reason"].as_str()),
        (Some(90), Some("disk swap")),
        "{status}"
    );
    assert_eq!(status["services"][0]["instances"][0]["pid"], pid);
    let table = text(&p.cli(&["status"]));
    assert!(table.contains("api is in maintenance"), "{table}");
    let out = p.cli(&["maintenance", "off", "api", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["changed"],
        serde_json::json!(["api"])
    );
    assert!(raw_get(&addr, "/work").starts_with("HTTP/1.1 200"));
    assert!(p.status().unwrap()["services"][0]["maintenance"].is_null());
    let out = p.cli(&["maintenance", "on", "nosuch"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no service \"nosuch\""),
        "{}",
        text(&out)
    );

    // A restore without a terminal needs --force, and says what it would do to api.
    let out = p.cli(&["backup", "restore", &id]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("api (using sessions) will answer 503 while it writes"),
        "{}",
        text(&out)
    );
    // With --force: api in maintenance during the restore, served again after it.
    redis_cli(port, &["SET", "k", "changed"]);
    let out = p.cli(&["backup", "restore", &id, "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(redis_cli(port, &["GET", "k"]), "v");
    assert!(raw_get(&addr, "/work").starts_with("HTTP/1.1 200"));
    let on = events_of(&p, "service.maintenance_on");
    let off = events_of(&p, "service.maintenance_off");
    assert_eq!((on.len(), off.len()), (2, 2), "{on:?} {off:?}");
    // Oldest first: the restore's pair comes second.
    assert!(
        on[1]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("restoring backup {id}")),
        "{on:?}"
    );
    assert!(on[1]["id"].as_i64() < off[1]["id"].as_i64());
    assert_eq!(
        p.status().unwrap()["services"][0]["instances"][0]["pid"],
        pid
    );
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The CLI against the daemon's remote API, with a token (no --config: only --host).
fn remote(url: &str, fingerprint: &str, token: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::bin())
        .args(args)
        .args(["--host", url, "--fingerprint", fingerprint])
        .env("TCF_TOKEN", token)
        .env_remove("TCF_CONFIG")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn token(p: &common::Platform, name: &str, role: &str) -> String {
    let out = p.cli(&["tokens", "create", name, "--role", role]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Backups run by the daemon, through the remote API with tokens and roles; the PostgreSQL
/// source needs a password, given as `${secret:pg_password}` and set on stdin; the password
/// reaches no event, no log and no output. The same JSON without a daemon afterwards.
#[test]
fn backups_through_the_remote_api_under_roles_with_a_password_from_a_secret() {
    let password = format!("pw-{}-{}", std::process::id(), common::free_port());
    let pg = tcf_testkit::start_postgres_with_password(common::free_port(), &password);
    let psql_bin = tcf_testkit::find_program("psql", &tcf_testkit::postgres_bin_dirs());
    let psql = |db: &str, sql: &str| -> String {
        let out = std::process::Command::new(&psql_bin)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-XAtc", sql])
            .env("PGPASSWORD", &password)
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {sql}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    psql("postgres", "CREATE DATABASE app");
    psql(
        "app",
        "CREATE TABLE t (id int primary key, v text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 100) g",
    );
    let listen = common::free_port();
    let mut p = common::Platform::new(&format!(
        r#"
[platform]
name = "remotebackup"

[daemon]
listen = "127.0.0.1:{listen}"

[backup]
repository = "repo"
retention = {{ keep_last = 1 }}

[backup.sources.main]
kind = "postgres"
url = "postgres://postgres@127.0.0.1:{}/"
password = "${{secret:pg_password}}"
databases = ["app"]
"#,
        pg.port
    ));

    // The secret does not exist yet: `config validate` and a backup say which one.
    let out = p.cli(&["config", "validate"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("backup source main refers to the secret pg_password"),
        "{}",
        text(&out)
    );
    let out = p.cli(&["backup", "create"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("pg_password"), "{}", text(&out));

    // Set on stdin, with no daemon running.
    let mut child = std::process::Command::new(common::bin())
        .args(["secrets", "set", "pg_password", "--config"])
        .arg(&p.config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = p.cli(&["config", "validate"]);
    assert!(out.status.success(), "{}", text(&out));

    p.up();
    let status = p.wait_for("the remote API", Duration::from_secs(30), |s| {
        s["api"]["fingerprint_sha256"].is_string()
    });
    let fingerprint = status["api"]["fingerprint_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("https://127.0.0.1:{listen}");
    let viewer = token(&p, "watcher", "viewer");
    let deployer = token(&p, "ci", "deployer");
    let admin = token(&p, "ops", "admin");

    // A viewer lists, and may not take a backup.
    let out = remote(
        &url,
        &fingerprint,
        &viewer,
        &["backup", "list", "--format", "json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    let out = remote(&url, &fingerprint, &viewer, &["backup", "create"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("403") && text(&out).contains("needs deployer"),
        "{}",
        text(&out)
    );

    // A deployer backs up, lists and verifies by a real restore into a scratch database.
    let out = remote(
        &url,
        &fingerprint,
        &deployer,
        &["backup", "create", "--format", "json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        created["sources"],
        serde_json::json!(["main"]),
        "{created:#}"
    );
    let out = remote(
        &url,
        &fingerprint,
        &deployer,
        &[
            "backup", "verify", &id, "--level", "restore", "--format", "json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let verified: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&verified["ok"], &verified["level"]),
        (&serde_json::json!(true), &serde_json::json!("restore")),
        "{verified:#}"
    );
    let out = remote(&url, &fingerprint, &deployer, &["backup", "list"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&id) && text(&out).contains("ok restore"),
        "{}",
        text(&out)
    );

    // Restoring is the admin's: a deployer gets 403, an admin restores.
    psql("app", "DELETE FROM t WHERE id > 10");
    let out = remote(
        &url,
        &fingerprint,
        &deployer,
        &["backup", "restore", &id, "--force"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("403") && text(&out).contains("needs admin"),
        "{}",
        text(&out)
    );
    assert_eq!(psql("app", "SELECT count(*) FROM t"), "10");
    // Without --force and without a terminal: refused, nothing restored.
    let out = remote(&url, &fingerprint, &admin, &["backup", "restore", &id]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--force"), "{}", text(&out));
    let out = remote(
        &url,
        &fingerprint,
        &admin,
        &["backup", "restore", &id, "--force", "--format", "json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let restored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(restored["recovery_point"].is_string(), "{restored:#}");
    assert_eq!(psql("app", "SELECT count(*) FROM t"), "100");
    assert_eq!(psql("app", "SELECT v FROM t WHERE id = 77"), "row 77");

    // Prune is the admin's too; a dry run removes nothing.
    let out = remote(
        &url,
        &fingerprint,
        &deployer,
        &["backup", "prune", "--dry-run"],
    );
    assert!(text(&out).contains("403"), "{}", text(&out));
    let out = remote(
        &url,
        &fingerprint,
        &admin,
        &["backup", "prune", "--dry-run", "--format", "json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let pruned: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        pruned["decisions"].as_array().unwrap().len(),
        2,
        "{pruned:#}"
    );

    // The events name the tokens; the password is in no event, log or output.
    let events = p.cli(&["events", "--limit", "500", "--format", "json"]);
    assert!(events.status.success(), "{}", text(&events));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&events.stdout).unwrap();
    let by = |kind: &str| -> Vec<String> {
        list.iter()
            .filter(|e| e["kind"] == kind)
            .map(|e| e["actor"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(by("backup.created"), ["ci"], "{list:#?}");
    assert_eq!(by("backup.verified"), ["ci"], "{list:#?}");
    assert_eq!(by("backup.restored"), ["ops"], "{list:#?}");
    let remote_list = remote(
        &url,
        &fingerprint,
        &viewer,
        &["backup", "list", "--format", "json"],
    );
    assert!(remote_list.status.success(), "{}", text(&remote_list));
    for (what, bytes) in [
        ("events", events.stdout.clone()),
        ("the daemon's log", std::fs::read(p.daemon_log()).unwrap()),
        ("the remote list", remote_list.stdout.clone()),
        (
            "the restore's output",
            [out.stdout.clone(), out.stderr.clone()].concat(),
        ),
    ] {
        assert!(!contains(&bytes, &password), "the password is in {what}");
    }

    // A reference to a secret that does not exist: the daemon's backup and a deploy that
    // takes a backup refuse, naming it (exit 2), as `config validate` does.
    let config_text = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(
        &p.config,
        config_text.replace("${secret:pg_password}", "${secret:pg_pasword}"),
    )
    .unwrap();
    for args in [
        &["backup", "create"][..],
        &["prod", "deploy", "v2", "--backup", "--force"][..],
        &["config", "validate"][..],
    ] {
        let out = p.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("backup source main refers to the secret pg_pasword"),
            "{args:?}: {}",
            text(&out)
        );
    }
    std::fs::write(&p.config, &config_text).unwrap();

    // Without a daemon the CLI runs the work itself: the same JSON, the secret still resolved.
    let out = p.cli(&["down"]);
    assert!(out.status.success(), "{}", text(&out));
    p.wait_daemon_exit(Duration::from_secs(30));
    let local_list = p.cli(&["backup", "list", "--format", "json"]);
    assert!(local_list.status.success(), "{}", text(&local_list));
    assert_eq!(
        String::from_utf8_lossy(&local_list.stdout),
        String::from_utf8_lossy(&remote_list.stdout)
    );
    let out = p.cli(&["backup", "create", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!contains(&[out.stdout, out.stderr].concat(), &password));
}
