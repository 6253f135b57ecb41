//! The monitor's core: turns each tick of raw readings (cumulative proxy counters, instance
//! and host facts) into samples, stores them, keeps the latest values, evaluates the rules and
//! keeps silences and alert history. The daemon does the reading; this does the rest.

use crate::health;
use crate::latency::{self, Sparse};
use crate::rules::{Alert, Evaluator, Matcher, Rule, Silence, State, Transition};
use crate::store::{Agg, Point, Retention, SeriesStore, StoreError, StoreStats, Value};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("monitor state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a silence needs at least one matcher, e.g. service=gateway")]
    NoMatchers,
    #[error("a silence needs an expiry in the future (--for 2h)")]
    NoExpiry,
    #[error("no silence {0}\nhint: `tcf-platform alerts list` shows the silences")]
    UnknownSilence(String),
    #[error(transparent)]
    Rule(#[from] crate::rules::RuleError),
}

/// One colour's cumulative proxy counters.
#[derive(Debug, Clone, Default)]
pub struct ColourTick {
    pub name: String,
    pub version: String,
    pub requests: u64,
    pub responses_2xx: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    pub proxy_errors: u64,
    /// Answers that broke off after their head (also counted in `responses_5xx`).
    pub broken_responses: u64,
    /// Dense, cumulative, the proxy's buckets.
    pub latency: Vec<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct InstanceTick {
    pub id: String,
    pub colour: String,
    pub version: String,
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    /// The instance's memory limit; memory % is of the host's memory without one.
    pub memory_limit_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub restarts: u32,
    pub healthy: bool,
    pub crashloop: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ServiceTick {
    pub name: String,
    pub colours: Vec<ColourTick>,
    pub instances: Vec<InstanceTick>,
    pub healthy_instances: u32,
    /// Days until the first of its HTTPS certificates expires (`None`: plain HTTP).
    pub cert_expiry_days: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct DependencyTick {
    pub name: String,
    pub up: Option<bool>,
    pub latency_ms: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct HostTick {
    pub cpu_percent: Option<f64>,
    pub load1: Option<f64>,
    pub memory: Option<(u64, u64)>,
    pub disk: Option<(u64, u64)>,
    /// Cumulative bytes received and sent.
    pub network: Option<(u64, u64)>,
}

/// The state of the backups, when `[backup]` is configured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackupTick {
    /// Scheduled backups that failed in a row since the last one that succeeded.
    pub scheduled_failures: u32,
    /// Hours since the newest completed backup; None without one.
    pub newest_age_hours: Option<f64>,
    /// Days since a restore-verify last passed (never passed: since the oldest backup, the
    /// time one could have been run); None without backups.
    pub restore_verify_age_days: Option<f64>,
}

/// Everything read at one moment.
#[derive(Debug, Clone, Default)]
pub struct Tick {
    pub at_ms: i64,
    pub services: Vec<ServiceTick>,
    pub dependencies: Vec<DependencyTick>,
    pub host: HostTick,
    pub backup: Option<BackupTick>,
}

/// One transition as `alerts history` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryEntry {
    pub at_ms: i64,
    pub from: State,
    pub silenced: bool,
    pub alert: Alert,
}

/// The health of one service at the last tick.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceHealth {
    pub score: f64,
    pub band: health::Band,
}

const HISTORY_KEPT: usize = 1000;

/// What one tick produced.
#[derive(Debug)]
pub struct Ingested {
    /// Alert transitions, each with whether a silence holds its notification back.
    pub transitions: Vec<(Transition, bool)>,
    /// Samples or history that could not be written (the tick was still evaluated).
    pub write_error: Option<MonitorError>,
}

pub struct Monitor {
    dir: PathBuf,
    store: SeriesStore,
    evaluator: Evaluator,
    last: Option<Tick>,
    latest: BTreeMap<(String, String), f64>,
    health: BTreeMap<String, ServiceHealth>,
    silences: Vec<Silence>,
    history: VecDeque<HistoryEntry>,
    last_evaluation_ms: Option<i64>,
}

pub fn key(target: &str, metric: &str, sub: Option<&str>) -> String {
    match sub {
        Some(s) => format!("{target}/{metric}/{s}"),
        None => format!("{target}/{metric}"),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MonitorError + '_ {
    move |source| MonitorError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write a file whole or not at all: temporary file, fsync, rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), MonitorError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn delta(now: u64, before: u64) -> u64 {
    // A counter that went down was reset (a new pool): everything since counts.
    if now >= before {
        now - before
    } else {
        now
    }
}

/// The pending and firing alerts, kept across restarts.
const ALERTS_FILE: &str = "alerts.json";

impl Monitor {
    /// Open the monitor's state in `dir` (`state_dir/metrics`).
    pub fn open(
        dir: &Path,
        retention: Retention,
        rules: Vec<Rule>,
    ) -> Result<Monitor, MonitorError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let store = SeriesStore::open(dir, retention)?;
        let silences_path = dir.join("silences.json");
        let silences = match std::fs::read(&silences_path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!("ignoring unreadable {}: {e}", silences_path.display());
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        let mut history = VecDeque::new();
        if let Ok(text) = std::fs::read_to_string(dir.join("alerts-history.jsonl")) {
            // A torn last line (a crash mid-append) does not parse and is skipped.
            for line in text.lines() {
                if let Ok(e) = serde_json::from_str::<HistoryEntry>(line) {
                    history.push_back(e);
                }
            }
            while history.len() > HISTORY_KEPT {
                history.pop_front();
            }
        }
        let mut evaluator = Evaluator::new(rules);
        let alerts_path = dir.join(ALERTS_FILE);
        if let Ok(b) = std::fs::read(&alerts_path) {
            match serde_json::from_slice::<Vec<Alert>>(&b) {
                Ok(alerts) => evaluator.restore(alerts),
                Err(e) => tracing::warn!("ignoring unreadable {}: {e}", alerts_path.display()),
            }
        }
        Ok(Monitor {
            dir: dir.to_path_buf(),
            store,
            evaluator,
            last: None,
            latest: BTreeMap::new(),
            health: BTreeMap::new(),
            silences,
            history,
            last_evaluation_ms: None,
        })
    }

    /// Store one tick's samples and, when `evaluate`, run the rules. Evaluation does not depend
    /// on the disk: a full disk (when alerts matter most) still evaluates and notifies, and the
    /// write failure comes back beside the transitions.
    pub fn ingest(&mut self, tick: Tick, evaluate: bool) -> Ingested {
        let samples = self.samples(&tick);
        self.latest = samples
            .iter()
            .filter_map(|(k, v)| match v {
                Value::Gauge(g) => {
                    let mut parts = k.splitn(3, '/');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(t), Some(m), None) => Some(((t.to_string(), m.to_string()), *g)),
                        _ => None,
                    }
                }
                Value::Histogram(_) => None,
            })
            .collect();
        let mut write_error = self
            .store
            .append(tick.at_ms, &samples)
            .err()
            .map(MonitorError::from);
        let at = tick.at_ms;
        self.last = Some(tick);
        let mut transitions = Vec::new();
        if evaluate {
            self.last_evaluation_ms = Some(at);
            for t in self.evaluator.evaluate(at, &self.latest) {
                let silenced = self.is_silenced(&t.alert.labels, at);
                let entry = HistoryEntry {
                    at_ms: at,
                    from: t.from,
                    silenced,
                    alert: t.alert.clone(),
                };
                if let Err(e) = self.append_history(entry) {
                    write_error.get_or_insert(e);
                }
                transitions.push((t, silenced));
            }
            if !transitions.is_empty() {
                if let Err(e) = self.save_alerts() {
                    write_error.get_or_insert(e);
                }
            }
        }
        Ingested {
            transitions,
            write_error,
        }
    }

