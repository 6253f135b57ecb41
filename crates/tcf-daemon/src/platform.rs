//! The daemon's live state: services, their instances, dependencies, and the event trail.
//!
//! Only the daemon changes this state; every change that matters is written as one event to the
//! store (and broadcast to followers) through [`Platform::event`].

use crate::metrics::MetricsWindow;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use std::time::Instant;
use tcf_config::{Config, Dependency, Service};
use tcf_proxy::{Backend, Pool, Route, ServiceProxy, Sticky};
use tcf_runtime::Runtime;
use tcf_store::{NewEvent, Store};
use tokio::sync::{broadcast, watch};

/// Lock a control-plane mutex; a panic elsewhere must not take the daemon down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Starting,
    Running,
    Backoff,
    Crashloop,
    Stopping,
    Stopped,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Backoff => "backoff",
            InstanceState::Crashloop => "crashloop",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// What can change about an instance while it lives.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    pub state: InstanceState,
    pub health: Health,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub started: Option<Instant>,
    /// CPU ticks at the last metrics sample, for CPU %.
    pub cpu_ticks: Option<(Instant, u64)>,
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    /// The runtime's own health view (a container's HEALTHCHECK), if it has one.
    pub runtime_health: Option<String>,
    /// What the last health probe found ("ok", or why it failed), for a gate's progress.
    pub last_probe: Option<String>,
    /// It passed its health checks at least once since its last (re)start, so it did serve:
    /// only such an instance joins a pool in panic.
    pub healthy_since_start: bool,
    /// The machine it runs on, when its runtime spreads instances over several (a Swarm node).
    pub node: Option<String>,
}

pub struct Instance {
    pub id: String,
    pub service: String,
    pub colour: String,
    pub version: String,
    /// What it runs (its colour's spec).
    pub spec: Arc<Service>,
    /// The loopback port it listens on. Changes only while it is not running, when the port
    /// was taken by someone else (see [`Instance::move_to_port`]), or when its runtime says
    /// where it listens (a Swarm task: its node's address and published port, see
    /// [`Instance::move_to`]).
    port: AtomicU16,
    /// Its place in its colour's pool; replaced along with the port.
    backend: Mutex<Arc<Backend>>,
    pub info: Mutex<InstanceInfo>,
    /// Flipped to true to ask the instance's supervisor to stop it for good.
    pub stop: watch::Sender<bool>,
    /// The supervisor task; awaited when stopping.
    pub task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Taken out of the pool ahead of a stop, so its requests can finish first. Only
    /// [`Instance::drain_and_stop`] sets it: an instance on its way out never comes back.
    draining: AtomicBool,
}

impl Instance {
    /// A new instance of `colour`, starting.
    pub fn new(id: String, service: &str, colour: &Colour, port: u16) -> Instance {
        Instance {
            backend: Mutex::new(Backend::new(
                id.clone(),
                SocketAddr::from(([127, 0, 0, 1], port)),
            )),
            id,
            service: service.to_string(),
            colour: colour.name.clone(),
            version: colour.version.clone(),
            spec: colour.spec.clone(),
            port: AtomicU16::new(port),
            info: Mutex::new(InstanceInfo {
                state: InstanceState::Starting,
                health: Health::Unknown,
                pid: None,
                restarts: 0,
                started: None,
                cpu_ticks: None,
                cpu_percent: 0.0,
                rss_bytes: 0,
                runtime_health: None,
                last_probe: None,
                healthy_since_start: false,
                node: None,
            }),
            stop: watch::channel(false).0,
            task: Mutex::new(None),
            draining: AtomicBool::new(false),
        }
    }

    pub fn info(&self) -> InstanceInfo {
        lock(&self.info).clone()
    }

    pub fn port(&self) -> u16 {
        self.port.load(Ordering::SeqCst)
    }

    pub fn backend(&self) -> Arc<Backend> {
        lock(&self.backend).clone()
    }

    /// Where it takes connections: loopback and its port, or where its runtime runs it.
    pub fn addr(&self) -> SocketAddr {
        self.backend().addr
    }

