//! The TLS checks (TCF-TLS-001, 003–007): every certificate the platform uses (its files) and,
//! with `--comprehensive`, every one it serves or meets (a live handshake with each HTTPS
//! listener, the remote API, and dependencies that speak TLS), all judged by
//! [`tls::evaluate`].

use crate::model::{CheckResult, Finding, Location, Rule, Severity};
use crate::tls::{self, Dialect, Evaluation, Roots};
use std::path::PathBuf;
use tcf_config::{Config, DependencyKind, TlsSource};

/// One certificate chain the audit looked at, and where.
pub struct Seen {
    pub location: Location,
    /// `certificate file of service web`, `service web over TLS`.
    pub what: String,
    pub eval: Evaluation,
}

/// An endpoint's TLS versions below 1.2.
pub struct Legacy {
    pub location: Location,
    pub what: String,
    pub offered: Vec<&'static str>,
}

/// What the TLS checks look at, gathered once per audit.
pub struct TlsView {
    pub files: Vec<Seen>,
    /// Files that could not be read.
    pub file_errors: Vec<String>,
    /// With `--comprehensive`: the handshakes (`None`: not attempted).
    pub served: Option<Vec<Seen>>,
    pub legacy: Vec<Legacy>,
    /// Endpoints that could not be reached or spoke no TLS.
    pub served_errors: Vec<String>,
}

struct Endpoint {
    /// `host:port` to connect to.
    address: String,
    what: String,
    sni: Option<String>,
    /// The name clients ask for, where the platform declares one.
    hostname: Option<String>,
    /// Checked against the roots (not the remote API's self-signed certificate: it is pinned).
    trust: bool,
    dialect: Dialect,
}

/// Every configured CA: the ACME servers' `ca` files.
fn extra_roots(config: &Config) -> Vec<PathBuf> {
    config
        .services
        .values()
        .filter_map(|s| match s.tls.as_ref().map(|t| &t.source) {
            Some(TlsSource::Acme(acme)) => acme.ca.clone(),
            _ => None,
        })
        .collect()
}

/// The certificate files the platform uses: each HTTPS service's, ACME's kept ones, the remote
/// API's. `(path, what, trust)`.
fn certificate_files(config: &Config) -> Vec<(PathBuf, String, bool)> {
    let mut files = Vec::new();
    for service in config.services.values() {
        match service.tls.as_ref().map(|t| &t.source) {
            Some(TlsSource::Files(pairs)) => {
                for pair in pairs {
                    files.push((
                        pair.cert.clone(),
                        format!("certificate file of service {}", service.name),
                        true,
                    ));
                }
            }
            Some(TlsSource::Acme(_)) => {
                let kept = config
                    .platform
                    .state_dir
                    .join("acme")
                    .join(&service.name)
                    .join("cert.pem");
                // Before the first issuance there is nothing kept yet: nothing to judge.
                if kept.exists() {
                    files.push((
                        kept,
                        format!("ACME certificate of service {}", service.name),
                        true,
                    ));
                }
            }
            None => {}
        }
    }
    if config.daemon.listen.is_some() {
        match &config.daemon.tls {
            Some((cert, _)) => files.push((cert.clone(), "remote API certificate".into(), true)),
            None => {
                let own = config.platform.state_dir.join("api-cert.pem");
                if own.exists() {
                    files.push((own, "remote API self-signed certificate".into(), false));
                }
            }
        }
    }
    files
}

/// Where to connect for an address a service listens on: loopback for a wildcard.
fn dial(addr: std::net::SocketAddr) -> String {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => format!("127.0.0.1:{}", addr.port()),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => format!("[::1]:{}", addr.port()),
        _ => addr.to_string(),
    }
}

