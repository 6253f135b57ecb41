//! Real PostgreSQL and Redis servers on loopback (`tcf-testkit`: started by the test, stopped by
//! pid), with the connections the backup code takes, and ways to damage a file.
#![allow(dead_code)]

use std::path::Path;
use tcf_backup::postgres::PgConn;
use tcf_backup::redis::RedisConn;
pub use tcf_testkit::ServerProcess as Server;

/// A fresh PostgreSQL cluster (trust authentication, superuser `postgres`) on a free port,
/// once it takes connections.
pub fn start_postgres() -> (Server, PgConn) {
    let server = tcf_testkit::start_postgres();
    let conn = PgConn {
        host: "127.0.0.1".into(),
        port: server.port,
        user: "postgres".into(),
        password: None,
    };
    tcf_testkit::wait_for("PostgreSQL", || conn.connect("postgres").is_ok());
    (server, conn)
}

/// A Redis server on a free port, with no persistence of its own, once it answers.
pub fn start_redis() -> (Server, RedisConn) {
    let server = tcf_testkit::start_redis();
    let conn = RedisConn {
        host: "127.0.0.1".into(),
        port: server.port,
        password: None,
    };
    tcf_testkit::wait_for("Redis", || conn.connect().is_ok());
    (server, conn)
}

/// Flip one byte in the middle of a file.
pub fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x55;
    std::fs::write(path, bytes).unwrap();
}

pub fn truncate(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len / 2).unwrap();
}
