//! The file as written: every table denies unknown keys, and the values that later checks
//! complain about keep their source span so that errors can point at them.

use crate::units::{ByteSize, Dur};
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub platform: RawPlatform,
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub services: BTreeMap<Spanned<String>, RawService>,
    #[serde(default)]
    pub dependencies: BTreeMap<Spanned<String>, RawDependency>,
    #[serde(default)]
    pub environments: BTreeMap<Spanned<String>, RawEnvironment>,
    #[serde(default)]
    pub deploy: RawDeploy,
    #[serde(default)]
    pub hooks: RawHooks,
    pub backup: Option<crate::backup::RawBackup>,
    #[serde(default)]
    pub monitor: crate::monitor::RawMonitor,
    #[serde(default)]
    pub alerts: crate::monitor::RawAlerts,
    /// `[swarm]`: the Swarm manager `runtime = "swarm"` services run on (docs/swarm.md).
    #[serde(default)]
    pub swarm: RawSwarmCluster,
    /// `[audit]`: the thresholds `prod audit` holds the platform to (docs/audit.md).
    #[serde(default)]
    pub audit: RawAudit,
}

/// `[audit]`: the policy the audit's access and secrets checks measure against.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub max_admins: Option<u32>,
    pub secret_max_age: Option<Dur>,
    pub failed_auth_burst: Option<Spanned<u32>>,
    pub failed_auth_window: Option<Dur>,
    pub advisories_max_age: Option<Dur>,
}

/// `[swarm]`: where the Swarm manager's Engine API is.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSwarmCluster {
    /// `unix:///path`, `tcp://host:port` or `http://host:port`; none: `DOCKER_HOST`, then the
    /// local socket.
    pub endpoint: Option<Spanned<String>>,
    /// `{ HOSTNAME = "unix:///…" | "tcp://host:port" }`: each node's own engine, for the CPU
    /// and memory of the tasks it runs (status, metrics); nodes not listed show none.
    #[serde(default)]
    pub node_engines: std::collections::BTreeMap<String, String>,
}

/// `[services.NAME.swarm]` / `[defaults.swarm]`: how a `runtime = "swarm"` service's tasks
/// are placed and restarted.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSwarm {
    /// Placement constraints, as `docker service create --constraint` takes them.
    pub constraints: Option<Vec<String>>,
    /// Placement preferences: `spread=node.labels.zone`.
    pub preferences: Option<Vec<Spanned<String>>>,
    /// `any` (default), `on-failure` or `none`.
    pub restart: Option<Spanned<String>>,
    pub restart_delay: Option<Dur>,
    /// Restarts within `restart_window` before Swarm gives up; 0: never gives up.
    pub restart_max_attempts: Option<u32>,
}

/// `[deploy]`: how deploys and rollbacks behave.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeploy {
    pub strategy: Option<Spanned<String>>,
    pub drain_timeout: Option<Dur>,
    pub upgrade_drain_timeout: Option<Dur>,
    pub watch: Option<Dur>,
    pub retire_after: Option<Dur>,
    pub max_error_ratio: Option<Spanned<f64>>,
    pub max_p99: Option<Dur>,
    pub min_requests: Option<u64>,
    pub canary_steps: Option<Spanned<Vec<u32>>>,
    pub step_interval: Option<Dur>,
    pub sticky: Option<Spanned<String>>,
    pub max_surge: Option<Spanned<u32>>,
    pub lock_ttl: Option<Dur>,
    pub validate: Option<bool>,
    pub backup: Option<bool>,
}

/// `[hooks]`: commands around deploys and rollbacks.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    pub pre_deploy: Option<Vec<String>>,
    pub post_deploy: Option<Vec<String>>,
    pub post_rollback: Option<Vec<String>>,
    pub timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlatform {
    pub name: Spanned<String>,
    pub state_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub socket: Option<String>,
    /// The remote API (HTTPS, tokens): `HOST:PORT`.
    pub listen: Option<Spanned<String>>,
    /// The remote API's certificate and key (PEM); without them, a self-signed one.
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
}

