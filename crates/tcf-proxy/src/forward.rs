//! Forwarding one request: the head as it goes upstream, the body streamed (watching for an
//! early answer), the answer's head read and turned into the client's response, with retries
//! where nothing was lost.

use super::*;

impl ServiceProxy {
    // Called once, from `handle`: a struct to bundle these would only be moved apart again.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn forward(
        &self,
        pool: &Arc<Pool>,
        mut parts: http::request::Parts,
        mut body: Incoming,
        replaced_host: Option<HeaderValue>,
        client_ip: &HeaderValue,
        started: Instant,
        upstream: &mut Option<Arc<Backend>>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let limit = self.settings.max_request_body;
        if content_length(&parts.headers).is_some_and(|len| len > limit) {
            return Err(ProxyError::BodyTooLarge(limit));
        }
        let client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let host = replaced_host.as_ref().or(parts.headers.get(header::HOST));
        let mut framing = if body.is_end_stream() {
            RequestFraming::Empty
        } else {
            match body.size_hint().exact() {
                Some(n) => RequestFraming::Length(n),
                None => RequestFraming::Chunked,
            }
        };
        // A chunked body's first chunk is read before anything goes upstream: a body that is
        // malformed from its start gets its 400 without the service seeing half a request.
        let mut first_chunk = None;
        if framing == RequestFraming::Chunked {
            checks::check_transfer_encoding(&parts.headers)?;
            let deadline = started + self.settings.upstream_timeout;
            match deadline::until(deadline, body.frame()).await {
                Err(_) => return Err(ProxyError::RequestTimeout(self.settings.upstream_timeout)),
                Ok(None) => framing = RequestFraming::Length(0),
                Ok(Some(Err(e))) => {
                    return Err(ProxyError::BadRequest(format!("invalid request body: {e}")))
                }
                Ok(Some(Ok(frame))) => {
                    let data = frame.into_data().unwrap_or_default();
                    if data.len() as u64 > limit {
                        return Err(ProxyError::BodyTooLarge(limit));
                    }
                    first_chunk = Some(data);
                }
            }
        }
        // Upgrades (WebSocket) are asked for with a GET and no body (RFC 6455 §4.1); elsewhere
        // the Upgrade header is dropped like any other hop-by-hop header.
        let upgrade = if parts.method == http::Method::GET && framing == RequestFraming::Empty {
            requested_upgrade(&parts.headers)
        } else {
            None
        };
        let head_request = parts.method == http::Method::HEAD;
        // A request that reached a server which then closed without answering may be sent again
        // only if repeating it is harmless and nothing of it is lost.
        let repeatable = parts.method.is_idempotent() && framing == RequestFraming::Empty;
        let mut body = (framing != RequestFraming::Empty).then_some(body);

        let backends = pool.backends();
        let mut tried: Option<Arc<Backend>> = None;
        // Nothing was lost whenever we loop: another connection or backend is safe.
        for attempt in 0..3 {
            let backend = self
                .pick(&backends, tried.as_ref())
                .or_else(|| tried.clone())
                .ok_or_else(|| ProxyError::NoBackend(self.name.clone()))?;
            let guard = OutstandingGuard::new(backend.clone());
            let mut conn = match backend.checkout() {
                Some(c) => c,
                None => match backend.connect(self.settings.connect_timeout).await {
                    Ok(c) => c,
                    // Refused or timed out: nothing was sent, so another instance may take it.
                    Err(e) if backends.len() > 1 && attempt < 2 => {
                        tracing::debug!(service = %self.name, "{e}; trying another instance");
                        tried = Some(backend);
                        continue;
                    }
                    Err(e) => {
                        *upstream = Some(backend);
                        return Err(e);
                    }
                },
            };
            // The head is written into the connection's own buffer (no allocation once it has
            // carried a request), again for each try.
            let mut head = std::mem::take(&mut conn.out);
            head.clear();
            request_head(
                &mut head,
                &parts,
                host,
                client_ip,
                upgrade.as_ref(),
                framing,
                self.settings.limits.underscores,
                self.settings.tls.is_some(),
            );
            let exchange = exchange(
                &mut conn,
                &head,
                &mut body,
                &mut first_chunk,
                framing,
                limit,
                head_request,
            );
            let deadline = started + self.settings.upstream_timeout;
            let result = deadline::until(deadline, exchange).await;
            conn.out = head;
            let addr = backend.addr;
            match result {
                // A reused connection the server closed meanwhile: take another one.
                Ok(Err(Failure::NotSent(_))) if conn.reused => continue,
                Ok(Err(Failure::Unanswered(_))) if conn.reused && repeatable => continue,
                _ => {}
            }
            // This instance answered, or failed to: the request ends here.
            *upstream = Some(backend);
            return match result {
                Err(_) => Err(ProxyError::Timeout(addr, self.settings.upstream_timeout)),
                Ok(Ok(answer)) => {
                    // Still there: the upstream answered before taking all of it.
                    if let Some(rest) = body.take() {
                        drain_in_background(rest, limit, self.settings.upstream_timeout);
                    }
                    respond(
                        answer,
                        conn,
                        guard,
                        pool,
                        client_upgrade,
                        upgrade.is_some(),
                        self.settings.tunnel_idle_timeout,
                    )
                }
                Ok(Err(Failure::NotSent(e) | Failure::Unanswered(e))) => {
                    Err(ProxyError::Upstream(addr, e.to_string()))
                }
                Ok(Err(Failure::Proxy(e))) => Err(e),
                Ok(Err(Failure::Io(e))) => Err(ProxyError::Upstream(addr, e.to_string())),
            };
        }
        Err(ProxyError::Upstream(
            tried.map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)), |b| b.addr),
            "no connection could carry the request".into(),
        ))
    }
}

