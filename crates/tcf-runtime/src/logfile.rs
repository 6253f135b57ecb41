//! Per-instance log files with a size cap: past the cap the file is renamed to `NAME.1`
//! (replacing the previous one) and a new file is started, so a chatty instance never fills the disk.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An instance's log. Its file is written by a thread of its own: the tasks that copy an
/// instance's output only hand over bytes, so a slow or full disk never stalls a runtime
/// thread. The thread ends once every handle is dropped (the instance is gone).
#[derive(Clone)]
pub struct SharedLog {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl SharedLog {
    /// Queue bytes for the file (waits while 64 chunks are queued: backpressure, not loss).
    pub async fn write(&self, bytes: Vec<u8>) {
        let _ = self.tx.send(bytes).await;
    }
}

/// Open the log of the instance `spec` describes, as every runtime does before starting it.
pub fn open_instance_log(spec: &crate::InstanceSpec) -> Result<SharedLog, crate::RuntimeError> {
    let log_err = |source| crate::RuntimeError::Log {
        path: spec.log_path.clone(),
        source,
    };
    let mut log = CappedLog::open(&spec.log_path, spec.log_max_size).map_err(log_err)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let path = spec.log_path.clone();
    std::thread::Builder::new()
        .name(format!("log {}", spec.id))
        .spawn(move || {
            let mut failures = RateLimited::new(Duration::from_secs(10));
            let mut stamper = Stamper::default();
            while let Some(bytes) = rx.blocking_recv() {
                let stamped = stamper.stamp(&bytes, std::time::SystemTime::now());
                if let Err(e) = log.write(&stamped) {
                    failures.hit(|repeated| {
                        tracing::warn!(
                            "cannot write instance log {}: {e}{}",
                            path.display(),
                            if repeated > 0 {
                                format!(" ({repeated} more failures since the last warning)")
                            } else {
                                String::new()
                            }
                        )
                    });
                }
            }
        })
        .map_err(log_err)?;
    Ok(SharedLog { tx })
}

/// The log shim's work: copy `input` (an instance's stdout and stderr, one pipe) into the
/// capped log at `path`, each line stamped, until every writer has closed the pipe (the
/// instance and all it spawned are gone). It runs in a process of its own
/// (`tcf-platform __log-shim`), so an instance's output is captured, and its writes never fail,
/// whether or not a daemon runs.
pub fn copy_to_log(mut input: impl std::io::Read, path: &Path, cap: u64) -> std::io::Result<()> {
    let mut log = CappedLog::open(path, cap)?;
    let mut stamper = Stamper::default();
    let mut failures = RateLimited::new(Duration::from_secs(10));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let stamped = stamper.stamp(&buf[..n], std::time::SystemTime::now());
        if let Err(e) = log.write(&stamped) {
            // Keep reading whatever happens: a shim that stopped would break the instance's
            // pipe. Its stderr may be gone too (the daemon's), so a failed warning is ignored.
            failures.hit(|repeated| {
                let _ = writeln!(
                    std::io::stderr(),
                    "tcf-platform log shim: cannot write {}: {e}{}",
                    path.display(),
                    if repeated > 0 {
                        format!(" ({repeated} more failures since the last warning)")
                    } else {
                        String::new()
                    }
                );
            });
        }
    }
}

/// The length of the time stamp every log line starts with: `2026-11-25T16:00:00.123Z `.
pub const STAMP_LEN: usize = 25;

/// Puts the time a line was written in front of it (`logs --timestamps` shows it; plain
/// `logs` strips it). Chunks may end mid-line: only a line's first byte gets a stamp.
#[derive(Default)]
pub struct Stamper {
    mid_line: bool,
}

