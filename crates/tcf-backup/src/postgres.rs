//! PostgreSQL: `pg_dump -Fc` per database in an exported snapshot (so the row counts and
//! checksums recorded in the manifest describe exactly the dumped data), `pg_dumpall
//! --globals-only` for roles, and restores through `pg_restore`, always into a fresh database
//! first: the original is replaced only once the restored copy matches the manifest.

use crate::error::{BackupError, Result};
use crate::manifest::{Expectation, TableStats};
use crate::tool;
use postgres::{Client, GenericClient, NoTls};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Databases whose names start with this are our own scratch copies: never backed up.
pub const SCRATCH_PREFIX: &str = "tcf_scratch_";

#[derive(Clone)]
pub struct PgConn {
    /// A host name or address, or a Unix socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
}

/// Never the password: settings may be logged.
impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "••••••"))
            .finish()
    }
}

impl PgConn {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn err(&self, message: impl Into<String>) -> BackupError {
        BackupError::Postgres {
            address: self.address(),
            message: message.into(),
        }
    }

    pub fn connect(&self, database: &str) -> Result<Client> {
        let mut config = postgres::Config::new();
        if self.host.starts_with('/') {
            config.host_path(&self.host);
        } else {
            config.host(&self.host);
        }
        config
            .port(self.port)
            .user(&self.user)
            .dbname(database)
            .application_name("tcf-backup")
            .connect_timeout(Duration::from_secs(10));
        if let Some(p) = &self.password {
            config.password(p);
        }
        config.connect(NoTls).map_err(|e| {
            self.err(format!(
                "cannot connect as {:?} to database {database:?}: {}",
                self.user,
                error_text(&e)
            ))
        })
    }

    /// A connection for server-wide statements.
    fn connect_admin(&self) -> Result<Client> {
        self.connect("postgres")
            .or_else(|_| self.connect("template1"))
    }

    /// A connection to a database other than `database`, which is about to be dropped.
    fn connect_admin_except(&self, database: &str) -> Result<Client> {
        if database == "postgres" {
            self.connect("template1")
        } else {
            self.connect_admin()
        }
    }

    /// Connection details for the tools: in the environment, so a password is never in argv.
    fn apply_env(&self, cmd: &mut Command) {
        cmd.env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGAPPNAME", "tcf-backup")
            .env_remove("PGDATABASE")
            .env_remove("PGSERVICE");
        match &self.password {
            Some(p) => cmd.env("PGPASSWORD", p),
            None => cmd.env_remove("PGPASSWORD"),
        };
    }
}

/// The server's own words (message, detail, hint), not just "db error".
pub fn error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_string();
            if let Some(d) = db.detail() {
                text += &format!(" ({d})");
            }
            if let Some(h) = db.hint() {
                text += &format!("\nhint: {h}");
            }
            text
        }
        None => e.to_string(),
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The server's version: (`15.18 (Debian …)`, major 15).
pub fn server_version(conn: &PgConn) -> Result<(String, u32)> {
    let mut client = conn.connect_admin()?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int",
            &[],
        )
        .map_err(|e| conn.err(error_text(&e)))?;
    let text: String = row.get(0);
    let num: i32 = row.get(1);
    Ok((text, (num / 10000) as u32))
}

/// The client tools used for one server.
#[derive(Debug, Clone)]
pub struct PgTools {
    pub pg_dump: PathBuf,
    pub pg_dumpall: PathBuf,
    pub pg_restore: PathBuf,
    /// `pg_dump (PostgreSQL) 15.18 (…)`.
    pub version: String,
    pub major: u32,
}

