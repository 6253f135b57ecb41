//! A service's access log: one JSON line per request (docs/running.md, "Access log").
//!
//! The proxy worker formats a line into a buffer taken from a free list and pushes it onto a
//! bounded lock-free queue; a thread of its own writes the queue to the file. A worker never
//! waits for the disk: when the queue is full the line is dropped and counted, and the writer
//! says so in the file ("N lines dropped"). Off, the log costs a check of an empty `Option`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Lines queued for the writer before new ones are dropped.
pub const DEFAULT_QUEUE: usize = 8192;
/// How often the writer looks at the queue: lines are written in batches, and the workers
/// never wake it (a wake-up is a system call on the hot path).
const WRITER_POLL: Duration = Duration::from_millis(20);
/// A buffer grown past this by an unusual line is not kept for reuse.
const KEEP_BUFFER: usize = 16 * 1024;
/// Written to the file in chunks of about this.
const WRITE_CHUNK: usize = 64 * 1024;

/// Where the writer thread puts its bytes (the daemon hands it a capped log file).
pub type Sink = Box<dyn FnMut(&[u8]) -> std::io::Result<()> + Send>;

/// What a request's line holds besides its path; `with_query` keeps the query string.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLogOptions {
    pub with_query: bool,
}

/// The handle the proxy holds; dropping it lets the writer write what is queued and end.
pub struct AccessLog {
    shared: Arc<Shared>,
    writer: std::thread::Thread,
    options: AccessLogOptions,
}

