//! A small HTTP/1.1 client for the daemon's Unix socket.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no tcf-platform daemon is running for this config (nothing answers on {socket})\nhint: start it with `tcf-platform up` (add --config PATH if the config is elsewhere)")]
    NotRunning { socket: PathBuf },
    #[error("cannot reach the daemon on {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the daemon failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("the daemon answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("the daemon sent an answer this CLI cannot read: {0}\nhint: is the daemon a different tcf-platform version? restart it with this binary")]
    Decode(#[from] serde_json::Error),
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Send a request and return the response with its body still streaming.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
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
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "tcf-platform")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Api {
                status: 0,
                message: format!("bad request {path}: {e}"),
            })?;
        let resp = sender.send_request(req).await?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await?.to_bytes();
            let message = serde_json::from_slice::<crate::ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(ClientError::Api { status, message });
        }
        Ok(resp)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.send("GET", path, None).await?;
        let bytes = resp.into_body().collect().await?.to_bytes();
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
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&bytes)?)
    }
}