fn tool_major(version: &str) -> Option<u32> {
    // "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    version
        .split_whitespace()
        .nth(2)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Find pg_dump, pg_dumpall and pg_restore able to handle a server of major version `major`:
/// `bin_dir` if given, else Debian's /usr/lib/postgresql/MAJOR/bin (the same major first,
/// then newer ones), else PATH. pg_dump refuses servers newer than itself, so an older client
/// is never used.
pub fn find_tools(major: u32, server: &str, bin_dir: Option<&Path>) -> Result<PgTools> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = bin_dir {
        dirs.push(d.to_path_buf());
    } else {
        dirs.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
        let mut others: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let v: u32 = e.file_name().to_str()?.parse().ok()?;
                        (v > major).then(|| (v, e.path().join("bin")))
                    })
                    .collect()
            })
            .unwrap_or_default();
        others.sort();
        dirs.extend(others.into_iter().map(|(_, p)| p));
        if let Some(p) = tool::on_path("pg_dump").and_then(|p| p.parent().map(Path::to_path_buf)) {
            dirs.push(p);
        }
    }
    let mut seen = Vec::new();
    for dir in dirs {
        let pg_dump = dir.join("pg_dump");
        if !pg_dump.is_file() {
            continue;
        }
        let Ok(version) = tool::output(
            Command::new(&pg_dump).arg("--version"),
            "pg_dump",
            "--version",
        ) else {
            continue;
        };
        let Some(client_major) = tool_major(&version) else {
            continue;
        };
        if client_major >= major
            && dir.join("pg_restore").is_file()
            && dir.join("pg_dumpall").is_file()
        {
            return Ok(PgTools {
                pg_dumpall: dir.join("pg_dumpall"),
                pg_restore: dir.join("pg_restore"),
                pg_dump,
                version,
                major: client_major,
            });
        }
        seen.push(format!("{} ({version})", pg_dump.display()));
    }
    Err(BackupError::ToolMissing(format!(
        "no pg_dump for PostgreSQL {major} (the server runs {server}){}\nhint: install postgresql-client-{major} (apt-get install postgresql-client-{major}) or set [backup] pg_bin_dir",
        if seen.is_empty() {
            String::new()
        } else {
            format!("; found only older ones: {}", seen.join(", "))
        }
    )))
}

/// Every database worth backing up: not templates, not our scratch copies.
pub fn list_databases(conn: &PgConn) -> Result<Vec<String>> {
    let mut client = conn.connect_admin()?;
    let rows = client
        .query(
            "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn ORDER BY datname",
            &[],
        )
        .map_err(|e| conn.err(error_text(&e)))?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|d| !d.starts_with(SCRATCH_PREFIX))
        .collect())
}

/// How a table's rows are summed into its checksum. Each table's recorded checksum says which
/// method made it (its prefix), so a restore is compared the way its backup was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowChecksum {
    /// The sum of each row's 64-bit `hash_record_extended`: every column hashed by its type's
    /// own hash function (the one PostgreSQL keeps stable for hash partitioning), with no
    /// conversion to text: half the cost of [`RowChecksum::Hash64`], which is what lets the
    /// counting run beside `pg_dump` on a small machine. PostgreSQL 14 and later; a table with
    /// a column type that has no such hash (json, point, …) is summed with `Hash64` instead.
    Record64,
    /// The sum of each row's 64-bit `hashtextextended` of its text form. PostgreSQL 11 and
    /// later.
    Hash64,
    /// The sum of 60-bit prefixes of each row's MD5: what backups made before `Hash64` (and
    /// those of servers older than 11) recorded.
    Md5,
}

const RECORD64_PREFIX: &str = "r64:";
const HASH64_PREFIX: &str = "h64:";

impl RowChecksum {
    /// The method for a new backup of a server of this `server_version_num`.
    pub fn for_server(server_version_num: i32) -> Self {
        match server_version_num {
            v if v >= 140000 => RowChecksum::Record64,
            v if v >= 110000 => RowChecksum::Hash64,
            _ => RowChecksum::Md5,
        }
    }

    /// The method that made a recorded checksum.
    pub fn of(recorded: &str) -> Self {
        if recorded.starts_with(RECORD64_PREFIX) {
            RowChecksum::Record64
        } else if recorded.starts_with(HASH64_PREFIX) {
            RowChecksum::Hash64
        } else {
            RowChecksum::Md5
        }
    }

    fn sum_expression(self) -> &'static str {
        match self {
            RowChecksum::Record64 => "coalesce(sum(hash_record_extended(t, 0)), 0)::text",
            RowChecksum::Hash64 => "coalesce(sum(hashtextextended(t::text, 0)), 0)::text",
            RowChecksum::Md5 => {
                "coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0)::text"
            }
        }
    }

    fn label(self, sum: String) -> String {
        match self {
            RowChecksum::Record64 => format!("{RECORD64_PREFIX}{sum}"),
            RowChecksum::Hash64 => format!("{HASH64_PREFIX}{sum}"),
            RowChecksum::Md5 => sum,
        }
    }
}

