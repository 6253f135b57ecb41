//! The connection to a remote daemon: TCP, then TLS (rustls) checked either against a CA file
//! or by pinning the certificate's SHA-256 fingerprint (what the daemon prints at start and
//! `status --format json` shows as `api.fingerprint_sha256`).

use crate::ClientError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// PEM reading for `--ca` files.
pub mod pem {
    pub use rustls::pki_types::pem::PemObject;
    pub use rustls::pki_types::CertificateDer;
}

/// A connection the client can speak HTTP/1.1 over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// How the server's certificate is trusted.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Exactly this certificate (SHA-256 of its DER, lowercase hex).
    Fingerprint(String),
    /// Certificates issued by these roots (PEM), for the URL's host name.
    Ca(Vec<CertificateDer<'static>>),
}

pub struct Remote {
    /// `https://HOST:PORT`, as given.
    pub url: String,
    host: String,
    port: u16,
    pub(crate) token: String,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Remote {
    /// A remote daemon at `url` (`https://HOST:PORT`), reached with `token`.
    pub fn new(url: &str, token: &str, trust: Trust) -> Result<Remote, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("{url}: the remote API is HTTPS only; use https://HOST:PORT"))?
            .trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse::<u16>()
                    .map_err(|_| format!("{url}: {p:?} is not a port"))?,
            ),
            _ => return Err(format!("{url}: name the port, https://HOST:PORT")),
        };
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(
                "a remote daemon needs a token: set TCF_TOKEN or pass --token-file FILE".into(),
            );
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut tls = match trust {
            Trust::Fingerprint(fp) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned {
                    sha256: fp,
                    provider: provider(),
                }))
                .with_no_client_auth(),
            Trust::Ca(roots) => {
                let mut store = rustls::RootCertStore::empty();
                for r in roots {
                    store.add(r).map_err(|e| {
                        format!("the CA file has a certificate rustls refuses: {e}")
                    })?;
                }
                builder.with_root_certificates(store).with_no_client_auth()
            }
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Remote {
            url: url.to_string(),
            host,
            port,
            token,
            tls: Arc::new(tls),
        })
    }

    pub(crate) async fn connect(&self) -> Result<Box<dyn Io>, ClientError> {
        let err = |detail: String| ClientError::Remote {
            url: self.url.clone(),
            detail,
        };
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(self.host.clone()).map_err(|e| err(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| err(format!("TLS: {e}")))?;
        Ok(Box::new(tls))
    }
}

/// Accepts exactly one certificate, by its SHA-256; signatures are still checked, so the
/// server must hold that certificate's key.
#[derive(Debug)]
struct Pinned {
    sha256: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = hex::encode(Sha256::digest(end_entity.as_ref()));
        if got == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate has fingerprint {got}, not the pinned {}",
                self.sha256
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_tokens_are_checked() {
        let fp = Trust::Fingerprint("00".repeat(32));
        assert!(Remote::new("http://h:1", "t", fp.clone())
            .unwrap_err()
            .contains("HTTPS only"));
        assert!(Remote::new("https://h", "t", fp.clone())
            .unwrap_err()
            .contains("port"));
        assert!(Remote::new("https://h:1", " ", fp.clone())
            .unwrap_err()
            .contains("TCF_TOKEN"));
        let r = Remote::new("https://[::1]:8443/", "t", fp).unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", 8443));
    }
}
