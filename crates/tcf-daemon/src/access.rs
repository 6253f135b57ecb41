//! Who may call the API, and secrets. The checks and crypto live in `tcf-auth`; this module
//! wires them to the store and the router:
//!
//! - [`protect`]: the middleware on every route. On the Unix socket (0600) the local user is
//!   admin; on the remote API a bearer token is required, its role checked against
//!   `tcf_auth::roles::ROUTES`, failures rate-limited per address and recorded as events.
//! - [`Platform::verify`]: a token's name and role (also for the dashboard's login).
//! - the `tokens` and `secrets` routes, and the same secret operations on a store opened
//!   directly when no daemon runs ([`offline`]).
//! - [`Platform::resolve_secrets`]: `${secret:NAME}` in an instance's env, at start.
//! - [`bind_remote`]/[`serve_remote`]: the HTTPS listener.

use crate::api::{ApiError, ApiJson};
use crate::caller::Peer;
use crate::deploy::rfc3339;
use crate::platform::{lock, Platform};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tcf_api::access::{
    ApiEndpoint, CreateToken, SecretInfo, SecretsChanged, SetSecrets, TokenCreated, TokenInfo,
};
use tcf_auth::limiter::FailedAuthLimiter;
use tcf_auth::secrets::{Sealed, SecretsKey};
use tcf_auth::{AuthError, Role, TokenRecord};
use tcf_store::{SecretRow, Store};

pub use tcf_auth::secrets::parse_dotenv;

/// The daemon's access state.
#[derive(Default)]
pub struct Access {
    pub limiter: FailedAuthLimiter,
    /// The remote API, once bound.
    pub endpoint: OnceLock<ApiEndpoint>,
    /// Per service, the secrets its instances last started with and their `updated` stamps:
    /// a secret changed since then makes the service stale in `status`.
    started_with: Mutex<BTreeMap<String, BTreeMap<String, i64>>>,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// A token's name and role from the store (and its last use recorded): one short read and
/// write, so callers that cannot await (the dashboard's login) call it directly.
pub(crate) fn verify_in(store: &Store, token: &str) -> Result<(String, Role), AuthError> {
    let found = tcf_auth::token::verify(token, &token_records(store)?, tcf_store::now_ms())?;
    let _ = store.touch_token(&found.0, tcf_store::now_ms());
    Ok(found)
}

fn token_records(store: &Store) -> Result<Vec<TokenRecord>, AuthError> {
    let rows = store
        .tokens()
        .map_err(|e| AuthError::Unavailable(e.to_string()))?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(TokenRecord {
                role: Role::parse(&r.role)?,
                name: r.name,
                sha256: r.sha256,
                expires_ms: r.expires_ms,
                revoked: r.revoked_ms.is_some(),
            })
        })
        .collect())
}

impl Platform {
    /// The name and role of a live token. This is what every remote API request goes through,
    /// and what a login form (the dashboard) should call.
    pub async fn verify(&self, token: &str) -> Result<(String, Role), AuthError> {
        let token = token.to_string();
        self.with_store(move |s| verify_in(s, &token)).await
    }

    /// `env` with every `${secret:NAME}` replaced by the secret's value, for `service`'s
    /// instance about to start. Errors name the secret, never a value.
    pub async fn resolve_secrets(
        &self,
        service: &str,
        env: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut wanted = BTreeSet::new();
        for (var, value) in &env {
            let names = tcf_auth::reference::references(value)
                .map_err(|e| format!("{service}: env {var}: {e}"))?;
            wanted.extend(names);
        }
        if wanted.is_empty() {
            return Ok(env);
        }
        let state_dir = self.config.platform.state_dir.clone();
        let rows = self
            .with_store(move |s| s.secrets())
            .await
            .map_err(|e| e.to_string())?;
        let opened = open_secrets(&state_dir, &rows, &wanted, |name| {
            missing_secret(service, name)
        })?;
        let values: BTreeMap<String, String> = opened
            .iter()
            .map(|(n, (v, _))| (n.clone(), v.clone()))
            .collect();
        let stamps: BTreeMap<String, i64> = opened.into_iter().map(|(n, (_, t))| (n, t)).collect();
        let mut out = BTreeMap::new();
        for (var, value) in env {
            let resolved = tcf_auth::reference::substitute(&value, |n| values.get(n).cloned())
                .map_err(|_| format!("{service}: env {var} refers to a secret that is not set"))?;
            out.insert(var, resolved);
        }
        lock(&self.access.started_with).insert(service.to_string(), stamps);
        Ok(out)
    }