/// Which method sums each table.
#[derive(Debug, Clone, Copy)]
pub enum Counting<'a> {
    /// A new backup: this method wherever the table's column types allow it (`Record64` falls
    /// back to `Hash64` table by table).
    Fresh(RowChecksum),
    /// A restored copy: each table the way the backup recorded it (a table it did not record:
    /// the text hash, it only has to be counted).
    AsRecorded(&'a BTreeMap<String, TableStats>),
}

impl Counting<'_> {
    fn method(&self, table: &str) -> RowChecksum {
        match self {
            Counting::Fresh(method) => *method,
            Counting::AsRecorded(tables) => tables
                .get(table)
                .map_or(RowChecksum::Hash64, |t| RowChecksum::of(&t.checksum)),
        }
    }
}

/// Row count and an order-independent checksum (see [`RowChecksum`]) of every ordinary and
/// partitioned table outside the system schemas.
pub fn table_stats(
    client: &mut impl GenericClient,
    counting: Counting<'_>,
) -> std::result::Result<BTreeMap<String, TableStats>, postgres::Error> {
    let tables = client.query(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' ORDER BY 1, 2",
        &[],
    )?;
    let mut stats = BTreeMap::new();
    for t in tables {
        let (schema, table): (String, String) = (t.get(0), t.get(1));
        let name = format!("{schema}.{table}");
        let method = counting.method(&name);
        let (rows, checksum) = if matches!(counting, Counting::Fresh(RowChecksum::Record64)) {
            // A column type without an extended hash fails the query, and with it the
            // transaction: try it under a savepoint, and on that error sum the text instead.
            let mut savepoint = client.transaction()?;
            match sum_table(&mut savepoint, method, &schema, &table) {
                Ok(done) => {
                    savepoint.commit()?;
                    done
                }
                Err(e) if e.code() == Some(&postgres::error::SqlState::UNDEFINED_FUNCTION) => {
                    savepoint.rollback()?;
                    sum_table(client, RowChecksum::Hash64, &schema, &table)?
                }
                Err(e) => return Err(e),
            }
        } else {
            sum_table(client, method, &schema, &table)?
        };
        stats.insert(
            name,
            TableStats {
                rows: rows as u64,
                checksum,
            },
        );
    }
    Ok(stats)
}

/// One table's row count and its checksum by `method`, in one scan.
fn sum_table(
    client: &mut impl GenericClient,
    method: RowChecksum,
    schema: &str,
    table: &str,
) -> std::result::Result<(i64, String), postgres::Error> {
    let query = format!(
        "SELECT count(*), {} FROM {}.{} t",
        method.sum_expression(),
        quote_ident(schema),
        quote_ident(table)
    );
    let row = client.query_one(&query, &[])?;
    Ok((row.get(0), method.label(row.get(1))))
}

/// A read-only REPEATABLE READ transaction: one snapshot for everything it reads.
fn snapshot_transaction(
    client: &mut Client,
) -> std::result::Result<postgres::Transaction<'_>, postgres::Error> {
    client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
}

/// [`table_stats`] of `database` as of an exported `snapshot`.
fn count_in_snapshot(
    conn: &PgConn,
    database: &str,
    snapshot: &str,
    method: RowChecksum,
) -> Result<BTreeMap<String, TableStats>> {
    let failed = |e: postgres::Error| {
        conn.err(format!(
            "counting the rows of {database:?}: {}",
            error_text(&e)
        ))
    };
    let mut client = conn.connect(database)?;
    let mut tx = snapshot_transaction(&mut client).map_err(failed)?;
    tx.batch_execute(&format!(
        "SET TRANSACTION SNAPSHOT {}",
        quote_literal(snapshot)
    ))
    .map_err(failed)?;
    let tables = table_stats(&mut tx, Counting::Fresh(method)).map_err(failed)?;
    tx.commit().map_err(failed)?;
    Ok(tables)
}

