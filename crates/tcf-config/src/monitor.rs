//! `[monitor]` and `[alerts]`: collection, history, alert rules and notification receivers.
//! The file shape (raw), the effective settings, and their checks.

use crate::units::{serialize_duration, Dur};
use crate::Diagnostic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use toml::Spanned;

/// Names of the built-in alert rules (tcf-monitor defines them; a test there keeps the two
/// lists equal). A `[alerts.rules.NAME]` with one of these names overrides that rule.
pub const BUILTIN_ALERT_RULES: &[&str] = &[
    "service_down",
    "high_5xx_ratio",
    "slow_p99",
    "very_slow_p99",
    "high_cpu",
    "very_high_cpu",
    "high_memory",
    "very_high_memory",
    "disk_full",
    "dependency_down",
    "crashloop",
    "backup_failed",
    "restore_verify_stale",
    "certificate_expiring",
    "certificate_expiring_soon",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMonitor {
    pub enabled: Option<bool>,
    pub interval: Option<Dur>,
    pub metrics_listen: Option<Spanned<String>>,
    pub retention_raw: Option<Dur>,
    pub retention_1m: Option<Dur>,
    pub retention_1h: Option<Dur>,
    pub dashboard: Option<RawDashboard>,
}

/// `[monitor.dashboard]`: the web dashboard, served when the table is present.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDashboard {
    pub listen: Option<Spanned<String>>,
}

/// Where the dashboard listens when `[monitor.dashboard]` names no address.
pub const DEFAULT_DASHBOARD_LISTEN: &str = "127.0.0.1:3006";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    pub enabled: Option<bool>,
    #[serde(default)]
    pub rules: BTreeMap<Spanned<String>, RawRule>,
    #[serde(default)]
    pub notify: BTreeMap<Spanned<String>, RawNotify>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub metric: Option<String>,
    pub services: Option<Vec<String>>,
    pub op: Option<Spanned<String>>,
    pub threshold: Option<f64>,
    #[serde(rename = "for")]
    pub for_: Option<Dur>,
    pub keep_firing_for: Option<Dur>,
    pub severity: Option<Spanned<String>>,
    pub summary: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub kind: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    /// The environment variable (of the daemon) that holds the webhook's HMAC key.
    pub hmac_secret_env: Option<String>,
    pub smtp: Option<Spanned<String>>,
    pub from: Option<String>,
    pub to: Option<Vec<String>>,
    pub starttls: Option<bool>,
    /// Extra CAs (PEM) to trust for https and STARTTLS; relative to the config file.
    pub ca_file: Option<String>,
    pub group_by: Option<Vec<String>>,
    pub group_wait: Option<Dur>,
    pub group_interval: Option<Dur>,
    pub repeat_interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub retries: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MonitorSettings {
    /// Collection on at startup (until `prod monitor --action stop` says otherwise).
    pub enabled: bool,
    #[serde(serialize_with = "serialize_duration")]
    pub interval: Duration,
    /// Where `GET /metrics` is served; off when absent.
    pub metrics_listen: Option<SocketAddr>,
    #[serde(serialize_with = "serialize_duration")]
    pub retention_raw: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub retention_1m: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub retention_1h: Duration,
    /// Where the web dashboard is served from startup; off when `[monitor.dashboard]` is absent
    /// (`prod monitor --dashboard` starts it later).
    pub dashboard_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AlertSettings {
    /// Evaluation and notification on at startup (until `prod monitor` says otherwise).
    pub enabled: bool,
    pub rules: BTreeMap<String, AlertRule>,
    pub notify: BTreeMap<String, Notifier>,
}

/// A rule as written: fields left out keep the built-in rule's value (or the default).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AlertRule {
    pub metric: Option<String>,
    pub services: Option<Vec<String>>,
    pub op: Option<String>,
    pub threshold: Option<f64>,
    #[serde(
        rename = "for",
        serialize_with = "crate::units::serialize_opt_duration"
    )]
    pub for_: Option<Duration>,
    #[serde(serialize_with = "crate::units::serialize_opt_duration")]
    pub keep_firing_for: Option<Duration>,
    pub severity: Option<String>,
    pub summary: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifierKind {
    Webhook,
    Slack,
    Alertmanager,
    Email,
}

