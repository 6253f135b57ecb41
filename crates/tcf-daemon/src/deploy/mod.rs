//! The control loop for releases: deploys (blue-green, canary, rolling) and rollbacks go
//! through [`run`]: lock, release record, hooks, per-service strategy in dependency order,
//! watch, revert on failure, retirement of the previous colour. Every step is one event.

use crate::platform::{
    lock, other_colour, Colour, Instance, InstanceState, Platform, ServiceRuntime,
};
use crate::supervisor::spawn_instance;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};
use tcf_api::ProgressLine;
use tcf_config::Strategy;
use tcf_proxy::Snapshot;
use tcf_store::{now_ms, Acquire, Lease};
use tokio::sync::{mpsc, watch};

mod hooks;
#[cfg(test)]
mod tests;

pub const DEPLOY_LOCK: &str = "deploy";
/// Why a release ended early when the daemon was asked to stop.
const STOPPING: &str = "interrupted (platform stopping)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Deploy(Strategy),
    Rollback,
}

/// What to do: versions per service (applied in dependency order).
#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: Kind,
    pub targets: Vec<(String, String)>,
    pub reason: Option<String>,
    pub actor: String,
    pub lock_wait: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Deployed,
    RolledBack,
    Failed(String),
    Reverted(String),
    LockHeld(String),
    Invalid(String),
}

impl Outcome {
    pub fn result(&self) -> &'static str {
        match self {
            Outcome::Deployed => "deployed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Failed(_) => "failed",
            Outcome::Reverted(_) => "reverted",
            Outcome::LockHeld(_) => "lock_held",
            Outcome::Invalid(_) => "invalid",
        }
    }

    /// The documented exit codes of `prod deploy` and `prod rollback`.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Deployed | Outcome::RolledBack => 0,
            Outcome::Failed(_) | Outcome::Reverted(_) => 1,
            Outcome::Invalid(_) => 2,
            Outcome::LockHeld(_) => 3,
        }
    }
}

pub fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

/// Writes each step as an event and as a progress line to whoever started the release.
struct Reporter {
    p: Arc<Platform>,
    tx: mpsc::UnboundedSender<ProgressLine>,
    release: Option<i64>,
    /// Set once the release holds the deploy lock: why it was lost, if it was.
    lease_lost: Option<watch::Receiver<Option<String>>>,
}