    /// Per service, the secrets that changed (or went) since its instances started.
    pub async fn stale_secrets(&self) -> BTreeMap<String, Vec<String>> {
        let started = lock(&self.access.started_with).clone();
        if started.is_empty() {
            return BTreeMap::new();
        }
        let Ok(rows) = self.with_store(|s| s.secrets()).await else {
            return BTreeMap::new();
        };
        let now: BTreeMap<&str, i64> = rows
            .iter()
            .map(|r| (r.name.as_str(), r.updated_ms))
            .collect();
        started
            .into_iter()
            .filter_map(|(service, used)| {
                let stale: Vec<String> = used
                    .into_iter()
                    .filter(|(name, stamp)| now.get(name.as_str()) != Some(stamp))
                    .map(|(name, _)| name)
                    .collect();
                (!stale.is_empty()).then_some((service, stale))
            })
            .collect()
    }
}

/// The values of `names` (and their `updated` stamps), opened with the platform's key: the one
/// way a secret's value leaves the store, for an instance's env and for a backup's password.
/// `missing` words the error for a name the store does not hold.
fn open_secrets(
    state_dir: &std::path::Path,
    rows: &[SecretRow],
    names: &BTreeSet<String>,
    missing: impl Fn(&str) -> String,
) -> Result<BTreeMap<String, (String, i64)>, String> {
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let key = SecretsKey::resolve(state_dir, false).map_err(|e| e.to_string())?;
    let mut values = BTreeMap::new();
    for name in names {
        let Some(row) = rows.iter().find(|r| &r.name == name) else {
            return Err(missing(name));
        };
        let sealed = Sealed {
            ciphertext: row.ciphertext.clone(),
            nonce: row.nonce.clone(),
        };
        let value = key.open(name, &sealed).map_err(|e| e.to_string())?;
        values.insert(name.clone(), (value, row.updated_ms));
    }
    Ok(values)
}

/// `[backup.sources.X]` passwords as written (plain text or `${secret:NAME}`), by source.
fn backup_passwords(backup: &tcf_config::BackupConfig) -> Vec<(&str, &str)> {
    backup
        .sources
        .iter()
        .filter_map(|(name, src)| match &src.kind {
            tcf_config::BackupSourceKind::Postgres { password, .. }
            | tcf_config::BackupSourceKind::Redis { password, .. } => {
                Some((name.as_str(), password.as_deref()?))
            }
            tcf_config::BackupSourceKind::Directory { .. } => None,
        })
        .collect()
}

/// Who refers to each secret from `[backup]`: `backup source NAME`.
pub fn backup_secret_users(config: &tcf_config::Config) -> BTreeMap<String, Vec<String>> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Some(backup) = &config.backup else {
        return users;
    };
    for (source, password) in backup_passwords(backup) {
        for n in tcf_auth::reference::references(password).unwrap_or_default() {
            users
                .entry(n)
                .or_default()
                .push(format!("backup source {source}"));
        }
    }
    users
}

