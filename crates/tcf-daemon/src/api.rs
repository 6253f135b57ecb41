//! The JSON API on the daemon's Unix socket. Shapes come from `tcf-api`; this module maps the
//! live state onto them.

use crate::caller::{check_text, Peer};
use crate::deploy;
use crate::logs;
use crate::metrics::service_metrics;
use crate::platform::{lock, Platform};
use crate::validate;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tcf_api::{
    DependencyStatus, DownResponse, ErrorBody, Event, InstanceStatus, Ping, ServiceStatus, Status,
};

pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl ApiError {
    pub fn status(&self) -> StatusCode {
        self.0
    }

    pub fn message(&self) -> &str {
        &self.1
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

/// A JSON request body whose every failure (not JSON, no JSON content type, a missing or
/// mistyped field) is answered in the documented `{"error": …}` shape, as every API error is.
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(ApiError(rejection.status(), rejection.body_text())),
        }
    }
}

/// Query parameters, with a bad one answered in the `{"error": …}` shape.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(rejection) => Err(ApiError(rejection.status(), rejection.body_text())),
        }
    }
}

pub fn router(p: Arc<Platform>) -> Router {
    Router::new()
        .route("/v1/ping", get(ping))
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/v1/logs/{service}", get(logs_handler))
        .route("/v1/down", post(down))
        .route("/v1/deploy", post(deploy_handler))
        .route("/v1/rollback", post(rollback_handler))
        .route("/v1/restart", post(restart_handler))
        .route("/v1/scale", post(scale_handler))
        .route("/v1/validate", post(validate_handler))
        .route("/v1/abort", post(abort_handler))
        .route("/v1/releases", get(releases_handler))
        .route("/v1/lock", get(lock_handler))
        .route("/v1/lock/release", post(lock_release_handler))
        .merge(crate::backup::routes())
        .merge(crate::api_backup::routes())
        .merge(crate::maintenance::routes())
        .merge(crate::tls::routes())
        .merge(crate::audit::routes())
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such API endpoint".into()) })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on this endpoint (see docs/api.md)"),
            )
        })
        .with_state(p)
}

