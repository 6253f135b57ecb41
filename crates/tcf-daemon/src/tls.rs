//! HTTPS for the services that ask for it (docs/tls.md): their certificates loaded before
//! anything starts, the plain listeners bound, file certificates reloaded when they change or
//! on `tls reload`, and `tls status`.

use crate::platform::Platform;
use crate::DaemonError;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tcf_acme::{AcmeClient, AcmeState};
use tcf_api::tls::{TlsCertificate, TlsReload, TlsReloadOutcome, TlsStatus};
use tcf_config::AcmeSettings;
use tcf_config::{Config, TlsSource};
use tcf_proxy::plain::Challenges;
use tcf_proxy::tls::{x509, CertSource, CertStore, FileCerts};

/// How often certificate files are checked for changes (modification time and size).
pub const POLL_FILES: Duration = Duration::from_secs(3);

/// One HTTPS service's certificates and what its plain listener answers.
pub struct ServiceTls {
    pub store: Arc<CertStore>,
    /// `None` for certificates that do not come from files.
    pub files: Option<FileCerts>,
    pub challenges: Arc<Challenges>,
    /// It has a plain listener (`http_listen`): ACME validates with HTTP-01 there.
    pub plain: bool,
    pub server_config: Arc<rustls::ServerConfig>,
    pub hsts: Option<axum::http::HeaderValue>,
    /// Certificates from ACME: the server, and where account and certificates are kept.
    pub acme: Option<(AcmeSettings, AcmeState)>,
    /// One renewal at a time per service (the background one or `tls renew`).
    pub renewing: tokio::sync::Mutex<()>,
}

/// Renew this long before a certificate expires (Let's Encrypt's advice: a third of 90 days).
const RENEW_BEFORE_DAYS: i64 = 30;
/// How often an ACME service's certificate is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(3600);
/// The first wait after a failed renewal, doubled up to [`CHECK_EVERY`].
const FIRST_BACKOFF: Duration = Duration::from_secs(30);

/// What `up` prepares before anything starts.
#[derive(Default)]
pub struct Prepared {
    pub services: BTreeMap<String, Arc<ServiceTls>>,
    /// (service, the HTTPS port to redirect to, the bound plain listener).
    pub plain: Vec<(String, u16, std::net::TcpListener)>,
}

/// Load every HTTPS service's certificates and bind the plain listeners: a certificate that
/// cannot be used fails `up` before anything starts, with the service's name.
pub fn prepare(config: &Config, taking_over: bool) -> Result<Prepared, DaemonError> {
    let mut prepared = Prepared::default();
    for svc in config.services.values() {
        let Some(tls) = &svc.tls else { continue };
        let mut acme = None;
        let fail = |message: String| DaemonError::Tls {
            service: svc.name.clone(),
            message,
        };
        let (store, files) = match &tls.source {
            TlsSource::Files(pairs) => {
                let files = FileCerts::new(
                    pairs
                        .iter()
                        .map(|p| (p.cert.clone(), p.key.clone()))
                        .collect(),
                );
                let certs = files.load().map_err(|e| fail(e.to_string()))?;
                let store = CertStore::new(certs);
                store.record_attempt(None);
                (store, Some(files))
            }
            TlsSource::Acme(settings) => {
                let state = AcmeState::new(&config.platform.state_dir, &svc.name);
                // A certificate from an earlier run serves at once when it still covers the
                // configured domains; none: handshakes fail until the first one is obtained
                // (in the background, right after start).
                let kept = state.load().filter(|c| covers_all(c, &settings.domains));
                let store = CertStore::new(kept.into_iter().collect());
                acme = Some((settings.clone(), state));
                (store, None)
            }
        };
        let server_config =
            tcf_proxy::tls::server_config(store.clone(), true).map_err(|e| fail(e.to_string()))?;
        let hsts = match &tls.hsts {
            Some(h) => Some(
                axum::http::HeaderValue::from_str(h)
                    .map_err(|_| fail(format!("invalid hsts value {h:?}")))?,
            ),
            None => None,
        };
        if let Some(addr) = tls.http_listen {
            let listener = tcf_proxy::bind_handover_safe(addr, taking_over).map_err(|source| {
                DaemonError::Bind {
                    service: svc.name.clone(),
                    addr,
                    source,
                }
            })?;
            prepared
                .plain
                .push((svc.name.clone(), svc.listen.port(), listener));
        }
        prepared.services.insert(
            svc.name.clone(),
            Arc::new(ServiceTls {
                store,
                files,
                challenges: Arc::new(Challenges::default()),
                plain: tls.http_listen.is_some(),
                server_config,
                hsts,
                acme,
                renewing: tokio::sync::Mutex::new(()),
            }),
        );
    }
    Ok(prepared)
}