/// `[backup]` resolved, its `${secret:NAME}` passwords opened from `rows` (the store's
/// secrets). Errors name the source and the secret, never a value.
pub fn backup_settings(
    backup: &tcf_config::BackupConfig,
    state_dir: &std::path::Path,
    rows: &[SecretRow],
) -> Result<tcf_backup::Settings, String> {
    let mut names = BTreeSet::new();
    for (source, password) in backup_passwords(backup) {
        let refs = tcf_auth::reference::references(password)
            .map_err(|e| format!("backup source {source}: password: {e}"))?;
        if let Some(name) = refs.iter().find(|n| !rows.iter().any(|r| &&r.name == n)) {
            return Err(missing_secret(&format!("backup source {source}"), name));
        }
        names.extend(refs);
    }
    let opened = open_secrets(state_dir, rows, &names, |name| {
        missing_secret("a backup source", name)
    })?;
    tcf_backup::Settings::from_config(backup, &|name| {
        opened.get(name).map(|(value, _)| value.clone())
    })
    .map_err(|e| e.to_string())
}

impl Platform {
    /// [`backup_settings`] with the secrets of this daemon's store.
    pub async fn backup_settings(
        &self,
        backup: &tcf_config::BackupConfig,
    ) -> Result<tcf_backup::Settings, String> {
        let wants_secrets = backup_passwords(backup)
            .iter()
            .any(|(_, p)| p.contains("${secret:"));
        let rows = if wants_secrets {
            self.with_store(|s| s.secrets())
                .await
                .map_err(|e| e.to_string())?
        } else {
            Vec::new()
        };
        backup_settings(backup, &self.config.platform.state_dir, &rows)
    }
}

fn missing_secret(service: &str, name: &str) -> String {
    format!("{service} refers to the secret {name}, which is not set\nhint: set it with `tcf-platform secrets set {name}` (the value on stdin)")
}

/// Services of `config` whose env refers to each secret.
pub fn secret_users(config: &tcf_config::Config) -> BTreeMap<String, Vec<String>> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for svc in config.services.values() {
        let names: BTreeSet<String> = svc
            .env
            .values()
            .filter_map(|v| tcf_auth::reference::references(v).ok())
            .flatten()
            .collect();
        for n in names {
            users.entry(n).or_default().push(svc.name.clone());
        }
    }
    users
}

/// A `${secret:…}` in some service's env that is not a valid reference (unterminated, a bad
/// name): it would never resolve.
pub fn malformed_reference(config: &tcf_config::Config) -> Option<String> {
    let in_env = config.services.values().find_map(|svc| {
        svc.env.iter().find_map(|(var, value)| {
            tcf_auth::reference::references(value)
                .err()
                .map(|e| format!("{}: env {var}: {e}", svc.name))
        })
    });
    in_env.or_else(|| {
        backup_passwords(config.backup.as_ref()?)
            .into_iter()
            .find_map(|(source, password)| {
                tcf_auth::reference::references(password)
                    .err()
                    .map(|e| format!("backup source {source}: password: {e}"))
            })
    })
}

/// Every secret `services` of `config` refer to (and, with `backup`, its `[backup]` sources)
/// exists in the store; else the first missing, named with who refers to it.
pub fn check_references(
    config: &tcf_config::Config,
    services: &[String],
    backup: bool,
    store: &Store,
) -> Result<(), String> {
    if let Some(e) = malformed_reference(config) {
        return Err(e);
    }
    let existing: BTreeSet<String> = store
        .secrets()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|r| r.name)
        .collect();
    for (secret, users) in secret_users(config) {
        if let Some(svc) = users
            .iter()
            .find(|u| services.is_empty() || services.contains(u))
        {
            if !existing.contains(&secret) {
                return Err(missing_secret(svc, &secret));
            }
        }
    }
    if backup {
        if let Some((secret, users)) = backup_secret_users(config)
            .into_iter()
            .find(|(secret, _)| !existing.contains(secret))
        {
            return Err(missing_secret(&users.join(", "), &secret));
        }
    }
    Ok(())
}

// --- Secret operations on a store: the daemon's routes and the CLI with no daemon share them.

