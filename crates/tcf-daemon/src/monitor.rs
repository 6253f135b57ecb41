//! The monitor in the daemon: every `[monitor] interval` it reads what the proxy and the
//! supervisor already keep (counters, instance facts), the host and the dependencies, hands the
//! tick to `tcf-monitor` (history, rules), writes one event per alert transition and passes the
//! alerts to the notifiers. It runs on its own task, off the control loop, and takes no lock the
//! proxy's hot path takes; store writes run on a blocking thread.

use crate::platform::{lock, InstanceState, Platform};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tcf_monitor::collect::{
    ColourTick, Control, DependencyTick, HostTick, InstanceTick, ServiceTick, Tick,
};
use tcf_monitor::notify::{DeliverySink, Hub, Receiver, ReceiverKind};
use tcf_monitor::rules::{build_rules, Rule, RuleOverride, State};
use tcf_monitor::{host, Monitor, Retention};

/// How often retention is enforced.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// What a tick collects (for `prod monitor --action status`).
pub const COLLECTED: &[&str] = &[
    "per service and colour: requests, 5xx, proxy errors, latency histogram (p50/p99)",
    "per instance: CPU %, RSS, memory % (of its limit or the host), open fds, restarts, health, crash loops",
    "per dependency: up/down, probe latency",
    "host: CPU %, load, memory used, disk used (state directory), network bytes",
];

pub struct MonitorService {
    pub platform: Arc<Platform>,
    pub dir: PathBuf,
    /// None when the store could not be opened (the error is in `last_error`).
    pub monitor: Mutex<Option<Monitor>>,
    pub control: Mutex<Control>,
    pub hub: Mutex<Option<Hub>>,
    pub last_collection_ms: Mutex<Option<i64>>,
    pub last_error: Mutex<Option<String>>,
    pub metrics_addr: Option<SocketAddr>,
    /// Where the web dashboard answers, once it is served.
    pub dashboard_url: Mutex<Option<String>>,
    /// Wakes the loop at once after a control change.
    wake: tokio::sync::Notify,
}

/// The config's rules on top of the built-in ones.
pub fn rules_from_config(c: &tcf_config::Config) -> Result<Vec<Rule>, String> {
    let overrides: BTreeMap<String, RuleOverride> = c
        .alerts
        .rules
        .iter()
        .map(|(name, r)| {
            (
                name.clone(),
                RuleOverride {
                    metric: r.metric.clone(),
                    services: r.services.clone(),
                    op: r.op.clone(),
                    threshold: r.threshold,
                    for_: r.for_,
                    keep_firing_for: r.keep_firing_for,
                    severity: r.severity.clone(),
                    summary: r.summary.clone(),
                    labels: r.labels.clone(),
                    enabled: r.enabled,
                },
            )
        })
        .collect();
    build_rules(&overrides).map_err(|e| e.to_string())
}

fn receivers_from_config(c: &tcf_config::Config) -> Vec<Receiver> {
    use tcf_config::NotifierKind as K;
    c.alerts
        .notify
        .values()
        .map(|n| {
            let url = n.url.clone().unwrap_or_default();
            let kind = match n.kind {
                K::Webhook => ReceiverKind::Webhook {
                    url,
                    // The key lives in the daemon's environment, never in the config.
                    hmac_secret: n
                        .hmac_secret_env
                        .as_ref()
                        .and_then(|v| std::env::var(v).ok()),
                },
                K::Slack => ReceiverKind::Slack { url },
                K::Alertmanager => ReceiverKind::Alertmanager { url },
                K::Email => ReceiverKind::Email {
                    smtp: n.smtp.clone().unwrap_or_default(),
                    from: n.from.clone().unwrap_or_default(),
                    to: n.to.clone(),
                    starttls: n.starttls,
                },
            };
            Receiver {
                name: n.name.clone(),
                kind,
                group_by: n.group_by.clone(),
                group_wait: n.group_wait,
                group_interval: n.group_interval,
                repeat_interval: n.repeat_interval,
                timeout: n.timeout,
                retries: n.retries,
                ca_file: n.ca_file.clone(),
            }
        })
        .collect()
}

struct EventSink(Arc<Platform>);

impl DeliverySink for EventSink {
    fn failed(&self, receiver: &str, error: &str) {
        self.0.event(
            "alert.delivery_failed",
            None,
            None,
            format!("notifier {receiver}: {error}"),
        );
    }

    fn delivered(&self, receiver: &str, alerts: usize, status: &str) {
        tracing::debug!("notifier {receiver}: delivered {alerts} {status} alert(s)");
    }
}

