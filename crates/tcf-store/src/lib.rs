//! The platform's durable state in one SQLite file (`state.db` in the state directory).
//!
//! WAL mode and one transaction per write, so a daemon killed at any point leaves a store that
//! opens cleanly. The schema is versioned by `PRAGMA user_version`; [`MIGRATIONS`] only grows.
//!
//! Only the daemon opens the store, and it holds it in exclusive locking mode: SQLite then keeps
//! the WAL index in the process's heap instead of a shared-memory file (`state.db-shm`) mapped
//! into memory, so a disk that fills up or a file made unwritable can fail a write with an error
//! but never kill the daemon with SIGBUS.

mod access;
pub use access::{NewToken, SecretRow, TokenRow};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state store {path}: {source}\nhint: check that the state directory is writable and the disk is not full")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the state store {path} has schema version {found}, newer than this binary understands ({known})\nhint: run the tcf-platform release that wrote it, or a newer one")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("state store error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state store is unusable: a thread panicked while writing to it")]
    Poisoned,
    #[error("the state store was handed over to another daemon (a restart or upgrade is in progress)\nhint: retry in a moment; the new daemon answers once it has taken over")]
    HandedOver,
    #[error("cannot write a fresh state store at {path}: {source}\nhint: check free disk space and permissions of the state directory")]
    Rewrite {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Schema migrations, applied in order; index + 1 is the schema version after each one.
pub const MIGRATIONS: &[&str] = &[
    // 1: releases, instances, events, locks.
    "CREATE TABLE releases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        strategy TEXT NOT NULL,
        status TEXT NOT NULL,
        actor TEXT NOT NULL,
        reason TEXT,
        started_ms INTEGER NOT NULL,
        finished_ms INTEGER
    );
    CREATE TABLE release_services (
        release_id INTEGER NOT NULL REFERENCES releases(id),
        service TEXT NOT NULL,
        version TEXT NOT NULL,
        PRIMARY KEY (release_id, service)
    );
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        service TEXT NOT NULL,
        version TEXT NOT NULL,
        pid INTEGER,
        pgid INTEGER,
        proc_start_ticks INTEGER,
        port INTEGER NOT NULL,
        state TEXT NOT NULL,
        started_ms INTEGER NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        kind TEXT NOT NULL,
        service TEXT,
        instance TEXT,
        message TEXT NOT NULL
    );
    CREATE INDEX events_service ON events(service, id);
    CREATE TABLE locks (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        reason TEXT,
        acquired_ms INTEGER NOT NULL,
        heartbeat_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL
    );",
    // 2: which runtime an instance runs on, so recovery cleans up with that runtime only.
    "ALTER TABLE instances ADD COLUMN runtime TEXT NOT NULL DEFAULT 'process';",
    // 3: the service spec (JSON) each release ran with, so a rollback restores it.
    "ALTER TABLE release_services ADD COLUMN spec TEXT;",
    // 4: the backup taken before a release started (`prod deploy --backup`).
    "ALTER TABLE releases ADD COLUMN backup TEXT;",
    // 5: API tokens (only their SHA-256) and secrets (only their ciphertext): see access.rs.
    "CREATE TABLE tokens (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        sha256 TEXT NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        expires_ms INTEGER,
        last_used_ms INTEGER,
        revoked_ms INTEGER
    );
    CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        ciphertext BLOB NOT NULL,
        nonce BLOB NOT NULL,
        updated_ms INTEGER NOT NULL,
        updated_by TEXT NOT NULL
    );",
];

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One state change: the audit trail.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Event {
    pub id: i64,
    pub ts_ms: i64,
    pub actor: String,
    pub kind: String,
    pub service: Option<String>,
    pub instance: Option<String>,
    pub message: String,
}

/// What a new event says; the store assigns id and time.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    pub actor: String,
    pub kind: String,
    pub service: Option<String>,
    pub instance: Option<String>,
    pub message: String,
}

/// A running instance as recorded, so that a restarted daemon can find what the last one left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub id: String,
    pub service: String,
    pub version: String,
    pub pid: Option<i64>,
    pub pgid: Option<i64>,
    /// Start time of the process in clock ticks since boot (`/proc/PID/stat` field 22):
    /// tells a live instance from an unrelated process that reused its pid.
    pub proc_start_ticks: Option<i64>,
    pub port: u16,
    pub state: String,
    pub started_ms: i64,
    /// The runtime's name (`process`, `docker`): recovery cleans up with that runtime.
    pub runtime: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Release {
    pub id: i64,
    pub strategy: String,
    pub status: String,
    pub actor: String,
    pub reason: Option<String>,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub versions: BTreeMap<String, String>,
    /// The backup taken before it started, if it took one.
    pub backup: Option<String>,
}

