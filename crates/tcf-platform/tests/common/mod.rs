//! Helpers for tests that run the real binary: a platform in a temporary directory built from
//! the example config, a daemon process that is always stopped by pid, and a raw HTTP client.

#![allow(dead_code)]

pub mod docker;
pub mod load;
pub mod pebble;
pub mod sequence;
pub mod swarm;
pub mod webdriver;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("tcf-platform")
}

/// The demo service must sit beside tcf-platform, where the process runtime looks for it.
pub fn require_demo() {
    let demo = bin().with_file_name("tcf-demo");
    assert!(
        demo.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (it is a binary of the tcf-platform package)",
        demo.display()
    );
}

/// A free port for a public address, in 10000-19999: below the daemons' instance ports
/// (20000-31999) and the kernel's ephemeral range (32768 and up), so a test's public port
/// never races an instance's or an outgoing connection's.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let region = (std::process::id() % 40) * 250;
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = 10000 + (region + n) % 10000;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
}

/// The example platform with its public ports moved to free ones, so tests never collide
/// with each other or with a platform a developer is running.
pub fn example_config() -> String {
    example_config_at("examples/tcf/tcf-platform.toml")
}

/// An example config from the repository, public ports moved to free ones.
pub fn example_config_at(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative);
    let mut text = std::fs::read_to_string(path).unwrap();
    for port in 3000..=3005 {
        text = text.replace(
            &format!("127.0.0.1:{port}\""),
            &format!("127.0.0.1:{}\"", free_port()),
        );
    }
    text
}

pub struct Platform {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub daemon: Option<Child>,
    /// Every instance pid seen, to prove none is left behind.
    pub seen_pids: std::collections::BTreeSet<u32>,
}

impl Platform {
    pub fn new(config_text: &str) -> Platform {
        require_demo();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tcf-platform.toml");
        std::fs::write(&config, config_text).unwrap();
        Platform {
            dir,
            config,
            daemon: None,
            seen_pids: Default::default(),
        }
    }

    pub fn daemon_log(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    /// Start `tcf-platform up` in the background, its output in daemon.log.
    pub fn up(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.daemon_log())
            .unwrap();
        let child = Command::new(bin())
            .args(["up", "--config"])
            .arg(&self.config)
            .env_remove("TCF_ENV")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env_remove("TCF_ENV")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn status(&mut self) -> Option<Value> {
        let out = self.cli(&["status", "--format", "json"]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        for svc in v["services"].as_array()? {
            for i in svc["instances"].as_array()? {
                if let Some(pid) = i["pid"].as_u64() {
                    self.seen_pids.insert(pid as u32);
                }
            }
        }
        Some(v)
    }

    /// Poll status until `ok` holds; panics with the last status and the daemon's log otherwise.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < timeout {
            if let Some(s) = self.status() {
                if ok(&s) {
                    return s;
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "timed out waiting for {what}; last status: {:#?}\ndaemon log:\n{}",
            last,
            std::fs::read_to_string(self.daemon_log()).unwrap_or_default()
        );
    }

    /// SIGKILL the daemon (no chance to clean up) and wait until it is gone.
    pub fn kill_daemon(&mut self) {
        let daemon = self.daemon.as_ref().expect("a running daemon").id();
        kill9(daemon);
        assert_eq!(self.wait_daemon_exit(Duration::from_secs(10)), Some(-1));
    }

    /// Wait for the daemon process to exit; returns its exit code.
    pub fn wait_daemon_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.daemon.as_mut()?;
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = child.try_wait().unwrap() {
                self.daemon = None;
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// Poll `ok` until it holds; panics naming `what` after `timeout`. Tests wait for conditions
/// with this rather than sleeping and hoping.
pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL one process.
pub fn kill9(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

pub fn all_healthy(s: &Value) -> bool {
    s["services"].as_array().is_some_and(|svcs| {
        !svcs.is_empty()
            && svcs.iter().all(|svc| {
                svc["healthy"] == true
                    && svc["instances"]
                        .as_array()
                        .is_some_and(|is| is.iter().all(|i| i["health"] == "healthy"))
            })
    })
}

/// Whether a process is alive (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        // A failed test must not leave processes behind: kill the daemon and every instance by pid.
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in &self.seen_pids {
            if alive(*pid) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // Instances outlive a killed daemon, and one started after the test last looked (a
        // deploy's new colour) is in no status the test read: every process working in this
        // platform's directory is one of its instances.
        for pid in processes_working_in(self.dir.path()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Pids of the processes whose working directory is `dir` or below it.
pub fn processes_working_in(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

pub use tcf_testkit::http_get;
