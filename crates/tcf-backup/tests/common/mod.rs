//! Real PostgreSQL and Redis servers on loopback, started by the tests (scripts/test installs
//! them from Debian's packages) and stopped by pid when a test ends, however it ends. A missing
//! server fails the test with what to install: it never passes without having run.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tcf_backup::postgres::PgConn;
use tcf_backup::redis::RedisConn;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process stopped by pid when dropped.
pub struct Server {
    child: Child,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_program(name: &str, extra_dirs: &[PathBuf]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    extra_dirs
        .iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: install it (scripts/test installs redis-server and postgresql with apt-get)"))
}

fn postgres_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.reverse();
    dirs
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} did not come up within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A fresh PostgreSQL cluster (trust authentication, superuser `postgres`) on a free port.
pub fn start_postgres() -> (Server, PgConn) {
    let dirs = postgres_bin_dirs();
    let initdb = find_program("initdb", &dirs);
    let postgres = find_program("postgres", &dirs);
    let data = tempfile::tempdir().unwrap();
    let pgdata = data.path().join("pg");
    std::fs::create_dir(&pgdata).unwrap();
    // PostgreSQL refuses to run as root: run it as the postgres user the package creates.
    let as_user = |cmd: &mut Command| {
        use std::os::unix::process::CommandExt;
        if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres").unwrap().expect(
                "running as root needs the postgres user (apt-get install postgresql creates it)",
            );
            nix::unistd::chown(data.path(), Some(user.uid), Some(user.gid)).unwrap();
            nix::unistd::chown(&pgdata, Some(user.uid), Some(user.gid)).unwrap();
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
    };
    let mut init = Command::new(initdb);
    init.arg("-D")
        .arg(&pgdata)
        .args([
            "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale", "C",
        ])
        .stdout(Stdio::null());
    as_user(&mut init);
    assert!(init.status().unwrap().success(), "initdb failed");
    let port = free_port();
    let mut run = Command::new(postgres);
    run.arg("-D")
        .arg(&pgdata)
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-k",
        ])
        .arg(data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    as_user(&mut run);
    let server = Server {
        child: run.spawn().unwrap(),
        _dir: Some(data),
    };
    let conn = PgConn {
        host: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        password: None,
    };
    wait_for("PostgreSQL", || conn.connect("postgres").is_ok());
    (server, conn)
}

/// A Redis server on a free port, with no persistence of its own.
pub fn start_redis() -> (Server, RedisConn) {
    let redis = find_program("redis-server", &[]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(redis)
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
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        _dir: Some(dir),
    };
    let conn = RedisConn {
        host: "127.0.0.1".into(),
        port,
        password: None,
    };
    wait_for("Redis", || conn.connect().is_ok());
    (server, conn)
}

/// Flip one byte in the middle of a file.
pub fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x55;
    std::fs::write(path, bytes).unwrap();
}

pub fn truncate(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len / 2).unwrap();
}
