//! Secrets at rest: each value sealed with XChaCha20-Poly1305 under a key that lives outside
//! the store (`state_dir/secrets.key`, created 0600 on first use, or `TCF_SECRETS_KEY`). The
//! secret's name is the associated data, so a ciphertext moved to another name fails to open.

use crate::files;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use std::path::{Path, PathBuf};

/// The key as 64 hex digits, instead of the key file.
pub const KEY_ENV: &str = "TCF_SECRETS_KEY";
pub const KEY_FILE: &str = "secrets.key";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the secrets key {path} is missing, so the stored secrets cannot be decrypted\nhint: restore the key file from where you keep its copy (mode 0600), or set TCF_SECRETS_KEY to the key; if the key is lost, remove each secret (`tcf-platform secrets rm NAME`) and set it again")]
    KeyMissing { path: PathBuf },
    #[error("the secrets key in {origin} is not valid: {detail}\nhint: a key is 64 hex digits (32 bytes); restore the file or fix TCF_SECRETS_KEY")]
    KeyInvalid { origin: String, detail: String },
    #[error("cannot read or create the secrets key {path}: {source}\nhint: check the state directory's owner and permissions")]
    KeyIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot decrypt the secret {name}: the key is not the one it was encrypted with\nhint: the key file was replaced or TCF_SECRETS_KEY differs; restore the original key, or set the secret again (`tcf-platform secrets set {name}`)")]
    WrongKey { name: String },
    #[error("the secret {name} is not UTF-8 text; environment values must be text")]
    NotText { name: String },
    #[error("encrypting the secret {name} failed")]
    Seal { name: String },
}

/// A value as stored: the ciphertext (with its tag) and the 24-byte nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
}

pub struct SecretsKey {
    key: Key,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(••••••)")
    }
}

impl SecretsKey {
    pub fn generate() -> SecretsKey {
        SecretsKey {
            key: XChaCha20Poly1305::generate_key(&mut OsRng),
        }
    }

    pub fn from_hex(origin: &str, text: &str) -> Result<SecretsKey, SecretError> {
        let invalid = |detail: String| SecretError::KeyInvalid {
            origin: origin.to_string(),
            detail,
        };
        let bytes = hex::decode(text.trim()).map_err(|e| invalid(e.to_string()))?;
        if bytes.len() != 32 {
            return Err(invalid(format!("{} bytes, not 32", bytes.len())));
        }
        Ok(SecretsKey {
            key: *Key::from_slice(&bytes),
        })
    }

    fn to_hex(&self) -> String {
        hex::encode(self.key.as_slice())
    }

    /// The key from `TCF_SECRETS_KEY` if set, else from `state_dir/secrets.key`. A missing
    /// file is created (0600) only when `may_create` (no secret was stored under another key).
    pub fn resolve(state_dir: &Path, may_create: bool) -> Result<SecretsKey, SecretError> {
        if let Ok(text) = std::env::var(KEY_ENV) {
            return SecretsKey::from_hex(KEY_ENV, &text);
        }
        SecretsKey::load_file(&state_dir.join(KEY_FILE), may_create)
    }

    pub fn load_file(path: &Path, may_create: bool) -> Result<SecretsKey, SecretError> {
        match std::fs::read_to_string(path) {
            Ok(text) => SecretsKey::from_hex(&path.display().to_string(), &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !may_create {
                    return Err(SecretError::KeyMissing {
                        path: path.to_path_buf(),
                    });
                }
                let key = SecretsKey::generate();
                files::create_private_file(path, format!("{}\n", key.to_hex()).as_bytes())
                    .map_err(|source| SecretError::KeyIo {
                        path: path.to_path_buf(),
                        source,
                    })?;
                Ok(key)
            }
            Err(source) => Err(SecretError::KeyIo {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn seal(&self, name: &str, value: &[u8]) -> Result<Sealed, SecretError> {
        let cipher = XChaCha20Poly1305::new(&self.key);
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: value,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Seal {
                name: name.to_string(),
            })?;
        Ok(Sealed {
            ciphertext,
            nonce: nonce.to_vec(),
        })
    }

    pub fn open(&self, name: &str, sealed: &Sealed) -> Result<String, SecretError> {
        let wrong = || SecretError::WrongKey {
            name: name.to_string(),
        };
        if sealed.nonce.len() != 24 {
            return Err(wrong());
        }
        let cipher = XChaCha20Poly1305::new(&self.key);
        let plain = cipher
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| wrong())?;
        String::from_utf8(plain).map_err(|_| SecretError::NotText {
            name: name.to_string(),
        })
    }
}

/// A `.env` file's `NAME=value` lines (`export`, quotes and comments as shells write them).
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected NAME=value", n + 1));
        };
        let name = name.trim();
        crate::token::check_name("line's name", name)
            .map_err(|e| format!("line {}: {e}", n + 1))?;
        let value = value.trim();
        let value = if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')))
        {
            value[1..value.len() - 1].to_string()
        } else {
            // An unquoted value ends at a comment.
            value
                .split_once(" #")
                .map_or(value, |(v, _)| v)
                .trim_end()
                .to_string()
        };
        out.push((name.to_string(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_with_its_key_and_name_only() {
        let key = SecretsKey::generate();
        let sealed = key.seal("db", b"hunter2").unwrap();
        assert!(!sealed
            .ciphertext
            .windows(7)
            .any(|w| w == b"hunter2".as_slice()));
        assert_eq!(key.open("db", &sealed).unwrap(), "hunter2");
        // Moved to another name, or opened with another key: refused, never garbage.
        assert!(matches!(
            key.open("other", &sealed),
            Err(SecretError::WrongKey { .. })
        ));
        let other = SecretsKey::generate();
        let err = other.open("db", &sealed).unwrap_err();
        assert!(err
            .to_string()
            .contains("not the one it was encrypted with"));
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn the_key_file_is_created_0600_once_and_a_lost_one_is_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let missing = SecretsKey::load_file(&path, false).unwrap_err();
        assert!(matches!(missing, SecretError::KeyMissing { .. }));
        assert!(missing.to_string().contains("secrets.key is missing"));
        let key = SecretsKey::load_file(&path, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = SecretsKey::load_file(&path, true).unwrap();
        let sealed = key.seal("a", b"v").unwrap();
        assert_eq!(again.open("a", &sealed).unwrap(), "v");
        std::fs::write(&path, "zz").unwrap();
        assert!(matches!(
            SecretsKey::load_file(&path, true),
            Err(SecretError::KeyInvalid { .. })
        ));
        assert!(format!("{key:?}").contains("••••••"));
    }

    #[test]
    fn dotenv_lines() {
        let parsed =
            parse_dotenv("# c\nexport A=1\nB=\"two words\"\nC='x=y'\nD=plain # note\n\n").unwrap();
        assert_eq!(
            parsed,
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".into(), "two words".into()),
                ("C".into(), "x=y".into()),
                ("D".into(), "plain".into())
            ]
        );
        assert!(parse_dotenv("novalue").unwrap_err().contains("line 1"));
    }
}
