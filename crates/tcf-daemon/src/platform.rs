//! The daemon's live state: services, their instances, dependencies, and the event trail.
//!
//! Only the daemon changes this state; every change that matters is written as one event to the
//! store (and broadcast to followers) through [`Platform::event`].

use crate::metrics::MetricsWindow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tcf_config::{Config, Dependency, Service};
use tcf_proxy::{Backend, Route, ServiceProxy};
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
}

pub struct Instance {
    pub id: String,
    pub service: String,
    pub version: String,
    pub port: u16,
    pub backend: Arc<Backend>,
    pub info: Mutex<InstanceInfo>,
    /// Flipped to true to ask the instance's supervisor to stop it for good.
    pub stop: watch::Sender<bool>,
    /// The supervisor task; awaited when stopping.
    pub task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Instance {
    pub fn info(&self) -> InstanceInfo {
        lock(&self.info).clone()
    }

    pub fn in_pool(&self) -> bool {
        let i = lock(&self.info);
        i.state == InstanceState::Running && i.health == Health::Healthy
    }
}

pub struct ServiceRuntime {
    pub config: Service,
    pub proxy: Arc<ServiceProxy>,
    pub version: Mutex<String>,
    pub instances: Mutex<Vec<Arc<Instance>>>,
    /// True while at least one instance is in the proxy's pool; dependents wait on it.
    pub healthy: watch::Sender<bool>,
    pub metrics: Mutex<MetricsWindow>,
}

impl ServiceRuntime {
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        lock(&self.instances).clone()
    }

    /// Put exactly the healthy running instances in the proxy's pool (an atomic swap).
    pub fn rebuild_route(&self) {
        let backends: Vec<Arc<Backend>> = self
            .instances()
            .iter()
            .filter(|i| i.in_pool())
            .map(|i| i.backend.clone())
            .collect();
        let any = !backends.is_empty();
        self.proxy.set_route(Route { backends });
        self.healthy.send_if_modified(|h| {
            let changed = *h != any;
            *h = any;
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

pub struct Platform {
    pub config: Config,
    pub store: Store,
    pub runtime: Arc<dyn Runtime>,
    pub services: BTreeMap<String, Arc<ServiceRuntime>>,
    pub dependencies: BTreeMap<String, Arc<DependencyRuntime>>,
    pub events: broadcast::Sender<tcf_store::Event>,
    /// Flipped to true when the daemon is asked to stop.
    pub shutdown: watch::Sender<bool>,
    pub started: Instant,
}

impl Platform {
    /// Record one state change: store, broadcast and the daemon's own log.
    pub fn event(
        &self,
        kind: &str,
        service: Option<&str>,
        instance: Option<&str>,
        message: impl Into<String>,
    ) {
        let message = message.into();
        let place = instance.or(service).unwrap_or("platform");
        tracing::info!("{kind:<24} {place:<14} {message}");
        let new = NewEvent {
            actor: "daemon".into(),
            kind: kind.into(),
            service: service.map(str::to_string),
            instance: instance.map(str::to_string),
            message,
        };
        match self.store.append_event(&new) {
            Ok(e) => {
                let _ = self.events.send(e);
            }
            Err(e) => tracing::error!("cannot record event {kind}: {e}"),
        }
    }

    pub fn logs_dir(&self) -> std::path::PathBuf {
        self.config.platform.state_dir.join("logs")
    }

    pub fn is_stopping(&self) -> bool {
        *self.shutdown.borrow()
    }
}
