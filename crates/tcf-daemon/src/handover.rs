//! Handing the daemon over to a new process (`daemon restart`, `daemon upgrade`) without
//! closing a public listener, as HAProxy's `-x` and nginx's binary upgrade do.
//!
//! The running (old) daemon starts the new binary with [`HANDOVER_ENV`] naming a Unix socket
//! in the state directory, then:
//!
//! 1. the new daemon loads its config and connects (anything that fails before this, a binary
//!    that does not run or a config that does not load, leaves the old one untouched);
//! 2. the old one stops changing state: no release may start, instance supervisors and the
//!    monitor stop, the event writer is flushed, the store (held in exclusive mode) is closed
//!    and the state directory's lock released. Its proxies keep serving meanwhile;
//! 3. the old one passes every public listener, the API socket and the metrics listener with
//!    SCM_RIGHTS: the same sockets, so no connection is refused or lost;
//! 4. the new one takes the lock, opens the store, adopts every instance (same pids), waits for
//!    them to pass a health probe, starts accepting and says it is ready;
//! 5. the old one stops accepting, finishes its in-flight requests and upgraded connections
//!    (up to the drain deadline) and exits without stopping anything.
//!
//! If the new daemon fails or dies before it is ready, the old one takes its lock and store
//! back, supervises its instances again and keeps serving; the caller gets the reason.

use crate::platform::{lock, Platform};
use crate::{supervisor, DaemonError};
use nix::fcntl::Flock;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Names the old daemon's handover socket in the new daemon's environment.
pub const HANDOVER_ENV: &str = "TCF_HANDOVER_SOCKET";
/// Descriptors per message (the kernel takes at most 253 in one).
const FDS_PER_MESSAGE: usize = 200;
/// How long the old daemon waits for the new one to be ready.
const READY_DEADLINE: Duration = Duration::from_secs(120);
/// How long the new daemon waits for its adopted instances' first passing probe before it
/// accepts anyway.
const ADOPTION_DEADLINE: Duration = Duration::from_secs(30);

/// Which descriptor is which, sent ahead of them.
#[derive(Debug, Serialize, Deserialize)]
struct Inventory {
    /// Each service's listeners (one per proxy worker), in this order among the descriptors.
    services: Vec<(String, usize)>,
    /// Then the API socket, then the metrics listener when there is one.
    metrics: bool,
    /// The services that had a healthy instance: the new daemon waits for those before it
    /// accepts, so no request meets an empty route.
    healthy: Vec<String>,
}

/// One line each way on the handover socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    Hello { pid: u32 },
    Ready { pid: u32 },
    Failed { error: String },
}

/// What a daemon keeps to hand itself over: copies of its listeners, its lock, and the
/// switches that stop its data plane.
pub struct Kit {
    /// None once the daemon stops: a copy kept here would keep the sockets accepting
    /// connections nobody serves.
    sockets: Mutex<Option<Sockets>>,
    daemon_lock: Mutex<Option<Flock<std::fs::File>>>,
    /// Tells the proxies to stop accepting and drain.
    pub data_plane: watch::Sender<bool>,
    /// Set once a new daemon took over: this one exits without stopping anything.
    handed_over: AtomicBool,
    /// Set while this daemon's control plane is stopped for a handover.
    frozen: AtomicBool,
    /// One handover at a time; held while one runs.
    running: tokio::sync::Mutex<()>,
}

