//! Backups proven by restoring them: PostgreSQL (`pg_dump -Fc` per database and the globals),
//! Redis (an RDB fetched like a replica) and directories (tar), compressed with zstd and
//! optionally encrypted to age recipients, described by a manifest with its own checksum,
//! verified by checksums or by a real restore into a scratch place, restored with a recovery
//! point first, and pruned with restic's retention rules. See docs/backups.md.
//!
//! Everything here is blocking (child processes and file I/O); async callers use
//! [`pre_deploy_backup`] or `spawn_blocking`.

pub mod directory;
pub mod error;
pub mod manifest;
pub mod pipeline;
pub mod postgres;
pub mod redis;
pub mod repo;
pub mod retention;
pub mod schedule;
pub mod time;
mod tool;

pub use error::{BackupError, Result};
pub use manifest::{Artifact, ArtifactKind, Expectation, Manifest, Trigger};
pub use pipeline::{Identities, Recipients};
pub use repo::{Listed, Repository, VerifyRecord};
pub use retention::{Decision, Policy};
pub use schedule::Schedule;

use error::IoContext;
use pipeline::{ArtifactWriter, ContentReader};
use repo::RepoLock;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A backup's id, such as `20261125T161824Z-3fa1`.
pub type BackupId = String;

/// What `[backup]` says, resolved: where, how, and what to back up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub repository: PathBuf,
    /// age recipients (`age1…`); empty: not encrypted.
    pub recipients: Vec<String>,
    pub retention: Option<Policy>,
    /// Where pg_dump and friends are, when not in /usr/lib/postgresql/MAJOR/bin or PATH.
    pub pg_bin_dir: Option<PathBuf>,
    pub sources: BTreeMap<String, Source>,
}

#[derive(Debug, Clone)]
pub enum Source {
    Postgres {
        conn: postgres::PgConn,
        /// `None`: every database but templates.
        databases: Option<Vec<String>>,
    },
    Redis {
        conn: redis::RedisConn,
    },
    Directory {
        path: PathBuf,
    },
}

impl Settings {
    /// From the config's `[backup]`. `secret` gives a secret's value by name, for
    /// `${secret:NAME}` in passwords (the platform's secret store; parsed as services' env
    /// references are); a missing one is an error naming it, never showing a value. A
    /// PostgreSQL source without a password uses `PGPASSWORD` from the environment, as the
    /// PostgreSQL tools do.
    pub fn from_config(
        config: &tcf_config::BackupConfig,
        secret: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings> {
        use tcf_auth::reference::Substitution;
        let resolve = |source: &str, password: &Option<String>| -> Result<Option<String>> {
            let Some(p) = password else {
                return Ok(None);
            };
            tcf_auth::reference::substitute(p, secret)
                .map(Some)
                .map_err(|e| match e {
                    Substitution::Missing(name) => BackupError::Invalid(format!(
                        "backup source {source} refers to the secret {name}, which is not set\nhint: set it with `tcf-platform secrets set {name}` (the value on stdin)"
                    )),
                    Substitution::Malformed(m) => {
                        BackupError::Invalid(format!("backup source {source}: password: {m}"))
                    }
                })
        };
        let current_user = || {
            nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| "postgres".into())
        };
        let mut sources = BTreeMap::new();
        for (name, src) in &config.sources {
            let source = match &src.kind {
                tcf_config::BackupSourceKind::Postgres {
                    host,
                    port,
                    user,
                    password,
                    databases,
                } => Source::Postgres {
                    conn: postgres::PgConn {
                        host: host.clone(),
                        port: *port,
                        user: user.clone().unwrap_or_else(current_user),
                        password: resolve(name, password)?
                            .or_else(|| std::env::var("PGPASSWORD").ok()),
                    },
                    databases: databases.clone(),
                },
                tcf_config::BackupSourceKind::Redis {
                    host,
                    port,
                    password,
                } => Source::Redis {
                    conn: redis::RedisConn {
                        host: host.clone(),
                        port: *port,
                        password: resolve(name, password)?,
                    },
                },
                tcf_config::BackupSourceKind::Directory { path } => {
                    Source::Directory { path: path.clone() }
                }
            };
            sources.insert(name.clone(), source);
        }
        let retention = config.retention.as_ref().map(|r| Policy {
            keep_last: r.keep_last,
            keep_hourly: r.keep_hourly,
            keep_daily: r.keep_daily,
            keep_weekly: r.keep_weekly,
            keep_monthly: r.keep_monthly,
            keep_yearly: r.keep_yearly,
        });
        if let Some(s) = &config.schedule {
            Schedule::parse(s)?;
        }
        Ok(Settings {
            repository: config.repository.clone(),
            recipients: config.recipients.clone(),
            retention,
            pg_bin_dir: config.pg_bin_dir.clone(),
            sources,
        })
    }
}

