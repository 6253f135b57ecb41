//! Dependency probes against real PostgreSQL and Redis servers started by the test
//! (`scripts/test` installs them from Debian's packages). A missing server fails the test
//! with what to install: it never passes without having run.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tcf_config::{Dependency, DependencyKind};
use tcf_daemon::probe_dependency;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process that is stopped by pid when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    dirs.reverse(); // newest major version first
    dirs
}

fn dependency(kind: DependencyKind, address: String) -> Dependency {
    Dependency {
        name: "dep".into(),
        kind,
        address: Some(address),
        url: None,
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
    }
}

async fn eventually_ok(dep: &Dependency) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let r = probe_dependency(dep).await;
        if r.is_ok() || start.elapsed() > Duration::from_secs(30) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn redis_probe_needs_a_real_redis() {
    let redis = find_program("redis-server", &[]);
    let port = free_port();
    let _server = Server(
        Command::new(redis)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let dep = dependency(DependencyKind::Redis, format!("127.0.0.1:{port}"));
    eventually_ok(&dep).await.unwrap();

    // Something that is not Redis on the port fails the probe.
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = other.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = other.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let err = probe_dependency(&dependency(DependencyKind::Redis, addr))
        .await
        .unwrap_err();
    assert!(err.contains("did not answer PING like Redis"), "{err}");
}

#[tokio::test]
async fn postgres_probe_needs_a_real_postgres() {
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
    init.args(["-D"])
        .arg(&pgdata)
        .args(["-A", "trust", "-U", "postgres"])
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
            "-k",
        ])
        .arg(data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    as_user(&mut run);
    let _server = Server(run.spawn().unwrap());
    eventually_ok(&dependency(
        DependencyKind::Postgres,
        format!("127.0.0.1:{port}"),
    ))
    .await
    .unwrap();

    // A port that accepts and hangs up is not PostgreSQL.
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = other.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = other.accept().await {
            drop(s);
        }
    });
    let err = probe_dependency(&dependency(DependencyKind::Postgres, addr))
        .await
        .unwrap_err();
    assert!(err.contains("PostgreSQL"), "{err}");
}
