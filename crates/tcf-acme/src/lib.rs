//! An ACME client (RFC 8555) for the proxy's certificates: an ES256 account, orders for a
//! service's domains, HTTP-01 challenges answered by the service's own plain listener
//! ([`Challenges`]) or TLS-ALPN-01 (RFC 8737) by its HTTPS listener ([`CertStore`]), a fresh
//! P-256 key and CSR per certificate. Account and certificates are
//! kept by [`AcmeState`] in the state directory, readable by the owner only.

mod http;

use ::http::Method;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tcf_proxy::plain::Challenges;
use tcf_proxy::tls::CertStore;

pub use http::Http;

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("the ACME server's CA: {0}")]
    Ca(String),
    #[error("ACME request failed: {0}")]
    Http(String),
    #[error("the ACME server refused {what}: {status} {detail}")]
    Refused {
        what: String,
        status: u16,
        detail: String,
    },
    #[error("the ACME server answered {0} without what RFC 8555 requires")]
    Protocol(String),
    #[error("authorization for {domain} failed: {detail}")]
    Authorization { domain: String, detail: String },
    #[error("the order did not complete within {0:?}")]
    Timeout(Duration),
    #[error("account key: {0}")]
    Key(String),
    #[error("cannot use {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// How the ACME server is shown that we control a domain.
#[derive(Clone, Copy)]
pub enum Validation<'a> {
    /// HTTP-01 (RFC 8555 §8.3): the answer served by the service's plain listener.
    Http01(&'a Challenges),
    /// TLS-ALPN-01 (RFC 8737): a validation certificate presented by the service's HTTPS
    /// listener to a handshake offering `acme-tls/1`; for services without a plain port.
    TlsAlpn01(&'a CertStore),
}

impl Validation<'_> {
    fn challenge_type(&self) -> &'static str {
        match self {
            Validation::Http01(_) => "http-01",
            Validation::TlsAlpn01(_) => "tls-alpn-01",
        }
    }
}

/// Something to take down once an order is over: an HTTP-01 token or a TLS-ALPN-01 domain.
enum Posted {
    Token(String),
    Domain(String),
}

/// The TLS-ALPN-01 validation certificate for `domain` (RFC 8737 §3): self-signed, the domain
/// as its only subjectAltName, and the critical acmeIdentifier extension holding the SHA-256
/// of the key authorization.
pub fn tls_alpn_certificate(
    domain: &str,
    key_authorization: &str,
) -> Result<Arc<CertifiedKey>, AcmeError> {
    let digest = ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes());
    let key = rcgen::KeyPair::generate().map_err(|e| AcmeError::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])
        .map_err(|e| AcmeError::Key(e.to_string()))?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest.as_ref()));
    let cert = params
        .self_signed(&key)
        .map_err(|e| AcmeError::Key(e.to_string()))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| AcmeError::Key(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// What an order produced: the chain (leaf first) and its key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// A new ES256 account key (PKCS#8).
pub fn generate_account_key() -> Result<Vec<u8>, AcmeError> {
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .map(|k| k.as_ref().to_vec())
        .map_err(|e| AcmeError::Key(e.to_string()))
}

pub(crate) fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 3);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// An account on one ACME server.
pub struct AcmeClient {
    http: Http,
    directory: Value,
    key: EcdsaKeyPair,
    jwk: Value,
    kid: String,
    nonce: Mutex<Option<String>>,
    rng: SystemRandom,
    /// How often orders and authorizations are polled.
    pub poll: Duration,
    /// How long an order may take.
    pub deadline: Duration,
}

