//! API tokens: `tcfp_` and 64 hex digits (256 bits from the OS). The store keeps only the
//! SHA-256 of a token: with 256 random bits a plain hash is as good as a slow one. A presented
//! token is hashed and compared with every live token's hash in constant time.

use crate::roles::Role;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::OsRng;
use sha2::{Digest, Sha256};

pub const TOKEN_PREFIX: &str = "tcfp_";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send `Authorization: Bearer TOKEN` (the CLI: TCF_TOKEN or --token-file)")]
    Missing,
    #[error("the token is not valid (unknown, mistyped or from another platform)")]
    Unknown,
    #[error("the token {name} was revoked")]
    Revoked { name: String },
    #[error("the token {name} expired")]
    Expired { name: String },
    #[error("too many failed authentications from this address; try again in a minute")]
    RateLimited,
    #[error("cannot check the token: {0}")]
    Unavailable(String),
}

/// A stored token as verification needs it.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    pub sha256: String,
    pub expires_ms: Option<i64>,
    pub revoked: bool,
}

/// A new token and the hash to store. The token is shown once and never kept.
pub fn generate() -> (String, String) {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let hash = hash(&token);
    (token, hash)
}

/// The hex SHA-256 of a token, as stored.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// Equal bytes, in a time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token's name and role, if `presented` is a live token among `tokens` at `now_ms`.
/// Every stored hash is compared (no early exit), so timing says nothing about which matched.
pub fn verify(
    presented: &str,
    tokens: &[TokenRecord],
    now_ms: i64,
) -> Result<(String, Role), AuthError> {
    let presented = presented.trim();
    if presented.is_empty() {
        return Err(AuthError::Missing);
    }
    let wanted = hash(presented);
    let mut found = None;
    for t in tokens {
        if constant_time_eq(wanted.as_bytes(), t.sha256.as_bytes()) {
            found = Some(t);
        }
    }
    let t = found.ok_or(AuthError::Unknown)?;
    if t.revoked {
        return Err(AuthError::Revoked {
            name: t.name.clone(),
        });
    }
    if t.expires_ms.is_some_and(|e| e <= now_ms) {
        return Err(AuthError::Expired {
            name: t.name.clone(),
        });
    }
    Ok((t.name.clone(), t.role))
}

/// A token's name: letters, digits, `-`, `_`, `.`, 1 to 64 of them.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?} is not a valid name: use 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, token: &str, role: Role) -> TokenRecord {
        TokenRecord {
            name: name.into(),
            role,
            sha256: hash(token),
            expires_ms: None,
            revoked: false,
        }
    }

    #[test]
    fn tokens_are_random_prefixed_and_hashed() {
        let (a, ha) = generate();
        let (b, _) = generate();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(ha, hash(&a));
        assert_eq!(ha.len(), 64);
        assert!(!ha.contains(&a[TOKEN_PREFIX.len()..]));
    }

    #[test]
    fn verify_finds_the_live_token_and_refuses_the_rest() {
        let (ci, _) = generate();
        let (old, _) = generate();
        let (gone, _) = generate();
        let mut expired = record("old", &old, Role::Admin);
        expired.expires_ms = Some(1_000);
        let mut revoked = record("gone", &gone, Role::Admin);
        revoked.revoked = true;
        let all = vec![record("ci", &ci, Role::Deployer), expired, revoked];
        assert_eq!(
            verify(&ci, &all, 500),
            Ok(("ci".to_string(), Role::Deployer))
        );
        assert_eq!(verify(&old, &all, 999).map(|v| v.1), Ok(Role::Admin));
        assert_eq!(
            verify(&old, &all, 1_000),
            Err(AuthError::Expired { name: "old".into() })
        );
        assert_eq!(
            verify(&gone, &all, 0),
            Err(AuthError::Revoked {
                name: "gone".into()
            })
        );
        assert_eq!(verify("tcfp_nope", &all, 0), Err(AuthError::Unknown));
        assert_eq!(verify("  ", &all, 0), Err(AuthError::Missing));
    }

    #[test]
    fn comparison_needs_every_byte() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn names_are_plain() {
        assert!(check_name("token", "ci-deploy_1.x").is_ok());
        assert!(check_name("token", "").is_err());
        assert!(check_name("token", "a b").is_err());
        assert!(check_name("token", "a\nb").is_err());
    }
}
