//! Instance lifecycle: start through the [`Runtime`](tcf_runtime::Runtime), probe health, keep
//! the proxy's pool equal to the healthy instances, restart crashed instances with exponential
//! backoff, and stop gracefully (SIGTERM, `stop_timeout`, SIGKILL of the whole group).

use crate::health;
use crate::platform::{lock, Colour, Health, Instance, InstanceState, Platform, ServiceRuntime};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tcf_runtime::{Exit, InstanceSpec};
use tcf_store::{now_ms, InstanceRecord};
use tokio::sync::oneshot;

/// The environment variable naming an instance's platform (its state directory).
pub const STATE_DIR_ENV: &str = "TCF_STATE_DIR";

/// Crashes within this window count towards backoff and crashloop.
const CRASH_WINDOW: Duration = Duration::from_secs(120);
/// This many crashes within the window mark an instance `crashloop`.
const CRASHLOOP_AFTER: usize = 5;
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Probe this often until an instance is first healthy, so starts and deploys are quick.
const STARTUP_PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// The ports instances are given. Below Linux's ephemeral range (32768-60999 by default), from
/// which the kernel takes the local port of every outgoing connection: a port from the
/// ephemeral range, free when handed out, can become some connect()'s before the instance
/// binds it, and the instance then fails to start. Nomad's dynamic ports use this range for
/// the same reason.
const INSTANCE_PORTS: std::ops::Range<u16> = 20000..32000;

/// The kernel's ephemeral port range, where the host says (a default where it does not).
fn ephemeral_ports() -> std::ops::RangeInclusive<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some(bounds.next()??..=bounds.next()??)
        })
        .unwrap_or(32768..=60999)
}