    fn append_history(&mut self, entry: HistoryEntry) -> Result<(), MonitorError> {
        let path = self.dir.join("alerts-history.jsonl");
        let mut line = serde_json::to_vec(&entry).unwrap_or_default();
        line.push(b'\n');
        // Kept in memory even when the file cannot be written.
        self.history.push_back(entry);
        if self.history.len() > HISTORY_KEPT {
            self.history.pop_front();
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&line))
            .map_err(io_err(&path))
    }

    /// Delete what is past retention (the daemon calls this now and then, not every tick).
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<(), MonitorError> {
        self.store.enforce_retention(now_ms)?;
        // Keep the history file from growing without bound: rewrite it with what is kept.
        let path = self.dir.join("alerts-history.jsonl");
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > 4 * 1024 * 1024) {
            let mut text = Vec::new();
            for e in &self.history {
                text.extend(serde_json::to_vec(e).unwrap_or_default());
                text.push(b'\n');
            }
            write_atomically(&path, &text)?;
        }
        Ok(())
    }

    /// The samples of a tick: service, colour, instance, dependency and host series.
    fn samples(&mut self, tick: &Tick) -> Vec<(String, Value)> {
        let mut out: Vec<(String, Value)> = Vec::new();
        let mut gauge = |k: String, v: f64| out.push((k, Value::Gauge(v)));
        let prev = self.last.as_ref();
        let secs = prev
            .map(|p| (tick.at_ms - p.at_ms) as f64 / 1000.0)
            .filter(|s| *s > 0.0);
        let host_memory = tick.host.memory.map(|(_, total)| total);
        self.health.clear();
        let mut hists: Vec<(String, Sparse)> = Vec::new();
        for svc in &tick.services {
            let name = svc.name.as_str();
            let (mut svc_ratio, mut svc_p99) = (None, None);
            // Counter deltas need the previous tick (not after a restart's first tick).
            if let (Some(prev), Some(secs)) = (prev, secs) {
                let before = prev.services.iter().find(|s| s.name == svc.name);
                let (mut req, mut ok, mut e4, mut e5, mut pe, mut broken) =
                    (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
                let mut hist = vec![0u64; latency::BUCKETS];
                for c in &svc.colours {
                    let b = before.and_then(|s| {
                        s.colours
                            .iter()
                            .find(|x| x.name == c.name && x.version == c.version)
                    });
                    let zero = ColourTick::default();
                    let b = b.unwrap_or(&zero);
                    let (r, e, p) = (
                        delta(c.requests, b.requests),
                        delta(c.responses_5xx, b.responses_5xx),
                        delta(c.proxy_errors, b.proxy_errors),
                    );
                    let reset = c.requests < b.requests;
                    for (i, n) in c.latency.iter().enumerate().take(latency::BUCKETS) {
                        let was = if reset {
                            0
                        } else {
                            b.latency.get(i).copied().unwrap_or(0)
                        };
                        hist[i] += n.saturating_sub(was);
                    }
                    gauge(key(name, "requests", Some(&c.name)), r as f64);
                    gauge(key(name, "errors_5xx", Some(&c.name)), e as f64);
                    let (r2, r4) = (
                        delta(c.responses_2xx, b.responses_2xx),
                        delta(c.responses_4xx, b.responses_4xx),
                    );
                    gauge(key(name, "responses_2xx", Some(&c.name)), r2 as f64);
                    gauge(key(name, "responses_4xx", Some(&c.name)), r4 as f64);
                    ok += r2;
                    e4 += r4;
                    req += r;
                    e5 += e;
                    pe += p;
                    broken += delta(c.broken_responses, b.broken_responses);
                }
                gauge(key(name, "requests", None), req as f64);
                gauge(key(name, "requests_per_s", None), req as f64 / secs);
                gauge(key(name, "responses_2xx", None), ok as f64);
                gauge(key(name, "responses_4xx", None), e4 as f64);
                gauge(key(name, "errors_5xx", None), e5 as f64);
                gauge(key(name, "proxy_errors", None), pe as f64);
                gauge(key(name, "broken_responses", None), broken as f64);
                let sparse = latency::sparse(&hist);
                if req > 0 {
                    let ratio = e5 as f64 / req as f64;
                    svc_ratio = Some(ratio);
                    gauge(key(name, "error_ratio_5xx", None), ratio);
                    if let Some(p) = latency::quantile_ms(&sparse, 0.5) {
                        gauge(key(name, "p50_ms", None), p);
                    }
                    svc_p99 = latency::quantile_ms(&sparse, 0.99);
                    if let Some(p) = svc_p99 {
                        gauge(key(name, "p99_ms", None), p);
                    }
                }
                if !sparse.is_empty() {
                    hists.push((key(name, "latency", None), sparse));
                }
            }
            let (mut cpu_max, mut mem_max, mut rss, mut fds, mut restarts, mut crash) =
                (0.0f64, 0.0f64, 0u64, 0u64, 0u64, 0u64);
            for i in &svc.instances {
                let limit = i.memory_limit_bytes.or(host_memory).filter(|l| *l > 0);
                let mem = limit.map_or(0.0, |l| i.rss_bytes as f64 / l as f64 * 100.0);
                cpu_max = cpu_max.max(i.cpu_percent);
                mem_max = mem_max.max(mem);
                rss += i.rss_bytes;
                fds += i.open_fds.unwrap_or(0);
                restarts += u64::from(i.restarts);
                crash += u64::from(i.crashloop);
                gauge(key(name, "cpu_percent", Some(&i.id)), i.cpu_percent);
                gauge(key(name, "rss_bytes", Some(&i.id)), i.rss_bytes as f64);
                if let Some(f) = i.open_fds {
                    gauge(key(name, "open_fds", Some(&i.id)), f as f64);
                }
            }
            gauge(key(name, "cpu_percent", None), cpu_max);
            gauge(key(name, "memory_percent", None), mem_max);
            gauge(key(name, "rss_bytes", None), rss as f64);
            gauge(key(name, "open_fds", None), fds as f64);
            gauge(key(name, "restarts", None), restarts as f64);
            gauge(key(name, "crashloop_instances", None), crash as f64);
            if let Some(days) = svc.cert_expiry_days {
                gauge(key(name, "cert_expiry_days", None), days);
            }
            gauge(key(name, "instances", None), svc.instances.len() as f64);
            gauge(
                key(name, "healthy_instances", None),
                f64::from(svc.healthy_instances),
            );
            let score = health::score(
                cpu_max,
                mem_max,
                svc_p99.unwrap_or(0.0),
                svc_ratio.unwrap_or(0.0) * 100.0,
            );
            self.health.insert(
                name.to_string(),
                ServiceHealth {
                    score,
                    band: health::Band::of(score),
                },
            );
        }
        for d in &tick.dependencies {
            if let Some(up) = d.up {
                gauge(key(&d.name, "dependency_up", None), f64::from(u8::from(up)));
            }
            if let Some(ms) = d.latency_ms {
                gauge(key(&d.name, "dependency_latency_ms", None), ms);
            }
        }
        let h = &tick.host;
        if let Some(b) = &tick.backup {
            gauge(
                key("backup", "backup_failures", None),
                f64::from(b.scheduled_failures),
            );
            if let Some(h) = b.newest_age_hours {
                gauge(key("backup", "backup_age_hours", None), h);
            }
            if let Some(d) = b.restore_verify_age_days {
                gauge(key("backup", "restore_verify_age_days", None), d);
            }
        }
        if let Some(c) = h.cpu_percent {
            gauge(key("host", "host_cpu_percent", None), c);
        }
        if let Some(l) = h.load1 {
            gauge(key("host", "load1", None), l);
        }
        if let Some((used, total)) = h.memory {
            gauge(key("host", "memory_used_bytes", None), used as f64);
            if total > 0 {
                gauge(
                    key("host", "host_memory_percent", None),
                    used as f64 / total as f64 * 100.0,
                );
            }
        }
        if let Some((used, total)) = h.disk {
            gauge(key("host", "disk_used_bytes", None), used as f64);
            if total > 0 {
                gauge(
                    key("host", "disk_percent", None),
                    used as f64 / total as f64 * 100.0,
                );
            }
        }
        if let (Some((rx, tx)), Some(Some((prx, ptx))), Some(secs)) =
            (h.network, prev.map(|p| p.host.network), secs)
        {
            gauge(
                key("host", "net_rx_bytes_per_s", None),
                delta(rx, prx) as f64 / secs,
            );
            gauge(
                key("host", "net_tx_bytes_per_s", None),
                delta(tx, ptx) as f64 / secs,
            );
        }
        out.extend(hists.into_iter().map(|(k, h)| (k, Value::Histogram(h))));
        out
    }
}

