//! The daemon's API: wire types and a client over the Unix socket.
//!
//! These types are the JSON contract of `--format json` output and of the API; they are not the
//! daemon's domain types. Add fields, never rename or remove them. See docs/api.md.

pub mod access;
pub mod backup;
pub mod client;
pub mod monitor;
pub mod remote;
pub mod tls;

use serde::{Deserialize, Serialize};

pub use client::{Client, ClientError};

/// `GET /v1/status`: the platform as it runs now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub platform: String,
    pub services: Vec<ServiceStatus>,
    #[serde(default)]
    pub dependencies: Vec<DependencyStatus>,
    /// The deploy or rollback running now, if any.
    #[serde(default)]
    pub deploy_in_progress: Option<String>,
    /// Problems the operator must know about (a state store deleted behind the daemon's back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The remote API, when `[daemon] listen` serves it: where, and the certificate to pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<access::ApiEndpoint>,
    /// The Swarm's nodes, when a service runs on one (docs/swarm.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeStatus>,
}

/// One node of the Swarm the platform's `runtime = "swarm"` services run on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// Its hostname.
    pub name: String,
    /// The address tasks on it are reached at.
    pub addr: String,
    /// ready | down | unknown | disconnected (as the Swarm's managers see it)
    pub state: String,
    /// active | pause | drain
    pub availability: String,
    pub manager: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    /// The version serving traffic.
    pub version: String,
    /// The public address the proxy serves.
    pub listen: String,
    /// True when at least one instance is healthy and in the proxy's pool.
    pub healthy: bool,
    /// Where requests go: colours with their versions and weights (percent).
    #[serde(default)]
    pub traffic: Vec<Traffic>,
    pub instances: Vec<InstanceStatus>,
    /// Present when asked for with `?metrics=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<ServiceMetrics>,
    /// The config file on disk says something else for this service than what runs (its
    /// command, env, health...; not the version, which applies to a first start only): the
    /// next deploy of it applies the file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub config_changed: bool,
    /// Secrets the service refers to that changed since its instances started: the next
    /// deploy or rollback picks up the new values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale_secrets: Vec<String>,
    /// Present while the service is in maintenance (every request answered 503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// True while a colour with traffic is in panic: too few of its instances are healthy,
    /// so the proxy routes to all of its running ones (docs/deploys.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub panic: bool,
    /// How many times the service went into panic since the daemon started.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub panics: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A service taken out of service: its proxy answers every request 503 with `Retry-After`,
/// its instances keep running.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Maintenance {
    pub retry_after_s: u32,
    pub reason: String,
    /// RFC 3339, UTC.
    pub since: String,
    /// Who put it there.
    pub by: String,
}

/// `POST /v1/maintenance`: put services in maintenance (`on`) or back in service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MaintenanceRequest {
    pub services: Vec<String>,
    pub on: bool,
    /// What clients are told to wait (seconds); default 60.
    #[serde(default)]
    pub retry_after_s: Option<u32>,
    #[serde(default)]
    pub reason: String,
    /// Who asks (`user@host`); the daemon records the caller it identified.
    #[serde(default)]
    pub actor: String,
}

/// The answer to `POST /v1/maintenance`: the services whose state changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MaintenanceResponse {
    pub changed: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Traffic {
    pub colour: String,
    pub version: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceStatus {
    pub id: String,
    /// blue or green: the slot this instance's version runs in.
    #[serde(default)]
    pub colour: String,
    pub version: String,
    pub pid: Option<u32>,
    /// The internal port the instance listens on.
    pub port: u16,
    /// starting | running | backoff | crashloop | stopping | stopped
    pub state: String,
    /// unknown | healthy | unhealthy
    pub health: String,
    pub restarts: u32,
    pub uptime_s: u64,
    /// The runtime's own health view, such as a container's HEALTHCHECK state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_health: Option<String>,
    /// The machine it runs on when its runtime spreads instances over several (a Swarm
    /// node's hostname); null on this host.
    #[serde(default)]
    pub node: Option<String>,
}

/// Proxy and process metrics of one service over the last window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceMetrics {
    /// Length of the window the rates and latencies were measured over.
    pub window_s: f64,
    pub requests_per_s: f64,
    pub errors_5xx_per_s: f64,
    /// Share of responses with status >= 500 in the window (0..1).
    pub error_ratio_5xx: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Sum over the service's instances; 100 is one full core.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    /// Health score 0..100 (docs/monitoring.md) over the window.
    #[serde(default)]
    pub health_score: Option<f64>,
    /// The score's band: excellent, good, warning or critical.
    #[serde(default)]
    pub health_band: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DependencyStatus {
    pub name: String,
    pub kind: String,
    pub target: String,
    /// None until the first probe finished.
    pub healthy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One state change from the audit trail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub id: i64,
    /// RFC 3339, UTC.
    pub time: String,
    pub actor: String,
    pub kind: String,
    pub service: Option<String>,
    pub instance: Option<String>,
    pub message: String,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
}

/// `POST /v1/daemon/handover`: start a new daemon (this binary, or `binary`) that takes over
/// the listeners and instances without dropping a request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HandoverRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
}

