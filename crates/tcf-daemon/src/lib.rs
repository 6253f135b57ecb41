//! The daemon behind `tcf-platform up`.
//!
//! Startup: take the state directory's lock, open the store, clean up whatever a previous daemon
//! left running, bind every public address and the API socket (so a conflict fails before
//! anything starts), then start services in dependency order. Shutdown: stop accepting, let
//! in-flight requests finish, stop instances in reverse dependency order.

pub mod access;
mod api;
mod api_backup;
mod api_monitor;
pub mod audit;
pub mod backup;
mod caller;
mod dashboard;
mod deploy;
mod handover;
mod health;
mod logs;
mod maintenance;
mod metrics;
mod monitor;
mod platform;
mod store_watch;
mod supervisor;
#[cfg(test)]
mod testkit;
mod tls;
mod validate;

pub use api::{build_status, wire_event, wire_releases};
pub use handover::HANDOVER_ENV;
pub use health::dependency as probe_dependency;

use nix::fcntl::{Flock, FlockArg};
use platform::{DependencyInfo, DependencyRuntime, LeftProcess, Platform, ServiceRuntime};
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

/// The hidden first argument that runs `tcf-platform` as an instance's log shim
/// (`tcf-platform __log-shim LOG_PATH MAX_SIZE`, reading the instance's output on stdin): the
/// binary's `main` hands it to [`run_log_shim`] before parsing a command line.
pub const LOG_SHIM_ARG: &str = "__log-shim";

/// The log shim's whole life: copy stdin into the capped, stamped log named by `args`
/// (`LOG_PATH MAX_SIZE`) until every writer closed it. Blocking; no async runtime.
pub fn run_log_shim(args: &[std::ffi::OsString]) -> std::io::Result<()> {
    let [path, cap] = args else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("usage: tcf-platform {LOG_SHIM_ARG} LOG_PATH MAX_SIZE"),
        ));
    };
    let cap = cap
        .to_str()
        .and_then(|c| c.parse::<u64>().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the log's maximum size must be a number of bytes",
            )
        })?;
    tcf_runtime::logfile::copy_to_log(std::io::stdin().lock(), std::path::Path::new(path), cap)
}

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
    #[error(transparent)]
    Swarm(#[from] tcf_docker::swarm::SwarmError),
    #[error("cannot take over from the running daemon: {0}")]
    Handover(String),
    #[error("cannot serve the remote API on {addr}: {detail}\nhint: another program may use that address, or fix [daemon] listen, tls_cert and tls_key")]
    RemoteApi {
        addr: std::net::SocketAddr,
        detail: String,
    },
    #[error("service {service}: TLS: {message}\nhint: see docs/tls.md; `tcf-platform config validate` checks the files")]
    Tls { service: String, message: String },
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

/// The state directory, created 0700 (it holds the store, the secrets key, instance logs).
pub(crate) fn ensure_private_dir(state_dir: &std::path::Path) -> Result<(), DaemonError> {
    std::fs::create_dir_all(state_dir.join("logs")).map_err(state_dir_err(state_dir))?;
    let _ = std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700));
    Ok(())
}

