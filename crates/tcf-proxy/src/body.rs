//! A response body streamed from the upstream as the client takes it.

use super::*;

/// An upstream response body read as the client takes it. It keeps its backend counted as
/// busy while it streams, and gives the connection back for reuse once read to its end.
pub struct Streamed {
    pub(crate) conn: Option<Conn>,
    pub(crate) framing: BodyFraming,
    pub(crate) keep_alive: bool,
    pub(crate) _guard: OutstandingGuard,
    /// The colour it came from, whose stats count an answer that breaks off.
    pub(crate) pool: Arc<Pool>,
    /// The request on the client connection this body goes to: counted busy until the
    /// body is done (dropped).
    pub(crate) client: Option<InFlight>,
    /// Body bytes handed to the client so far.
    pub(crate) sent: u64,
    /// The request's access log line (when the log is on) and when the request came.
    pub(crate) access: Option<(access_log::Line, Instant)>,
}

impl Drop for Streamed {
    fn drop(&mut self) {
        if let Some((mut line, started)) = self.access.take() {
            // Still connected upstream: the client left (or stalled) before the end.
            if self.conn.is_some() && line.error.is_none() {
                line.error = Some("unfinished");
            }
            line.finish_since(self.sent, started);
        }
    }
}

pub(crate) enum BodyFraming {
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

impl Streamed {
    /// The upstream's answer broke off after its head went to the client: the client sees a
    /// cut connection, so it is an upstream failure in the stats and the log.
    pub(crate) fn broke(
        &mut self,
        e: std::io::Error,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.conn = None;
        let backend = &self._guard.0;
        tracing::warn!(
            instance = %backend.instance,
            upstream = %backend.addr,
            "the upstream's answer broke off in its body: {e}"
        );
        self.pool.stats.record_broken();
        if let Some((line, _)) = &mut self.access {
            line.error = Some("upstream_broke_off");
        }
        if let Some(client) = &self.client {
            client.proxy.stats.record_broken();
        }
        Poll::Ready(Some(Err(e)))
    }

    /// The body is complete: the connection goes back to the pool if the server keeps it open.
    pub(crate) fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keep_alive {
                self._guard.0.checkin(conn);
            }
        }
    }
}

impl Streamed {
    /// The next piece the buffer holds: data, the end of the body, or nothing yet.
    pub(crate) fn take_buffered(&mut self) -> Result<Decoded, std::io::Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Decoded::Done);
        };
        match &mut self.framing {
            BodyFraming::Length(0) => Ok(Decoded::Done),
            _ if conn.buf.is_empty() => Ok(Decoded::NeedMore),
            BodyFraming::Length(left) => {
                let n = (conn.buf.len() as u64).min(*left);
                *left -= n;
                Ok(Decoded::Data(conn.buf.split_to(n as usize).freeze()))
            }
            BodyFraming::Chunked(decoder) => {
                decoder.decode(&mut conn.buf).map_err(std::io::Error::other)
            }
            BodyFraming::UntilClose => Ok(Decoded::Data(conn.buf.split().freeze())),
        }
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        loop {
            match this.take_buffered() {
                Ok(Decoded::Data(data)) => {
                    this.sent += data.len() as u64;
                    if let Some(client) = &this.client {
                        client.progress.store(true, Ordering::Relaxed);
                    }
                    // The last bytes of a length-framed body: hyper may not poll again.
                    if matches!(this.framing, BodyFraming::Length(0)) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Done) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => return this.broke(e),
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if matches!(this.framing, BodyFraming::UntilClose) => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    return this.broke(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection in the middle of the body",
                    ))
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.broke(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.framing, BodyFraming::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            BodyFraming::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