impl Monitor {
    pub fn last_tick(&self) -> Option<&Tick> {
        self.last.as_ref()
    }

    /// Latest service-level values by (target, metric).
    pub fn latest(&self) -> &BTreeMap<(String, String), f64> {
        &self.latest
    }

    pub fn health(&self) -> &BTreeMap<String, ServiceHealth> {
        &self.health
    }

    pub fn rules(&self) -> &[Rule] {
        self.evaluator.rules()
    }

    /// Replace the rules (a config reload); alerts of rules that remain keep their state.
    pub fn set_rules(&mut self, rules: Vec<Rule>) {
        if rules != self.evaluator.rules() {
            self.evaluator = Evaluator::new(rules);
        }
    }

    pub fn active_alerts(&self) -> Vec<Alert> {
        self.evaluator.active().cloned().collect()
    }

    pub fn last_evaluation_ms(&self) -> Option<i64> {
        self.last_evaluation_ms
    }

    pub fn history(&self, limit: usize) -> Vec<HistoryEntry> {
        let skip = self.history.len().saturating_sub(limit);
        self.history.iter().skip(skip).cloned().collect()
    }

    pub fn store_stats(&self) -> StoreStats {
        self.store.stats()
    }

    /// Every stored series key with its kind.
    pub fn series(&self) -> Vec<(String, bool)> {
        self.store
            .series()
            .iter()
            .map(|s| (s.key.clone(), s.kind == crate::store::Kind::Histogram))
            .collect()
    }

