//! A small HTTP/1.1 client for the daemon's API: on its Unix socket, or remotely over HTTPS
//! with a bearer token (`remote.rs`). Only the connection differs; requests are the same code.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Connecting to the daemon's socket and the HTTP handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole request, or the head of a streamed answer (a deploy's progress, `logs -f`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no tcf-platform daemon is running for this config (nothing answers on {socket})\nhint: start it with `tcf-platform up` (add --config PATH if the config is elsewhere)")]
    NotRunning { socket: PathBuf },
    #[error("cannot reach the daemon on {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach the daemon at {url}: {detail}\nhint: check --host/TCF_HOST, that the daemon has [daemon] listen, and the certificate pin (--fingerprint, or --ca)")]
    Remote { url: String, detail: String },
    #[error("talking to the daemon failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("the daemon answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("the daemon on {socket} did not answer {what} within {}\nhint: it may be overloaded or stuck; see its log, or `tcf-platform events` once it answers", humantime::format_duration(*limit))]
    Timeout {
        socket: PathBuf,
        what: &'static str,
        limit: Duration,
    },
    #[error("the daemon sent an answer this CLI cannot read: {0}\nhint: is the daemon a different tcf-platform version? restart it with this binary")]
    Decode(#[from] serde_json::Error),
}

#[derive(Debug, Clone)]
pub struct Client {
    /// The Unix socket, or for a remote daemon its URL (for messages).
    socket: PathBuf,
    remote: Option<std::sync::Arc<crate::remote::Remote>>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            remote: None,
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        }
    }

    /// A client of a remote daemon's HTTPS API.
    pub fn remote(remote: crate::remote::Remote) -> Client {
        Client {
            socket: PathBuf::from(&remote.url),
            remote: Some(std::sync::Arc::new(remote)),
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        }
    }

    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The same client with other limits for connecting and for a request.
    pub fn with_timeouts(mut self, connect: Duration, request: Duration) -> Client {
        self.connect_timeout = connect;
        self.request_timeout = request;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn timeout(&self, what: &'static str, limit: Duration) -> ClientError {
        ClientError::Timeout {
            socket: self.socket.clone(),
            what,
            limit,
        }
    }

    /// Send a request and return the response with its body still streaming. The connection
    /// and the response head are bounded in time; the body is not (it may be a stream).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let connect = async {
            let stream = self.connect().await?;
            Ok::<_, ClientError>(hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?)
        };
        let (mut sender, conn) = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| self.timeout("the connection", self.connect_timeout))??;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "tcf-platform")
            .header("content-type", "application/json");
        if let Some(remote) = &self.remote {
            req = req.header("authorization", format!("Bearer {}", remote.token));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Api {
                status: 0,
                message: format!("bad request {path}: {e}"),
            })?;
        let resp = tokio::time::timeout(self.request_timeout, sender.send_request(req))
            .await
            .map_err(|_| self.timeout("the request", self.request_timeout))??;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let bytes = self.body(resp).await?;
            let message = serde_json::from_slice::<crate::ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(ClientError::Api { status, message });
        }
        Ok(resp)
    }

    /// A whole (not streamed) answer's body, within the request timeout.
    async fn body(&self, resp: Response<Incoming>) -> Result<Bytes, ClientError> {
        let collect = resp.into_body().collect();
        Ok(tokio::time::timeout(self.request_timeout, collect)
            .await
            .map_err(|_| self.timeout("the request", self.request_timeout))??
            .to_bytes())
    }

    async fn connect(&self) -> Result<Box<dyn crate::remote::Io>, ClientError> {
        if let Some(remote) = &self.remote {
            return remote.connect().await;
        }
        tokio::net::UnixStream::connect(&self.socket)
            .await
            .map(|s| Box::new(s) as Box<dyn crate::remote::Io>)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning {
                        socket: self.socket.clone(),
                    }
                }
                _ => ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                },
            })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.send("GET", path, None).await?;
        let bytes = self.body(resp).await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, ClientError> {
        let resp = self
            .send("POST", path, Some(serde_json::to_vec(body)?))
            .await?;
        let bytes = self.body(resp).await?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_daemon_that_accepts_but_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        // Accept and hold connections without ever answering.
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let client = Client::new(&socket)
            .with_timeouts(Duration::from_millis(500), Duration::from_millis(300));
        let err = client
            .get::<serde_json::Value>("/v1/status")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Timeout {
                    what: "the request",
                    ..
                }
            ),
            "{err}"
        );
        held.abort();
    }

    #[tokio::test]
    async fn no_socket_means_no_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let err = Client::new(dir.path().join("none.sock"))
            .get::<serde_json::Value>("/v1/status")
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
    }
}