async fn ping(State(p): State<Arc<Platform>>) -> Json<Ping> {
    Json(Ping {
        platform: p.config.platform.name.clone(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        config: p.config.path.display().to_string(),
    })
}

#[derive(Deserialize)]
struct StatusQuery {
    #[serde(default)]
    metrics: bool,
}

/// The live state in the wire shape.
pub fn build_status(p: &Platform, with_metrics: bool) -> Status {
    let services = p
        .config
        .start_order()
        .iter()
        .filter_map(|name| p.services.get(name))
        .map(|svc| {
            let instances: Vec<InstanceStatus> = svc
                .instances()
                .iter()
                .map(|i| {
                    let info = i.info();
                    InstanceStatus {
                        id: i.id.clone(),
                        colour: i.colour.clone(),
                        version: i.version.clone(),
                        // 0: a task on another machine, with no pid here.
                        pid: info.pid.filter(|pid| *pid != 0),
                        port: i.port(),
                        state: info.state.as_str().to_string(),
                        health: info.health.as_str().to_string(),
                        restarts: info.restarts,
                        runtime_health: info.runtime_health.clone(),
                        node: info.node.clone(),
                        uptime_s: info
                            .started
                            .filter(|_| info.pid.is_some())
                            .map_or(0, |s| s.elapsed().as_secs()),
                    }
                })
                .collect();
            ServiceStatus {
                name: svc.config.name.clone(),
                version: svc.serving_version(),
                traffic: svc
                    .weights()
                    .iter()
                    .map(|(colour, weight)| tcf_api::Traffic {
                        colour: colour.clone(),
                        version: svc
                            .colour(colour)
                            .map(|c| c.version.clone())
                            .unwrap_or_default(),
                        weight: *weight,
                    })
                    .collect(),
                listen: svc.config.listen.to_string(),
                healthy: *svc.healthy.borrow(),
                instances,
                metrics: with_metrics.then(|| service_metrics(svc)),
                config_changed: false,
                maintenance: lock(&svc.maintenance).clone(),
                stale_secrets: Vec::new(),
                panic: svc.in_panic(),
                panics: svc.panics.load(std::sync::atomic::Ordering::Relaxed),
            }
        })
        .collect();
    let dependencies = p
        .dependencies
        .values()
        .map(|d| {
            let info = lock(&d.info).clone();
            DependencyStatus {
                name: d.config.name.clone(),
                kind: serde_json::to_value(d.config.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                target: crate::health::dependency_target(&d.config),
                healthy: info.healthy,
                last_error: info.last_error,
            }
        })
        .collect();
    Status {
        platform: p.config.platform.name.clone(),
        services,
        dependencies,
        deploy_in_progress: lock(&p.deploying).clone(),
        warnings: lock(&p.warnings).clone(),
        api: p.access.endpoint.get().cloned(),
        nodes: vec![],
    }
}

/// The Swarm's nodes as its managers see them (none without a Swarm; a warning when the
/// manager does not answer).
pub async fn swarm_nodes(p: &Platform, status: &mut Status) {
    let Some(swarm) = &p.swarm else {
        return;
    };
    match tokio::time::timeout(Duration::from_secs(5), swarm.nodes()).await {
        Ok(Ok(nodes)) => {
            status.nodes = nodes
                .into_iter()
                .map(|n| tcf_api::NodeStatus {
                    name: n.name,
                    addr: n.addr,
                    state: n.state,
                    availability: n.availability,
                    manager: n.manager,
                })
                .collect()
        }
        Ok(Err(e)) => status
            .warnings
            .push(format!("cannot list the Swarm's nodes: {e}")),
        Err(_) => status
            .warnings
            .push("the Swarm manager did not list its nodes within 5 s".into()),
    }
}

async fn status(
    State(p): State<Arc<Platform>>,
    ApiQuery(q): ApiQuery<StatusQuery>,
) -> Json<Status> {
    let mut status = build_status(&p, q.metrics);
    swarm_nodes(&p, &mut status).await;
    let changed = {
        let p = p.clone();
        tokio::task::spawn_blocking(move || changed_in_file(&p))
            .await
            .unwrap_or_default()
    };
    let stale = p.stale_secrets().await;
    for s in &mut status.services {
        s.config_changed = changed.contains(&s.name);
        s.stale_secrets = stale.get(&s.name).cloned().unwrap_or_default();
    }
    Json(status)
}

/// Services whose spec in the config file on disk differs from the one their serving colour
/// runs (the version aside). A file that does not validate changes nothing here: `config
/// validate` and the next deploy say what is wrong with it.
fn changed_in_file(p: &Platform) -> std::collections::BTreeSet<String> {
    let Ok(file) = tcf_config::load(&p.config.path, p.config.environment.as_deref()) else {
        return Default::default();
    };
    p.services
        .values()
        .filter_map(|svc| {
            let running = svc.active_colour()?.current_spec();
            let mut on_disk = file.services.get(&svc.config.name)?.clone();
            on_disk.version = running.version.clone();
            let differs =
                serde_json::to_value(&on_disk).ok()? != serde_json::to_value(&*running).ok()?;
            differs.then(|| svc.config.name.clone())
        })
        .collect()
}

#[derive(Deserialize)]
struct EventsQuery {
    service: Option<String>,
    #[serde(default)]
    after: i64,
    limit: Option<u32>,
}

pub fn wire_event(e: tcf_store::Event) -> Event {
    let at = UNIX_EPOCH + Duration::from_millis(e.ts_ms.max(0) as u64);
    Event {
        id: e.id,
        time: humantime::format_rfc3339_millis(at).to_string(),
        actor: e.actor,
        kind: e.kind,
        service: e.service,
        instance: e.instance,
        message: e.message,
    }
}

async fn events(
    State(p): State<Arc<Platform>>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let (service, after, limit) = (
        q.service.clone(),
        q.after,
        q.limit.unwrap_or(100).min(10_000),
    );
    let rows = p
        .with_store(move |s| s.events(service.as_deref(), after, limit))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(rows.into_iter().map(wire_event).collect()))
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
    /// Keep each line's time stamp (written when the line was).
    #[serde(default)]
    timestamps: bool,
    tail: Option<usize>,
    /// The service's access log instead of its instances' logs.
    #[serde(default)]
    access: bool,
}

async fn logs_handler(
    State(p): State<Arc<Platform>>,
    Path(service): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let Some(svc) = p.services.get(&service) else {
        let known: Vec<&str> = p.services.keys().map(String::as_str).collect();
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no service {service:?}; services: {}", known.join(", ")),
        ));
    };
    let files = if q.access {
        // Its lines are JSON with their own time: shown as written, with no prefix.
        let path = crate::access_log_path(&p.config.platform.state_dir, &service);
        vec![(None, path)]
    } else {
        svc.instances()
            .iter()
            .map(|i| {
                (
                    Some(i.id.clone()),
                    p.logs_dir().join(format!("{}.log", i.id)),
                )
            })
            .collect()
    };
    let body = logs::stream(
        p.clone(),
        files,
        q.tail.unwrap_or(100),
        q.follow,
        q.timestamps,
    );
    Ok(([("content-type", "text/plain; charset=utf-8")], body).into_response())
}