#[derive(Debug, Clone, Serialize)]
pub struct Notifier {
    pub name: String,
    pub kind: NotifierKind,
    pub url: Option<String>,
    pub hmac_secret_env: Option<String>,
    pub smtp: Option<String>,
    pub from: Option<String>,
    pub to: Vec<String>,
    pub starttls: bool,
    pub ca_file: Option<std::path::PathBuf>,
    pub group_by: Vec<String>,
    #[serde(serialize_with = "serialize_duration")]
    pub group_wait: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub group_interval: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub repeat_interval: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
    pub retries: u32,
}

const OPS: [&str; 6] = [">", ">=", "<", "<=", "==", "!="];

pub fn resolve_monitor(raw: &RawMonitor, errors: &mut Vec<Diagnostic>) -> MonitorSettings {
    let interval = raw.interval.map_or(Duration::from_secs(5), |d| d.0);
    if interval < Duration::from_secs(1) {
        errors.push(
            Diagnostic::new("[monitor] interval must be at least 1s", None)
                .hint("the default is \"5s\""),
        );
    }
    let metrics_listen = raw.metrics_listen.as_ref().and_then(|l| {
        l.get_ref()
            .parse::<SocketAddr>()
            .map_err(|_| {
                errors.push(
                    Diagnostic::new(
                        format!("metrics_listen {:?} is not an address", l.get_ref()),
                        Some(l.span()),
                    )
                    .hint("write IP:PORT, such as \"127.0.0.1:9464\""),
                );
            })
            .ok()
    });
    let dashboard_listen = raw.dashboard.as_ref().and_then(|d| match &d.listen {
        None => DEFAULT_DASHBOARD_LISTEN.parse().ok(),
        Some(l) => l
            .get_ref()
            .parse::<SocketAddr>()
            .map_err(|_| {
                errors.push(
                    Diagnostic::new(
                        format!("dashboard listen {:?} is not an address", l.get_ref()),
                        Some(l.span()),
                    )
                    .hint(format!(
                        "write IP:PORT, such as \"{DEFAULT_DASHBOARD_LISTEN}\""
                    )),
                );
            })
            .ok(),
    });
    MonitorSettings {
        dashboard_listen,
        enabled: raw.enabled.unwrap_or(true),
        interval,
        metrics_listen,
        retention_raw: raw
            .retention_raw
            .map_or(Duration::from_secs(24 * 3600), |d| d.0),
        retention_1m: raw
            .retention_1m
            .map_or(Duration::from_secs(14 * 86_400), |d| d.0),
        retention_1h: raw
            .retention_1h
            .map_or(Duration::from_secs(365 * 86_400), |d| d.0),
    }
}

pub fn resolve_alerts(
    raw: &RawAlerts,
    base_dir: &std::path::Path,
    errors: &mut Vec<Diagnostic>,
) -> AlertSettings {
    let mut rules = BTreeMap::new();
    for (name, r) in &raw.rules {
        let builtin = BUILTIN_ALERT_RULES.contains(&name.get_ref().as_str());
        if !builtin {
            let missing: Vec<&str> = [
                ("metric", r.metric.is_none()),
                ("op", r.op.is_none()),
                ("threshold", r.threshold.is_none()),
            ]
            .iter()
            .filter(|(_, m)| *m)
            .map(|(f, _)| *f)
            .collect();
            if !missing.is_empty() {
                errors.push(
                    Diagnostic::new(
                        format!(
                            "alert rule {:?} needs {} (it is not a built-in rule)",
                            name.get_ref(),
                            missing.join(", ")
                        ),
                        Some(name.span()),
                    )
                    .hint(format!(
                        "built-in rules, which only need the keys they change: {}",
                        BUILTIN_ALERT_RULES.join(", ")
                    )),
                );
            }
        }
        if let Some(op) = &r.op {
            if !OPS.contains(&op.get_ref().as_str()) {
                errors.push(
                    Diagnostic::new(
                        format!("unknown comparison {:?}", op.get_ref()),
                        Some(op.span()),
                    )
                    .hint("use one of > >= < <= == !="),
                );
            }
        }
        if let Some(s) = &r.severity {
            if !["info", "warning", "critical"].contains(&s.get_ref().as_str()) {
                errors.push(
                    Diagnostic::new(
                        format!("unknown severity {:?}", s.get_ref()),
                        Some(s.span()),
                    )
                    .hint("use info, warning or critical"),
                );
            }
        }
        rules.insert(
            name.get_ref().clone(),
            AlertRule {
                metric: r.metric.clone(),
                services: r.services.clone(),
                op: r.op.as_ref().map(|o| o.get_ref().clone()),
                threshold: r.threshold,
                for_: r.for_.map(|d| d.0),
                keep_firing_for: r.keep_firing_for.map(|d| d.0),
                severity: r.severity.as_ref().map(|s| s.get_ref().clone()),
                summary: r.summary.clone(),
                labels: r.labels.clone(),
                enabled: r.enabled,
            },
        );
    }
    let mut notify = BTreeMap::new();
    for (name, n) in &raw.notify {
        if let Some(x) = resolve_notifier(name, n, base_dir, errors) {
            notify.insert(x.name.clone(), x);
        }
    }
    AlertSettings {
        enabled: raw.enabled.unwrap_or(true),
        rules,
        notify,
    }
}

