//! How an instance runs. [`Runtime`] hides whether it is a process, a container or a task of an
//! orchestrator: the supervisor and the deploy logic only start, signal and wait.
//!
//! [`process::ProcessRuntime`] is the embedded default: every instance is a child process in its
//! own process group, so that stopping it also stops whatever it spawned.

pub mod logfile;
pub mod process;
pub mod procfs;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start {instance}: program {program:?} not found beside tcf-platform or in PATH\nhint: build it (cargo build --workspace) or give its full path in the service's command")]
    ProgramNotFound { instance: String, program: String },
    #[error("cannot start {instance} ({program}): {source}")]
    Spawn {
        instance: String,
        program: String,
        source: std::io::Error,
    },
    #[error("cannot open the log file {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Everything needed to start one instance; placeholders are already substituted.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub id: String,
    pub service: String,
    pub version: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The internal port the instance must listen on (also in `PORT`).
    pub port: u16,
    pub log_path: PathBuf,
    pub log_max_size: u64,
    /// The slot this instance runs in (blue or green), for labels.
    pub colour: String,
    /// How long a graceful stop may take before the instance is killed.
    pub stop_timeout: Duration,
    /// Set for container runtimes: what to run and how.
    pub container: Option<ContainerSpec>,
    /// The variables of `env` whose values came from secrets: a runtime that would otherwise
    /// write them into a spec others can read (a Swarm service's) passes them another way.
    pub secret_env: std::collections::BTreeSet<String>,
}

/// What a container runtime needs beyond a process's argv and environment.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// `{version}` already replaced.
    pub image: String,
    pub container_port: u16,
    pub entrypoint: Option<Vec<String>>,
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub user: Option<String>,
    pub read_only: bool,
    /// `host-path:container-path[:ro]` or `volume:container-path`.
    pub volumes: Vec<String>,
    pub network: String,
    /// Pull the image when it is not present locally.
    pub pull_missing: bool,
    /// Placement and restarts on a Swarm (`runtime = "swarm"` only).
    pub swarm: Option<SwarmPlacement>,
}

/// Where a Swarm may run a task and how it restarts it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SwarmPlacement {
    pub constraints: Vec<String>,
    /// Spread descriptors (`node.labels.zone`).
    pub spread: Vec<String>,
    /// `any`, `on-failure` or `none`.
    pub restart: String,
    pub restart_delay: Duration,
    pub restart_max_attempts: u32,
}

/// CPU and memory of an instance, as its runtime measures them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    /// Total CPU time used so far, in microseconds.
    pub cpu_micros: u64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
}

/// Read an instance's usage from its runtime (an engine's stats); `None` when it cannot.
pub type UsageProbe = std::sync::Arc<dyn Fn() -> BoxFuture<'static, Option<Usage>> + Send + Sync>;

/// A check of the runtime's own health for an instance (a container's HEALTHCHECK state).
pub type StatusProbe = std::sync::Arc<dyn Fn() -> BoxFuture<'static, Option<String>> + Send + Sync>;

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// Waiting failed; the instance is treated as gone.
    Unknown(String),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            Exit::Unknown(e) => write!(f, "unknown exit ({e})"),
        }
    }
}

/// Identity of a started instance, stored so that a later daemon can find it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub pid: u32,
    pub pgid: u32,
    pub start_ticks: Option<u64>,
}

pub trait Running: Send {
    fn identity(&self) -> Identity;
    /// Ask the instance to stop (SIGTERM to its whole process group).
    fn terminate(&self);
    /// Stop it now (SIGKILL to its whole process group).
    fn kill(&self);
    /// Resolves once the instance has exited; what it spawned is killed too.
    fn wait(&mut self) -> BoxFuture<'_, Exit>;
    /// The runtime's own view of the instance's health, if it has one.
    fn status_probe(&self) -> Option<StatusProbe> {
        None
    }
    /// Where it takes connections, when that is not the loopback port it was started with
    /// (a task on another machine).
    fn address(&self) -> Option<std::net::SocketAddr> {
        None
    }
    /// The machine it runs on, when the runtime spreads instances over several.
    fn node(&self) -> Option<String> {
        None
    }
    /// CPU and memory from the runtime, for an instance this host's /proc cannot see.
    fn usage_probe(&self) -> Option<UsageProbe> {
        None
    }
}

pub trait Runtime: Send + Sync {
    fn name(&self) -> &'static str;
    fn start(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<Box<dyn Running>, RuntimeError>>;
    /// Take over an instance a previous daemon started and left running (recorded identity),
    /// when this runtime can and it still runs.
    fn adopt(&self, _left: Identity) -> Option<Box<dyn Running>> {
        None
    }
    /// Remove what a previous daemon left running (recorded identity); true if anything was found.
    fn clean_up(&self, left: Identity, grace: Duration) -> BoxFuture<'_, bool>;
    /// Fail early, before anything starts, when `spec` cannot run (a missing image, say).
    fn check(&self, _spec: &InstanceSpec) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    /// True when instances listen on this host's loopback, on the port the supervisor picks;
    /// false when the runtime decides where they listen (reported by [`Running::address`]).
    fn uses_local_ports(&self) -> bool {
        true
    }
}

/// How long an instance may take to be gone after SIGKILL before we stop waiting for it.
pub const KILL_WAIT: Duration = Duration::from_secs(30);

/// Stop a running instance: terminate, wait up to `grace`, then kill, and wait up to
/// [`KILL_WAIT`] more (an engine that never reports the exit must not hang a stop forever).
pub async fn stop(instance: &mut dyn Running, grace: Duration) -> Exit {
    stop_within(instance, grace, KILL_WAIT).await
}

pub async fn stop_within(instance: &mut dyn Running, grace: Duration, kill_wait: Duration) -> Exit {
    instance.terminate();
    match tokio::time::timeout(grace, instance.wait()).await {
        Ok(exit) => exit,
        Err(_) => {
            instance.kill();
            match tokio::time::timeout(kill_wait, instance.wait()).await {
                Ok(exit) => exit,
                Err(_) => Exit::Unknown(format!(
                    "still not gone {} after SIGKILL; stopped waiting",
                    humantime::format_duration(kill_wait)
                )),
            }
        }
    }
}

#[cfg(test)]
mod stop_tests {
    use super::*;

    /// An instance whose runtime never reports an exit, whatever it is sent.
    struct Stuck;

    impl Running for Stuck {
        fn identity(&self) -> Identity {
            Identity {
                pid: 0,
                pgid: 0,
                start_ticks: None,
            }
        }
        fn terminate(&self) {}
        fn kill(&self) {}
        fn wait(&mut self) -> BoxFuture<'_, Exit> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test]
    async fn a_stop_gives_up_on_an_instance_that_never_exits() {
        let exit = stop_within(
            &mut Stuck,
            Duration::from_millis(50),
            Duration::from_millis(50),
        )
        .await;
        assert!(
            matches!(exit, Exit::Unknown(ref m) if m.contains("after SIGKILL")),
            "{exit}"
        );
    }
}
