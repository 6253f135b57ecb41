//! TLS termination (docs/tls.md): rustls with the ring provider, TLS 1.2 and 1.3, the AEAD
//! ECDHE suites of Mozilla's "intermediate" profile (rustls offers no other kind), ALPN `h2`
//! then `http/1.1`.
//!
//! A service's certificates sit behind an [`ArcSwap`] in its [`CertStore`], which rustls asks
//! for a certificate on each handshake (SNI picks by name). Replacing them changes what new
//! handshakes get; a connection already open keeps the session it negotiated.

pub mod x509;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
pub use x509::CertFacts;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{0} holds no PEM private key (PKCS#8, RSA or EC)")]
    NoKey(PathBuf),
    #[error("{0}: {1}")]
    Pem(PathBuf, String),
    #[error("the key {key} does not match the certificate {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("the key {0} is of a type rustls cannot sign with: {1}")]
    UnsupportedKey(PathBuf, String),
    #[error("{0}: the certificate cannot be read (not X.509 DER inside the PEM)")]
    BadCertificate(PathBuf),
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// Where a certificate came from, for `tls status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    File { cert: PathBuf, key: PathBuf },
    Acme,
}

/// One certificate ready for handshakes, with what it says about itself.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub facts: CertFacts,
    pub source: CertSource,
}

impl LoadedCert {
    /// From PEM text: the certificate first, then its chain; the key PKCS#8, RSA or SEC1.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        source: CertSource,
        shown_as: (&Path, &Path),
    ) -> Result<LoadedCert, TlsError> {
        let (cert_path, key_path) = (shown_as.0.to_path_buf(), shown_as.1.to_path_buf());
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem(cert_path.clone(), e.to_string()))?;
        let first = chain
            .first()
            .ok_or_else(|| TlsError::NoCertificate(cert_path.clone()))?;
        let facts =
            x509::parse(first).ok_or_else(|| TlsError::BadCertificate(cert_path.clone()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey(key_path.clone()),
            e => TlsError::Pem(key_path.clone(), e.to_string()),
        })?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| TlsError::UnsupportedKey(key_path.clone(), e.to_string()))?;
        let certified = CertifiedKey::new(chain, signing);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => {
                return Err(TlsError::KeyMismatch {
                    cert: cert_path,
                    key: key_path,
                })
            }
        }
        Ok(LoadedCert {
            key: Arc::new(certified),
            facts,
            source,
        })
    }

    /// From a certificate file and a key file.
    pub fn from_files(cert: &Path, key: &Path) -> Result<LoadedCert, TlsError> {
        let cert_pem = std::fs::read(cert).map_err(|e| TlsError::Read(cert.into(), e))?;
        let key_pem = std::fs::read(key).map_err(|e| TlsError::Read(key.into(), e))?;
        LoadedCert::from_pem(
            &cert_pem,
            &key_pem,
            CertSource::File {
                cert: cert.into(),
                key: key.into(),
            },
            (cert, key),
        )
    }

    /// Whether this certificate covers `name` (exactly, or by a `*.` wildcard one label deep).
    pub fn covers(&self, name: &str) -> bool {
        self.facts.names.iter().any(|n| name_matches(n, name))
    }
}

fn name_matches(pattern: &str, name: &str) -> bool {
    if pattern.eq_ignore_ascii_case(name) {
        return true;
    }
    match (pattern.strip_prefix("*."), name.split_once('.')) {
        (Some(suffix), Some((label, rest))) => {
            !label.is_empty() && suffix.eq_ignore_ascii_case(rest)
        }
        _ => false,
    }
}

/// The last attempt to (re)load or renew a service's certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Unix seconds.
    pub at: i64,
    pub error: Option<String>,
}

