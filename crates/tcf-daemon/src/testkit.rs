//! A platform for the release engine's unit tests: the real supervisor, store, proxy routes and
//! health probes, with instances from [`FakeRuntime`] (in-process HTTP listeners whose health,
//! answers and exits are scripted by their version and instance id). Fast, and able to produce
//! corner cases the demo service cannot: one bad instance in a batch, a store that refuses a
//! write, a lease taken away mid-release.
//!
//! Versions script the fake instances:
//! - `unhealthy`: `/health` answers 503;
//! - `sick-after`: healthy for 1.2 s, then 503 (caught by the deploy watch);
//! - `bad2`: instance number 2 of the colour is unhealthy, the others are fine;
//! - `errors`: every other path answers 500.

use crate::platform::Platform;
use crate::supervisor;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tcf_runtime::{BoxFuture, Exit, Identity, InstanceSpec, Running, Runtime, RuntimeError};
use tcf_store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Instances as in-process listeners; counts what is live so a test can find leaks.
#[derive(Default)]
pub struct FakeRuntime {
    live: Arc<Mutex<BTreeMap<String, u32>>>,
    starts: AtomicUsize,
    /// Instances whose health endpoint answers 503 until told otherwise.
    sick: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// The newest start of each instance id, to make it exit on demand.
    exits: Mutex<BTreeMap<String, watch::Sender<bool>>>,
}

impl FakeRuntime {
    /// Live instances by id, with how many copies of each run (more than one is a leak).
    pub fn live(&self) -> BTreeMap<String, u32> {
        self.live.lock().unwrap().clone()
    }

    pub fn starts(&self) -> usize {
        self.starts.load(Ordering::SeqCst)
    }

    /// Make instance `id` fail (or pass again) its health checks while it keeps running.
    pub fn set_sick(&self, id: &str, sick: bool) {
        let mut set = self.sick.lock().unwrap();
        if sick {
            set.insert(id.to_string());
        } else {
            set.remove(id);
        }
    }

    /// Make instance `id` exit as if it crashed; its port is free once this returns.
    pub async fn crash(&self, id: &str) {
        let exit = self.exits.lock().unwrap().get(id).cloned();
        if let Some(exit) = exit {
            exit.send_replace(true);
        }
        while self.live().contains_key(id) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

struct FakeInstance {
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    pid: u32,
}

impl Running for FakeInstance {
    fn identity(&self) -> Identity {
        Identity {
            pid: self.pid,
            pgid: self.pid,
            start_ticks: None,
        }
    }
    fn terminate(&self) {
        self.stop.send_replace(true);
    }
    fn kill(&self) {
        self.stop.send_replace(true);
    }
    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            let _ = self.done.wait_for(|d| *d).await;
            Exit::Code(0)
        })
    }
}

fn answer(version: &str, id: &str, path: &str, born: Instant, sick: bool) -> (u16, String) {
    if path.starts_with("/health") {
        let sick = sick
            || version.contains("unhealthy")
            || (version.contains("sick-after") && born.elapsed() > Duration::from_millis(1200))
            || (version.contains("bad2") && id.ends_with("-2"));
        return if sick {
            (503, "sick".into())
        } else {
            (200, "ok".into())
        };
    }
    if version.contains("errors") {
        return (500, "error".into());
    }
    (
        200,
        format!("{{\"version\":\"{version}\",\"instance\":\"{id}\"}}"),
    )
}

async fn serve_one(
    mut conn: tokio::net::TcpStream,
    version: String,
    id: String,
    born: Instant,
    sick: Arc<Mutex<std::collections::BTreeSet<String>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let forced = sick.lock().unwrap().contains(&id);
    let (code, body) = answer(&version, &id, &path, born, forced);
    let reply = format!(
        "HTTP/1.1 {code} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes()).await;
}

impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn start(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<Box<dyn Running>, RuntimeError>> {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", spec.port))
                .await
                .map_err(|source| RuntimeError::Spawn {
                    instance: spec.id.clone(),
                    program: "fake".into(),
                    source,
                })?;
            let n = self.starts.fetch_add(1, Ordering::SeqCst) as u32;
            *self
                .live
                .lock()
                .unwrap()
                .entry(spec.id.clone())
                .or_default() += 1;
            let (stop, mut stop_rx) = watch::channel(false);
            self.exits
                .lock()
                .unwrap()
                .insert(spec.id.clone(), stop.clone());
            let (done_tx, done) = watch::channel(false);
            let live = self.live.clone();
            let sick = self.sick.clone();
            let (id, version, born) = (spec.id.clone(), spec.version.clone(), Instant::now());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            if let Ok((conn, _)) = accepted {
                                tokio::spawn(serve_one(conn, version.clone(), id.clone(), born, sick.clone()));
                            }
                        }
                        _ = stop_rx.wait_for(|s| *s) => break,
                    }
                }
                drop(listener);
                {
                    let mut live = live.lock().unwrap();
                    if let Some(count) = live.get_mut(&id) {
                        *count -= 1;
                        if *count == 0 {
                            live.remove(&id);
                        }
                    }
                }
                done_tx.send_replace(true);
            });
            Ok(Box::new(FakeInstance {
                stop,
                done,
                pid: 1_000_000 + n,
            }) as Box<dyn Running>)
        })
    }

    fn clean_up(&self, _left: Identity, _grace: Duration) -> BoxFuture<'_, bool> {
        Box::pin(async { false })
    }
}

