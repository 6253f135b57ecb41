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
use std::time::{Duration, Instant};
use tcf_api::ProgressLine;
use tcf_config::Strategy;
use tcf_proxy::Snapshot;
use tcf_store::{now_ms, Acquire, Lease};
use tokio::sync::{mpsc, watch};

mod hooks;
mod lease;
mod strategies;
mod watching;

use lease::*;
use strategies::*;
use watching::*;
#[cfg(test)]
mod tests;

pub const DEPLOY_LOCK: &str = "deploy";
/// Why a release ended early when the daemon was asked to stop.
const STOPPING: &str = "interrupted (platform stopping)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Deploy(Strategy),
    Rollback,
    /// The same version again, instance by instance behind the health gate.
    Restart,
    /// The same version and spec with this many instances, changed in place.
    Scale(u32),
}

/// What to do: versions per service (applied in dependency order).
#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: Kind,
    pub targets: Vec<(String, String)>,
    /// The spec each target service runs with in this release (a deploy: the config file's
    /// current one; a rollback: the one the version ran with). A service not named keeps the
    /// spec of the colour it runs now.
    pub specs: BTreeMap<String, Arc<tcf_config::Service>>,
    /// Run `prod validate`'s checks before anything starts.
    pub validate: bool,
    /// Back up every `[backup]` source (verified by checksums) before anything starts.
    pub backup: bool,
    /// Failed checks only warn (a missing artifact still stops the release).
    pub force: bool,
    pub reason: Option<String>,
    pub actor: String,
    pub lock_wait: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Deployed,
    RolledBack,
    Restarted,
    Scaled,
    Failed(String),
    Reverted(String),
    /// Stopped and reverted on request (`prod abort`).
    Aborted(String),
    LockHeld(String),
    Invalid(String),
}

impl Outcome {
    pub fn result(&self) -> &'static str {
        match self {
            Outcome::Deployed => "deployed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Restarted => "restarted",
            Outcome::Scaled => "scaled",
            Outcome::Failed(_) => "failed",
            Outcome::Reverted(_) => "reverted",
            Outcome::Aborted(_) => "aborted",
            Outcome::LockHeld(_) => "lock_held",
            Outcome::Invalid(_) => "invalid",
        }
    }

    /// The documented exit codes of `prod deploy` and `prod rollback`.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Deployed | Outcome::RolledBack | Outcome::Restarted | Outcome::Scaled => 0,
            Outcome::Failed(_) | Outcome::Reverted(_) | Outcome::Aborted(_) => 1,
            Outcome::Invalid(_) => 2,
            Outcome::LockHeld(_) => 3,
        }
    }
}

pub use tcf_monitor::rfc3339;

/// Writes each step as an event and as a progress line to whoever started the release.
struct Reporter {
    p: Arc<Platform>,
    tx: mpsc::UnboundedSender<ProgressLine>,
    release: Option<i64>,
    /// Set once the release holds the deploy lock: why it was lost, if it was.
    lease_lost: Option<watch::Receiver<Option<String>>>,
    /// Who asked for the release: every step is recorded as theirs.
    actor: String,
    specs: BTreeMap<String, Arc<tcf_config::Service>>,
}

impl Reporter {
    /// The spec a new colour of `svc` runs with in this release.
    fn spec_for(&self, svc: &ServiceRuntime) -> Arc<tcf_config::Service> {
        self.specs
            .get(&svc.config.name)
            .cloned()
            .or_else(|| svc.active_colour().map(|c| c.current_spec()))
            .unwrap_or_else(|| Arc::new(svc.config.clone()))
    }

