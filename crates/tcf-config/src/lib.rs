//! The platform's config: `tcf-platform.toml`.
//!
//! [`load`] reads a file, applies an `[environments.NAME]` overlay, fills in defaults and checks
//! everything a running platform depends on (addresses, references between services, cycles).
//! Every problem is reported with file, line and column and a hint, all at once.

pub mod backup;
mod diag;
pub mod monitor;
mod overlay;
mod raw;
mod resolve;
mod service;
mod socket;
pub mod tls;
pub mod units;
pub use socket::{paths_of_invalid_config, socket_of_invalid_config};

pub use backup::{BackupConfig, BackupSource, BackupSourceKind, Retention};
pub use diag::{line_col, render, Diagnostic};
pub use monitor::DEFAULT_DASHBOARD_LISTEN;
pub use monitor::{AlertRule, AlertSettings, MonitorSettings, Notifier, NotifierKind};
pub use resolve::{resolve, MAX_INSTANCES};
pub use tls::{AcmeSettings, CertFiles, ServiceTls, TlsSource};

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file name looked up in the current directory when no path is given.
pub const DEFAULT_FILE_NAME: &str = "tcf-platform.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no {DEFAULT_FILE_NAME} in {dir}\nhint: run from the directory that holds it, pass --config PATH, or set TCF_CONFIG")]
    NotFound { dir: PathBuf },
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The rendered text names file, line and column of each problem.
    #[error("{rendered}")]
    Invalid {
        path: PathBuf,
        rendered: String,
        diagnostics: Vec<Diagnostic>,
    },
}

/// The effective config of a platform: every default filled in, every path absolute.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The file this was loaded from.
    pub path: PathBuf,
    /// The `[environments.NAME]` overlay applied, if any.
    pub environment: Option<String>,
    pub platform: Platform,
    pub daemon: Daemon,
    pub services: BTreeMap<String, Service>,
    pub dependencies: BTreeMap<String, Dependency>,
    pub deploy: DeploySettings,
    pub hooks: Hooks,
    /// `[backup]`, if the file has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupConfig>,
    pub monitor: MonitorSettings,
    pub alerts: AlertSettings,
    pub swarm: SwarmCluster,
    /// `[audit]`: shown only when it differs from the defaults.
    #[serde(skip_serializing_if = "AuditSettings::is_default")]
    pub audit: AuditSettings,
}

/// `[audit]`: the thresholds of `prod audit`'s access and secrets checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditSettings {
    /// TCF-AUTH-003: more live admin tokens than this is a finding.
    pub max_admins: u32,
    /// TCF-SEC-006: a secret not set again for this long is due for rotation.
    #[serde(with = "units::duration")]
    pub secret_max_age: Duration,
    /// TCF-AUTH-004: this many failed authentications from one address within
    /// `failed_auth_window` (in the last day) is a burst.
    pub failed_auth_burst: u32,
    #[serde(with = "units::duration")]
    pub failed_auth_window: Duration,
    /// TCF-DEP-002: an advisory database not updated for this long is stale.
    #[serde(with = "units::duration")]
    pub advisories_max_age: Duration,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            max_admins: 2,
            secret_max_age: Duration::from_secs(90 * 86_400),
            failed_auth_burst: 10,
            failed_auth_window: Duration::from_secs(600),
            advisories_max_age: Duration::from_secs(7 * 86_400),
        }
    }
}