/// A started platform on the fake runtime, stopped (instances and all) when dropped.
pub struct TestPlatform {
    pub p: Arc<Platform>,
    pub runtime: Arc<FakeRuntime>,
    _dir: tempfile::TempDir,
}

/// The config of a test platform: `services` are `(name, instances)`, no dependencies between
/// them; quick probes, gates and watch; `extra` is appended (more `[deploy]` keys, say).
pub fn config(dir: &std::path::Path, services: &[(&str, u32)], extra: &str) -> String {
    let mut text = format!(
        "[platform]\nname = \"t\"\nstate_dir = \"{}\"\n\n[defaults.health]\ninterval = \"100ms\"\n\
         timeout = \"500ms\"\nunhealthy_threshold = 1\ndeadline = \"3s\"\n",
        dir.display()
    );
    for (name, instances) in services {
        let port = free_port();
        text.push_str(&format!(
            "\n[services.{name}]\ncommand = [\"fake\"]\nversion = \"v1\"\nlisten = \"127.0.0.1:{port}\"\ninstances = {instances}\n"
        ));
    }
    // Quick defaults, unless `extra` sets the key itself.
    let defaults = [
        ("watch", "\"3s\""),
        ("retire_after", "\"10m\""),
        ("drain_timeout", "\"1s\""),
        ("lock_ttl", "\"1s\""),
    ];
    text.push_str("\n[deploy]\n");
    for (k, v) in defaults {
        if !extra.contains(&format!("{k} =")) {
            text.push_str(&format!("{k} = {v}\n"));
        }
    }
    text.push_str(extra);
    text
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

impl TestPlatform {
    /// Start `services` (see [`config`]) and wait until every instance is healthy.
    pub async fn start(services: &[(&str, u32)], extra: &str) -> TestPlatform {
        let dir = tempfile::tempdir().unwrap();
        let text = config(dir.path(), services, extra);
        let config = tcf_config::resolve(&dir.path().join("t.toml"), &text, None)
            .unwrap_or_else(|d| panic!("{d:?}\n{text}"));
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let runtime = Arc::new(FakeRuntime::default());
        let p = crate::assemble(
            config,
            store,
            runtime.clone(),
            crate::Engines::default(),
            crate::Adoptable::default(),
            &BTreeMap::new(),
            BTreeMap::new(),
        );
        crate::record_initial_release(&p, &BTreeMap::new());
        for svc in p.services.values() {
            tokio::spawn(supervisor::start_service(p.clone(), svc.clone()));
        }
        let t = TestPlatform {
            p,
            runtime,
            _dir: dir,
        };
        t.wait_until("every instance healthy", |p| {
            p.services.values().all(|s| {
                let i = s.instances();
                i.len() == s.config.instances as usize && i.iter().all(|i| s.in_pool(i))
            })
        })
        .await;
        t
    }

    /// Wait (up to 10 s) until `ok` holds.
    pub async fn wait_until(&self, what: &str, ok: impl Fn(&Platform) -> bool) {
        let start = Instant::now();
        while !ok(&self.p) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Run a deploy of `targets` with `strategy` to its end.
    pub async fn deploy(
        &self,
        strategy: tcf_config::Strategy,
        targets: &[(&str, &str)],
    ) -> (crate::deploy::Outcome, Vec<tcf_api::ProgressLine>) {
        self.release(crate::deploy::Kind::Deploy(strategy), targets)
            .await
    }

    pub async fn release(
        &self,
        kind: crate::deploy::Kind,
        targets: &[(&str, &str)],
    ) -> (crate::deploy::Outcome, Vec<tcf_api::ProgressLine>) {
        let plan = crate::deploy::Plan {
            kind,
            specs: Default::default(),
            validate: false,
            backup: false,
            force: false,
            targets: targets
                .iter()
                .map(|(s, v)| (s.to_string(), v.to_string()))
                .collect(),
            reason: None,
            actor: "test".into(),
            lock_wait: Duration::ZERO,
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let outcome = crate::deploy::run(self.p.clone(), plan, tx).await;
        let mut lines = Vec::new();
        while let Ok(l) = rx.try_recv() {
            lines.push(l);
        }
        (outcome, lines)
    }

    /// GET / through the service's route, as the proxy would pick the instance: the version
    /// of every instance in the pools of the colours given traffic.
    pub fn serving(&self, service: &str) -> Vec<String> {
        let svc = &self.p.services[service];
        let mut versions: Vec<String> = svc
            .weights()
            .iter()
            .filter(|(_, w)| *w > 0)
            .filter_map(|(c, _)| svc.colour(c))
            .flat_map(|c| {
                c.pool
                    .backends()
                    .iter()
                    .map(|_| c.version.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        versions.sort();
        versions
    }
}

impl Drop for TestPlatform {
    fn drop(&mut self) {
        for svc in self.p.services.values() {
            for i in svc.instances() {
                i.stop.send_replace(true);
            }
        }
    }
}