/// Seal and store `values` (all or none). The key file is created on first use only while the
/// store holds no secret (one sealed under a lost key must not be silently orphaned).
pub fn set_secrets(
    store: &Store,
    state_dir: &std::path::Path,
    values: &BTreeMap<String, String>,
    actor: &str,
) -> Result<Vec<String>, String> {
    for name in values.keys() {
        tcf_auth::token::check_name("the secret", name)?;
    }
    let existing = store.secrets().map_err(|e| e.to_string())?;
    let key = SecretsKey::resolve(state_dir, existing.is_empty()).map_err(|e| e.to_string())?;
    // A key that cannot open what is stored would leave two keys' worth of secrets.
    if let Some(row) = existing.first() {
        key.open(
            &row.name,
            &Sealed {
                ciphertext: row.ciphertext.clone(),
                nonce: row.nonce.clone(),
            },
        )
        .map_err(|e| e.to_string())?;
    }
    let now = tcf_store::now_ms();
    let mut rows = Vec::new();
    for (name, value) in values {
        let sealed = key
            .seal(name, value.as_bytes())
            .map_err(|e| e.to_string())?;
        rows.push(SecretRow {
            name: name.clone(),
            ciphertext: sealed.ciphertext,
            nonce: sealed.nonce,
            updated_ms: now,
            updated_by: actor.to_string(),
        });
    }
    store.set_secrets(&rows).map_err(|e| e.to_string())?;
    Ok(values.keys().cloned().collect())
}

pub fn list_secrets(store: &Store, config: &tcf_config::Config) -> Result<Vec<SecretInfo>, String> {
    let users = secret_users(config);
    Ok(store
        .secrets()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|r| SecretInfo {
            used_by: users.get(&r.name).cloned().unwrap_or_default(),
            name: r.name,
            updated: rfc3339(r.updated_ms),
            updated_by: r.updated_by,
        })
        .collect())
}

pub fn remove_secret(store: &Store, name: &str) -> Result<bool, String> {
    store.remove_secret(name).map_err(|e| e.to_string())
}

/// Run `f` on the store of a platform whose daemon is not running, holding the daemon's lock
/// so none starts meanwhile. With a daemon running: [`crate::DaemonError::AlreadyRunning`].
pub fn offline<T>(
    state_dir: &std::path::Path,
    f: impl FnOnce(&Store) -> T,
) -> Result<T, crate::DaemonError> {
    crate::ensure_private_dir(state_dir)?;
    let _lock = crate::take_lock(state_dir)?;
    let store = Store::open(state_dir)?;
    Ok(f(&store))
}

// --- The middleware.

fn bearer(req: &Request) -> &str {
    req.headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim())
}

/// Every request: the local user on the Unix socket is admin; a remote caller needs a live
/// token whose role allows the route.
pub async fn protect(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(addr) = peer.remote else {
        return next.run(req).await;
    };
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let needed = tcf_auth::required_role(&method, &path);
    if !p.access.limiter.allowed(addr.ip(), Instant::now()) {
        tracing::warn!("refused {method} {path} from {addr}: too many failed authentications");
        return ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            AuthError::RateLimited.to_string(),
        )
        .into_response();
    }
    match p.verify(bearer(&req)).await {
        Err(e @ AuthError::Unavailable(_)) => internal(e).into_response(),
        Err(e) => {
            p.access.limiter.record_failure(addr.ip(), Instant::now());
            p.event_by(
                &format!("remote {}", addr.ip()),
                crate::audit::AUTH_FAILED,
                None,
                None,
                format!("refused {method} {path} from {addr}: {e}"),
            );
            let mut resp = ApiError(StatusCode::UNAUTHORIZED, e.to_string()).into_response();
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            resp
        }
        Ok((name, role)) if !role.allows(needed) => ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "the token {name} has the role {role}; {method} {path} needs {needed} or above"
            ),
        )
        .into_response(),
        Ok((name, _)) => {
            req.extensions_mut().insert(ConnectInfo(Peer {
                token: Some(name),
                ..peer
            }));
            next.run(req).await
        }
    }
}

// --- Routes.