impl Kit {
    pub fn new(
        listeners: Vec<(String, Vec<std::net::TcpListener>)>,
        api: UnixListener,
        metrics: Option<std::net::TcpListener>,
        daemon_lock: Flock<std::fs::File>,
    ) -> Kit {
        Kit {
            sockets: Mutex::new(Some(Sockets {
                listeners,
                api,
                metrics,
            })),
            daemon_lock: Mutex::new(Some(daemon_lock)),
            data_plane: watch::channel(false).0,
            handed_over: AtomicBool::new(false),
            frozen: AtomicBool::new(false),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Wait for a handover in progress to end (none starts after this); true if a new daemon
    /// took over. Either way this daemon's copies of its sockets are closed.
    pub async fn settle(&self) -> bool {
        let _ = self.running.lock().await;
        lock(&self.sockets).take();
        self.handed_over.load(Ordering::SeqCst)
    }
}

struct Sockets {
    listeners: Vec<(String, Vec<std::net::TcpListener>)>,
    api: UnixListener,
    metrics: Option<std::net::TcpListener>,
}

/// What the new daemon got from the old one.
pub struct Inherited {
    conn: UnixStream,
    pub old_pid: u32,
    pub services: BTreeMap<String, Vec<std::net::TcpListener>>,
    pub api: UnixListener,
    pub metrics: Option<std::net::TcpListener>,
    pub healthy: Vec<String>,
}

impl Inherited {
    /// Tell the old daemon this one serves now.
    pub fn ready(&mut self) -> std::io::Result<()> {
        send_line(
            &mut self.conn,
            &Message::Ready {
                pid: std::process::id(),
            },
        )
    }
}

fn send_line(conn: &mut UnixStream, m: &Message) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(m).map_err(std::io::Error::other)?;
    line.push(b'\n');
    conn.write_all(&line)
}

/// Read one line, byte by byte: nothing past it may be consumed (descriptors ride on the
/// bytes that follow).
fn read_line(conn: &mut UnixStream) -> std::io::Result<Message> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if conn.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    serde_json::from_slice(&line).map_err(std::io::Error::other)
}

fn handover_err(why: impl std::fmt::Display) -> DaemonError {
    DaemonError::Handover(why.to_string())
}

/// The new daemon's side, before it takes the lock: connect to the old daemon, say hello and
/// receive its listeners. Blocking (a few small messages on a local socket).
pub fn receive(socket: &Path) -> Result<Inherited, DaemonError> {
    let mut conn = UnixStream::connect(socket).map_err(|e| {
        handover_err(format!(
            "cannot reach the daemon handing over at {}: {e}",
            socket.display()
        ))
    })?;
    conn.set_read_timeout(Some(READY_DEADLINE))
        .map_err(handover_err)?;
    send_line(
        &mut conn,
        &Message::Hello {
            pid: std::process::id(),
        },
    )
    .map_err(handover_err)?;
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).map_err(|e| {
        handover_err(format!(
            "the old daemon sent no listeners ({e}); it keeps serving"
        ))
    })?;
    let mut header = vec![0u8; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut header).map_err(handover_err)?;
    let (old_pid, inventory): (u32, Inventory) =
        serde_json::from_slice(&header).map_err(handover_err)?;
    let total = inventory.services.iter().map(|(_, n)| n).sum::<usize>()
        + 1
        + usize::from(inventory.metrics);
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(total);
    while fds.len() < total {
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!([RawFd; FDS_PER_MESSAGE]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| handover_err(format!("receiving the listeners: {e}")))?;
        if msg.bytes == 0 {
            return Err(handover_err("the old daemon closed the handover early"));
        }
        let mut got = 0;
        for c in msg.cmsgs().map_err(handover_err)? {
            if let ControlMessageOwned::ScmRights(received) = c {
                got += received.len();
                // SAFETY: the kernel just gave us these descriptors; nothing else owns them.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if got == 0 {
            return Err(handover_err("a handover message came without descriptors"));
        }
    }
    let mut fds = fds.into_iter();
    let mut services = BTreeMap::new();
    for (name, n) in inventory.services {
        let listeners: Vec<std::net::TcpListener> = fds.by_ref().take(n).map(Into::into).collect();
        services.insert(name, listeners);
    }
    let api: UnixListener = fds
        .next()
        .map(Into::into)
        .ok_or_else(|| handover_err("no API socket was handed over"))?;
    let metrics = fds.next().map(Into::into);
    Ok(Inherited {
        conn,
        old_pid,
        services,
        api,
        metrics,
        healthy: inventory.healthy,
    })
}

/// Tell the old daemon this one could not start; it keeps serving.
pub fn report_failure(socket_conn: Option<UnixStream>, error: &str) {
    if let Some(mut conn) = socket_conn {
        let _ = send_line(
            &mut conn,
            &Message::Failed {
                error: error.to_string(),
            },
        );
    }
}

