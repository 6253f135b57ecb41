//! The proxy's HTTP/1.1 client side: one upstream connection driven inline by the task that
//! serves the client's connection.
//!
//! Why not hyper's client: its connection runs as a task of its own and a request crosses two
//! channels to reach it and come back, which cost more CPU per request than the rest of the
//! proxy together (see docs/performance.md). Here the client task writes the request head,
//! reads the response head and, when the body is already in the buffer (the usual small
//! answer), hands the connection back before the response is even written to the client.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use std::io;
use std::task::{Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head we accept (status line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// Most headers a response may have.
const MAX_HEADERS: usize = 128;
/// How much room each read asks for.
const READ_CHUNK: usize = 16 * 1024;
/// Longest chunk-size or trailer line in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

/// One keep-alive connection to a backend, with what was read from it and not used yet.
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) buf: BytesMut,
    /// Where request heads are written, reused from request to request.
    pub(crate) out: BytesMut,
    /// Whether it already carried a request: a reused connection may have been closed by the
    /// server just as we sent, which is worth a retry; a fresh one failing is not.
    pub(crate) reused: bool,
    /// The backend's generation when it was made (see `Backend::close_idle`).
    pub(crate) generation: u64,
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// A parsed response head, hop-by-hop headers already removed.
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) framing: Framing,
    /// The server keeps the connection open after this response.
    pub(crate) keep_alive: bool,
    /// The `Upgrade` protocol of a 101 answer.
    pub(crate) upgrade: Option<HeaderValue>,
}

/// Why reading a response failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The connection closed (or was reset) before a single byte of the answer came back.
    ClosedBeforeAnswer(io::Error),
    Io(io::Error),
    Malformed(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::ClosedBeforeAnswer(e) => {
                write!(f, "connection closed before an answer: {e}")
            }
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Malformed(m) => write!(f, "malformed response: {m}"),
        }
    }
}

impl Conn {
    pub(crate) fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: BytesMut::new(),
            out: BytesMut::new(),
            reused: false,
            generation: 0,
        }
    }

    /// Whether an idle connection can carry a request: the server sent nothing on it and did
    /// not close it. Costs no system call unless the socket was signalled readable.
    pub(crate) fn is_usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                // WouldBlock: a stale readiness, now cleared. Anything else: data or EOF.
                matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Read more bytes into the buffer; 0 means the server closed the connection.
    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(READ_CHUNK);
        // `read_buf` (not `readable` + `try_read_buf`): a short read clears the socket's
        // readiness, which spares an EAGAIN read when the connection is next checked out.
        self.stream.read_buf(&mut self.buf).await
    }

    /// [`fill`](Self::fill) for a body's `poll_frame`.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        use std::future::Future;
        self.buf.reserve(READ_CHUNK);
        // The future holds nothing but its borrows: making one per poll is free.
        std::pin::pin!(self.stream.read_buf(&mut self.buf)).poll(cx)
    }

    /// Read the final response head (interim 1xx answers other than 101 are skipped).
    pub(crate) async fn read_head(&mut self, head_request: bool) -> Result<Head, ReadError> {
        let mut got_bytes = !self.buf.is_empty();
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_head(&mut self.buf, head_request)? {
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS
                    {
                        continue;
                    }
                    return Ok(head);
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(ReadError::Malformed(format!(
                        "head larger than {MAX_HEAD} bytes"
                    )));
                }
            }
            match self.fill().await {
                Ok(0) if !got_bytes => {
                    return Err(ReadError::ClosedBeforeAnswer(
                        io::ErrorKind::UnexpectedEof.into(),
                    ))
                }
                Ok(0) => {
                    return Err(ReadError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of the response head",
                    )))
                }
                Ok(_) => got_bytes = true,
                Err(e) if !got_bytes && is_reset(&e) => {
                    return Err(ReadError::ClosedBeforeAnswer(e))
                }
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }
}

/// Resolves once the server, while the request body is still being sent, has sent a complete
/// final answer head, closed the connection or failed: the reason the body stops there. What it
/// sent stays in `buf` for [`Conn::read_head`]. Interim answers (`100 Continue`) do not count.
pub(crate) async fn answered_early(stream: &TcpStream, buf: &mut BytesMut) -> io::Error {
    loop {
        if let Err(e) = stream.readable().await {
            return e;
        }
        buf.reserve(READ_CHUNK);
        match stream.try_read_buf(buf) {
            Ok(0) => {
                return io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "upstream closed the connection before taking the whole request body",
                )
            }
            Ok(_) if has_final_head(buf) => {
                return io::Error::other("upstream answered before taking the whole request body")
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return e,
        }
    }
}

