//! Dependency probes against real PostgreSQL and Redis servers started by the test
//! (`scripts/test` installs them from Debian's packages). A missing server fails the test
//! with what to install: it never passes without having run.

use std::time::{Duration, Instant};
use tcf_config::{Dependency, DependencyKind};
use tcf_daemon::probe_dependency;

fn dependency(kind: DependencyKind, address: String) -> Dependency {
    Dependency {
        name: "dep".into(),
        kind,
        address: Some(address),
        url: None,
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
    }
}

async fn eventually_ok(dep: &Dependency) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let r = probe_dependency(dep).await;
        if r.is_ok() || start.elapsed() > Duration::from_secs(30) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn redis_probe_needs_a_real_redis() {
    let server = tcf_testkit::start_redis();
    let port = server.port;
    let dep = dependency(DependencyKind::Redis, format!("127.0.0.1:{port}"));
    eventually_ok(&dep).await.unwrap();

    // Something that is not Redis on the port fails the probe.
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = other.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = other.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let err = probe_dependency(&dependency(DependencyKind::Redis, addr))
        .await
        .unwrap_err();
    assert!(err.contains("did not answer PING like Redis"), "{err}");
}

#[tokio::test]
async fn postgres_probe_needs_a_real_postgres() {
    let server = tcf_testkit::start_postgres();
    let port = server.port;
    eventually_ok(&dependency(
        DependencyKind::Postgres,
        format!("127.0.0.1:{port}"),
    ))
    .await
    .unwrap();

    // A port that accepts and hangs up is not PostgreSQL.
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = other.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = other.accept().await {
            drop(s);
        }
    });
    let err = probe_dependency(&dependency(DependencyKind::Postgres, addr))
        .await
        .unwrap_err();
    assert!(err.contains("PostgreSQL"), "{err}");
}