    pub fn query(
        &self,
        key: &str,
        since_ms: i64,
        until_ms: i64,
        step: Duration,
        agg: Agg,
        now_ms: i64,
    ) -> Result<Vec<Point>, MonitorError> {
        Ok(self
            .store
            .query(key, since_ms, until_ms, step, agg, now_ms)?)
    }

    /// The last complete clock hour's average of `metric` for `target` against the same hour
    /// on each of the previous 14 days, all from the 1-hour rollups (one read).
    pub fn trend(&self, target: &str, metric: &str, now_ms: i64) -> Option<health::Trend> {
        const HOUR: i64 = 3_600_000;
        const DAY: i64 = 24 * HOUR;
        let last_hour = now_ms - now_ms.rem_euclid(HOUR) - HOUR;
        let points = self
            .store
            .query(
                &key(target, metric, None),
                last_hour - 14 * DAY,
                last_hour + HOUR,
                Duration::from_secs(3600),
                Agg::Avg,
                now_ms,
            )
            .ok()?;
        let current = points.iter().find(|p| p.at_ms == last_hour)?.value;
        let history: Vec<f64> = points
            .iter()
            .filter(|p| p.at_ms < last_hour && (last_hour - p.at_ms) % DAY == 0)
            .map(|p| p.value)
            .collect();
        Some(health::trend(metric, current, &history))
    }

