//! Probes: HTTP (GET a path, 2xx passes), TCP (connect passes) and the dependency kinds
//! (postgres and tcp connect; redis answers PING; http and qdrant answer a GET with 2xx).

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tcf_config::{Dependency, DependencyKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Outcome of one probe: Ok, or why it failed.
pub type ProbeResult = Result<(), String>;

async fn with_timeout<F: std::future::Future<Output = ProbeResult>>(
    timeout: Duration,
    f: F,
) -> ProbeResult {
    tokio::time::timeout(timeout, f).await.unwrap_or_else(|_| {
        Err(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        ))
    })
}

pub async fn tcp(addr: &str, timeout: Duration) -> ProbeResult {
    with_timeout(timeout, async {
        TcpStream::connect(addr)
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot connect to {addr}: {e}"))
    })
    .await
}

/// GET `path` on `authority` (host:port); a 2xx answer passes.
pub async fn http(authority: &str, path: &str, timeout: Duration) -> ProbeResult {
    with_timeout(timeout, async {
        let stream = TcpStream::connect(authority)
            .await
            .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {authority} failed: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get(path)
            .header("host", authority)
            .header("user-agent", "tcf-platform-health")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad health path {path:?}: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET {path} on {authority} failed: {e}"))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("GET {path} answered {}", resp.status()))
        }
    })
    .await
}

/// Probe an instance on loopback.
pub async fn instance(
    addr: SocketAddr,
    probe: &tcf_config::Probe,
    timeout: Duration,
) -> ProbeResult {
    let addr = addr.to_string();
    match probe {
        tcf_config::Probe::Http { path } => http(&addr, path, timeout).await,
        tcf_config::Probe::Tcp => tcp(&addr, timeout).await,
    }
}

/// Split `http://host:port/path` into a connectable `host:port` and the path with its query.
/// Parsed as a URI, so an IPv6 literal (`http://[::1]/x`) keeps its brackets and gets port 80.
fn split_url(url: &str) -> Result<(String, String), String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a valid URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url:?} is not an http:// URL"));
    }
    let host = uri.host().ok_or_else(|| format!("{url:?} names no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let path = if path.is_empty() {
        "/".to_string()
    } else {
        path
    };
    Ok((format!("{host}:{port}"), path))
}

async fn redis_ping(addr: &str, timeout: Duration) -> ProbeResult {
    with_timeout(timeout, async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        s.write_all(b"PING\r\n")
            .await
            .map_err(|e| format!("cannot send PING to {addr}: {e}"))?;
        let mut buf = [0u8; 64];
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| format!("no answer to PING from {addr}: {e}"))?;
        let reply = String::from_utf8_lossy(&buf[..n]);
        // +PONG, or an error such as -NOAUTH: either way a Redis server is answering.
        if reply.starts_with('+') || reply.starts_with('-') {
            Ok(())
        } else {
            Err(format!(
                "{addr} did not answer PING like Redis: {:?}",
                reply.trim()
            ))
        }
    })
    .await
}

/// Ask for TLS the way every PostgreSQL client starts (SSLRequest); a PostgreSQL server answers
/// with one byte, `S` or `N`, before any authentication. Proves more than an open port.
async fn postgres_ping(addr: &str, timeout: Duration) -> ProbeResult {
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    with_timeout(timeout, async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        s.write_all(&SSL_REQUEST)
            .await
            .map_err(|e| format!("cannot talk to {addr}: {e}"))?;
        let mut reply = [0u8; 1];
        match s.read(&mut reply).await {
            Ok(1) if reply[0] == b'S' || reply[0] == b'N' => Ok(()),
            Ok(0) => Err(format!(
                "{addr} closed the connection instead of answering like PostgreSQL"
            )),
            Ok(_) => Err(format!(
                "{addr} did not answer like PostgreSQL (got {:?})",
                reply[0] as char
            )),
            Err(e) => Err(format!("{addr} did not answer like PostgreSQL: {e}")),
        }
    })
    .await
}

/// Where a dependency is, for display.
pub fn dependency_target(d: &Dependency) -> String {
    d.url
        .clone()
        .or_else(|| d.address.clone())
        .unwrap_or_default()
}

/// Probe a dependency the way its kind calls for.
pub async fn dependency(d: &Dependency) -> ProbeResult {
    let address = d.address.clone().unwrap_or_default();
    match d.kind {
        DependencyKind::Postgres => postgres_ping(&address, d.timeout).await,
        DependencyKind::Tcp => tcp(&address, d.timeout).await,
        DependencyKind::Redis => redis_ping(&address, d.timeout).await,
        DependencyKind::Http | DependencyKind::Qdrant => {
            let url = d
                .url
                .clone()
                .unwrap_or_else(|| format!("http://{address}/healthz"));
            let (authority, path) = split_url(&url)?;
            http(&authority, &path, d.timeout).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:6333/healthz").unwrap(),
            ("127.0.0.1:6333".to_string(), "/healthz".to_string())
        );
        assert_eq!(
            split_url("http://example").unwrap(),
            ("example:80".to_string(), "/".to_string())
        );
        assert!(split_url("https://x").is_err());
        assert_eq!(
            split_url("http://[::1]/x?y=1").unwrap(),
            ("[::1]:80".to_string(), "/x?y=1".to_string())
        );
        assert_eq!(
            split_url("http://[::1]:6333").unwrap(),
            ("[::1]:6333".to_string(), "/".to_string())
        );
    }

    #[tokio::test]
    async fn tcp_and_http_probes_fail_with_a_reason() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        assert!(tcp(&addr, Duration::from_secs(1)).await.is_ok());
        drop(l);
        let err = tcp(&addr, Duration::from_secs(1)).await.unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
        // A listener that never answers HTTP times out.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let err = http(&addr, "/health", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.contains("no answer within"), "{err}");
    }
}