fn endpoints(config: &Config) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for service in config.services.values() {
        let Some(tls_settings) = &service.tls else {
            continue;
        };
        let address = dial(service.listen);
        // One handshake per name the service serves a certificate for, SNI set to it.
        let names: Vec<Option<String>> = match &tls_settings.source {
            TlsSource::Acme(acme) => acme.domains.iter().cloned().map(Some).collect(),
            TlsSource::Files(pairs) => pairs
                .iter()
                .map(|pair| {
                    tls::read_pem_chain(&pair.cert)
                        .ok()
                        .and_then(|chain| tls::facts(&chain[0]).ok())
                        .and_then(|f| {
                            f.names
                                .into_iter()
                                .find(|n| n.parse::<std::net::IpAddr>().is_err())
                        })
                        .map(|n| match n.strip_prefix("*.") {
                            Some(rest) => format!("www.{rest}"),
                            None => n,
                        })
                })
                .collect(),
        };
        let names = if names.is_empty() { vec![None] } else { names };
        for name in names {
            out.push(Endpoint {
                address: address.clone(),
                what: format!("service {}", service.name),
                hostname: name.clone(),
                sni: name,
                trust: true,
                dialect: Dialect::Direct,
            });
        }
    }
    if let Some(listen) = config.daemon.listen {
        out.push(Endpoint {
            address: dial(listen),
            what: "remote API".into(),
            sni: None,
            hostname: None,
            trust: config.daemon.tls.is_some(),
            dialect: Dialect::Direct,
        });
    }
    for dep in config.dependencies.values() {
        let (address, host, dialect) = match dep.kind {
            DependencyKind::Http | DependencyKind::Qdrant => {
                let Some(rest) = dep.url.as_deref().and_then(|u| u.strip_prefix("https://")) else {
                    continue;
                };
                let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
                let authority = authority.rsplit('@').next().unwrap_or(authority);
                let (host, port) = match authority.strip_prefix('[') {
                    Some(v6) => {
                        let (h, rest) = v6.split_once(']').unwrap_or((v6, ""));
                        (h, rest.strip_prefix(':').unwrap_or("443"))
                    }
                    None => authority.rsplit_once(':').unwrap_or((authority, "443")),
                };
                let address = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                let host = host.to_string();
                (address, host, Dialect::Direct)
            }
            DependencyKind::Postgres => {
                let Some(address) = dep.address.clone() else {
                    continue;
                };
                let host = address
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
                    .unwrap_or_else(|| address.clone());
                (address, host, Dialect::Postgres)
            }
            _ => continue,
        };
        let is_name = host.parse::<std::net::IpAddr>().is_err();
        out.push(Endpoint {
            address,
            what: format!("dependency {}", dep.name),
            sni: is_name.then(|| host.clone()),
            hostname: Some(host),
            trust: true,
            dialect,
        });
    }
    out
}

/// Gather what the TLS checks need: read the files; with `comprehensive`, handshake with
/// every endpoint.
pub fn gather(config: &Config, comprehensive: bool, now: i64) -> TlsView {
    let roots = Roots::load(&extra_roots(config));
    let mut view = TlsView {
        files: Vec::new(),
        file_errors: Vec::new(),
        served: None,
        legacy: Vec::new(),
        served_errors: Vec::new(),
    };
    for (path, what, trust) in certificate_files(config) {
        match tls::read_pem_chain(&path) {
            Ok(chain) => view.files.push(Seen {
                location: Location::file(&path),
                what,
                eval: tls::evaluate(&chain, None, trust.then_some(&roots), now),
            }),
            Err(e) => view.file_errors.push(e),
        }
    }
    if !comprehensive {
        return view;
    }
    let mut served = Vec::new();
    for endpoint in endpoints(config) {
        let uri = format!("tls://{}", endpoint.address);
        let resource = match &endpoint.sni {
            Some(name) => format!("{uri} ({}, SNI {name})", endpoint.what),
            None => format!("{uri} ({})", endpoint.what),
        };
        let location = Location::resource(resource).with_uri(uri);
        let what = format!("{} over TLS", endpoint.what);
        match tls::probe(&endpoint.address, endpoint.sni.as_deref(), endpoint.dialect) {
            Ok(Some(s)) => served.push(Seen {
                location: location.clone(),
                what: format!("{what} ({})", s.version),
                eval: tls::evaluate(
                    &s.chain,
                    endpoint.hostname.as_deref(),
                    endpoint.trust.then_some(&roots),
                    now,
                ),
            }),
            Ok(None) => {
                view.served_errors.push(format!(
                    "{} ({}) does not offer TLS",
                    endpoint.address, endpoint.what
                ));
                continue;
            }
            Err(e) => {
                view.served_errors.push(format!("{} ({e})", endpoint.what));
                continue;
            }
        }
        match tls::legacy_versions_offered(
            &endpoint.address,
            endpoint.sni.as_deref(),
            endpoint.dialect,
        ) {
            Ok(offered) => view.legacy.push(Legacy {
                location,
                what,
                offered,
            }),
            Err(e) => view.served_errors.push(format!("{} ({e})", endpoint.what)),
        }
    }
    view.served = Some(served);
    view
}