/// Whether `buf` holds a complete final response head (after any interim 1xx heads), or
/// something that is no response head at all (which reading the head will report).
fn has_final_head(buf: &[u8]) -> bool {
    let mut at = 0;
    loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut slots);
        match parsed.parse(&buf[at..]) {
            Ok(httparse::Status::Complete(len)) => {
                let code = parsed.code.unwrap_or(0);
                if (100..200).contains(&code) && code != 101 {
                    at += len;
                    continue;
                }
                return true;
            }
            Ok(httparse::Status::Partial) => return buf.len() - at > MAX_HEAD,
            Err(_) => return true,
        }
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Whether a header describes one hop only (RFC 9110 7.6.1).
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    HOP.iter().any(|h| h.as_bytes().eq_ignore_ascii_case(name))
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub(crate) fn lists_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parse one response head from the start of `buf` and consume it; `None` if incomplete.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, ReadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ReadError::Malformed(e.to_string())),
    };
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| ReadError::Malformed(format!("status code {code}")))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Where each header's value lies in the head, so values can share its bytes.
    let base = buf.as_ptr() as usize;
    let mut connection: Vec<std::ops::Range<usize>> = Vec::new();
    // Where the kept headers' names and values lie in the head: on the stack, no allocation.
    let mut kept = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let mut n_kept = 0;
    let (mut chunked, mut length, mut upgrade_at) = (false, None::<u64>, None);
    let mut transfer_coded = false;
    for h in parsed.headers.iter() {
        let start = h.value.as_ptr() as usize - base;
        let range = start..start + h.value.len();
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"connection") {
            connection.push(range);
            continue;
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only the last coding decides the framing; anything but chunked reads to close.
            transfer_coded = true;
            chunked = h
                .value
                .split(|b| *b == b',')
                .next_back()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            continue;
        }
        if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_at = Some(range);
            continue;
        }
        if is_hop_by_hop(name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(h.value)
                .ok_or_else(|| ReadError::Malformed("bad content-length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(ReadError::Malformed("conflicting content-length".into()));
            }
            length = Some(n);
        }
        let name_start = h.name.as_ptr() as usize - base;
        kept[n_kept] = (
            name_start as u32,
            (name_start + name.len()) as u32,
            range.start as u32,
            range.end as u32,
        );
        n_kept += 1;
    }
    let head = buf.split_to(len).freeze();
    let value = |r: &std::ops::Range<usize>| {
        HeaderValue::from_maybe_shared(head.slice(r.clone()))
            .map_err(|_| ReadError::Malformed("header value".into()))
    };
    let listed: Vec<Bytes> = connection.iter().map(|r| head.slice(r.clone())).collect();
    let mut headers = HeaderMap::with_capacity(n_kept);
    for &(name_start, name_end, start, end) in &kept[..n_kept] {
        let name = &head[name_start as usize..name_end as usize];
        // Headers named in Connection are for this hop only, too.
        if listed
            .iter()
            .any(|l| lists_token(l, std::str::from_utf8(name).unwrap_or("")))
        {
            continue;
        }
        let name = HeaderName::from_bytes(name).map_err(|_| {
            ReadError::Malformed(format!("header name {:?}", String::from_utf8_lossy(name)))
        })?;
        headers.append(name, value(&(start as usize..end as usize))?);
    }
    let close = listed.iter().any(|l| lists_token(l, "close"));
    let keep_alive = match version {
        Version::HTTP_10 => listed.iter().any(|l| lists_token(l, "keep-alive")),
        _ => !close,
    };
    let framing = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if chunked {
        // A length beside chunked is ignored (RFC 9112 6.3) and must not reach the client.
        headers.remove(http::header::CONTENT_LENGTH);
        Framing::Chunked
    } else if transfer_coded {
        // RFC 9112 §6.3 point 4: a coding that does not end in chunked is read until the
        // server closes, whatever Content-Length says (and that length is not passed on).
        headers.remove(http::header::CONTENT_LENGTH);
        Framing::UntilClose
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let upgrade = match upgrade_at {
        Some(r) => Some(value(&r)?),
        None => None,
    };
    Ok(Some(Head {
        status,
        headers,
        keep_alive: keep_alive && framing != Framing::UntilClose,
        framing,
        upgrade,
    }))
}

/// A Content-Length value: ASCII digits only (no sign, no spaces inside, no list), RFC 9110
/// §8.6; surrounding whitespace is the field's, already trimmed by the parser but allowed.
fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// What the chunked decoder produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    Data(Bytes),
    /// The buffer holds no complete piece: read more.
    NeedMore,
    /// The last chunk and the trailers are consumed.
    Done,
}

