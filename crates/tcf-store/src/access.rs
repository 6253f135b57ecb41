//! Tokens and secrets. A token is kept only as its SHA-256; a secret only as ciphertext and
//! nonce (tcf-auth seals and opens them): nothing here can reveal either.

use crate::{Result, Store};
use rusqlite::{params, OptionalExtension};

/// A token to record (its hash, never the token).
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub role: String,
    pub sha256: String,
    pub created_ms: i64,
    pub created_by: String,
    pub expires_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub name: String,
    pub role: String,
    pub sha256: String,
    pub created_ms: i64,
    pub created_by: String,
    pub expires_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    pub name: String,
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    pub updated_ms: i64,
    pub updated_by: String,
}

impl Store {
    /// Record a token; false when the name is taken (revoked tokens keep theirs).
    pub fn create_token(&self, t: &NewToken) -> Result<bool> {
        self.with(|c| {
            let n = c.execute(
                "INSERT OR IGNORE INTO tokens (name, role, sha256, created_ms, created_by, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![t.name, t.role, t.sha256, t.created_ms, t.created_by, t.expires_ms],
            )?;
            Ok(n == 1)
        })
    }

    pub fn tokens(&self) -> Result<Vec<TokenRow>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT name, role, sha256, created_ms, created_by, expires_ms, last_used_ms, revoked_ms
                 FROM tokens ORDER BY name",
            )?;
            let rows = st.query_map([], |r| {
                Ok(TokenRow {
                    name: r.get(0)?,
                    role: r.get(1)?,
                    sha256: r.get(2)?,
                    created_ms: r.get(3)?,
                    created_by: r.get(4)?,
                    expires_ms: r.get(5)?,
                    last_used_ms: r.get(6)?,
                    revoked_ms: r.get(7)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Revoke a live token; false when there is none by that name (or it is already revoked).
    pub fn revoke_token(&self, name: &str, now_ms: i64) -> Result<bool> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE tokens SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms IS NULL",
                params![name, now_ms],
            )?;
            Ok(n == 1)
        })
    }

    pub fn touch_token(&self, name: &str, now_ms: i64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE tokens SET last_used_ms = ?2 WHERE name = ?1",
                params![name, now_ms],
            )
            .map(|_| ())
        })
    }

    /// Set secrets (all or none, in one transaction).
    pub fn set_secrets(&self, rows: &[SecretRow]) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            for s in rows {
                tx.execute(
                    "INSERT INTO secrets (name, ciphertext, nonce, updated_ms, updated_by)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(name) DO UPDATE SET ciphertext = ?2, nonce = ?3,
                         updated_ms = ?4, updated_by = ?5",
                    params![s.name, s.ciphertext, s.nonce, s.updated_ms, s.updated_by],
                )?;
            }
            tx.commit()
        })
    }

    pub fn secrets(&self) -> Result<Vec<SecretRow>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT name, ciphertext, nonce, updated_ms, updated_by FROM secrets ORDER BY name",
            )?;
            let rows = st.query_map([], |r| {
                Ok(SecretRow {
                    name: r.get(0)?,
                    ciphertext: r.get(1)?,
                    nonce: r.get(2)?,
                    updated_ms: r.get(3)?,
                    updated_by: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }

    pub fn secret(&self, name: &str) -> Result<Option<SecretRow>> {
        self.with(|c| {
            c.query_row(
                "SELECT name, ciphertext, nonce, updated_ms, updated_by FROM secrets WHERE name = ?1",
                params![name],
                |r| {
                    Ok(SecretRow {
                        name: r.get(0)?,
                        ciphertext: r.get(1)?,
                        nonce: r.get(2)?,
                        updated_ms: r.get(3)?,
                        updated_by: r.get(4)?,
                    })
                },
            )
            .optional()
        })
    }

    pub fn remove_secret(&self, name: &str) -> Result<bool> {
        self.with(|c| Ok(c.execute("DELETE FROM secrets WHERE name = ?1", params![name])? == 1))
    }
}

#[cfg(test)]
mod tests {
    use crate::*;

    #[test]
    fn tokens_and_secrets_round_trip_and_the_file_holds_neither_value() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let t = NewToken {
            name: "ci".into(),
            role: "deployer".into(),
            sha256: "ab".repeat(32),
            created_ms: 1,
            created_by: "root".into(),
            expires_ms: Some(10),
        };
        assert!(store.create_token(&t).unwrap());
        assert!(!store.create_token(&t).unwrap(), "a taken name is refused");
        store.touch_token("ci", 5).unwrap();
        assert!(store.revoke_token("ci", 6).unwrap());
        assert!(!store.revoke_token("ci", 7).unwrap());
        let rows = store.tokens().unwrap();
        assert_eq!(rows[0].last_used_ms, Some(5));
        assert_eq!(rows[0].revoked_ms, Some(6));

        let row = SecretRow {
            name: "db".into(),
            ciphertext: b"sealed".to_vec(),
            nonce: vec![0; 24],
            updated_ms: 3,
            updated_by: "root".into(),
        };
        store.set_secrets(std::slice::from_ref(&row)).unwrap();
        let newer = SecretRow {
            updated_ms: 4,
            ..row.clone()
        };
        store.set_secrets(std::slice::from_ref(&newer)).unwrap();
        assert_eq!(store.secrets().unwrap(), vec![newer.clone()]);
        assert_eq!(store.secret("db").unwrap(), Some(newer));
        assert!(store.remove_secret("db").unwrap());
        assert!(!store.remove_secret("db").unwrap());
        assert_eq!(store.secret("db").unwrap(), None);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
