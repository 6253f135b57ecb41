//! `tls`, `http_listen` and `hsts` of a service (docs/tls.md): certificates from files or from
//! an ACME server, the plain listener that redirects to HTTPS and answers ACME challenges.
//!
//! The files are checked here for what a config check can see (present, readable, PEM holding
//! a certificate and a private key); that the key matches the certificate is checked by the
//! proxy when it loads them (`up`, and each reload).

use crate::Diagnostic;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// `tls = { ... }` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    /// More certificate/key pairs: SNI picks the one whose names match.
    pub certificates: Option<Vec<RawCertFiles>>,
    pub acme: Option<RawAcme>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertFiles {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub directory: Option<String>,
    pub email: Option<String>,
    #[serde(default)]
    pub domains: Vec<String>,
    /// The ACME server's CA (PEM), for a private ACME server.
    pub ca: Option<String>,
}

/// A service's TLS, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTls {
    pub source: TlsSource,
    /// The plain listener: ACME HTTP-01 challenges, and a redirect to HTTPS for the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<SocketAddr>,
    /// The `Strict-Transport-Security` value added to every answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsSource {
    /// PEM files, the first the default when no name matches the client's SNI.
    Files(Vec<CertFiles>),
    Acme(AcmeSettings),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeSettings {
    pub directory: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

pub(crate) fn resolve_tls(
    service: &str,
    tls: Option<&Spanned<RawTls>>,
    http_listen: Option<&Spanned<String>>,
    hsts: Option<&Spanned<String>>,
    base_dir: &Path,
    errors: &mut Vec<Diagnostic>,
) -> Option<ServiceTls> {
    let Some(tls) = tls else {
        for (key, span) in [
            ("http_listen", http_listen.map(|h| h.span())),
            ("hsts", hsts.map(|h| h.span())),
        ] {
            if let Some(span) = span {
                errors.push(
                    Diagnostic::new(
                        format!("{key} of service {service:?} needs tls"),
                        Some(span),
                    )
                    .hint(
                        "add tls = { cert = \"PATH\", key = \"PATH\" } or tls = { acme = { ... } }",
                    ),
                );
            }
        }
        return None;
    };
    let before = errors.len();
    let span = tls.span();
    let raw = tls.get_ref();
    let err = |msg: String, hint: &str| Diagnostic::new(msg, Some(span.clone())).hint(hint);
    let source = match (&raw.acme, &raw.cert, &raw.key) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            errors.push(err(
                format!("tls of service {service:?} has both files and acme"),
                "use either cert and key, or acme",
            ));
            None
        }
        (Some(acme), None, None) => resolve_acme(service, acme, base_dir, &err, errors),
        (None, cert, key) => {
            let mut pairs = Vec::new();
            match (cert, key) {
                (Some(c), Some(k)) => pairs.push((c.clone(), k.clone())),
                (None, None) => {}
                _ => errors.push(err(
                    format!("tls of service {service:?} needs both cert and key"),
                    "add cert = \"PATH\" (PEM, the chain after the certificate) and key = \"PATH\" (PEM)",
                )),
            }
            for more in raw.certificates.iter().flatten() {
                pairs.push((more.cert.clone(), more.key.clone()));
            }
            if pairs.is_empty() && errors.len() == before {
                errors.push(err(
                    format!("tls of service {service:?} names no certificate"),
                    "add cert and key (PEM files), or acme = { directory = URL, domains = [...] }",
                ));
            }
            let files: Vec<CertFiles> = pairs
                .into_iter()
                .map(|(c, k)| CertFiles {
                    cert: base_dir.join(c),
                    key: base_dir.join(k),
                })
                .collect();
            for f in &files {
                check_pem(service, &f.cert, "CERTIFICATE", &err, errors);
                check_pem(service, &f.key, "PRIVATE KEY", &err, errors);
            }
            Some(TlsSource::Files(files))
        }
    };
    let http_listen = http_listen.and_then(|h| match h.get_ref().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(
                Diagnostic::new(
                    format!("invalid http_listen address {:?}", h.get_ref()),
                    Some(h.span()),
                )
                .hint("write an IP address and a port, such as \"0.0.0.0:80\""),
            );
            None
        }
    });
    let hsts = hsts.and_then(|h| {
        let v = h.get_ref();
        let valid = v.trim_start().starts_with("max-age=")
            && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        if !valid {
            errors.push(
                Diagnostic::new(format!("invalid hsts value {v:?}"), Some(h.span()))
                    .hint("write it as the header's value, such as \"max-age=31536000; includeSubDomains\""),
            );
        }
        valid.then(|| v.clone())
    });
    if errors.len() > before {
        return None;
    }
    Some(ServiceTls {
        source: source?,
        http_listen,
        hsts,
    })
}