/// How the request body goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    Empty,
    Length(u64),
    Chunked,
}

/// Why one try at a backend failed.
pub(crate) enum Failure {
    /// Writing the head failed: the body (if any) is untouched.
    NotSent(std::io::Error),
    /// Sent, then the connection closed before any byte of an answer.
    Unanswered(std::io::Error),
    Proxy(ProxyError),
    Io(String),
}

/// Send the request on `conn` and read the answer's head.
///
/// An upstream may answer before it has read the whole body (a 401 or 413 for an upload it
/// does not want) and then close or reset the connection: that answer is the request's answer,
/// relayed as it came, never turned into a 502. The connection is not reused after it, and the
/// body is left in `body` for the caller to drain (so the client gets to read the answer).
pub(crate) async fn exchange(
    conn: &mut Conn,
    head: &[u8],
    body: &mut Option<Incoming>,
    first_chunk: &mut Option<Bytes>,
    framing: RequestFraming,
    limit: u64,
    head_request: bool,
) -> Result<upstream::Head, Failure> {
    conn.write_all(head).await.map_err(Failure::NotSent)?;
    if let Some(incoming) = body.as_mut() {
        match send_body(conn, incoming, first_chunk.take(), framing, limit).await {
            // The body is gone: this request cannot be sent again.
            Ok(()) => *body = None,
            Err(BodyStop::Client(e)) => return Err(Failure::Proxy(e)),
            Err(BodyStop::Upstream(why, sent)) => {
                return match conn.read_head(head_request).await {
                    Ok(mut answer) => {
                        answer.keep_alive = false;
                        Ok(answer)
                    }
                    Err(_) => {
                        // Nothing came back. A body over the limit is still the client's
                        // fault, whoever noticed first: 413, not 502.
                        let over = body_exceeds(incoming, limit.saturating_sub(sent)).await;
                        *body = None;
                        Err(if over {
                            Failure::Proxy(ProxyError::BodyTooLarge(limit))
                        } else {
                            Failure::Io(why.to_string())
                        })
                    }
                };
            }
        }
    }
    conn.read_head(head_request).await.map_err(|e| match e {
        ReadError::ClosedBeforeAnswer(e) => Failure::Unanswered(e),
        e => Failure::Io(e.to_string()),
    })
}

/// Why sending the request body stopped before its end.
pub(crate) enum BodyStop {
    /// The client's body is malformed or over the limit.
    Client(ProxyError),
    /// The upstream answered, closed or failed first, after `.1` bytes of the body.
    Upstream(std::io::Error, u64),
}

