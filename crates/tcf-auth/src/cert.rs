//! The remote API's certificate: from the configured PEM files, or a self-signed one made on
//! first start and kept in the state directory (0600), so its fingerprint stays the same across
//! restarts and clients can pin it (`--fingerprint`).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const SELF_SIGNED_CERT: &str = "api-cert.pem";
pub const SELF_SIGNED_KEY: &str = "api-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read the API certificate or key {path}: {detail}\nhint: check [daemon] tls_cert and tls_key (PEM files), or remove both to use a self-signed certificate")]
    Read { path: PathBuf, detail: String },
    #[error("cannot write the self-signed API certificate {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
    #[error("the API certificate and key do not make a TLS configuration: {0}")]
    Tls(String),
}

pub struct ApiCert {
    pub server_config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the leaf certificate's DER, lowercase hex.
    pub fingerprint_sha256: String,
    pub cert_path: PathBuf,
    /// Made now (first start), rather than read.
    pub generated: bool,
}

/// Lowercase hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A fingerprint as users paste it (`AB:CD:…` or hex, any case) in the form we print.
pub fn normalize_fingerprint(text: &str) -> Option<String> {
    let hex: String = text
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

/// The certificate from `cert`/`key` when both are given, else the self-signed one in
/// `state_dir` (made for `names` the first time).
pub fn load_or_generate(
    state_dir: &Path,
    files: Option<(&Path, &Path)>,
    names: &[String],
) -> Result<ApiCert, CertError> {
    let (cert_path, key_path, generated) = match files {
        Some((c, k)) => (c.to_path_buf(), k.to_path_buf(), false),
        None => {
            let c = state_dir.join(SELF_SIGNED_CERT);
            let k = state_dir.join(SELF_SIGNED_KEY);
            let generated = !c.exists() || !k.exists();
            if generated {
                let made = rcgen::generate_simple_self_signed(names.to_vec())
                    .map_err(|e| CertError::Generate(e.to_string()))?;
                for (path, pem) in [
                    (&k, made.signing_key.serialize_pem()),
                    (&c, made.cert.pem()),
                ] {
                    let _ = std::fs::remove_file(path);
                    crate::files::create_private_file(path, pem.as_bytes()).map_err(|source| {
                        CertError::Write {
                            path: path.clone(),
                            source,
                        }
                    })?;
                }
            }
            (c, k, generated)
        }
    };
    let read_err = |path: &Path, detail: String| CertError::Read {
        path: path.to_path_buf(),
        detail,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| read_err(&cert_path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err(&cert_path, e.to_string()))?;
    let Some(leaf) = certs.first() else {
        return Err(read_err(&cert_path, "no certificate in the file".into()));
    };
    let fingerprint_sha256 = fingerprint(leaf);
    let key =
        PrivateKeyDer::from_pem_file(&key_path).map_err(|e| read_err(&key_path, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CertError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| CertError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ApiCert {
        server_config: Arc::new(config),
        fingerprint_sha256,
        cert_path,
        generated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once_and_keeps_its_fingerprint() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = load_or_generate(dir.path(), None, &names).unwrap();
        assert!(first.generated);
        assert_eq!(first.fingerprint_sha256.len(), 64);
        let key_mode = std::fs::metadata(dir.path().join(SELF_SIGNED_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let again = load_or_generate(dir.path(), None, &names).unwrap();
        assert!(!again.generated);
        assert_eq!(again.fingerprint_sha256, first.fingerprint_sha256);
        // Given as files, the same certificate gives the same fingerprint.
        let c = dir.path().join(SELF_SIGNED_CERT);
        let k = dir.path().join(SELF_SIGNED_KEY);
        let other = tempfile::tempdir().unwrap();
        let from_files = load_or_generate(other.path(), Some((&c, &k)), &names).unwrap();
        assert_eq!(from_files.fingerprint_sha256, first.fingerprint_sha256);
        let err = load_or_generate(other.path(), Some((&k, &k)), &names)
            .err()
            .unwrap();
        assert!(err.to_string().contains("tls_cert"), "{err}");
    }

    #[test]
    fn fingerprints_are_accepted_as_users_paste_them() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(normalize_fingerprint(&colons), Some(hex.clone()));
        assert_eq!(normalize_fingerprint(&format!("sha256:{hex}")), Some(hex));
        assert_eq!(normalize_fingerprint("abc"), None);
    }
}
