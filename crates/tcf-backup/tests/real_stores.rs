//! Backups of real PostgreSQL and Redis servers the tests start: back up, change and delete
//! data, restore, and the original rows and keys are back; verify by restoring passes on a good
//! backup and names the artifact on a damaged one; a failing dump leaves no backup.

mod common;

use common::*;
use std::collections::BTreeMap;
use tcf_backup::redis::Value;
use tcf_backup::{
    ArtifactKind, Backups, CheckStatus, Identities, Level, Settings, Silent, Source, Trigger,
};

fn settings(repo: &std::path::Path, sources: Vec<(&str, Source)>) -> Settings {
    Settings {
        repository: repo.to_path_buf(),
        recipients: vec![],
        retention: None,
        pg_bin_dir: None,
        sources: sources
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect(),
    }
}

/// `SELECT`s of one query as text rows.
fn rows(conn: &tcf_backup::postgres::PgConn, db: &str, sql: &str) -> Vec<String> {
    let mut c = conn.connect(db).unwrap();
    c.query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

#[test]
fn postgres_back_up_damage_restore() {
    let (_server, conn) = start_postgres();
    let mut admin = conn.connect("postgres").unwrap();
    for sql in [
        "CREATE ROLE app_owner LOGIN",
        "CREATE DATABASE shop OWNER app_owner",
        "CREATE DATABASE audit",
    ] {
        admin.batch_execute(sql).unwrap();
    }
    drop(admin);
    conn.connect("shop").unwrap().batch_execute(
        "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 500) g;
         CREATE SCHEMA billing;
         CREATE TABLE billing.\"Invoices\" (id serial PRIMARY KEY, customer int REFERENCES customers, total numeric);
         INSERT INTO billing.\"Invoices\" (customer, total) SELECT g % 500 + 1, g * 1.5 FROM generate_series(1, 2000) g;
         ALTER TABLE customers OWNER TO app_owner;",
    ).unwrap();
    conn.connect("audit")
        .unwrap()
        .batch_execute("CREATE TABLE log (at int); INSERT INTO log VALUES (1), (2)")
        .unwrap();
    let before_customers = rows(
        &conn,
        "shop",
        "SELECT string_agg(name, ',' ORDER BY id) FROM customers",
    );
    let before_total = rows(
        &conn,
        "shop",
        "SELECT sum(total)::text FROM billing.\"Invoices\"",
    );

    let repo = tempfile::tempdir().unwrap();
    let backups = Backups::new(settings(
        repo.path(),
        vec![(
            "main",
            Source::Postgres {
                conn: conn.clone(),
                databases: None,
            },
        )],
    ));
    let manifest = backups.create(Trigger::Manual, None, &Silent).unwrap();
    let kinds: Vec<(ArtifactKind, Option<String>)> = manifest
        .artifacts
        .iter()
        .map(|a| (a.kind, a.database.clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (ArtifactKind::PostgresDatabase, Some("audit".into())),
            (ArtifactKind::PostgresDatabase, Some("postgres".into())),
            (ArtifactKind::PostgresDatabase, Some("shop".into())),
            (ArtifactKind::PostgresGlobals, None),
        ]
    );
    let shop = manifest
        .artifacts
        .iter()
        .find(|a| a.database.as_deref() == Some("shop"))
        .unwrap();
    assert!(
        shop.tool.starts_with("pg_dump (PostgreSQL)"),
        "{}",
        shop.tool
    );
    assert!(shop.server_version.is_some());
    let tcf_backup::Expectation::Tables { tables, owner, .. } = &shop.expect else {
        panic!("{:?}", shop.expect)
    };
    assert_eq!(owner, "app_owner");
    assert_eq!(tables["public.customers"].rows, 500);
    assert_eq!(tables["billing.Invoices"].rows, 2000);
    assert!(
        tables["public.customers"].checksum.starts_with("r64:"),
        "{:?}",
        tables["public.customers"]
    );
    // Checksum verification ran and was recorded as part of create.
    assert!(backups.list().unwrap()[0].last_verify.as_ref().unwrap().ok);

    let report = backups
        .verify(&manifest.id, Level::Restore, &Identities::none(), &Silent)
        .unwrap();
    assert!(report.ok, "{report:#?}");
    assert!(report.artifacts.iter().all(|a| a.status == CheckStatus::Ok));
    // The scratch databases are gone again.
    assert_eq!(
        rows(
            &conn,
            "postgres",
            "SELECT count(*)::text FROM pg_database WHERE datname LIKE 'tcf_scratch_%'"
        ),
        vec!["0"]
    );

    // Damage the live data: delete, change, drop, add.
    conn.connect("shop").unwrap().batch_execute(
        "DELETE FROM billing.\"Invoices\" WHERE id > 10; UPDATE customers SET name = 'gone'; CREATE TABLE stray (x int);",
    ).unwrap();
    conn.connect("audit")
        .unwrap()
        .batch_execute("DROP TABLE log")
        .unwrap();

    let restored = backups
        .restore(&manifest.id, None, &Identities::none(), &Silent)
        .unwrap();
    assert_eq!(restored.restored.len(), 3, "{restored:?}");
    assert!(
        restored
            .notes
            .iter()
            .any(|n| n.contains("roles were not changed")),
        "{restored:?}"
    );
    assert_eq!(
        rows(
            &conn,
            "shop",
            "SELECT string_agg(name, ',' ORDER BY id) FROM customers"
        ),
        before_customers
    );
    assert_eq!(
        rows(
            &conn,
            "shop",
            "SELECT sum(total)::text FROM billing.\"Invoices\""
        ),
        before_total
    );
    assert_eq!(
        rows(
            &conn,
            "shop",
            "SELECT count(*)::text FROM pg_tables WHERE tablename = 'stray'"
        ),
        vec!["0"]
    );
    assert_eq!(
        rows(&conn, "audit", "SELECT string_agg(at::text, ',') FROM log"),
        vec!["1,2"]
    );
    assert_eq!(
        rows(
            &conn,
            "postgres",
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = 'shop'"
        ),
        vec!["app_owner"]
    );

    // The recovery point holds the damaged state, and is listed.
    let listed = backups.list().unwrap();
    let recovery = listed
        .iter()
        .find(|l| Some(&l.id) == restored.recovery_point.as_ref())
        .unwrap();
    assert_eq!(
        recovery.manifest.as_ref().unwrap().trigger,
        Trigger::RecoveryPoint {
            restoring: manifest.id.clone()
        }
    );

    // A flipped byte in a dump: verify fails and names the artifact; restore refuses it.
    let path = backups
        .repository()
        .backup_dir(&manifest.id)
        .join(&shop.file);
    let good = std::fs::read(&path).unwrap();
    flip_byte(&path);
    let report = backups
        .verify(&manifest.id, Level::Restore, &Identities::none(), &Silent)
        .unwrap();
    assert!(!report.ok);
    let failed: Vec<&str> = report
        .artifacts
        .iter()
        .filter(|a| a.status != CheckStatus::Ok)
        .map(|a| a.artifact.as_str())
        .collect();
    assert_eq!(failed, vec![shop.file.as_str()]);
    let err = backups
        .restore(&manifest.id, None, &Identities::none(), &Silent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&shop.file) && err.contains("nothing was restored"),
        "{err}"
    );
    std::fs::write(&path, good).unwrap();
    assert!(
        backups
            .verify(&manifest.id, Level::Restore, &Identities::none(), &Silent)
            .unwrap()
            .ok
    );
}