pub fn routes(p: Arc<Platform>) -> Router {
    Router::new()
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{name}/revoke", post(revoke_token))
        .route("/v1/secrets", get(get_secrets).post(post_secrets))
        .route("/v1/secrets/{name}", delete(delete_secret))
        .with_state(p)
}

async fn create_token(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    ApiJson(req): ApiJson<CreateToken>,
) -> Result<Json<TokenCreated>, ApiError> {
    tcf_auth::token::check_name("the token", &req.name).map_err(bad)?;
    let role = Role::parse(&req.role).ok_or_else(|| {
        bad(format!(
            "unknown role {:?}; use viewer, deployer or admin",
            req.role
        ))
    })?;
    let (token, sha256) = tcf_auth::token::generate();
    let now = tcf_store::now_ms();
    let expires_ms = req
        .expires_s
        .map(|s| now + (s.min(100 * 365 * 86_400) as i64) * 1000);
    let actor = peer.user();
    let record = tcf_store::NewToken {
        name: req.name.clone(),
        role: role.to_string(),
        sha256,
        created_ms: now,
        created_by: actor.clone(),
        expires_ms,
    };
    let created = p
        .with_store(move |s| s.create_token(&record))
        .await
        .map_err(internal)?;
    if !created {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "a token named {} exists (revoked tokens keep their names); choose another name",
                req.name
            ),
        ));
    }
    p.event_by(
        &actor,
        "token.created",
        None,
        None,
        format!(
            "token {} created with the role {role}{}",
            req.name,
            expires_ms.map_or(String::new(), |e| format!(", expires {}", rfc3339(e)))
        ),
    );
    Ok(Json(TokenCreated {
        name: req.name,
        role: role.to_string(),
        token,
        expires: expires_ms.map(rfc3339),
    }))
}

async fn list_tokens(State(p): State<Arc<Platform>>) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    let rows = p.with_store(|s| s.tokens()).await.map_err(internal)?;
    Ok(Json(rows.into_iter().map(token_info).collect()))
}

pub fn token_info(r: tcf_store::TokenRow) -> TokenInfo {
    TokenInfo {
        name: r.name,
        role: r.role,
        created: rfc3339(r.created_ms),
        created_by: r.created_by,
        expires: r.expires_ms.map(rfc3339),
        last_used: r.last_used_ms.map(rfc3339),
        revoked: r.revoked_ms.map(rfc3339),
    }
}

async fn revoke_token(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    let n = name.clone();
    let (revoked, rows) = p
        .with_store(move |s| {
            let revoked = s.revoke_token(&n, tcf_store::now_ms())?;
            Ok::<_, tcf_store::StoreError>((revoked, s.tokens()?))
        })
        .await
        .map_err(internal)?;
    let Some(row) = rows.into_iter().find(|r| r.name == name) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no token named {name}; see `tcf-platform tokens list`"),
        ));
    };
    if revoked {
        p.event_by(
            &peer.user(),
            "token.revoked",
            None,
            None,
            format!("token {name} revoked"),
        );
    }
    Ok(Json(token_info(row)))
}

async fn get_secrets(State(p): State<Arc<Platform>>) -> Result<Json<Vec<SecretInfo>>, ApiError> {
    let q = p.clone();
    let list = p
        .with_store(move |s| list_secrets(s, &q.config))
        .await
        .map_err(internal)?;
    Ok(Json(list))
}

async fn post_secrets(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    ApiJson(req): ApiJson<SetSecrets>,
) -> Result<Json<SecretsChanged>, ApiError> {
    if req.secrets.is_empty() {
        return Err(bad("no secrets given"));
    }
    let actor = peer.user();
    let (state_dir, who) = (p.config.platform.state_dir.clone(), actor.clone());
    let names = p
        .with_store(move |s| set_secrets(s, &state_dir, &req.secrets, &who))
        .await
        .map_err(bad)?;
    Ok(Json(changed(&p, &actor, "secret.set", "set", names)))
}

