//! `tcf-platform backup …` on the wire: the `/v1/backups` requests, and what `--format json`
//! prints, whether the daemon ran the command or the CLI did (no daemon): the same types, so
//! the same bytes. Create, verify, restore and prune answer with a stream of
//! [`crate::ProgressLine`]s whose last line carries `exit_code` and, on success, `report` (one
//! of the reports below as JSON).

use serde::{Deserialize, Serialize};

/// `POST /v1/backups`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct CreateBackup {
    /// Only this `[backup.sources.NAME]`; absent: every source.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub actor: String,
}

/// `POST /v1/backups/{id}/verify`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct VerifyBackup {
    /// `checksums` (the default) or `restore`.
    #[serde(default)]
    pub level: Option<String>,
    /// The text of an age identity file, for an encrypted backup (absent: `[backup] identity`
    /// on the daemon's host). Used in memory only.
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub actor: String,
}

/// `POST /v1/backups/{id}/restore`. The API does not ask for confirmation: the CLI does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RestoreBackup {
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub actor: String,
}

/// `POST /v1/backups/prune`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PruneBackups {
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub actor: String,
}

/// `GET /v1/backups/{id}/restore?source=S`: what a restore would replace and which running
/// services would answer 503 meanwhile (what the CLI asks to confirm).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestorePlan {
    pub id: String,
    pub sources: Vec<String>,
    /// Running services that use those sources: in maintenance while the restore writes.
    pub maintenance: Vec<String>,
}

/// What a backup was taken for; `{"kind": "pre_deploy", "release": "42"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackupTrigger {
    Manual,
    Schedule,
    PreDeploy { release: String },
    RecoveryPoint { restoring: String },
}

/// The outcome of a backup's last verification.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupVerifyRecord {
    /// `checksums` or `restore`.
    pub level: String,
    pub time: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// One backup in `backup list --format json` and the report of `backup create`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupEntry {
    pub id: String,
    /// RFC 3339, UTC.
    pub time: Option<String>,
    /// Readable: `manual`, `schedule`, `pre-deploy of 42`, `recovery point before restoring ID`.
    pub trigger: Option<String>,
    /// The trigger as data.
    pub trigger_detail: Option<BackupTrigger>,
    pub sources: Vec<String>,
    pub size: u64,
    pub encrypted: bool,
    pub artifacts: Vec<BackupArtifact>,
    pub last_verify: Option<BackupVerifyRecord>,
    /// Why this backup cannot be used (its manifest is missing or does not match its checksum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupArtifact {
    pub file: String,
    pub source: String,
    /// `postgres_database`, `postgres_globals`, `redis_rdb` or `directory_tar`.
    pub kind: String,
    pub database: Option<String>,
    pub size: u64,
    pub sha256: String,
    pub tool: String,
    pub server_version: Option<String>,
    pub duration_ms: u64,
}

/// `backup verify --format json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupVerifyReport {
    pub id: String,
    /// `checksums` or `restore`.
    pub level: String,
    pub ok: bool,
    /// Problems with the backup as a whole (the manifest).
    pub problems: Vec<String>,
    pub artifacts: Vec<BackupArtifactCheck>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupArtifactCheck {
    pub artifact: String,
    /// `ok`, `failed`, or `not_run` (the check could not run: never a pass).
    pub status: String,
    pub detail: Vec<String>,
}

/// `backup restore --format json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupRestoreReport {
    pub id: String,
    /// The backup taken of what was overwritten, before anything was.
    pub recovery_point: Option<String>,
    pub restored: Vec<String>,
    pub notes: Vec<String>,
}

/// `backup prune --format json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupPruneReport {
    pub dry_run: bool,
    pub decisions: Vec<BackupDecision>,
    /// Backups whose manifest cannot be read: never removed automatically.
    pub damaged: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupDecision {
    pub id: String,
    pub keep: bool,
    /// Why it is kept ("last", "daily 2026-11-25", "newest verified", "pinned").
    pub reasons: Vec<String>,
}