    /// Why the release must stop now, if it must: its lease is lost, the platform is stopping,
    /// or someone asked to abort it.
    fn interruption(&self) -> Option<Stop> {
        if let Err(why) = self.lease_lost() {
            return Some(Stop::LeaseLost(why));
        }
        if self.p.is_stopping() {
            return Some(Stop::Stopping);
        }
        lock(&self.p.abort).clone().map(Stop::Aborted)
    }

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
        let aborted_by = lock(&self.p.abort).clone();
        if let Some(who) = aborted_by {
            let msg = format!("aborted by {who}: {msg}");
            return match self.record_end("aborted").await {
                Ok(()) => Outcome::Aborted(msg),
                Err(e) => Outcome::Aborted(format!("{msg}; {e}")),
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
        self.p
            .event_by(&self.actor, kind, service, None, message.clone());
        let _ = self.tx.send(ProgressLine {
            time: rfc3339(now_ms()),
            step: kind.to_string(),
            service: service.map(str::to_string),
            message,
            release: self.release,
            result: None,
            exit_code: None,
            report: None,
        });
    }

    fn finish(&self, outcome: &Outcome) {
        let message = match outcome {
            Outcome::Deployed | Outcome::RolledBack | Outcome::Restarted | Outcome::Scaled => {
                match self.release {
                    Some(id) => format!("release {id} is active"),
                    None => "done".to_string(),
                }
            }
            Outcome::Failed(m)
            | Outcome::Reverted(m)
            | Outcome::Aborted(m)
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
            report: None,
        });
    }
}

/// Run a release to its end; the progress channel gets every step and the result last.
pub async fn run(p: Arc<Platform>, plan: Plan, tx: mpsc::UnboundedSender<ProgressLine>) -> Outcome {
    let mut rep = Reporter {
        p: p.clone(),
        tx,
        release: None,
        lease_lost: None,
        actor: plan.actor.clone(),
        specs: plan.specs.clone(),
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
    // One release at a time in this daemon, even when the lease was released by hand.
    let _slot = match p.release_slot.try_lock() {
        Ok(slot) => slot,
        Err(_) => {
            // Named as the lease names its holder; the lease may be gone (released by hand).
            let holder = match p.with_store(|s| s.lock(DEPLOY_LOCK)).await {
                Ok(Some(held)) => held_by(&held),
                _ => format!(
                    "the deploy lock is held by a release running in this daemon: {}",
                    lock(&p.deploying).clone().unwrap_or_default()
                ),
            };
            if plan.lock_wait.is_zero() {
                return Outcome::LockHeld(format!(
                    "{holder}; wait with --lock-wait, or see `tcf-platform lock status`"
                ));
            }
            rep.step("lock.waiting", None, format!("waiting: {holder}"));
            match tokio::time::timeout(plan.lock_wait, p.release_slot.lock()).await {
                Ok(slot) => slot,
                Err(_) => {
                    return Outcome::LockHeld(format!(
                        "{holder}; still held after --lock-wait {}",
                        humantime::format_duration(plan.lock_wait)
                    ))
                }
            }
        }
    };
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
                let who = held_by(&held);
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
    *lock(&p.abort) = None;
    let lease = LeaseGuard::hold(p.clone(), owner, ttl);
    rep.lease_lost = Some(lease.lost.clone());
    locked(p, plan, rep).await
    // `lease` drops here (or while unwinding from a panic): heartbeat stopped, lock released.
}

/// `prod validate`'s checks, as the release's first steps: a failure stops it before anything
/// starts (with `--force` only a warning, but a missing artifact stops it whatever).
async fn gate_on_validation(p: &Arc<Platform>, plan: &Plan, rep: &Reporter) -> Result<(), String> {
    let version = plan.targets.first().map(|(_, v)| v.clone());
    let opts = crate::validate::Options {
        version,
        services: plan.targets.iter().map(|(s, _)| s.clone()).collect(),
        check_dependencies: false,
        security_scan: false,
        in_release: true,
    };
    let fresh = crate::validate::load_fresh(p).await;
    let checks = crate::validate::run(p, fresh.as_ref().map_err(Clone::clone), &opts).await;
    let mut blocking = Vec::new();
    for c in &checks {
        use crate::validate::State;
        let state = match c.state {
            State::Pass => "PASS",
            State::Warn => "WARN",
            State::Fail => "FAIL",
        };
        rep.step(
            "validate.check",
            c.service.as_deref(),
            format!(
                "{} {state}: {}{}",
                c.id,
                c.message,
                c.remedy
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        );
        if c.state == State::Fail && (!plan.force || c.id == crate::validate::ARTIFACT) {
            blocking.push(format!(
                "{}{}: {}",
                c.id,
                c.service
                    .as_ref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default(),
                c.message
            ));
        }
    }
    if blocking.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "validation failed, nothing started: {}",
            blocking.join("; ")
        ))
    }
}