impl Settings {
    /// For reading the repository only (list, the last verify): passwords are not resolved,
    /// so a `${secret:NAME}` needs no secret store. Never connect to a source with these.
    pub fn for_repository(config: &tcf_config::BackupConfig) -> Result<Settings> {
        Settings::from_config(config, &|_| Some(String::new()))
    }
}

impl Source {
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Postgres { .. } => "postgres",
            Source::Redis { .. } => "redis",
            Source::Directory { .. } => "directory",
        }
    }
}

/// Where progress goes: the CLI prints it on a terminal, the daemon logs it.
pub trait Progress: Send + Sync {
    fn step(&self, message: &str);
}

/// Progress that goes nowhere.
pub struct Silent;

impl Progress for Silent {
    fn step(&self, _message: &str) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Every artifact's size and SHA-256 as stored: no identity, no server needed.
    Checksums,
    /// Checksums, then a real restore of every artifact into a scratch place, compared with
    /// what the manifest recorded at backup time.
    Restore,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Checksums => "checksums",
            Level::Restore => "restore",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Ok,
    Failed,
    /// The check could not run (the source is no longer configured, the server is down, …):
    /// never counted as a pass.
    NotRun,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArtifactCheck {
    pub artifact: String,
    pub status: CheckStatus,
    /// What was checked, or what failed.
    pub detail: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub id: String,
    pub level: Level,
    pub ok: bool,
    /// Problems with the backup as a whole (the manifest).
    pub problems: Vec<String>,
    pub artifacts: Vec<ArtifactCheck>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub id: String,
    /// The backup taken of what was overwritten, before anything was (none when there was
    /// nothing to overwrite: a directory that no longer exists).
    pub recovery_point: Option<String>,
    pub restored: Vec<String>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub decisions: Vec<Decision>,
    /// Backups whose manifest cannot be read: never removed automatically.
    pub damaged: Vec<String>,
}

/// The file name for an artifact: the source name and a sanitized database name.
fn artifact_file(
    source: &str,
    what: &str,
    ext: &str,
    encrypted: bool,
    taken: &mut BTreeSet<String>,
) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let base = format!("{}.{}", clean(source), clean(what));
    let mut name = format!("{base}.{ext}.zst{}", if encrypted { ".age" } else { "" });
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!(
            "{base}-{n}.{ext}.zst{}",
            if encrypted { ".age" } else { "" }
        );
        n += 1;
    }
    name
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Remembers the first bytes written, to check a stream's magic number.
struct Head<'a> {
    inner: &'a mut dyn Write,
    head: Vec<u8>,
}