async fn delete_secret(
    State(p): State<Arc<Platform>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
) -> Result<Json<SecretsChanged>, ApiError> {
    let n = name.clone();
    let removed = p
        .with_store(move |s| remove_secret(s, &n))
        .await
        .map_err(internal)?;
    if !removed {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no secret named {name}; see `tcf-platform secrets list`"),
        ));
    }
    Ok(Json(changed(
        &p,
        &peer.user(),
        "secret.removed",
        "removed",
        vec![name],
    )))
}

/// Record a secrets change (names only) and say which services now run an old value.
fn changed(
    p: &Platform,
    actor: &str,
    kind: &str,
    verb: &str,
    names: Vec<String>,
) -> SecretsChanged {
    let users = secret_users(&p.config);
    let stale: BTreeSet<String> = names
        .iter()
        .filter_map(|n| users.get(n))
        .flatten()
        .cloned()
        .collect();
    for n in &names {
        let used = users.get(n).map_or(String::new(), |u| {
            format!(
                "; used by {} (stale until the next deploy or rollback)",
                u.join(", ")
            )
        });
        p.event_by(actor, kind, None, None, format!("secret {n} {verb}{used}"));
    }
    SecretsChanged {
        names,
        stale_services: stale.into_iter().collect(),
    }
}

// --- The remote API's listener.

pub struct RemoteListener {
    tcp: tokio::net::TcpListener,
    cert: tcf_auth::cert::ApiCert,
}

/// Bind `[daemon] listen` and load (or make) its certificate; before anything starts.
pub async fn bind_remote(
    config: &tcf_config::Config,
    taking_over: bool,
) -> Result<Option<RemoteListener>, crate::DaemonError> {
    let Some(addr) = config.daemon.listen else {
        return Ok(None);
    };
    let remote = |detail: String| crate::DaemonError::RemoteApi { addr, detail };
    let mut names = vec!["localhost".to_string(), addr.ip().to_string()];
    if !addr.ip().is_loopback() && !addr.ip().is_unspecified() {
        names.push("127.0.0.1".into());
    }
    if let Ok(host) = nix::unistd::gethostname() {
        names.push(host.to_string_lossy().into_owned());
    }
    names.dedup();
    let files = config
        .daemon
        .tls
        .as_ref()
        .map(|(c, k)| (c.as_path(), k.as_path()));
    let cert = tcf_auth::cert::load_or_generate(&config.platform.state_dir, files, &names)
        .map_err(|e| remote(e.to_string()))?;
    let tcp = tcf_proxy::bind_handover_safe(addr, taking_over)
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| remote(e.to_string()))?;
    Ok(Some(RemoteListener { tcp, cert }))
}

/// TLS connections handshaken off the accept loop (a slow client delays nobody), handed to
/// axum with the client's address.
struct TlsIncoming {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    local: std::net::SocketAddr,
}

impl axum::serve::Listener for TlsIncoming {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor stopped (shutdown): wait for the graceful stop.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsIncoming>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsIncoming>) -> Self {
        Peer {
            remote: Some(*stream.remote_addr()),
            ..Peer::default()
        }
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve `router` on the remote listener until shutdown.
pub fn serve_remote(p: Arc<Platform>, listener: RemoteListener, router: Router) {
    let local = listener.tcp.local_addr().unwrap_or_else(|_| {
        p.config
            .daemon
            .listen
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
    });
    let fingerprint = listener.cert.fingerprint_sha256.clone();
    let _ = p.access.endpoint.set(ApiEndpoint {
        listen: local.to_string(),
        fingerprint_sha256: fingerprint.clone(),
    });
    p.event(
        "api.listening",
        None,
        None,
        format!(
            "remote API on https://{local} ({} certificate {}, SHA-256 fingerprint {fingerprint})",
            if listener.cert.generated {
                "new self-signed"
            } else {
                "the"
            },
            listener.cert.cert_path.display()
        ),
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(listener.cert.server_config.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut stop = p.shutdown.subscribe();
    let tcp = listener.tcp;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = tcp.accept() => a,
                _ = stop.wait_for(|s| *s) => break,
            };
            let Ok((conn, addr)) = accepted else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(Ok(tls)) =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await
                {
                    let _ = tx.send((tls, addr)).await;
                }
            });
        }
    });
    let mut shutdown = p.shutdown.subscribe();
    let server = axum::serve(
        TlsIncoming { rx, local },
        router.into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.wait_for(|s| *s).await;
    });
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!("the remote API server failed: {e}");
        }
    });
}