fn resolve_acme(
    service: &str,
    acme: &RawAcme,
    base_dir: &Path,
    err: &dyn Fn(String, &str) -> Diagnostic,
    errors: &mut Vec<Diagnostic>,
) -> Option<TlsSource> {
    let directory = match &acme.directory {
        Some(d) if d.starts_with("https://") || d.starts_with("http://") => d.clone(),
        _ => {
            errors.push(err(
                format!("tls.acme of service {service:?} needs a directory URL"),
                "add directory = \"https://acme-v02.api.letsencrypt.org/directory\"",
            ));
            return None;
        }
    };
    if acme.domains.is_empty() || acme.domains.iter().any(|d| !valid_domain(d)) {
        errors.push(err(
            format!(
                "tls.acme of service {service:?} needs domains, each a DNS name (got {:?})",
                acme.domains
            ),
            "add domains = [\"www.example.com\"]",
        ));
        return None;
    }
    let ca = acme.ca.as_ref().map(|c| base_dir.join(c));
    if let Some(ca) = &ca {
        check_pem(service, ca, "CERTIFICATE", err, errors);
    }
    Some(TlsSource::Acme(AcmeSettings {
        directory,
        email: acme.email.clone(),
        domains: acme.domains.clone(),
        ca,
    }))
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// The file exists, is readable and holds a PEM block of `kind` (`CERTIFICATE`, `PRIVATE KEY`
/// for PKCS#8, RSA and EC keys alike).
fn check_pem(
    service: &str,
    path: &Path,
    kind: &str,
    err: &dyn Fn(String, &str) -> Diagnostic,
    errors: &mut Vec<Diagnostic>,
) {
    let what = if kind == "CERTIFICATE" {
        "certificate"
    } else {
        "key"
    };
    match std::fs::read_to_string(path) {
        Err(e) => errors.push(err(
            format!(
                "cannot read the TLS {what} of service {service:?}: {}: {e}",
                path.display()
            ),
            "check the path (relative paths start at the config file's directory) and that the daemon's user may read it",
        )),
        Ok(text) => {
            let found = text
                .lines()
                .any(|l| l.starts_with("-----BEGIN ") && l.ends_with(&format!("{kind}-----")));
            if !found {
                errors.push(err(
                    format!(
                        "{} holds no PEM {what} (service {service:?})",
                        path.display()
                    ),
                    &format!("the file must hold a -----BEGIN ...{kind}----- block"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::TlsSource;

    const SERVICE: &str = "[platform]\nname = \"t\"\n[services.web]\ncommand = [\"x\"]\nversion = \"v1\"\nlisten = \"127.0.0.1:18443\"\n";

    fn resolve(dir: &std::path::Path, extra: &str) -> Result<crate::Config, Vec<String>> {
        let text = format!("{SERVICE}{extra}");
        crate::resolve(&dir.join("t.toml"), &text, None)
            .map_err(|d| d.iter().map(|d| d.message.clone()).collect())
    }

    #[test]
    fn files_acme_and_their_errors() {
        let dir = std::env::temp_dir().join(format!("tcf-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("c.pem"),
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("k.pem"),
            "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let ok = resolve(
            &dir,
            "tls = { cert = \"c.pem\", key = \"k.pem\" }\nhttp_listen = \"127.0.0.1:18080\"\nhsts = \"max-age=60\"\n",
        )
        .unwrap();
        let tls = ok.services["web"].tls.clone().unwrap();
        assert_eq!(tls.http_listen, Some("127.0.0.1:18080".parse().unwrap()));
        assert_eq!(tls.hsts.as_deref(), Some("max-age=60"));
        match tls.source {
            TlsSource::Files(f) => assert_eq!(f[0].cert, dir.join("c.pem")),
            other => panic!("{other:?}"),
        }
        let acme = resolve(&dir, "tls = { acme = { directory = \"https://127.0.0.1:14000/dir\", email = \"a@b.c\", domains = [\"a.test\"] } }\n").unwrap();
        assert!(matches!(
            acme.services["web"].tls.as_ref().unwrap().source,
            TlsSource::Acme(_)
        ));
        for (extra, expected) in [
            (
                "tls = { cert = \"missing.pem\", key = \"k.pem\" }\n",
                "cannot read the TLS certificate",
            ),
            (
                "tls = { cert = \"k.pem\", key = \"k.pem\" }\n",
                "holds no PEM certificate",
            ),
            (
                "tls = { cert = \"c.pem\", key = \"c.pem\" }\n",
                "holds no PEM key",
            ),
            ("tls = { cert = \"c.pem\" }\n", "needs both cert and key"),
            ("http_listen = \"127.0.0.1:18080\"\n", "needs tls"),
            (
                "tls = { cert = \"c.pem\", key = \"k.pem\" }\nhsts = \"1 year\"\n",
                "invalid hsts",
            ),
            (
                "tls = { cert = \"c.pem\", key = \"k.pem\" }\nhttp_listen = \"127.0.0.1:18443\"\n",
                "also the address",
            ),
            (
                "tls = { acme = { directory = \"https://x/d\", domains = [] } }\n",
                "needs domains",
            ),
            (
                "tls = { acme = { domains = [\"a.test\"] } }\n",
                "needs a directory",
            ),
        ] {
            let errors = resolve(&dir, extra).unwrap_err();
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{extra}: {errors:?}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
