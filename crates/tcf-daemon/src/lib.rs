//! The daemon behind `tcf-platform up`.
//!
//! Startup: take the state directory's lock, open the store, clean up whatever a previous daemon
//! left running, bind every public address and the API socket (so a conflict fails before
//! anything starts), then start services in dependency order. Shutdown: stop accepting, let
//! in-flight requests finish, stop instances in reverse dependency order.

mod api;
mod api_monitor;
mod backup;
mod caller;
mod dashboard;
mod deploy;
mod health;
mod logs;
mod metrics;
mod monitor;
mod platform;
mod store_watch;
mod supervisor;
#[cfg(test)]
mod testkit;
mod validate;

pub use api::{build_status, wire_event, wire_releases};
pub use health::dependency as probe_dependency;

use nix::fcntl::{Flock, FlockArg};
use platform::{DependencyInfo, DependencyRuntime, Platform, ServiceRuntime};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tcf_config::Config;
use tcf_proxy::{ServiceProxy, Settings};
use tcf_runtime::process::ProcessRuntime;
use tcf_runtime::{Identity, Runtime};
use tcf_store::Store;
use tokio::sync::{broadcast, watch};

/// How long the proxies wait for in-flight requests when the daemon stops.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(30);
/// How long a leftover process of a previous daemon gets to stop before SIGKILL.
const LEFTOVER_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("another tcf-platform daemon{} is running on {state_dir}\nhint: use it (`tcf-platform status`), or stop it first with `tcf-platform down`", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning {
        state_dir: PathBuf,
        pid: Option<u32>,
    },
    #[error("cannot use the state directory {path}: {source}\nhint: check its permissions and free disk space, or set [platform] state_dir")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] tcf_store::StoreError),
    #[error("service {service} cannot listen on {addr}: {source}\nhint: another program uses that address (find it with `ss -ltnp`), or change the service's listen address")]
    Bind {
        service: String,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Docker(#[from] tcf_docker::DockerError),
    #[error("cannot create the API socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn state_dir_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |source| DaemonError::StateDir {
        path: path.to_path_buf(),
        source,
    }
}

/// Hold the state directory's lock for the daemon's lifetime; the pid inside names the holder.
fn take_lock(state_dir: &std::path::Path) -> Result<Flock<std::fs::File>, DaemonError> {
    let path = state_dir.join("daemon.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(state_dir_err(state_dir))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut held) => {
            held.set_len(0).map_err(state_dir_err(state_dir))?;
            writeln!(held, "{}", std::process::id()).map_err(state_dir_err(state_dir))?;
            Ok(held)
        }
        Err((_, _)) => {
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            Err(DaemonError::AlreadyRunning {
                state_dir: state_dir.to_path_buf(),
                pid,
            })
        }
    }
}

