//! Certificates: one evaluation ([`evaluate`]) for a certificate chain whether it was read from
//! a file the platform uses or taken from a live handshake with an endpoint it serves or
//! depends on ([`probe`]); and the probe for TLS 1.0/1.1 ([`legacy_versions_offered`]), a raw
//! ClientHello, since rustls cannot speak those versions.

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a connection, a handshake or an answer may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What a certificate says about itself, for the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub subject: String,
    pub issuer: String,
    /// DNS names and IP addresses of subjectAltName.
    pub names: Vec<String>,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// `RSA 2048`, `EC 256`, `Ed25519`...
    pub key: String,
    /// Set when the key is too small: RSA (or DSA) under 2048 bits, EC under 256.
    pub weak_key: bool,
    /// The signature algorithm, by name where known, else its OID.
    pub signature: String,
    /// Set when the signature uses a broken hash (MD2, MD5, SHA-1).
    pub weak_signature: bool,
    pub self_signed: bool,
}

/// Read what a DER certificate says.
pub fn facts(der: &[u8]) -> Result<CertFacts, String> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_string()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default())
                            .to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default())
                            .to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let (key, weak_key) = match cert.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
            let bits = rsa.key_size();
            (format!("RSA {bits}"), bits < 2048)
        }
        Ok(x509_parser::public_key::PublicKey::EC(ec)) => {
            let bits = ec.key_size();
            (format!("EC {bits}"), bits < 256)
        }
        Ok(x509_parser::public_key::PublicKey::DSA(y)) => {
            let bits = y.len() * 8;
            (format!("DSA {bits}"), bits < 2048)
        }
        _ => {
            let oid = cert.public_key().algorithm.algorithm.to_id_string();
            let name = match oid.as_str() {
                "1.3.101.112" => "Ed25519".to_string(),
                "1.3.101.113" => "Ed448".to_string(),
                other => format!("key {other}"),
            };
            (name, false)
        }
    };
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    let (signature, weak_signature) = match oid.as_str() {
        "1.2.840.113549.1.1.2" => ("md2WithRSAEncryption".to_string(), true),
        "1.2.840.113549.1.1.4" => ("md5WithRSAEncryption".to_string(), true),
        "1.2.840.113549.1.1.5" => ("sha1WithRSAEncryption".to_string(), true),
        "1.2.840.10045.4.1" => ("ecdsa-with-SHA1".to_string(), true),
        "1.2.840.10040.4.3" => ("dsa-with-sha1".to_string(), true),
        "1.2.840.113549.1.1.11" => ("sha256WithRSAEncryption".to_string(), false),
        "1.2.840.113549.1.1.12" => ("sha384WithRSAEncryption".to_string(), false),
        "1.2.840.113549.1.1.13" => ("sha512WithRSAEncryption".to_string(), false),
        "1.2.840.113549.1.1.10" => ("RSASSA-PSS".to_string(), false),
        "1.2.840.10045.4.3.2" => ("ecdsa-with-SHA256".to_string(), false),
        "1.2.840.10045.4.3.3" => ("ecdsa-with-SHA384".to_string(), false),
        "1.2.840.10045.4.3.4" => ("ecdsa-with-SHA512".to_string(), false),
        "1.3.101.112" => ("Ed25519".to_string(), false),
        other => (other.to_string(), false),
    };
    Ok(CertFacts {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
        names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        key,
        weak_key,
        signature,
        weak_signature,
    })
}