/// Bind `[monitor] metrics_listen` before anything starts, like every other address.
pub async fn bind_metrics(
    config: &tcf_config::Config,
) -> Result<Option<tokio::net::TcpListener>, crate::DaemonError> {
    let Some(addr) = config.monitor.metrics_listen else {
        return Ok(None);
    };
    tokio::net::TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| crate::DaemonError::Bind {
            service: "[monitor] metrics_listen".into(),
            addr,
            source,
        })
}

impl MonitorService {
    pub(crate) fn open_monitor(p: &Platform, dir: &std::path::Path) -> Result<Monitor, String> {
        let rules = rules_from_config(&p.config)?;
        let m = &p.config.monitor;
        Monitor::open(
            dir,
            Retention {
                raw: m.retention_raw,
                minute: m.retention_1m,
                hour: m.retention_1h,
            },
            rules,
        )
        .map_err(|e| e.to_string())
    }

    pub fn control(&self) -> Control {
        *lock(&self.control)
    }

    /// Apply `prod monitor --action ...`; the choice is saved for the next start.
    pub fn apply(&self, action: &str, alerts: bool, actor: &str) -> Result<(), String> {
        let mut c = self.control();
        let before = c;
        match (action, alerts) {
            ("start", false) => c.collecting = true,
            ("start", true) => {
                c.collecting = true;
                c.alerts = true;
            }
            ("stop", false) => c.collecting = false,
            ("stop", true) => c.alerts = false,
            ("restart", _) => {
                // Reopen the store and rebuild the rules and notifiers from the config.
                let reopened = Self::open_monitor(&self.platform, &self.dir)?;
                *lock(&self.monitor) = Some(reopened);
                *lock(&self.hub) = Some(Hub::start(
                    receivers_from_config(&self.platform.config),
                    &self.platform.config.platform.name,
                    Arc::new(EventSink(self.platform.clone())),
                ));
                c.collecting = true;
                if alerts {
                    c.alerts = true;
                }
            }
            ("status", _) => return Ok(()),
            (other, _) => {
                return Err(format!(
                    "unknown action {other:?}: use start, stop, restart or status"
                ))
            }
        }
        c.save(&self.dir).map_err(|e| e.to_string())?;
        *lock(&self.control) = c;
        if c != before || action == "restart" {
            self.platform.event_by(
                actor,
                "monitor.control",
                None,
                None,
                format!(
                    "monitor {action}{}: collection {}, alerts {}",
                    if alerts { " --alerts" } else { "" },
                    if c.collecting { "on" } else { "off" },
                    if c.alerts { "on" } else { "off" },
                ),
            );
        }
        self.wake.notify_one();
        Ok(())
    }
}

/// Open the monitor and start its task (and the `/metrics` server when configured).
pub fn start(
    p: Arc<Platform>,
    metrics_listener: Option<tokio::net::TcpListener>,
) -> Arc<MonitorService> {
    let dir = p.config.platform.state_dir.join("metrics");
    let default = Control {
        collecting: p.config.monitor.enabled,
        alerts: p.config.alerts.enabled,
    };
    let control = Control::load(&dir, default);
    let (monitor, error) = match MonitorService::open_monitor(&p, &dir) {
        Ok(m) => (Some(m), None),
        Err(e) => {
            p.event(
                "monitor.error",
                None,
                None,
                format!("cannot open the metric history in {}: {e}", dir.display()),
            );
            (None, Some(e))
        }
    };
    for n in p.config.alerts.notify.values() {
        if let Some(var) = n
            .hmac_secret_env
            .as_ref()
            .filter(|v| std::env::var(v).is_err())
        {
            p.event(
                "monitor.error",
                None,
                None,
                format!("notifier {}: the environment variable {var} (hmac_secret_env) is not set, so its webhooks go unsigned; set it in the daemon's environment and restart the monitor", n.name),
            );
        }
    }
    let hub = Hub::start(
        receivers_from_config(&p.config),
        &p.config.platform.name,
        Arc::new(EventSink(p.clone())),
    );
    let svc = Arc::new(MonitorService {
        platform: p.clone(),
        dir,
        monitor: Mutex::new(monitor),
        control: Mutex::new(control),
        hub: Mutex::new(Some(hub)),
        last_collection_ms: Mutex::new(None),
        last_error: Mutex::new(error),
        metrics_addr: metrics_listener.as_ref().and_then(|l| l.local_addr().ok()),
        dashboard_url: Mutex::new(None),
        wake: tokio::sync::Notify::new(),
    });
    if let Some(l) = metrics_listener {
        tokio::spawn(crate::api_monitor::serve_metrics(svc.clone(), l));
    }
    tokio::spawn(run(svc.clone()));
    svc
}