    /// Take connections at `addr` from now on (a task its runtime started, or moved, on
    /// another machine): a new backend, so no pooled connection to the old place is reused.
    pub fn move_to(&self, addr: SocketAddr) {
        let old = {
            let mut backend = lock(&self.backend);
            if backend.addr == addr {
                return;
            }
            std::mem::replace(&mut *backend, Backend::new(self.id.clone(), addr))
        };
        old.close_idle();
        self.port.store(addr.port(), Ordering::SeqCst);
    }

    /// Listen on `port` from the next start on (the old one was taken while it was down): a
    /// new backend, so no pooled connection to the old port is ever reused.
    pub fn move_to_port(&self, port: u16) {
        let old = {
            let mut backend = lock(&self.backend);
            let fresh = Backend::new(self.id.clone(), SocketAddr::from(([127, 0, 0, 1], port)));
            std::mem::replace(&mut *backend, fresh)
        };
        old.close_idle();
        self.port.store(port, Ordering::SeqCst);
    }

    /// Running, healthy and not on its way out: able to serve. Whether it gets requests is
    /// its service's decision ([`ServiceRuntime::in_pool`]).
    pub fn ready(&self) -> bool {
        if self.draining.load(Ordering::SeqCst) {
            return false;
        }
        let i = lock(&self.info);
        i.state == InstanceState::Running && i.health == Health::Healthy
    }

