//! What the integration tests of several crates share: free loopback ports, and real
//! PostgreSQL and Redis servers (scripts/test installs them from Debian's packages) that a test
//! starts and that are stopped by pid when it ends, however it ends. A missing server fails the
//! test with what to install: a test never passes without having run.
//!
//! A dev-dependency only; panics are the point here (a test that cannot set up must fail).

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A server process, stopped by pid when dropped (SIGTERM, then SIGKILL after 10 s), with the
/// temporary directory its files live in.
pub struct ServerProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl ServerProcess {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stop it now with SIGKILL (a crash, as a test wants it) and wait until it is gone.
    pub fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(&child, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `name` in `extra_dirs` first, then on PATH; a missing one fails the test with what to install.
pub fn find_program(name: &str, extra_dirs: &[PathBuf]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    extra_dirs
        .iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: install it (scripts/test installs redis-server and postgresql with apt-get)")
        })
}

/// PostgreSQL's bin directories, newest major version first.
pub fn postgres_bin_dirs() -> Vec<PathBuf> {
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

/// Poll `ready` every 100 ms for up to 60 s; fail the test naming `what` if it never is.
pub fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} did not come up within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A fresh PostgreSQL cluster on a free loopback port: trust authentication, superuser
/// `postgres`, UTF-8, fsync off (a test's data need not survive a power cut). When the tests run
/// as root it runs as the `postgres` user the package creates, since PostgreSQL refuses root.
/// Returns once the port accepts connections.
pub fn start_postgres() -> ServerProcess {
    start_postgres_on(free_port())
}

/// [`start_postgres`] on a port the test chose (the platform's tests keep their servers below
/// the daemon's instance ports and the ephemeral range).
pub fn start_postgres_on(port: u16) -> ServerProcess {
    start_postgres_with(port, None)
}

/// [`start_postgres_on`] that requires a password (scram-sha-256, on TCP and the socket
/// alike) of the superuser `postgres`: for tests of how a password reaches the tools.
pub fn start_postgres_with_password(port: u16, password: &str) -> ServerProcess {
    start_postgres_with(port, Some(password))
}

fn start_postgres_with(port: u16, password: Option<&str>) -> ServerProcess {
    let dirs = postgres_bin_dirs();
    let initdb = find_program("initdb", &dirs);
    let postgres = find_program("postgres", &dirs);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pgdata = dir.path().join("pg");
    std::fs::create_dir(&pgdata).expect("the data directory");
    let user = nix::unistd::geteuid().is_root().then(|| {
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .expect(
                "running as root needs the postgres user (apt-get install postgresql creates it)",
            );
        for p in [dir.path(), pgdata.as_path()] {
            nix::unistd::chown(p, Some(user.uid), Some(user.gid)).expect("chown to postgres");
        }
        user
    });
    let as_user = |cmd: &mut Command| {
        if let Some(u) = &user {
            cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
        }
    };
    let mut init = Command::new(initdb);
    init.arg("-D")
        .arg(&pgdata)
        .args(["-U", "postgres", "-E", "UTF8", "--locale", "C"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // The password reaches initdb in a file (never argv), removed once the cluster exists.
    let pwfile = dir.path().join("pwfile");
    match password {
        None => {
            init.args(["-A", "trust"]);
        }
        Some(pw) => {
            std::fs::write(&pwfile, format!("{pw}\n")).expect("the password file");
            if let Some(u) = &user {
                nix::unistd::chown(&pwfile, Some(u.uid), Some(u.gid)).expect("chown to postgres");
            }
            init.args(["-A", "scram-sha-256"])
                .arg(format!("--pwfile={}", pwfile.display()));
        }
    }
    as_user(&mut init);
    let initialized = init.status().expect("initdb runs").success();
    let _ = std::fs::remove_file(&pwfile);
    assert!(initialized, "initdb failed");
    let mut run = Command::new(postgres);
    run.arg("-D")
        .arg(&pgdata)
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-k"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    as_user(&mut run);
    let server = ServerProcess {
        child: Some(run.spawn().expect("postgres starts")),
        dir,
        port,
    };
    wait_for("PostgreSQL", || accepts(port));
    server
}

/// A Redis server on a free loopback port, with no persistence of its own; its working
/// directory (where an RDB would go) is the server's `dir()`. Returns once it accepts.
pub fn start_redis() -> ServerProcess {
    start_redis_on(free_port())
}

/// [`start_redis`] on a port the test chose.
pub fn start_redis_on(port: u16) -> ServerProcess {
    let redis = find_program("redis-server", &[]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let child = Command::new(redis)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let server = ServerProcess {
        child: Some(child),
        dir,
        port,
    };
    wait_for("Redis", || accepts(port));
    server
}

/// A CA and a certificate it signed for 127.0.0.1 and localhost (EC P-256, valid two days),
/// made with the openssl command line in `dir`: (CA, certificate, key) as PEM files.
pub fn openssl_ca_and_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (Debian package openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-days",
            "2",
            "-subj",
            "/CN=tcf test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write leaf.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// An HTTP/1.1 answer as the client saw it on the wire.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    /// The status line and header fields, without the blank line.
    pub head: String,
    pub body: String,
}

impl HttpAnswer {
    /// The first header field called `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`), written by hand so a test
/// sees exactly what went over the wire: `headers` are sent as given, a POST body as a form.
/// Blocking, with a 30 s read timeout.
pub fn http_exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<HttpAnswer> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if method != "GET" || !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if method == "POST" {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP answer: {head:?}"),
            )
        })?;
    Ok(HttpAnswer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// `GET path` with no extra header: [`http_exchange`]'s status and body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_exchange(addr, "GET", path, &[], "").map(|a| (a.status, a.body))
}