/// Run the platform until `stop` resolves or the API is asked to stop.
pub async fn run(
    config: Config,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let state_dir = config.platform.state_dir.clone();
    std::fs::create_dir_all(state_dir.join("logs")).map_err(state_dir_err(&state_dir))?;
    let _ = std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700));
    let _lock = take_lock(&state_dir)?;
    let store_existed = state_dir.join("state.db").exists();
    let store = Arc::new(Store::open(&state_dir)?);
    let workdir = config
        .path
        .parent()
        .map(|d| d.to_path_buf())
        .unwrap_or_else(|| PathBuf::from("."));
    let runtime: Arc<dyn Runtime> = Arc::new(ProcessRuntime::new(workdir));
    let docker_services: Vec<String> = config
        .services
        .values()
        .filter(|s| s.runtime == tcf_config::RuntimeKind::Docker)
        .map(|s| s.name.clone())
        .collect();
    let docker = if docker_services.is_empty() {
        None
    } else {
        let d = tcf_docker::DockerRuntime::connect(&config.platform.name, &docker_services).await?;
        let networks: std::collections::BTreeSet<String> = config
            .services
            .values()
            .filter_map(|s| s.docker.as_ref().map(|d| d.network.clone()))
            .collect();
        for n in networks {
            d.ensure_network(&n).await?;
        }
        Some(Arc::new(d))
    };

    // Bind everything before starting anything: a taken address fails the whole start. Each
    // proxy worker thread gets its own listener per service.
    let workers = proxy_workers();
    let mut listeners = Vec::new();
    for svc in config.services.values() {
        let l = tcf_proxy::bind_for_workers(svc.listen, workers).map_err(|source| {
            DaemonError::Bind {
                service: svc.name.clone(),
                addr: svc.listen,
                source,
            }
        })?;
        listeners.push((svc.name.clone(), l));
    }
    let metrics_listener = monitor::bind_metrics(&config).await?;
    let dashboard_listener = dashboard::bind(&config).await?;
    let socket = config.daemon.socket.clone();
    let unclean = socket.exists();
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(state_dir_err(dir))?;
    }
    // We hold the lock, so a socket file here is left from a daemon that did not stop cleanly.
    let _ = std::fs::remove_file(&socket);
    let api_listener =
        tokio::net::UnixListener::bind(&socket).map_err(|source| DaemonError::Socket {
            path: socket.clone(),
            source,
        })?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).map_err(
        |source| DaemonError::Socket {
            path: socket.clone(),
            source,
        },
    )?;

    let active = store.active_versions()?;
    // Containers a previous daemon left: adopt those of the active release, remove the rest.
    let mut adoptable = BTreeMap::new();
    let mut reconcile_notes = Vec::new();
    if let Some(d) = &docker {
        for found in d.find().await? {
            let wanted = config.services.get(&found.service).is_some_and(|svc| {
                let version = active.get(&svc.name).unwrap_or(&svc.version);
                svc.runtime == tcf_config::RuntimeKind::Docker
                    && found.running
                    && found.version == *version
                    && found.host_port.is_some()
                    && (1..=svc.instances)
                        .any(|n| found.instance == format!("{}-{}-{n}", svc.name, found.colour))
            });
            if wanted {
                adoptable.insert(found.instance.clone(), found);
            } else {
                d.remove(&found.id).await?;
                reconcile_notes.push((
                    found.service.clone(),
                    found.instance.clone(),
                    format!(
                        "removed container {} ({} {}): not part of the active release",
                        &found.id[..12.min(found.id.len())],
                        found.service,
                        found.version
                    ),
                ));
            }
        }
    }
    let p = assemble(config, store, runtime, docker.clone(), adoptable, &active);

    p.event(
        "daemon.started",
        None,
        None,
        format!(
            "daemon started (pid {}, config {}){}",
            std::process::id(),
            p.config.path.display(),
            if unclean {
                "; the previous daemon did not stop cleanly"
            } else {
                ""
            }
        ),
    );
    recover(&p).await;
    if !store_existed {
        recover_without_store(&p).await;
    }
    for (service, instance, note) in reconcile_notes {
        p.event("recovery.removed", Some(&service), Some(&instance), note);
    }
    match p.store.interrupt_unfinished_releases() {
        Ok(ids) => {
            for id in ids {
                p.event(
                    "release.interrupted",
                    None,
                    None,
                    format!("release {id} was interrupted (the daemon stopped mid-release); serving the last active release"),
                );
            }
        }
        Err(e) => tracing::error!("cannot check for interrupted releases: {e}"),
    }
    // Only a daemon runs releases, and no release runs yet: a deploy lock here is left over.
    if let Ok(Some(lease)) = p.store.lock(deploy::DEPLOY_LOCK) {
        let _ = p.store.release_lock(deploy::DEPLOY_LOCK, None);
        p.event(
            "lock.released",
            None,
            None,
            format!(
                "released the deploy lock of {} left by a daemon that stopped mid-release",
                lease.owner
            ),
        );
    }
    record_initial_release(&p, &active);

    // Proxies first: they answer 503 until a service has a healthy instance.
    let proxies = listeners
        .into_iter()
        .map(|(name, l)| (p.services[&name].proxy.clone(), l))
        .collect();
    let proxy_task = tokio::spawn(tcf_proxy::serve_workers(
        proxies,
        p.shutdown.subscribe(),
        SHUTDOWN_DRAIN,
    ));
    for dep in p.dependencies.values() {
        tokio::spawn(supervisor::watch_dependency(p.clone(), dep.clone()));
    }
    for svc in p.services.values() {
        tokio::spawn(supervisor::start_service(p.clone(), svc.clone()));
    }
    tokio::spawn(metrics::run_sampler(p.clone()));
    backup::spawn_scheduler(p.clone());
    tokio::spawn(store_watch::run(p.clone()));
    let monitor = monitor::start(p.clone(), metrics_listener);
    let _ = p.monitor.set(monitor.clone());

    let mut api_shutdown = p.shutdown.subscribe();
    if let Some(listener) = dashboard_listener {
        if let Err(e) = dashboard::serve(monitor.clone(), listener) {
            p.event(
                "dashboard.error",
                None,
                None,
                format!("the dashboard is not served: {e}"),
            );
        }
    }
    let router = api::router(p.clone())
        .merge(api_monitor::router(monitor.clone()))
        .merge(dashboard::router(monitor));
    let api_server = axum::serve(
        api_listener,
        router.into_make_service_with_connect_info::<caller::Peer>(),
    )
    .with_graceful_shutdown(async move {
        let _ = api_shutdown.wait_for(|s| *s).await;
    });
    let api = tokio::spawn(async move {
        if let Err(e) = api_server.await {
            tracing::error!("the API server failed: {e}");
        }
    });

    let mut shutdown = p.shutdown.subscribe();
    tokio::select! {
        _ = stop => {
            p.event("daemon.stop_requested", None, None, "stop requested by signal");
            p.shutdown.send_replace(true);
        }
        _ = shutdown.wait_for(|s| *s) => {}
    }
    p.event(
        "daemon.stopping",
        None,
        None,
        "stopping: draining connections, then stopping instances",
    );
    match proxy_task.await {
        Ok(Err(e)) => tracing::error!("the proxy workers failed: {e}"),
        Err(e) => tracing::error!("the proxy workers failed: {e}"),
        Ok(Ok(())) => {}
    }
    supervisor::stop_all(&p).await;
    if let Some(d) = &p.docker {
        // Containers are removed as they stop; leftovers the daemon did not adopt go too.
        for found in d.find().await.unwrap_or_default() {
            let _ = d.remove(&found.id).await;
        }
        if let Err(e) = d.remove_networks().await {
            tracing::warn!("cannot remove the platform's Docker networks: {e}");
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), api).await;
    let _ = std::fs::remove_file(&socket);
    p.event(
        "daemon.stopped",
        None,
        None,
        format!("daemon stopped after {}s", p.started.elapsed().as_secs()),
    );
    let flushing = p.clone();
    let _ = tokio::task::spawn_blocking(move || flushing.event_log.flush()).await;
    Ok(())
}