    fn is_silenced(&self, labels: &BTreeMap<String, String>, now_ms: i64) -> bool {
        self.silences.iter().any(|s| s.silences(labels, now_ms))
    }

    /// Whether a notification about `labels` would be silenced now.
    pub fn silenced(&self, labels: &BTreeMap<String, String>, now_ms: i64) -> bool {
        self.is_silenced(labels, now_ms)
    }

    /// Silences not yet expired.
    pub fn silences(&self, now_ms: i64) -> Vec<Silence> {
        self.silences
            .iter()
            .filter(|s| s.ends_ms > now_ms)
            .cloned()
            .collect()
    }

    /// The pending and firing alerts, for the next process (`Evaluator::restore`).
    fn save_alerts(&self) -> Result<(), MonitorError> {
        let active: Vec<&Alert> = self.evaluator.active().collect();
        let bytes = serde_json::to_vec(&active).unwrap_or_default();
        write_atomically(&self.dir.join(ALERTS_FILE), &bytes)
    }

    fn save_silences(&self) -> Result<(), MonitorError> {
        let bytes = serde_json::to_vec_pretty(&self.silences).unwrap_or_default();
        write_atomically(&self.dir.join("silences.json"), &bytes)
    }

    pub fn add_silence(
        &mut self,
        matchers: &[String],
        duration: Duration,
        author: &str,
        comment: &str,
        now_ms: i64,
    ) -> Result<Silence, MonitorError> {
        if matchers.is_empty() {
            return Err(MonitorError::NoMatchers);
        }
        if duration.is_zero() {
            return Err(MonitorError::NoExpiry);
        }
        let matchers = matchers
            .iter()
            .map(|m| Matcher::parse(m))
            .collect::<Result<Vec<_>, _>>()?;
        // Expired silences are dropped when a new one is written.
        self.silences.retain(|s| s.ends_ms > now_ms);
        let silence = Silence {
            id: format!("s{now_ms:x}{:04x}", fastrand_u16(now_ms)),
            matchers,
            starts_ms: now_ms,
            ends_ms: now_ms + duration.as_millis() as i64,
            author: author.to_string(),
            comment: comment.to_string(),
        };
        self.silences.push(silence.clone());
        self.save_silences()?;
        Ok(silence)
    }