/// Hold the state directory's lock for the daemon's lifetime; the pid inside names the holder.
pub(crate) fn take_lock(state_dir: &std::path::Path) -> Result<Flock<std::fs::File>, DaemonError> {
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

/// Run the platform until `stop` resolves or the API is asked to stop. Started by a daemon
/// that hands over (`daemon restart`/`upgrade`, [`HANDOVER_ENV`] set), it takes that one's
/// listeners, store and instances instead of starting afresh.
pub async fn run(
    config: Config,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let inherited = match std::env::var_os(HANDOVER_ENV) {
        Some(socket) => {
            let socket = PathBuf::from(socket);
            let received = tokio::task::spawn_blocking(move || handover::receive(&socket))
                .await
                .map_err(|e| DaemonError::Handover(e.to_string()))??;
            Some(received)
        }
        None => None,
    };
    let reporter = inherited.as_ref().and_then(|i| i.reporter());
    let result = run_daemon(config, stop, inherited).await;
    if let Err(e) = &result {
        // The old daemon keeps serving and tells its caller why.
        handover::report_failure(reporter, &e.to_string());
    }
    result
}

async fn run_daemon(
    config: Config,
    stop: impl Future<Output = ()> + Send + 'static,
    mut inherited: Option<handover::Inherited>,
) -> Result<(), DaemonError> {
    let state_dir = config.platform.state_dir.clone();
    let loose_modes = access::fix_loose_modes(&state_dir);
    ensure_private_dir(&state_dir)?;
    let daemon_lock = take_lock(&state_dir)?;
    let store_existed = state_dir.join("state.db").exists();
    let store = Arc::new(Store::open(&state_dir)?);
    let workdir = config
        .path
        .parent()
        .map(|d| d.to_path_buf())
        .unwrap_or_else(|| PathBuf::from("."));
    // Instances' output goes through a shim process (this binary again, through /proc/self/exe
    // so it works even when the file was replaced by an upgrade): they outlive the daemon.
    let runtime: Arc<dyn Runtime> =
        Arc::new(ProcessRuntime::new(workdir).with_log_shim("/proc/self/exe", &[LOG_SHIM_ARG]));
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
    let swarm_services: Vec<String> = config
        .services
        .values()
        .filter(|s| s.runtime == tcf_config::RuntimeKind::Swarm)
        .map(|s| s.name.clone())
        .collect();
    let swarm = if swarm_services.is_empty() {
        None
    } else {
        let s = tcf_docker::swarm::SwarmRuntime::connect(
            &config.platform.name,
            config.swarm.endpoint.as_deref(),
            &swarm_services,
        )
        .await?
        .with_node_engines(&config.swarm.node_engines)?;
        let networks: std::collections::BTreeSet<String> = config
            .services
            .values()
            .filter(|svc| svc.runtime == tcf_config::RuntimeKind::Swarm)
            .filter_map(|svc| svc.docker.as_ref().map(|d| d.network.clone()))
            .collect();
        for n in networks {
            s.ensure_network(&n).await?;
        }
        Some(Arc::new(s))
    };

    // Bind everything before starting anything: a taken address fails the whole start. Each
    // proxy worker thread gets its own listener per service.
    // A daemon that takes over keeps the old one's sockets (same listeners, nothing refused)
    // and its number of workers; an address the config moved is bound afresh.
    let mut handed = inherited
        .as_mut()
        .map(|i| std::mem::take(&mut i.services))
        .unwrap_or_default();
    let workers = handed
        .values()
        .map(Vec::len)
        .find(|n| *n > 0)
        .unwrap_or_else(proxy_workers);
    let mut listeners = Vec::new();
    for svc in config.services.values() {
        let kept = handed.remove(&svc.name).filter(|l| {
            l.len() == workers
                && l.iter()
                    .all(|l| l.local_addr().is_ok_and(|a| a == svc.listen))
        });
        let l = match kept {
            Some(l) => l,
            None => tcf_proxy::bind_for_workers(svc.listen, workers).map_err(|source| {
                DaemonError::Bind {
                    service: svc.name.clone(),
                    addr: svc.listen,
                    source,
                }
            })?,
        };
        listeners.push((svc.name.clone(), l));
    }
    // Addresses that are not handed over: bound beside the old daemon's while it drains.
    let taking_over = inherited.is_some();
    let tls = tls::prepare(&config, taking_over)?;
    let dashboard_listener = dashboard::bind(&config, taking_over).await?;
    // A service the config no longer has: its address closes here (the old daemon drained it).
    drop(handed);
    let metrics_handed = inherited
        .as_mut()
        .and_then(|i| i.metrics.take())
        .filter(|l| {
            config
                .monitor
                .metrics_listen
                .is_some_and(|want| l.local_addr().is_ok_and(|a| a == want))
        });
    let metrics_listener = match metrics_handed {
        Some(l) => Some(l),
        None => match monitor::bind_metrics(&config).await? {
            Some(l) => Some(l.into_std().map_err(state_dir_err(&state_dir))?),
            None => None,
        },
    };
    let socket = config.daemon.socket.clone();
    let unclean = inherited.is_none() && socket.exists();
    let api_std = match inherited.as_ref() {
        Some(i) => i.api.try_clone().map_err(|source| DaemonError::Socket {
            path: socket.clone(),
            source,
        })?,
        None => bind_api_socket(&socket)?,
    };
    let socket_err = |source| DaemonError::Socket {
        path: socket.clone(),
        source,
    };
    let kit = Arc::new(handover::Kit::new(
        listeners
            .iter()
            .map(|(n, l)| {
                Ok((
                    n.clone(),
                    l.iter().map(|l| l.try_clone()).collect::<Result<_, _>>()?,
                ))
            })
            .collect::<std::io::Result<_>>()
            .map_err(state_dir_err(&state_dir))?,
        api_std.try_clone().map_err(socket_err)?,
        metrics_listener
            .as_ref()
            .map(|l| l.try_clone())
            .transpose()
            .map_err(state_dir_err(&state_dir))?,
        daemon_lock,
    ));
    api_std.set_nonblocking(true).map_err(socket_err)?;
    let sighup = kit.clone();
    let api_listener = tokio::net::UnixListener::from_std(api_std).map_err(socket_err)?;
    let metrics_listener = match metrics_listener {
        Some(l) => {
            l.set_nonblocking(true).map_err(state_dir_err(&state_dir))?;
            Some(tokio::net::TcpListener::from_std(l).map_err(state_dir_err(&state_dir))?)
        }
        None => None,
    };
    let remote_api = access::bind_remote(&config, taking_over).await?;

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
    // Swarm services likewise: those of the active release are adopted, the rest removed.
    let mut adoptable_swarm = BTreeMap::new();
    if let Some(s) = &swarm {
        for found in s.find().await? {
            let wanted = config.services.get(&found.service).is_some_and(|svc| {
                let version = active.get(&svc.name).unwrap_or(&svc.version);
                svc.runtime == tcf_config::RuntimeKind::Swarm
                    && found.version == *version
                    && (1..=svc.instances)
                        .any(|n| found.instance == format!("{}-{}-{n}", svc.name, found.colour))
            });
            if wanted {
                adoptable_swarm.insert(found.instance.clone(), found);
            } else {
                s.remove(&found.name).await?;
                reconcile_notes.push((
                    found.service.clone(),
                    found.instance.clone(),
                    format!(
                        "removed Swarm service {} ({} {}): not part of the active release",
                        found.name, found.service, found.version
                    ),
                ));
            }
        }
        // Secrets of services that are gone (a daemon killed between the two removals).
        s.remove_secrets().await?;
    }
    // Taking over, the colours run what runs (the specs their release recorded); what the
    // config file changed since is then applied as releases (`apply_config_changes`).
    let running_specs = if inherited.is_some() {
        recorded_specs(&config, &store, &active)
    } else {
        BTreeMap::new()
    };
    let left_processes = left_processes(&config, &store, runtime.as_ref(), &active, &running_specs);
    let tls::Prepared {
        services: tls_services,
        plain: plain_listeners,
    } = tls;
    let p = assemble(
        config,
        store,
        runtime,
        Engines {
            docker: docker.clone(),
            swarm: swarm.clone(),
        },
        Adoptable {
            containers: adoptable,
            swarm: adoptable_swarm,
            processes: left_processes,
            running_specs: running_specs.clone(),
        },
        &active,
        tls_services,
    );

    p.event(
        "daemon.started",
        None,
        None,
        format!(
            "daemon started (pid {}, config {}){}",
            std::process::id(),
            p.config.path.display(),
            match &inherited {
                Some(i) => format!("; taking over from pid {} (restart or upgrade)", i.old_pid),
                None if unclean => "; the previous daemon did not stop cleanly".to_string(),
                None => String::new(),
            }
        ),
    );
    recover(&p, inherited.as_ref().map(|i| i.old_pid)).await;
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

    // Proxies first: they answer 503 until a service has a healthy instance. A daemon that
    // takes over accepts only once the services the old one served are healthy here too
    // (the old one accepts meanwhile).
    let proxies: Vec<_> = listeners
        .into_iter()
        .map(|(name, l)| (p.services[&name].proxy.clone(), l))
        .collect();
    let start_proxies = |proxies| {
        tokio::spawn(tcf_proxy::serve_workers(
            proxies,
            kit.data_plane.subscribe(),
            SHUTDOWN_DRAIN,
        ))
    };
    let (mut proxy_task, mut waiting_proxies) = match inherited {
        Some(_) => (None, Some(proxies)),
        None => (Some(start_proxies(proxies)), None),
    };
    for dep in p.dependencies.values() {
        tokio::spawn(supervisor::watch_dependency(p.clone(), dep.clone()));
    }
    for svc in p.services.values() {
        tokio::spawn(supervisor::start_service(p.clone(), svc.clone()));
    }
    if let (Some(i), Some(proxies)) = (inherited.as_mut(), waiting_proxies.take()) {
        handover::wait_for_adopted(&p, &i.healthy).await;
        proxy_task = Some(start_proxies(proxies));
        // systemd follows this process from now on; the old one's exit is expected.
        handover::sd_notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
        if let Err(e) = i.ready() {
            tracing::warn!("cannot tell the old daemon this one is ready: {e}");
        }
        if !running_specs.is_empty() {
            tokio::spawn(apply_config_changes(p.clone(), running_specs.clone()));
        }
        p.event(
            "daemon.took_over",
            None,
            None,
            format!(
                "took over from pid {}: serving on the same listeners with the same instances",
                i.old_pid
            ),
        );
    }
    tls::start(&p, plain_listeners);
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
    if let Err(e) = handover::reload_on_sighup(p.clone(), sighup) {
        tracing::warn!("cannot handle SIGHUP (reload with `tcf-platform reload`): {e}");
    }
    access::report_loose_modes(&p, loose_modes);
    let router = api::router(p.clone())
        .merge(api_monitor::router(monitor.clone()))
        .merge(dashboard::router(monitor))
        .merge(handover::router(p.clone(), kit.clone()))
        .merge(access::routes(p.clone()))
        .layer(axum::middleware::from_fn_with_state(
            p.clone(),
            access::protect,
        ));
    if let Some(remote) = remote_api {
        access::serve_remote(p.clone(), remote, router.clone());
    }
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
    if inherited.is_none() {
        handover::sd_notify("READY=1");
    }

    let mut shutdown = p.shutdown.subscribe();
    tokio::select! {
        _ = stop => {
            p.event("daemon.stop_requested", None, None, "stop requested by signal");
            p.shutdown.send_replace(true);
        }
        _ = shutdown.wait_for(|s| *s) => {}
    }
    if kit.settle().await {
        // Handed over: the new daemon owns the store, the instances and the listeners. Finish
        // what is in flight here, then go without stopping anything.
        tracing::info!("handed over; draining in-flight requests, then exiting");
        if let Some(t) = proxy_task {
            let _ = t.await;
        }
        handover::wait_for_tunnels(&p, SHUTDOWN_DRAIN).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), api).await;
        return Ok(());
    }
    kit.data_plane.send_replace(true);
    p.event(
        "daemon.stopping",
        None,
        None,
        "stopping: draining connections, then stopping instances",
    );
    if let Some(t) = proxy_task {
        match t.await {
            Ok(Err(e)) => tracing::error!("the proxy workers failed: {e}"),
            Err(e) => tracing::error!("the proxy workers failed: {e}"),
            Ok(Ok(())) => {}
        }
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
    if let Some(s) = &p.swarm {
        // Services are removed as their instances stop; leftovers go too, then the secrets
        // and the overlay networks (once no task is attached any more).
        for found in s.find().await.unwrap_or_default() {
            let _ = s.remove(&found.name).await;
        }
        if let Err(e) = s.remove_secrets().await {
            tracing::warn!("cannot remove the platform's Swarm secrets: {e}");
        }
        if let Err(e) = s.remove_networks().await {
            tracing::warn!("cannot remove the platform's Swarm networks: {e}");
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

/// Bind the API socket (we hold the state directory's lock, so a socket file here is left from
/// a daemon that did not stop cleanly) and make it the owner's alone.
fn bind_api_socket(
    socket: &std::path::Path,
) -> Result<std::os::unix::net::UnixListener, DaemonError> {
    let socket_err = |source| DaemonError::Socket {
        path: socket.to_path_buf(),
        source,
    };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(state_dir_err(dir))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket).map_err(socket_err)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(socket_err)?;
    Ok(listener)
}

/// The container engines the daemon connected to, for the services that need them.
#[derive(Default)]
struct Engines {
    docker: Option<Arc<tcf_docker::DockerRuntime>>,
    swarm: Option<Arc<tcf_docker::swarm::SwarmRuntime>>,
}

/// What a starting daemon found running that it takes over, and the specs it runs with.
#[derive(Default)]
struct Adoptable {
    /// Containers of the active release, by instance id.
    containers: BTreeMap<String, tcf_docker::Found>,
    /// Swarm services of the active release, by instance id.
    swarm: BTreeMap<String, tcf_docker::swarm::FoundService>,
    /// Process instances of the active release, by instance id.
    processes: BTreeMap<String, LeftProcess>,
    /// Taking over: each service's spec as its release recorded it.
    running_specs: BTreeMap<String, tcf_config::Service>,
}

/// The live state for `config`: each service with its proxy and the colour it starts in (the
/// colour of its adopted containers, else blue), each dependency, and the event writer.
fn assemble(
    config: Config,
    store: Arc<Store>,
    runtime: Arc<dyn Runtime>,
    engines: Engines,
    adoptable: Adoptable,
    active: &BTreeMap<String, String>,
    tls: BTreeMap<String, Arc<tls::ServiceTls>>,
) -> Arc<Platform> {
    let Engines { docker, swarm } = engines;
    let Adoptable {
        containers: adoptable,
        swarm: adoptable_swarm,
        processes: left_processes,
        running_specs,
    } = adoptable;
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
                tls: tls.get(name).map(|t| t.server_config.clone()),
                hsts: tls.get(name).and_then(|t| t.hsts.clone()),
                ..Settings::default()
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
            .map(|f| f.colour.clone())
            .or_else(|| {
                adoptable_swarm
                    .values()
                    .find(|f| f.service == *name)
                    .map(|f| f.colour.clone())
            })
            .or_else(|| {
                left_processes
                    .values()
                    .find(|l| l.service == *name)
                    .map(|l| l.colour.clone())
            })
            .unwrap_or_else(|| "blue".to_string());
        let colour = if colour == "green" { "green" } else { "blue" };
        let spec = running_specs.get(name).unwrap_or(cfg);
        svc.add_colour(colour, &version, Arc::new(spec.clone()));
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
    let platform = Arc::new(Platform {
        config,
        event_log: platform::EventLog::start(store.clone(), events.clone()),
        store,
        runtime,
        docker: docker.clone(),
        swarm,
        adoptable: Mutex::new(adoptable),
        adoptable_swarm: Mutex::new(adoptable_swarm),
        adoptable_processes: Mutex::new(left_processes),
        services,
        dependencies,
        events,
        shutdown: watch::channel(false).0,
        started: Instant::now(),
        deploying: Mutex::new(None),
        warnings: Mutex::new(Vec::new()),
        scheduled_backup_failures: std::sync::atomic::AtomicU32::new(0),
        release_slot: tokio::sync::Mutex::new(()),
        abort: Mutex::new(None),
        monitor: std::sync::OnceLock::new(),
        access: Default::default(),
        tls,
    });
    // A service's route changes report panic transitions as its events; weak, so the
    // services do not keep their platform alive.
    for (name, svc) in &platform.services {
        let (weak, name) = (Arc::downgrade(&platform), name.clone());
        let _ = svc.notify.set(Box::new(move |kind, message| {
            if let Some(p) = weak.upgrade() {
                p.event(kind, Some(&name), None, message);
            }
        }));
    }
    platform
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
async fn recover(p: &Arc<Platform>, old_daemon: Option<u32>) {
    let records = match p.store.instances() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot read recorded instances: {e}");
            return;
        }
    };
    // Only what a service's start will ask for is kept: its active colour, within its count.
    platform::lock(&p.adoptable_processes).retain(|id, l| {
        p.services
            .get(&l.service)
            .and_then(|s| s.active_colour())
            .is_some_and(|c| {
                c.name == l.colour
                    && (1..=c.count()).any(|n| *id == format!("{}-{}-{n}", l.service, c.name))
            })
    });
    for rec in records {
        // Taken over by its service's start (the record stays: it still runs).
        if platform::lock(&p.adoptable_processes).contains_key(&rec.id) {
            continue;
        }
        if rec.runtime == p.runtime.name() {
            if let (Some(pid), Some(pgid)) = (rec.pid, rec.pgid) {
                let left = Identity {
                    pid: pid as u32,
                    pgid: pgid as u32,
                    start_ticks: rec.proc_start_ticks.map(|t| t as u64),
                };
                if let Some(old) = old_daemon {
                    // Taking over: the old daemon may still route requests to it (a service
                    // the config removed, an instance scaled away). Stop it once that one
                    // has drained and exited.
                    let p = p.clone();
                    tokio::spawn(async move {
                        while tcf_runtime::procfs::start_ticks(old).is_some()
                            && !tcf_runtime::procfs::is_zombie(old)
                        {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        if p.runtime.clean_up(left, LEFTOVER_GRACE).await {
                            p.event(
                                "instance.stopped",
                                Some(&rec.service),
                                Some(&rec.id),
                                "stopped: no longer part of the config (the previous daemon drained it first)",
                            );
                        }
                        let _ = p.with_store(move |s| s.remove_instance(&rec.id)).await;
                    });
                    continue;
                }
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

/// Process instances a previous daemon left running that the active release still wants: of
/// a configured process service, at its active version, numbered within its instance count,
/// alive with the recorded start time. One colour per service (the one with most of them);
/// whatever is not taken here is cleaned up by [`recover`].
fn left_processes(
    config: &Config,
    store: &Store,
    runtime: &dyn Runtime,
    active: &BTreeMap<String, String>,
    running_specs: &BTreeMap<String, tcf_config::Service>,
) -> BTreeMap<String, LeftProcess> {
    let records = match store.instances() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot read recorded instances: {e}");
            return BTreeMap::new();
        }
    };
    let mut found: BTreeMap<String, LeftProcess> = BTreeMap::new();
    for rec in records {
        let Some(svc) = config.services.get(&rec.service) else {
            continue;
        };
        let version = active.get(&svc.name).unwrap_or(&svc.version);
        if rec.runtime != runtime.name()
            || svc.runtime != tcf_config::RuntimeKind::Process
            || rec.version != *version
        {
            continue;
        }
        let Some((colour, n)) = rec
            .id
            .strip_prefix(&format!("{}-", svc.name))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(c, n)| Some((c.to_string(), n.parse::<u32>().ok()?)))
        else {
            continue;
        };
        let count = running_specs
            .get(&svc.name)
            .map_or(svc.instances, |s| s.instances);
        if !matches!(colour.as_str(), "blue" | "green") || n == 0 || n > count {
            continue;
        }
        let (Some(pid), Some(pgid)) = (rec.pid, rec.pgid) else {
            continue;
        };
        let identity = Identity {
            pid: pid as u32,
            pgid: pgid as u32,
            start_ticks: rec.proc_start_ticks.map(|t| t as u64),
        };
        if let Some(running) = runtime.adopt(identity) {
            found.insert(
                rec.id.clone(),
                LeftProcess {
                    service: rec.service.clone(),
                    version: rec.version.clone(),
                    colour,
                    port: rec.port,
                    running,
                },
            );
        }
    }
    // A service runs one colour at startup: keep the colour with most live instances.
    let mut per_colour: BTreeMap<(String, String), usize> = BTreeMap::new();
    for l in found.values() {
        *per_colour
            .entry((l.service.clone(), l.colour.clone()))
            .or_default() += 1;
    }
    found.retain(|_, l| {
        let mine = per_colour[&(l.service.clone(), l.colour.clone())];
        per_colour
            .iter()
            .filter(|((s, c), _)| *s == l.service && *c != l.colour)
            .all(|(_, other)| mine > *other || (mine == *other && l.colour == "blue"))
    });
    found
}

/// The spec each configured service's active release recorded (what its instances run).
fn recorded_specs(
    config: &Config,
    store: &Store,
    active: &BTreeMap<String, String>,
) -> BTreeMap<String, tcf_config::Service> {
    config
        .services
        .values()
        .filter_map(|svc| {
            let version = active.get(&svc.name)?;
            let text = store.spec_of(&svc.name, version).ok()??;
            let spec: tcf_config::Service = serde_json::from_str(&text).ok()?;
            // What a release cannot change stays as the config says.
            (spec.listen == svc.listen && spec.runtime == svc.runtime)
                .then(|| (svc.name.clone(), spec))
        })
        .collect()
}

/// After a takeover: apply what the config file changed since the services' releases, each
/// through the release control loop like a deploy. A new instance count is a scale; any other
/// change of a service's settings is a blue-green switch to instances with the new ones.
async fn apply_config_changes(
    p: Arc<Platform>,
    running_specs: BTreeMap<String, tcf_config::Service>,
) {
    for name in p.config.start_order() {
        let (Some(svc), Some(was)) = (p.services.get(&name), running_specs.get(&name)) else {
            continue;
        };
        let (Ok(was), Ok(now)) = (serde_json::to_value(was), serde_json::to_value(&svc.config))
        else {
            continue;
        };
        if was == now {
            continue;
        }
        let Some(active) = svc.active_colour() else {
            continue;
        };
        let mut was_with_new_count = was.clone();
        was_with_new_count["instances"] = now["instances"].clone();
        let kind = if was_with_new_count == now {
            deploy::Kind::Scale(svc.config.instances)
        } else {
            deploy::Kind::Deploy(tcf_config::Strategy::BlueGreen)
        };
        let plan = deploy::Plan {
            kind,
            targets: vec![(name.clone(), active.version.clone())],
            specs: [(name.clone(), Arc::new(svc.config.clone()))]
                .into_iter()
                .collect(),
            validate: false,
            backup: false,
            force: false,
            reason: Some("config reload".into()),
            actor: "reload".into(),
            lock_wait: Duration::from_secs(300),
        };
        // Progress lines are events too; nobody follows this release live.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let outcome = deploy::run(p.clone(), plan, tx).await;
        p.event(
            "reload.applied",
            Some(&name),
            None,
            format!("config change of {name} applied: {}", outcome.result()),
        );
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