impl AcmeClient {
    /// Fetch the directory and find (or create) the account of `account_key`.
    pub async fn connect(
        directory_url: &str,
        ca: Option<&Path>,
        account_key: &[u8],
        email: Option<&str>,
    ) -> Result<AcmeClient, AcmeError> {
        let http = Http::new(ca)?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, account_key, &rng)
            .map_err(|e| AcmeError::Key(e.to_string()))?;
        let point = key.public_key().as_ref();
        if point.len() != 65 {
            return Err(AcmeError::Key("not an uncompressed P-256 point".into()));
        }
        let jwk = json!({"crv": "P-256", "kty": "EC", "x": b64url(&point[1..33]), "y": b64url(&point[33..])});
        let answer = http.request(Method::GET, directory_url, None).await?;
        let directory: Value = serde_json::from_slice(&answer.body)
            .map_err(|_| AcmeError::Protocol(format!("{directory_url} (not a directory)")))?;
        let mut client = AcmeClient {
            http,
            directory,
            key,
            jwk,
            kid: String::new(),
            nonce: Mutex::new(None),
            rng,
            poll: Duration::from_secs(1),
            deadline: Duration::from_secs(120),
        };
        let mut account = json!({"termsOfServiceAgreed": true});
        if let Some(email) = email {
            account["contact"] = json!([format!("mailto:{email}")]);
        }
        let url = client.endpoint("newAccount")?;
        let answer = client.post(&url, Some(&account), "account").await?;
        client.kid = answer
            .header("location")
            .ok_or_else(|| AcmeError::Protocol("newAccount (no Location)".into()))?;
        Ok(client)
    }

    fn endpoint(&self, name: &str) -> Result<String, AcmeError> {
        self.directory[name]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| AcmeError::Protocol(format!("the directory (no {name})")))
    }

    /// `token.thumbprint` (RFC 8555 §8.1): the JWK's members in lexical order, no spaces.
    pub fn key_authorization(&self, token: &str) -> String {
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            self.jwk["x"].as_str().unwrap_or_default(),
            self.jwk["y"].as_str().unwrap_or_default()
        );
        let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
        format!("{token}.{}", b64url(digest.as_ref()))
    }

    async fn fresh_nonce(&self) -> Result<String, AcmeError> {
        if let Some(n) = self.nonce.lock().ok().and_then(|mut n| n.take()) {
            return Ok(n);
        }
        let url = self.endpoint("newNonce")?;
        let answer = self.http.request(Method::HEAD, &url, None).await?;
        answer
            .header("replay-nonce")
            .ok_or_else(|| AcmeError::Protocol("newNonce (no Replay-Nonce)".into()))
    }

    /// A signed POST (`payload` `None`: POST-as-GET), retried on `badNonce` as RFC 8555
    /// §6.5 asks.
    async fn post(
        &self,
        url: &str,
        payload: Option<&Value>,
        what: &str,
    ) -> Result<http::Answer, AcmeError> {
        for _ in 0..5 {
            let nonce = self.fresh_nonce().await?;
            let mut protected = json!({"alg": "ES256", "nonce": nonce, "url": url});
            if self.kid.is_empty() {
                protected["jwk"] = self.jwk.clone();
            } else {
                protected["kid"] = json!(self.kid);
            }
            let protected = b64url(protected.to_string().as_bytes());
            let payload = payload.map_or(String::new(), |p| b64url(p.to_string().as_bytes()));
            let signature = self
                .key
                .sign(&self.rng, format!("{protected}.{payload}").as_bytes())
                .map_err(|e| AcmeError::Key(e.to_string()))?;
            let body = json!({"protected": protected, "payload": payload, "signature": b64url(signature.as_ref())});
            let answer = self
                .http
                .request(
                    Method::POST,
                    url,
                    Some((body.to_string().into_bytes(), "application/jose+json")),
                )
                .await?;
            if let (Some(n), Ok(mut slot)) = (answer.header("replay-nonce"), self.nonce.lock()) {
                *slot = Some(n);
            }
            if answer.status < 400 {
                return Ok(answer);
            }
            let problem: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            if problem["type"] == "urn:ietf:params:acme:error:badNonce" {
                continue;
            }
            return Err(AcmeError::Refused {
                what: what.into(),
                status: answer.status,
                detail: problem["detail"].as_str().map_or_else(
                    || String::from_utf8_lossy(&answer.body).into_owned(),
                    str::to_string,
                ),
            });
        }
        Err(AcmeError::Protocol(format!("{what} (badNonce five times)")))
    }

    async fn post_json(
        &self,
        url: &str,
        payload: Option<&Value>,
        what: &str,
    ) -> Result<(Value, Option<String>), AcmeError> {
        let answer = self.post(url, payload, what).await?;
        let v = serde_json::from_slice(&answer.body)
            .map_err(|_| AcmeError::Protocol(format!("{what} (not JSON)")))?;
        Ok((v, answer.header("location")))
    }

    /// Order a certificate for `domains`, each validated the way `validation` says.
    pub async fn obtain(
        &self,
        domains: &[String],
        validation: Validation<'_>,
    ) -> Result<Issued, AcmeError> {
        let started = std::time::Instant::now();
        let identifiers: Vec<Value> = domains
            .iter()
            .map(|d| json!({"type": "dns", "value": d}))
            .collect();
        let new_order = self.endpoint("newOrder")?;
        let (order, order_url) = self
            .post_json(
                &new_order,
                Some(&json!({"identifiers": identifiers})),
                "the order",
            )
            .await?;
        let order_url =
            order_url.ok_or_else(|| AcmeError::Protocol("newOrder (no Location)".into()))?;
        let mut posted = Vec::new();
        let result = self
            .authorize(&order, validation, &mut posted, started)
            .await;
        for p in &posted {
            match (p, validation) {
                (Posted::Token(t), Validation::Http01(challenges)) => challenges.remove(t),
                (Posted::Domain(d), Validation::TlsAlpn01(store)) => store.remove_acme_challenge(d),
                _ => {}
            }
        }
        result?;
        // A fresh key per certificate; the CSR names every domain.
        let key = rcgen::KeyPair::generate().map_err(|e| AcmeError::Key(e.to_string()))?;
        let csr = rcgen::CertificateParams::new(domains.to_vec())
            .and_then(|p| p.serialize_request(&key))
            .map_err(|e| AcmeError::Key(e.to_string()))?;
        let finalize = order["finalize"]
            .as_str()
            .ok_or_else(|| AcmeError::Protocol("the order (no finalize)".into()))?;
        let (mut order, _) = self
            .post_json(
                finalize,
                Some(&json!({"csr": b64url(csr.der())})),
                "the finalization",
            )
            .await?;
        while order["status"] != "valid" {
            if order["status"] == "invalid" {
                return Err(AcmeError::Refused {
                    what: "the order".into(),
                    status: 200,
                    detail: order["error"].to_string(),
                });
            }
            if started.elapsed() > self.deadline {
                return Err(AcmeError::Timeout(self.deadline));
            }
            tokio::time::sleep(self.poll).await;
            order = self.post_json(&order_url, None, "the order").await?.0;
        }
        let cert_url = order["certificate"]
            .as_str()
            .ok_or_else(|| AcmeError::Protocol("the valid order (no certificate)".into()))?;
        let chain = self.post(cert_url, None, "the certificate").await?;
        Ok(Issued {
            chain_pem: String::from_utf8_lossy(&chain.body).into_owned(),
            key_pem: key.serialize_pem(),
        })
    }

    async fn authorize(
        &self,
        order: &Value,
        validation: Validation<'_>,
        posted: &mut Vec<Posted>,
        started: std::time::Instant,
    ) -> Result<(), AcmeError> {
        let wanted = validation.challenge_type();
        let authorizations = order["authorizations"]
            .as_array()
            .ok_or_else(|| AcmeError::Protocol("the order (no authorizations)".into()))?;
        for authz_url in authorizations.iter().filter_map(Value::as_str) {
            let (mut authz, _) = self.post_json(authz_url, None, "an authorization").await?;
            let domain = authz["identifier"]["value"]
                .as_str()
                .unwrap_or("?")
                .to_string();
            if authz["status"] == "valid" {
                continue;
            }
            let challenge = authz["challenges"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == wanted))
                .cloned()
                .ok_or_else(|| AcmeError::Authorization {
                    domain: domain.clone(),
                    detail: format!("no {wanted} challenge offered"),
                })?;
            let (Some(token), Some(url)) = (challenge["token"].as_str(), challenge["url"].as_str())
            else {
                return Err(AcmeError::Protocol("a challenge (no token or url)".into()));
            };
            let key_authorization = self.key_authorization(token);
            match validation {
                Validation::Http01(challenges) => {
                    challenges.insert(token, &key_authorization);
                    posted.push(Posted::Token(token.to_string()));
                }
                Validation::TlsAlpn01(store) => {
                    store.insert_acme_challenge(
                        &domain,
                        tls_alpn_certificate(&domain, &key_authorization)?,
                    );
                    posted.push(Posted::Domain(domain.clone()));
                }
            }
            self.post_json(url, Some(&json!({})), "the challenge")
                .await?;
            while authz["status"] != "valid" {
                if authz["status"] == "invalid" {
                    let detail = authz["challenges"]
                        .as_array()
                        .and_then(|cs| cs.iter().find_map(|c| c["error"]["detail"].as_str()))
                        .unwrap_or("invalid")
                        .to_string();
                    return Err(AcmeError::Authorization { domain, detail });
                }
                if started.elapsed() > self.deadline {
                    return Err(AcmeError::Timeout(self.deadline));
                }
                tokio::time::sleep(self.poll).await;
                authz = self.post_json(authz_url, None, "an authorization").await?.0;
            }
        }
        Ok(())
    }
}