    /// End a silence now.
    pub fn expire_silence(&mut self, id: &str, now_ms: i64) -> Result<Silence, MonitorError> {
        let s = self
            .silences
            .iter_mut()
            .find(|s| s.id == id && s.ends_ms > now_ms)
            .ok_or_else(|| MonitorError::UnknownSilence(id.to_string()))?;
        s.ends_ms = now_ms;
        let out = s.clone();
        self.save_silences()?;
        Ok(out)
    }
}

/// A little entropy for silence ids (two created in the same millisecond differ).
fn fastrand_u16(seed: i64) -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    ((seed as u64 ^ (n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ u64::from(std::process::id())) >> 7)
        as u16
}

/// What `prod monitor` turned on or off; persisted so a restart keeps the choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub collecting: bool,
    /// Alert evaluation and notification.
    pub alerts: bool,
}

impl Control {
    pub fn load(dir: &Path, default: Control) -> Control {
        std::fs::read(dir.join("control.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(default)
    }

    pub fn save(&self, dir: &Path) -> Result<(), MonitorError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        write_atomically(&dir.join("control.json"), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::build_rules;

    fn tick(at_s: i64, requests: u64, errors: u64) -> Tick {
        let mut latency = vec![0u64; latency::BUCKETS];
        latency[40] = requests;
        Tick {
            at_ms: 1_764_000_000_000 + at_s * 1000,
            services: vec![ServiceTick {
                name: "gateway".into(),
                colours: vec![ColourTick {
                    name: "blue".into(),
                    version: "v1".into(),
                    requests,
                    responses_2xx: requests - errors,
                    responses_4xx: 0,
                    responses_5xx: errors,
                    proxy_errors: 0,
                    broken_responses: 0,
                    latency,
                }],
                instances: vec![InstanceTick {
                    id: "gateway-blue-1".into(),
                    colour: "blue".into(),
                    version: "v1".into(),
                    cpu_percent: 20.0,
                    rss_bytes: 50 << 20,
                    memory_limit_bytes: Some(100 << 20),
                    open_fds: Some(12),
                    restarts: 0,
                    healthy: true,
                    crashloop: false,
                }],
                healthy_instances: 1,
                cert_expiry_days: Some(90.0),
            }],
            dependencies: vec![DependencyTick {
                name: "postgres".into(),
                up: Some(false),
                latency_ms: None,
            }],
            host: HostTick {
                memory: Some((1 << 30, 4 << 30)),
                ..Default::default()
            },
            backup: None,
        }
    }

    #[test]
    fn firing_alerts_survive_a_restart_without_a_new_notification() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = BTreeMap::new();
        o.insert(
            "high_5xx_ratio".to_string(),
            crate::rules::RuleOverride {
                for_: Some(Duration::ZERO),
                ..Default::default()
            },
        );
        o.insert(
            "dependency_down".to_string(),
            crate::rules::RuleOverride {
                enabled: Some(false),
                ..Default::default()
            },
        );
        let rules = build_rules(&o).unwrap();
        let firing = |m: &Monitor| {
            m.active_alerts()
                .iter()
                .any(|a| a.rule == "high_5xx_ratio" && a.state == State::Firing)
        };
        {
            let mut m = Monitor::open(dir.path(), Retention::default(), rules.clone()).unwrap();
            let mut errors = 0;
            for at in 0..4 {
                m.ingest(tick(at * 5, 100 * (at as u64 + 1), errors), true);
                errors += 50;
            }
            assert!(firing(&m));
        }
        let mut m = Monitor::open(dir.path(), Retention::default(), rules).unwrap();
        assert!(firing(&m), "restored from alerts.json");
        // The first tick after a restart has no rates (nothing to difference): the alert keeps
        // firing, and no transition (no notification) comes out.
        assert!(m.ingest(tick(30, 1000, 400), true).transitions.is_empty());
        assert!(m.ingest(tick(35, 1100, 450), true).transitions.is_empty());
        assert!(firing(&m));
        // Errors stop: it resolves as it would have without the restart.
        let t = m.ingest(tick(40, 1200, 450), true).transitions;
        assert!(
            t.iter().any(|(t, _)| t.alert.state == State::Resolved),
            "{t:?}"
        );
    }

    #[test]
    fn backup_failures_and_a_stale_restore_verify_raise_the_builtin_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let rules = build_rules(&BTreeMap::new()).unwrap();
        let mut m = Monitor::open(dir.path(), Retention::default(), rules).unwrap();
        let with_backup = |at_s: i64, failures: u32, verify_days: f64| {
            let mut t = tick(at_s, 0, 0);
            t.backup = Some(BackupTick {
                scheduled_failures: failures,
                newest_age_hours: Some(2.0),
                restore_verify_age_days: Some(verify_days),
            });
            t
        };
        let firing = |m: &Monitor| {
            let mut names: Vec<String> = m
                .active_alerts()
                .into_iter()
                .filter(|a| a.state == State::Firing && a.target == "backup")
                .map(|a| a.rule)
                .collect();
            names.sort();
            names
        };
        m.ingest(with_backup(0, 0, 1.0), true);
        assert!(firing(&m).is_empty());
        m.ingest(with_backup(5, 1, 8.5), true);
        assert_eq!(firing(&m), ["backup_failed", "restore_verify_stale"]);
        let l = m.latest();
        assert_eq!(l[&("backup".into(), "backup_failures".into())], 1.0);
        assert_eq!(l[&("backup".into(), "backup_age_hours".into())], 2.0);
        // A successful run and a fresh restore-verify resolve both.
        m.ingest(with_backup(10, 0, 0.1), true);
        assert!(firing(&m).is_empty());
    }

    #[test]
    fn counters_become_rates_ratios_alerts_and_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut rules = BTreeMap::new();
        rules.insert(
            "high_5xx_ratio".to_string(),
            crate::rules::RuleOverride {
                for_: Some(Duration::from_secs(10)),
                ..Default::default()
            },
        );
        rules.insert(
            "dependency_down".to_string(),
            crate::rules::RuleOverride {
                enabled: Some(false),
                ..Default::default()
            },
        );
        let rules = build_rules(&rules).unwrap();
        let mut m = Monitor::open(dir.path(), Retention::default(), rules.clone()).unwrap();
        assert!(m.ingest(tick(0, 100, 0), true).transitions.is_empty());
        // 100 requests in 5 s, 20 of them 5xx: pending, then firing 10 s later.
        let t = m.ingest(tick(5, 200, 20), true).transitions;
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0.alert.state, State::Pending);
        let l = m.latest();
        assert_eq!(l[&("gateway".into(), "requests_per_s".into())], 20.0);
        assert_eq!(l[&("gateway".into(), "error_ratio_5xx".into())], 0.2);
        assert_eq!(l[&("gateway".into(), "responses_2xx".into())], 80.0);
        assert_eq!(l[&("gateway".into(), "responses_4xx".into())], 0.0);
        assert_eq!(l[&("gateway".into(), "memory_percent".into())], 50.0);
        assert_eq!(l[&("gateway".into(), "cert_expiry_days".into())], 90.0);
        // score: 0.3·80 + 0.3·50 + 0.2·(100 − p99/10) + 0.2·(100 − 100)
        let h = &m.health()["gateway"];
        assert!(h.score > 50.0 && h.score < 60.0, "{h:?}");
        m.ingest(tick(10, 300, 40), true);
        let silence = m
            .add_silence(
                &["alertname=high_5xx_ratio".into()],
                Duration::from_secs(3600),
                "ops",
                "known",
                1_764_000_000_000,
            )
            .unwrap();
        let t = m.ingest(tick(15, 400, 60), true).transitions;
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0.alert.state, State::Firing);
        assert!(t[0].1, "silenced");
        let t = m.ingest(tick(20, 500, 60), true).transitions;
        assert_eq!(t[0].0.alert.state, State::Resolved);
        drop(m);

        let m = Monitor::open(dir.path(), Retention::default(), rules).unwrap();
        let states: Vec<State> = m.history(10).iter().map(|e| e.alert.state).collect();
        assert_eq!(states, vec![State::Pending, State::Firing, State::Resolved]);
        assert_eq!(m.silences(1_764_000_000_000)[0].id, silence.id);
        let pts = m
            .query(
                "gateway/requests",
                1_764_000_000_000,
                1_764_000_060_000,
                Duration::from_secs(5),
                Agg::Sum,
                1_764_000_060_000,
            )
            .unwrap();
        assert_eq!(pts.iter().map(|p| p.value).sum::<f64>(), 400.0);
        assert!(m.series().iter().any(|(k, h)| k == "gateway/latency" && *h));
    }

    #[test]
    fn trend_against_the_same_hour_on_previous_days() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Monitor::open(dir.path(), Retention::default(), Vec::new()).unwrap();
        const DAY_S: i64 = 86_400;
        let mut total = 0u64;
        // Four days of 5-minute ticks: 10 req/s, except 11:00-12:00 on the last day (40 req/s)
        // and a little day-to-day variation at that hour before.
        for t in 0..(4 * DAY_S / 300 + 2) {
            let at_s = t * 300;
            let day = at_s / DAY_S;
            let hour = at_s % DAY_S / 3600;
            let rate = match (day, hour) {
                (3, 11) => 40,
                (_, 11) => 10 + day as u64,
                _ => 10,
            };
            total += rate * 300;
            let mut tk = tick(0, total, 0);
            tk.at_ms = 1_764_028_800_000 + at_s * 1000;
            assert!(m.ingest(tk, false).write_error.is_none());
        }
        // "Now" is 12:30 on day 3: the last complete hour is 11:00.
        let now = 1_764_028_800_000 + (3 * DAY_S + 12 * 3600 + 1800) * 1000;
        let t = m.trend("gateway", "requests_per_s", now).unwrap();
        assert_eq!(t.baseline_days, 3, "{t:?}");
        assert!((t.last_hour - 40.0).abs() < 0.5, "{t:?}");
        assert!(t.anomaly, "{t:?}");
    }

    #[test]
    fn control_persists() {
        let dir = tempfile::tempdir().unwrap();
        let on = Control {
            collecting: true,
            alerts: true,
        };
        assert_eq!(Control::load(dir.path(), on), on);
        let off = Control {
            collecting: false,
            alerts: false,
        };
        off.save(dir.path()).unwrap();
        assert_eq!(Control::load(dir.path(), on), off);
    }
}