/// Values every service inherits unless it sets its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub runtime: Option<Spanned<String>>,
    pub instances: Option<Spanned<u32>>,
    pub stop_timeout: Option<Dur>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub health: RawHealth,
    pub max_request_body: Option<ByteSize>,
    pub upstream_timeout: Option<Dur>,
    pub connect_timeout: Option<Dur>,
    pub log_max_size: Option<ByteSize>,
    /// What the proxy refuses in a request head (docs/running.md).
    #[serde(default)]
    pub proxy: RawProxyLimits,
    // runtime = "docker" (see RawService)
    pub image: Option<Spanned<String>>,
    pub container_port: Option<Spanned<u16>>,
    pub entrypoint: Option<Vec<String>>,
    pub memory: Option<ByteSize>,
    pub cpus: Option<Spanned<f64>>,
    pub user: Option<String>,
    pub read_only: Option<bool>,
    pub volumes: Option<Vec<String>>,
    pub network: Option<String>,
    pub pull: Option<Spanned<String>>,
    // runtime = "swarm"
    #[serde(default)]
    pub swarm: RawSwarm,
}

/// `[services.NAME.proxy]` / `[defaults.proxy]`: limits on a request's head, and on idle
/// upgraded connections.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyLimits {
    pub max_header_size: Option<ByteSize>,
    pub max_headers: Option<Spanned<u32>>,
    pub max_request_line: Option<ByteSize>,
    /// `forward` (default), `drop` or `refuse`.
    pub headers_with_underscores: Option<Spanned<String>>,
    /// An upgraded connection (WebSocket) idle this long is closed.
    pub tunnel_idle_timeout: Option<Dur>,
    /// A JSON line per request in `state_dir/logs/access-NAME.log` (off by default).
    pub access_log: Option<bool>,
    /// Keep the query string in the access log's paths (off: it may carry tokens).
    pub access_log_query: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// `http` (default) or `tcp`.
    pub probe: Option<Spanned<String>>,
    pub path: Option<String>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub healthy_threshold: Option<Spanned<u32>>,
    pub unhealthy_threshold: Option<Spanned<u32>>,
    /// Percent of a colour's instances that must be healthy, below which it routes to all of
    /// its running instances (0 turns it off).
    pub panic_threshold: Option<Spanned<u32>>,
    pub start_period: Option<Dur>,
    pub deadline: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub runtime: Option<Spanned<String>>,
    pub command: Option<Spanned<Vec<String>>>,
    pub version: Option<Spanned<String>>,
    pub listen: Option<Spanned<String>>,
    /// HTTPS on `listen` (docs/tls.md).
    pub tls: Option<Spanned<crate::tls::RawTls>>,
    /// A plain listener for ACME challenges and a redirect to HTTPS.
    pub http_listen: Option<Spanned<String>>,
    pub hsts: Option<Spanned<String>>,
    pub instances: Option<Spanned<u32>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub depends_on: Vec<Spanned<String>>,
    #[serde(default)]
    pub health: RawHealth,
    pub stop_timeout: Option<Dur>,
    pub max_request_body: Option<ByteSize>,
    pub upstream_timeout: Option<Dur>,
    pub connect_timeout: Option<Dur>,
    pub log_max_size: Option<ByteSize>,
    /// What the proxy refuses in a request head (docs/running.md).
    #[serde(default)]
    pub proxy: RawProxyLimits,
    // runtime = "docker"
    pub image: Option<Spanned<String>>,
    pub container_port: Option<Spanned<u16>>,
    pub entrypoint: Option<Vec<String>>,
    pub memory: Option<ByteSize>,
    pub cpus: Option<Spanned<f64>>,
    pub user: Option<String>,
    pub read_only: Option<bool>,
    pub volumes: Option<Vec<String>>,
    pub network: Option<String>,
    pub pull: Option<Spanned<String>>,
    // runtime = "swarm"
    #[serde(default)]
    pub swarm: RawSwarm,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDependency {
    /// postgres, redis, qdrant, http or tcp.
    pub kind: Option<Spanned<String>>,
    /// `host:port` for TCP-level kinds.
    pub address: Option<Spanned<String>>,
    /// Full URL for `http` and `qdrant`.
    pub url: Option<Spanned<String>>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
}

/// `[environments.NAME]`: partial overrides applied with `--env NAME`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvironment {
    pub platform: Option<RawPlatformOverride>,
    pub defaults: Option<RawDefaults>,
    #[serde(default)]
    pub services: BTreeMap<Spanned<String>, RawService>,
    #[serde(default)]
    pub dependencies: BTreeMap<Spanned<String>, RawDependency>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlatformOverride {
    pub name: Option<Spanned<String>>,
    pub state_dir: Option<String>,
}
