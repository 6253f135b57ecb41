//! `tls status` and `tls reload` (docs/tls.md).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsStatus {
    pub certificates: Vec<TlsCertificate>,
}

/// One certificate a service serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsCertificate {
    pub service: String,
    /// The names it covers (subjectAltName DNS names).
    pub hostnames: Vec<String>,
    pub issuer: String,
    /// The serial number, in hex.
    pub serial: String,
    /// RFC 3339, UTC.
    pub not_before: String,
    pub not_after: String,
    /// Whole days until `not_after` (negative once expired).
    pub days_left: i64,
    pub expired: bool,
    /// `file` or `acme`.
    pub source: String,
    /// The certificate file, for `file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// The last load, reload or renewal attempt (RFC 3339), and its error if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What `tls reload` did, per service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsReload {
    pub services: Vec<TlsReloadOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsReloadOutcome {
    pub service: String,
    pub reloaded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