/// A free loopback port for a new instance, from [`INSTANCE_PORTS`] outside the ephemeral
/// range. Handed out in turn from a per-process starting point, so two instances started
/// together never get the same port before either has bound it, and daemons side by side
/// start far apart. The kernel's choice only when that range is full.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(INSTANCE_PORTS.end - INSTANCE_PORTS.start);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id().wrapping_mul(2_654_435_761);
        let _ = NEXT.compare_exchange(u32::MAX, seed % span, Ordering::Relaxed, Ordering::Relaxed);
    }
    let ephemeral = ephemeral_ports();
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = INSTANCE_PORTS.start + offset as u16;
        if !ephemeral.contains(&port) && port_is_free(port) {
            return Ok(port);
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// True when nothing listens on (or holds) `port` on loopback right now.
fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn substitute(text: &str, service: &str, version: &str, instance: &str) -> String {
    text.replace("{version}", version)
        .replace("{service}", service)
        .replace("{instance}", instance)
}

/// Exponential backoff for the n-th recent crash (n >= 1).
pub fn backoff(recent_crashes: usize) -> Duration {
    let exp = recent_crashes.saturating_sub(1).min(16) as u32;
    BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

/// Create instance number `n` of `colour` and start supervising it.
pub fn spawn_instance(
    p: &Arc<Platform>,
    svc: &Arc<ServiceRuntime>,
    colour: &Arc<Colour>,
    n: u32,
) -> std::io::Result<Arc<Instance>> {
    spawn_or_adopt(p, svc, colour, n, None)
}

/// Like [`spawn_instance`], but the first run is a container found running at startup.
pub fn spawn_or_adopt(
    p: &Arc<Platform>,
    svc: &Arc<ServiceRuntime>,
    colour: &Arc<Colour>,
    n: u32,
    adopted: Option<(u16, Box<dyn tcf_runtime::Running>)>,
) -> std::io::Result<Arc<Instance>> {
    let name = &svc.config.name;
    let id = format!("{name}-{}-{n}", colour.name);
    let (port, adopted) = match adopted {
        Some((port, running)) => (port, Some(running)),
        None => (free_port()?, None),
    };
    let inst = Arc::new(Instance::new(id, name, colour, port));
    lock(&colour.instances).push(inst.clone());
    let task = tokio::spawn(supervise(p.clone(), svc.clone(), inst.clone(), adopted));
    *lock(&inst.task) = Some(task);
    Ok(inst)
}

enum Outcome {
    Exited(Exit),
    Stop,
    MissedDeadline,
}

/// What the runtime needs to start instance `id` of `cfg` at `version`; placeholders replaced.
pub fn instance_spec(
    p: &Platform,
    cfg: &tcf_config::Service,
    id: &str,
    colour: &str,
    version: &str,
    port: u16,
) -> InstanceSpec {
    let sub = |a: &String| substitute(a, &cfg.name, version, id);
    InstanceSpec {
        id: id.to_string(),
        service: cfg.name.clone(),
        version: version.to_string(),
        command: cfg.command.iter().map(sub).collect(),
        env: cfg
            .env
            .iter()
            .map(|(k, v)| (k.clone(), sub(v)))
            // Which platform an instance belongs to, found without the store (a daemon that
            // starts with its store gone still finds what runs).
            .chain([(
                STATE_DIR_ENV.to_string(),
                p.config.platform.state_dir.display().to_string(),
            )])
            .collect::<BTreeMap<_, _>>(),
        port,
        log_path: p.logs_dir().join(format!("{id}.log")),
        log_max_size: cfg.log_max_size,
        colour: colour.to_string(),
        stop_timeout: cfg.stop_timeout,
        container: cfg.docker.as_ref().map(|d| tcf_runtime::ContainerSpec {
            image: sub(&d.image),
            container_port: d.container_port,
            entrypoint: d.entrypoint.clone(),
            memory_bytes: d.memory,
            cpus: d.cpus,
            user: d.user.clone(),
            read_only: d.read_only,
            volumes: d.volumes.clone(),
            network: d.network.clone(),
            pull_missing: d.pull_missing,
            swarm: cfg.swarm.as_ref().map(|s| tcf_runtime::SwarmPlacement {
                constraints: s.constraints.clone(),
                spread: s.preferences.clone(),
                restart: match s.restart {
                    tcf_config::SwarmRestart::Any => "any",
                    tcf_config::SwarmRestart::OnFailure => "on-failure",
                    tcf_config::SwarmRestart::None => "none",
                }
                .to_string(),
                restart_delay: s.restart_delay,
                restart_max_attempts: s.restart_max_attempts,
            }),
        }),
        // Which variables carry a secret: known from the spec, before it is resolved.
        secret_env: cfg
            .env
            .iter()
            .filter(|(_, v)| v.contains("${secret:"))
            .map(|(k, _)| k.clone())
            .collect(),
    }
}

async fn supervise(
    p: Arc<Platform>,
    svc: Arc<ServiceRuntime>,
    inst: Arc<Instance>,
    mut adopted: Option<Box<dyn tcf_runtime::Running>>,
) {
    // The instance's own spec: a deploy may have changed command, env or health.
    let spec = inst.spec.clone();
    let cfg = &*spec;
    let mut stop_rx = inst.stop.subscribe();
    let mut crashes: VecDeque<Instant> = VecDeque::new();
    let mut crashloop_reported = false;
    let id = inst.id.as_str();
    let service = Some(cfg.name.as_str());
    loop {
        if *stop_rx.borrow() {
            break;
        }
        {
            let mut i = lock(&inst.info);
            i.state = InstanceState::Starting;
            i.health = Health::Unknown;
            i.healthy_since_start = false;
        }
        let local_ports = p.runtime_for(cfg).uses_local_ports();
        if adopted.is_none() && local_ports && !port_is_free(inst.port()) {
            // Taken while the instance was down (any program, our own outgoing connections
            // included): starting it there would fail again and again.
            match free_port() {
                Ok(port) => {
                    p.event(
                        "instance.port_changed",
                        service,
                        Some(id),
                        format!(
                            "port {} is taken; listening on {port} from now on",
                            inst.port()
                        ),
                    );
                    inst.move_to_port(port);
                }
                Err(e) => tracing::warn!("no free port for {id}: {e}"),
            }
        }
        let mut spec = instance_spec(&p, cfg, &inst.id, &inst.colour, &inst.version, inst.port());
        let mut ran_healthy_for = Duration::ZERO;
        let started_or_adopted = match adopted.take() {
            Some(running) => Ok(running),
            // `${secret:NAME}` values exist in plain text only in the started instance's env.
            None => match p
                .resolve_secrets(&cfg.name, std::mem::take(&mut spec.env))
                .await
            {
                Ok(env) => {
                    spec.env = env;
                    let runtime = p.runtime_for(cfg);
                    // A start can take a while (a Swarm placing a task); a stop asked for
                    // meanwhile wins, and the runtime removes what it began.
                    tokio::select! {
                        started = runtime.start(spec) => started.map_err(|e| e.to_string()),
                        _ = stop_rx.wait_for(|s| *s) => Err("stopped while starting".to_string()),
                    }
                }
                Err(e) => Err(e),
            },
        };
        match started_or_adopted {
            Err(e) => p.event("instance.start_failed", service, Some(id), e.to_string()),
            Ok(mut running) => {
                let ident = running.identity();
                let started = Instant::now();
                // A runtime that places instances itself says where this one listens (a
                // Swarm task: its node's address and the port it published there).
                if let Some(addr) = running.address() {
                    inst.move_to(addr);
                }
                let node = running.node();
                {
                    let mut i = lock(&inst.info);
                    i.pid = Some(ident.pid);
                    i.started = Some(started);
                    i.state = InstanceState::Running;
                    i.cpu_ticks = None;
                    i.node = node.clone();
                }
                let record = InstanceRecord {
                    id: inst.id.clone(),
                    service: cfg.name.clone(),
                    version: inst.version.clone(),
                    pid: Some(ident.pid as i64),
                    pgid: Some(ident.pgid as i64),
                    proc_start_ticks: ident.start_ticks.map(|t| t as i64),
                    port: inst.port(),
                    state: "running".into(),
                    started_ms: now_ms(),
                    runtime: p.runtime_for(cfg).name().to_string(),
                };
                if let Err(e) = p.with_store(move |s| s.upsert_instance(&record)).await {
                    tracing::error!("cannot record instance {id}: {e}");
                }
                p.event(
                    "instance.started",
                    service,
                    Some(id),
                    match &node {
                        Some(node) => {
                            format!("started {} on node {node} ({})", inst.version, inst.addr())
                        }
                        None => format!(
                            "started {} (pid {}, port {})",
                            inst.version,
                            ident.pid,
                            inst.port()
                        ),
                    },
                );
                let (deadline_tx, deadline_rx) = oneshot::channel::<()>();
                // Stopped with its supervisor, even when that is aborted (a handover).
                let prober = AbortOnDrop(tokio::spawn(probe_loop(
                    p.clone(),
                    svc.clone(),
                    inst.clone(),
                    started,
                    deadline_tx,
                    running.status_probe(),
                )));
                // CPU and memory of an instance this host's /proc cannot see (a task on
                // another node), from its runtime; stopped with the prober.
                let _usage_sampler = running.usage_probe().map(|probe| {
                    AbortOnDrop(tokio::spawn(crate::metrics::sample_usage(
                        inst.clone(),
                        probe,
                    )))
                });
                let outcome = tokio::select! {
                    exit = running.wait() => Outcome::Exited(exit),
                    _ = stop_rx.wait_for(|s| *s) => Outcome::Stop,
                    Ok(()) = deadline_rx => Outcome::MissedDeadline,
                };
                drop(prober);
                let was_healthy = lock(&inst.info).health == Health::Healthy;
                {
                    let mut i = lock(&inst.info);
                    i.health = Health::Unknown;
                    i.healthy_since_start = false;
                    if matches!(outcome, Outcome::Stop) {
                        i.state = InstanceState::Stopping;
                    }
                }
                // Out of the pool before it goes away; its idle connections are useless now.
                svc.rebuild_route();
                inst.backend().close_idle();
                match outcome {
                    Outcome::Exited(exit) => {
                        p.event(
                            "instance.exited",
                            service,
                            Some(id),
                            format!("exited unexpectedly: {exit}"),
                        );
                    }
                    Outcome::Stop => {
                        let exit = tcf_runtime::stop(running.as_mut(), cfg.stop_timeout).await;
                        forget_instance(&p, id).await;
                        p.event(
                            "instance.stopped",
                            service,
                            Some(id),
                            format!("stopped ({exit})"),
                        );
                        break;
                    }
                    Outcome::MissedDeadline => {
                        p.event(
                            "instance.deadline_missed",
                            service,
                            Some(id),
                            format!(
                                "not healthy within its {} deadline; restarting it",
                                humantime::format_duration(cfg.health.deadline)
                            ),
                        );
                        tcf_runtime::stop(running.as_mut(), cfg.stop_timeout).await;
                    }
                }
                forget_instance(&p, id).await;
                if was_healthy {
                    ran_healthy_for = started.elapsed();
                }
            }
        }
        if *stop_rx.borrow() {
            break;
        }
        // A crash after a long healthy run starts the count afresh.
        if ran_healthy_for > CRASH_WINDOW {
            crashes.clear();
            crashloop_reported = false;
        }
        let now = Instant::now();
        crashes.push_back(now);
        while crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            crashes.pop_front();
        }
        let delay = backoff(crashes.len());
        {
            let mut i = lock(&inst.info);
            i.restarts += 1;
            i.pid = None;
            i.state = if crashes.len() >= CRASHLOOP_AFTER {
                InstanceState::Crashloop
            } else {
                InstanceState::Backoff
            };
        }
        if crashes.len() >= CRASHLOOP_AFTER && !crashloop_reported {
            crashloop_reported = true;
            p.event(
                "instance.crashloop",
                service,
                Some(id),
                format!(
                    "crashed {} times in {}; retrying with backoff up to {}; see `tcf-platform logs {}`",
                    crashes.len(),
                    humantime::format_duration(CRASH_WINDOW),
                    humantime::format_duration(BACKOFF_MAX),
                    cfg.name
                ),
            );
        }
        p.event(
            "instance.restarting",
            service,
            Some(id),
            format!("restarting in {}", humantime::format_duration(delay)),
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_rx.wait_for(|s| *s) => break,
        }
    }
    {
        let mut i = lock(&inst.info);
        i.state = InstanceState::Stopped;
        i.health = Health::Unknown;
        i.healthy_since_start = false;
        i.pid = None;
    }
    svc.rebuild_route();
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Supervise again every instance whose supervisor was stopped for a handover that was called
/// off: a running one is adopted (same process), one that was between runs starts again.
pub async fn supervise_again(p: &Arc<Platform>) {
    for svc in p.services.values() {
        for inst in svc.instances() {
            if lock(&inst.task).is_some() {
                continue;
            }
            let runtime = p.runtime_for(&inst.spec);
            let running = inst.info().pid.and_then(|pid| {
                runtime.adopt(tcf_runtime::Identity {
                    pid,
                    pgid: pid,
                    start_ticks: tcf_runtime::procfs::start_ticks(pid),
                })
            });
            if running.is_none() && inst.info().pid.is_some() && runtime.name() != "process" {
                // A container cannot be adopted from here; the next daemon start reconciles it.
                tracing::warn!(
                    "{} is no longer supervised after the failed handover; restart the daemon to adopt it",
                    inst.id
                );
                continue;
            }
            let task = tokio::spawn(supervise(p.clone(), svc.clone(), inst.clone(), running));
            *lock(&inst.task) = Some(task);
        }
    }
}

/// The instance is gone: a later daemon has nothing to clean up.
async fn forget_instance(p: &Platform, id: &str) {
    let id = id.to_string();
    if let Err(e) = p.with_store(move |s| s.remove_instance(&id)).await {
        tracing::error!("cannot update the store after an instance stopped: {e}");
    }
}

/// Probe an instance until its supervisor stops this task; report a missed deadline once.
async fn probe_loop(
    p: Arc<Platform>,
    svc: Arc<ServiceRuntime>,
    inst: Arc<Instance>,
    started: Instant,
    deadline: oneshot::Sender<()>,
    runtime_health: Option<tcf_runtime::StatusProbe>,
) {
    let h = &inst.spec.health;
    let service = Some(svc.config.name.as_str());
    let id = Some(inst.id.as_str());
    let mut deadline = Some(deadline);
    let (mut passes, mut fails) = (0u32, 0u32);
    let mut ever_healthy = false;
    let mut last_error = String::new();
    loop {
        let result = health::instance(inst.addr(), &h.probe, h.timeout).await;
        lock(&inst.info).last_probe = Some(match &result {
            Ok(()) => "ok".to_string(),
            Err(why) => why.clone(),
        });
        if let Some(probe) = &runtime_health {
            let status = probe().await;
            lock(&inst.info).runtime_health = status;
        }
        let current = lock(&inst.info).health;
        match result {
            Ok(()) => {
                passes += 1;
                fails = 0;
                if current != Health::Healthy && passes >= h.healthy_threshold {
                    {
                        let mut i = lock(&inst.info);
                        i.health = Health::Healthy;
                        i.healthy_since_start = true;
                    }
                    svc.rebuild_route();
                    let msg = if ever_healthy {
                        "healthy again; back in the proxy's pool".to_string()
                    } else {
                        format!(
                            "healthy after {} ms; in the proxy's pool",
                            started.elapsed().as_millis()
                        )
                    };
                    ever_healthy = true;
                    p.event("instance.healthy", service, id, msg);
                }
            }
            Err(reason) => {
                passes = 0;
                last_error = reason.clone();
                let grace = !ever_healthy && started.elapsed() < h.start_period;
                if !grace {
                    fails += 1;
                }
                if current == Health::Healthy && fails >= h.unhealthy_threshold {
                    lock(&inst.info).health = Health::Unhealthy;
                    svc.rebuild_route();
                    p.event(
                        "instance.unhealthy",
                        service,
                        id,
                        format!("unhealthy after {fails} failed probes ({reason}); out of the proxy's pool"),
                    );
                } else if current == Health::Unknown && fails >= h.unhealthy_threshold {
                    lock(&inst.info).health = Health::Unhealthy;
                }
            }
        }
        if !ever_healthy && started.elapsed() >= h.deadline {
            if let Some(tx) = deadline.take() {
                tracing::warn!(
                    "{} missed its health deadline; last probe: {last_error}",
                    inst.id
                );
                let _ = tx.send(());
            }
            return;
        }
        let pause = if ever_healthy {
            h.interval
        } else {
            h.interval.min(STARTUP_PROBE_INTERVAL)
        };
        tokio::time::sleep(pause).await;
    }
}

/// Start a service once everything it depends on is healthy.
pub async fn start_service(p: Arc<Platform>, svc: Arc<ServiceRuntime>) {
    let cfg = &svc.config;
    let mut shutdown = p.shutdown.subscribe();
    for dep in &cfg.depends_on {
        let mut rx = if let Some(s) = p.services.get(dep) {
            s.healthy.subscribe()
        } else if let Some(d) = p.dependencies.get(dep) {
            d.healthy.subscribe()
        } else {
            continue;
        };
        if !*rx.borrow() {
            p.event(
                "service.waiting",
                Some(&cfg.name),
                None,
                format!("waiting for {dep} to be healthy"),
            );
            tokio::select! {
                _ = rx.wait_for(|h| *h) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
    let Some(colour) = svc.active_colour() else {
        return;
    };
    p.event(
        "service.starting",
        Some(&cfg.name),
        None,
        format!(
            "starting {} instance(s) of {} ({})",
            colour.count(),
            colour.version,
            colour.name
        ),
    );
    for n in 1..=colour.count() {
        let id = format!("{}-{}-{n}", cfg.name, colour.name);
        let adopted = adopt(&p, &svc, &id, &colour.version).await;
        if let Err(e) = spawn_or_adopt(&p, &svc, &colour, n, adopted) {
            p.event(
                "instance.start_failed",
                Some(&cfg.name),
                None,
                format!("no free port for instance {n}: {e}"),
            );
        }
    }
}

/// A process or container of this instance found running at startup, taken over instead of
/// replaced.
async fn adopt(
    p: &Arc<Platform>,
    svc: &Arc<ServiceRuntime>,
    id: &str,
    version: &str,
) -> Option<(u16, Box<dyn tcf_runtime::Running>)> {
    let left = lock(&p.adoptable_processes).remove(id);
    if let Some(left) = left {
        if left.version == version {
            p.event(
                "recovery.adopted",
                Some(&svc.config.name),
                Some(id),
                format!(
                    "adopted running process {} ({} {}, port {})",
                    left.running.identity().pid,
                    left.colour,
                    left.version,
                    left.port
                ),
            );
            return Some((left.port, left.running));
        }
    }
    if let Some(swarm) = p.swarm.as_ref() {
        let found = lock(&p.adoptable_swarm).remove(id);
        if let Some(found) = found {
            if found.version != version {
                return None;
            }
            let spec = instance_spec(p, &svc.config, id, &found.colour, version, 0);
            return match swarm.adopt(&found, &spec).await {
                Ok(running) => {
                    let addr = running.address()?;
                    p.event(
                        "recovery.adopted",
                        Some(&svc.config.name),
                        Some(id),
                        format!(
                            "adopted Swarm service {} on node {} ({addr})",
                            found.name,
                            running.node().unwrap_or_default()
                        ),
                    );
                    Some((addr.port(), running))
                }
                Err(e) => {
                    let _ = swarm.remove(&found.name).await;
                    p.event(
                        "recovery.removed",
                        Some(&svc.config.name),
                        Some(id),
                        format!(
                            "could not adopt Swarm service {}: {e}; removed it",
                            found.name
                        ),
                    );
                    None
                }
            };
        }
    }
    let docker = p.docker.as_ref()?;
    let found = lock(&p.adoptable).remove(id)?;
    let port = found.host_port?;
    if found.version != version {
        return None;
    }
    let spec = instance_spec(p, &svc.config, id, &found.colour, version, port);
    match docker.adopt(&found, &spec).await {
        Ok(running) => {
            p.event(
                "recovery.adopted",
                Some(&svc.config.name),
                Some(id),
                format!(
                    "adopted running container {} on port {port}",
                    &found.id[..12.min(found.id.len())]
                ),
            );
            Some((port, running))
        }
        Err(e) => {
            let _ = docker.remove(&found.id).await;
            p.event(
                "recovery.removed",
                Some(&svc.config.name),
                Some(id),
                format!("could not adopt container: {e}; removed it"),
            );
            None
        }
    }
}

/// Stop every instance, dependents before what they depend on, and wait for them.
pub async fn stop_all(p: &Arc<Platform>) {
    let mut order = p.config.start_order();
    order.reverse();
    for name in order {
        let Some(svc) = p.services.get(&name) else {
            continue;
        };
        let instances = svc.instances();
        for i in &instances {
            i.stop.send_replace(true);
        }
        for i in &instances {
            let task = lock(&i.task).take();
            if let Some(t) = task {
                let _ = t.await;
            }
        }
    }
}

/// Probe a dependency forever (until shutdown), recording changes.
pub async fn watch_dependency(p: Arc<Platform>, dep: Arc<crate::platform::DependencyRuntime>) {
    let mut shutdown = p.shutdown.subscribe();
    let name = dep.config.name.clone();
    loop {
        let result = health::dependency(&dep.config).await;
        let healthy = result.is_ok();
        let previous = lock(&dep.info).healthy;
        {
            let mut info = lock(&dep.info);
            info.healthy = Some(healthy);
            info.last_error = result.as_ref().err().cloned();
        }
        dep.healthy.send_replace(healthy);
        if previous != Some(healthy) {
            let (kind, msg) = match &result {
                Ok(()) => ("dependency.healthy", format!("{name} is healthy")),
                Err(e) => ("dependency.unhealthy", format!("{name} is unhealthy: {e}")),
            };
            p.event(kind, None, None, msg);
        }
        let pause = if healthy {
            dep.config.interval
        } else {
            dep.config.interval.min(Duration::from_secs(1))
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::TestPlatform;
    use std::sync::atomic::Ordering;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_instance_whose_port_was_taken_restarts_on_another() {
        let t = TestPlatform::start(&[("api", 1)], "").await;
        let svc = t.p.services["api"].clone();
        let inst = svc.instances()[0].clone();
        let old_port = inst.port();
        t.runtime.crash("api-blue-1").await;
        // Someone takes the port while the instance waits for its restart.
        let squatter = std::net::TcpListener::bind(("127.0.0.1", old_port)).unwrap();
        t.wait_until("the instance healthy again", |_| {
            inst.info().restarts == 1 && svc.in_pool(&inst)
        })
        .await;
        assert_ne!(inst.port(), old_port);
        assert_eq!(
            svc.colour("blue").unwrap().pool.backends()[0].addr.port(),
            inst.port()
        );
        drop(squatter);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unhealthy_instance_leaves_the_pool_and_comes_back() {
        // No panic threshold: the pool holds only healthy instances, even none.
        let t = TestPlatform::start(
            &[("api", 1)],
            "\n[services.api.health]\npanic_threshold = 0\n",
        )
        .await;
        let svc = t.p.services["api"].clone();
        let inst = svc.instances()[0].clone();
        // Still running, but its health checks fail for a while.
        t.runtime.set_sick("api-blue-1", true);
        t.wait_until("out of the pool", |_| !svc.in_pool(&inst))
            .await;
        assert!(svc.colour("blue").unwrap().pool.backends().is_empty());
        assert!(!*svc.healthy.borrow());
        t.runtime.set_sick("api-blue-1", false);
        t.wait_until("back in the pool", |_| svc.in_pool(&inst))
            .await;
        assert_eq!(svc.colour("blue").unwrap().pool.backends().len(), 1);
        assert!(*svc.healthy.borrow());
        assert_eq!(inst.info().restarts, 0, "it was never restarted");
    }

    /// The kinds of the service's events so far.
    fn event_kinds(t: &TestPlatform, service: &str) -> Vec<String> {
        t.p.event_log.flush();
        t.p.store
            .events(Some(service), 0, 1000)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    fn pool_size(svc: &ServiceRuntime) -> usize {
        svc.colour("blue").unwrap().pool.backends().len()
    }

    fn unhealthy(inst: &Instance) -> bool {
        inst.info().health == Health::Unhealthy
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_colour_whose_instances_all_fail_their_probes_keeps_its_traffic_in_panic() {
        let t = TestPlatform::start(&[("api", 2)], "").await;
        let svc = t.p.services["api"].clone();
        let instances = svc.instances();
        // Every probe fails at once (a loaded host, say) while the instances keep running.
        for i in &instances {
            t.runtime.set_sick(&i.id, true);
        }
        t.wait_until("both unhealthy", |_| instances.iter().all(|i| unhealthy(i)))
            .await;
        assert!(svc.in_panic());
        assert_eq!(
            pool_size(&svc),
            2,
            "a colour in panic routes to all its running instances"
        );
        assert!(!*svc.healthy.borrow(), "still reported unhealthy");
        assert!(
            instances.iter().all(|i| !svc.in_pool(i)),
            "none counts as healthy"
        );
        assert_eq!(svc.panics.load(Ordering::Relaxed), 1);
        // They recover: out of panic, the healthy ones only.
        for i in &instances {
            t.runtime.set_sick(&i.id, false);
        }
        t.wait_until("both healthy again", |_| {
            instances.iter().all(|i| svc.in_pool(i))
        })
        .await;
        assert!(!svc.in_panic());
        assert_eq!(pool_size(&svc), 2);
        assert!(*svc.healthy.borrow());
        let kinds = event_kinds(&t, "api");
        let panic_events: Vec<&String> = kinds
            .iter()
            .filter(|k| k.starts_with("service.panic"))
            .collect();
        assert_eq!(panic_events, ["service.panic", "service.panic_over"]);
        assert_eq!(svc.panics.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_healthy_is_not_panic_and_fewer_is() {
        let t = TestPlatform::start(&[("api", 4)], "").await;
        let svc = t.p.services["api"].clone();
        let instances = svc.instances();
        // 2 of 4 healthy: at the 50 % threshold, not under it: the healthy two only.
        for i in &instances[..2] {
            t.runtime.set_sick(&i.id, true);
        }
        t.wait_until("two unhealthy", |_| {
            instances[..2].iter().all(|i| unhealthy(i))
        })
        .await;
        assert!(!svc.in_panic());
        assert_eq!(pool_size(&svc), 2);
        let in_pool: Vec<_> = svc
            .colour("blue")
            .unwrap()
            .pool
            .backends()
            .iter()
            .map(|b| b.instance.clone())
            .collect();
        assert_eq!(in_pool, [instances[2].id.clone(), instances[3].id.clone()]);
        // 1 of 4: panic, all four.
        t.runtime.set_sick(&instances[2].id, true);
        t.wait_until("three unhealthy", |_| unhealthy(&instances[2]))
            .await;
        assert!(svc.in_panic());
        assert_eq!(pool_size(&svc), 4);
        assert!(
            *svc.healthy.borrow(),
            "one healthy instance still takes traffic"
        );
        // A crashed instance is not running: a pool in panic holds only running ones, and an
        // instance not healthy since its restart is not one of them.
        t.runtime.crash(&instances[0].id).await;
        t.wait_until("the crashed one out of the pool", |_| pool_size(&svc) == 3)
            .await;
        t.wait_until("restarted", |_| {
            instances[0].info().restarts == 1 && unhealthy(&instances[0])
        })
        .await;
        assert!(svc.in_panic());
        assert_eq!(pool_size(&svc), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_colour_without_traffic_is_never_in_panic() {
        let t = TestPlatform::start(&[("api", 1)], "").await;
        let svc = t.p.services["api"].clone();
        let inst = svc.instances()[0].clone();
        svc.set_traffic(vec![("blue".into(), 0)]);
        t.runtime.set_sick(&inst.id, true);
        t.wait_until("unhealthy", |_| unhealthy(&inst)).await;
        assert!(!svc.in_panic());
        assert_eq!(pool_size(&svc), 0);
        // Given traffic again while none is healthy: in panic at once.
        svc.set_traffic(vec![("blue".into(), 100)]);
        assert!(svc.in_panic());
        assert_eq!(pool_size(&svc), 1);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(4), Duration::from_secs(2));
        assert_eq!(backoff(100), BACKOFF_MAX);
    }

    #[test]
    fn placeholders_are_replaced() {
        assert_eq!(
            substitute("{service}:{version}:{instance}", "gw", "v2", "gw-1"),
            "gw:v2:gw-1"
        );
    }
}