/// A decoder for `Transfer-Encoding: chunked` bodies that works on whatever is buffered.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl Chunked {
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, String> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(Decoded::Done),
                ChunkState::Size => {
                    // httparse's parser: hex digits only (no sign), no overflow, extensions
                    // skipped.
                    let size = match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            let _ = buf.split_to(used);
                            size
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                            return Err("chunk line too long".into())
                        }
                        Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                        Err(_) => {
                            let line = buf[..].split(|b| *b == b'\n').next().unwrap_or(&[]);
                            return Err(format!(
                                "bad chunk size line {:?}",
                                String::from_utf8_lossy(&line[..line.len().min(64)])
                            ));
                        }
                    };
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    self.state = if n as u64 == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n as u64)
                    };
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk not followed by CRLF".into());
                    }
                    let _ = buf.split_to(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    // Trailers are not forwarded; an empty line ends the body.
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// Take one CRLF-terminated line (without the CRLF) off the front of `buf`.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, String> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = buf.split_to(end + 2).freeze();
            Ok(Some(line.slice(..end)))
        }
        None if buf.len() > MAX_CHUNK_LINE => Err("chunk line too long".into()),
        None => Ok(None),
    }
}

/// Write `data` as one chunk of a chunked request body.
pub(crate) fn encode_chunk(out: &mut BytesMut, data: &[u8]) {
    use std::fmt::Write as _;
    let _ = write!(WriteInto(out), "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Formats straight into a buffer, without a `String` in between.
pub(crate) struct WriteInto<'a>(pub(crate) &'a mut BytesMut);

impl std::fmt::Write for WriteInto<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, head_request: bool) -> Head {
        let mut buf = BytesMut::from(raw.as_bytes());
        match parse_head(&mut buf, head_request) {
            Ok(Some(h)) => h,
            Ok(None) => panic!("incomplete"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_head_is_parsed_and_hop_by_hop_headers_dropped() {
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\n\r\nabc",
            false,
        );
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.framing, Framing::Length(3));
        assert!(h.keep_alive);
        assert_eq!(h.headers.len(), 2, "{:?}", h.headers);
        assert_eq!(h.headers["x-kept"], "yes");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(
            head(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
                false
            )
            .framing,
            Framing::Chunked
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).framing,
            Framing::Empty
        );
        assert_eq!(
            head("HTTP/1.1 304 Not Modified\r\n\r\n", false).framing,
            Framing::Empty
        );
        let until_close = head("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(until_close.framing, Framing::UntilClose);
        assert!(!until_close.keep_alive);
        assert!(
            !head(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                false
            )
            .keep_alive
        );
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false).keep_alive);
        assert!(
            head(
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                false
            )
            .keep_alive
        );
    }

    #[test]
    fn bad_heads_are_refused_and_partial_ones_wait() {
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-"[..]);
        assert!(matches!(parse_head(&mut partial, false), Ok(None)));
        let mut conflicting = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
        );
        assert!(parse_head(&mut conflicting, false).is_err());
        let mut garbage = BytesMut::from(&b"SSH-2.0-OpenSSH\r\n\r\n"[..]);
        assert!(parse_head(&mut garbage, false).is_err());
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire = b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for split in 1..wire.len() {
            let mut dec = Chunked::default();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut fed = 0;
            loop {
                match dec.decode(&mut buf).unwrap() {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::NeedMore => {
                        let end = (fed + split).min(wire.len());
                        assert!(fed < end, "decoder starved at {fed}");
                        buf.extend_from_slice(&wire[fed..end]);
                        fed = end;
                    }
                    Decoded::Done => break,
                }
            }
            assert_eq!(out, b"abc0123456789abcdef");
            // What follows the body stays for the next response.
            let rest: Vec<u8> = buf.iter().chain(&wire[fed..]).copied().collect();
            assert_eq!(rest, b"NEXT");
        }
    }

    #[test]
    fn lengths_and_chunk_sizes_with_a_sign_are_refused() {
        for bad in ["+3", "-3", "3 3", "0x3", "", "3,3"] {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\nabc");
            let mut buf = BytesMut::from(raw.as_bytes());
            assert!(parse_head(&mut buf, false).is_err(), "{bad:?}");
        }
        let mut dec = Chunked::default();
        let mut buf = BytesMut::from(&b"+3\r\nabc\r\n0\r\n\r\n"[..]);
        assert!(dec.decode(&mut buf).is_err());
    }

    #[test]
    fn a_coding_not_ending_in_chunked_reads_until_close_whatever_the_length() {
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.keep_alive);
        assert!(!h.headers.contains_key("content-length"));
    }

    #[test]
    fn bad_chunks_are_errors() {
        for wire in [
            &b"zz\r\n"[..],
            &b"1\r\nab\r\n"[..],
            &b"ffffffffffffffffff\r\n"[..],
        ] {
            let mut dec = Chunked::default();
            let mut buf = BytesMut::from(wire);
            let result = loop {
                match dec.decode(&mut buf) {
                    Ok(Decoded::Data(_)) => continue,
                    other => break other,
                }
            };
            assert!(result.is_err(), "{wire:?}: {result:?}");
        }
    }

    #[test]
    fn chunks_are_encoded_with_hex_sizes() {
        let mut out = BytesMut::new();
        encode_chunk(&mut out, &[b'x'; 26]);
        assert_eq!(&out[..4], b"1a\r\n");
        assert!(out.ends_with(b"x\r\n"));
    }
}
