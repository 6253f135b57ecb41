//! Monitoring for TCF Platform: metric history, alert rules, notifications, the Prometheus
//! exposition and the health score. The daemon feeds it one [`collect::Tick`] per interval and
//! wires its outputs (events, notifications, API); everything here is testable without a daemon.

pub mod codec;
pub mod collect;
pub mod health;
pub mod host;
pub mod latency;
pub mod notify;
pub mod prom;
pub mod rules;
pub mod store;
pub mod tls;

pub use collect::{BackupTick, Monitor, MonitorError};
pub use store::{Agg, Retention, SeriesStore, StoreError, Value};

/// Milliseconds since the Unix epoch, the store's and the rules' clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// RFC 3339 (UTC, milliseconds) for wire formats that want it (Alertmanager, webhooks).
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}