async fn down(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Json<DownResponse> {
    p.event_by(
        &peer.user(),
        "daemon.stop_requested",
        None,
        None,
        "stop requested through the API (tcf-platform down)",
    );
    p.shutdown.send_replace(true);
    Json(DownResponse { stopping: true })
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// The services a request names (all when none), checked and in dependency order.
pub(crate) fn services_in_order(p: &Platform, named: &[String]) -> Result<Vec<String>, ApiError> {
    for s in named {
        if !p.services.contains_key(s) {
            let known: Vec<&str> = p.services.keys().map(String::as_str).collect();
            return Err(bad_request(format!(
                "no service {s:?}; services: {}",
                known.join(", ")
            )));
        }
    }
    Ok(p.config
        .start_order()
        .into_iter()
        .filter(|s| named.is_empty() || named.contains(s))
        .collect())
}

/// Stream a release's progress as NDJSON while it runs; it runs on even if the client leaves.
fn stream_release(p: Arc<Platform>, plan: deploy::Plan) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(deploy::run(p, plan, tx));
    ndjson(rx)
}

/// An answer that streams `rx`'s progress lines as NDJSON until the sender is dropped (a
/// release's, a backup command's).
pub(crate) fn ndjson(rx: tokio::sync::mpsc::UnboundedReceiver<tcf_api::ProgressLine>) -> Response {
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        Some((Ok::<_, std::io::Error>(bytes::Bytes::from(bytes)), rx))
    });
    (
        [("content-type", "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

async fn deploy_handler(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    ApiJson(req): ApiJson<tcf_api::DeployRequest>,
) -> Result<Response, ApiError> {
    if let Some(reason) = &req.reason {
        check_text("the reason", reason).map_err(bad_request)?;
    }
    tcf_config::check_version(&req.version).map_err(bad_request)?;
    let strategy = match &req.strategy {
        None => p.config.deploy.strategy,
        Some(s) => tcf_config::Strategy::parse(s).ok_or_else(|| {
            bad_request(format!(
                "unknown strategy {s:?}; use blue_green, canary or rolling"
            ))
        })?,
    };
    // A deploy applies the config file as it is now (validated first: a broken file
    // refuses the deploy and changes nothing).
    let path = p.config.path.clone();
    let environment = p.config.environment.clone();
    let fresh =
        tokio::task::spawn_blocking(move || tcf_config::load(&path, environment.as_deref()))
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| {
                bad_request(format!(
                    "the config file does not validate; nothing was deployed:\n{e}"
                ))
            })?;
    for s in &req.services {
        if !p.services.contains_key(s) && fresh.services.contains_key(s) {
            return Err(bad_request(format!(
                "{s} is new in the config file: adding a service needs `tcf-platform down` and `up` for now"
            )));
        }
    }
    let services = services_in_order(&p, &req.services)?;
    let specs = deploy_specs(&p, &fresh, &services)?;
    let backup = req.backup.unwrap_or(fresh.deploy.backup);
    {
        let (fresh, services) = (fresh.clone(), services.clone());
        p.with_store(move |s| crate::access::check_references(&fresh, &services, backup, s))
            .await
            .map_err(|e| bad_request(format!("{e}\nnothing was deployed")))?;
    }
    let plan = deploy::Plan {
        kind: deploy::Kind::Deploy(strategy),
        targets: services
            .into_iter()
            .map(|s| (s, req.version.clone()))
            .collect(),
        specs,
        validate: req.validate.unwrap_or(fresh.deploy.validate),
        backup,
        force: req.force,
        reason: req.reason,
        actor: peer.actor(&req.actor),
        lock_wait: Duration::from_millis(req.lock_wait_ms),
    };
    Ok(stream_release(p, plan))
}

/// The spec each deployed service gets from the config file as it is now. What a deploy cannot
/// change (the public address, a runtime the daemon has no engine for) is refused up front.
fn deploy_specs(
    p: &Platform,
    fresh: &tcf_config::Config,
    services: &[String],
) -> Result<std::collections::BTreeMap<String, Arc<tcf_config::Service>>, ApiError> {
    let mut specs = std::collections::BTreeMap::new();
    for name in services {
        let running = &p.services[name].config;
        let Some(new) = fresh.services.get(name) else {
            return Err(bad_request(format!(
                "{name} is no longer in {}: removing a service needs `tcf-platform down` and `up`",
                p.config.path.display()
            )));
        };
        if new.listen != running.listen {
            return Err(bad_request(format!(
                "{name}: listen changed from {} to {}: a new public address needs `tcf-platform down` and `up`",
                running.listen, new.listen
            )));
        }
        if new.runtime == tcf_config::RuntimeKind::Docker && p.docker.is_none() {
            return Err(bad_request(format!(
                "{name} now runs on Docker, which this daemon did not connect to: `tcf-platform down` and `up` to switch runtimes"
            )));
        }
        if new.runtime == tcf_config::RuntimeKind::Swarm && p.swarm.is_none() {
            return Err(bad_request(format!(
                "{name} now runs on a Swarm, which this daemon did not connect to: `tcf-platform down` and `up` to switch runtimes"
            )));
        }
        specs.insert(name.clone(), Arc::new(new.clone()));
    }
    Ok(specs)
}

async fn restart_handler(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    ApiJson(req): ApiJson<tcf_api::RestartRequest>,
) -> Result<Response, ApiError> {
    if let Some(reason) = &req.reason {
        check_text("the reason", reason).map_err(bad_request)?;
    }
    if req.services.is_empty() {
        return Err(bad_request("name the service(s) to restart"));
    }
    let services = services_in_order(&p, &req.services)?;
    let plan = deploy::Plan {
        kind: deploy::Kind::Restart,
        validate: false,
        backup: false,
        force: false,
        specs: Default::default(),
        targets: services
            .into_iter()
            .map(|s| {
                let version = p.services[&s].serving_version();
                (s, version)
            })
            .collect(),
        reason: req.reason,
        actor: peer.actor(&req.actor),
        lock_wait: Duration::from_millis(req.lock_wait_ms),
    };
    Ok(stream_release(p, plan))
}

async fn scale_handler(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    ApiJson(req): ApiJson<tcf_api::ScaleRequest>,
) -> Result<Response, ApiError> {
    if let Some(reason) = &req.reason {
        check_text("the reason", reason).map_err(bad_request)?;
    }
    if !(1..=tcf_config::MAX_INSTANCES).contains(&req.instances) {
        return Err(bad_request(format!(
            "instances must be 1 to {}; to stop a service, `tcf-platform down`",
            tcf_config::MAX_INSTANCES
        )));
    }
    let service = services_in_order(&p, std::slice::from_ref(&req.service))?
        .pop()
        .ok_or_else(|| bad_request("name a service"))?;
    let svc = &p.services[&service];
    let Some(active) = svc.active_colour() else {
        return Err(bad_request(format!("{service} runs nothing to scale")));
    };
    // What the release records: the running spec with the new count.
    let mut spec = (*active.current_spec()).clone();
    spec.instances = req.instances;
    let plan = deploy::Plan {
        kind: deploy::Kind::Scale(req.instances),
        validate: false,
        backup: false,
        force: false,
        targets: vec![(service.clone(), active.version.clone())],
        specs: [(service, Arc::new(spec))].into_iter().collect(),
        reason: req.reason,
        actor: peer.actor(&req.actor),
        lock_wait: Duration::from_millis(req.lock_wait_ms),
    };
    Ok(stream_release(p, plan))
}

async fn validate_handler(
    State(p): State<Arc<Platform>>,
    ApiJson(req): ApiJson<tcf_api::ValidateRequest>,
) -> Result<Json<tcf_api::ValidateReport>, ApiError> {
    services_in_order(&p, &req.services)?;
    let fresh = validate::load_fresh(&p).await;
    let opts = validate::Options {
        version: req.version,
        services: req.services,
        check_dependencies: req.check_dependencies,
        security_scan: req.security_scan,
        in_release: false,
    };
    let checks = validate::run(&p, fresh.as_ref().map_err(Clone::clone), &opts).await;
    Ok(Json(validate::report(&checks)))
}

async fn abort_handler(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    ApiJson(req): ApiJson<tcf_api::AbortRequest>,
) -> Result<Json<tcf_api::AbortResponse>, ApiError> {
    let Some(running) = lock(&p.deploying).clone() else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "no release is running; nothing to abort (to go back, use `tcf-platform prod rollback`)"
                .into(),
        ));
    };
    let who = peer.actor(&req.actor);
    *lock(&p.abort) = Some(who.clone());
    p.event_by(
        &who,
        "release.abort_requested",
        None,
        None,
        format!("abort requested: {running}"),
    );
    Ok(Json(tcf_api::AbortResponse { aborting: running }))
}