impl Stamper {
    pub fn stamp(&mut self, bytes: &[u8], now: std::time::SystemTime) -> Vec<u8> {
        let stamp = format!("{} ", humantime::format_rfc3339_millis(now));
        let mut out = Vec::with_capacity(bytes.len() + stamp.len());
        for &b in bytes {
            if !self.mid_line {
                out.extend_from_slice(stamp.as_bytes());
                self.mid_line = true;
            }
            out.push(b);
            if b == b'\n' {
                self.mid_line = false;
            }
        }
        out
    }
}

/// A log line without its time stamp (lines written before stamps existed pass unchanged).
pub fn strip_stamp(line: &str) -> &str {
    let b = line.as_bytes();
    let stamped = b.len() >= STAMP_LEN
        && b[4] == b'-'
        && b[10] == b'T'
        && b[23] == b'Z'
        && b[24] == b' '
        && b[..4].iter().all(u8::is_ascii_digit);
    if stamped {
        &line[STAMP_LEN..]
    } else {
        line
    }
}

/// A warning that can repeat in a loop (a full disk fails every write): the first is logged at
/// once, then at most one per `every`, with the count of those held back in between.
pub struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl RateLimited {
    pub fn new(every: Duration) -> RateLimited {
        RateLimited {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// One more occurrence; `log` runs (with the number held back since the last line) only
    /// when a line is due. Returns whether it ran.
    pub fn hit(&mut self, log: impl FnOnce(u64)) -> bool {
        self.hit_at(Instant::now(), log)
    }

    fn hit_at(&mut self, now: Instant, log: impl FnOnce(u64)) -> bool {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.held_back += 1;
            return false;
        }
        log(self.held_back);
        self.held_back = 0;
        self.last = Some(now);
        true
    }
}

pub struct CappedLog {
    path: PathBuf,
    file: File,
    written: u64,
    cap: u64,
}

impl CappedLog {
    pub fn open(path: &Path, cap: u64) -> std::io::Result<CappedLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(CappedLog {
            path: path.to_path_buf(),
            file,
            written,
            cap: cap.max(1024),
        })
    }

    /// Append bytes; rotates first when they would push the file past its cap.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.written + bytes.len() as u64 > self.cap && self.written > 0 {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            std::fs::rename(&self.path, &rotated)?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.written = 0;
        }
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_gets_one_stamp_across_chunks() {
        let mut s = Stamper::default();
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_764_086_400_123);
        let mut out = s.stamp(b"one\ntw", t);
        out.extend(s.stamp(b"o\nthree\n", t));
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].starts_with("2025-11-25T16:00:00.123Z two"),
            "{text}"
        );
        assert_eq!(
            lines.iter().map(|l| strip_stamp(l)).collect::<Vec<_>>(),
            ["one", "two", "three"]
        );
        assert_eq!(strip_stamp("plain old line"), "plain old line");
    }

    #[test]
    fn repeated_warnings_are_one_line_per_interval_with_a_count() {
        let mut r = RateLimited::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let mut lines = Vec::new();
        for i in 0..100_000u64 {
            // 100,000 failures over 12 s.
            let now = t0 + Duration::from_micros(i * 120);
            r.hit_at(now, |held| lines.push(held));
        }
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], 0);
        assert!(lines[1] > 80_000, "{lines:?}");
    }

    #[test]
    fn the_shim_copies_until_the_pipe_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/a.log");
        copy_to_log(&b"one\ntwo"[..], &path, 1 << 20).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().map(strip_stamp).collect();
        assert_eq!(lines, ["one", "two"]);
        assert!(text.len() > 2 * STAMP_LEN, "{text}");
    }

    #[test]
    fn rotates_past_the_cap_and_keeps_one_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut log = CappedLog::open(&path, 1024).unwrap();
        let line = [b'x'; 100];
        for _ in 0..25 {
            log.write(&line).unwrap();
        }
        let cur = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(dir.path().join("a.log.1")).unwrap().len();
        assert!(cur <= 1024 && old <= 1024, "cur {cur} old {old}");
        assert_eq!((cur + old) % 100, 0);
    }
}
