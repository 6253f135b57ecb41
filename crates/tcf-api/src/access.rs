//! Wire types of tokens, secrets and the remote API (`tokens`, `secrets`, `status`'s `api`).
//! A token appears only in [`TokenCreated`], once; a secret's value only in [`SetSecrets`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `status`'s `api`: the remote API's address and its certificate's SHA-256 (to pin).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiEndpoint {
    pub listen: String,
    pub fingerprint_sha256: String,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CreateToken {
    pub name: String,
    pub role: String,
    /// Seconds from now; none: never expires.
    #[serde(default)]
    pub expires_s: Option<u64>,
}

/// The answer to `POST /v1/tokens`: the only time the token is ever shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenCreated {
    pub name: String,
    pub role: String,
    pub token: String,
    pub expires: Option<String>,
}

/// `GET /v1/tokens`: one token, never its value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenInfo {
    pub name: String,
    pub role: String,
    pub created: String,
    pub created_by: String,
    pub expires: Option<String>,
    pub last_used: Option<String>,
    pub revoked: Option<String>,
}

/// `POST /v1/secrets`: set (or import) these, all or none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SetSecrets {
    pub secrets: BTreeMap<String, String>,
}

/// `GET /v1/secrets`: one secret, never its value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SecretInfo {
    pub name: String,
    pub updated: String,
    pub updated_by: String,
    /// Services whose env refers to it.
    #[serde(default)]
    pub used_by: Vec<String>,
}

/// The answer to a secrets change: what changed and the services now stale.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SecretsChanged {
    pub names: Vec<String>,
    #[serde(default)]
    pub stale_services: Vec<String>,
}
