//! The strategies: how a service moves to a new colour (blue-green, canary, rolling), how
//! a rollback switches back, how a failed release reverts, and how an old colour retires.

use super::*;

/// A service whose traffic moved to a new colour in this release.
pub(super) struct Switched {
    pub(super) svc: Arc<ServiceRuntime>,
    pub(super) old: Option<Arc<Colour>>,
    pub(super) new: Arc<Colour>,
    /// The new colour's counters at the switch: the watch looks only at what came after.
    pub(super) since: Snapshot,
}

impl Switched {
    /// Counting for the watch starts now.
    pub(super) fn now(
        svc: &Arc<ServiceRuntime>,
        old: Option<Arc<Colour>>,
        new: Arc<Colour>,
    ) -> Switched {
        let since = new.pool.stats().snapshot();
        Switched {
            svc: svc.clone(),
            old,
            new,
            since,
        }
    }
}

/// A new colour of `svc` for `version`, with the spec this release runs it with; no
/// instances yet.
pub(super) fn new_colour(
    rep: &Reporter,
    svc: &Arc<ServiceRuntime>,
    version: &str,
) -> (Option<Arc<Colour>>, Arc<Colour>) {
    let active = svc.active_colour();
    let name = active.as_ref().map_or("blue", |c| other_colour(&c.name));
    let colour = svc.add_colour(name, version, rep.spec_for(svc));
    (active, colour)
}