struct Shared {
    lines: crossbeam_queue::ArrayQueue<Vec<u8>>,
    free: crossbeam_queue::ArrayQueue<Vec<u8>>,
    /// Dropped since the writer last said so in the file.
    dropped: AtomicU64,
    dropped_total: AtomicU64,
    written_total: AtomicU64,
    closed: AtomicBool,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("queued", &self.shared.lines.len())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl AccessLog {
    /// Start the writer thread of `service`'s access log, with room for `queue` lines.
    pub fn start(
        service: &str,
        queue: usize,
        options: AccessLogOptions,
        mut sink: Sink,
    ) -> std::io::Result<AccessLog> {
        let queue = queue.max(1);
        let shared = Arc::new(Shared {
            lines: crossbeam_queue::ArrayQueue::new(queue),
            free: crossbeam_queue::ArrayQueue::new(queue),
            dropped: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            written_total: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let for_writer = shared.clone();
        let name = service.to_string();
        let handle = std::thread::Builder::new()
            .name(format!("access log {service}"))
            .spawn(move || write_lines(&for_writer, &name, &mut sink))?;
        Ok(AccessLog {
            shared,
            writer: handle.thread().clone(),
            options,
        })
    }

    /// Lines dropped because the writer fell behind, since the start.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped_total.load(Ordering::Relaxed)
    }

    /// Lines the writer handed to its sink, since the start.
    pub fn written(&self) -> u64 {
        self.shared.written_total.load(Ordering::Relaxed)
    }

    /// Start a request's line: when it came, from whom, what it asked for.
    pub(crate) fn begin(
        &self,
        service: &str,
        method: &http::Method,
        uri: &http::Uri,
        client: SocketAddr,
    ) -> Line {
        let mut buf = self
            .shared
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(384));
        buf.extend_from_slice(b"{\"time\":\"");
        let _ = write!(
            buf,
            "{}",
            humantime::format_rfc3339_millis(SystemTime::now())
        );
        buf.extend_from_slice(b"\",\"service\":");
        json_str(&mut buf, service);
        buf.extend_from_slice(b",\"method\":");
        json_str(&mut buf, method.as_str());
        buf.extend_from_slice(b",\"path\":");
        let path = match (self.options.with_query, uri.path_and_query()) {
            (true, Some(pq)) => pq.as_str(),
            _ => uri.path(),
        };
        json_str(&mut buf, path);
        let _ = write!(buf, ",\"client\":\"{client}\"");
        Line {
            buf,
            shared: self.shared.clone(),
            error: None,
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.writer.unpark();
    }
}

/// One request's line while its answer is made and sent.
pub(crate) struct Line {
    buf: Vec<u8>,
    shared: Arc<Shared>,
    /// Why the request failed, if it did (`ProxyError::kind`, or the body broke off).
    pub(crate) error: Option<&'static str>,
}

impl Line {
    /// The answer's head: its status and who made it.
    pub(crate) fn answered(
        &mut self,
        status: u16,
        by_proxy: bool,
        pool: Option<&crate::Pool>,
        upstream: Option<&crate::Backend>,
    ) {
        let buf = &mut self.buf;
        let _ = write!(
            buf,
            ",\"status\":{status},\"by_proxy\":{by_proxy},\"upstream\":"
        );
        json_opt(buf, upstream.map(|b| b.instance.as_str()));
        buf.extend_from_slice(b",\"colour\":");
        json_opt(buf, pool.map(|p| p.colour.as_str()));
        buf.extend_from_slice(b",\"version\":");
        json_opt(buf, pool.map(|p| p.version.as_str()));
    }

    /// The body went out (or stopped): finish the line and queue it for the writer.
    pub(crate) fn finish(mut self, bytes: u64, duration: Duration) {
        let buf = &mut self.buf;
        buf.extend_from_slice(b",\"error\":");
        json_opt(buf, self.error);
        let _ = writeln!(
            buf,
            ",\"bytes\":{bytes},\"duration_ms\":{:.3}}}",
            duration.as_secs_f64() * 1000.0
        );
        let line = std::mem::take(&mut self.buf);
        if let Err(line) = self.shared.lines.push(line) {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            self.shared.dropped_total.fetch_add(1, Ordering::Relaxed);
            self.shared.recycle(line);
        }
    }

    /// Finish with the time since `started`, the clock read only when the log is on.
    pub(crate) fn finish_since(self, bytes: u64, started: Instant) {
        self.finish(bytes, started.elapsed());
    }
}

impl Shared {
    fn recycle(&self, mut buf: Vec<u8>) {
        if buf.capacity() <= KEEP_BUFFER {
            buf.clear();
            let _ = self.free.push(buf);
        }
    }
}

/// The writer thread: batches what is queued into one write, says when lines were dropped,
/// and ends once the log is closed and its queue empty.
fn write_lines(shared: &Shared, service: &str, sink: &mut Sink) {
    let mut out = Vec::with_capacity(WRITE_CHUNK * 2);
    let mut written = 0u64;
    let mut last_warning: Option<Instant> = None;
    loop {
        let closed = shared.closed.load(Ordering::Acquire);
        while let Some(line) = shared.lines.pop() {
            out.extend_from_slice(&line);
            shared.recycle(line);
            written += 1;
            if out.len() >= WRITE_CHUNK {
                flush(sink, &mut out, service, &mut last_warning);
            }
        }
        // Lines are dropped while the queue is full: after those queued, not before them.
        note_dropped(shared, &mut out);
        flush(sink, &mut out, service, &mut last_warning);
        shared.written_total.store(written, Ordering::Relaxed);
        if closed {
            return;
        }
        std::thread::park_timeout(WRITER_POLL);
    }
}

fn note_dropped(shared: &Shared, out: &mut Vec<u8>) {
    let dropped = shared.dropped.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let _ = writeln!(
            out,
            "{{\"time\":\"{}\",\"dropped\":{dropped},\"message\":\"{dropped} lines dropped\"}}",
            humantime::format_rfc3339_millis(SystemTime::now())
        );
    }
}

fn flush(sink: &mut Sink, out: &mut Vec<u8>, service: &str, last_warning: &mut Option<Instant>) {
    if out.is_empty() {
        return;
    }
    if let Err(e) = sink(out) {
        // One warning every ten seconds at most: a full disk must not flood the daemon's log.
        if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last_warning = Some(Instant::now());
            tracing::warn!(service, "cannot write the access log: {e}");
        }
    }
    out.clear();
}

fn json_opt(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(buf, s),
        None => buf.extend_from_slice(b"null"),
    }
}

/// `s` as a JSON string.
fn json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&s.as_bytes()[start..i]);
        if escaped.is_empty() {
            let _ = write!(buf, "\\u{b:04x}");
        } else {
            buf.extend_from_slice(escaped);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&s.as_bytes()[start..]);
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_json() {
        let mut buf = Vec::new();
        json_str(&mut buf, "a\"b\\c\nd\u{1}e/é");
        assert_eq!(String::from_utf8(buf).unwrap(), r#""a\"b\\c\nd\u0001e/é""#);
    }
}
