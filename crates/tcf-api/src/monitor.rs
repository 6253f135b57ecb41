//! Wire types of the monitoring endpoints: metrics history, alerts, silences, monitor control.
//! Times are RFC 3339 (UTC) strings. See docs/api.md.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `GET /v1/metrics`: every stored series.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricsList {
    pub series: Vec<SeriesInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeriesInfo {
    /// A service, a dependency, or `host`.
    pub target: String,
    pub metric: String,
    /// A colour or an instance for per-colour and per-instance series.
    pub sub: Option<String>,
    /// `gauge` or `histogram` (p50/p99 work on histograms).
    pub kind: String,
}

/// `GET /v1/metrics/query?target=&metric=&sub=&since=&until=&step=&agg=`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricsQuery {
    pub target: String,
    pub metric: String,
    pub sub: Option<String>,
    pub agg: String,
    pub step_s: u64,
    pub since: String,
    pub until: String,
    pub points: Vec<MetricPoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricPoint {
    pub time: String,
    pub value: f64,
}

/// An alert that is pending or firing, or one entry of the history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlertInfo {
    pub rule: String,
    pub service: String,
    /// pending, firing, resolved or inactive (a pending alert that cleared).
    pub state: String,
    pub severity: String,
    pub value: f64,
    pub summary: String,
    pub labels: BTreeMap<String, String>,
    pub active_since: String,
    pub fired_at: Option<String>,
    pub resolved_at: Option<String>,
    /// Notifications about it are held back by a silence.
    pub silenced: bool,
}

/// `GET /v1/alerts`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlertsList {
    pub alerts: Vec<AlertInfo>,
    pub silences: Vec<SilenceInfo>,
    /// Whether alert rules are being evaluated now.
    pub evaluating: bool,
}

/// `GET /v1/alerts/history?limit=N`: transitions, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlertTransition {
    pub time: String,
    pub from: String,
    pub alert: AlertInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SilenceInfo {
    pub id: String,
    pub matchers: Vec<String>,
    pub starts: String,
    pub ends: String,
    pub author: String,
    pub comment: String,
}

/// `POST /v1/alerts/silences`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SilenceRequest {
    pub matchers: Vec<String>,
    /// How long it lasts (mandatory, > 0).
    pub duration_s: u64,
    pub comment: String,
    pub actor: String,
}

/// `POST /v1/alerts/silences/{id}/expire`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UnsilenceRequest {
    pub actor: String,
}

/// `POST /v1/monitor`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MonitorRequest {
    /// start, stop, restart or status.
    pub action: String,
    /// Apply start/stop to alert evaluation and notification rather than collection.
    #[serde(default)]
    pub alerts: bool,
    pub actor: String,
}

/// `POST /v1/dashboard` (`prod monitor --dashboard [--port N]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DashboardRequest {
    /// Serve on this port (of `[monitor.dashboard] listen`'s address, or 127.0.0.1).
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub actor: String,
}

/// The answer to `POST /v1/dashboard`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DashboardStatus {
    pub url: String,
    /// False when it was already running.
    pub started: bool,
}

/// `GET /v1/monitor`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MonitorStatus {
    pub collecting: bool,
    pub alerts: bool,
    pub interval_s: f64,
    /// What each tick collects.
    pub collected: Vec<String>,
    pub series: usize,
    pub bytes_on_disk: u64,
    /// Bytes per raw sample written since the daemon started.
    pub bytes_per_sample: Option<f64>,
    pub last_collection: Option<String>,
    pub last_evaluation: Option<String>,
    pub last_error: Option<String>,
    pub firing: Vec<AlertInfo>,
    pub pending: Vec<AlertInfo>,
    pub notifiers: Vec<NotifierStatus>,
    pub metrics_url: Option<String>,
    pub dashboard_url: Option<String>,
    pub services: Vec<ServiceHealth>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NotifierStatus {
    pub name: String,
    pub kind: String,
    pub last_attempt: Option<String>,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    pub delivered: u64,
    pub failed: u64,
}

/// A service's health score and request-rate trend.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceHealth {
    pub service: String,
    pub score: f64,
    /// excellent, good, warning or critical.
    pub band: String,
    pub trend: Option<Trend>,
}

/// The last hour against the same hour on previous days.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Trend {
    pub metric: String,
    pub last_hour: f64,
    pub baseline_mean: Option<f64>,
    pub baseline_stddev: Option<f64>,
    pub baseline_days: usize,
    pub z: Option<f64>,
    pub anomaly: bool,
}
