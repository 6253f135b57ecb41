//! The repository on disk:
//!
//! ```text
//! REPO/lock                      flock: one writer (create, verify, restore, prune) at a time
//! REPO/backups/ID/manifest.json  a completed backup (only ever appears by rename)
//! REPO/backups/ID/*.zst[.age]    its artifacts
//! REPO/backups/ID/verify.json    the result of its last verification
//! REPO/.tmp-ID/                  a backup being written (or a leftover: removed on the next run)
//! ```

use crate::error::{BackupError, IoContext, Result};
use crate::manifest::{Manifest, MANIFEST_FILE};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

const BACKUPS: &str = "backups";
const STAGING_PREFIX: &str = ".tmp-";
const VERIFY_FILE: &str = "verify.json";

#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
}

/// Held while writing to the repository; released when dropped (or when the process dies).
pub struct RepoLock {
    _lock: Flock<File>,
}

/// The outcome of the last verification, kept beside the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRecord {
    /// `checksums` or `restore`.
    pub level: String,
    pub time: String,
    pub ok: bool,
    /// What failed, naming the artifact; empty when `ok`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// One entry of `list`: a completed backup, readable or not.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: String,
    pub manifest: std::result::Result<Manifest, String>,
    pub last_verify: Option<VerifyRecord>,
}

pub fn fsync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .context(|| format!("syncing directory {}", path.display()))
}

/// Write `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync the
/// directory. A reader sees the old content or the new, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.context(|| format!("writing {}", path.display()))?;
    fsync_dir(dir)
}