/// Files in the state directory that other users could read (the directory, the store, the
/// secrets key, the API's private key), made private again. Called before anything opens them;
/// what it found is said at start and in `status` ([`report_loose_modes`]).
pub fn fix_loose_modes(state_dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let paths = [
        (state_dir.to_path_buf(), 0o700),
        (state_dir.join("state.db"), 0o600),
        (state_dir.join(tcf_auth::secrets::KEY_FILE), 0o600),
        (state_dir.join(tcf_auth::cert::SELF_SIGNED_KEY), 0o600),
    ];
    let mut found = Vec::new();
    for (path, private) in paths {
        for warning in tcf_auth::files::readable_by_others(&[path.as_path()]) {
            let fixed =
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(private)).is_ok();
            found.push(if fixed {
                format!("{warning} (done: it is {private:04o} now; check who could have read it)")
            } else {
                warning
            });
        }
    }
    found
}

pub fn report_loose_modes(p: &Platform, found: Vec<String>) {
    for warning in found {
        tracing::warn!("{warning}");
        lock(&p.warnings).push(warning);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, password: &str) -> tcf_config::Config {
        let path = dir.join("tcf-platform.toml");
        std::fs::write(
            &path,
            format!(
                "[platform]\nname = \"x\"\n\n[backup]\nrepository = \"repo\"\n\n[backup.sources.main]\nkind = \"postgres\"\nurl = \"postgres://app@127.0.0.1:5432/\"\npassword = \"{password}\"\n"
            ),
        )
        .unwrap();
        tcf_config::load(&path, None).unwrap()
    }

    /// One resolver: a backup source's `${secret:NAME}` is checked and opened from the store
    /// as services' env references are; errors name the source and the secret, never a value.
    #[test]
    fn backup_passwords_are_checked_and_resolved_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "${secret:pg_password}");
        let state_dir = cfg.platform.state_dir.clone();
        crate::ensure_private_dir(&state_dir).unwrap();
        let store = Store::open(&state_dir).unwrap();
        let backup = cfg.backup.clone().unwrap();

        // A deploy that takes no backup does not need it; one that does, and validate, do.
        assert!(check_references(&cfg, &[], false, &store).is_ok());
        let e = check_references(&cfg, &[], true, &store).unwrap_err();
        assert!(
            e.contains("backup source main refers to the secret pg_password, which is not set"),
            "{e}"
        );
        let e = backup_settings(&backup, &state_dir, &store.secrets().unwrap()).unwrap_err();
        assert!(
            e.contains("backup source main refers to the secret pg_password"),
            "{e}"
        );

        let value = "v4lue-never-shown";
        set_secrets(
            &store,
            &state_dir,
            &BTreeMap::from([("pg_password".to_string(), value.to_string())]),
            "tester",
        )
        .unwrap();
        assert!(check_references(&cfg, &[], true, &store).is_ok());
        let settings = backup_settings(&backup, &state_dir, &store.secrets().unwrap()).unwrap();
        match &settings.sources["main"] {
            tcf_backup::Source::Postgres { conn, .. } => {
                assert_eq!(conn.password.as_deref(), Some(value))
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{settings:?}").contains(value));

        // A malformed reference is named as the config's error.
        let cfg = config(dir.path(), "${secret:pg_password");
        let e = malformed_reference(&cfg).unwrap();
        assert!(e.starts_with("backup source main: password:"), "{e}");
    }
}
