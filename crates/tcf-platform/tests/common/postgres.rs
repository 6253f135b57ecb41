//! A real PostgreSQL server for a test: initdb in a temporary directory, `postgres` on a free
//! loopback port (as the `postgres` user when the tests run as root: it refuses root), stopped by
//! pid when dropped or when the test stops it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.pop()
        .expect("PostgreSQL is not installed (scripts/test installs it with apt-get)")
}

impl Postgres {
    pub fn start() -> Postgres {
        use std::os::unix::process::CommandExt;
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("pg");
        std::fs::create_dir(&data).unwrap();
        let user = nix::unistd::geteuid().is_root().then(|| {
            let user = nix::unistd::User::from_name("postgres")
                .unwrap()
                .expect("running as root needs the postgres user (apt-get install postgresql)");
            for p in [dir.path(), data.as_path()] {
                nix::unistd::chown(p, Some(user.uid), Some(user.gid)).unwrap();
            }
            user
        });
        let as_user = |cmd: &mut Command| {
            if let Some(u) = &user {
                cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
            }
        };
        let mut init = Command::new(bin.join("initdb"));
        init.arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_user(&mut init);
        assert!(init.status().unwrap().success(), "initdb failed");
        let port = super::free_port();
        let mut run = Command::new(bin.join("postgres"));
        run.arg("-D")
            .arg(&data)
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-k",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_user(&mut run);
        let child = run.spawn().unwrap();
        let pg = Postgres {
            child: Some(child),
            port,
            _dir: dir,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "postgres did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        pg
    }

    /// Stop it now (SIGKILL by pid) and wait until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
