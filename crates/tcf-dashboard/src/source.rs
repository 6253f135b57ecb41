//! What the dashboard reads and does, as the daemon provides it. The dashboard never sees the
//! daemon's `Platform`: it gets this narrow view, so its pages are testable alone.

use futures_util::stream::BoxStream;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tcf_api::monitor::{AlertTransition, AlertsList, SilenceInfo};
use tcf_api::{Event, Release, Status};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the daemon refused or could not answer; maps to the page's HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl SourceError {
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode as S;
        match self {
            SourceError::BadRequest(_) => S::BAD_REQUEST,
            SourceError::NotFound(_) => S::NOT_FOUND,
            SourceError::Conflict(_) => S::CONFLICT,
            SourceError::Unavailable(_) => S::SERVICE_UNAVAILABLE,
            SourceError::Internal(_) => S::INTERNAL_SERVER_ERROR,
        }
    }
}

/// One stored series over a time range, one point per `step`.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesQuery {
    pub target: String,
    pub metric: String,
    pub sub: Option<String>,
    pub since_ms: i64,
    pub until_ms: i64,
    pub step: Duration,
    /// avg, max, p99… as the monitor's history understands them.
    pub agg: &'static str,
}

/// A point in time (Unix ms) and its value.
pub type Point = (i64, f64);

/// What a rollback would change (or changed) for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub service: String,
    pub from: String,
    pub to: String,
}

/// The host the daemon runs on, from the last readings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostInfo {
    pub name: String,
    pub cpu_percent: Option<f64>,
    pub memory_percent: Option<f64>,
    pub disk_percent: Option<f64>,
    pub load1: Option<f64>,
}

/// The daemon's side of the dashboard. Reads are cheap views of live state or the stores;
/// actions take the actor the dashboard authenticated, which the daemon records.
pub trait DataSource: Send + Sync + 'static {
    /// The live state, with each service's windowed metrics.
    fn status(&self) -> BoxFuture<'_, Status>;
    /// Events, newest first, at most `limit`, of one service or all.
    fn events(
        &self,
        service: Option<String>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Event>, SourceError>>;
    /// Releases, newest first.
    fn releases(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Release>, SourceError>>;
    fn series(&self, query: SeriesQuery) -> BoxFuture<'_, Result<Vec<Point>, SourceError>>;
    fn alerts(&self) -> BoxFuture<'_, Result<AlertsList, SourceError>>;
    /// Alert transitions, oldest first.
    fn alert_history(
        &self,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<AlertTransition>, SourceError>>;
    fn silence(
        &self,
        matchers: Vec<String>,
        duration: Duration,
        comment: String,
        actor: String,
    ) -> BoxFuture<'_, Result<SilenceInfo, SourceError>>;
    fn unsilence(
        &self,
        id: String,
        actor: String,
    ) -> BoxFuture<'_, Result<SilenceInfo, SourceError>>;
    /// What rolling `service` back to its previous good release would change; nothing runs.
    fn rollback_preview(&self, service: String) -> BoxFuture<'_, Result<Vec<Change>, SourceError>>;
    /// Start that rollback through the daemon's release path; returns once it started.
    fn rollback(
        &self,
        service: String,
        actor: String,
        reason: String,
    ) -> BoxFuture<'_, Result<Vec<Change>, SourceError>>;
    /// The last lines of a service's instances' logs.
    fn logs_tail(
        &self,
        service: String,
        lines: usize,
    ) -> BoxFuture<'_, Result<Vec<String>, SourceError>>;
    fn host(&self) -> BoxFuture<'_, HostInfo>;
    /// Yields whenever something happened (an event was recorded); live pages re-render then.
    fn changes(&self) -> BoxStream<'static, ()>;
}