impl AuditSettings {
    pub fn is_default(&self) -> bool {
        *self == AuditSettings::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    BlueGreen,
    Canary,
    Rolling,
}

impl Strategy {
    /// Accepts `blue_green` and `blue-green` alike.
    pub fn parse(s: &str) -> Option<Strategy> {
        match s.replace('-', "_").as_str() {
            "blue_green" => Some(Strategy::BlueGreen),
            "canary" => Some(Strategy::Canary),
            "rolling" => Some(Strategy::Rolling),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::BlueGreen => "blue_green",
            Strategy::Canary => "canary",
            Strategy::Rolling => "rolling",
        }
    }
}

/// How a client keeps to one colour while a canary splits traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StickyBy {
    Cookie,
    ClientIp,
    Header(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct DeploySettings {
    pub strategy: Strategy,
    /// How long a retired colour's in-flight requests may take to finish.
    #[serde(with = "units::duration")]
    pub drain_timeout: Duration,
    /// How long upgraded connections (WebSocket) to a retired colour may stay open.
    #[serde(with = "units::duration")]
    pub upgrade_drain_timeout: Duration,
    /// After the switch: how long the new colour is watched before the release is final.
    #[serde(with = "units::duration")]
    pub watch: Duration,
    /// How long the previous colour stays warm (for an instant rollback) after a deploy.
    #[serde(with = "units::duration")]
    pub retire_after: Duration,
    /// Share of 5xx answers from the new colour that reverts a deploy.
    pub max_error_ratio: f64,
    /// p99 latency of the new colour that reverts a deploy, if set.
    #[serde(serialize_with = "units::serialize_opt_duration")]
    pub max_p99: Option<Duration>,
    /// Requests the new colour must have answered before its error ratio and p99 count.
    pub min_requests: u64,
    pub canary_steps: Vec<u32>,
    #[serde(with = "units::duration")]
    pub step_interval: Duration,
    pub sticky: StickyBy,
    pub max_surge: u32,
    /// A deploy lock not renewed for this long is expired and may be taken over.
    #[serde(with = "units::duration")]
    pub lock_ttl: Duration,
    /// Run `prod validate`'s checks before every deploy (`--no-validate` skips them).
    pub validate: bool,
    /// Back up every `[backup]` source before every deploy (`--backup` for one).
    pub backup: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hooks {
    pub pre_deploy: Option<Vec<String>>,
    pub post_deploy: Option<Vec<String>>,
    pub post_rollback: Option<Vec<String>>,
    #[serde(with = "units::duration")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Platform {
    pub name: String,
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Daemon {
    /// The API's Unix socket (mode 0600).
    pub socket: PathBuf,
    /// The remote API's address (HTTPS with tokens), when served.
    pub listen: Option<std::net::SocketAddr>,
    /// Its certificate and key files; none: self-signed in the state directory.
    pub tls: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Process,
    Docker,
    /// A Docker Swarm's tasks (docs/swarm.md); the container settings are `docker`'s.
    Swarm,
}

impl RuntimeKind {
    /// Runs in a container (docker or swarm): an image, `container_port`, resources.
    pub fn is_container(self) -> bool {
        matches!(self, RuntimeKind::Docker | RuntimeKind::Swarm)
    }
}

/// `[swarm]`: the Swarm manager's Engine API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SwarmCluster {
    /// None: `DOCKER_HOST`, else the local socket.
    pub endpoint: Option<String>,
    /// Each node's own engine by hostname, for its tasks' CPU and memory: a manager cannot
    /// read another node's container stats.
    pub node_engines: std::collections::BTreeMap<String, String>,
}

/// What a Swarm task's restart policy is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwarmRestart {
    Any,
    OnFailure,
    None,
}

/// How a `runtime = "swarm"` service's tasks are placed and restarted.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SwarmSettings {
    pub constraints: Vec<String>,
    /// `spread=DESCRIPTOR` each.
    pub preferences: Vec<String>,
    pub restart: SwarmRestart,
    #[serde(with = "units::duration")]
    pub restart_delay: Duration,
    pub restart_max_attempts: u32,
}

/// How a `runtime = "docker"` service's containers run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DockerSettings {
    /// With `{version}` (and `{service}`) still in it.
    pub image: String,
    pub container_port: u16,
    pub entrypoint: Option<Vec<String>>,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub user: Option<String>,
    pub read_only: bool,
    pub volumes: Vec<String>,
    /// Default: one network per platform, `tcf-NAME`.
    pub network: String,
    /// `never` (default: images are built locally) or `missing`.
    pub pull_missing: bool,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Service {
    pub name: String,
    pub runtime: RuntimeKind,
    /// argv; `{version}`, `{service}` and `{instance}` are replaced per instance.
    pub command: Vec<String>,
    /// The version `up` starts when nothing was deployed yet.
    pub version: String,
    /// The public address the proxy serves for this service.
    pub listen: SocketAddr,
    pub instances: u32,
    pub env: BTreeMap<String, String>,
    pub depends_on: Vec<String>,
    pub health: Health,
    #[serde(with = "units::duration")]
    pub stop_timeout: Duration,
    pub max_request_body: u64,
    #[serde(with = "units::duration")]
    pub upstream_timeout: Duration,
    #[serde(with = "units::duration")]
    pub connect_timeout: Duration,
    pub log_max_size: u64,
    /// What the proxy refuses in a request head.
    pub proxy: ProxyLimits,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerSettings>,
    /// Placement and restarts, for `runtime = "swarm"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm: Option<SwarmSettings>,
    /// HTTPS on `listen` (docs/tls.md); `None`: plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServiceTls>,
}

/// `[services.NAME.proxy]`: limits on a request's head (docs/running.md, "What the proxy
/// refuses") and on idle upgraded connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ProxyLimits {
    /// Request line and header fields together; 431 above it.
    pub max_header_size: u64,
    /// Header fields in one request; 431 above it.
    pub max_headers: u32,
    /// The request line; 414 above it.
    pub max_request_line: u64,
    pub headers_with_underscores: UnderscoreHeaders,
    /// An upgraded connection (WebSocket) that carries no byte either way for this long is
    /// closed.
    #[serde(with = "units::duration")]
    pub tunnel_idle_timeout: Duration,
    /// Write a JSON line per request to `state_dir/logs/access-NAME.log`.
    #[serde(default)]
    pub access_log: bool,
    /// Keep the query string in the access log's paths.
    #[serde(default)]
    pub access_log_query: bool,
}