/// RFC 3339 (UTC, seconds) of a Unix time.
pub fn rfc3339(seconds: i64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_secs(seconds.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// How close to its end a certificate is: `(days left, expired)`, the one rule for
/// TCF-TLS-001 whatever the certificate's source.
pub fn days_left(not_after: i64, now: i64) -> (i64, bool) {
    ((not_after - now).div_euclid(86_400), not_after <= now)
}

/// The roots a chain must lead to: the system's, plus the CAs the config names.
pub struct Roots {
    certs: Vec<CertificateDer<'static>>,
    /// No system bundle: webpki-roots (Mozilla's) stand in.
    builtin: bool,
    /// Where they came from, for the findings.
    pub describe: String,
}

impl Roots {
    /// `SSL_CERT_FILE` when set (as OpenSSL reads it), else Debian's bundle, else the Mozilla
    /// roots built in; plus `extra` PEM files (an ACME server's `ca`).
    pub fn load(extra: &[PathBuf]) -> Roots {
        let system = std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
        let mut certs = Vec::new();
        let mut from = Vec::new();
        let mut builtin = false;
        match read_pem_chain(&system) {
            Ok(found) if !found.is_empty() => {
                certs.extend(found);
                from.push(system.display().to_string());
            }
            _ => {
                builtin = true;
                from.push("the Mozilla roots built in".to_string());
            }
        }
        for path in extra {
            if let Ok(found) = read_pem_chain(path) {
                certs.extend(found);
                from.push(path.display().to_string());
            }
        }
        Roots {
            certs,
            builtin,
            describe: from.join(", "),
        }
    }

    fn anchors(&self) -> Vec<rustls::pki_types::TrustAnchor<'_>> {
        let mut anchors: Vec<_> = self
            .certs
            .iter()
            .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
            .collect();
        if self.builtin {
            anchors.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        anchors
    }
}

/// Every certificate of a PEM file, in order.
pub fn read_pem_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// Everything wrong with a chain (leaf first) at `now`. `hostname`: the name a client asks
/// for, when the platform declares one. `trust`: whether to check the chain against `roots`
/// (not for a certificate trusted by pinning, such as the remote API's self-signed one).
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub leaf: Option<CertFacts>,
    /// TCF-TLS-001: (days left, expired).
    pub expiry: Option<(i64, bool)>,
    /// TCF-TLS-003: the names the certificate holds, when it does not cover the hostname.
    pub hostname_mismatch: Option<String>,
    /// TCF-TLS-004: why the chain is not trusted.
    pub untrusted: Option<String>,
    /// TCF-TLS-005: which certificate of the chain has which small key.
    pub weak_keys: Vec<String>,
    /// TCF-TLS-006: which certificate is signed with which broken hash.
    pub weak_signatures: Vec<String>,
    /// The leaf could not be read at all.
    pub unreadable: Option<String>,
}

pub fn evaluate(
    chain: &[CertificateDer<'_>],
    hostname: Option<&str>,
    roots: Option<&Roots>,
    now: i64,
) -> Evaluation {
    let mut out = Evaluation::default();
    let Some(leaf_der) = chain.first() else {
        out.unreadable = Some("no certificate".into());
        return out;
    };
    let leaf = match facts(leaf_der) {
        Ok(f) => f,
        Err(e) => {
            out.unreadable = Some(e);
            return out;
        }
    };
    out.expiry = Some(days_left(leaf.not_after, now));
    for (index, der) in chain.iter().enumerate() {
        let Ok(f) = facts(der) else { continue };
        // A root's own signature is never checked by clients: only what the chain's
        // certificates are signed with matters (the leaf's, even self-signed, included).
        let is_root = index > 0 && f.self_signed;
        let which = if index == 0 {
            "the leaf".to_string()
        } else {
            format!("chain certificate {index} ({})", f.subject)
        };
        if f.weak_key {
            out.weak_keys
                .push(format!("{which} has a {}-bit key", f.key));
        }
        if f.weak_signature && !is_root {
            out.weak_signatures
                .push(format!("{which} is signed with {}", f.signature));
        }
    }
    let end_entity = webpki::EndEntityCert::try_from(leaf_der);
    if let (Some(name), Ok(ee)) = (hostname, &end_entity) {
        let ok = ServerName::try_from(name)
            .map(|n| ee.verify_is_valid_for_subject_name(&n).is_ok())
            .unwrap_or(false);
        if !ok {
            out.hostname_mismatch = Some(if leaf.names.is_empty() {
                format!("no subjectAltName (subject {})", leaf.subject)
            } else {
                leaf.names.join(", ")
            });
        }
    }
    if let Some(roots) = roots {
        out.untrusted = match &end_entity {
            Err(e) => Some(format!("the leaf cannot be parsed for verification: {e}")),
            Ok(ee) => {
                // Expiry is TCF-TLS-001's: the chain is judged inside the leaf's validity.
                let at = now.clamp(leaf.not_before, leaf.not_after - 1).max(0) as u64;
                let anchors = roots.anchors();
                let provider = rustls::crypto::ring::default_provider();
                match ee.verify_for_usage(
                    provider.signature_verification_algorithms.all,
                    &anchors,
                    &chain[1..],
                    UnixTime::since_unix_epoch(Duration::from_secs(at)),
                    webpki::KeyUsage::server_auth(),
                    None,
                    None,
                ) {
                    Ok(_) => None,
                    Err(webpki::Error::UnknownIssuer) if leaf.self_signed => Some(format!(
                        "self-signed ({}), not issued by a CA in {}",
                        leaf.subject, roots.describe
                    )),
                    Err(webpki::Error::UnknownIssuer) => Some(format!(
                        "issued by {}, which leads to no root in {} (a missing intermediate, or a private CA)",
                        leaf.issuer, roots.describe
                    )),
                    Err(e) => Some(format!("the chain does not verify: {e:?}")),
                }
            }
        };
    }
    out.leaf = Some(leaf);
    out
}

/// How a TLS endpoint is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// TLS from the first byte (HTTPS).
    Direct,
    /// PostgreSQL: an SSLRequest first; a server answering `N` speaks no TLS.
    Postgres,
}

/// An endpoint as a handshake saw it.
#[derive(Debug, Clone)]
pub struct Served {
    pub chain: Vec<CertificateDer<'static>>,
    /// `TLSv1_3`, `TLSv1_2`.
    pub version: String,
}

/// Connect to `address`, handshake (sending `sni` when it is a name) and take the chain the
/// server presents. Nothing is verified here: [`evaluate`] judges the chain. `Ok(None)`: a
/// PostgreSQL server that does not offer TLS.
pub fn probe(address: &str, sni: Option<&str>, dialect: Dialect) -> Result<Option<Served>, String> {
    let mut stream = connect(address)?;
    if dialect == Dialect::Postgres {
        // SSLRequest: length 8, code 80877103.
        stream
            .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .map_err(|e| format!("{address}: {e}"))?;
        let mut answer = [0u8; 1];
        stream
            .read_exact(&mut answer)
            .map_err(|e| format!("{address}: no answer to SSLRequest: {e}"))?;
        if answer[0] != b'S' {
            return Ok(None);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TakeAnything(provider)))
        .with_no_client_auth();
    let server_name = server_name(address, sni)?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name)
        .map_err(|e| format!("{address}: {e}"))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut stream)
            .map_err(|e| format!("{address}: the TLS handshake failed: {e}"))?;
    }
    let chain = conn
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
        .unwrap_or_default();
    let version = conn
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    conn.send_close_notify();
    let _ = conn.complete_io(&mut stream);
    Ok(Some(Served { chain, version }))
}

