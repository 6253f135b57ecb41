//! `GET /v1/audit`: `prod audit` run by the daemon on its own host, for a CLI that reaches it
//! over the remote API (`--host`). The daemon sees what a local audit sees (its config, its
//! files, procfs, its store, the Docker engine) and answers with the JSON report, before any
//! ignores: the CLI applies its own `--ignore` file and renders every format from it.
//!
//! Admin only (tcf_auth::roles): the report maps the platform's weak points (file paths,
//! listeners, token names, which env keys hold credentials), which is more than a viewer reads.
//!
//! The mapping of the API's shapes onto the audit's live view is here too, so the CLI's local
//! audit (which asks the daemon over its socket) builds the same view.

use crate::api::{build_status, ApiError, ApiQuery};
use crate::platform::Platform;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use tcf_audit::checks::{
    FailedAuth, LiveContainer, LiveInstance, LiveService, LiveToken, LiveView, StoredSecret,
};

/// The event kind the remote API records a refused authentication under.
pub const AUTH_FAILED: &str = "auth.failed";
const DAY_MS: i64 = 86_400_000;

pub fn routes() -> Router<Arc<Platform>> {
    Router::new().route("/v1/audit", get(audit_handler))
}

/// The query of `GET /v1/audit`: `prod audit`'s selection flags.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    pub comprehensive: bool,
    /// Comma-separated IDs or groups (`TCF-SEC-001,CTR`).
    #[serde(default)]
    pub check: Option<String>,
    #[serde(default)]
    pub skip: Option<String>,
}

fn list(text: &Option<String>) -> Vec<String> {
    text.as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

async fn audit_handler(
    State(p): State<Arc<Platform>>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let selected = tcf_audit::select(&list(&q.check), &list(&q.skip))
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    if selected.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "check and skip left no check to run".into(),
        ));
    }
    let live = Ok(live_view(&p).await);
    let secrets = p
        .with_store(|s| s.secrets())
        .await
        .map(|rows| rows.into_iter().map(stored_secret).collect())
        .map_err(|e| format!("the store's secrets could not be read: {e}"));
    let containers = if q.comprehensive {
        Some(live_containers(&p.config).await)
    } else {
        None
    };
    let config = p.config.clone();
    let comprehensive = q.comprehensive;
    let report = tokio::task::spawn_blocking(move || {
        let advisories_dir = config.platform.state_dir.join("advisories");
        let advisories = advisories_dir.is_dir().then(|| {
            tcf_audit::advisories::Database::load(&advisories_dir).map_err(|e| e.to_string())
        });
        let advisories_text = advisories
            .as_ref()
            .and_then(|db| db.as_ref().ok())
            .map(|db| db.describe(std::time::SystemTime::now()));
        let inputs = tcf_audit::Inputs {
            config: &config,
            live,
            advisories,
            comprehensive,
            containers,
            secrets,
        };
        let results = tcf_audit::checks::run(&inputs, &selected);
        let meta = tcf_audit::Meta {
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
            config: config.path.clone(),
            platform: config.platform.name.clone(),
            environment: config.environment.clone(),
            offline_reason: None,
            comprehensive,
            advisories: advisories_text,
        };
        let report = tcf_audit::Report::build(meta, results, &tcf_audit::Ignores::default());
        tcf_audit::render::json_report(&report)
    })
    .await
    .map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the audit failed: {e}"),
        )
    })?;
    Ok(Json(report))
}

/// The daemon's own view of what runs, as the online checks need it.
async fn live_view(p: &Arc<Platform>) -> LiveView {
    let status = build_status(p, false);
    let tokens = p
        .with_store(|s| s.tokens())
        .await
        .map(|rows| {
            rows.into_iter()
                .map(crate::access::token_info)
                .map(live_token)
                .collect()
        })
        .map_err(|e| format!("the store's tokens could not be read: {e}"));
    let since = tcf_store::now_ms() - DAY_MS;
    let failed_auths = p
        .with_store(move |s| s.events_of_kind_since(AUTH_FAILED, since))
        .await
        .map(|rows| {
            rows.into_iter()
                .filter_map(|e| {
                    Some(FailedAuth {
                        address: FailedAuth::address_of_actor(&e.actor)?.to_string(),
                        at_ms: e.ts_ms,
                    })
                })
                .collect()
        })
        .map_err(|e| format!("the store's events could not be read: {e}"));
    LiveView {
        daemon_pid: std::process::id(),
        socket: p.config.daemon.socket.clone(),
        services: live_services(status),
        tokens,
        failed_auths,
    }
}