/// A check's findings, or why it could not run: unreadable inputs and no findings is a check
/// that did not run (never a pass); findings stand whatever else could not be read.
fn outcome(rule: &'static Rule, findings: Vec<Finding>, errors: &[String]) -> CheckResult {
    if findings.is_empty() && !errors.is_empty() {
        CheckResult::not_run(rule, errors.join("; "))
    } else {
        CheckResult::ran(rule, findings)
    }
}

/// TCF-TLS-001, 004, 005, 006 judge the files and, with `--comprehensive`, what is served;
/// TCF-TLS-003 and 007 only what is served.
pub fn check(rule: &'static Rule, view: &TlsView) -> CheckResult {
    let served_only = matches!(rule.id, "TCF-TLS-003" | "TCF-TLS-007");
    if served_only && view.served.is_none() {
        return CheckResult::not_run(rule, "a live handshake: it runs with --comprehensive");
    }
    let mut errors: Vec<String> = Vec::new();
    if !served_only {
        errors.extend(view.file_errors.iter().cloned());
    }
    errors.extend(view.served_errors.iter().cloned());
    let mut findings = Vec::new();
    if rule.id == "TCF-TLS-007" {
        for legacy in &view.legacy {
            if !legacy.offered.is_empty() {
                findings.push(Finding::new(
                    rule,
                    legacy.location.clone(),
                    format!(
                        "{} accepts {} (a ClientHello offering only that version got a ServerHello for it)",
                        legacy.what,
                        legacy.offered.join(" and ")
                    ),
                ));
            }
        }
        return outcome(rule, findings, &errors);
    }
    let seen = (!served_only)
        .then_some(view.files.iter())
        .into_iter()
        .flatten()
        .chain(view.served.iter().flatten());
    for s in seen {
        let eval = &s.eval;
        if let Some(why) = &eval.unreadable {
            errors.push(format!("{}: {why}", s.location.resource));
            continue;
        }
        let Some(leaf) = &eval.leaf else { continue };
        let names = if leaf.names.is_empty() {
            leaf.subject.clone()
        } else {
            leaf.names.join(", ")
        };
        match rule.id {
            "TCF-TLS-001" => {
                let Some((days, expired)) = eval.expiry else {
                    continue;
                };
                let until = tls::rfc3339(leaf.not_after);
                let (severity, detail) = if expired {
                    (Severity::Critical, format!("expired on {until}"))
                } else if days < 7 {
                    (Severity::High, format!("expires in {days} days ({until})"))
                } else if days < 30 {
                    (
                        Severity::Medium,
                        format!("expires in {days} days ({until})"),
                    )
                } else {
                    continue;
                };
                findings.push(
                    Finding::new(
                        rule,
                        s.location.clone(),
                        format!("the {} for {names} {detail}", s.what),
                    )
                    .severity(severity),
                );
            }
            "TCF-TLS-003" => {
                if let Some(holds) = &eval.hostname_mismatch {
                    findings.push(Finding::new(
                        rule,
                        s.location.clone(),
                        format!(
                            "the {} presents a certificate that does not cover the name clients ask for; it names {holds}",
                            s.what
                        ),
                    ));
                }
            }
            "TCF-TLS-004" => {
                if let Some(why) = &eval.untrusted {
                    findings.push(Finding::new(
                        rule,
                        s.location.clone(),
                        format!("the {} for {names}: {why}", s.what),
                    ));
                }
            }
            "TCF-TLS-005" => {
                if !eval.weak_keys.is_empty() {
                    findings.push(Finding::new(
                        rule,
                        s.location.clone(),
                        format!("the {}: {}", s.what, eval.weak_keys.join("; ")),
                    ));
                }
            }
            "TCF-TLS-006" => {
                if !eval.weak_signatures.is_empty() {
                    let md5 = eval
                        .weak_signatures
                        .iter()
                        .any(|w| w.contains("md5") || w.contains("md2"));
                    findings.push(
                        Finding::new(
                            rule,
                            s.location.clone(),
                            format!("the {}: {}", s.what, eval.weak_signatures.join("; ")),
                        )
                        .severity(if md5 {
                            Severity::Critical
                        } else {
                            rule.severity
                        }),
                    );
                }
            }
            other => {
                return CheckResult::not_run(rule, format!("no TLS check is wired for {other}"))
            }
        }
    }
    outcome(rule, findings, &errors)
}