/// Free the inactive slot: a colour kept warm from an earlier release is retired now.
pub(super) async fn free_slot(p: &Arc<Platform>, rep: &Reporter, svc: &Arc<ServiceRuntime>) {
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

pub(super) fn spawn_all(
    p: &Arc<Platform>,
    svc: &Arc<ServiceRuntime>,
    colour: &Arc<Colour>,
) -> Result<(), String> {
    for n in 1..=colour.count() {
        spawn_instance(p, svc, colour, n).map_err(|e| format!("cannot start an instance: {e}"))?;
    }
    Ok(())
}

/// Wait until every instance of `colour` (or just `only`) is healthy, within the deadline.
pub(super) async fn gate(
    rep: &Reporter,
    svc: &ServiceRuntime,
    colour: &Colour,
    only: Option<&str>,
) -> Result<Duration, String> {
    let h = &colour.spec.health;
    let limit = h.start_period + h.deadline;
    let start = Instant::now();
    let mut last_report = Instant::now();
    loop {
        if let Some(stop) = rep.interruption() {
            return Err(stop.message());
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
                "{} was not healthy within {} (health {} every {}); {}",
                colour.version,
                humantime::format_duration(limit),
                match &h.probe {
                    tcf_config::Probe::Http { path } => format!("GET {path}"),
                    tcf_config::Probe::Tcp => "TCP connect".into(),
                },
                humantime::format_duration(h.interval),
                last_probes(&instances)
            ));
        }
        // Nobody should stare at 30 s of silence: where the gate stands, every 5 s.
        if last_report.elapsed() >= GATE_REPORT_EVERY {
            last_report = Instant::now();
            let ready = instances.iter().filter(|i| svc.in_pool(i)).count();
            rep.step(
                "deploy.gate_waiting",
                Some(&svc.config.name),
                format!(
                    "{ready} of {} instance(s) of {} healthy after {}s (deadline {}); {}",
                    instances.len(),
                    colour.version,
                    start.elapsed().as_secs(),
                    humantime::format_duration(limit),
                    last_probes(&instances)
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How often a waiting gate reports progress.
const GATE_REPORT_EVERY: Duration = Duration::from_secs(5);

/// The last probe result of each instance, for a gate that waits or failed.
fn last_probes(instances: &[Arc<Instance>]) -> String {
    let each: Vec<String> = instances
        .iter()
        .map(|i| {
            let probe = i.info().last_probe;
            format!("{}: {}", i.id, probe.as_deref().unwrap_or("not probed yet"))
        })
        .collect();
    format!("last probes: {}", each.join("; "))
}

pub(super) async fn start_and_gate(
    p: &Arc<Platform>,
    rep: &Reporter,
    svc: &Arc<ServiceRuntime>,
    version: &str,
) -> Result<(Option<Arc<Colour>>, Arc<Colour>), String> {
    free_slot(p, rep, svc).await;
    let (old, new) = new_colour(rep, svc, version);
    let name = svc.config.name.as_str();
    rep.step(
        "deploy.starting",
        Some(name),
        format!(
            "starting {} instance(s) of {version} as {}",
            new.count(),
            new.name
        ),
    );
    let gated = match spawn_all(p, svc, &new) {
        Ok(()) => gate(rep, svc, &new, None).await,
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

pub(super) fn switch(
    rep: &Reporter,
    svc: &ServiceRuntime,
    weights: Vec<(String, u32)>,
    what: &str,
) {
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

pub(super) async fn blue_green(
    p: &Arc<Platform>,
    rep: &Reporter,
    svc: &Arc<ServiceRuntime>,
    version: &str,
) -> Result<Switched, String> {
    let (old, new) = start_and_gate(p, rep, svc, version).await?;
    Ok(switch_all(rep, svc, old, new, version))
}

pub(super) async fn canary(
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
pub(super) fn switch_all(
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

pub(super) async fn rolling(
    p: &Arc<Platform>,
    rep: &Reporter,
    svc: &Arc<ServiceRuntime>,
    version: &str,
) -> Result<Switched, String> {
    free_slot(p, rep, svc).await;
    let name = svc.config.name.clone();
    let (old, new) = new_colour(rep, svc, version);
    let n = new.count();
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
            if let Err(reason) = gate(rep, svc, &new, Some(&inst.id)).await {
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
pub(super) async fn rolling_failed(
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

pub(super) async fn rollback_service(
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
pub(super) async fn revert(p: &Arc<Platform>, rep: &Reporter, switched: Vec<Switched>) {
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
                let spec = s
                    .old
                    .as_ref()
                    .map_or_else(|| Arc::new(s.svc.config.clone()), |o| o.current_spec());
                let colour = s.svc.add_colour(other_colour(&s.new.name), &previous, spec);
                let _ = spawn_all(p, &s.svc, &colour);
                let _ = gate(rep, &s.svc, &colour, None).await;
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
pub(super) fn schedule_retirement(
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

/// Change how many instances the serving colour of `svc` runs, in place: new ones start and
/// join the pool once healthy (a failed gate stops them again and changes nothing); removed
/// ones (the highest numbers) leave the pool, finish their requests and stop.
pub(super) async fn scale(
    p: &Arc<Platform>,
    rep: &Reporter,
    svc: &Arc<ServiceRuntime>,
    to: u32,
) -> Result<(), String> {
    let name = svc.config.name.clone();
    let colour = svc
        .active_colour()
        .ok_or_else(|| format!("{name} runs no instances to scale"))?;
    let from = colour.count();
    if to > from {
        rep.step(
            "scale.starting",
            Some(&name),
            format!(
                "starting {} more instance(s) of {}",
                to - from,
                colour.version
            ),
        );
        colour.set_count(to);
        let mut started = Vec::new();
        for k in from + 1..=to {
            match spawn_instance(p, svc, &colour, k) {
                Ok(i) => started.push(i),
                Err(e) => {
                    undo_scale_up(p, svc, &colour, &started, from).await;
                    return Err(format!("cannot start an instance: {e}"));
                }
            }
        }
        for inst in &started {
            if let Err(reason) = gate(rep, svc, &colour, Some(&inst.id)).await {
                undo_scale_up(p, svc, &colour, &started, from).await;
                return Err(reason);
            }
        }
    } else if to < from {
        rep.step(
            "scale.stopping",
            Some(&name),
            format!("stopping {} instance(s) after their requests", from - to),
        );
        colour.set_count(to);
        let d = &p.config.deploy;
        for inst in colour.instances() {
            let number = inst
                .id
                .rsplit('-')
                .next()
                .and_then(|n| n.parse::<u32>().ok());
            if number.is_some_and(|n| n > to) {
                inst.drain_and_stop(svc, d.drain_timeout, d.upgrade_drain_timeout)
                    .await;
                colour.remove_instance(&inst.id);
            }
        }
        svc.rebuild_route();
    }
    rep.step(
        "scale.done",
        Some(&name),
        format!(
            "{name} runs {to} instance(s) of {} (was {from})",
            colour.version
        ),
    );
    Ok(())
}

/// A scale-up that failed: its new instances go, the count is what it was.
async fn undo_scale_up(
    p: &Arc<Platform>,
    svc: &Arc<ServiceRuntime>,
    colour: &Arc<Colour>,
    started: &[Arc<Instance>],
    from: u32,
) {
    let d = &p.config.deploy;
    for inst in started {
        inst.drain_and_stop(svc, d.drain_timeout, d.upgrade_drain_timeout)
            .await;
        colour.remove_instance(&inst.id);
    }
    colour.set_count(from);
    svc.rebuild_route();
}