/// The answer once the new daemon serves; the old one is draining and exits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HandoverResponse {
    pub old_pid: u32,
    pub new_pid: u32,
    pub binary: String,
}

/// `POST /v1/reload`: what the config file changed, applied by the daemon that took over.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReloadResponse {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub scaled: Vec<ScaleChange>,
    /// Services whose settings changed: switched blue-green to instances with the new ones.
    pub changed: Vec<String>,
    pub old_pid: u32,
    pub new_pid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScaleChange {
    pub service: String,
    pub from: u32,
    pub to: u32,
}

/// `POST /v1/down`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DownResponse {
    pub stopping: bool,
}

/// `GET /v1/ping`: who answers on this socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ping {
    pub platform: String,
    pub pid: u32,
    pub version: String,
    pub config: String,
}

/// `POST /v1/deploy`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeployRequest {
    pub version: String,
    /// Back up every `[backup]` source first (absent: the config's `[deploy] backup`).
    #[serde(default)]
    pub backup: Option<bool>,
    /// Run `prod validate`'s checks first (absent: the config's `[deploy] validate`).
    #[serde(default)]
    pub validate: Option<bool>,
    /// Failed checks only warn (a missing artifact still stops the deploy).
    #[serde(default)]
    pub force: bool,
    /// Empty: every service.
    #[serde(default)]
    pub services: Vec<String>,
    /// blue_green (default), canary or rolling.
    pub strategy: Option<String>,
    pub reason: Option<String>,
    /// How long to wait for a held deploy lock; 0 fails at once.
    #[serde(default)]
    pub lock_wait_ms: u64,
    /// Who asks, for the audit trail (`user@host`).
    pub actor: String,
}

/// `POST /v1/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RollbackRequest {
    /// None: the version each service ran before its current one.
    pub version: Option<String>,
    #[serde(default)]
    pub services: Vec<String>,
    pub reason: Option<String>,
    #[serde(default)]
    pub lock_wait_ms: u64,
    pub actor: String,
}

/// One line of the NDJSON stream a deploy or rollback answers with. The last line has `result`.
/// `tcf-platform restart SERVICE...`: the running version again, instance by instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestartRequest {
    pub services: Vec<String>,
    pub reason: Option<String>,
    #[serde(default)]
    pub lock_wait_ms: u64,
    pub actor: String,
}

/// `tcf-platform scale SERVICE N`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScaleRequest {
    pub service: String,
    pub instances: u32,
    pub reason: Option<String>,
    #[serde(default)]
    pub lock_wait_ms: u64,
    pub actor: String,
}

/// `tcf-platform prod validate`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ValidateRequest {
    /// The version to check; absent: each service's serving version.
    pub version: Option<String>,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub check_dependencies: bool,
    #[serde(default)]
    pub security_scan: bool,
}

/// One check of `prod validate` (and of the deploy gate).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ValidateCheck {
    /// Stable: `VAL-ARTIFACT`, `VAL-LOCK`... (docs/deploys.md).
    pub id: String,
    /// `pass`, `fail`, or `warn` (could not check, or worth knowing without blocking).
    pub state: String,
    pub service: Option<String>,
    pub message: String,
    pub remedy: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ValidateReport {
    /// No check failed.
    pub ready: bool,
    pub checks: Vec<ValidateCheck>,
}

/// `tcf-platform prod abort`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AbortRequest {
    pub actor: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AbortResponse {
    /// The release asked to stop and revert.
    pub aborting: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProgressLine {
    pub time: String,
    /// The event kind, such as `deploy.health_gate` or `deploy.switched`.
    pub step: String,
    pub service: Option<String>,
    pub message: String,
    pub release: Option<i64>,
    /// Only on the last line: deployed, rolled_back, failed, reverted, lock_held, invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Only on the last line: 0 deployed, 1 failed and reverted, 2 usage or config, 3 lock held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
    /// Only on the last line of a backup command's stream that succeeded: its report, as
    /// `--format json` prints it (`backup::BackupEntry`, `BackupVerifyReport`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}

/// `POST /v1/backup/events`: a backup, verify, restore or prune the CLI ran, for the audit trail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupEventRequest {
    /// `backup.created`, `backup.failed`, `backup.verified`, `backup.verify_failed`,
    /// `backup.restored`, `backup.restore_failed` or `backup.pruned`.
    pub kind: String,
    pub message: String,
    /// Who ran it (`user@host`).
    pub actor: String,
}

/// `GET /v1/releases`: one release, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Release {
    pub id: i64,
    pub versions: std::collections::BTreeMap<String, String>,
    pub strategy: String,
    /// active | superseded | failed | reverted | rolled_back | interrupted | in_progress
    pub status: String,
    pub actor: String,
    pub reason: Option<String>,
    pub started: String,
    pub duration_s: Option<f64>,
    /// The backup taken before it started (`prod deploy --backup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
}

/// `GET /v1/lock`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockStatus {
    pub held: bool,
    pub owner: Option<String>,
    pub host: Option<String>,
    pub pid: Option<i64>,
    pub reason: Option<String>,
    pub acquired: Option<String>,
    pub heartbeat: Option<String>,
    pub expires: Option<String>,
}