/// A service's ACME files in the state directory: `account.key`, `cert.pem`, `key.pem`, all
/// 0600 in a 0700 directory.
pub struct AcmeState {
    pub dir: PathBuf,
}

impl AcmeState {
    pub fn new(state_dir: &Path, service: &str) -> AcmeState {
        AcmeState {
            dir: state_dir.join("acme").join(service),
        }
    }

    fn write_private(&self, name: &str, bytes: &[u8]) -> Result<(), AcmeError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| AcmeError::Io(p, e)
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io(&self.dir))?;
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, self.dir.join(name)).map_err(io(&self.dir.join(name)))
    }

    /// The account key, made on first use.
    pub fn account_key(&self) -> Result<Vec<u8>, AcmeError> {
        let path = self.dir.join("account.key");
        match std::fs::read(&path) {
            Ok(k) => Ok(k),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = generate_account_key()?;
                self.write_private("account.key", &key)?;
                Ok(key)
            }
            Err(e) => Err(AcmeError::Io(path, e)),
        }
    }

    /// Key first, then the chain: a reader that sees the new chain finds its key.
    pub fn save(&self, issued: &Issued) -> Result<(), AcmeError> {
        self.write_private("key.pem", issued.key_pem.as_bytes())?;
        self.write_private("cert.pem", issued.chain_pem.as_bytes())
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// The certificate kept from an earlier run, if any.
    pub fn load(&self) -> Option<tcf_proxy::tls::LoadedCert> {
        let mut cert =
            tcf_proxy::tls::LoadedCert::from_files(&self.cert_path(), &self.key_path()).ok()?;
        cert.source = tcf_proxy::tls::CertSource::Acme;
        Some(cert)
    }
}

/// Turn what an order produced into a certificate for the proxy.
pub fn loaded(
    issued: &Issued,
    state: &AcmeState,
) -> Result<tcf_proxy::tls::LoadedCert, tcf_proxy::tls::TlsError> {
    tcf_proxy::tls::LoadedCert::from_pem(
        issued.chain_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        tcf_proxy::tls::CertSource::Acme,
        (&state.cert_path(), &state.key_path()),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64url_without_padding() {
        assert_eq!(super::b64url(b""), "");
        assert_eq!(super::b64url(b"f"), "Zg");
        assert_eq!(super::b64url(b"fo"), "Zm8");
        assert_eq!(super::b64url(b"foo"), "Zm9v");
        assert_eq!(super::b64url(&[0xfb, 0xff]), "-_8");
    }
}