fn stored_secret(r: tcf_store::SecretRow) -> StoredSecret {
    StoredSecret {
        name: r.name,
        updated_ms: r.updated_ms,
        updated_by: r.updated_by,
    }
}

// --- The API's shapes as the audit's view (the CLI's local audit uses these too).

fn ms(text: &str) -> Option<i64> {
    tcf_backup::time::parse_rfc3339_ms(text)
}

pub fn live_token(t: tcf_api::access::TokenInfo) -> LiveToken {
    LiveToken {
        created_ms: ms(&t.created).unwrap_or(0),
        expires_ms: t.expires.as_deref().and_then(ms),
        last_used_ms: t.last_used.as_deref().and_then(ms),
        revoked: t.revoked.is_some(),
        name: t.name,
        role: t.role,
    }
}

/// The running instances of each service.
pub fn live_services(status: tcf_api::Status) -> Vec<LiveService> {
    status
        .services
        .into_iter()
        .map(|s| LiveService {
            name: s.name,
            listen: s.listen,
            instances: s
                .instances
                .into_iter()
                .filter(|i| i.state == "running")
                .map(|i| LiveInstance {
                    id: i.id,
                    pid: i.pid,
                    port: i.port,
                })
                .collect(),
        })
        .collect()
}

/// The refused authentications of the last day among `events`.
pub fn failed_auths(events: &[tcf_api::Event], now_ms: i64) -> Vec<FailedAuth> {
    events
        .iter()
        .filter(|e| e.kind == AUTH_FAILED)
        .filter_map(|e| {
            let at_ms = ms(&e.time)?;
            (now_ms - at_ms <= DAY_MS).then_some(FailedAuth {
                address: FailedAuth::address_of_actor(&e.actor)?.to_string(),
                at_ms,
            })
        })
        .collect()
}

pub fn stored_secrets(list: Vec<tcf_api::access::SecretInfo>) -> Vec<StoredSecret> {
    list.into_iter()
        .map(|s| StoredSecret {
            updated_ms: ms(&s.updated).unwrap_or(0),
            name: s.name,
            updated_by: s.updated_by,
        })
        .collect()
}

/// The secrets in a store no daemon runs on, read from a copy (`Store::open_read_only`): an
/// audit writes, locks and chmods nothing in the state directory. No store: no secrets.
pub fn offline_secrets(state_dir: &std::path::Path) -> Result<Vec<StoredSecret>, String> {
    if !state_dir.join("state.db").exists() {
        return Ok(Vec::new());
    }
    tcf_store::Store::open_read_only(state_dir)
        .and_then(|store| store.secrets())
        .map(|rows| rows.into_iter().map(stored_secret).collect())
        .map_err(|e| format!("the store's secrets could not be read: {e}"))
}

/// The platform's running containers on the Docker engine (by label), or why they could not
/// be listed.
pub async fn live_containers(config: &tcf_config::Config) -> Result<Vec<LiveContainer>, String> {
    let services: Vec<String> = config
        .services
        .values()
        .filter(|s| s.docker.is_some())
        .map(|s| s.name.clone())
        .collect();
    let docker = tcf_docker::DockerRuntime::connect(&config.platform.name, &services)
        .await
        .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())?;
    let found = docker.inspect_security().await.map_err(|e| e.to_string())?;
    Ok(found
        .into_iter()
        .map(|c| LiveContainer {
            name: c.name,
            service: c.service,
            user: c.user,
            privileged: c.privileged,
            network_mode: c.network_mode,
            mounts: c.mounts,
            memory: c.memory,
            read_only: c.read_only,
            healthcheck: c.healthcheck,
            published: c.published,
        })
        .collect())
}