/// The pre-deploy backup: every `[backup]` source, verified by checksums, its manifest naming
/// the release (so retention keeps it while the release is the active or previous one).
async fn pre_deploy_backup(
    p: &Arc<Platform>,
    rep: &Reporter,
    release: i64,
) -> Result<String, String> {
    let Some(config) = p.config.backup.as_ref() else {
        return Err("--backup needs a [backup] section in the config (docs/backups.md)".into());
    };
    let settings = p.backup_settings(config).await?;
    rep.step(
        "backup.started",
        None,
        "backing up every [backup] source".to_string(),
    );
    let progress = std::sync::Arc::new(BackupProgress {
        p: p.clone(),
        tx: rep.tx.clone(),
        release: Some(release),
        actor: rep.actor.clone(),
    });
    tcf_backup::pre_deploy_backup(settings, release.to_string(), progress)
        .await
        .map_err(|e| e.to_string())
}

/// A backup's progress as the release's progress lines and events.
struct BackupProgress {
    p: Arc<Platform>,
    tx: mpsc::UnboundedSender<ProgressLine>,
    release: Option<i64>,
    actor: String,
}

impl tcf_backup::Progress for BackupProgress {
    fn step(&self, message: &str) {
        self.p
            .event_by(&self.actor, "backup.progress", None, None, message);
        let _ = self.tx.send(ProgressLine {
            time: rfc3339(now_ms()),
            step: "backup.progress".into(),
            service: None,
            message: message.to_string(),
            release: self.release,
            result: None,
            exit_code: None,
            report: None,
        });
    }
}

/// Who holds the deploy lock, since when and why, as every refusal names it.
fn held_by(held: &Lease) -> String {
    format!(
        "the deploy lock is held by {} on {} since {}{}",
        held.owner,
        held.host,
        rfc3339(held.acquired_ms),
        held.reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    )
}

