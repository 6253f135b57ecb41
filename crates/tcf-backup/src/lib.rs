//! Backups proven by restoring them. See docs/backups.md.
pub mod error;
pub mod manifest;
pub mod pipeline;
pub mod retention;
pub mod schedule;
pub mod time;

pub use error::{BackupError, Result};
