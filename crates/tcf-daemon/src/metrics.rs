//! Sampling of proxy stats and process CPU/RSS every [`SAMPLE_EVERY`], kept over a short
//! window so `status --metrics` shows current rates and latencies rather than lifetime averages.

use crate::platform::{lock, Platform, ServiceRuntime};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tcf_api::ServiceMetrics;
use tcf_proxy::Snapshot;
use tcf_runtime::procfs;

pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept: the window is this many sample periods long.
const WINDOW_SAMPLES: usize = 6;

#[derive(Debug, Default)]
pub struct MetricsWindow {
    samples: VecDeque<(Instant, Snapshot)>,
}

impl MetricsWindow {
    pub fn push(&mut self, at: Instant, snap: Snapshot) {
        self.samples.push_back((at, snap));
        while self.samples.len() > WINDOW_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// Rates and latencies between the oldest sample and `now_snap` taken at `now`.
    pub fn compute(&self, now: Instant, now_snap: &Snapshot) -> (f64, Snapshot) {
        match self.samples.front() {
            Some((at, first)) => (now.duration_since(*at).as_secs_f64(), now_snap.since(first)),
            None => (0.0, Snapshot::empty()),
        }
    }
}

fn per_second(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// Metrics of one service right now.
pub fn service_metrics(svc: &ServiceRuntime) -> ServiceMetrics {
    let now = Instant::now();
    let snap = svc.proxy.stats().snapshot();
    let (secs, window) = lock(&svc.metrics).compute(now, &snap);
    let (mut cpu, mut rss) = (0.0, 0);
    // The health score takes the busiest instance's CPU and memory (of its limit or the host).
    let (mut cpu_max, mut mem_max) = (0.0f64, 0.0f64);
    let limit = svc
        .config
        .docker
        .as_ref()
        .and_then(|d| d.memory)
        .or_else(|| tcf_monitor::host::memory().map(|(_, total)| total));
    for i in svc.instances() {
        let info = i.info();
        if info.pid.is_some() {
            cpu += info.cpu_percent;
            rss += info.rss_bytes;
            cpu_max = cpu_max.max(info.cpu_percent);
            if let Some(l) = limit.filter(|l| *l > 0) {
                mem_max = mem_max.max(info.rss_bytes as f64 / l as f64 * 100.0);
            }
        }
    }
    let score = tcf_monitor::health::score(
        cpu_max,
        mem_max,
        window
            .quantile(0.99)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        window.ratio_5xx() * 100.0,
    );
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0;
    ServiceMetrics {
        window_s: (secs * 10.0).round() / 10.0,
        requests_per_s: per_second(window.requests, secs),
        errors_5xx_per_s: per_second(window.responses_5xx, secs),
        error_ratio_5xx: window.ratio_5xx(),
        p50_ms: window.quantile(0.5).map(ms),
        p99_ms: window.quantile(0.99).map(ms),
        cpu_percent: (cpu * 10.0).round() / 10.0,
        rss_bytes: rss,
        health_score: Some(score),
        health_band: Some(tcf_monitor::health::Band::of(score).as_str().to_string()),
    }
}

/// Take one sample of every service and instance.
pub fn sample(p: &Platform) {
    let hz = procfs::ticks_per_second() as f64;
    for svc in p.services.values() {
        lock(&svc.metrics).push(Instant::now(), svc.proxy.stats().snapshot());
        for inst in svc.instances() {
            let mut info = lock(&inst.info);
            // Pid 0: a task on another machine, sampled through its runtime instead.
            let Some(pid) = info.pid.filter(|pid| *pid != 0) else {
                continue;
            };
            let now = Instant::now();
            if let Some(ticks) = procfs::cpu_ticks(pid) {
                if let Some((at, before)) = info.cpu_ticks {
                    let secs = now.duration_since(at).as_secs_f64();
                    if secs > 0.0 {
                        info.cpu_percent =
                            (ticks.saturating_sub(before) as f64 / hz) / secs * 100.0;
                    }
                }
                info.cpu_ticks = Some((now, ticks));
            }
            info.rss_bytes = procfs::rss_bytes(pid).unwrap_or(0);
        }
    }
}

/// Sample an instance's CPU and memory through its runtime every [`SAMPLE_EVERY`] until
/// aborted (with its supervisor's prober); a sample the runtime cannot take leaves the last.
pub async fn sample_usage(inst: Arc<crate::platform::Instance>, probe: tcf_runtime::UsageProbe) {
    let mut last: Option<(Instant, u64)> = None;
    loop {
        if let Some(usage) = probe().await {
            let now = Instant::now();
            let mut info = lock(&inst.info);
            if let Some((at, before)) = last.replace((now, usage.cpu_micros)) {
                let secs = now.duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    info.cpu_percent =
                        usage.cpu_micros.saturating_sub(before) as f64 / 1e6 / secs * 100.0;
                }
            }
            info.rss_bytes = usage.memory_bytes;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

pub async fn run_sampler(p: Arc<Platform>) {
    let mut shutdown = p.shutdown.subscribe();
    loop {
        sample(&p);
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