/// Stream the client's body upstream, watching the upstream for an early answer whenever the
/// body or the upstream's window makes us wait (never on a body that goes at once).
pub(crate) async fn send_body(
    conn: &mut Conn,
    incoming: &mut Incoming,
    mut first_chunk: Option<Bytes>,
    framing: RequestFraming,
    limit: u64,
) -> Result<(), BodyStop> {
    let mut sent = 0u64;
    let mut scratch = bytes::BytesMut::new();
    loop {
        let frame = match first_chunk.take() {
            Some(data) => Some(Ok(Frame::data(data))),
            None => tokio::select! {
                biased;
                frame = incoming.frame() => frame,
                why = upstream::answered_early(&conn.stream, &mut conn.buf) => {
                    return Err(BodyStop::Upstream(why, sent));
                }
            },
        };
        let Some(frame) = frame else {
            break;
        };
        let frame = frame.map_err(|e| {
            BodyStop::Client(ProxyError::BadRequest(format!("invalid request body: {e}")))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        sent += data.len() as u64;
        if sent > limit {
            return Err(BodyStop::Client(ProxyError::BodyTooLarge(limit)));
        }
        let bytes: &[u8] = if framing == RequestFraming::Chunked {
            scratch.clear();
            upstream::encode_chunk(&mut scratch, &data);
            &scratch
        } else {
            &data
        };
        write_watching(conn, bytes)
            .await
            .map_err(|e| BodyStop::Upstream(e, sent))?;
    }
    if framing == RequestFraming::Chunked {
        write_watching(conn, b"0\r\n\r\n")
            .await
            .map_err(|e| BodyStop::Upstream(e, sent))?;
    }
    Ok(())
}

/// Write all of `data`; while the upstream's window is full, stop as soon as it answers early
/// or closes (a service that answers 401 and stops reading would otherwise stall us here).
pub(crate) async fn write_watching(conn: &mut Conn, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match conn.stream.try_write(data) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::select! {
                    biased;
                    ready = conn.stream.writable() => ready?,
                    why = upstream::answered_early(&conn.stream, &mut conn.buf) => return Err(why),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read the rest of a request body; whether it is longer than `allowance` bytes. Stops as soon
/// as it is, or on the first error.
pub(crate) async fn body_exceeds(incoming: &mut Incoming, allowance: u64) -> bool {
    let mut seen = 0u64;
    while let Some(Ok(frame)) = incoming.frame().await {
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
            if seen > allowance {
                return true;
            }
        }
    }
    false
}

/// After an early answer, read and drop the rest of the client's body (up to `limit` bytes,
/// for at most `within`), so the client, still sending, gets to read the answer instead of a
/// reset; what is past that is cut off by closing the connection (nginx's lingering close).
pub(crate) fn drain_in_background(mut rest: Incoming, limit: u64, within: Duration) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(within, body_exceeds(&mut rest, limit)).await;
    });
}

/// Turn the upstream's answer into the client's response.
pub(crate) fn respond(
    head: upstream::Head,
    mut conn: Conn,
    guard: OutstandingGuard,
    pool: &Arc<Pool>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    upgrade_requested: bool,
    tunnel_idle: Duration,
) -> Result<Response<ProxyBody>, ProxyError> {
    let addr = guard.0.addr;
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(client_side), Some(proto), true) =
            (client_upgrade, head.upgrade, upgrade_requested)
        else {
            return Err(ProxyError::Upstream(
                addr,
                "switched protocols without being asked to".into(),
            ));
        };
        let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
        *resp.status_mut() = head.status;
        *resp.headers_mut() = head.headers;
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        resp.headers_mut().insert(header::UPGRADE, proto);
        // Counted as upgraded before `guard` stops counting it as outstanding.
        let counted = tunnel::UpgradedGuard::new(guard.0.clone());
        tunnel::tunnel(client_side, conn, counted, tunnel_idle);
        return Ok(resp);
    }
    let body = match head.framing {
        Framing::Empty => {
            if head.keep_alive {
                guard.0.checkin(conn);
            }
            Either::Right(Full::new(Bytes::new()))
        }
        // The usual small answer arrived with its head: the connection is free already.
        Framing::Length(n) if conn.buf.len() as u64 >= n => {
            let data = conn.buf.split_to(n as usize).freeze();
            if head.keep_alive {
                guard.0.checkin(conn);
            }
            Either::Right(Full::new(data))
        }
        framing => Either::Left(Box::new(Streamed {
            conn: Some(conn),
            framing: match framing {
                Framing::Length(n) => BodyFraming::Length(n),
                Framing::Chunked => BodyFraming::Chunked(Chunked::default()),
                _ => BodyFraming::UntilClose,
            },
            keep_alive: head.keep_alive,
            _guard: guard,
            pool: pool.clone(),
            client: None,
            sent: 0,
            access: None,
        })),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    Ok(resp)
}