fn resolve_notifier(
    name: &Spanned<String>,
    n: &RawNotify,
    base_dir: &std::path::Path,
    errors: &mut Vec<Diagnostic>,
) -> Option<Notifier> {
    let kind = match n.kind.as_ref().map(|k| (k.get_ref().as_str(), k.span())) {
        Some(("webhook", _)) => NotifierKind::Webhook,
        Some(("slack", _)) => NotifierKind::Slack,
        Some(("alertmanager", _)) => NotifierKind::Alertmanager,
        Some(("email", _)) => NotifierKind::Email,
        Some((other, span)) => {
            errors.push(
                Diagnostic::new(format!("unknown notifier kind {other:?}"), Some(span))
                    .hint("use webhook, slack, alertmanager or email"),
            );
            return None;
        }
        None => {
            errors.push(
                Diagnostic::new(
                    format!("notifier {:?} needs a kind", name.get_ref()),
                    Some(name.span()),
                )
                .hint("kind = \"webhook\" (or slack, alertmanager, email)"),
            );
            return None;
        }
    };
    let url = n.url.as_ref().map(|u| u.get_ref().clone());
    match kind {
        NotifierKind::Email => {
            if n.smtp.is_none() || n.from.is_none() || n.to.as_ref().is_none_or(|t| t.is_empty()) {
                errors.push(
                    Diagnostic::new(
                        format!("email notifier {:?} needs smtp, from and to", name.get_ref()),
                        Some(name.span()),
                    )
                    .hint("smtp = \"127.0.0.1:25\", from = \"tcf@example.com\", to = [\"ops@example.com\"]"),
                );
            }
        }
        _ => match &n.url {
            None => errors.push(
                Diagnostic::new(
                    format!("notifier {:?} needs a url", name.get_ref()),
                    Some(name.span()),
                )
                .hint("url = \"http://127.0.0.1:9000/hook\""),
            ),
            Some(u)
                if !(u.get_ref().starts_with("http://") || u.get_ref().starts_with("https://")) =>
            {
                errors.push(
                    Diagnostic::new(
                        format!("notifier url {:?} is not http:// or https://", u.get_ref()),
                        Some(u.span()),
                    )
                    .hint("for example url = \"https://hooks.example.com/alerts\""),
                )
            }
            Some(_) => {}
        },
    }
    // Alertmanager groups by itself and wants firing alerts re-sent about every minute.
    let am = kind == NotifierKind::Alertmanager;
    Some(Notifier {
        name: name.get_ref().clone(),
        kind,
        url,
        hmac_secret_env: n.hmac_secret_env.clone(),
        smtp: n.smtp.as_ref().map(|s| s.get_ref().clone()),
        from: n.from.clone(),
        to: n.to.clone().unwrap_or_default(),
        starttls: n.starttls.unwrap_or(false),
        ca_file: n.ca_file.as_ref().map(|f| base_dir.join(f)),
        group_by: n.group_by.clone().unwrap_or_else(|| {
            if am {
                vec!["alertname".into(), "service".into()]
            } else {
                vec!["alertname".into()]
            }
        }),
        group_wait: n
            .group_wait
            .map_or(Duration::from_secs(if am { 0 } else { 30 }), |d| d.0),
        group_interval: n
            .group_interval
            .map_or(Duration::from_secs(if am { 0 } else { 300 }), |d| d.0),
        repeat_interval: n
            .repeat_interval
            .map_or(Duration::from_secs(if am { 60 } else { 4 * 3600 }), |d| d.0),
        timeout: n.timeout.map_or(Duration::from_secs(10), |d| d.0),
        retries: n.retries.unwrap_or(3),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_issue_config_shape_loads() {
        let path = std::path::Path::new("/srv/p/tcf-platform.toml");
        let source = r#"
[platform]
name = "p"

[monitor]
interval = "5s"
metrics_listen = "127.0.0.1:9464"

[alerts.rules.gateway_errors]
metric = "error_ratio_5xx"
services = ["gateway"]
op = ">"
threshold = 0.05
for = "2m"
keep_firing_for = "5m"
severity = "warning"
summary = "{service}: {value} of requests answered 5xx"

[alerts.rules.service_down]
for = "10s"

[alerts.notify.ops]
kind = "webhook"
url = "http://127.0.0.1:9000/hook"
group_wait = "10s"
repeat_interval = "4h"
"#;
        let c = crate::resolve(path, source, None).unwrap();
        assert_eq!(c.monitor.interval.as_secs(), 5);
        assert_eq!(c.monitor.metrics_listen.unwrap().port(), 9464);
        let r = &c.alerts.rules["gateway_errors"];
        assert_eq!(r.for_.unwrap().as_secs(), 120);
        assert_eq!(r.keep_firing_for.unwrap().as_secs(), 300);
        assert_eq!(c.alerts.rules["service_down"].for_.unwrap().as_secs(), 10);
        let n = &c.alerts.notify["ops"];
        assert_eq!(n.group_wait.as_secs(), 10);
        assert_eq!(n.repeat_interval.as_secs(), 4 * 3600);
    }

    #[test]
    fn bad_rules_and_notifiers_are_reported() {
        let path = std::path::Path::new("/srv/p/tcf-platform.toml");
        let source = r#"
[platform]
name = "p"

[alerts.rules.mine]
op = "~"

[alerts.notify.x]
kind = "pager"

[alerts.notify.y]
kind = "email"
starttls = true

[alerts.notify.z]
kind = "slack"
url = "ftp://example.com"
"#;
        let e: String = crate::resolve(path, source, None)
            .unwrap_err()
            .iter()
            .map(|d| format!("{} ({})\n", d.message, d.hint.clone().unwrap_or_default()))
            .collect();
        assert!(e.contains("needs metric, threshold"), "{e}");
        assert!(e.contains("unknown comparison \"~\""), "{e}");
        assert!(e.contains("unknown notifier kind \"pager\""), "{e}");
        assert!(e.contains("needs smtp, from and to"), "{e}");
        assert!(e.contains("is not http:// or https://"), "{e}");
    }

    #[test]
    fn the_dashboard_is_off_until_its_table_is_present() {
        let path = std::path::Path::new("/srv/p/tcf-platform.toml");
        let load =
            |extra: &str| crate::resolve(path, &format!("[platform]\nname = \"p\"\n{extra}"), None);
        assert_eq!(load("").unwrap().monitor.dashboard_listen, None);
        let default = load("[monitor.dashboard]\n")
            .unwrap()
            .monitor
            .dashboard_listen;
        assert_eq!(default.unwrap().to_string(), "127.0.0.1:3006");
        let set = load("[monitor.dashboard]\nlisten = \"127.0.0.1:8080\"\n").unwrap();
        assert_eq!(set.monitor.dashboard_listen.unwrap().port(), 8080);
        let e = load("[monitor.dashboard]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(e[0]
            .message
            .contains("dashboard listen \"localhost\" is not an address"));
        assert!(
            load("[monitor.dashboard]\nport = 1\n").is_err(),
            "unknown keys are denied"
        );
    }
}