impl Inherited {
    /// A second handle on the connection, to report a failure from wherever startup fails.
    pub fn reporter(&self) -> Option<UnixStream> {
        self.conn.try_clone().ok()
    }
}

/// The new daemon: wait (up to a deadline) until every service that was healthy under the old
/// daemon has a healthy instance again here, so accepting never meets an empty route.
pub async fn wait_for_adopted(p: &Platform, healthy: &[String]) {
    let deadline = Instant::now() + ADOPTION_DEADLINE;
    loop {
        let waiting: Vec<&String> = healthy
            .iter()
            .filter(|s| p.services.get(*s).is_some_and(|svc| !*svc.healthy.borrow()))
            .collect();
        if waiting.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            tracing::warn!(
                "taking over although {} not healthy yet",
                waiting
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The result of a handover.
#[derive(Debug)]
pub struct Outcome {
    pub old_pid: u32,
    pub new_pid: u32,
    pub binary: String,
}

/// The binary a restart runs: this one's file (the path, so a package upgrade that replaced
/// it is picked up).
fn current_binary() -> Result<PathBuf, String> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| format!("cannot find this daemon's binary: {e}"))?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// The old daemon's side: start `binary` (this one's when None) and hand everything over.
/// Err says why the new daemon is not serving; this one then still is.
pub async fn hand_over(
    p: Arc<Platform>,
    kit: Arc<Kit>,
    binary: Option<PathBuf>,
    actor: String,
) -> Result<Outcome, String> {
    let _one = kit
        .running
        .try_lock()
        .map_err(|_| "a restart or upgrade is already in progress".to_string())?;
    if kit.handed_over.load(Ordering::SeqCst) || *p.shutdown.borrow() {
        return Err("this daemon is stopping".into());
    }
    let no_release = p.release_slot.try_lock().map_err(|_| {
        "a release is running; wait for it to finish (tcf-platform status), then retry".to_string()
    })?;
    let binary = match binary {
        Some(b) => b,
        None => current_binary()?,
    };
    if !tcf_runtime::process::is_executable(&binary) {
        return Err(format!(
            "{} is not an executable file; give the path of the new tcf-platform binary",
            binary.display()
        ));
    }
    let socket = p
        .config
        .platform
        .state_dir
        .join(format!("handover-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| format!("cannot create {}: {e}", socket.display()))?;
    let _remove_socket = RemoveOnDrop(socket.clone());
    p.event_by(
        &actor,
        "daemon.handover_started",
        None,
        None,
        format!("starting {} to take over", binary.display()),
    );
    // The same command line this daemon was started with (config, environment, flags).
    let mut child = tokio::process::Command::new(&binary)
        .args(std::env::args_os().skip(1))
        .env(HANDOVER_ENV, &socket)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let new_pid = child.id().unwrap_or(0);
    let failed = |why: String| {
        p.event_by(
            &actor,
            "daemon.handover_failed",
            None,
            None,
            format!(
                "{why}; this daemon (pid {}) keeps serving",
                std::process::id()
            ),
        );
        why
    };

    // 1. The new daemon is up far enough to have loaded its config.
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    let accepted = tokio::select! {
        a = listener.accept() => a.map_err(|e| e.to_string()),
        status = child.wait() => Err(format!(
            "the new daemon exited before taking over ({}); its error is in the daemon's log",
            status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
        )),
        _ = tokio::time::sleep_until(deadline) => Err("the new daemon did not connect in time".into()),
    };
    let stream = match accepted {
        Ok((s, _)) => s,
        Err(why) => {
            let _ = child.start_kill();
            return Err(failed(why));
        }
    };
    let mut stream = stream
        .into_std()
        .map_err(|e| failed(format!("handover socket: {e}")))?;
    stream
        .set_nonblocking(false)
        .map_err(|e| failed(format!("handover socket: {e}")))?;

    // 2. Stop changing state and let go of the store and the lock.
    let kit2 = kit.clone();
    let p2 = p.clone();
    let exchange = tokio::task::spawn_blocking(move || -> Result<Message, String> {
        stream
            .set_read_timeout(Some(READY_DEADLINE))
            .map_err(|e| e.to_string())?;
        match read_line(&mut stream).map_err(|e| e.to_string())? {
            Message::Hello { .. } => {}
            other => return Err(format!("unexpected handover message {other:?}")),
        }
        freeze(&p2, &kit2)?;
        send_listeners(&mut stream, &p2, &kit2).map_err(|e| e.to_string())?;
        read_line(&mut stream).map_err(|e| e.to_string())
    });
    let mut exchange = exchange;
    let flatten = |r: Result<Result<Message, String>, tokio::task::JoinError>| {
        r.map_err(|e| e.to_string()).and_then(|r| r)
    };
    let reply = tokio::select! {
        r = &mut exchange => flatten(r),
        status = child.wait() => {
            // It may have said why before it exited: that beats its exit status.
            let exited = format!(
                "the new daemon exited before it was ready ({}); its error is in the daemon's log",
                status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
            );
            match tokio::time::timeout(Duration::from_secs(5), &mut exchange).await {
                Ok(r) => match flatten(r) {
                    Ok(m) => Ok(m),
                    Err(_) => Err(exited),
                },
                Err(_) => Err(exited),
            }
        }
    };
    match reply {
        Ok(Message::Ready { pid }) => {
            kit.handed_over.store(true, Ordering::SeqCst);
            // This daemon never runs a release again (its store is the new daemon's): a
            // request that reaches its API before it closes waits, then gives up.
            std::mem::forget(no_release);
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            // Stop accepting and drain; the daemon's main task then exits without stopping
            // anything (see `run`).
            kit.data_plane.send_replace(true);
            p.shutdown.send_replace(true);
            Ok(Outcome {
                old_pid: std::process::id(),
                new_pid: pid.max(new_pid),
                binary: binary.display().to_string(),
            })
        }
        Ok(Message::Failed { error }) => {
            // SIGKILL, never SIGTERM: a daemon that stops cleanly stops the instances too.
            let _ = child.start_kill();
            let _ = child.wait().await;
            thaw(&p, &kit).await;
            Err(failed(format!("the new daemon failed to start: {error}")))
        }
        Ok(other) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            thaw(&p, &kit).await;
            Err(failed(format!("unexpected handover message {other:?}")))
        }
        Err(why) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            thaw(&p, &kit).await;
            Err(failed(why))
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Stop every source of state changes, flush the events, close the store, drop the lock.
fn freeze(p: &Arc<Platform>, kit: &Kit) -> Result<(), String> {
    p.event(
        "daemon.handing_over",
        None,
        None,
        format!(
            "handing over to a new daemon; pid {} keeps serving until it is ready",
            std::process::id()
        ),
    );
    for svc in p.services.values() {
        for inst in svc.instances() {
            // Dropping the handle leaves the process running: the new daemon adopts it.
            if let Some(task) = lock(&inst.task).take() {
                task.abort();
            }
        }
    }
    if let Some(m) = p.monitor.get() {
        lock(&m.monitor).take();
    }
    p.event_log.flush();
    kit.frozen.store(true, Ordering::SeqCst);
    p.store.suspend().map_err(|e| e.to_string())?;
    lock(&kit.daemon_lock).take();
    Ok(())
}

/// The new daemon failed: take the lock and the store back and supervise the instances again.
async fn thaw(p: &Arc<Platform>, kit: &Kit) {
    if !kit.frozen.swap(false, Ordering::SeqCst) {
        return;
    }
    let state_dir = p.config.platform.state_dir.clone();
    // The failed daemon may take a moment to be gone and release the lock.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match crate::take_lock(&state_dir) {
            Ok(l) => {
                *lock(&kit.daemon_lock) = Some(l);
                break;
            }
            Err(e) if Instant::now() > deadline => {
                tracing::error!("cannot take the state directory's lock back: {e}");
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let store = p.store.clone();
    match tokio::task::spawn_blocking(move || store.resume()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!("cannot open the state store again after a failed handover: {e}")
        }
        Err(e) => {
            tracing::error!("cannot open the state store again after a failed handover: {e}")
        }
    }
    if let Some(m) = p.monitor.get() {
        match crate::monitor::MonitorService::open_monitor(p, &m.dir) {
            Ok(reopened) => *lock(&m.monitor) = Some(reopened),
            Err(e) => tracing::error!("cannot reopen the metric history: {e}"),
        }
    }
    supervisor::supervise_again(p).await;
    p.event(
        "daemon.handover_aborted",
        None,
        None,
        "the handover was called off; this daemon serves and supervises as before",
    );
}

/// Send the inventory, then every listener's descriptor.
fn send_listeners(conn: &mut UnixStream, p: &Platform, kit: &Kit) -> std::io::Result<()> {
    let held = lock(&kit.sockets);
    let Some(kit) = held.as_ref() else {
        return Err(std::io::Error::other("this daemon is stopping"));
    };
    let healthy = p
        .services
        .iter()
        .filter(|(_, s)| *s.healthy.borrow())
        .map(|(n, _)| n.clone())
        .collect();
    let inventory = Inventory {
        services: kit
            .listeners
            .iter()
            .map(|(n, l)| (n.clone(), l.len()))
            .collect(),
        metrics: kit.metrics.is_some(),
        healthy,
    };
    let header =
        serde_json::to_vec(&(std::process::id(), inventory)).map_err(std::io::Error::other)?;
    conn.write_all(&(header.len() as u32).to_be_bytes())?;
    conn.write_all(&header)?;
    let mut fds: Vec<RawFd> = kit
        .listeners
        .iter()
        .flat_map(|(_, l)| l.iter().map(|l| l.as_raw_fd()))
        .collect();
    fds.push(kit.api.as_raw_fd());
    if let Some(m) = &kit.metrics {
        fds.push(m.as_raw_fd());
    }
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        let byte = [b'F'];
        let iov = [IoSlice::new(&byte)];
        let cmsg = [ControlMessage::ScmRights(chunk)];
        sendmsg::<()>(conn.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
            .map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// `POST /v1/daemon/handover`: `daemon restart` (no binary) and `daemon upgrade --binary PATH`.
pub fn router(p: Arc<Platform>, kit: Arc<Kit>) -> axum::Router {
    axum::Router::new()
        .route("/v1/daemon/handover", axum::routing::post(handover_route))
        .route("/v1/reload", axum::routing::post(reload_route))
        .with_state((p, kit))
}

/// Why a reload changed nothing.
pub enum ReloadError {
    /// The config file does not validate.
    Invalid(String),
    /// The new daemon did not take over.
    Handover(String),
}

/// `reload` and SIGHUP: validate the config file, say what it changes, and hand over to a new
/// daemon (same binary) that runs it: new services start, removed ones are stopped once this
/// daemon drained them, and a changed service is scaled or switched blue-green by the release
/// control loop (`apply_config_changes`). An invalid file is refused and changes nothing.
pub async fn reload(
    p: Arc<Platform>,
    kit: Arc<Kit>,
    actor: String,
) -> Result<tcf_api::ReloadResponse, ReloadError> {
    let path = p.config.path.clone();
    let environment = p.config.environment.clone();
    let fresh =
        tokio::task::spawn_blocking(move || tcf_config::load(&path, environment.as_deref()))
            .await
            .map_err(|e| ReloadError::Invalid(e.to_string()))?
            .map_err(|e| {
                ReloadError::Invalid(format!(
                    "the config file does not validate; nothing was changed:\n{e}"
                ))
            })?;
    let mut summary = tcf_api::ReloadResponse::default();
    for (name, svc) in &p.services {
        let Some(new) = fresh.services.get(name) else {
            summary.removed.push(name.clone());
            continue;
        };
        let Some(active) = svc.active_colour() else {
            continue;
        };
        let running = active.current_spec();
        if running.instances != new.instances {
            summary.scaled.push(tcf_api::ScaleChange {
                service: name.clone(),
                from: running.instances,
                to: new.instances,
            });
        }
        let mut as_running = (*running).clone();
        as_running.instances = new.instances;
        if serde_json::to_value(&as_running).ok() != serde_json::to_value(new).ok() {
            summary.changed.push(name.clone());
        }
    }
    summary.added = fresh
        .services
        .keys()
        .filter(|n| !p.services.contains_key(*n))
        .cloned()
        .collect();
    p.event_by(
        &actor,
        "reload.requested",
        None,
        None,
        format!("reload: {}", describe(&summary)),
    );
    let done = hand_over(p, kit, None, actor)
        .await
        .map_err(ReloadError::Handover)?;
    summary.old_pid = done.old_pid;
    summary.new_pid = done.new_pid;
    Ok(summary)
}

/// One line for a reload's changes.
pub fn describe(r: &tcf_api::ReloadResponse) -> String {
    let mut parts = Vec::new();
    if !r.added.is_empty() {
        parts.push(format!("added {}", r.added.join(", ")));
    }
    if !r.removed.is_empty() {
        parts.push(format!("removed {}", r.removed.join(", ")));
    }
    for s in &r.scaled {
        parts.push(format!("{} scaled {} -> {}", s.service, s.from, s.to));
    }
    if !r.changed.is_empty() {
        parts.push(format!("changed {} (blue-green)", r.changed.join(", ")));
    }
    if parts.is_empty() {
        "no service changes".into()
    } else {
        parts.join("; ")
    }
}

async fn reload_route(
    axum::extract::State((p, kit)): axum::extract::State<(Arc<Platform>, Arc<Kit>)>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<crate::caller::Peer>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match reload(p, kit, peer.user()).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(ReloadError::Invalid(error)) => (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(tcf_api::ErrorBody { error }),
        )
            .into_response(),
        Err(ReloadError::Handover(error)) => (
            axum::http::StatusCode::CONFLICT,
            axum::Json(tcf_api::ErrorBody { error }),
        )
            .into_response(),
    }
}

/// SIGHUP reloads, as `tcf-platform reload` does; the outcome goes to the daemon's log.
pub fn reload_on_sighup(p: Arc<Platform>, kit: Arc<Kit>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match reload(p.clone(), kit.clone(), "SIGHUP".into()).await {
                Ok(r) => tracing::info!(
                    "SIGHUP: reloaded ({}); daemon pid {} took over",
                    describe(&r),
                    r.new_pid
                ),
                Err(ReloadError::Invalid(e)) | Err(ReloadError::Handover(e)) => {
                    tracing::error!("SIGHUP: reload refused: {e}")
                }
            }
        }
    });
    Ok(())
}

async fn handover_route(
    axum::extract::State((p, kit)): axum::extract::State<(Arc<Platform>, Arc<Kit>)>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<crate::caller::Peer>,
    crate::api::ApiJson(req): crate::api::ApiJson<tcf_api::HandoverRequest>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let binary = req.binary.map(PathBuf::from);
    match hand_over(p, kit, binary, peer.user()).await {
        Ok(o) => axum::Json(tcf_api::HandoverResponse {
            old_pid: o.old_pid,
            new_pid: o.new_pid,
            binary: o.binary,
        })
        .into_response(),
        Err(error) => (
            axum::http::StatusCode::CONFLICT,
            axum::Json(tcf_api::ErrorBody { error }),
        )
            .into_response(),
    }
}

/// The old daemon, handed over: wait (up to `limit`) for the upgraded connections (WebSockets)
/// its proxies still carry, which the connection drain does not cover.
pub async fn wait_for_tunnels(p: &Platform, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let open: u64 = p
            .services
            .values()
            .flat_map(|s| s.instances())
            .map(|i| i.backend().upgraded() as u64)
            .sum();
        if open == 0 || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Tell systemd (`Type=notify`, `NotifyAccess=all`) something about this daemon: `READY=1`
/// once it serves, `MAINPID=` when it took over from the old one (so the old one's exit is no
/// failure of the unit). Nothing happens outside systemd.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            socket.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd ({state}): {e}");
    }
}
