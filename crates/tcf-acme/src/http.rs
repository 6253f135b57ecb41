//! One HTTP/1.1 exchange per call on hyper, over rustls for https (the ACME server's CA, or
//! the web's roots). ACME traffic is a few requests per certificate: no pool is needed.

use crate::AcmeError;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

pub struct Http {
    tls: Arc<rustls::ClientConfig>,
}

pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

impl Http {
    /// Trusting `ca` (PEM, for a private ACME server) as well as the web's roots.
    pub fn new(ca: Option<&Path>) -> Result<Http, AcmeError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = ca {
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| AcmeError::Ca(format!("{}: {e}", ca.display())))?;
            for c in certs {
                let c = c.map_err(|e| AcmeError::Ca(format!("{}: {e}", ca.display())))?;
                roots
                    .add(c)
                    .map_err(|e| AcmeError::Ca(format!("{}: {e}", ca.display())))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Ca(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Http { tls: Arc::new(tls) })
    }

    pub async fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Answer, AcmeError> {
        tokio::time::timeout(TIMEOUT, self.exchange(method, url, body))
            .await
            .map_err(|_| AcmeError::Http(format!("{url}: no answer within {TIMEOUT:?}")))?
    }

    async fn exchange(
        &self,
        method: Method,
        url: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Answer, AcmeError> {
        let fail = |e: String| AcmeError::Http(format!("{url}: {e}"));
        let uri: Uri = url.parse().map_err(|e| fail(format!("invalid URL: {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(fail("not an http(s) URL".into())),
        };
        let host = uri
            .host()
            .ok_or_else(|| fail("no host".into()))?
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(
                http::header::HOST,
                uri.authority().map_or(host.as_str(), |a| a.as_str()),
            )
            .header(http::header::USER_AGENT, "tcf-platform-acme");
        let body = match body {
            Some((bytes, content_type)) => {
                req = req.header(http::header::CONTENT_TYPE, content_type);
                Full::new(Bytes::from(bytes))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(|e| fail(e.to_string()))?;
        let resp = if https {
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|e| fail(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| fail(format!("TLS: {e}")))?;
            send(TokioIo::new(tls), req).await
        } else {
            send(TokioIo::new(tcp), req).await
        }
        .map_err(fail)?;
        Ok(resp)
    }
}

async fn send<I>(io: I, req: Request<Full<Bytes>>) -> Result<Answer, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    conn.abort();
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}