/// The live state for `config`: each service with its proxy and the colour it starts in (the
/// colour of its adopted containers, else blue), each dependency, and the event writer.
fn assemble(
    config: Config,
    store: Arc<Store>,
    runtime: Arc<dyn Runtime>,
    docker: Option<Arc<tcf_docker::DockerRuntime>>,
    adoptable: BTreeMap<String, tcf_docker::Found>,
    active: &BTreeMap<String, String>,
) -> Arc<Platform> {
    let mut services = BTreeMap::new();
    for (name, cfg) in &config.services {
        let proxy = ServiceProxy::with_access_log(
            name.clone(),
            Settings {
                max_request_body: cfg.max_request_body,
                upstream_timeout: cfg.upstream_timeout,
                connect_timeout: cfg.connect_timeout,
                limits: proxy_limits(&cfg.proxy),
                tunnel_idle_timeout: cfg.proxy.tunnel_idle_timeout,
            },
            access_log(&config.platform.state_dir, cfg),
        );
        let version = active
            .get(name)
            .cloned()
            .unwrap_or_else(|| cfg.version.clone());
        let svc = Arc::new(ServiceRuntime::new(
            cfg.clone(),
            proxy,
            sticky(&config.deploy.sticky),
        ));
        // Adopted containers keep the colour they run in.
        let colour = adoptable
            .values()
            .find(|f: &&tcf_docker::Found| f.service == *name)
            .map_or("blue".to_string(), |f| f.colour.clone());
        let colour = if colour == "green" { "green" } else { "blue" };
        svc.add_colour(colour, &version, Arc::new(cfg.clone()));
        svc.set_traffic(vec![(colour.to_string(), 100)]);
        services.insert(name.clone(), svc);
    }
    let dependencies = config
        .dependencies
        .iter()
        .map(|(name, d)| {
            (
                name.clone(),
                Arc::new(DependencyRuntime {
                    config: d.clone(),
                    info: Mutex::new(DependencyInfo::default()),
                    healthy: watch::channel(false).0,
                }),
            )
        })
        .collect();
    let events = broadcast::channel(1024).0;
    Arc::new(Platform {
        config,
        event_log: platform::EventLog::start(store.clone(), events.clone()),
        store,
        runtime,
        docker: docker.clone(),
        adoptable: Mutex::new(adoptable),
        services,
        dependencies,
        events,
        shutdown: watch::channel(false).0,
        started: Instant::now(),
        deploying: Mutex::new(None),
        warnings: Mutex::new(Vec::new()),
        release_slot: tokio::sync::Mutex::new(()),
        abort: Mutex::new(None),
        monitor: std::sync::OnceLock::new(),
    })
}