/// The head of the request as it goes upstream: origin form as it came in, hop-by-hop
/// headers (and those named in `Connection`) removed, `X-Forwarded-*` added, our framing.
// Each argument is a fact of this request the head is written from; bundling them would only
// move them apart again at the one call on the hot path.
#[allow(clippy::too_many_arguments)]
pub(crate) fn request_head(
    out: &mut bytes::BytesMut,
    parts: &http::request::Parts,
    host: Option<&HeaderValue>,
    client_ip: &HeaderValue,
    upgrade: Option<&HeaderValue>,
    framing: RequestFraming,
    underscores: UnderscoreHeaders,
    https: bool,
) {
    let h = &parts.headers;
    out.reserve(256 + h.len() * 48);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // Host first, and never dropped for being named in Connection (an end-to-end field).
    if let Some(host) = host {
        put_header(out, b"host", host.as_bytes());
    }
    let connection: Vec<&HeaderValue> = h.get_all(header::CONNECTION).iter().collect();
    let mut had_length = false;
    for (name, value) in h {
        let n = name.as_str();
        match n {
            "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "host" => continue,
            "content-length" => {
                had_length = true;
                continue;
            }
            _ => {}
        }
        if upstream::is_hop_by_hop(n.as_bytes())
            || connection
                .iter()
                .any(|c| upstream::lists_token(c.as_bytes(), n))
        {
            continue;
        }
        if underscores == UnderscoreHeaders::Drop && n.contains('_') {
            continue;
        }
        put_header(out, n.as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    // The client's own list first (a lookup, no collecting while the fields are written).
    for prev in h.get_all("x-forwarded-for") {
        out.extend_from_slice(prev.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client_ip.as_bytes());
    out.extend_from_slice(if https {
        b"\r\nx-forwarded-proto: https\r\n"
    } else {
        b"\r\nx-forwarded-proto: http\r\n"
    });
    if let Some(host) = host {
        put_header(out, b"x-forwarded-host", host.as_bytes());
    }
    if let Some(proto) = upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
        put_header(out, b"upgrade", proto.as_bytes());
    }
    match framing {
        RequestFraming::Length(n) => {
            use std::fmt::Write as _;
            let _ = write!(upstream::WriteInto(out), "content-length: {n}\r\n");
        }
        RequestFraming::Empty if had_length => out.extend_from_slice(b"content-length: 0\r\n"),
        RequestFraming::Empty => {}
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn put_header(out: &mut bytes::BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The protocol a client asks to upgrade to (`Connection: upgrade` + `Upgrade: X`).
pub(crate) fn requested_upgrade(h: &HeaderMap) -> Option<HeaderValue> {
    // Most requests have no Upgrade header: one lookup and done.
    let proto = h.get(header::UPGRADE)?;
    h.get_all(header::CONNECTION)
        .iter()
        .any(|v| upstream::lists_token(v.as_bytes(), "upgrade"))
        .then(|| proto.clone())
}

pub(crate) fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn head_of(req: Request<()>, framing: RequestFraming) -> String {
        let (parts, _) = req.into_parts();
        let ip = HeaderValue::from_static("10.0.0.9");
        let upgrade = requested_upgrade(&parts.headers);
        let host = parts.headers.get(header::HOST).cloned();
        let mut out = bytes::BytesMut::new();
        request_head(
            &mut out,
            &parts,
            host.as_ref(),
            &ip,
            upgrade.as_ref(),
            framing,
            UnderscoreHeaders::Forward,
            false,
        );
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    pub(crate) fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let req = Request::post("http://example/a?b=1")
            .header("host", "example")
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("transfer-encoding", "chunked")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-proto", "https")
            .header("x-kept", "yes")
            .body(())
            .unwrap();
        assert_eq!(
            head_of(req, RequestFraming::Chunked),
            "POST /a?b=1 HTTP/1.1\r\nhost: example\r\nx-kept: yes\r\nx-forwarded-for: 1.2.3.4, 10.0.0.9\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: example\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    pub(crate) fn an_upgrade_is_asked_for_again_and_lengths_are_ours() {
        let req = Request::get("/ws")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("content-length", "0")
            .body(())
            .unwrap();
        assert_eq!(
            head_of(req, RequestFraming::Empty),
            "GET /ws HTTP/1.1\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n\
             connection: upgrade\r\nupgrade: websocket\r\ncontent-length: 0\r\n\r\n"
        );
    }
}