/// A lease: who holds a lock, why, and until when (unless renewed).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub owner: String,
    pub host: String,
    pub pid: i64,
    pub reason: Option<String>,
    pub acquired_ms: i64,
    pub heartbeat_ms: i64,
    pub expires_ms: i64,
}

/// What trying to take a lock gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    Acquired,
    /// Taken over from a holder whose lease had expired.
    TookOver(Lease),
    Held(Lease),
}

/// Release statuses that count as a successful deploy of their versions.
pub const SUCCESSFUL: &[&str] = &["active", "initial"];

pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Device and inode of the file the connection opened: a file at `path` with another
    /// identity (or none) means the store was deleted or replaced behind our back.
    opened: Mutex<Option<(u64, u64)>>,
    /// The scratch copy a read-only store works on, removed with it.
    _scratch: Option<ScratchDir>,
    /// Closed for another daemon ([`Store::suspend`]): every call fails until resumed.
    suspended: std::sync::atomic::AtomicBool,
}

/// A private directory under the system's temporary directory, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> std::io::Result<ScratchDir> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!(
            "tcf-store-read-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What is at the store's path compared with the file the daemon has open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    Intact,
    Missing,
    Replaced,
}

fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn open_connection(path: &Path) -> Result<Connection> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_err)?;
    // Before WAL: in exclusive mode the WAL index lives in our heap, not in a mapped -shm file.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_err)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

