//! Redis: the RDB is fetched the way a replica gets it (`redis-cli --rdb`: the server makes a
//! fresh snapshot for it, and the tool's exit status says whether it arrived whole); key counts
//! per database are read before and after. Verify and restore load the RDB into a throwaway
//! `redis-server` on a free loopback port; restore then copies every key (DUMP/RESTORE with its
//! TTL) into the live server after flushing it.

use crate::error::{BackupError, IoContext, Result};
use crate::tool;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct RedisConn {
    pub host: String,
    pub port: u16,
    pub password: Option<String>,
}

/// Never the password: settings may be logged.
impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("password", &self.password.as_ref().map(|_| "••••••"))
            .finish()
    }
}

impl RedisConn {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn err(&self, message: impl Into<String>) -> BackupError {
        BackupError::Redis {
            address: self.address(),
            message: message.into(),
        }
    }

    pub fn connect(&self) -> Result<Resp> {
        let stream = TcpStream::connect(self.address())
            .map_err(|e| self.err(format!("cannot connect: {e}")))?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
        let mut resp = Resp {
            reader: BufReader::new(stream.try_clone().map_err(|e| self.err(e.to_string()))?),
            writer: stream,
            conn: self.clone(),
        };
        if let Some(p) = &self.password {
            resp.call(&[b"AUTH", p.as_bytes()])?;
        }
        Ok(resp)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Value>),
}

/// A minimal RESP2 client: enough for INFO, SCAN, DUMP, PTTL, RESTORE and FLUSHALL.
pub struct Resp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    conn: RedisConn,
}

impl Resp {
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Value> {
        let mut msg = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            msg.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            msg.extend_from_slice(a);
            msg.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&msg).map_err(|e| {
            self.conn
                .err(format!("sending {}: {e}", String::from_utf8_lossy(args[0])))
        })?;
        self.read_value().map_err(|e| {
            self.conn
                .err(format!("{}: {e}", String::from_utf8_lossy(args[0])))
        })
    }

    /// Send every command, then read every answer (one round trip). An error answer fails the
    /// whole batch, naming its command.
    pub fn pipeline(&mut self, commands: &[Vec<&[u8]>]) -> Result<Vec<Value>> {
        let mut msg = Vec::new();
        for args in commands {
            msg.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                msg.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                msg.extend_from_slice(a);
                msg.extend_from_slice(b"\r\n");
            }
        }
        self.writer.write_all(&msg).map_err(|e| {
            self.conn
                .err(format!("sending {} commands: {e}", commands.len()))
        })?;
        let mut answers = Vec::with_capacity(commands.len());
        let mut first_error = None;
        for args in commands {
            match self.read_value() {
                Ok(v) => answers.push(v),
                Err(e) => {
                    // Keep reading so the connection stays in step, then report the first.
                    first_error.get_or_insert(format!("{}: {e}", String::from_utf8_lossy(args[0])));
                    answers.push(Value::Bulk(None));
                }
            }
        }
        match first_error {
            Some(e) => Err(self.conn.err(e)),
            None => Ok(answers),
        }
    }

    fn read_value(&mut self) -> std::result::Result<Value, String> {
        let mut line = Vec::new();
        self.reader
            .read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?;
        if line.len() < 3 || !line.ends_with(b"\r\n") {
            return Err("the connection closed or the answer is not RESP".into());
        }
        let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        let num = || {
            text.parse::<i64>()
                .map_err(|_| format!("bad length {text:?}"))
        };
        match line[0] {
            b'+' => Ok(Value::Simple(text)),
            b'-' => Err(text),
            b':' => Ok(Value::Int(num()?)),
            b'$' => {
                let n = num()?;
                if n < 0 {
                    return Ok(Value::Bulk(None));
                }
                let mut buf = vec![0u8; n as usize + 2];
                self.reader
                    .read_exact(&mut buf)
                    .map_err(|e| e.to_string())?;
                buf.truncate(n as usize);
                Ok(Value::Bulk(Some(buf)))
            }
            b'*' => {
                let n = num()?;
                let mut items = Vec::new();
                for _ in 0..n.max(0) {
                    items.push(self.read_value()?);
                }
                Ok(Value::Array(items))
            }
            _ => Err(format!("unexpected answer {text:?}")),
        }
    }

    fn info(&mut self, section: &str) -> Result<String> {
        match self.call(&[b"INFO", section.as_bytes()])? {
            Value::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            other => Err(self.conn.err(format!("INFO answered {other:?}"))),
        }
    }

    /// Keys per logical database, from `INFO keyspace` (`db0` → 42); empty databases are absent.
    pub fn keyspace(&mut self) -> Result<BTreeMap<String, u64>> {
        let info = self.info("keyspace")?;
        Ok(info
            .lines()
            .filter_map(|l| {
                let (db, rest) = l.split_once(':')?;
                let keys = rest.split(',').find_map(|kv| kv.strip_prefix("keys="))?;
                Some((db.to_string(), keys.parse().ok()?))
            })
            .collect())
    }

    pub fn server_version(&mut self) -> Result<String> {
        let info = self.info("server")?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_string())
    }

    fn loading(&mut self) -> Result<bool> {
        Ok(self
            .info("persistence")?
            .lines()
            .any(|l| l.trim() == "loading:1"))
    }
}