/// CPU readings carried from one tick to the next.
#[derive(Default)]
struct Carry {
    host_cpu: Option<(u64, u64)>,
    /// Container cgroup CPU time by instance, for CPU %.
    cgroup_cpu: BTreeMap<String, (Instant, u64)>,
    /// The repository's facts, read every BACKUP_EVERY (a listing of manifests is not free).
    backup: Option<(Instant, Option<tcf_monitor::BackupTick>)>,
}

/// How often the backup repository is read for the `backup` series.
const BACKUP_EVERY: Duration = Duration::from_secs(300);

async fn run(svc: Arc<MonitorService>) {
    let p = svc.platform.clone();
    let mut shutdown = p.shutdown.subscribe();
    let mut carry = Carry::default();
    let mut last_retention = Instant::now() - RETENTION_EVERY;
    loop {
        let control = svc.control();
        if control.collecting {
            let tick = read_tick(&p, &mut carry).await;
            collect(&svc, tick, control.alerts).await;
            if last_retention.elapsed() >= RETENTION_EVERY {
                last_retention = Instant::now();
                let s = svc.clone();
                let now = tcf_monitor::now_ms();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Some(m) = lock(&s.monitor).as_mut() {
                        if let Err(e) = m.enforce_retention(now) {
                            tracing::warn!("metric retention: {e}");
                        }
                    }
                })
                .await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(p.config.monitor.interval) => {}
            _ = svc.wake.notified() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn collect(svc: &Arc<MonitorService>, tick: Tick, evaluate: bool) {
    let at = tick.at_ms;
    let s = svc.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut guard = lock(&s.monitor);
        let m = guard.as_mut()?;
        let ingested = m.ingest(tick, evaluate);
        let firing: Vec<_> = m
            .active_alerts()
            .into_iter()
            .filter(|a| a.state == State::Firing)
            .map(|a| {
                let silenced = m.silenced(&a.labels, at);
                (a, silenced)
            })
            .collect();
        Some((ingested, firing))
    })
    .await;
    let (ingested, firing) = match result {
        Ok(Some(x)) => x,
        Ok(None) => return,
        Err(e) => {
            record_error(svc, format!("the metric writer failed: {e}"));
            return;
        }
    };
    *lock(&svc.last_collection_ms) = Some(at);
    match ingested.write_error {
        // Alerts were still evaluated; they are handled below.
        Some(e) => record_error(svc, format!("cannot store metrics: {e}")),
        None => *lock(&svc.last_error) = None,
    }
    let transitions = ingested.transitions;
    let p = &svc.platform;
    let mut resolved = Vec::new();
    for (t, silenced) in transitions {
        let a = &t.alert;
        let kind = match (t.from, a.state) {
            (_, State::Pending) => "alert.pending",
            (_, State::Firing) => "alert.firing",
            (_, State::Resolved) => "alert.resolved",
            (_, State::Inactive) => "alert.cleared",
        };
        let service = p
            .services
            .contains_key(&a.target)
            .then_some(a.target.as_str());
        p.event(
            kind,
            service,
            None,
            format!(
                "{} ({}) {}: {}{}",
                a.rule,
                a.severity.as_str(),
                a.state.as_str(),
                a.summary,
                if silenced { " [silenced]" } else { "" }
            ),
        );
        if a.state == State::Resolved {
            resolved.push(t.alert);
        }
    }
    if evaluate {
        if let Some(hub) = lock(&svc.hub).as_ref() {
            hub.update(firing, resolved);
        }
    }
}

fn record_error(svc: &MonitorService, message: String) {
    let mut last = lock(&svc.last_error);
    // One event per distinct failure, not one per tick.
    if last.as_deref() != Some(message.as_str()) {
        svc.platform
            .event("monitor.error", None, None, message.clone());
    }
    *last = Some(message);
}