/// Dump `database` into `out` and return what a restore must reproduce.
pub fn dump_database(
    conn: &PgConn,
    tools: &PgTools,
    database: &str,
    out: &mut dyn Write,
    write_context: &str,
) -> Result<Expectation> {
    let mut client = conn.connect(database)?;
    let mut tx = snapshot_transaction(&mut client).map_err(|e| conn.err(error_text(&e)))?;
    let snapshot: String = tx
        .query_one("SELECT pg_export_snapshot()", &[])
        .map_err(|e| {
            conn.err(format!(
                "exporting a snapshot of {database:?}: {}",
                error_text(&e)
            ))
        })?
        .get(0);
    let server_version: i32 = tx
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .map_err(|e| conn.err(error_text(&e)))?
        .get(0);
    let mut cmd = Command::new(&tools.pg_dump);
    conn.apply_env(&mut cmd);
    // -Z0: the archive is compressed once, by our zstd, not by pg_dump's zlib first.
    cmd.args(["-Fc", "-Z0", "-w", "--snapshot", &snapshot, "-d", database]);
    // The rows are counted in the dump's snapshot (exactly what pg_dump saw) while pg_dump
    // streams, so the two scans overlap instead of adding up. The counting runs on a connection
    // of its own that imports the snapshot: if it fails, the exporting transaction (and with it
    // pg_dump's snapshot) stays intact, and pg_dump's own error is the one reported.
    let method = RowChecksum::for_server(server_version);
    let (dumped, tables) = std::thread::scope(|scope| {
        let counting = scope.spawn(|| count_in_snapshot(conn, database, &snapshot, method));
        let dumped = tool::stream_from(
            &mut cmd,
            "pg_dump",
            &format!("database {database:?}"),
            out,
            write_context,
        );
        let tables = counting
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (dumped, tables)
    });
    dumped?;
    let tables = tables?;
    let props = tx
        .query_one(
            "SELECT pg_get_userbyid(datdba)::text, pg_encoding_to_char(encoding)::text, datcollate::text, datctype::text \
             FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .map_err(|e| conn.err(error_text(&e)))?;
    tx.commit().map_err(|e| conn.err(error_text(&e)))?;
    Ok(Expectation::Tables {
        tables,
        owner: props.get(0),
        encoding: props.get(1),
        collate: props.get(2),
        ctype: props.get(3),
    })
}

/// `pg_dumpall --globals-only` into `out`. A user that may not read role passwords (not a
/// superuser) gets the roles without them, and the returned note says so.
pub fn dump_globals(
    conn: &PgConn,
    tools: &PgTools,
    out: &mut dyn Write,
    write_context: &str,
) -> Result<Option<String>> {
    // Probe first: a failing run may already have written part of its output into `out`.
    let superuser: bool = conn
        .connect_admin()?
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .map_err(|e| conn.err(error_text(&e)))?
        .get(0);
    let mut cmd = Command::new(&tools.pg_dumpall);
    conn.apply_env(&mut cmd);
    cmd.args(["--globals-only", "-w"]);
    if !superuser {
        cmd.arg("--no-role-passwords");
    }
    tool::stream_from(
        &mut cmd,
        "pg_dumpall",
        "the globals (roles, tablespaces)",
        out,
        write_context,
    )?;
    Ok((!superuser).then(|| {
        format!(
            "{:?} is not a superuser: roles were saved without their passwords",
            conn.user
        )
    }))
}

/// A scratch database that is dropped when this goes out of scope, unless kept.
struct Scratch<'a> {
    conn: &'a PgConn,
    name: String,
    keep: bool,
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if !self.keep {
            if let Ok(mut c) = self.conn.connect_admin() {
                let _ = c.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&self.name)
                ));
            }
        }
    }
}

fn create_scratch<'a>(
    conn: &'a PgConn,
    expect: &Expectation,
    with_owner: bool,
) -> Result<Scratch<'a>> {
    let name = format!("{SCRATCH_PREFIX}{:08x}", fastrand::u32(..));
    let mut sql = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(&name));
    if let Expectation::Tables {
        owner,
        encoding,
        collate,
        ctype,
        ..
    } = expect
    {
        if with_owner {
            sql += &format!(" OWNER {}", quote_ident(owner));
        }
        sql += &format!(
            " ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            quote_literal(encoding),
            quote_literal(collate),
            quote_literal(ctype)
        );
    }
    conn.connect_admin()?.batch_execute(&sql).map_err(|e| {
        conn.err(format!(
            "creating the scratch database {name}: {}",
            error_text(&e)
        ))
    })?;
    Ok(Scratch {
        conn,
        name,
        keep: false,
    })
}