fn redis_cli() -> Result<PathBuf> {
    tool::on_path("redis-cli").ok_or_else(|| {
        BackupError::ToolMissing(
            "redis-cli is not installed\nhint: apt-get install redis-tools".into(),
        )
    })
}

/// `redis-cli --version`.
pub fn tool_version() -> Result<String> {
    tool::output(
        Command::new(redis_cli()?).arg("--version"),
        "redis-cli",
        "--version",
    )
}

/// Stream a fresh RDB snapshot into `out` (`redis-cli --rdb -`: the server snapshots for it
/// as for a replica; its exit status says whether the transfer finished). Returns the key
/// counts if they were the same before and after, and the server's version.
pub fn fetch_rdb(
    conn: &RedisConn,
    out: &mut dyn Write,
    write_context: &str,
) -> Result<(Option<BTreeMap<String, u64>>, String)> {
    let mut client = conn.connect()?;
    let version = client.server_version()?;
    let before = client.keyspace()?;
    let mut cmd = Command::new(redis_cli()?);
    cmd.args(["-h", &conn.host, "-p", &conn.port.to_string(), "--rdb", "-"]);
    match &conn.password {
        // redis-cli reads the password from here: never in argv.
        Some(p) => cmd.env("REDISCLI_AUTH", p),
        None => cmd.env_remove("REDISCLI_AUTH"),
    };
    tool::stream_from(
        &mut cmd,
        "redis-cli --rdb",
        &format!("Redis at {}", conn.address()),
        out,
        write_context,
    )?;
    let after = client.keyspace()?;
    Ok(((before == after).then_some(after), version))
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .context(|| "finding a free loopback port".to_string())
}