impl Store {
    /// Open (creating if needed) the store in `state_dir` and bring its schema up to date.
    pub fn open(state_dir: &Path) -> Result<Store> {
        let path = state_dir.join("state.db");
        let conn = open_connection(&path)?;
        // Only hashes and ciphertext are in it, but events and specs are nobody else's business.
        for file in [path.clone(), path.with_extension("db-wal")] {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600));
        }
        // Take the exclusive lock now, and learn which file we hold.
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        Ok(Store {
            opened: Mutex::new(file_identity(&path)),
            path,
            conn: Mutex::new(conn),
            _scratch: None,
            suspended: false.into(),
        })
    }

    /// Open the store of a daemon that is not running, for reading (`history` and `events` with
    /// no daemon). The store and its WAL are copied to a scratch directory and the copy is
    /// opened, so nothing in the state directory is written, locked or recovered.
    pub fn open_read_only(state_dir: &Path) -> Result<Store> {
        let path = state_dir.join("state.db");
        let copy_err = |source| StoreError::Rewrite {
            path: path.clone(),
            source,
        };
        if !path.exists() {
            return Err(copy_err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no state store here (the platform never ran with this state directory)",
            )));
        }
        let scratch = ScratchDir::new().map_err(copy_err)?;
        for (from, to) in [("state.db", "state.db"), ("state.db-wal", "state.db-wal")] {
            match std::fs::copy(state_dir.join(from), scratch.0.join(to)) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && from != "state.db" => {}
                Err(e) => return Err(copy_err(e)),
            }
        }
        let copy = scratch.0.join("state.db");
        let conn = open_connection(&copy)?;
        Ok(Store {
            opened: Mutex::new(file_identity(&copy)),
            path: copy,
            conn: Mutex::new(conn),
            _scratch: Some(scratch),
            suspended: false.into(),
        })
    }

    /// Whether the file at the store's path is still the one the daemon has open.
    pub fn file_state(&self) -> FileState {
        let opened = *self.opened.lock().unwrap_or_else(|p| p.into_inner());
        match file_identity(&self.path) {
            None => FileState::Missing,
            Some(now) if Some(now) != opened => FileState::Replaced,
            Some(_) => FileState::Intact,
        }
    }

    /// Write a fresh store at the path from everything the open connection still holds (the
    /// deleted file and its WAL stay readable through our open descriptors): releases with
    /// their history, instances, events, locks. Then continue on the new file. Written to a
    /// temporary file and renamed, so a crash half-way leaves no half store in place.
    pub fn rewrite(&self) -> Result<()> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let tmp = self.path.with_extension("db.rewrite");
        let _ = std::fs::remove_file(&tmp);
        conn.execute("VACUUM INTO ?1", params![tmp.to_string_lossy()])?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| rewrite_err(&tmp, e))?;
        for stale in ["db-wal", "db-shm"] {
            let _ = std::fs::remove_file(self.path.with_extension(stale));
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| rewrite_err(&self.path, e))?;
        let fresh = open_connection(&self.path)?;
        fresh.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))?;
        *conn = fresh;
        *self.opened.lock().unwrap_or_else(|p| p.into_inner()) = file_identity(&self.path);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Close the file so another process can open it (the daemon that takes over in a restart
    /// or upgrade: the store is held in exclusive mode). Every call fails with
    /// [`StoreError::HandedOver`] until [`resume`](Self::resume).
    pub fn suspend(&self) -> Result<()> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        self.suspended
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Dropping the old connection closes the file and releases its lock.
        *conn = Connection::open_in_memory()?;
        Ok(())
    }

    /// Open the file again after [`suspend`](Self::suspend) (the other daemon failed to start).
    pub fn resume(&self) -> Result<()> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let fresh = open_connection(&self.path)?;
        fresh.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))?;
        *conn = fresh;
        *self.opened.lock().unwrap_or_else(|p| p.into_inner()) = file_identity(&self.path);
        self.suspended
            .store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Run SQL on the store's own connection: fault injection for tests (a trigger that makes
    /// a write fail, say), since no other connection can open the store while we hold it.
    #[cfg(feature = "test-hooks")]
    pub fn execute_batch_for_tests(&self, sql: &str) -> Result<()> {
        self.with(|c| c.execute_batch(sql))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        if self.suspended.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::HandedOver);
        }
        Ok(f(&mut conn)?)
    }

    pub fn schema_version(&self) -> Result<i64> {
        self.with(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
    }

    pub fn append_event(&self, e: &NewEvent) -> Result<Event> {
        let ts = now_ms();
        self.with(|c| {
            c.execute(
                "INSERT INTO events (ts_ms, actor, kind, service, instance, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![ts, e.actor, e.kind, e.service, e.instance, e.message],
            )?;
            Ok(Event {
                id: c.last_insert_rowid(),
                ts_ms: ts,
                actor: e.actor.clone(),
                kind: e.kind.clone(),
                service: e.service.clone(),
                instance: e.instance.clone(),
                message: e.message.clone(),
            })
        })
    }

    /// Every event of `kind` at or after `since_ms` (Unix ms), oldest first.
    pub fn events_of_kind_since(&self, kind: &str, since_ms: i64) -> Result<Vec<Event>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, ts_ms, actor, kind, service, instance, message FROM events
                 WHERE kind = ?1 AND ts_ms >= ?2 ORDER BY id",
            )?;
            let rows = stmt
                .query_map(params![kind, since_ms], |r| {
                    Ok(Event {
                        id: r.get(0)?,
                        ts_ms: r.get(1)?,
                        actor: r.get(2)?,
                        kind: r.get(3)?,
                        service: r.get(4)?,
                        instance: r.get(5)?,
                        message: r.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    /// The newest `limit` events (optionally of one service), oldest first.
    pub fn events(&self, service: Option<&str>, after_id: i64, limit: u32) -> Result<Vec<Event>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, ts_ms, actor, kind, service, instance, message FROM events
                 WHERE id > ?1 AND (?2 IS NULL OR service = ?2)
                 ORDER BY id DESC LIMIT ?3",
            )?;
            let mut rows: Vec<Event> = stmt
                .query_map(params![after_id, service, limit], |r| {
                    Ok(Event {
                        id: r.get(0)?,
                        ts_ms: r.get(1)?,
                        actor: r.get(2)?,
                        kind: r.get(3)?,
                        service: r.get(4)?,
                        instance: r.get(5)?,
                        message: r.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            rows.reverse();
            Ok(rows)
        })
    }

    pub fn upsert_instance(&self, i: &InstanceRecord) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO instances (id, service, version, pid, pgid, proc_start_ticks, port, state, started_ms, runtime)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT(id) DO UPDATE SET service = ?2, version = ?3, pid = ?4, pgid = ?5,
                   proc_start_ticks = ?6, port = ?7, state = ?8, started_ms = ?9, runtime = ?10",
                params![
                    i.id,
                    i.service,
                    i.version,
                    i.pid,
                    i.pgid,
                    i.proc_start_ticks,
                    i.port,
                    i.state,
                    i.started_ms,
                    i.runtime
                ],
            )?;
            Ok(())
        })
    }

    pub fn remove_instance(&self, id: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM instances WHERE id = ?1", params![id])?;
            Ok(())
        })
    }

    pub fn instances(&self) -> Result<Vec<InstanceRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, service, version, pid, pgid, proc_start_ticks, port, state, started_ms, runtime
                 FROM instances ORDER BY id",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(InstanceRecord {
                        id: r.get(0)?,
                        service: r.get(1)?,
                        version: r.get(2)?,
                        pid: r.get(3)?,
                        pgid: r.get(4)?,
                        proc_start_ticks: r.get(5)?,
                        port: r.get(6)?,
                        state: r.get(7)?,
                        started_ms: r.get(8)?,
                        runtime: r.get(9)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    /// Record a release and its per-service versions in one transaction.
    pub fn create_release(
        &self,
        strategy: &str,
        status: &str,
        actor: &str,
        reason: Option<&str>,
        versions: &BTreeMap<String, String>,
    ) -> Result<i64> {
        self.create_release_with_specs(strategy, status, actor, reason, versions, &BTreeMap::new())
    }

    /// [`create_release`](Self::create_release), with the service spec (JSON) each service runs
    /// with in this release.
    pub fn create_release_with_specs(
        &self,
        strategy: &str,
        status: &str,
        actor: &str,
        reason: Option<&str>,
        versions: &BTreeMap<String, String>,
        specs: &BTreeMap<String, String>,
    ) -> Result<i64> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO releases (strategy, status, actor, reason, started_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![strategy, status, actor, reason, now_ms()],
            )?;
            let id = tx.last_insert_rowid();
            for (service, version) in versions {
                tx.execute(
                    "INSERT INTO release_services (release_id, service, version, spec) VALUES (?1, ?2, ?3, ?4)",
                    params![id, service, version, specs.get(service)],
                )?;
            }
            tx.commit()?;
            Ok(id)
        })
    }

    /// The spec `service` last ran `version` with in a release that really ran (active,
    /// initial, or since rolled back), if one was recorded.
    pub fn spec_of(&self, service: &str, version: &str) -> Result<Option<String>> {
        self.with(|c| {
            c.query_row(
                "SELECT rs.spec FROM release_services rs JOIN releases r ON r.id = rs.release_id
                 WHERE rs.service = ?1 AND rs.version = ?2 AND rs.spec IS NOT NULL
                   AND r.status IN ('active', 'initial', 'rolled_back')
                 ORDER BY r.id DESC LIMIT 1",
                params![service, version],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Record the backup a release took before it started.
    pub fn set_release_backup(&self, id: i64, backup: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE releases SET backup = ?2 WHERE id = ?1",
                params![id, backup],
            )?;
            Ok(())
        })
    }

    /// Set a release's status; the first status after `in_progress` also sets its end, and a
    /// later one (rolled back, say) keeps it: a release's duration is how long it ran.
    pub fn finish_release(&self, id: i64, status: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE releases SET status = ?2, finished_ms = COALESCE(finished_ms, ?3) WHERE id = ?1",
                params![id, status, now_ms()],
            )?;
            Ok(())
        })
    }

    /// Releases, newest first.
    pub fn releases(&self, limit: u32) -> Result<Vec<Release>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, strategy, status, actor, reason, started_ms, finished_ms, backup FROM releases
                 ORDER BY id DESC LIMIT ?1",
            )?;
            let mut releases: Vec<Release> = stmt
                .query_map(params![limit], |r| {
                    Ok(Release {
                        id: r.get(0)?,
                        strategy: r.get(1)?,
                        status: r.get(2)?,
                        actor: r.get(3)?,
                        reason: r.get(4)?,
                        started_ms: r.get(5)?,
                        finished_ms: r.get(6)?,
                        versions: BTreeMap::new(),
                        backup: r.get(7)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            // One query for every listed release's versions, not one per release.
            let mut svc = c.prepare(
                "SELECT release_id, service, version FROM release_services
                 WHERE release_id IN (SELECT id FROM releases ORDER BY id DESC LIMIT ?1)",
            )?;
            let mut versions: BTreeMap<i64, BTreeMap<String, String>> = BTreeMap::new();
            let rows = svc.query_map(params![limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            for row in rows {
                let (id, service, version) = row?;
                versions.entry(id).or_default().insert(service, version);
            }
            for rel in &mut releases {
                rel.versions = versions.remove(&rel.id).unwrap_or_default();
            }
            Ok(releases)
        })
    }

    /// Take the lock `name` for `lease.owner`, unless someone else holds an unexpired lease.
    pub fn acquire_lock(&self, lease: &Lease) -> Result<Acquire> {
        self.with(|c| {
            let tx = c.transaction()?;
            let current = tx
                .query_row(
                    "SELECT name, owner, host, pid, reason, acquired_ms, heartbeat_ms, expires_ms FROM locks WHERE name = ?1",
                    params![lease.name],
                    lease_from_row,
                )
                .optional()?;
            let outcome = match current {
                Some(held) if held.expires_ms > now_ms() => return Ok(Acquire::Held(held)),
                Some(expired) => Acquire::TookOver(expired),
                None => Acquire::Acquired,
            };
            tx.execute(
                "INSERT OR REPLACE INTO locks (name, owner, host, pid, reason, acquired_ms, heartbeat_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    lease.name,
                    lease.owner,
                    lease.host,
                    lease.pid,
                    lease.reason,
                    lease.acquired_ms,
                    lease.heartbeat_ms,
                    lease.expires_ms
                ],
            )?;
            tx.commit()?;
            Ok(outcome)
        })
    }

    /// Renew a lease we hold; false if it is no longer ours.
    pub fn renew_lock(&self, name: &str, owner: &str, expires_ms: i64) -> Result<bool> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE locks SET heartbeat_ms = ?3, expires_ms = ?4 WHERE name = ?1 AND owner = ?2",
                params![name, owner, now_ms(), expires_ms],
            )?;
            Ok(n == 1)
        })
    }

    /// Release a lock; with `owner` only if that owner holds it. True if a row went away.
    pub fn release_lock(&self, name: &str, owner: Option<&str>) -> Result<bool> {
        self.with(|c| {
            let n = match owner {
                Some(o) => c.execute(
                    "DELETE FROM locks WHERE name = ?1 AND owner = ?2",
                    params![name, o],
                )?,
                None => c.execute("DELETE FROM locks WHERE name = ?1", params![name])?,
            };
            Ok(n > 0)
        })
    }

    pub fn lock(&self, name: &str) -> Result<Option<Lease>> {
        self.with(|c| {
            c.query_row(
                "SELECT name, owner, host, pid, reason, acquired_ms, heartbeat_ms, expires_ms FROM locks WHERE name = ?1",
                params![name],
                lease_from_row,
            )
            .optional()
        })
    }

    /// Releases left `in_progress` by a daemon that died: mark them `interrupted`.
    pub fn interrupt_unfinished_releases(&self) -> Result<Vec<i64>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT id FROM releases WHERE status = 'in_progress'")?;
            let ids: Vec<i64> = stmt
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            // When it stopped is unknown (the daemon died): no end, so no made-up duration.
            c.execute(
                "UPDATE releases SET status = 'interrupted' WHERE status = 'in_progress'",
                [],
            )?;
            Ok(ids)
        })
    }

    /// The version each service runs according to the newest active release that names it.
    pub fn active_versions(&self) -> Result<BTreeMap<String, String>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT rs.service, rs.version FROM release_services rs
                 JOIN releases r ON r.id = rs.release_id
                 WHERE r.status IN ('active', 'initial')
                 ORDER BY r.id ASC",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            // Later releases overwrite earlier ones for the services they name.
            Ok(rows.into_iter().collect())
        })
    }
}