#[test]
fn pg_dump_failure_leaves_no_backup() {
    let (_server, conn) = start_postgres();
    let mut admin = conn.connect("postgres").unwrap();
    for sql in [
        "CREATE ROLE limited LOGIN",
        "CREATE DATABASE app",
        "GRANT CONNECT ON DATABASE app TO limited",
    ] {
        admin.batch_execute(sql).unwrap();
    }
    // A table the backup user may not read: pg_dump exits non-zero.
    conn.connect("app")
        .unwrap()
        .batch_execute("CREATE TABLE secret (x int); INSERT INTO secret VALUES (1)")
        .unwrap();
    let limited = tcf_backup::postgres::PgConn {
        user: "limited".into(),
        ..conn.clone()
    };
    let repo = tempfile::tempdir().unwrap();
    let backups = Backups::new(settings(
        repo.path(),
        vec![(
            "main",
            Source::Postgres {
                conn: limited,
                databases: Some(vec!["app".into()]),
            },
        )],
    ));
    let err = backups
        .create(Trigger::Manual, None, &Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("pg_dump failed for database \"app\""), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(backups.list().unwrap().is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(repo.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn set(c: &mut tcf_backup::redis::Resp, args: &[&str]) -> Value {
    let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
    c.call(&a).unwrap()
}

#[test]
fn redis_back_up_damage_restore() {
    let (_server, conn) = start_redis();
    let mut c = conn.connect().unwrap();
    for i in 0..300 {
        set(
            &mut c,
            &["SET", &format!("user:{i}"), &format!("value {i}")],
        );
    }
    set(&mut c, &["SET", "session", "abc", "EX", "3600"]);
    set(&mut c, &["RPUSH", "queue", "a", "b", "c"]);
    set(&mut c, &["SELECT", "3"]);
    set(&mut c, &["HSET", "config", "mode", "fast", "level", "2"]);
    set(&mut c, &["SELECT", "0"]);
    let expected: BTreeMap<String, u64> = [("db0".to_string(), 302), ("db3".to_string(), 1)].into();
    assert_eq!(c.keyspace().unwrap(), expected);

    let repo = tempfile::tempdir().unwrap();
    let backups = Backups::new(settings(
        repo.path(),
        vec![("cache", Source::Redis { conn: conn.clone() })],
    ));
    let manifest = backups.create(Trigger::Manual, None, &Silent).unwrap();
    let rdb = &manifest.artifacts[0];
    assert_eq!(rdb.kind, ArtifactKind::RedisRdb);
    assert_eq!(
        rdb.expect,
        tcf_backup::Expectation::Keys {
            keys: Some(expected.clone())
        }
    );
    assert!(rdb.tool.starts_with("redis-cli"), "{}", rdb.tool);
    let report = backups
        .verify(&manifest.id, Level::Restore, &Identities::none(), &Silent)
        .unwrap();
    assert!(report.ok, "{report:#?}");

    // Damage: delete, overwrite, add, flush another database.
    set(&mut c, &["DEL", "user:1", "user:2", "queue"]);
    set(&mut c, &["SET", "user:3", "changed"]);
    set(&mut c, &["SET", "stray", "x"]);
    set(&mut c, &["SELECT", "3"]);
    set(&mut c, &["FLUSHDB"]);
    set(&mut c, &["SELECT", "0"]);

    let restored = backups
        .restore(&manifest.id, None, &Identities::none(), &Silent)
        .unwrap();
    assert_eq!(restored.restored, vec!["cache: 303 keys".to_string()]);
    let mut c = conn.connect().unwrap();
    assert_eq!(c.keyspace().unwrap(), expected);
    assert_eq!(
        set(&mut c, &["GET", "user:3"]),
        Value::Bulk(Some(b"value 3".to_vec()))
    );
    assert_eq!(
        set(&mut c, &["GET", "user:1"]),
        Value::Bulk(Some(b"value 1".to_vec()))
    );
    assert_eq!(set(&mut c, &["EXISTS", "stray"]), Value::Int(0));
    assert_eq!(
        set(&mut c, &["LRANGE", "queue", "0", "-1"]),
        Value::Array(vec![
            Value::Bulk(Some(b"a".to_vec())),
            Value::Bulk(Some(b"b".to_vec())),
            Value::Bulk(Some(b"c".to_vec()))
        ])
    );
    let Value::Int(ttl) = set(&mut c, &["TTL", "session"]) else {
        panic!()
    };
    assert!(ttl > 0 && ttl <= 3600, "the TTL came back as {ttl}");
    set(&mut c, &["SELECT", "3"]);
    assert_eq!(
        set(&mut c, &["HGET", "config", "mode"]),
        Value::Bulk(Some(b"fast".to_vec()))
    );

    // A truncated RDB: verify fails naming it.
    truncate(
        &backups
            .repository()
            .backup_dir(&manifest.id)
            .join(&rdb.file),
    );
    let report = backups
        .verify(&manifest.id, Level::Restore, &Identities::none(), &Silent)
        .unwrap();
    assert!(!report.ok);
    assert_eq!(report.artifacts[0].artifact, rdb.file);
    assert!(
        report.artifacts[0]
            .detail
            .iter()
            .any(|d| d.contains("truncated")),
        "{report:#?}"
    );
}

/// Rows written while the backup runs: the counts in the manifest come from the dump's own
/// snapshot, so a restore-verify still matches exactly.
#[test]
fn postgres_counts_match_the_dump_under_concurrent_writes() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let (_server, conn) = start_postgres();
    conn.connect("postgres")
        .unwrap()
        .batch_execute("CREATE DATABASE busy")
        .unwrap();
    conn.connect("busy")
        .unwrap()
        .batch_execute("CREATE TABLE events (id bigserial PRIMARY KEY, payload text); INSERT INTO events (payload) SELECT repeat('x', 200) FROM generate_series(1, 20000)")
        .unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let written = std::sync::Arc::new(AtomicU64::new(0));
    // The writer inserts without pause from before the backup starts until after it ends.
    let writer = {
        let (conn, stop, written) = (conn.clone(), stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut c = conn.connect("busy").unwrap();
            while !stop.load(Ordering::Relaxed) {
                c.batch_execute(
                    "INSERT INTO events (payload) SELECT 'y' FROM generate_series(1, 50)",
                )
                .unwrap();
                written.fetch_add(50, Ordering::Relaxed);
            }
        })
    };
    let start = std::time::Instant::now();
    while written.load(Ordering::Relaxed) == 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the writer did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let repo = tempfile::tempdir().unwrap();
    let backups = Backups::new(settings(
        repo.path(),
        vec![(
            "main",
            Source::Postgres {
                conn: conn.clone(),
                databases: Some(vec!["busy".into()]),
            },
        )],
    ));
    let manifest = backups.create(Trigger::Manual, None, &Silent).unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let report = backups
        .verify(&manifest.id, Level::Restore, &Identities::none(), &Silent)
        .unwrap();
    assert!(report.ok, "{report:#?}");
}

/// A new database `name` on the server, made by `sql`: a client of it and the dump tools.
fn database_with(
    conn: &tcf_backup::postgres::PgConn,
    name: &str,
    sql: &str,
) -> (postgres::Client, tcf_backup::postgres::PgTools) {
    use tcf_backup::postgres as pg;
    conn.connect("postgres")
        .unwrap()
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let mut db = conn.connect(name).unwrap();
    db.batch_execute(sql).unwrap();
    let (server, major) = pg::server_version(conn).unwrap();
    (db, pg::find_tools(major, &server, None).unwrap())
}

/// Backups made before the 64-bit row hash recorded MD5 sums: a restore is still compared the
/// way its backup was counted, and a changed row is still caught.
#[test]
fn md5_counted_backups_are_verified_the_md5_way() {
    use tcf_backup::postgres::{self, Counting, RowChecksum};
    let (_server, conn) = start_postgres();
    let (mut db, tools) = database_with(
        &conn,
        "legacy",
        "CREATE TABLE notes (id int PRIMARY KEY, body text);
         INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 300) g",
    );
    let md5 = postgres::table_stats(&mut db, Counting::Fresh(RowChecksum::Md5)).unwrap();
    assert_eq!(
        RowChecksum::of(&md5["public.notes"].checksum),
        RowChecksum::Md5
    );
    let mut dump = Vec::new();
    let fresh = postgres::dump_database(&conn, &tools, "legacy", &mut dump, "memory").unwrap();
    let tcf_backup::Expectation::Tables { tables, .. } = &fresh else {
        panic!("{fresh:?}")
    };
    assert_eq!(
        RowChecksum::of(&tables["public.notes"].checksum),
        RowChecksum::Record64
    );
    assert_eq!(tables["public.notes"].rows, 300);

    // The expectation a pre-h64 backup of this dump would carry.
    let legacy = |stats: BTreeMap<String, tcf_backup::manifest::TableStats>| match fresh.clone() {
        tcf_backup::Expectation::Tables {
            owner,
            encoding,
            collate,
            ctype,
            ..
        } => tcf_backup::Expectation::Tables {
            tables: stats,
            owner,
            encoding,
            collate,
            ctype,
        },
        other => other,
    };
    let problems = postgres::verify_restore(
        &conn,
        &tools,
        "legacy",
        &legacy(md5.clone()),
        &mut &dump[..],
    )
    .unwrap();
    assert!(problems.is_empty(), "{problems:?}");

    db.batch_execute("UPDATE notes SET body = 'changed' WHERE id = 7")
        .unwrap();
    let changed = postgres::table_stats(&mut db, Counting::Fresh(RowChecksum::Md5)).unwrap();
    assert_eq!(changed["public.notes"].rows, 300);
    assert_ne!(
        changed["public.notes"].checksum,
        md5["public.notes"].checksum
    );
    let problems =
        postgres::verify_restore(&conn, &tools, "legacy", &legacy(changed), &mut &dump[..])
            .unwrap();
    assert_eq!(
        problems,
        vec!["table public.notes has the same row count but different rows".to_string()]
    );
}

/// A table whose columns have no extended hash (json, point) is summed by its text instead, in
/// the same backup as tables summed by their records; the restore is compared table by table
/// the way each was counted, and a changed row of either kind is caught.
#[test]
fn tables_without_a_record_hash_are_summed_by_their_text() {
    use tcf_backup::postgres::{self, Counting, RowChecksum};
    let (_server, conn) = start_postgres();
    let (mut db, tools) = database_with(
        &conn,
        "mixed",
        "CREATE TABLE plain (id int PRIMARY KEY, body text);
         INSERT INTO plain SELECT g, 'row ' || g FROM generate_series(1, 200) g;
         CREATE TABLE docs (id int PRIMARY KEY, doc json, at point);
         INSERT INTO docs SELECT g, json_build_object('n', g), point(g, g) FROM generate_series(1, 50) g",
    );
    let mut dump = Vec::new();
    let fresh = postgres::dump_database(&conn, &tools, "mixed", &mut dump, "memory").unwrap();
    let tcf_backup::Expectation::Tables { tables, .. } = &fresh else {
        panic!("{fresh:?}")
    };
    assert_eq!(
        RowChecksum::of(&tables["public.plain"].checksum),
        RowChecksum::Record64
    );
    assert_eq!(
        RowChecksum::of(&tables["public.docs"].checksum),
        RowChecksum::Hash64
    );
    assert_eq!(tables["public.docs"].rows, 50);
    let problems =
        postgres::verify_restore(&conn, &tools, "mixed", &fresh, &mut &dump[..]).unwrap();
    assert!(problems.is_empty(), "{problems:?}");

    // The same rows counted now match; after a change to each table, both differ.
    let same = postgres::table_stats(&mut db, Counting::AsRecorded(tables)).unwrap();
    assert_eq!(&same, tables);
    db.batch_execute(
        "UPDATE plain SET body = 'changed' WHERE id = 7;
         UPDATE docs SET doc = '{\"n\": -1}' WHERE id = 3",
    )
    .unwrap();
    let changed = postgres::table_stats(&mut db, Counting::AsRecorded(tables)).unwrap();
    for table in ["public.plain", "public.docs"] {
        assert_eq!(changed[table].rows, tables[table].rows);
        assert_ne!(changed[table].checksum, tables[table].checksum, "{table}");
    }
}