/// A `redis-server` of our own on loopback, loaded from an RDB, stopped by pid when dropped.
pub struct Throwaway {
    child: Child,
    _dir: tempfile::TempDir,
    pub conn: RedisConn,
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Throwaway {
    /// Start a server whose data is the RDB read from `rdb` and wait until it has loaded it.
    pub fn start(rdb: &mut dyn Read, scratch_parent: &Path) -> Result<Throwaway> {
        let server = tool::on_path("redis-server").ok_or_else(|| {
            BackupError::ToolMissing("verifying or restoring a Redis backup needs redis-server\nhint: apt-get install redis-server".into())
        })?;
        let dir = tempfile::Builder::new()
            .prefix(".tmp-redis-")
            .tempdir_in(scratch_parent)
            .context(|| {
                format!(
                    "creating a scratch directory in {}",
                    scratch_parent.display()
                )
            })?;
        let path = dir.path().join("dump.rdb");
        let mut file =
            std::fs::File::create(&path).context(|| format!("creating {}", path.display()))?;
        std::io::copy(rdb, &mut file).context(|| format!("writing {}", path.display()))?;
        drop(file);
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("redis.log"))
            .context(|| "creating the scratch redis log".to_string())?;
        let child = Command::new(&server)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dbfilename",
                "dump.rdb",
                "--dir",
            ])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context(|| "redis log".to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                BackupError::ToolMissing(format!("cannot run {}: {e}", server.display()))
            })?;
        let mut me = Throwaway {
            child,
            conn: RedisConn {
                host: "127.0.0.1".into(),
                port,
                password: None,
            },
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = me.child.try_wait() {
                let log =
                    std::fs::read_to_string(me._dir.path().join("redis.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                if log.contains("Can't handle RDB format version") {
                    // Not damage: this redis-server is older than the one the RDB came from.
                    return Err(BackupError::ToolMissing(format!(
                        "the local redis-server ({}) cannot read this RDB: it came from a newer Redis\nhint: install a redis-server at least as new as the backed-up server",
                        server.display()
                    )));
                }
                return Err(BackupError::ToolFailed {
                    tool: "redis-server".into(),
                    what: "loading the backed-up RDB".into(),
                    status: status.to_string(),
                    stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                });
            }
            if let Ok(mut c) = me.conn.connect() {
                if let Ok(false) = c.loading() {
                    return Ok(me);
                }
            }
            if Instant::now() > deadline {
                return Err(me
                    .conn
                    .err("the scratch redis-server did not load the RDB within 120 s"));
            }
            // Loading a large RDB takes about a second: a short poll keeps the wait close to it.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Compare key counts; each difference is one line.
pub fn compare_keys(
    expected: &BTreeMap<String, u64>,
    actual: &BTreeMap<String, u64>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for db in expected
        .keys()
        .chain(actual.keys().filter(|d| !expected.contains_key(*d)))
    {
        let want = expected.get(db).copied().unwrap_or(0);
        let got = actual.get(db).copied().unwrap_or(0);
        if want != got {
            problems.push(format!(
                "{db} has {got} keys after the restore, {want} when backed up"
            ));
        }
    }
    problems
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

/// Replace everything in `target` with the data of `source` (a throwaway server): FLUSHALL,
/// then every key with DUMP, PTTL and RESTORE. Returns the number of keys copied.
pub fn copy_all(source: &RedisConn, target: &RedisConn) -> Result<u64> {
    let mut from = source.connect()?;
    let mut to = target.connect()?;
    let dbs = from.keyspace()?;
    to.call(&[b"FLUSHALL"])?;
    let mut copied = 0;
    for db in dbs.keys() {
        let index = db.trim_start_matches("db");
        from.call(&[b"SELECT", index.as_bytes()])?;
        to.call(&[b"SELECT", index.as_bytes()])?;
        let mut cursor = b"0".to_vec();
        loop {
            let Value::Array(parts) = from.call(&[b"SCAN", &cursor, b"COUNT", b"1000"])? else {
                return Err(source.err("SCAN answered something unexpected"));
            };
            let (Some(Value::Bulk(Some(next))), Some(Value::Array(keys))) =
                (parts.first(), parts.get(1))
            else {
                return Err(source.err("SCAN answered something unexpected"));
            };
            // One round trip per batch and direction: pipelined DUMP and PTTL, then RESTORE.
            let keys: Vec<&[u8]> = keys
                .iter()
                .filter_map(|k| match k {
                    Value::Bulk(Some(k)) => Some(k.as_slice()),
                    _ => None,
                })
                .collect();
            let asks: Vec<Vec<&[u8]>> = keys
                .iter()
                .flat_map(|k| [vec![b"DUMP".as_slice(), k], vec![b"PTTL".as_slice(), k]])
                .collect();
            let answers = from.pipeline(&asks)?;
            // (key, TTL in ms or 0 for none, payload); a key that expired between SCAN and DUMP
            // answers nil and has nothing to copy.
            let restores: Vec<(&[u8], String, &[u8])> = keys
                .iter()
                .zip(answers.chunks(2))
                .filter_map(|(key, pair)| match pair {
                    [Value::Bulk(Some(payload)), ttl] => {
                        let ttl = as_int(ttl).filter(|t| *t > 0).unwrap_or(0);
                        Some((*key, ttl.to_string(), payload.as_slice()))
                    }
                    _ => None,
                })
                .collect();
            let puts: Vec<Vec<&[u8]>> = restores
                .iter()
                .map(|(key, ttl, payload)| {
                    vec![
                        b"RESTORE".as_slice(),
                        key,
                        ttl.as_bytes(),
                        payload,
                        b"REPLACE",
                    ]
                })
                .collect();
            to.pipeline(&puts)?;
            copied += puts.len() as u64;
            cursor = next.clone();
            if cursor == b"0" {
                break;
            }
        }
    }
    Ok(copied)
}