/// The ALPN protocol of ACME's TLS-ALPN-01 validation (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A service's certificates: what handshakes pick from, swapped whole.
#[derive(Debug, Default)]
pub struct CertStore {
    certs: ArcSwap<Vec<LoadedCert>>,
    last_attempt: Mutex<Option<Attempt>>,
    /// Pending TLS-ALPN-01 challenges (RFC 8737): the validation certificate for a domain,
    /// presented only to a handshake that offers `acme-tls/1` for that name. Read only for
    /// such handshakes, so the lock is never on the way of a client's.
    acme_challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl CertStore {
    pub fn new(certs: Vec<LoadedCert>) -> Arc<CertStore> {
        Arc::new(CertStore {
            certs: ArcSwap::from_pointee(certs),
            last_attempt: Mutex::new(None),
            acme_challenges: Mutex::new(HashMap::new()),
        })
    }

    /// Present `key` to an ACME server validating `domain` with TLS-ALPN-01.
    pub fn insert_acme_challenge(&self, domain: &str, key: Arc<CertifiedKey>) {
        if let Ok(mut m) = self.acme_challenges.lock() {
            m.insert(domain.to_ascii_lowercase(), key);
        }
    }

    pub fn remove_acme_challenge(&self, domain: &str) {
        if let Ok(mut m) = self.acme_challenges.lock() {
            m.remove(&domain.to_ascii_lowercase());
        }
    }

    fn acme_challenge(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        self.acme_challenges
            .lock()
            .ok()?
            .get(&domain.to_ascii_lowercase())
            .cloned()
    }

    /// New handshakes get these; connections already open keep theirs.
    pub fn replace(&self, certs: Vec<LoadedCert>) {
        self.certs.store(Arc::new(certs));
    }

    pub fn certs(&self) -> Arc<Vec<LoadedCert>> {
        self.certs.load_full()
    }

    pub fn record_attempt(&self, error: Option<String>) {
        if let Ok(mut last) = self.last_attempt.lock() {
            *last = Some(Attempt {
                at: unix_now(),
                error,
            });
        }
    }

    pub fn last_attempt(&self) -> Option<Attempt> {
        self.last_attempt.lock().ok().and_then(|l| l.clone())
    }

    /// The certificate for a handshake: the first that covers the SNI name, else the first.
    pub fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        server_name
            .and_then(|n| certs.iter().find(|c| c.covers(n)))
            .or_else(|| certs.first())
            .map(|c| c.key.clone())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // An ACME server validating TLS-ALPN-01 offers `acme-tls/1` alone and must get the
        // challenge certificate or nothing (RFC 8737 §3), never the service's own.
        if hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN))
        {
            return hello.server_name().and_then(|n| self.acme_challenge(n));
        }
        self.pick(hello.server_name())
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The rustls server side for a service: its certificates, ALPN `h2` (when `http2`) and
/// `http/1.1` (and `acme-tls/1` for ACME's validation), session tickets for cheap resumption.
pub fn server_config(
    store: Arc<CertStore>,
    http2: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    // Last: chosen only by a client that offers nothing else (an ACME server validating
    // TLS-ALPN-01); such a connection is closed once its handshake is done.
    config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Setup(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Certificates from files, reloaded when a file's modification time or size changes.
#[derive(Debug)]
pub struct FileCerts {
    pairs: Vec<(PathBuf, PathBuf)>,
    seen: Mutex<Vec<Stamp>>,
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl FileCerts {
    pub fn new(pairs: Vec<(PathBuf, PathBuf)>) -> FileCerts {
        FileCerts {
            pairs,
            seen: Mutex::new(Vec::new()),
        }
    }

    fn stamps(&self) -> Vec<Stamp> {
        self.pairs
            .iter()
            .flat_map(|(c, k)| [stamp(c), stamp(k)])
            .collect()
    }

    /// Load every pair (all or nothing).
    pub fn load(&self) -> Result<Vec<LoadedCert>, TlsError> {
        let before = self.stamps();
        let certs = self
            .pairs
            .iter()
            .map(|(c, k)| LoadedCert::from_files(c, k))
            .collect::<Result<Vec<_>, _>>()?;
        if let Ok(mut seen) = self.seen.lock() {
            *seen = before;
        }
        Ok(certs)
    }

    /// Reload into `store` when a file changed since the last load (or always, when `force`).
    /// A pair that fails to load leaves the certificates in use as they are. `Ok(true)`: the
    /// store was replaced.
    pub fn reload(&self, store: &CertStore, force: bool) -> Result<bool, TlsError> {
        let now = self.stamps();
        let changed = self.seen.lock().map_or(true, |seen| *seen != now);
        if !changed && !force {
            return Ok(false);
        }
        match self.load() {
            Ok(certs) => {
                store.replace(certs);
                store.record_attempt(None);
                Ok(true)
            }
            Err(e) => {
                // Seen, so a half-written file is not retried every tick until it changes again.
                if let Ok(mut seen) = self.seen.lock() {
                    *seen = now;
                }
                store.record_attempt(Some(e.to_string()));
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_dates() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("A.test", "a.TEST"));
        assert_eq!(x509::days_from_civil(1970, 1, 1), 0);
        assert_eq!(x509::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(x509::rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }
}
