//! Everything that can go wrong, each error saying what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("the backup repository {repository} is in use by another backup, verify, restore or prune{holder}\nhint: wait for it to finish; the lock is released when that process exits")]
    Locked { repository: PathBuf, holder: String },
    #[error(
        "no backup {id:?} in {repository}\nhint: `tcf-platform backup list` shows the backups"
    )]
    NotFound { id: String, repository: PathBuf },
    #[error("backup {id}: {problem}")]
    Damaged { id: String, problem: String },
    #[error("no backup source named {0:?}\nhint: the names are the keys of [backup.sources.NAME] in the config")]
    UnknownSource(String),
    #[error("{tool} failed for {what} (exit status {status}): {stderr}")]
    ToolFailed {
        tool: String,
        what: String,
        status: String,
        stderr: String,
    },
    #[error("{0}")]
    ToolMissing(String),
    #[error("PostgreSQL at {address}: {message}")]
    Postgres { address: String, message: String },
    #[error("Redis at {address}: {message}")]
    Redis { address: String, message: String },
    #[error("encryption: {0}")]
    Encryption(String),
    #[error("the archive {artifact} is refused: {problem}; nothing was written outside {target}")]
    HostileArchive {
        artifact: String,
        problem: String,
        target: PathBuf,
    },
    #[error("invalid retention policy: {0}")]
    Retention(String),
    #[error("invalid schedule {expression:?}: {problem}")]
    Schedule { expression: String, problem: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = BackupError> = std::result::Result<T, E>;

/// Attach a description of what was being done to an I/O error.
pub(crate) trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| BackupError::Io {
            context: what(),
            source,
        })
    }
}