impl Reporter {
    /// Why this release no longer holds the deploy lock, if it lost it.
    fn lease_lost(&self) -> Result<(), String> {
        match self.lease_lost.as_ref().and_then(|rx| rx.borrow().clone()) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// The release failed: record it so (or say why it could not be recorded). When the
    /// platform is stopping, whatever failed, the release was interrupted: it is recorded as
    /// such, and nothing was reverted (everything is being stopped).
    async fn failed(&self, msg: String) -> Outcome {
        if self.p.is_stopping() {
            let msg = match self.release {
                Some(id) => format!("release {id} {STOPPING}"),
                None => STOPPING.to_string(),
            };
            return match self.record_end("interrupted").await {
                Ok(()) => Outcome::Failed(msg),
                Err(e) => Outcome::Failed(format!("{msg}; {e}")),
            };
        }
        match self.record_end("failed").await {
            Ok(()) => Outcome::Failed(msg),
            Err(e) => Outcome::Failed(format!("{msg}; {e}")),
        }
    }

    /// Record how the release ended; a store that refuses says so instead of being ignored.
    async fn record_end(&self, status: &'static str) -> Result<(), String> {
        let Some(id) = self.release else {
            return Ok(());
        };
        let stored = self
            .p
            .with_store(move |s| s.finish_release(id, status))
            .await;
        stored.map_err(|e| {
            let msg = format!("cannot record release {id} as {status}: {e}");
            self.step("release.store_failed", None, msg.clone());
            msg
        })
    }

    fn step(&self, kind: &str, service: Option<&str>, message: impl Into<String>) {
        let message = message.into();
        self.p.event(kind, service, None, message.clone());
        let _ = self.tx.send(ProgressLine {
            time: rfc3339(now_ms()),
            step: kind.to_string(),
            service: service.map(str::to_string),
            message,
            release: self.release,
            result: None,
            exit_code: None,
        });
    }

    fn finish(&self, outcome: &Outcome) {
        let message = match outcome {
            Outcome::Deployed | Outcome::RolledBack => match self.release {
                Some(id) => format!("release {id} is active"),
                None => "done".to_string(),
            },
            Outcome::Failed(m)
            | Outcome::Reverted(m)
            | Outcome::LockHeld(m)
            | Outcome::Invalid(m) => m.clone(),
        };
        let _ = self.tx.send(ProgressLine {
            time: rfc3339(now_ms()),
            step: "result".into(),
            service: None,
            message,
            release: self.release,
            result: Some(outcome.result().into()),
            exit_code: Some(outcome.exit_code()),
        });
    }
}

/// A service whose traffic moved to a new colour in this release.
struct Switched {
    svc: Arc<ServiceRuntime>,
    old: Option<Arc<Colour>>,
    new: Arc<Colour>,
    /// The new colour's counters at the switch: the watch looks only at what came after.
    since: Snapshot,
}

impl Switched {
    /// Counting for the watch starts now.
    fn now(svc: &Arc<ServiceRuntime>, old: Option<Arc<Colour>>, new: Arc<Colour>) -> Switched {
        let since = new.pool.stats().snapshot();
        Switched {
            svc: svc.clone(),
            old,
            new,
            since,
        }
    }
}

/// Run a release to its end; the progress channel gets every step and the result last.
pub async fn run(p: Arc<Platform>, plan: Plan, tx: mpsc::UnboundedSender<ProgressLine>) -> Outcome {
    let mut rep = Reporter {
        p: p.clone(),
        tx,
        release: None,
        lease_lost: None,
    };
    let outcome = run_inner(&p, &plan, &mut rep).await;
    rep.finish(&outcome);
    outcome
}

async fn run_inner(p: &Arc<Platform>, plan: &Plan, rep: &mut Reporter) -> Outcome {
    if plan.targets.is_empty() {
        return Outcome::Invalid("nothing to do: no service matches".into());
    }
    // The lock, held (and renewed) until the post hooks are done.
    let owner = format!(
        "{} (release by daemon pid {})",
        plan.actor,
        std::process::id()
    );
    let ttl = p.config.deploy.lock_ttl;
    let deadline = Instant::now() + plan.lock_wait;
    let mut waited = false;
    loop {
        let lease = Lease {
            name: DEPLOY_LOCK.into(),
            owner: owner.clone(),
            host: hostname(),
            pid: std::process::id() as i64,
            reason: plan.reason.clone(),
            acquired_ms: now_ms(),
            heartbeat_ms: now_ms(),
            expires_ms: now_ms() + ttl.as_millis() as i64,
        };
        match p.with_store(move |s| s.acquire_lock(&lease)).await {
            Ok(Acquire::Acquired) => break,
            Ok(Acquire::TookOver(old)) => {
                rep.step(
                    "lock.taken_over",
                    None,
                    format!(
                        "took over the expired deploy lock of {} (last heartbeat {})",
                        old.owner,
                        rfc3339(old.heartbeat_ms)
                    ),
                );
                break;
            }
            Ok(Acquire::Held(held)) => {
                let who = format!(
                    "the deploy lock is held by {} on {} since {}{}",
                    held.owner,
                    held.host,
                    rfc3339(held.acquired_ms),
                    held.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                );
                if Instant::now() >= deadline {
                    return Outcome::LockHeld(format!(
                        "{who}; wait with --lock-wait, or see `tcf-platform lock status`"
                    ));
                }
                if !waited {
                    rep.step("lock.waiting", None, format!("waiting: {who}"));
                    waited = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Outcome::Failed(format!("cannot take the deploy lock: {e}")),
        }
    }
    *lock(&p.deploying) = Some(describe(plan));
    let lease = LeaseGuard::hold(p.clone(), owner, ttl);
    rep.lease_lost = Some(lease.lost.clone());
    locked(p, plan, rep).await
    // `lease` drops here (or while unwinding from a panic): heartbeat stopped, lock released.
}

/// The deploy lock held by a running release. A heartbeat renews it; losing it (someone took
/// it, or the store cannot renew it before it expires) is signalled through `lost`, and the
/// release stops and reverts. Dropping the guard, on any path out of the release including a
/// panic, stops the heartbeat and releases the lock.
struct LeaseGuard {
    p: Arc<Platform>,
    owner: String,
    heartbeat: tokio::task::JoinHandle<()>,
    lost: watch::Receiver<Option<String>>,
}

impl LeaseGuard {
    fn hold(p: Arc<Platform>, owner: String, ttl: Duration) -> LeaseGuard {
        let (tx, lost) = watch::channel(None);
        let heartbeat = {
            let p = p.clone();
            let owner = owner.clone();
            tokio::spawn(async move {
                let mut expires = now_ms() + ttl.as_millis() as i64;
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    let next = now_ms() + ttl.as_millis() as i64;
                    let who = owner.clone();
                    let renewed = p
                        .with_store(move |s| s.renew_lock(DEPLOY_LOCK, &who, next))
                        .await;
                    let why = match renewed {
                        Ok(true) => {
                            expires = next;
                            continue;
                        }
                        Ok(false) => "the deploy lock was taken from this release (released with `lock release --force`, or expired and taken over)".to_string(),
                        Err(e) if now_ms() >= expires => {
                            format!("the deploy lock expired: the store could not renew it ({e})")
                        }
                        Err(e) => {
                            tracing::warn!("cannot renew the deploy lock yet: {e}");
                            continue;
                        }
                    };
                    tx.send_replace(Some(why));
                    return;
                }
            })
        };
        LeaseGuard {
            p,
            owner,
            heartbeat,
            lost,
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.heartbeat.abort();
        *lock(&self.p.deploying) = None;
        if let Err(e) = self.p.store.release_lock(DEPLOY_LOCK, Some(&self.owner)) {
            tracing::error!("cannot release the deploy lock: {e}; it expires by itself");
        }
    }
}

fn describe(plan: &Plan) -> String {
    let what = match plan.kind {
        Kind::Deploy(s) => format!("{} deploy", s.as_str()),
        Kind::Rollback => "rollback".to_string(),
    };
    let targets: Vec<String> = plan
        .targets
        .iter()
        .map(|(s, v)| format!("{s} {v}"))
        .collect();
    format!("{what} of {} by {}", targets.join(", "), plan.actor)
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

async fn locked(p: &Arc<Platform>, plan: &Plan, rep: &mut Reporter) -> Outcome {
    let strategy_name = match plan.kind {
        Kind::Deploy(s) => s.as_str(),
        Kind::Rollback => "rollback",
    };
    let versions: BTreeMap<String, String> = plan.targets.iter().cloned().collect();
    let (actor, reason) = (plan.actor.clone(), plan.reason.clone());
    let created = p
        .with_store(move |s| {
            s.create_release(
                strategy_name,
                "in_progress",
                &actor,
                reason.as_deref(),
                &versions,
            )
        })
        .await;
    let release = match created {
        Ok(id) => id,
        Err(e) => return Outcome::Failed(format!("cannot record the release: {e}")),
    };
    rep.release = Some(release);
    rep.step(
        "release.started",
        None,
        format!("release {release}: {}", describe(plan)),
    );
    let services_csv = plan
        .targets
        .iter()
        .map(|(s, _)| s.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let version_env = plan
        .targets
        .first()
        .map(|(_, v)| v.clone())
        .unwrap_or_default();

    if let Kind::Deploy(_) = plan.kind {
        if let Some(hook) = &p.config.hooks.pre_deploy {
            if let Err(e) = run_hook(
                p,
                rep,
                "pre_deploy",
                hook,
                &version_env,
                &services_csv,
                release,
            )
            .await
            {
                return rep
                    .failed(format!("pre_deploy hook failed, nothing changed: {e}"))
                    .await;
            }
        }
    }

    // Everything the release needs must be there before anything starts (images, say).
    for (service, version) in &plan.targets {
        let Some(svc) = p.services.get(service) else {
            continue;
        };
        let spec = crate::supervisor::instance_spec(
            p,
            &svc.config,
            &format!("{service}-check"),
            "check",
            version,
            0,
        );
        if let Err(reason) = p.runtime_for(&svc.config).check(&spec).await {
            rep.step("deploy.check_failed", Some(service), reason.clone());
            return rep
                .failed(format!("{service}: {reason}; nothing changed"))
                .await;
        }
    }

    let mut switched: Vec<Switched> = Vec::new();
    for (service, version) in &plan.targets {
        let Some(svc) = p.services.get(service).cloned() else {
            continue;
        };
        if let Err(why) = rep.lease_lost() {
            revert(p, rep, switched).await;
            return rep
                .failed(format!(
                "{why}; stopped before {service}, every service is back on its previous version"
            ))
                .await;
        }
        let step = match plan.kind {
            Kind::Deploy(Strategy::BlueGreen) => blue_green(p, rep, &svc, version).await,
            Kind::Deploy(Strategy::Canary) => canary(p, rep, &svc, version).await,
            Kind::Deploy(Strategy::Rolling) => rolling(p, rep, &svc, version).await,
            Kind::Rollback => rollback_service(p, rep, &svc, version).await,
        };
        match step {
            Ok(s) => switched.push(s),
            Err(reason) => {
                revert(p, rep, switched).await;
                return rep
                    .failed(format!(
                        "{service}: {reason}; every service is back on its previous version"
                    ))
                    .await;
            }
        }
    }

    // Canaries were gated step by step; the other strategies are watched once switched.
    let watched = matches!(
        plan.kind,
        Kind::Deploy(Strategy::BlueGreen) | Kind::Deploy(Strategy::Rolling)
    );
    if watched && !p.config.deploy.watch.is_zero() {
        rep.step(
            "deploy.watching",
            None,
            format!(
                "watching the new version for {} (5xx ratio over {:.1}%{} reverts)",
                humantime::format_duration(p.config.deploy.watch),
                p.config.deploy.max_error_ratio * 100.0,
                p.config
                    .deploy
                    .max_p99
                    .map(|d| format!(", p99 over {}", humantime::format_duration(d)))
                    .unwrap_or_default()
            ),
        );
        match watch(p, rep, &switched, p.config.deploy.watch).await {
            Ok(()) => {}
            Err(Stop::Breach(breach)) => {
                rep.step("deploy.breach", None, breach.clone());
                revert(p, rep, switched).await;
                let msg = format!("{breach}; reverted to the previous version");
                return match rep.record_end("reverted").await {
                    Ok(()) => Outcome::Reverted(msg),
                    Err(e) => Outcome::Failed(format!("{msg}; {e}")),
                };
            }
            Err(Stop::Stopping) => return rep.failed(STOPPING.to_string()).await,
            Err(Stop::LeaseLost(why)) => {
                revert(p, rep, switched).await;
                return rep
                    .failed(format!(
                    "{why}; stopped while watching, every service is back on its previous version"
                ))
                    .await;
            }
        }
    }

    // What runs must match what the store says runs: after a restart the daemon starts the
    // store's active release. A release that cannot be recorded is undone.
    let recorded = match rep.lease_lost() {
        Ok(()) => rep.record_end("active").await,
        Err(why) => Err(why),
    };
    if let Err(e) = recorded {
        revert(p, rep, switched).await;
        return rep
            .failed(format!(
                "{e}; every service is back on its previous version"
            ))
            .await;
    }
    if plan.kind == Kind::Rollback {
        mark_rolled_back(p, &plan.targets, release);
    }
    for s in &switched {
        if let Some(old) = &s.old {
            if !Arc::ptr_eq(old, &s.new)
                && s.svc
                    .colour(&old.name)
                    .is_some_and(|c| Arc::ptr_eq(&c, old))
            {
                schedule_retirement(
                    p.clone(),
                    s.svc.clone(),
                    old.clone(),
                    p.config.deploy.retire_after,
                );
            }
        }
    }
    rep.step(
        "release.active",
        None,
        format!("release {release} is active"),
    );
    let hook = match plan.kind {
        Kind::Deploy(_) => ("post_deploy", &p.config.hooks.post_deploy),
        Kind::Rollback => ("post_rollback", &p.config.hooks.post_rollback),
    };
    if let (name, Some(cmd)) = hook {
        if let Err(e) = run_hook(p, rep, name, cmd, &version_env, &services_csv, release).await {
            rep.step(
                "hook.failed",
                None,
                format!("{name} hook failed (the release stays active): {e}"),
            );
        }
    }
    match plan.kind {
        Kind::Deploy(_) => Outcome::Deployed,
        Kind::Rollback => Outcome::RolledBack,
    }
}

/// The release a rollback went back from is recorded as rolled back.
fn mark_rolled_back(p: &Platform, targets: &[(String, String)], rollback_release: i64) {
    let Ok(releases) = p.store.releases(200) else {
        return;
    };
    for (service, _) in targets {
        if let Some(from) = releases
            .iter()
            .filter(|r| {
                r.id != rollback_release && tcf_store::SUCCESSFUL.contains(&r.status.as_str())
            })
            .find(|r| r.versions.contains_key(service))
        {
            let _ = p.store.finish_release(from.id, "rolled_back");
        }
    }
}

/// Start `version` as a new colour of `svc` with `count` instances; none for rolling.
fn new_colour(
    p: &Arc<Platform>,
    svc: &Arc<ServiceRuntime>,
    version: &str,
) -> (Option<Arc<Colour>>, Arc<Colour>) {
    let active = svc.active_colour();
    let name = active.as_ref().map_or("blue", |c| other_colour(&c.name));
    let colour = svc.add_colour(name, version);
    let _ = p;
    (active, colour)
}

/// Free the inactive slot: a colour kept warm from an earlier release is retired now.
async fn free_slot(p: &Arc<Platform>, rep: &Reporter, svc: &Arc<ServiceRuntime>) {
    let Some(active) = svc.active_colour() else {
        return;
    };
    if let Some(warm) = svc.colour(other_colour(&active.name)) {
        rep.step(
            "deploy.retiring",
            Some(&svc.config.name),
            format!("retiring {} ({}) to make room", warm.version, warm.name),
        );
        retire(p, svc, &warm).await;
    }
}

fn spawn_all(
    p: &Arc<Platform>,
    svc: &Arc<ServiceRuntime>,
    colour: &Arc<Colour>,
) -> Result<(), String> {
    for n in 1..=svc.config.instances {
        spawn_instance(p, svc, colour, n).map_err(|e| format!("cannot start an instance: {e}"))?;
    }
    Ok(())
}

/// Wait until every instance of `colour` (or just `only`) is healthy, within the deadline.
async fn gate(
    p: &Platform,
    svc: &ServiceRuntime,
    colour: &Colour,
    only: Option<&str>,
) -> Result<Duration, String> {
    let h = &svc.config.health;
    let limit = h.start_period + h.deadline;
    let start = Instant::now();
    loop {
        if p.is_stopping() {
            return Err(STOPPING.to_string());
        }
        let instances: Vec<_> = colour
            .instances()
            .into_iter()
            .filter(|i| only.is_none_or(|id| i.id == id))
            .collect();
        if !instances.is_empty() && instances.iter().all(|i| svc.in_pool(i)) {
            return Ok(start.elapsed());
        }
        if let Some(bad) = instances.iter().find(|i| {
            let info = i.info();
            info.restarts > 0 || info.state == InstanceState::Crashloop
        }) {
            return Err(format!(
                "{} {} crashed while starting (see `tcf-platform logs {}`)",
                bad.id, colour.version, svc.config.name
            ));
        }
        if start.elapsed() > limit {
            return Err(format!(
                "{} was not healthy within {} (health {} every {})",
                colour.version,
                humantime::format_duration(limit),
                match &h.probe {
                    tcf_config::Probe::Http { path } => format!("GET {path}"),
                    tcf_config::Probe::Tcp => "TCP connect".into(),
                },
                humantime::format_duration(h.interval)
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn start_and_gate(
    p: &Arc<Platform>,
    rep: &Reporter,
    svc: &Arc<ServiceRuntime>,
    version: &str,
) -> Result<(Option<Arc<Colour>>, Arc<Colour>), String> {
    free_slot(p, rep, svc).await;
    let (old, new) = new_colour(p, svc, version);
    let name = svc.config.name.as_str();
    rep.step(
        "deploy.starting",
        Some(name),
        format!(
            "starting {} instance(s) of {version} as {}",
            svc.config.instances, new.name
        ),
    );
    let gated = match spawn_all(p, svc, &new) {
        Ok(()) => gate(p, svc, &new, None).await,
        Err(e) => Err(e),
    };
    match gated {
        Ok(took) => {
            rep.step(
                "deploy.healthy",
                Some(name),
                format!("{version} healthy after {} ms", took.as_millis()),
            );
            Ok((old, new))
        }
        Err(reason) => {
            rep.step("deploy.gate_failed", Some(name), reason.clone());
            retire(p, svc, &new).await;
            Err(reason)
        }
    }
}

fn switch(rep: &Reporter, svc: &ServiceRuntime, weights: Vec<(String, u32)>, what: &str) {
    let start = Instant::now();
    svc.set_traffic(weights);
    rep.step(
        "deploy.switched",
        Some(&svc.config.name),
        format!(
            "{what} (route switched in {} µs)",
            start.elapsed().as_micros()
        ),
    );
}

async fn blue_green(
    p: &Arc<Platform>,
    rep: &Reporter,
    svc: &Arc<ServiceRuntime>,
    version: &str,
) -> Result<Switched, String> {
    let (old, new) = start_and_gate(p, rep, svc, version).await?;
    Ok(switch_all(rep, svc, old, new, version))
}

async fn canary(
    p: &Arc<Platform>,
    rep: &Reporter,
    svc: &Arc<ServiceRuntime>,
    version: &str,
) -> Result<Switched, String> {
    let (old, new) = start_and_gate(p, rep, svc, version).await?;
    let Some(old_colour) = old.clone() else {
        return Ok(switch_all(rep, svc, None, new, version));
    };
    let d = &p.config.deploy;
    for step in &d.canary_steps {
        let mut weights = vec![(new.name.clone(), *step)];
        if *step < 100 {
            weights.push((old_colour.name.clone(), 100 - step));
        }
        switch(
            rep,
            svc,
            weights,
            &format!("{step}% of traffic to {version}"),
        );
        let probe = Switched::now(svc, old.clone(), new.clone());
        if let Err(stop) = watch(p, rep, std::slice::from_ref(&probe), d.step_interval).await {
            let breach = stop.message();
            rep.step(
                "deploy.breach",
                Some(&svc.config.name),
                format!("at {step}%: {breach}"),
            );
            switch(
                rep,
                svc,
                vec![(old_colour.name.clone(), 100)],
                &format!("all traffic back to {}", old_colour.version),
            );
            retire(p, svc, &new).await;
            return Err(format!("canary failed at {step}%: {breach}"));
        }
        rep.step(
            "deploy.step_passed",
            Some(&svc.config.name),
            format!("{step}% step passed"),
        );
    }
    Ok(Switched::now(svc, old, new))
}

/// All traffic to `new`, at once.
fn switch_all(
    rep: &Reporter,
    svc: &Arc<ServiceRuntime>,
    old: Option<Arc<Colour>>,
    new: Arc<Colour>,
    version: &str,
) -> Switched {
    switch(
        rep,
        svc,
        vec![(new.name.clone(), 100)],
        &format!("all traffic to {version} ({})", new.name),
    );
    Switched::now(svc, old, new)
}

async fn rolling(
    p: &Arc<Platform>,
    rep: &Reporter,
    svc: &Arc<ServiceRuntime>,
    version: &str,
) -> Result<Switched, String> {
    free_slot(p, rep, svc).await;
    let name = svc.config.name.clone();
    let (old, new) = new_colour(p, svc, version);
    let n = svc.config.instances;
    let surge = p.config.deploy.max_surge.min(n);
    let old_instances = old.as_ref().map(|o| o.instances()).unwrap_or_default();
    // The replaced old instances leave the pool (their requests finish) but keep running,
    // warm for an instant rollback until the colour is retired.
    let mut parked = BTreeSet::new();
    let mut replaced = 0u32;
    while replaced < n {
        let batch: Vec<u32> = (replaced + 1..=(replaced + surge).min(n)).collect();
        let mut started = Vec::new();
        for k in &batch {
            match spawn_instance(p, svc, &new, *k) {
                Ok(i) => started.push(i),
                Err(e) => {
                    return Err(rolling_failed(
                        p,
                        rep,
                        svc,
                        &old,
                        &new,
                        format!("cannot start an instance: {e}"),
                    )
                    .await)
                }
            }
        }
        for inst in &started {
            if let Err(reason) = gate(p, svc, &new, Some(&inst.id)).await {
                return Err(rolling_failed(p, rep, svc, &old, &new, reason).await);
            }
        }
        replaced += batch.len() as u32;
        let mut weights = vec![(new.name.clone(), 100 * replaced / n)];
        if let Some(o) = &old {
            if replaced < n {
                weights.push((o.name.clone(), 100 - 100 * replaced / n));
            }
        }
        let batch_old: Vec<&Arc<Instance>> = batch
            .iter()
            .filter_map(|k| old_instances.get(*k as usize - 1))
            .collect();
        parked.extend(batch_old.iter().map(|i| i.id.clone()));
        let start = Instant::now();
        svc.set_traffic_parking(weights, parked.clone());
        rep.step(
            "deploy.switched",
            Some(&name),
            format!(
                "{replaced} of {n} instance(s) on {version} (route switched in {} µs)",
                start.elapsed().as_micros()
            ),
        );
        for old_inst in batch_old {
            rep.step(
                "deploy.replaced",
                Some(&name),
                format!("{} out of the pool", old_inst.id),
            );
        }
    }
    Ok(Switched::now(svc, old, new))
}

/// A rolling step failed: all traffic back to the old colour, whose replaced instances kept
/// running (giving it traffic puts them back in its pool), then the new colour goes.
async fn rolling_failed(
    p: &Arc<Platform>,
    rep: &Reporter,
    svc: &Arc<ServiceRuntime>,
    old: &Option<Arc<Colour>>,
    new: &Arc<Colour>,
    reason: String,
) -> String {
    rep.step("deploy.gate_failed", Some(&svc.config.name), reason.clone());
    if let Some(o) = old {
        switch(
            rep,
            svc,
            vec![(o.name.clone(), 100)],
            &format!("all traffic back to {}", o.version),
        );
    }
    retire(p, svc, new).await;
    reason
}

async fn rollback_service(
    p: &Arc<Platform>,
    rep: &Reporter,
    svc: &Arc<ServiceRuntime>,
    version: &str,
) -> Result<Switched, String> {
    let active = svc.active_colour();
    let warm = active
        .as_ref()
        .and_then(|a| svc.colour(other_colour(&a.name)))
        .filter(|c| c.version == version && c.warm());
    match warm {
        Some(target) => {
            target.generation.fetch_add(1, Ordering::SeqCst);
            switch(
                rep,
                svc,
                vec![(target.name.clone(), 100)],
                &format!(
                    "instant rollback to {version} ({}, still warm)",
                    target.name
                ),
            );
            Ok(Switched::now(svc, active, target))
        }
        None => {
            rep.step(
                "rollback.cold",
                Some(&svc.config.name),
                format!("{version} is no longer running; starting it like a deploy"),
            );
            blue_green(p, rep, svc, version).await
        }
    }
}

/// Undo the switches of this release, newest first. Not while the platform stops: everything
/// is being stopped, and a revert would start instances again.
async fn revert(p: &Arc<Platform>, rep: &Reporter, switched: Vec<Switched>) {
    if p.is_stopping() {
        rep.step(
            "deploy.not_reverted",
            None,
            "the platform is stopping: nothing is reverted; the next start runs the last active release",
        );
        return;
    }
    for s in switched.into_iter().rev() {
        let name = s.svc.config.name.clone();
        match &s.old {
            Some(old)
                if s.svc
                    .colour(&old.name)
                    .is_some_and(|c| Arc::ptr_eq(&c, old)) =>
            {
                old.generation.fetch_add(1, Ordering::SeqCst);
                switch(
                    rep,
                    &s.svc,
                    vec![(old.name.clone(), 100)],
                    &format!("reverted to {}", old.version),
                );
                retire(p, &s.svc, &s.new).await;
            }
            _ => {
                // Rolling replaced the old colour: start the previous version again.
                let previous = p
                    .store
                    .active_versions()
                    .ok()
                    .and_then(|v| v.get(&name).cloned())
                    .unwrap_or_else(|| s.svc.config.version.clone());
                rep.step(
                    "deploy.reverting",
                    Some(&name),
                    format!("starting {previous} again"),
                );
                let colour = s.svc.add_colour(other_colour(&s.new.name), &previous);
                let _ = spawn_all(p, &s.svc, &colour);
                let _ = gate(p, &s.svc, &colour, None).await;
                switch(
                    rep,
                    &s.svc,
                    vec![(colour.name.clone(), 100)],
                    &format!("reverted to {previous}"),
                );
                retire(p, &s.svc, &s.new).await;
            }
        }
    }
}

/// Why a watch ended early.
enum Stop {
    /// The new version misbehaved.
    Breach(String),
    /// The release lost the deploy lock.
    LeaseLost(String),
    /// The platform is stopping (`down`, a signal).
    Stopping,
}

impl Stop {
    fn message(self) -> String {
        match self {
            Stop::Breach(m) | Stop::LeaseLost(m) => m,
            Stop::Stopping => STOPPING.to_string(),
        }
    }
}

/// Watch the new colours for `window`: unhealthy instances, 5xx ratio and p99 since the switch.
async fn watch(
    p: &Platform,
    rep: &Reporter,
    switched: &[Switched],
    window: Duration,
) -> Result<(), Stop> {
    let d = &p.config.deploy;
    let start = Instant::now();
    loop {
        rep.lease_lost().map_err(Stop::LeaseLost)?;
        if p.is_stopping() {
            return Err(Stop::Stopping);
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drain and stop every instance of `colour`, then forget it.
pub async fn retire(p: &Arc<Platform>, svc: &Arc<ServiceRuntime>, colour: &Arc<Colour>) {
    colour.generation.fetch_add(1, Ordering::SeqCst);
    let d = &p.config.deploy;
    let drains: Vec<_> = colour
        .instances()
        .into_iter()
        .map(|i| {
            let svc = svc.clone();
            let (drain, upgrade) = (d.drain_timeout, d.upgrade_drain_timeout);
            tokio::spawn(async move { i.drain_and_stop(&svc, drain, upgrade).await })
        })
        .collect();
    for t in drains {
        let _ = t.await;
    }
    if svc
        .colour(&colour.name)
        .is_some_and(|c| Arc::ptr_eq(&c, colour))
    {
        svc.remove_colour(&colour.name);
    }
}

/// Keep the previous colour warm for an instant rollback, then retire it unless something
/// (a rollback to it, a newer deploy) decided its fate first.
fn schedule_retirement(
    p: Arc<Platform>,
    svc: Arc<ServiceRuntime>,
    colour: Arc<Colour>,
    after: Duration,
) {
    let generation = colour.generation.fetch_add(1, Ordering::SeqCst) + 1;
    p.event(
        "deploy.warm",
        Some(&svc.config.name),
        None,
        format!(
            "{} ({}) stays warm for {} for an instant rollback",
            colour.version,
            colour.name,
            humantime::format_duration(after)
        ),
    );
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let serving = svc.serves(&colour.name);
        if colour.generation.load(Ordering::SeqCst) == generation && !serving {
            retire(&p, &svc, &colour).await;
            p.event(
                "deploy.retired",
                Some(&svc.config.name),
                None,
                format!("retired {} ({})", colour.version, colour.name),
            );
        }
    });
}

/// Run a hook command with the release in its environment, within the hooks' timeout.
async fn run_hook(
    p: &Platform,
    rep: &Reporter,
    name: &str,
    argv: &[String],
    version: &str,
    services: &str,
    release: i64,
) -> Result<(), String> {
    rep.step("hook.started", None, format!("{name}: {}", argv.join(" ")));
    let workdir = p
        .config
        .path
        .parent()
        .map(|d| d.to_path_buf())
        .unwrap_or_default();
    let env = [
        ("TCF_VERSION", version.to_string()),
        ("TCF_SERVICES", services.to_string()),
        ("TCF_RELEASE", release.to_string()),
        ("TCF_PLATFORM", p.config.platform.name.clone()),
    ];
    match hooks::run(argv, &env, &workdir, p.config.hooks.timeout).await {
        Ok(out) => {
            rep.step(
                "hook.passed",
                None,
                format!("{name} passed {}", hooks::last_line(&out.stdout)),
            );
            Ok(())
        }
        Err(hooks::HookError::Failed { status, last_line }) => {
            Err(format!("{name} exited with {status}: {last_line}"))
        }
        Err(e) => Err(format!("{name} {e}")),
    }
}