    /// Running and healthy at least once since its (re)start, whatever its probes say now,
    /// and not on its way out: what a colour in panic routes to (see
    /// [`ServiceRuntime::rebuild_route`]). One never healthy since it started may not even
    /// listen yet.
    fn running_once_healthy(&self) -> bool {
        if self.draining.load(Ordering::SeqCst) {
            return false;
        }
        let i = lock(&self.info);
        i.state == InstanceState::Running && i.healthy_since_start
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Take it out of the pool, wait (up to the limits) for its requests and upgraded
    /// connections to finish, then stop it and wait until it is gone.
    pub async fn drain_and_stop(
        &self,
        svc: &ServiceRuntime,
        drain: Duration,
        upgrade_drain: Duration,
    ) {
        self.draining.store(true, Ordering::SeqCst);
        svc.rebuild_route();
        let start = Instant::now();
        let backend = self.backend();
        while backend.outstanding() > 0 && start.elapsed() < drain {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while backend.upgraded() > 0 && start.elapsed() < upgrade_drain {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.send_replace(true);
        let task = lock(&self.task).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

/// One colour of a service: a version's instances behind their own pool in the proxy.
pub struct Colour {
    pub name: String,
    pub version: String,
    /// What its instances run: command, env, health, instances... as deployed (a deploy
    /// applies the config file's current spec; a rollback the one the version ran with).
    pub spec: Arc<Service>,
    /// How many instances it runs: the spec's, until `scale` changes it.
    count: std::sync::atomic::AtomicU32,
    pub pool: Arc<Pool>,
    pub instances: Mutex<Vec<Arc<Instance>>>,
    /// Bumped whenever someone decides this colour's fate, so a stale retirement timer can
    /// tell it was overtaken (by a rollback that switched back, say).
    pub generation: AtomicU64,
    /// In panic: too few of its instances are healthy, so its pool holds all of its running
    /// ones (see [`ServiceRuntime::rebuild_route`]).
    panic: AtomicBool,
}

impl Colour {
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        lock(&self.instances).clone()
    }

    /// How many instances this colour runs.
    pub fn count(&self) -> u32 {
        self.count.load(Ordering::SeqCst)
    }

    pub fn set_count(&self, n: u32) {
        self.count.store(n, Ordering::SeqCst);
    }

    /// The spec as it runs now: the deployed one, with the instance count `scale` set.
    pub fn current_spec(&self) -> Arc<Service> {
        let count = self.count();
        if count == self.spec.instances {
            return self.spec.clone();
        }
        let mut spec = (*self.spec).clone();
        spec.instances = count;
        Arc::new(spec)
    }

    /// Forget a stopped instance (scaled down).
    pub fn remove_instance(&self, id: &str) {
        lock(&self.instances).retain(|i| i.id != id);
    }

    /// True while its pool holds unhealthy instances because too few are healthy.
    pub fn in_panic(&self) -> bool {
        self.panic.load(Ordering::SeqCst)
    }

    /// Every instance running and healthy, whether or not it takes traffic: ready to serve.
    pub fn warm(&self) -> bool {
        let i = self.instances();
        !i.is_empty() && i.iter().all(|x| x.ready())
    }
}

/// The other colour of the two.
pub fn other_colour(name: &str) -> &'static str {
    if name == "blue" {
        "green"
    } else {
        "blue"
    }
}

/// Where a service's requests go: weights by colour, and the instances of a weighted colour
/// held out of its pool (a rolling deploy's replaced instances, kept warm for a rollback).
#[derive(Debug, Clone, Default)]
struct Traffic {
    weights: Vec<(String, u32)>,
    parked: BTreeSet<String>,
}

/// Records a service's event: its kind and message.
pub type EventSink = Box<dyn Fn(&str, String) + Send + Sync>;

pub struct ServiceRuntime {
    pub config: Service,
    pub proxy: Arc<ServiceProxy>,
    pub sticky: Sticky,
    colours: Mutex<BTreeMap<String, Arc<Colour>>>,
    /// Held while a route is built and swapped in, so two changes never interleave.
    traffic: Mutex<Traffic>,
    /// True while at least one healthy instance takes traffic.
    pub healthy: watch::Sender<bool>,
    /// How many times one of its colours went into panic since the daemon started.
    pub panics: AtomicU64,
    /// Where its panic transitions are reported (the platform's events), once set.
    pub notify: std::sync::OnceLock<EventSink>,
    pub metrics: Mutex<MetricsWindow>,
    /// Set while the proxy answers 503 for maintenance (crate::maintenance).
    pub maintenance: Mutex<Option<tcf_api::Maintenance>>,
}

impl ServiceRuntime {
    pub fn new(config: Service, proxy: Arc<ServiceProxy>, sticky: Sticky) -> ServiceRuntime {
        ServiceRuntime {
            config,
            proxy,
            sticky,
            colours: Mutex::new(BTreeMap::new()),
            traffic: Mutex::new(Traffic::default()),
            healthy: watch::channel(false).0,
            panics: AtomicU64::new(0),
            notify: std::sync::OnceLock::new(),
            metrics: Mutex::new(Default::default()),
            maintenance: Mutex::new(None),
        }
    }

    pub fn colour(&self, name: &str) -> Option<Arc<Colour>> {
        lock(&self.colours).get(name).cloned()
    }

    pub fn colours(&self) -> Vec<Arc<Colour>> {
        lock(&self.colours).values().cloned().collect()
    }

    /// Every instance of every colour.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.colours().iter().flat_map(|c| c.instances()).collect()
    }

    /// Traffic by colour as the route has it.
    pub fn weights(&self) -> Vec<(String, u32)> {
        lock(&self.traffic).weights.clone()
    }

    /// True when `colour` gets a share of the requests.
    pub fn serves(&self, colour: &str) -> bool {
        lock(&self.traffic)
            .weights
            .iter()
            .any(|(c, w)| c == colour && *w > 0)
    }

    /// The colour with the most traffic.
    pub fn active_colour(&self) -> Option<Arc<Colour>> {
        let weights = self.weights();
        weights
            .iter()
            .max_by_key(|(_, w)| *w)
            .and_then(|(name, _)| self.colour(name))
    }

    /// The version serving (most of) the traffic.
    pub fn serving_version(&self) -> String {
        self.active_colour()
            .map(|c| c.version.clone())
            .unwrap_or_default()
    }

    /// A new colour with its own pool; replaces a colour of that name.
    pub fn add_colour(&self, name: &str, version: &str, spec: Arc<Service>) -> Arc<Colour> {
        let colour = Arc::new(Colour {
            name: name.to_string(),
            version: version.to_string(),
            count: std::sync::atomic::AtomicU32::new(spec.instances),
            spec,
            pool: Pool::new(name, version, self.proxy.settings()),
            instances: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            panic: AtomicBool::new(false),
        });
        lock(&self.colours).insert(name.to_string(), colour.clone());
        colour
    }

    pub fn remove_colour(&self, name: &str) {
        lock(&self.colours).remove(name);
    }

    /// Send traffic by weight (atomic swap of the route); requests in flight keep their colour.
    /// Every ready instance of a colour given traffic is in its pool: nothing stays parked.
    pub fn set_traffic(&self, weights: Vec<(String, u32)>) {
        self.route(Traffic {
            weights,
            parked: BTreeSet::new(),
        });
    }

    /// Like [`set_traffic`](Self::set_traffic), with the instances in `parked` held out of
    /// their pools while they keep running (a rolling deploy's replaced instances). The next
    /// route change that does not name them puts them back.
    pub fn set_traffic_parking(&self, weights: Vec<(String, u32)>, parked: BTreeSet<String>) {
        self.route(Traffic { weights, parked });
    }

    /// True when `inst` is healthy and takes requests: ready, and not parked. (A colour in
    /// panic also routes to its unhealthy running instances; this stays false for them.)
    pub fn in_pool(&self, inst: &Instance) -> bool {
        inst.ready() && !lock(&self.traffic).parked.contains(&inst.id)
    }

    /// True while a colour that takes traffic is in panic.
    pub fn in_panic(&self) -> bool {
        let traffic = lock(&self.traffic);
        traffic
            .weights
            .iter()
            .any(|(name, w)| *w > 0 && self.colour(name).is_some_and(|c| c.in_panic()))
    }

    /// Fill each colour's pool after a health or state change: its ready, unparked instances;
    /// or, for a colour with traffic in panic, all of its running ones.
    pub fn rebuild_route(&self) {
        let traffic = lock(&self.traffic);
        self.fill_pools(&traffic, true);
    }

    fn route(&self, next: Traffic) {
        let mut traffic = lock(&self.traffic);
        // Instances join pools before the route points at them, and leave (newly parked) only
        // after it stopped: a request never finds a parked instance in a colour it was just
        // given, nor an emptied pool in the route it loaded (a rolling step parks the old
        // colour's last instances in the same change that takes its traffic away).
        let still_parked = next.parked.intersection(&traffic.parked).cloned().collect();
        self.fill_pools(
            &Traffic {
                weights: next.weights.clone(),
                parked: still_parked,
            },
            false,
        );
        let pools = next
            .weights
            .iter()
            .filter_map(|(name, w)| self.colour(name).map(|c| (c.pool.clone(), *w)))
            .collect();
        self.proxy.set_route(Route {
            pools,
            sticky: self.sticky.clone(),
        });
        *traffic = next;
        self.fill_pools(&traffic, true);
    }

    /// Each colour's pool holds its ready, unparked instances. A colour with traffic whose
    /// healthy share falls below its `health.panic_threshold` is in panic (Envoy's panic
    /// threshold): its pool holds every running, unparked instance instead, healthy or not,
    /// because health probes that fail on all instances at once (a host under load, a
    /// dependency's hiccup) more often mean slow probes than dead instances, and an instance
    /// that may answer beats a 503 from the proxy for certain. Entering and leaving panic are
    /// events.
    /// `settled` is false for the transitional fill of a route change: panic is worked out
    /// for the members but not recorded or reported until the change is complete.
    fn fill_pools(&self, traffic: &Traffic, settled: bool) {
        let mut any_healthy = false;
        for colour in self.colours() {
            let weighted = traffic
                .weights
                .iter()
                .any(|(name, w)| *name == colour.name && *w > 0);
            let members: Vec<Arc<Instance>> = colour
                .instances()
                .into_iter()
                .filter(|i| !i.draining() && !traffic.parked.contains(&i.id))
                .collect();
            let ready: Vec<&Arc<Instance>> = members.iter().filter(|i| i.ready()).collect();
            let running: Vec<&Arc<Instance>> = members
                .iter()
                .filter(|i| i.running_once_healthy())
                .collect();
            any_healthy |= weighted && !ready.is_empty();
            let threshold = u64::from(colour.spec.health.panic_threshold);
            let panic = weighted
                && running.len() > ready.len()
                && (ready.len() as u64) * 100 < threshold * members.len() as u64;
            let chosen = if panic { &running } else { &ready };
            colour
                .pool
                .set_backends(chosen.iter().map(|i| i.backend()).collect());
            if !settled {
                continue;
            }
            if colour.panic.swap(panic, Ordering::SeqCst) != panic {
                let message = if panic {
                    self.panics.fetch_add(1, Ordering::Relaxed);
                    format!(
                        "{} colour ({}): {} of {} instances healthy, under the {}% panic threshold; routing to all {} running instances",
                        colour.name,
                        colour.version,
                        ready.len(),
                        members.len(),
                        threshold,
                        running.len()
                    )
                } else {
                    format!(
                        "{} colour ({}): {} of {} instances healthy; routing to the healthy ones only",
                        colour.name,
                        colour.version,
                        ready.len(),
                        members.len()
                    )
                };
                let kind = if panic {
                    "service.panic"
                } else {
                    "service.panic_over"
                };
                match self.notify.get() {
                    Some(notify) => notify(kind, message),
                    None => tracing::warn!("{kind:<24} {:<14} {message}", self.config.name),
                }
            }
        }
        if !settled {
            return;
        }
        self.healthy.send_if_modified(|h| {
            let changed = *h != any_healthy;
            *h = any_healthy;
            changed
        });
    }
}

#[derive(Debug, Clone, Default)]
pub struct DependencyInfo {
    pub healthy: Option<bool>,
    pub last_error: Option<String>,
}

pub struct DependencyRuntime {
    pub config: Dependency,
    pub info: Mutex<DependencyInfo>,
    pub healthy: watch::Sender<bool>,
}

enum EventMsg {
    Append(NewEvent),
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// The audit trail's writer: one thread that appends events to the store in the order they
/// happened and then broadcasts them to followers (`events -f`, a deploy's progress).
pub struct EventLog {
    tx: std::sync::mpsc::Sender<EventMsg>,
}

impl EventLog {
    pub fn start(store: Arc<Store>, followers: broadcast::Sender<tcf_store::Event>) -> EventLog {
        let (tx, rx) = std::sync::mpsc::channel::<EventMsg>();
        let spawned = std::thread::Builder::new()
            .name("tcf-events".into())
            .spawn(move || {
                // A full disk fails every write: one line per 10 s, with a count.
                let mut failures = tcf_runtime::logfile::RateLimited::new(Duration::from_secs(10));
                for msg in rx {
                    match msg {
                        EventMsg::Append(new) => match store.append_event(&new) {
                            Ok(e) => {
                                let _ = followers.send(e);
                            }
                            Err(e) => {
                                failures.hit(|held_back| {
                                    tracing::error!(
                                        "cannot record event {}: {e} ({held_back} more not recorded since the last message)",
                                        new.kind
                                    )
                                });
                            }
                        },
                        EventMsg::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the event writer thread: {e}");
        }
        EventLog { tx }
    }

    fn append(&self, event: NewEvent) {
        if self.tx.send(EventMsg::Append(event)).is_err() {
            tracing::error!("the event writer has stopped; an event was not recorded");
        }
    }

    /// Wait until every event sent so far is in the store (before the daemon exits).
    pub fn flush(&self) {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(EventMsg::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(10));
        }
    }
}

/// A process instance of the active release that a previous daemon left running.
pub struct LeftProcess {
    pub service: String,
    pub version: String,
    pub colour: String,
    pub port: u16,
    pub running: Box<dyn tcf_runtime::Running>,
}

pub struct Platform {
    pub config: Config,
    pub store: Arc<Store>,
    pub event_log: EventLog,
    pub runtime: Arc<dyn Runtime>,
    /// The Docker runtime, when a service uses it.
    pub docker: Option<Arc<tcf_docker::DockerRuntime>>,
    /// The Swarm runtime, when a service uses it.
    pub swarm: Option<Arc<tcf_docker::swarm::SwarmRuntime>>,
    /// Swarm services found at startup that match the active release, by instance id.
    pub adoptable_swarm: Mutex<BTreeMap<String, tcf_docker::swarm::FoundService>>,
    /// Containers found running at startup that match the active release, by instance id.
    pub adoptable: Mutex<BTreeMap<String, tcf_docker::Found>>,
    /// Process instances a previous daemon left running that match the active release, by
    /// instance id: taken over (same pid, port, colour) instead of restarted.
    pub adoptable_processes: Mutex<BTreeMap<String, LeftProcess>>,
    pub services: BTreeMap<String, Arc<ServiceRuntime>>,
    pub dependencies: BTreeMap<String, Arc<DependencyRuntime>>,
    pub events: broadcast::Sender<tcf_store::Event>,
    /// Flipped to true when the daemon is asked to stop.
    pub shutdown: watch::Sender<bool>,
    pub started: Instant,
    /// What release is running right now, if any (for status).
    pub deploying: Mutex<Option<String>>,
    /// The monitor, once started (alerts for `prod validate`).
    pub monitor: std::sync::OnceLock<Arc<crate::monitor::MonitorService>>,
    /// Set by `prod abort` to who asked: the running release stops and reverts.
    pub abort: Mutex<Option<String>>,
    /// Held by the release that runs: one at a time in this daemon, whatever the lease says.
    pub release_slot: tokio::sync::Mutex<()>,
    /// Problems an operator must see in `status` (a state store that was deleted, say).
    pub warnings: Mutex<Vec<String>>,
    /// Scheduled backups that failed in a row (the `backup_failed` alert watches it).
    pub scheduled_backup_failures: std::sync::atomic::AtomicU32,
    /// Tokens, the failed-auth limiter, the remote API's endpoint, secrets in use (access.rs).
    pub access: crate::access::Access,
    /// The HTTPS services' certificates (docs/tls.md).
    pub tls: BTreeMap<String, Arc<crate::tls::ServiceTls>>,
}

impl Platform {
    /// The runtime a service's instances run on.
    pub fn runtime_for(&self, svc: &tcf_config::Service) -> Arc<dyn Runtime> {
        match (svc.runtime, &self.docker, &self.swarm) {
            (tcf_config::RuntimeKind::Docker, Some(d), _) => d.clone(),
            (tcf_config::RuntimeKind::Swarm, _, Some(s)) => s.clone(),
            _ => self.runtime.clone(),
        }
    }

    /// Record one state change: store, broadcast and the daemon's own log. The store write
    /// happens on the event writer's own thread, in order, so no runtime thread waits on SQLite.
    pub fn event(
        &self,
        kind: &str,
        service: Option<&str>,
        instance: Option<&str>,
        message: impl Into<String>,
    ) {
        self.event_by("daemon", kind, service, instance, message)
    }

    /// [`event`](Self::event) done on behalf of `actor` (a deploy's author, who ran `down`).
    pub fn event_by(
        &self,
        actor: &str,
        kind: &str,
        service: Option<&str>,
        instance: Option<&str>,
        message: impl Into<String>,
    ) {
        let message = message.into();
        let place = instance.or(service).unwrap_or("platform");
        tracing::info!("{kind:<24} {place:<14} {message}");
        self.event_log.append(NewEvent {
            actor: actor.into(),
            kind: kind.into(),
            service: service.map(str::to_string),
            instance: instance.map(str::to_string),
            message,
        });
    }

    /// Run a store call on a blocking thread: SQLite may wait (busy timeout, fsync), and a
    /// runtime thread must not.
    pub async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> T {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    pub fn logs_dir(&self) -> std::path::PathBuf {
        self.config.platform.state_dir.join("logs")
    }

    pub fn is_stopping(&self) -> bool {
        *self.shutdown.borrow()
    }
}