/// Proxy worker threads: TCF_WORKER_THREADS, else one per core.
fn proxy_workers() -> usize {
    std::env::var("TCF_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .min(16)
}

fn sticky(by: &tcf_config::StickyBy) -> tcf_proxy::Sticky {
    match by {
        tcf_config::StickyBy::Cookie => tcf_proxy::Sticky::Cookie,
        tcf_config::StickyBy::ClientIp => tcf_proxy::Sticky::ClientIp,
        tcf_config::StickyBy::Header(h) => hyper::header::HeaderName::from_bytes(h.as_bytes())
            .map(tcf_proxy::Sticky::Header)
            .unwrap_or(tcf_proxy::Sticky::Cookie),
    }
}

/// Stop what a previous daemon (killed, crashed) left running, as recorded in the store. Each
/// record is cleaned up by the runtime that started it: processes by their group here;
/// containers were already adopted or removed by label, and their init is a process-group
/// leader too, so the process clean-up must never see them.
async fn recover(p: &Arc<Platform>) {
    let records = match p.store.instances() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot read recorded instances: {e}");
            return;
        }
    };
    for rec in records {
        if rec.runtime == p.runtime.name() {
            if let (Some(pid), Some(pgid)) = (rec.pid, rec.pgid) {
                let left = Identity {
                    pid: pid as u32,
                    pgid: pgid as u32,
                    start_ticks: rec.proc_start_ticks.map(|t| t as u64),
                };
                if p.runtime.clean_up(left, LEFTOVER_GRACE).await {
                    p.event(
                        "recovery.cleaned_up",
                        Some(&rec.service),
                        Some(&rec.id),
                        format!("stopped process group {pgid} left running by a previous daemon"),
                    );
                }
            }
        }
        let _ = p.store.remove_instance(&rec.id);
    }
}

/// No store, yet instances of this platform run (found by the state directory in their
/// environment): the store was lost, this is no first start. They are stopped like any
/// leftover, and said so loudly, instead of left running unmanaged beside new ones.
async fn recover_without_store(p: &Arc<Platform>) {
    let dir = p.config.platform.state_dir.display().to_string();
    let found = tcf_runtime::procfs::with_env(supervisor::STATE_DIR_ENV, &dir);
    let leaders: Vec<u32> = found
        .into_iter()
        .filter(|pid| tcf_runtime::procfs::process_group(*pid) == Some(*pid))
        .collect();
    if leaders.is_empty() {
        return;
    }
    let warning = format!(
        "the state store {} was missing at start while {} instance(s) of this platform ran: the history is lost; they were stopped and start again from the config",
        p.store.path().display(),
        leaders.len()
    );
    tracing::error!("{warning}");
    p.event("recovery.store_missing", None, None, warning.clone());
    platform::lock(&p.warnings).push(warning);
    for pid in leaders {
        let left = Identity {
            pid,
            pgid: pid,
            start_ticks: tcf_runtime::procfs::start_ticks(pid),
        };
        if p.runtime.clean_up(left, LEFTOVER_GRACE).await {
            p.event(
                "recovery.cleaned_up",
                None,
                None,
                format!("stopped process group {pid} left running without a store"),
            );
        }
    }
}