impl Write for Head<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if self.head.len() < 16 {
            let take = (16 - self.head.len()).min(n);
            self.head.extend_from_slice(&buf[..take]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub struct Backups {
    settings: Settings,
    repo: Repository,
}

impl Backups {
    pub fn new(settings: Settings) -> Backups {
        Backups {
            repo: Repository::new(settings.repository.clone()),
            settings,
        }
    }

    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn source(&self, name: &str) -> Result<&Source> {
        self.settings
            .sources
            .get(name)
            .ok_or_else(|| BackupError::UnknownSource(name.to_string()))
    }

    /// Back up every source (or only `only`), verify the stored artifacts' checksums, and
    /// return the manifest. Nothing is listed unless all of it is on disk.
    pub fn create(
        &self,
        trigger: Trigger,
        only: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<Manifest> {
        let lock = self.repo.lock()?;
        for leftover in self.repo.clean_leftovers(&lock)? {
            progress.step(&format!("removed {leftover}, left by an interrupted run"));
        }
        let sources: Vec<String> = match only {
            Some(s) => {
                self.source(s)?;
                vec![s.to_string()]
            }
            None => self.settings.sources.keys().cloned().collect(),
        };
        if sources.is_empty() {
            return Err(BackupError::Invalid(
                "no backup sources are configured\nhint: add [backup.sources.NAME] with kind = \"postgres\", \"redis\" or \"directory\"".into(),
            ));
        }
        let manifest = self.create_locked(&lock, trigger, &sources, progress)?;
        let report = self.verify_locked(
            &lock,
            &manifest.id,
            Level::Checksums,
            &Identities::none(),
            progress,
        )?;
        if !report.ok {
            return Err(BackupError::Damaged {
                id: manifest.id,
                problem: format!(
                    "failed its checksum verification right after it was written: {}",
                    describe_failures(&report)
                ),
            });
        }
        Ok(manifest)
    }

    fn create_locked(
        &self,
        lock: &RepoLock,
        trigger: Trigger,
        sources: &[String],
        progress: &dyn Progress,
    ) -> Result<Manifest> {
        let recipients = Recipients::parse(&self.settings.recipients)?;
        let started = time::now_unix_ms();
        // Ids are the second and 16 random bits: under the lock, never reuse one that exists
        // (a recovery point taken in the same second as the backup it protects, say).
        let mut id = repo::new_id(started.div_euclid(1000));
        while self.repo.backup_dir(&id).exists() {
            id = repo::new_id(started.div_euclid(1000));
        }
        let staging = self.repo.staging(lock, &id)?;
        progress.step(&format!("backup {id} ({trigger})"));
        let result = self.write_artifacts(&staging, &recipients, sources, progress);
        let artifacts = match result {
            Ok(a) => a,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let manifest = Manifest {
            format: manifest::FORMAT_VERSION,
            id: id.clone(),
            time: time::rfc3339_ms(started),
            finished: time::rfc3339_ms(time::now_unix_ms()),
            trigger,
            hostname: hostname(),
            recipients: self.settings.recipients.clone(),
            artifacts,
        };
        if let Err(e) = self.repo.commit(lock, &staging, &manifest) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        progress.step(&format!(
            "backup {id} completed: {} artifacts",
            manifest.artifacts.len()
        ));
        Ok(manifest)
    }

    fn write_artifacts(
        &self,
        staging: &Path,
        recipients: &Recipients,
        sources: &[String],
        progress: &dyn Progress,
    ) -> Result<Vec<Artifact>> {
        let encrypted = !recipients.is_empty();
        let mut taken = BTreeSet::new();
        let mut artifacts = Vec::new();
        for name in sources {
            let source = self.source(name)?;
            // One artifact: open the file, let `fill` write the data, finish and describe it.
            let mut one = |file: String,
                           kind: ArtifactKind,
                           database: Option<String>,
                           tool: String,
                           server: Option<String>,
                           fill: &mut dyn FnMut(&mut dyn Write, &str) -> Result<Expectation>|
             -> Result<()> {
                let path = staging.join(&file);
                let started = Instant::now();
                let context = format!(
                    "writing the artifact {file} to the repository {}",
                    self.repo.root().display()
                );
                let mut writer = ArtifactWriter::create(&path, recipients)?;
                let expect = fill(&mut writer, &context)?;
                let sums = writer.finish().map_err(|source| BackupError::Io {
                    context: context.clone(),
                    source,
                })?;
                progress.step(&format!("  {file}: {} bytes", sums.size));
                artifacts.push(Artifact {
                    file,
                    source: name.clone(),
                    kind,
                    database,
                    size: sums.size,
                    sha256: sums.sha256,
                    content_size: sums.content_size,
                    content_sha256: sums.content_sha256,
                    compression: "zstd".into(),
                    encrypted,
                    tool,
                    server_version: server,
                    duration_ms: started.elapsed().as_millis() as u64,
                    expect,
                });
                Ok(())
            };
            match source {
                Source::Postgres { conn, databases } => {
                    let (server, major) = postgres::server_version(conn)?;
                    let tools =
                        postgres::find_tools(major, &server, self.settings.pg_bin_dir.as_deref())?;
                    let dbs = match databases {
                        Some(d) => d.clone(),
                        None => postgres::list_databases(conn)?,
                    };
                    progress.step(&format!(
                        "{name}: PostgreSQL {server} at {}, {} database(s), {}",
                        conn.address(),
                        dbs.len(),
                        tools.version
                    ));
                    for db in &dbs {
                        let file =
                            artifact_file(name, &format!("db.{db}"), "dump", encrypted, &mut taken);
                        one(
                            file,
                            ArtifactKind::PostgresDatabase,
                            Some(db.clone()),
                            tools.version.clone(),
                            Some(server.clone()),
                            &mut |w, ctx| postgres::dump_database(conn, &tools, db, w, ctx),
                        )?;
                    }
                    let file = artifact_file(name, "globals", "sql", encrypted, &mut taken);
                    let dumpall_version = tools.version.replace("pg_dump", "pg_dumpall");
                    let mut note = None;
                    one(
                        file,
                        ArtifactKind::PostgresGlobals,
                        None,
                        dumpall_version,
                        Some(server.clone()),
                        &mut |w, ctx| {
                            note = postgres::dump_globals(conn, &tools, w, ctx)?;
                            Ok(Expectation::ContentOnly)
                        },
                    )?;
                    if let Some(n) = note {
                        progress.step(&format!("  note: {n}"));
                    }
                }
                Source::Redis { conn } => {
                    let version = redis::tool_version()?;
                    let file = artifact_file(name, "dump", "rdb", encrypted, &mut taken);
                    let mut server = None;
                    progress.step(&format!("{name}: Redis at {}, {version}", conn.address()));
                    // The server version is only known once connected: fill it in afterwards.
                    one(
                        file,
                        ArtifactKind::RedisRdb,
                        None,
                        version,
                        None,
                        &mut |w, ctx| {
                            let mut head = Head {
                                inner: w,
                                head: Vec::new(),
                            };
                            let (keys, v) = redis::fetch_rdb(conn, &mut head, ctx)?;
                            if !head.head.starts_with(b"REDIS") {
                                return Err(BackupError::Redis {
                                    address: conn.address(),
                                    message: "what redis-cli --rdb sent is not an RDB snapshot"
                                        .into(),
                                });
                            }
                            server = Some(v);
                            Ok(Expectation::Keys { keys })
                        },
                    )?;
                    if let Some(last) = artifacts.last_mut() {
                        last.server_version = server;
                    }
                }
                Source::Directory { path } => {
                    let file = artifact_file(name, "tree", "tar", encrypted, &mut taken);
                    progress.step(&format!("{name}: directory {}", path.display()));
                    let mut skipped = Vec::new();
                    one(
                        file,
                        ArtifactKind::DirectoryTar,
                        None,
                        format!("tcf-backup {} (tar)", env!("CARGO_PKG_VERSION")),
                        None,
                        &mut |w, ctx| {
                            let (stats, skip) =
                                directory::archive(path, w).map_err(|e| match e {
                                    BackupError::Io { source, .. }
                                        if source.raw_os_error() == Some(nix::libc::ENOSPC) =>
                                    {
                                        BackupError::Io {
                                            context: ctx.to_string(),
                                            source,
                                        }
                                    }
                                    other => other,
                                })?;
                            skipped = skip;
                            Ok(Expectation::Files {
                                files: stats.files,
                                directories: stats.directories,
                                symlinks: stats.symlinks,
                                bytes: stats.bytes,
                            })
                        },
                    )?;
                    for s in skipped {
                        progress.step(&format!(
                            "  skipped {} (not a file, directory or link)",
                            s.display()
                        ));
                    }
                }
            }
        }
        Ok(artifacts)
    }

    /// Every completed backup, oldest first.
    pub fn list(&self) -> Result<Vec<Listed>> {
        self.repo.list()
    }

    /// Check backup `id`; the report names every artifact that failed and how. The result is
    /// recorded beside the backup (retention protects the newest verified backup).
    pub fn verify(
        &self,
        id: &str,
        level: Level,
        identities: &Identities,
        progress: &dyn Progress,
    ) -> Result<VerifyReport> {
        let lock = self.repo.lock()?;
        self.verify_locked(&lock, id, level, identities, progress)
    }

    fn verify_locked(
        &self,
        lock: &RepoLock,
        id: &str,
        level: Level,
        identities: &Identities,
        progress: &dyn Progress,
    ) -> Result<VerifyReport> {
        let mut report = VerifyReport {
            id: id.to_string(),
            level,
            ok: false,
            problems: Vec::new(),
            artifacts: Vec::new(),
        };
        let manifest = match self.repo.manifest(id) {
            Ok(m) => m,
            Err(BackupError::NotFound { .. }) => {
                return Err(BackupError::NotFound {
                    id: id.into(),
                    repository: self.repo.root().into(),
                })
            }
            Err(e) => {
                report.problems.push(e.to_string());
                self.record(lock, &report)?;
                return Ok(report);
            }
        };
        let dir = self.repo.backup_dir(id);
        for artifact in &manifest.artifacts {
            progress.step(&format!("verifying {} ({})", artifact.file, level.as_str()));
            let check = self.check_artifact(&dir, artifact, level, identities);
            if check.status != CheckStatus::Ok {
                progress.step(&format!("  {}: {}", artifact.file, check.detail.join("; ")));
            }
            report.artifacts.push(check);
        }
        report.ok = report.problems.is_empty()
            && report.artifacts.iter().all(|a| a.status == CheckStatus::Ok);
        self.record(lock, &report)?;
        Ok(report)
    }

    fn record(&self, lock: &RepoLock, report: &VerifyReport) -> Result<()> {
        if !self.repo.backup_dir(&report.id).is_dir() {
            return Ok(());
        }
        let mut problems = report.problems.clone();
        for a in report
            .artifacts
            .iter()
            .filter(|a| a.status != CheckStatus::Ok)
        {
            problems.push(format!("{}: {}", a.artifact, a.detail.join("; ")));
        }
        self.repo.record_verify(
            lock,
            &report.id,
            &VerifyRecord {
                level: report.level.as_str().into(),
                time: time::Civil::from_unix(time::now_unix()).rfc3339(),
                ok: report.ok,
                problems,
            },
        )
    }

    fn check_artifact(
        &self,
        dir: &Path,
        artifact: &Artifact,
        level: Level,
        identities: &Identities,
    ) -> ArtifactCheck {
        let mut check = ArtifactCheck {
            artifact: artifact.file.clone(),
            status: CheckStatus::Failed,
            detail: Vec::new(),
        };
        let path = dir.join(&artifact.file);
        match pipeline::file_sha256(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                check.detail.push("the file is missing".into());
                return check;
            }
            Err(e) => {
                check.detail.push(format!("cannot read it: {e}"));
                return check;
            }
            Ok((size, sha)) => {
                if size != artifact.size {
                    check.detail.push(format!(
                        "{size} bytes on disk, {} recorded (truncated or extended)",
                        artifact.size
                    ));
                }
                if sha != artifact.sha256 {
                    check.detail.push(format!(
                        "SHA-256 {sha} does not match the recorded {}",
                        artifact.sha256
                    ));
                }
                if !check.detail.is_empty() {
                    return check;
                }
                check.detail.push("size and SHA-256 match".into());
            }
        }
        if level == Level::Checksums {
            check.status = CheckStatus::Ok;
            return check;
        }
        match self.restore_check(&path, artifact, identities) {
            Ok(Ok(done)) => {
                check.status = CheckStatus::Ok;
                check.detail.push(done);
            }
            Ok(Err(problems)) => check.detail = problems,
            Err(e) => {
                check.status = match e {
                    BackupError::UnknownSource(_)
                    | BackupError::ToolMissing(_)
                    | BackupError::Postgres { .. }
                    | BackupError::Redis { .. }
                    | BackupError::Encryption(_) => CheckStatus::NotRun,
                    _ => CheckStatus::Failed,
                };
                check.detail.push(format!(
                    "{}restore: {e}",
                    if check.status == CheckStatus::NotRun {
                        "could not run the "
                    } else {
                        ""
                    }
                ));
            }
        }
        check
    }

    /// Restore one artifact into a scratch place and compare. Outer error: the check could not
    /// run or the restore failed; inner error: it ran and the data differs.
    fn restore_check(
        &self,
        path: &Path,
        artifact: &Artifact,
        identities: &Identities,
    ) -> Result<std::result::Result<String, Vec<String>>> {
        let mut content = ContentReader::open(path, artifact.encrypted, identities)?;
        let mut problems = Vec::new();
        let done = match artifact.kind {
            ArtifactKind::PostgresDatabase => {
                let Source::Postgres { conn, .. } = self.source(&artifact.source)? else {
                    return Err(BackupError::UnknownSource(artifact.source.clone()));
                };
                let (server, major) = postgres::server_version(conn)?;
                let tools =
                    postgres::find_tools(major, &server, self.settings.pg_bin_dir.as_deref())?;
                problems.extend(postgres::verify_restore(
                    conn,
                    &tools,
                    &artifact.file,
                    &artifact.expect,
                    &mut content,
                )?);
                "restored into a scratch database: every table's rows and checksum match"
                    .to_string()
            }
            ArtifactKind::PostgresGlobals => {
                content
                    .drain()
                    .context(|| format!("reading {}", artifact.file))?;
                "content checksum matches (roles are not applied to a scratch place)".to_string()
            }
            ArtifactKind::RedisRdb => {
                let server = redis::Throwaway::start(&mut content, self.repo.root())?;
                let mut client = server.conn.connect()?;
                let actual = client.keyspace()?;
                match &artifact.expect {
                    Expectation::Keys { keys: Some(expected) } => {
                        problems.extend(redis::compare_keys(expected, &actual));
                        "loaded by a scratch redis-server: key counts match".to_string()
                    }
                    _ => format!("loaded by a scratch redis-server ({} keys; no exact count was recorded: the server changed during the backup)", actual.values().sum::<u64>()),
                }
            }
            ArtifactKind::DirectoryTar => {
                let scratch = tempfile::Builder::new()
                    .prefix(".tmp-verify-")
                    .tempdir_in(self.repo.root())
                    .context(|| "creating a scratch directory".into())?;
                let stats = directory::extract(&mut content, scratch.path(), &artifact.file)?;
                if let Expectation::Files {
                    files,
                    directories,
                    symlinks,
                    bytes,
                } = artifact.expect
                {
                    let want = directory::TreeStats {
                        files,
                        directories,
                        symlinks,
                        bytes,
                    };
                    if stats != want {
                        problems.push(format!("extracted {stats:?}, recorded {want:?}"));
                    }
                }
                "extracted into a scratch directory: file, directory, link and byte counts match"
                    .to_string()
            }
        };
        content
            .drain()
            .context(|| format!("reading {}", artifact.file))?;
        let (size, sha) = content.finish();
        if size != artifact.content_size || sha != artifact.content_sha256 {
            problems.push(format!(
                "the data read back ({size} bytes, SHA-256 {sha}) differs from what was backed up"
            ));
        }
        Ok(if problems.is_empty() {
            Ok(done)
        } else {
            Err(problems)
        })
    }

    /// Restore backup `id` (every source, or only `only`) over the live data. First every
    /// artifact's checksum is checked and a recovery-point backup of the same sources is taken;
    /// each database and tree is restored into a fresh place and compared before it replaces
    /// the live one. Stopping the services that use a source is the caller's job.
    pub fn restore(
        &self,
        id: &str,
        only: Option<&str>,
        identities: &Identities,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let lock = self.repo.lock()?;
        let manifest = self.repo.manifest(id)?;
        let artifacts: Vec<&Artifact> = manifest
            .artifacts
            .iter()
            .filter(|a| only.is_none_or(|s| a.source == s))
            .collect();
        if artifacts.is_empty() {
            return Err(BackupError::Invalid(format!(
                "backup {id} holds nothing from {}\nhint: its sources are {}",
                only.map(|s| format!("source {s:?}"))
                    .unwrap_or_else(|| "any source".into()),
                manifest.sources().join(", ")
            )));
        }
        let dir = self.repo.backup_dir(id);
        let mut sources: Vec<String> = Vec::new();
        for a in &artifacts {
            self.source(&a.source)?;
            if !sources.contains(&a.source) {
                sources.push(a.source.clone());
            }
            let check = self.check_artifact(&dir, a, Level::Checksums, identities);
            if check.status != CheckStatus::Ok {
                return Err(BackupError::Damaged {
                    id: id.into(),
                    problem: format!(
                        "{}: {}; nothing was restored",
                        a.file,
                        check.detail.join("; ")
                    ),
                });
            }
        }
        // A directory that is gone has nothing to keep.
        let existing: Vec<String> = sources
            .iter()
            .filter(|s| !matches!(self.settings.sources.get(*s), Some(Source::Directory { path }) if !path.exists()))
            .cloned()
            .collect();
        let recovery_point = if existing.is_empty() {
            None
        } else {
            progress.step(&format!(
                "taking a recovery point of {} before restoring",
                existing.join(", ")
            ));
            let trigger = Trigger::RecoveryPoint {
                restoring: id.to_string(),
            };
            let point = self.create_locked(&lock, trigger, &existing, progress)?;
            let check =
                self.verify_locked(&lock, &point.id, Level::Checksums, identities, progress)?;
            if !check.ok {
                return Err(BackupError::Damaged {
                    id: point.id,
                    problem: format!(
                        "the recovery point failed its checksum verification ({}); nothing was restored",
                        describe_failures(&check)
                    ),
                });
            }
            Some(point.id)
        };
        let mut report = RestoreReport {
            id: id.into(),
            recovery_point,
            restored: Vec::new(),
            notes: Vec::new(),
        };
        for a in artifacts {
            progress.step(&format!("restoring {}", a.file));
            let path = dir.join(&a.file);
            let mut content = ContentReader::open(&path, a.encrypted, identities)?;
            match (a.kind, self.source(&a.source)?) {
                (ArtifactKind::PostgresDatabase, Source::Postgres { conn, .. }) => {
                    let (server, major) = postgres::server_version(conn)?;
                    let tools =
                        postgres::find_tools(major, &server, self.settings.pg_bin_dir.as_deref())?;
                    let db = a.database.clone().unwrap_or_default();
                    postgres::restore_database(
                        conn,
                        &tools,
                        &db,
                        &a.file,
                        &a.expect,
                        &mut content,
                    )?;
                    report
                        .restored
                        .push(format!("{}: database {db:?}", a.source));
                }
                (ArtifactKind::PostgresGlobals, Source::Postgres { .. }) => {
                    report.notes.push(format!(
                        "{}: roles were not changed; to apply them by hand: zstd -dc {} | psql -f - postgres",
                        a.source,
                        path.display()
                    ));
                    continue;
                }
                (ArtifactKind::RedisRdb, Source::Redis { conn }) => {
                    let scratch = redis::Throwaway::start(&mut content, self.repo.root())?;
                    let copied = redis::copy_all(&scratch.conn, conn)?;
                    if let Expectation::Keys {
                        keys: Some(expected),
                    } = &a.expect
                    {
                        let problems = redis::compare_keys(expected, &conn.connect()?.keyspace()?);
                        if !problems.is_empty() {
                            return Err(BackupError::Damaged {
                                id: id.into(),
                                problem: format!(
                                    "{} after the restore: {}",
                                    a.file,
                                    problems.join("; ")
                                ),
                            });
                        }
                    }
                    report.restored.push(format!("{}: {copied} keys", a.source));
                }
                (ArtifactKind::DirectoryTar, Source::Directory { path: target }) => {
                    let parent = target.parent().unwrap_or(Path::new("/"));
                    let name = target
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let staged = parent.join(format!(".{name}.tcf-restore-{id}"));
                    let _ = std::fs::remove_dir_all(&staged);
                    std::fs::create_dir(&staged)
                        .context(|| format!("creating {}", staged.display()))?;
                    let extracted =
                        directory::extract(&mut content, &staged, &a.file).and_then(|stats| {
                            directory::swap_into_place(&staged, target, id).map(|_| stats)
                        });
                    let stats = match extracted {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = std::fs::remove_dir_all(&staged);
                            return Err(e);
                        }
                    };
                    report.restored.push(format!(
                        "{}: {} files into {}",
                        a.source,
                        stats.files,
                        target.display()
                    ));
                }
                (kind, source) => {
                    return Err(BackupError::Invalid(format!(
                        "{} is a {kind:?} artifact but source {:?} is now configured as {}",
                        a.file,
                        a.source,
                        source.kind()
                    )))
                }
            }
            content.drain().context(|| format!("reading {}", a.file))?;
            let (size, sha) = content.finish();
            if size != a.content_size || sha != a.content_sha256 {
                return Err(BackupError::Damaged {
                    id: id.into(),
                    problem: format!(
                        "{}: the data read back differs from what was backed up",
                        a.file
                    ),
                });
            }
        }
        Ok(report)
    }

    /// When a verification at `level` (restore also counts for checksums) last passed, over
    /// every backup's last verification: what an alert such as "no successful restore-verify in
    /// 7 days" reads.
    pub fn last_passed_verify(&self, level: Level) -> Result<Option<String>> {
        Ok(self
            .repo
            .list()?
            .into_iter()
            .filter_map(|l| l.last_verify)
            .filter(|v| v.ok && (v.level == level.as_str() || v.level == Level::Restore.as_str()))
            .map(|v| v.time)
            .max())
    }

    /// Apply the retention policy. `pinned` backups (such as the pre-deploy backups of the
    /// active and previous release) and the newest verified backup are always kept.
    pub fn prune(
        &self,
        dry_run: bool,
        pinned: &BTreeSet<String>,
        progress: &dyn Progress,
    ) -> Result<PruneReport> {
        let policy = self.settings.retention.clone().ok_or_else(|| {
            BackupError::Retention("[backup] has no retention policy\nhint: set retention = { keep_last = 7, keep_daily = 7, keep_weekly = 4, keep_monthly = 6 }".into())
        })?;
        let lock = self.repo.lock()?;
        let mut candidates = Vec::new();
        let mut damaged = Vec::new();
        for listed in self.repo.list()? {
            match &listed.manifest {
                Ok(m) => match time::parse_rfc3339_ms(&m.time) {
                    Some(t) => candidates.push(retention::Candidate {
                        id: listed.id.clone(),
                        time_ms: t,
                        verified: listed.last_verify.as_ref().is_some_and(|v| v.ok),
                    }),
                    None => damaged.push(listed.id.clone()),
                },
                Err(_) => damaged.push(listed.id.clone()),
            }
        }
        let decisions = retention::apply(&policy, &candidates, pinned)?;
        if !dry_run {
            for d in decisions.iter().filter(|d| !d.keep) {
                progress.step(&format!("removing {}", d.id));
                self.repo.remove(&lock, &d.id)?;
            }
        }
        Ok(PruneReport {
            dry_run,
            decisions,
            damaged,
        })
    }
}

fn describe_failures(report: &VerifyReport) -> String {
    let mut out = report.problems.clone();
    for a in report
        .artifacts
        .iter()
        .filter(|a| a.status != CheckStatus::Ok)
    {
        out.push(format!("{}: {}", a.artifact, a.detail.join("; ")));
    }
    out.join("; ")
}

/// The backup `prod deploy --backup` takes before any instance of `release` starts: every
/// source, verified at checksum level. Runs on a blocking thread.
pub async fn pre_deploy_backup(
    settings: Settings,
    release: String,
    progress: std::sync::Arc<dyn Progress>,
) -> Result<BackupId> {
    tokio::task::spawn_blocking(move || {
        Backups::new(settings)
            .create(Trigger::PreDeploy { release }, None, progress.as_ref())
            .map(|m| m.id)
    })
    .await
    .map_err(|e| BackupError::Invalid(format!("the backup task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(password: &str) -> tcf_config::BackupConfig {
        let source = tcf_config::BackupSource {
            name: "main".into(),
            dependency: None,
            kind: tcf_config::BackupSourceKind::Postgres {
                host: "127.0.0.1".into(),
                port: 5432,
                user: Some("app".into()),
                password: Some(password.into()),
                databases: None,
            },
        };
        tcf_config::BackupConfig {
            repository: "/nonexistent/repo".into(),
            recipients: vec![],
            identity: None,
            schedule: None,
            retention: None,
            pg_bin_dir: None,
            sources: BTreeMap::from([("main".to_string(), source)]),
        }
    }

    fn password(s: &Settings) -> Option<String> {
        match &s.sources["main"] {
            Source::Postgres { conn, .. } => conn.password.clone(),
            _ => None,
        }
    }

    #[test]
    fn secret_passwords_resolve_through_the_lookup_and_never_show() {
        let lookup = |name: &str| (name == "pg_password").then(|| "s3cr3t-value".to_string());
        let s = Settings::from_config(&config("${secret:pg_password}"), &lookup).unwrap();
        assert_eq!(password(&s).as_deref(), Some("s3cr3t-value"));
        assert!(!format!("{s:?}").contains("s3cr3t-value"), "{s:?}");
        // Plain text is taken as written.
        let s = Settings::from_config(&config("plain"), &lookup).unwrap();
        assert_eq!(password(&s).as_deref(), Some("plain"));
        // A missing secret and a malformed reference are errors naming them, not the value.
        let e = Settings::from_config(&config("${secret:other}"), &lookup)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("backup source main refers to the secret other, which is not set"),
            "{e}"
        );
        let e = Settings::from_config(&config("${secret:pg_password"), &lookup)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unterminated"), "{e}");
        // Reading the repository needs no secret.
        assert!(Settings::for_repository(&config("${secret:other}")).is_ok());
    }
}
