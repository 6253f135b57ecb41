//! The manifest of one backup: what it holds and how to check it. Stored as
//! `{"sha256": HEX, "manifest": {...}}` where HEX is the SHA-256 of the `manifest` value's bytes
//! exactly as they appear in the file, so any edit or truncation is detected.

use crate::error::BackupError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    Manual,
    Schedule,
    /// Taken before a deploy of `release`.
    PreDeploy {
        release: String,
    },
    /// Taken by `restore` before it overwrote anything.
    RecoveryPoint {
        restoring: String,
    },
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Manual => f.write_str("manual"),
            Trigger::Schedule => f.write_str("schedule"),
            Trigger::PreDeploy { release } => write!(f, "pre-deploy of {release}"),
            Trigger::RecoveryPoint { restoring } => {
                write!(f, "recovery point before restoring {restoring}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    /// RFC 3339, UTC: when the backup started.
    pub time: String,
    /// RFC 3339, UTC: when the last artifact was on disk.
    pub finished: String,
    pub trigger: Trigger,
    pub hostname: String,
    /// age recipients the artifacts are encrypted to; empty when not encrypted.
    pub recipients: Vec<String>,
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    /// `pg_dump -Fc` of one database.
    PostgresDatabase,
    /// `pg_dumpall --globals-only`: roles and tablespaces, as SQL.
    PostgresGlobals,
    /// An RDB snapshot of a Redis server.
    RedisRdb,
    /// A tar archive of a directory tree.
    DirectoryTar,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// The file name inside the backup's directory.
    pub file: String,
    /// The `[backup.sources.NAME]` it came from.
    pub source: String,
    pub kind: ArtifactKind,
    /// The database, for PostgreSQL databases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Bytes on disk and their SHA-256 (after compression and encryption).
    pub size: u64,
    pub sha256: String,
    /// Bytes of the data itself and their SHA-256 (before compression and encryption).
    pub content_size: u64,
    pub content_sha256: String,
    pub compression: String,
    pub encrypted: bool,
    /// The tool that produced the data and its version (`pg_dump (PostgreSQL) 15.18`).
    pub tool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    pub duration_ms: u64,
    /// What a restore must reproduce: recorded at backup time.
    pub expect: Expectation,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Expectation {
    /// Per table (`schema.table`): row count and an order-independent checksum of the rows,
    /// both read in the dump's own snapshot.
    Tables {
        tables: BTreeMap<String, TableStats>,
        /// Database properties needed to recreate it as it was.
        owner: String,
        encoding: String,
        collate: String,
        ctype: String,
    },
    /// Keys per logical database (`db0` …), read just before and after the snapshot; `None`
    /// when they changed in between (a busy server), so there is nothing exact to compare.
    Keys { keys: Option<BTreeMap<String, u64>> },
    /// Entries of the archive.
    Files {
        files: u64,
        directories: u64,
        symlinks: u64,
        bytes: u64,
    },
    /// Nothing beyond the content checksum (PostgreSQL globals: applying roles to a scratch
    /// place is not possible, so verify checks the SQL text only).
    ContentOnly,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableStats {
    pub rows: u64,
    pub checksum: String,
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    sha256: String,
    manifest: &'a serde_json::value::RawValue,
}

#[derive(Deserialize)]
struct EnvelopeIn<'a> {
    sha256: String,
    #[serde(borrow)]
    manifest: &'a serde_json::value::RawValue,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Manifest {
    /// The file's bytes: the manifest and the checksum of its exact serialization.
    pub fn to_file_bytes(&self) -> Result<Vec<u8>, BackupError> {
        let inner = serde_json::to_string_pretty(self)
            .map_err(|e| BackupError::Invalid(format!("cannot serialize the manifest: {e}")))?;
        let raw = serde_json::value::RawValue::from_string(inner)
            .map_err(|e| BackupError::Invalid(format!("cannot serialize the manifest: {e}")))?;
        let envelope = EnvelopeOut {
            sha256: sha256_hex(raw.get().as_bytes()),
            manifest: &raw,
        };
        let mut out = serde_json::to_vec(&envelope)
            .map_err(|e| BackupError::Invalid(format!("cannot serialize the manifest: {e}")))?;
        out.push(b'\n');
        Ok(out)
    }

    /// Parse and check a manifest file's bytes; `id` names the backup in errors.
    pub fn from_file_bytes(id: &str, bytes: &[u8]) -> Result<Manifest, BackupError> {
        let damaged = |problem: String| BackupError::Damaged {
            id: id.to_string(),
            problem,
        };
        let envelope: EnvelopeIn = serde_json::from_slice(bytes)
            .map_err(|e| damaged(format!("{MANIFEST_FILE} is not readable ({e})")))?;
        let actual = sha256_hex(envelope.manifest.get().as_bytes());
        if actual != envelope.sha256 {
            return Err(damaged(format!(
                "{MANIFEST_FILE} does not match its checksum (recorded {}, actual {actual}): it was changed or damaged after the backup",
                envelope.sha256
            )));
        }
        let manifest: Manifest = serde_json::from_str(envelope.manifest.get())
            .map_err(|e| damaged(format!("{MANIFEST_FILE} has an unexpected shape ({e})")))?;
        if manifest.format != FORMAT_VERSION {
            return Err(damaged(format!(
                "{MANIFEST_FILE} has format {} and this tcf-platform reads format {FORMAT_VERSION}",
                manifest.format
            )));
        }
        if manifest.id != id {
            return Err(damaged(format!(
                "{MANIFEST_FILE} belongs to backup {:?}, not to the directory it is in",
                manifest.id
            )));
        }
        Ok(manifest)
    }

    pub fn total_size(&self) -> u64 {
        self.artifacts.iter().map(|a| a.size).sum()
    }

    pub fn sources(&self) -> Vec<String> {
        let mut s: Vec<String> = self.artifacts.iter().map(|a| a.source.clone()).collect();
        s.dedup();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            id: "20261125T161824Z-ab12".into(),
            time: "2026-11-25T16:18:24Z".into(),
            finished: "2026-11-25T16:18:30Z".into(),
            trigger: Trigger::PreDeploy {
                release: "7".into(),
            },
            hostname: "h".into(),
            recipients: vec![],
            artifacts: vec![],
        }
    }

    #[test]
    fn round_trip_and_tamper_detection() {
        let m = sample();
        let bytes = m.to_file_bytes().unwrap();
        assert_eq!(Manifest::from_file_bytes(&m.id, &bytes).unwrap(), m);
        let text = String::from_utf8(bytes.clone()).unwrap();
        let edited = text.replace("pre_deploy", "schedule");
        let err = Manifest::from_file_bytes(&m.id, edited.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match its checksum"), "{err}");
        let err = Manifest::from_file_bytes(&m.id, &bytes[..bytes.len() / 2])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not readable"), "{err}");
        let err = Manifest::from_file_bytes("other", &bytes)
            .unwrap_err()
            .to_string();
        assert!(err.contains("belongs to backup"), "{err}");
    }
}