fn rewrite_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Rewrite {
        path: path.to_path_buf(),
        source,
    }
}

fn lease_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        name: r.get(0)?,
        owner: r.get(1)?,
        host: r.get(2)?,
        pid: r.get(3)?,
        reason: r.get(4)?,
        acquired_ms: r.get(5)?,
        heartbeat_ms: r.get(6)?,
        expires_ms: r.get(7)?,
    })
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: current,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(owner: &str, expires_ms: i64) -> Lease {
        Lease {
            name: "deploy".into(),
            owner: owner.into(),
            host: "h".into(),
            pid: 1,
            reason: None,
            acquired_ms: now_ms(),
            heartbeat_ms: now_ms(),
            expires_ms,
        }
    }

    #[test]
    fn a_lock_is_exclusive_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.acquire_lock(&lease("a", now_ms() + 60_000)).unwrap(),
            Acquire::Acquired
        );
        assert!(
            matches!(s.acquire_lock(&lease("b", now_ms() + 60_000)).unwrap(), Acquire::Held(l) if l.owner == "a")
        );
        assert!(s.renew_lock("deploy", "a", now_ms() - 1).unwrap());
        assert!(
            matches!(s.acquire_lock(&lease("b", now_ms() + 60_000)).unwrap(), Acquire::TookOver(l) if l.owner == "a")
        );
        assert!(
            !s.renew_lock("deploy", "a", now_ms() + 1000).unwrap(),
            "a lost its lease"
        );
        assert!(!s.release_lock("deploy", Some("a")).unwrap());
        assert!(s.release_lock("deploy", Some("b")).unwrap());
        assert_eq!(s.lock("deploy").unwrap(), None);
    }

    #[test]
    fn a_suspended_store_can_be_opened_by_another_and_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        first.append_event(&event("before")).unwrap();
        assert!(Store::open(dir.path()).is_err(), "held in exclusive mode");
        first.suspend().unwrap();
        assert!(matches!(
            first.append_event(&event("while")),
            Err(StoreError::HandedOver)
        ));
        {
            let second = Store::open(dir.path()).unwrap();
            assert_eq!(second.events(None, 0, 10).unwrap().len(), 1);
            second.append_event(&event("by the second")).unwrap();
        }
        first.resume().unwrap();
        assert_eq!(first.events(None, 0, 10).unwrap().len(), 2);
    }

    #[test]
    fn unfinished_releases_are_marked_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let v: BTreeMap<String, String> = [("a".to_string(), "v2".to_string())].into();
        let id = s
            .create_release("blue_green", "in_progress", "t", None, &v)
            .unwrap();
        assert_eq!(s.interrupt_unfinished_releases().unwrap(), vec![id]);
        assert_eq!(s.releases(1).unwrap()[0].status, "interrupted");
        assert!(s.active_versions().unwrap().is_empty());
    }

    #[test]
    fn migrates_a_new_store_and_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        s.append_event(&NewEvent {
            actor: "test".into(),
            kind: "k".into(),
            message: "m".into(),
            ..Default::default()
        })
        .unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.events(None, 0, 10).unwrap().len(), 1);
    }

    #[test]
    fn refuses_a_store_from_the_future() {
        let dir = tempfile::tempdir().unwrap();
        let c = Connection::open(dir.path().join("state.db")).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn active_versions_follow_the_newest_active_release() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let v = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        s.create_release(
            "initial",
            "active",
            "t",
            None,
            &v(&[("a", "v1"), ("b", "v1")]),
        )
        .unwrap();
        s.create_release("blue_green", "active", "t", None, &v(&[("a", "v2")]))
            .unwrap();
        s.create_release("blue_green", "failed", "t", None, &v(&[("b", "v9")]))
            .unwrap();
        assert_eq!(s.active_versions().unwrap(), v(&[("a", "v2"), ("b", "v1")]));
        let rel = s.releases(10).unwrap();
        assert_eq!(rel.len(), 3);
        assert_eq!(rel[0].versions, v(&[("b", "v9")]));
        assert_eq!(rel[2].versions, v(&[("a", "v1"), ("b", "v1")]));
        let newest = s.releases(1).unwrap();
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].versions, v(&[("b", "v9")]));
    }

    #[test]
    fn events_filter_by_service_and_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for svc in ["a", "b", "a"] {
            s.append_event(&NewEvent {
                actor: "t".into(),
                kind: "k".into(),
                service: Some(svc.into()),
                message: svc.into(),
                ..Default::default()
            })
            .unwrap();
        }
        assert_eq!(s.events(Some("a"), 0, 10).unwrap().len(), 2);
        assert_eq!(s.events(None, 1, 10).unwrap().len(), 2);
        assert_eq!(s.events(None, 0, 1).unwrap()[0].id, 3);
    }

    fn event(kind: &str) -> NewEvent {
        NewEvent {
            actor: "t".into(),
            kind: kind.into(),
            service: None,
            instance: None,
            message: "m".into(),
        }
    }

    #[test]
    fn a_release_remembers_the_spec_each_service_ran_with() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let v = BTreeMap::from([("api".to_string(), "v1".to_string())]);
        let spec = BTreeMap::from([("api".to_string(), "{\"instances\":2}".to_string())]);
        s.create_release_with_specs("initial", "active", "t", None, &v, &spec)
            .unwrap();
        let failed = BTreeMap::from([("api".to_string(), "{\"instances\":9}".to_string())]);
        s.create_release_with_specs("blue_green", "failed", "t", None, &v, &failed)
            .unwrap();
        assert_eq!(
            s.spec_of("api", "v1").unwrap().as_deref(),
            Some("{\"instances\":2}"),
            "a failed release never ran its spec"
        );
        assert_eq!(s.spec_of("api", "v2").unwrap(), None);
    }

    #[test]
    fn a_later_status_keeps_how_long_the_release_ran() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = s
            .create_release("blue_green", "in_progress", "t", None, &BTreeMap::new())
            .unwrap();
        s.finish_release(id, "active").unwrap();
        let ended = s.releases(1).unwrap()[0].finished_ms;
        assert!(ended.is_some());
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.finish_release(id, "rolled_back").unwrap();
        let r = &s.releases(1).unwrap()[0];
        assert_eq!((r.status.as_str(), r.finished_ms), ("rolled_back", ended));
    }

    #[test]
    fn a_stopped_daemons_store_can_be_read_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.append_event(&event("kept")).unwrap();
            // Dropped without a checkpoint of its own: as after a crash, the WAL may be left.
        }
        let before: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let r = Store::open_read_only(dir.path()).unwrap();
        assert_eq!(r.events(None, 0, 10).unwrap()[0].kind, "kept");
        drop(r);
        let mut after: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let mut before = before;
        before.sort();
        after.sort();
        assert_eq!(before, after, "reading created no file");
    }

    #[test]
    fn no_shared_memory_file_is_ever_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for _ in 0..50 {
            s.append_event(&event("k")).unwrap();
        }
        assert!(dir.path().join("state.db-wal").exists());
        assert!(
            !dir.path().join("state.db-shm").exists(),
            "a -shm file is mapped into memory: a full disk would SIGBUS the daemon"
        );
    }

    #[test]
    fn a_deleted_store_is_noticed_and_written_again_from_what_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let versions = BTreeMap::from([("api".to_string(), "v2".to_string())]);
        s.create_release("blue_green", "active", "alice", None, &versions)
            .unwrap();
        s.append_event(&event("before")).unwrap();
        assert_eq!(s.file_state(), FileState::Intact);
        for f in ["state.db", "state.db-wal", "state.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        assert_eq!(s.file_state(), FileState::Missing);
        s.rewrite().unwrap();
        assert_eq!(s.file_state(), FileState::Intact);
        s.append_event(&event("after")).unwrap();
        drop(s);
        // What a restarted daemon would read: the history from before the loss and after.
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.active_versions().unwrap(), versions);
        let kinds: Vec<String> = again
            .events(None, 0, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["before", "after"]);
    }

    #[test]
    fn a_replaced_store_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        std::fs::rename(dir.path().join("state.db"), dir.path().join("moved.db")).unwrap();
        std::fs::write(dir.path().join("state.db"), b"").unwrap();
        assert_eq!(s.file_state(), FileState::Replaced);
    }

    /// Runs as root (CI does): a 1 MiB tmpfs as the state directory.
    #[test]
    fn a_full_disk_fails_writes_with_an_error_and_reads_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            mounted.success(),
            "this test needs root to mount a small tmpfs"
        );
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(dir.path());
        let s = Store::open(dir.path()).unwrap();
        let big = NewEvent {
            message: "x".repeat(64 * 1024),
            ..event("big")
        };
        let mut failed = None;
        for _ in 0..200 {
            if let Err(e) = s.append_event(&big) {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("a 1 MiB filesystem must fill up");
        assert!(
            e.to_string().contains("full") || e.to_string().contains("disk"),
            "{e}"
        );
        // Still answering: reads work, and the next write is refused the same clean way.
        assert!(s.events(None, 0, 5).is_ok());
        assert!(s.append_event(&big).is_err());
    }
}