fn describe(plan: &Plan) -> String {
    let what = match plan.kind {
        Kind::Deploy(s) => format!("{} deploy", s.as_str()),
        Kind::Rollback => "rollback".to_string(),
        Kind::Restart => "restart".to_string(),
        Kind::Scale(n) => format!("scale to {n}"),
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
        Kind::Restart => "restart",
        Kind::Scale(_) => "scale",
    };
    let versions: BTreeMap<String, String> = plan.targets.iter().cloned().collect();
    let (actor, reason) = (plan.actor.clone(), plan.reason.clone());
    // What each service runs with in this release, so a rollback can restore it.
    let specs: BTreeMap<String, String> = plan
        .targets
        .iter()
        .filter_map(|(service, _)| {
            let svc = p.services.get(service)?;
            serde_json::to_string(&*rep.spec_for(svc))
                .ok()
                .map(|json| (service.clone(), json))
        })
        .collect();
    let created = p
        .with_store(move |s| {
            s.create_release_with_specs(
                strategy_name,
                "in_progress",
                &actor,
                reason.as_deref(),
                &versions,
                &specs,
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

    if plan.validate {
        if let Err(e) = gate_on_validation(p, plan, rep).await {
            return rep.failed(e).await;
        }
    }
    if plan.backup {
        match pre_deploy_backup(p, rep, release).await {
            Ok(id) => {
                let stored = p
                    .with_store({
                        let id = id.clone();
                        move |s| s.set_release_backup(release, &id)
                    })
                    .await;
                if let Err(e) = stored {
                    return rep
                        .failed(format!("cannot record backup {id} on the release: {e}"))
                        .await;
                }
                rep.step(
                    "backup.done",
                    None,
                    format!("backup {id} taken and verified (checksums) before anything started"),
                );
            }
            Err(e) if plan.force => rep.step(
                "backup.failed",
                None,
                format!("the backup failed ({e}); going on because of --force"),
            ),
            Err(e) => {
                return rep
                    .failed(format!("the backup failed, nothing started: {e}"))
                    .await
            }
        }
    }

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
        let target = rep.spec_for(svc);
        let spec = crate::supervisor::instance_spec(
            p,
            &target,
            &format!("{service}-check"),
            "check",
            version,
            0,
        );
        if let Err(reason) = p.runtime_for(&target).check(&spec).await {
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
        if let Some(stop) = rep.interruption() {
            revert(p, rep, switched).await;
            return rep
                .failed(format!(
                    "{}; stopped before {service}, every service is back on its previous version",
                    stop.message()
                ))
                .await;
        }
        let step = match plan.kind {
            Kind::Deploy(Strategy::BlueGreen) => blue_green(p, rep, &svc, version).await.map(Some),
            Kind::Deploy(Strategy::Canary) => canary(p, rep, &svc, version).await.map(Some),
            Kind::Deploy(Strategy::Rolling) => rolling(p, rep, &svc, version).await.map(Some),
            Kind::Rollback => rollback_service(p, rep, &svc, version).await.map(Some),
            Kind::Restart => rolling(p, rep, &svc, version).await.map(Some),
            // In place: no colour switched, nothing to watch or revert.
            Kind::Scale(n) => scale(p, rep, &svc, n).await.map(|()| None),
        };
        match step {
            Ok(Some(s)) => switched.push(s),
            Ok(None) => {}
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
        Kind::Deploy(Strategy::BlueGreen) | Kind::Deploy(Strategy::Rolling) | Kind::Restart
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
            Err(stop @ (Stop::LeaseLost(_) | Stop::Aborted(_))) => {
                revert(p, rep, switched).await;
                return rep
                    .failed(format!(
                        "{}; stopped while watching, every service is back on its previous version",
                        stop.message()
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
        for (from, backup) in mark_rolled_back(p, &plan.targets, release).await {
            rep.step(
                "rollback.backup",
                None,
                format!(
                    "release {from} took backup {backup} before it started; if it changed data, restore it with: tcf-platform backup restore {backup} --force"
                ),
            );
        }
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
        Kind::Restart | Kind::Scale(_) => ("post_restart", &None),
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
        Kind::Restart => Outcome::Restarted,
        Kind::Scale(_) => Outcome::Scaled,
    }
}

/// The release a rollback went back from is recorded as rolled back (in one store call, off
/// the runtime threads; a failure is logged: the rollback itself stands). Returns the backups
/// those releases took before they started: their data may need restoring too.
async fn mark_rolled_back(
    p: &Platform,
    targets: &[(String, String)],
    rollback_release: i64,
) -> Vec<(i64, String)> {
    let services: Vec<String> = targets.iter().map(|(s, _)| s.clone()).collect();
    let marked = p
        .with_store(move |store| {
            let releases = store.releases(200)?;
            let mut backups = Vec::new();
            for service in &services {
                if let Some(from) = releases
                    .iter()
                    .filter(|r| {
                        r.id != rollback_release
                            && tcf_store::SUCCESSFUL.contains(&r.status.as_str())
                    })
                    .find(|r| r.versions.contains_key(service))
                {
                    store.finish_release(from.id, "rolled_back")?;
                    if let Some(b) = &from.backup {
                        backups.push((from.id, b.clone()));
                    }
                }
            }
            backups.dedup();
            Ok::<_, tcf_store::StoreError>(backups)
        })
        .await;
    marked.unwrap_or_else(|e| {
        tracing::error!("cannot mark the release rolled back from: {e}");
        Vec::new()
    })
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