/// Read everything a tick records: counters, instance facts, dependencies, host.
async fn read_tick(p: &Arc<Platform>, carry: &mut Carry) -> Tick {
    let at_ms = tcf_monitor::now_ms();
    let mut services = Vec::new();
    for svc in p.services.values() {
        let colours = svc
            .colours()
            .iter()
            .map(|c| {
                let snap = c.pool.stats().snapshot();
                ColourTick {
                    name: c.name.clone(),
                    version: c.version.clone(),
                    requests: snap.requests,
                    responses_2xx: snap.responses_2xx,
                    responses_4xx: snap.responses_4xx,
                    responses_5xx: snap.responses_5xx,
                    proxy_errors: snap.proxy_errors,
                    broken_responses: snap.broken_responses,
                    latency: snap.latency,
                }
            })
            .collect();
        let limit = svc.config.docker.as_ref().and_then(|d| d.memory);
        let container = svc.config.runtime == tcf_config::RuntimeKind::Docker;
        let mut healthy = 0;
        let mut instances = Vec::new();
        for i in svc.instances() {
            let info = i.info();
            let in_pool = svc.in_pool(&i);
            healthy += u32::from(in_pool);
            let mut tick = InstanceTick {
                id: i.id.clone(),
                colour: i.colour.clone(),
                version: i.version.clone(),
                cpu_percent: info.cpu_percent,
                rss_bytes: info.rss_bytes,
                memory_limit_bytes: limit,
                open_fds: info.pid.and_then(host::open_fds),
                restarts: info.restarts,
                healthy: in_pool,
                crashloop: info.state == InstanceState::Crashloop,
            };
            // A container's cgroup counts all its processes, not only the main one. (A
            // process instance shares the daemon's cgroup, so only containers use it.)
            if let Some(cg) = info.pid.filter(|_| container).and_then(host::cgroup_usage) {
                if let Some(m) = cg.memory_bytes {
                    tick.rss_bytes = m;
                }
                tick.memory_limit_bytes = cg.memory_limit.or(limit);
                if let Some(used) = cg.cpu_micros {
                    let now = Instant::now();
                    if let Some((at, before)) = carry.cgroup_cpu.insert(i.id.clone(), (now, used)) {
                        let secs = now.duration_since(at).as_secs_f64();
                        if secs > 0.0 {
                            tick.cpu_percent =
                                used.saturating_sub(before) as f64 / 1e6 / secs * 100.0;
                        }
                    }
                }
            }
            instances.push(tick);
        }
        services.push(ServiceTick {
            name: svc.config.name.clone(),
            colours,
            instances,
            healthy_instances: healthy,
            // The certificate that expires first: the one whose renewal is due.
            cert_expiry_days: p.tls.get(&svc.config.name).and_then(|t| {
                let now = tcf_proxy::tls::unix_now();
                t.store
                    .certs()
                    .iter()
                    .map(|c| (c.facts.not_after - now) as f64 / 86_400.0)
                    .reduce(f64::min)
            }),
        });
    }
    // Probed together, so one dead dependency (waiting out its timeout) delays no other.
    let dependencies =
        futures_util::future::join_all(p.dependencies.iter().map(|(name, dep)| async move {
            let up = lock(&dep.info).healthy;
            let started = Instant::now();
            let probe = crate::health::dependency(&dep.config).await;
            DependencyTick {
                name: name.clone(),
                up,
                latency_ms: probe
                    .is_ok()
                    .then(|| started.elapsed().as_secs_f64() * 1000.0),
            }
        }))
        .await;
    // Forget instances that are gone.
    carry.cgroup_cpu.retain(|id, _| {
        services
            .iter()
            .any(|s: &ServiceTick| s.instances.iter().any(|i| i.id == *id))
    });
    let cpu_now = host::cpu_times();
    let host_cpu = match (carry.host_cpu, cpu_now) {
        (Some(before), Some(after)) => host::cpu_percent(before, after),
        _ => None,
    };
    carry.host_cpu = cpu_now;
    let backup = backup_facts(p, carry, at_ms).await;
    Tick {
        at_ms,
        services,
        dependencies,
        host: HostTick {
            cpu_percent: host_cpu,
            load1: host::load1(),
            memory: host::memory(),
            disk: host::disk(&p.config.platform.state_dir),
            network: host::network(),
        },
        backup,
    }
}

/// The `backup` series' input: the repository as last read, with this moment's count of failed
/// scheduled runs (which change between reads).
async fn backup_facts(
    p: &Arc<Platform>,
    carry: &mut Carry,
    at_ms: i64,
) -> Option<tcf_monitor::BackupTick> {
    p.config.backup.as_ref()?;
    let stale = carry
        .backup
        .as_ref()
        .is_none_or(|(read, _)| read.elapsed() >= BACKUP_EVERY);
    if stale {
        let platform = p.clone();
        let read =
            tokio::task::spawn_blocking(move || crate::backup::backup_tick(&platform, at_ms))
                .await
                .unwrap_or((None, Some("the repository read panicked".into())));
        if let Some(e) = read.1 {
            tracing::warn!("monitor: cannot read the backup repository: {e}");
        }
        carry.backup = Some((Instant::now(), read.0));
    }
    let (_, facts) = carry.backup.as_ref()?;
    let mut facts = facts.clone()?;
    facts.scheduled_failures = p
        .scheduled_backup_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    Some(facts)
}