fn connect(address: &str) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?
        .collect();
    let mut last = format!("{address}: no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(s) => {
                let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                return Ok(s);
            }
            Err(e) => last = format!("cannot connect to {address}: {e}"),
        }
    }
    Err(last)
}

fn server_name(address: &str, sni: Option<&str>) -> Result<ServerName<'static>, String> {
    if let Some(name) = sni {
        return ServerName::try_from(name.to_string())
            .map_err(|e| format!("{name:?} is not a server name: {e}"));
    }
    let host = address
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(address);
    ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?}: {e}"))
}

/// A verifier that accepts whatever the server presents: the audit reads the chain, it sends
/// nothing over the connection, and [`evaluate`] judges the chain afterwards. The handshake's
/// signature is accepted unchecked too, so a key too small for ring still shows its chain.
#[derive(Debug)]
struct TakeAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for TakeAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The protocol versions below TLS 1.2 the endpoint accepts: for each of TLS 1.0 and 1.1, a
/// ClientHello offering only that version (and the CBC suites those versions have) is sent
/// raw, and the version counts as offered when the server answers with a ServerHello for it.
/// A handshake alert, a ServerHello for another version or a closed connection: not offered.
pub fn legacy_versions_offered(
    address: &str,
    sni: Option<&str>,
    dialect: Dialect,
) -> Result<Vec<&'static str>, String> {
    let mut offered = Vec::new();
    for (name, version) in [("TLS 1.0", [3u8, 1u8]), ("TLS 1.1", [3, 2])] {
        let mut stream = connect(address)?;
        if dialect == Dialect::Postgres {
            stream
                .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
                .map_err(|e| format!("{address}: {e}"))?;
            let mut answer = [0u8; 1];
            stream
                .read_exact(&mut answer)
                .map_err(|e| format!("{address}: no answer to SSLRequest: {e}"))?;
            if answer[0] != b'S' {
                return Ok(offered);
            }
        }
        stream
            .write_all(&client_hello(version, sni))
            .map_err(|e| format!("{address}: {e}"))?;
        if server_hello_version(&mut stream) == Some(version) {
            offered.push(name);
        }
    }
    Ok(offered)
}