/// Services with no active release yet get one recording the version `up` starts.
fn record_initial_release(p: &Platform, active: &BTreeMap<String, String>) {
    let mut initial = BTreeMap::new();
    for (name, svc) in &p.services {
        let running = svc.serving_version();
        match active.get(name) {
            None => {
                initial.insert(name.clone(), running);
            }
            Some(v) if *v != svc.config.version => p.event(
                "service.version",
                Some(name),
                None,
                format!(
                    "running the active release's {v}; the config's version {} applies only to a first start (deploy it with `tcf-platform prod deploy {}`)",
                    svc.config.version, svc.config.version
                ),
            ),
            Some(_) => {}
        }
    }
    if initial.is_empty() {
        return;
    }
    match p.store.create_release_with_specs(
        "initial",
        "active",
        "daemon",
        Some("first start"),
        &initial,
        &initial
            .keys()
            .filter_map(|name| {
                let spec = p.services.get(name)?.active_colour()?.current_spec();
                Some((name.clone(), serde_json::to_string(&*spec).ok()?))
            })
            .collect(),
    ) {
        Ok(id) => p.event(
            "release.recorded",
            None,
            None,
            format!(
                "release {id}: first start of {}",
                initial
                    .iter()
                    .map(|(s, v)| format!("{s} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Err(e) => tracing::error!("cannot record the initial release: {e}"),
    }
}

/// A service's `[proxy]` limits as the proxy takes them.
/// The service's access log when its config asks for one: `state_dir/logs/access-NAME.log`,
/// capped at the service's `log_max_size` like its instances' logs.
fn access_log(
    state_dir: &std::path::Path,
    cfg: &tcf_config::Service,
) -> Option<tcf_proxy::AccessLog> {
    if !cfg.proxy.access_log {
        return None;
    }
    let path = access_log_path(state_dir, &cfg.name);
    let opened =
        tcf_runtime::logfile::CappedLog::open(&path, cfg.log_max_size).and_then(|mut file| {
            tcf_proxy::AccessLog::start(
                &cfg.name,
                tcf_proxy::access_log::DEFAULT_QUEUE,
                tcf_proxy::AccessLogOptions {
                    with_query: cfg.proxy.access_log_query,
                },
                Box::new(move |bytes: &[u8]| file.write(bytes)),
            )
        });
    match opened {
        Ok(log) => Some(log),
        Err(e) => {
            tracing::error!(
                service = %cfg.name,
                "cannot open the access log {}: {e}; the service runs without it (check the state directory's permissions and free space)",
                path.display()
            );
            None
        }
    }
}

/// Where a service's access log is written.
pub fn access_log_path(state_dir: &std::path::Path, service: &str) -> PathBuf {
    state_dir.join("logs").join(format!("access-{service}.log"))
}

fn proxy_limits(cfg: &tcf_config::ProxyLimits) -> tcf_proxy::RequestLimits {
    tcf_proxy::RequestLimits {
        max_header_bytes: cfg.max_header_size as usize,
        max_headers: cfg.max_headers as usize,
        max_request_line: cfg.max_request_line as usize,
        underscores: match cfg.headers_with_underscores {
            tcf_config::UnderscoreHeaders::Forward => tcf_proxy::UnderscoreHeaders::Forward,
            tcf_config::UnderscoreHeaders::Drop => tcf_proxy::UnderscoreHeaders::Drop,
            tcf_config::UnderscoreHeaders::Refuse => tcf_proxy::UnderscoreHeaders::Refuse,
        },
    }
}