/// What the proxy does with a request header whose name holds an underscore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderscoreHeaders {
    Forward,
    Drop,
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "probe", rename_all = "lowercase")]
pub enum Probe {
    Http { path: String },
    Tcp,
}

/// The share of healthy instances under which a colour routes to all of its running ones.
pub const DEFAULT_PANIC_THRESHOLD: u32 = 50;

fn default_panic_threshold() -> u32 {
    DEFAULT_PANIC_THRESHOLD
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Health {
    #[serde(flatten)]
    pub probe: Probe,
    #[serde(with = "units::duration")]
    pub interval: Duration,
    #[serde(with = "units::duration")]
    pub timeout: Duration,
    /// Consecutive passes that make an instance healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy instance unhealthy.
    pub unhealthy_threshold: u32,
    /// Percent (0–100) of a colour's instances that must be healthy; below it the colour is
    /// in panic and routes to all of its running instances (Envoy's panic threshold). 0: never.
    #[serde(default = "default_panic_threshold")]
    pub panic_threshold: u32,
    /// Failures during this time after start do not count.
    #[serde(with = "units::duration")]
    pub start_period: Duration,
    /// An instance not healthy this long after start is restarted.
    #[serde(with = "units::duration")]
    pub deadline: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DependencyKind {
    Postgres,
    Redis,
    Qdrant,
    Http,
    Tcp,
}

/// An external endpoint services rely on: probed, never started by us.
#[derive(Debug, Clone, Serialize)]
pub struct Dependency {
    pub name: String,
    pub kind: DependencyKind,
    /// `host:port`, for the TCP-level probes (postgres, redis, tcp).
    pub address: Option<String>,
    /// For http and qdrant probes.
    pub url: Option<String>,
    #[serde(with = "units::duration")]
    pub interval: Duration,
    #[serde(with = "units::duration")]
    pub timeout: Duration,
}

impl Config {
    /// Services in an order where each comes after everything it depends on.
    pub fn start_order(&self) -> Vec<String> {
        let mut order = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        fn visit(
            cfg: &Config,
            name: &str,
            seen: &mut std::collections::BTreeSet<String>,
            order: &mut Vec<String>,
        ) {
            if !seen.insert(name.to_string()) {
                return;
            }
            if let Some(svc) = cfg.services.get(name) {
                for dep in &svc.depends_on {
                    visit(cfg, dep, seen, order);
                }
                order.push(name.to_string());
            }
        }
        for name in self.services.keys() {
            visit(self, name, &mut seen, &mut order);
        }
        order
    }
}

/// The one rule for a version, wherever it comes from (the config, `prod deploy`, a
/// rollback): what an image tag allows — a letter, digit or `_` first, then letters, digits,
/// `_`, `.` and `-`, at most 128 in all. So `.`, `..`, `+`, `/`, spaces and control characters
/// never reach a command template (`./releases/{version}/bin`) or an image name.
pub fn check_version(version: &str) -> Result<(), String> {
    let mut chars = version.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if first_ok && rest_ok && version.len() <= 128 {
        Ok(())
    } else {
        Err(format!(
            "invalid version {:?}: start with a letter, digit or '_', then letters, digits, '_', '.' and '-' (at most 128), as an image tag",
            version
        ))
    }
}

/// Where the config is: the explicit path (from `--config` or `TCF_CONFIG`), else
/// `tcf-platform.toml` in the current directory.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let dir = std::env::current_dir().map_err(|source| ConfigError::Read {
        path: PathBuf::from("."),
        source,
    })?;
    if dir.join(DEFAULT_FILE_NAME).is_file() {
        // Relative, so messages name the file the way the user sees it.
        Ok(PathBuf::from(DEFAULT_FILE_NAME))
    } else {
        Err(ConfigError::NotFound { dir })
    }
}

/// Read, overlay `environment`, resolve and validate the config at `path`.
pub fn load(path: &Path, environment: Option<&str>) -> Result<Config, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    resolve(&abs, &source, environment).map_err(|diagnostics| ConfigError::Invalid {
        rendered: render(path, &source, &diagnostics),
        path: path.to_path_buf(),
        diagnostics,
    })
}
