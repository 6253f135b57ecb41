//! The daemon's API: wire types and a client over the Unix socket.
//!
//! These types are the JSON contract of `--format json` output and of the API; they are not the
//! daemon's domain types. Add fields, never rename or remove them. See docs/api.md.

pub mod client;

use serde::{Deserialize, Serialize};

pub use client::{Client, ClientError};

/// `GET /v1/status`: the platform as it runs now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub platform: String,
    pub services: Vec<ServiceStatus>,
    #[serde(default)]
    pub dependencies: Vec<DependencyStatus>,
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