/// Compare what a restored database holds with what the manifest recorded; each difference
/// is one line naming the table.
fn compare_tables(
    expected: &BTreeMap<String, TableStats>,
    actual: &BTreeMap<String, TableStats>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (table, want) in expected {
        match actual.get(table) {
            None => problems.push(format!("table {table} is missing after the restore")),
            Some(got) if got.rows != want.rows => problems.push(format!(
                "table {table} has {} rows after the restore, {} when backed up",
                got.rows, want.rows
            )),
            Some(got) if got.checksum != want.checksum => problems.push(format!(
                "table {table} has the same row count but different rows"
            )),
            Some(_) => {}
        }
    }
    for table in actual.keys().filter(|t| !expected.contains_key(*t)) {
        problems.push(format!(
            "table {table} appeared in the restore but was not backed up"
        ));
    }
    problems
}

fn pg_restore(
    conn: &PgConn,
    tools: &PgTools,
    database: &str,
    full: bool,
    what: &str,
    content: &mut dyn Read,
) -> Result<()> {
    let mut cmd = Command::new(&tools.pg_restore);
    conn.apply_env(&mut cmd);
    cmd.args(["-w", "--exit-on-error", "-d", database]);
    if !full {
        // A scratch copy to compare: ownership and grants do not matter and may name roles
        // a scratch server lacks.
        cmd.args(["--no-owner", "--no-privileges"]);
    }
    tool::stream_into(&mut cmd, "pg_restore", what, content)
}

/// Restore the dump in `content` into a scratch database on the same server, compare it with
/// `expect`, and drop it. Returns the differences (empty: it matches).
pub fn verify_restore(
    conn: &PgConn,
    tools: &PgTools,
    artifact: &str,
    expect: &Expectation,
    content: &mut dyn Read,
) -> Result<Vec<String>> {
    let Expectation::Tables { tables, .. } = expect else {
        return Err(BackupError::Invalid(format!(
            "{artifact}: no table statistics recorded"
        )));
    };
    let scratch = create_scratch(conn, expect, false)?;
    pg_restore(
        conn,
        tools,
        &scratch.name,
        false,
        &format!("{artifact} into scratch database {}", scratch.name),
        content,
    )?;
    let actual = table_stats(
        &mut scratch.conn.connect(&scratch.name)?,
        Counting::AsRecorded(tables),
    )
    .map_err(|e| {
        conn.err(format!(
            "counting rows in {}: {}",
            scratch.name,
            error_text(&e)
        ))
    })?;
    Ok(compare_tables(tables, &actual))
}

/// Replace `database` with the dump in `content`: restored into a new database, compared with
/// the manifest, and only then swapped in (the old one dropped, connections to it ended).
pub fn restore_database(
    conn: &PgConn,
    tools: &PgTools,
    database: &str,
    artifact: &str,
    expect: &Expectation,
    content: &mut dyn Read,
) -> Result<()> {
    let Expectation::Tables { tables, .. } = expect else {
        return Err(BackupError::Invalid(format!(
            "{artifact}: no table statistics recorded"
        )));
    };
    let mut scratch = create_scratch(conn, expect, true)?;
    pg_restore(
        conn,
        tools,
        &scratch.name,
        true,
        &format!("{artifact} into {}", scratch.name),
        content,
    )?;
    let actual = table_stats(
        &mut conn.connect(&scratch.name)?,
        Counting::AsRecorded(tables),
    )
    .map_err(|e| {
        conn.err(format!(
            "counting rows in {}: {}",
            scratch.name,
            error_text(&e)
        ))
    })?;
    let problems = compare_tables(tables, &actual);
    if !problems.is_empty() {
        return Err(BackupError::Invalid(format!(
            "{artifact}: the restored copy does not match the manifest ({}); {database:?} was not touched",
            problems.join("; ")
        )));
    }
    let mut admin = conn.connect_admin_except(database)?;
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(database)
        ))
        .map_err(|e| {
            conn.err(format!(
                "dropping {database:?} to replace it: {}",
                error_text(&e)
            ))
        })?;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} RENAME TO {}",
            quote_ident(&scratch.name),
            quote_ident(database)
        ))
        .map_err(|e| {
            conn.err(format!(
                "renaming the restored copy {} to {database:?}: {}",
                scratch.name,
                error_text(&e)
            ))
        })?;
    scratch.keep = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_quoting() {
        assert_eq!(
            tool_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(tool_major("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        let err = find_tools(99, "99.0", None).err().unwrap().to_string();
        assert!(err.contains("install postgresql-client-99"), "{err}");
    }
}