/// Serve the plain listeners and watch certificate files, until the daemon stops.
pub fn start(p: &Arc<Platform>, plain: Vec<(String, u16, std::net::TcpListener)>) {
    for (service, https_port, listener) in plain {
        let Some(tls) = p.tls.get(&service) else {
            continue;
        };
        match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => {
                tokio::spawn(tcf_proxy::plain::serve_plain(
                    l,
                    https_port,
                    tls.challenges.clone(),
                    p.shutdown.subscribe(),
                ));
            }
            Err(e) => tracing::error!(service, "cannot serve the plain listener: {e}"),
        }
    }
    for (service, tls) in &p.tls {
        if tls.acme.is_some() {
            tokio::spawn(renew_in_background(p.clone(), service.clone(), tls.clone()));
        }
    }
    if p.tls.values().any(|t| t.files.is_some()) {
        let p = p.clone();
        tokio::spawn(async move {
            let mut shutdown = p.shutdown.subscribe();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(POLL_FILES) => reload_all(&p, false),
                    _ = shutdown.wait_for(|s| *s) => return,
                };
            }
        });
    }
}

/// Reload the file certificates that changed (all of them when `force`), with an event for
/// each service reloaded or failing.
fn reload_all(p: &Platform, force: bool) -> Vec<TlsReloadOutcome> {
    let mut outcomes = Vec::new();
    for (service, tls) in &p.tls {
        let Some(files) = &tls.files else { continue };
        let outcome = match files.reload(&tls.store, force) {
            Ok(reloaded) => {
                if reloaded {
                    p.event(
                        "tls.reloaded",
                        Some(service),
                        None,
                        format!(
                            "certificates of {service} reloaded; new connections use them, open ones keep theirs"
                        ),
                    );
                }
                TlsReloadOutcome {
                    service: service.clone(),
                    reloaded,
                    error: None,
                }
            }
            Err(e) => {
                p.event(
                    "tls.reload_failed",
                    Some(service),
                    None,
                    format!("certificates of {service} not reloaded, the current ones stay: {e}"),
                );
                TlsReloadOutcome {
                    service: service.clone(),
                    reloaded: false,
                    error: Some(e.to_string()),
                }
            }
        };
        outcomes.push(outcome);
    }
    outcomes
}

/// Whether a kept certificate names every configured domain: after `domains` changes, the old
/// certificate must not be served until it nears expiry; a new one is ordered at start.
fn covers_all(cert: &tcf_proxy::tls::LoadedCert, domains: &[String]) -> bool {
    domains.iter().all(|d| cert.covers(d))
}

/// Whether the service's certificate is missing or within [`RENEW_BEFORE_DAYS`] of expiry.
fn renewal_due(tls: &ServiceTls) -> bool {
    let now = tcf_proxy::tls::unix_now();
    tls.store
        .certs()
        .iter()
        .map(|c| c.facts.not_after)
        .min()
        .is_none_or(|not_after| not_after - now < RENEW_BEFORE_DAYS * 86_400)
}

/// Obtain a certificate now and serve it to new handshakes; an event either way.
async fn renew(p: &Platform, service: &str, tls: &ServiceTls) -> Result<(), String> {
    let Some((settings, state)) = &tls.acme else {
        return Err(format!("{service} does not get its certificates from ACME"));
    };
    let _one_at_a_time = tls.renewing.lock().await;
    let result = async {
        let account_key = state.account_key().map_err(|e| e.to_string())?;
        let client = AcmeClient::connect(
            &settings.directory,
            settings.ca.as_deref(),
            &account_key,
            settings.email.as_deref(),
        )
        .await
        .map_err(|e| e.to_string())?;
        // HTTP-01 on the plain listener when there is one; else TLS-ALPN-01, answered by
        // the HTTPS listener itself.
        let validation = if tls.plain {
            tcf_acme::Validation::Http01(&tls.challenges)
        } else {
            tcf_acme::Validation::TlsAlpn01(&tls.store)
        };
        let issued = client
            .obtain(&settings.domains, validation)
            .await
            .map_err(|e| e.to_string())?;
        state.save(&issued).map_err(|e| e.to_string())?;
        let cert = tcf_acme::loaded(&issued, state).map_err(|e| e.to_string())?;
        let not_after = x509::rfc3339(cert.facts.not_after);
        tls.store.replace(vec![cert]);
        Ok::<_, String>(not_after)
    }
    .await;
    match result {
        Ok(not_after) => {
            tls.store.record_attempt(None);
            p.event(
                "tls.renewed",
                Some(service),
                None,
                format!("new certificate for {service} from {} (valid until {not_after}); new connections use it", settings.directory),
            );
            Ok(())
        }
        Err(e) => {
            tls.store.record_attempt(Some(e.clone()));
            p.event(
                "tls.renewal_failed",
                Some(service),
                None,
                format!(
                    "cannot get a certificate for {service} from {}: {e}",
                    settings.directory
                ),
            );
            Err(e)
        }
    }
}