/// A TLS 1.0/1.1 ClientHello: the suites servers of that era agree to, SNI when named, the
/// curves and point formats ECDHE needs, and the renegotiation extension.
fn client_hello(version: [u8; 2], sni: Option<&str>) -> Vec<u8> {
    const SUITES: [u16; 10] = [
        0xc014, 0xc013, 0xc00a, 0xc009, 0x0039, 0x0033, 0x0035, 0x002f, 0x000a, 0x0005,
    ];
    let mut extensions = Vec::new();
    if let Some(name) = sni.filter(|n| n.parse::<std::net::IpAddr>().is_err()) {
        let name = name.as_bytes();
        let entry_len = name.len() + 3;
        extensions.extend_from_slice(&[0x00, 0x00]);
        extensions.extend_from_slice(&((entry_len + 2) as u16).to_be_bytes());
        extensions.extend_from_slice(&(entry_len as u16).to_be_bytes());
        extensions.push(0);
        extensions.extend_from_slice(&(name.len() as u16).to_be_bytes());
        extensions.extend_from_slice(name);
    }
    // supported_groups: x25519, secp256r1, secp384r1; ec_point_formats: uncompressed;
    // renegotiation_info: empty.
    extensions.extend_from_slice(&[0x00, 0x0a, 0x00, 0x08, 0x00, 0x06, 0x00, 0x1d, 0x00, 0x17]);
    extensions.extend_from_slice(&[0x00, 0x18]);
    extensions.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    extensions.extend_from_slice(&[0xff, 0x01, 0x00, 0x01, 0x00]);

    let mut body = Vec::new();
    body.extend_from_slice(&version);
    // The random need not be unpredictable: this handshake is never finished.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    for i in 0..32u32 {
        body.push((seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(37));
    }
    body.push(0); // no session id
    body.extend_from_slice(&((SUITES.len() * 2) as u16).to_be_bytes());
    for suite in SUITES {
        body.extend_from_slice(&suite.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null only
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);

    let mut handshake = vec![1u8]; // client_hello
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// The version of the ServerHello that answers, or `None` (an alert, anything else, nothing).
fn server_hello_version(stream: &mut TcpStream) -> Option<[u8; 2]> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).ok()?;
    if header[0] != 0x16 {
        return None;
    }
    // The handshake header and the server_version that starts a ServerHello.
    let mut start = [0u8; 6];
    stream.read_exact(&mut start).ok()?;
    (start[0] == 2).then_some([start[4], start[5]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_left_counts_whole_days_and_expiry() {
        assert_eq!(days_left(1000 + 86_400 * 3, 1000), (3, false));
        assert_eq!(days_left(1000 + 86_400 * 3 - 1, 1000), (2, false));
        assert_eq!(days_left(1000, 1000), (0, true));
        assert_eq!(days_left(0, 86_400 * 2), (-2, true));
    }

    #[test]
    fn a_client_hello_is_well_formed() {
        let hello = client_hello([3, 1], Some("example.test"));
        assert_eq!(&hello[..3], &[0x16, 3, 1]);
        let record_len = u16::from_be_bytes([hello[3], hello[4]]) as usize;
        assert_eq!(record_len, hello.len() - 5);
        assert_eq!(hello[5], 1);
        let hs_len = u32::from_be_bytes([0, hello[6], hello[7], hello[8]]) as usize;
        assert_eq!(hs_len, hello.len() - 9);
        assert_eq!(&hello[9..11], &[3, 1]);
        assert!(hello.windows(12).any(|w| w == b"example.test"));
        // An IP address is never sent as SNI.
        let hello = client_hello([3, 2], Some("127.0.0.1"));
        assert!(!hello.windows(9).any(|w| w == b"127.0.0.1"));
    }
}