/// Statuses of releases whose versions ran for real.
const DEPLOYED: &[&str] = &["active", "initial", "rolled_back"];

async fn rollback_handler(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    ApiJson(req): ApiJson<tcf_api::RollbackRequest>,
) -> Result<Response, ApiError> {
    let actor = peer.actor(&req.actor);
    let plan = rollback_plan(&p, req, actor).await?;
    Ok(stream_release(p, plan))
}

/// The plan of a rollback: each named service (all when none) back to the version asked for or
/// to its previous good release, with the spec it ran then. Also what the dashboard previews.
pub async fn rollback_plan(
    p: &Arc<Platform>,
    req: tcf_api::RollbackRequest,
    actor: String,
) -> Result<deploy::Plan, ApiError> {
    if let Some(reason) = &req.reason {
        check_text("the reason", reason).map_err(bad_request)?;
    }
    let releases = p
        .with_store(|s| s.releases(10_000))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let services = services_in_order(p, &req.services)?;
    let known = |service: &str| -> Vec<String> {
        let mut v: Vec<String> = releases
            .iter()
            .filter(|r| DEPLOYED.contains(&r.status.as_str()))
            .filter_map(|r| r.versions.get(service).cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let mut targets = Vec::new();
    match &req.version {
        Some(version) => {
            for s in &services {
                if known(s).contains(version) {
                    targets.push((s.clone(), version.clone()));
                } else if !req.services.is_empty() {
                    return Err(bad_request(format!(
                        "{s} never ran {version}; known versions: {}",
                        known(s).join(", ")
                    )));
                }
            }
            if targets.is_empty() {
                let all: std::collections::BTreeSet<String> =
                    services.iter().flat_map(|s| known(s)).collect();
                return Err(bad_request(format!(
                    "version {version} was never deployed; known versions: {}",
                    all.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        None => {
            for s in &services {
                let current = p.services[s].serving_version();
                let previous = releases
                    .iter()
                    .filter(|r| tcf_store::SUCCESSFUL.contains(&r.status.as_str()))
                    .filter_map(|r| r.versions.get(s))
                    .find(|v| **v != current);
                if let Some(v) = previous {
                    targets.push((s.clone(), v.clone()));
                }
            }
            if targets.is_empty() {
                return Err(bad_request(
                    "nothing to roll back to: no earlier successful release",
                ));
            }
        }
    }
    targets.retain(|(s, v)| p.services[s].serving_version() != *v);
    if targets.is_empty() {
        return Err(bad_request(
            "already running that version; nothing to roll back",
        ));
    }
    // Back to the version *and* the spec it ran with (command, env, health...), when the
    // release that ran it recorded one; else the spec the service runs now.
    let mut specs = std::collections::BTreeMap::new();
    for (service, version) in &targets {
        let (s, v) = (service.clone(), version.clone());
        let recorded = p
            .with_store(move |st| st.spec_of(&s, &v))
            .await
            .ok()
            .flatten();
        if let Some(mut spec) =
            recorded.and_then(|json| serde_json::from_str::<tcf_config::Service>(&json).ok())
        {
            // The public address is the running proxy's, whatever it was then.
            spec.listen = p.services[service].config.listen;
            specs.insert(service.clone(), Arc::new(spec));
        }
    }
    Ok(deploy::Plan {
        kind: deploy::Kind::Rollback,
        validate: false,
        backup: false,
        force: false,
        targets,
        specs,
        reason: req.reason,
        actor,
        lock_wait: Duration::from_millis(req.lock_wait_ms),
    })
}

/// Releases in the wire shape, newest first: a successful release is `superseded` once newer
/// successful ones cover all its services. Also what `history` shows from the store when no
/// daemon runs.
pub fn wire_releases(
    all: &[tcf_store::Release],
    service: Option<&str>,
    limit: usize,
) -> Vec<tcf_api::Release> {
    all.iter()
        .enumerate()
        .filter(|(_, r)| service.is_none_or(|s| r.versions.contains_key(s)))
        .take(limit)
        .map(|(i, r)| {
            let newer = &all[..i];
            let superseded = tcf_store::SUCCESSFUL.contains(&r.status.as_str())
                && r.versions.keys().all(|s| {
                    newer.iter().any(|n| {
                        tcf_store::SUCCESSFUL.contains(&n.status.as_str())
                            && n.versions.contains_key(s)
                    })
                });
            tcf_api::Release {
                id: r.id,
                versions: r.versions.clone(),
                strategy: r.strategy.clone(),
                status: if superseded {
                    "superseded".into()
                } else {
                    r.status.clone()
                },
                actor: r.actor.clone(),
                reason: r.reason.clone(),
                started: deploy::rfc3339(r.started_ms),
                duration_s: r.finished_ms.map(|f| (f - r.started_ms) as f64 / 1000.0),
                backup: r.backup.clone(),
            }
        })
        .collect()
}

#[derive(Deserialize)]
struct ReleasesQuery {
    service: Option<String>,
    limit: Option<u32>,
}

async fn releases_handler(
    State(p): State<Arc<Platform>>,
    ApiQuery(q): ApiQuery<ReleasesQuery>,
) -> Result<Json<Vec<tcf_api::Release>>, ApiError> {
    let all = p
        .with_store(|s| s.releases(10_000))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let out = wire_releases(&all, q.service.as_deref(), q.limit.unwrap_or(50) as usize);
    Ok(Json(out))
}

async fn lock_handler(
    State(p): State<Arc<Platform>>,
) -> Result<Json<tcf_api::LockStatus>, ApiError> {
    let lease = p
        .with_store(|s| s.lock(deploy::DEPLOY_LOCK))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(match lease {
        None => tcf_api::LockStatus {
            held: false,
            owner: None,
            host: None,
            pid: None,
            reason: None,
            acquired: None,
            heartbeat: None,
            expires: None,
        },
        Some(l) => tcf_api::LockStatus {
            held: true,
            owner: Some(l.owner),
            host: Some(l.host),
            pid: Some(l.pid),
            reason: l.reason,
            acquired: Some(deploy::rfc3339(l.acquired_ms)),
            heartbeat: Some(deploy::rfc3339(l.heartbeat_ms)),
            expires: Some(deploy::rfc3339(l.expires_ms)),
        },
    }))
}

#[derive(Deserialize)]
struct LockReleaseRequest {
    #[serde(default)]
    force: bool,
}

async fn lock_release_handler(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    ApiJson(req): ApiJson<LockReleaseRequest>,
) -> Result<Json<tcf_api::LockStatus>, ApiError> {
    if let Some(running) = lock(&p.deploying).clone() {
        if !req.force {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("a release is running: {running}; releasing its lock lets another deploy start beside it (pass --force if you are sure)"),
            ));
        }
    }
    let released = p
        .with_store(|s| s.release_lock(deploy::DEPLOY_LOCK, None))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if released {
        p.event_by(
            &peer.user(),
            "lock.released",
            None,
            None,
            "deploy lock released by hand (tcf-platform lock release)",
        );
    }
    lock_handler(State(p)).await
}