impl Repository {
    pub fn new(root: impl Into<PathBuf>) -> Repository {
        Repository { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn backup_dir(&self, id: &str) -> PathBuf {
        self.root.join(BACKUPS).join(id)
    }

    /// Create the repository's directories if they do not exist yet: 0700, as dumps are
    /// readable data even when encrypted (names, sizes, times). An existing directory keeps
    /// the mode its operator gave it (`prod audit` reports one open to others).
    pub fn ensure(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.root.join(BACKUPS))
            .context(|| format!("creating the backup repository {}", self.root.display()))
    }

    /// Take the repository's lock without waiting; the error names the holder's pid.
    pub fn lock(&self) -> Result<RepoLock> {
        self.ensure()?;
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .context(|| format!("opening {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let _ = lock.set_len(0);
                let _ = lock.rewind();
                let _ = write!(lock, "{}", std::process::id());
                Ok(RepoLock { _lock: lock })
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                Err(BackupError::Locked {
                    repository: self.root.clone(),
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                })
            }
            Err((_, errno)) => Err(BackupError::Io {
                context: format!("locking {}", path.display()),
                source: errno.into(),
            }),
        }
    }

    /// Remove what interrupted runs left behind (staging directories). Needs the lock, so that
    /// no running backup's staging directory is taken for a leftover.
    pub fn clean_leftovers(&self, _lock: &RepoLock) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        let entries = fs::read_dir(&self.root)
            .context(|| format!("reading the backup repository {}", self.root.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(STAGING_PREFIX) {
                fs::remove_dir_all(entry.path())
                    .context(|| format!("removing the leftover {}", entry.path().display()))?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// A fresh staging directory for backup `id`.
    pub fn staging(&self, _lock: &RepoLock, id: &str) -> Result<PathBuf> {
        let dir = self.root.join(format!("{STAGING_PREFIX}{id}"));
        fs::create_dir(&dir).context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Make the backup in `staging` complete: write its manifest, fsync, and rename it into
    /// `backups/`. Only after this does the backup exist.
    pub fn commit(&self, _lock: &RepoLock, staging: &Path, manifest: &Manifest) -> Result<()> {
        let bytes = manifest.to_file_bytes()?;
        let path = staging.join(MANIFEST_FILE);
        (|| {
            let mut f = File::create_new(&path)?;
            f.write_all(&bytes)?;
            f.sync_all()
        })()
        .context(|| format!("writing {}", path.display()))?;
        fsync_dir(staging)?;
        let target = self.backup_dir(&manifest.id);
        fs::rename(staging, &target).context(|| {
            format!(
                "moving the finished backup into place at {}",
                target.display()
            )
        })?;
        fsync_dir(&self.root.join(BACKUPS))
    }

    /// Every completed backup, oldest first.
    pub fn list(&self) -> Result<Vec<Listed>> {
        let dir = self.root.join(BACKUPS);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(BackupError::Io {
                    context: format!("reading the backup repository {}", dir.display()),
                    source: e,
                })
            }
        };
        let ids: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let mut listed: Vec<Listed> = ids
            .into_iter()
            .map(|id| Listed {
                manifest: self.manifest(&id).map_err(|e| e.to_string()),
                last_verify: self.last_verify(&id),
                id,
            })
            .collect();
        // By the manifest's time (milliseconds), then id; unreadable ones by id.
        listed.sort_by(|a, b| {
            let key = |l: &Listed| match &l.manifest {
                Ok(m) => m.time.clone(),
                Err(_) => time_of_id(&l.id),
            };
            key(a).cmp(&key(b)).then_with(|| a.id.cmp(&b.id))
        });
        Ok(listed)
    }

    /// The checked manifest of backup `id`.
    pub fn manifest(&self, id: &str) -> Result<Manifest> {
        let dir = self.backup_dir(id);
        if !dir.is_dir() || id.contains('/') || id.starts_with('.') {
            return Err(BackupError::NotFound {
                id: id.to_string(),
                repository: self.root.clone(),
            });
        }
        let path = dir.join(MANIFEST_FILE);
        match fs::read(&path) {
            Ok(bytes) => Manifest::from_file_bytes(id, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BackupError::Damaged {
                id: id.to_string(),
                problem: format!("{MANIFEST_FILE} is missing, so nothing in it can be trusted"),
            }),
            Err(e) => Err(BackupError::Io {
                context: format!("reading {}", path.display()),
                source: e,
            }),
        }
    }

    pub fn last_verify(&self, id: &str) -> Option<VerifyRecord> {
        let bytes = fs::read(self.backup_dir(id).join(VERIFY_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn record_verify(&self, _lock: &RepoLock, id: &str, record: &VerifyRecord) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| BackupError::Invalid(format!("cannot serialize a verify record: {e}")))?;
        write_atomic(&self.backup_dir(id).join(VERIFY_FILE), &bytes)
    }

    /// Delete backup `id`: first renamed out of `backups/` (so it is never listed half-deleted),
    /// then removed.
    pub fn remove(&self, _lock: &RepoLock, id: &str) -> Result<()> {
        let from = self.backup_dir(id);
        let to = self.root.join(format!("{STAGING_PREFIX}deleting-{id}"));
        fs::rename(&from, &to).context(|| format!("moving {} out of the list", from.display()))?;
        fsync_dir(&self.root.join(BACKUPS))?;
        fs::remove_dir_all(&to).context(|| format!("removing {}", to.display()))
    }
}

/// The time in an id (`20261125T161824Z-3fa1` → `2026-11-25T16:18:24`), to sort a backup
/// whose manifest cannot be read among the others.
fn time_of_id(id: &str) -> String {
    let b = id.as_bytes();
    if !id.is_ascii() || b.len() < 15 || !b[..8].iter().all(u8::is_ascii_digit) {
        return id.to_string();
    }
    format!(
        "{}-{}-{}T{}:{}:{}",
        &id[0..4],
        &id[4..6],
        &id[6..8],
        &id[9..11],
        &id[11..13],
        &id[13..15]
    )
}

/// A new backup id: the UTC time to the second and 4 random hex digits (`20261125T161824Z-3fa1`),
/// so ids sort by time and two backups in one second still differ.
pub fn new_id(unix: i64) -> String {
    let c = crate::time::Civil::from_unix(unix);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{:04x}",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        fastrand::u16(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::new(dir.path());
        let held = repo.lock().unwrap();
        let err = repo.lock().err().unwrap().to_string();
        assert!(err.contains("in use by another"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        repo.lock().unwrap();
    }

    #[test]
    fn staging_is_never_listed_and_is_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::new(dir.path());
        let lock = repo.lock().unwrap();
        let staging = repo.staging(&lock, "20261125T000000Z-0001").unwrap();
        fs::write(staging.join("half"), b"x").unwrap();
        assert!(repo.list().unwrap().is_empty());
        assert_eq!(
            repo.clean_leftovers(&lock).unwrap(),
            vec![".tmp-20261125T000000Z-0001".to_string()]
        );
        assert!(!staging.exists());
    }
}