/// Renew when due, retrying failures with a doubling backoff, until the daemon stops.
async fn renew_in_background(p: Arc<Platform>, service: String, tls: Arc<ServiceTls>) {
    let mut shutdown = p.shutdown.subscribe();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let wait = if renewal_due(&tls) {
            match renew(&p, &service, &tls).await {
                Ok(()) => {
                    backoff = FIRST_BACKOFF;
                    CHECK_EVERY
                }
                Err(_) => {
                    let wait = backoff;
                    backoff = (backoff * 2).min(CHECK_EVERY);
                    wait
                }
            }
        } else {
            CHECK_EVERY
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

pub fn routes() -> Router<Arc<Platform>> {
    Router::new()
        .route("/v1/tls", get(status))
        .route("/v1/tls/reload", post(reload))
        .route("/v1/tls/renew", post(renew_handler))
}

/// Renew every ACME service's certificate now (`tls renew`), whether due or not.
async fn renew_handler(State(p): State<Arc<Platform>>) -> Json<TlsReload> {
    let mut services = Vec::new();
    for (service, tls) in &p.tls {
        if tls.acme.is_none() {
            continue;
        }
        let error = renew(&p, service, tls).await.err();
        services.push(TlsReloadOutcome {
            service: service.clone(),
            reloaded: error.is_none(),
            error,
        });
    }
    Json(TlsReload { services })
}

async fn reload(State(p): State<Arc<Platform>>) -> Json<TlsReload> {
    let services = tokio::task::spawn_blocking(move || reload_all(&p, true))
        .await
        .unwrap_or_default();
    Json(TlsReload { services })
}

async fn status(State(p): State<Arc<Platform>>) -> Json<TlsStatus> {
    Json(build_status(&p, tcf_proxy::tls::unix_now()))
}

pub fn build_status(p: &Platform, now: i64) -> TlsStatus {
    let mut certificates = Vec::new();
    for (service, tls) in &p.tls {
        let attempt = tls.store.last_attempt();
        for cert in tls.store.certs().iter() {
            let f = &cert.facts;
            let (source, cert_file) = match &cert.source {
                CertSource::File { cert, .. } => ("file", Some(cert.display().to_string())),
                CertSource::Acme => ("acme", None),
            };
            certificates.push(TlsCertificate {
                service: service.clone(),
                hostnames: f.names.clone(),
                issuer: f.issuer.clone(),
                serial: f.serial.clone(),
                not_before: x509::rfc3339(f.not_before),
                not_after: x509::rfc3339(f.not_after),
                days_left: (f.not_after - now).div_euclid(86_400),
                expired: f.not_after <= now,
                source: source.into(),
                cert_file,
                last_attempt: attempt.as_ref().map(|a| x509::rfc3339(a.at)),
                last_error: attempt.as_ref().and_then(|a| a.error.clone()),
            });
        }
    }
    TlsStatus { certificates }
}

#[cfg(test)]
mod acme_kept_certificate_tests {
    use super::covers_all;
    use tcf_proxy::tls::{CertSource, LoadedCert};

    #[test]
    fn a_kept_certificate_must_name_every_configured_domain() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_string(), "b.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        let path = std::path::Path::new("kept.pem");
        let loaded = LoadedCert::from_pem(
            cert_pem.as_bytes(),
            key_pem.as_bytes(),
            CertSource::Acme,
            (path, path),
        )
        .unwrap();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(covers_all(&loaded, &names(&["a.test", "b.test"])));
        assert!(covers_all(&loaded, &names(&["b.test"])));
        assert!(!covers_all(&loaded, &names(&["a.test", "c.test"])));
    }
}
