//! The watch after a switch: unhealthy instances, 5xx ratio and p99 of the new colours.

use super::*;

/// Why a watch ended early.
pub(super) enum Stop {
    /// The new version misbehaved.
    Breach(String),
    /// The release lost the deploy lock.
    LeaseLost(String),
    /// The platform is stopping (`down`, a signal).
    Stopping,
    /// Someone asked to abort the release (`prod abort`); who.
    Aborted(String),
}

impl Stop {
    pub(super) fn message(self) -> String {
        match self {
            Stop::Breach(m) | Stop::LeaseLost(m) => m,
            Stop::Stopping => STOPPING.to_string(),
            Stop::Aborted(who) => format!("aborted by {who}"),
        }
    }
}

/// Watch the new colours for `window`: unhealthy instances, 5xx ratio and p99 since the switch.
/// How often a watch reports what it sees.
const WATCH_REPORT_EVERY: Duration = Duration::from_secs(5);

pub(super) async fn watch(
    p: &Platform,
    rep: &Reporter,
    switched: &[Switched],
    window: Duration,
) -> Result<(), Stop> {
    let d = &p.config.deploy;
    let start = Instant::now();
    let mut last_report = Instant::now();
    loop {
        if let Some(stop) = rep.interruption() {
            return Err(stop);
        }
        for s in switched {
            let name = &s.svc.config.name;
            if let Some(bad) = s.new.instances().iter().find(|i| !s.svc.in_pool(i)) {
                return Err(Stop::Breach(format!(
                    "{name}: {} of {} is {} / {}",
                    bad.id,
                    s.new.version,
                    bad.info().state.as_str(),
                    bad.info().health.as_str()
                )));
            }
            let w = s.new.pool.stats().snapshot().since(&s.since);
            if w.requests >= d.min_requests {
                if w.ratio_5xx() > d.max_error_ratio {
                    return Err(Stop::Breach(format!(
                        "{name}: {} answered {} of {} requests with 5xx ({:.1}% > {:.1}%)",
                        s.new.version,
                        w.responses_5xx,
                        w.requests,
                        w.ratio_5xx() * 100.0,
                        d.max_error_ratio * 100.0
                    )));
                }
                if let (Some(max), Some(p99)) = (d.max_p99, w.quantile(0.99)) {
                    if p99 > max {
                        return Err(Stop::Breach(format!(
                            "{name}: {} p99 latency {} ms over the limit of {} ms",
                            s.new.version,
                            p99.as_millis(),
                            max.as_millis()
                        )));
                    }
                }
            }
        }
        if start.elapsed() >= window {
            return Ok(());
        }
        if last_report.elapsed() >= WATCH_REPORT_EVERY {
            last_report = Instant::now();
            for s in switched {
                let w = s.new.pool.stats().snapshot().since(&s.since);
                rep.step(
                    "deploy.watch_progress",
                    Some(&s.svc.config.name),
                    format!(
                        "{} so far: {} requests, {:.1}% 5xx, p99 {}; {}s of {}s left",
                        s.new.version,
                        w.requests,
                        w.ratio_5xx() * 100.0,
                        w.quantile(0.99)
                            .map_or("-".to_string(), |q| format!("{} ms", q.as_millis())),
                        window.saturating_sub(start.elapsed()).as_secs(),
                        window.as_secs()
                    ),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
