//! The pages' content, rendered from the daemon's data. Each live page is a list of regions;
//! the first render and every live update go through the same functions.

use crate::auth::Viewer;
use crate::chart::{self, format_value, line_chart, sparkline, Marker};
use crate::html::{csrf_field, esc, url_part};
use crate::source::{Change, DataSource, HostInfo, Point, SeriesQuery};
use std::fmt::Write;
use std::time::Duration;
use tcf_api::monitor::{AlertInfo, AlertsList};
use tcf_api::{Event, Release, ServiceStatus, Status};

/// A page that follows the live stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    Overview,
    Service(String),
    Releases,
    Alerts,
}

impl View {
    pub fn parse(s: &str) -> Option<View> {
        match s {
            "overview" => Some(View::Overview),
            "releases" => Some(View::Releases),
            "alerts" => Some(View::Alerts),
            other => other
                .strip_prefix("service:")
                .filter(|n| !n.is_empty())
                .map(|n| View::Service(n.to_string())),
        }
    }

    pub fn name(&self) -> String {
        match self {
            View::Overview => "overview".into(),
            View::Service(n) => format!("service:{n}"),
            View::Releases => "releases".into(),
            View::Alerts => "alerts".into(),
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// RFC 3339 to Unix ms.
pub fn parse_ms(time: &str) -> Option<i64> {
    humantime::parse_rfc3339_weak(time)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}

/// The live regions of a view: (id, html).
pub async fn regions(
    data: &dyn DataSource,
    view: &View,
    viewer: &Viewer,
) -> Vec<(&'static str, String)> {
    match view {
        View::Overview => {
            let status = data.status().await;
            let alerts = data.alerts().await.ok();
            let host = data.host().await;
            let mut sparks = Vec::new();
            let now = now_ms();
            for s in &status.services {
                sparks.push(
                    data.series(SeriesQuery {
                        target: s.name.clone(),
                        metric: "p99_ms".into(),
                        sub: None,
                        since_ms: now - 3_600_000,
                        until_ms: now,
                        step: Duration::from_secs(15),
                        agg: "avg",
                    })
                    .await
                    .unwrap_or_default(),
                );
            }
            vec![
                ("deploy", deploy_banner(&status)),
                (
                    "services",
                    services_table(&status, alerts.as_ref(), &sparks),
                ),
                ("dependencies", dependencies_table(&status)),
                ("host", host_table(&host)),
            ]
        }
        View::Service(name) => {
            let status = data.status().await;
            let Some(svc) = status.services.iter().find(|s| &s.name == name) else {
                return vec![("summary", "<p>No such service.</p>".into())];
            };
            let logs = data
                .logs_tail(name.clone(), 40)
                .await
                .unwrap_or_else(|e| vec![format!("(logs unavailable: {e})")]);
            vec![
                ("deploy", deploy_banner(&status)),
                ("summary", service_summary(svc, viewer)),
                ("instances", instances_table(svc)),
                ("logs", logs_block(&logs)),
            ]
        }
        View::Releases => {
            let status = data.status().await;
            let releases = data.releases(100).await.unwrap_or_default();
            let steps = data.events(None, 200).await.unwrap_or_default();
            vec![
                ("deploy", live_release(&status, &steps)),
                ("timeline", releases_timeline(&releases)),
            ]
        }
        View::Alerts => {
            let (alerts, err) = match data.alerts().await {
                Ok(a) => (a, None),
                Err(e) => (
                    AlertsList {
                        alerts: vec![],
                        silences: vec![],
                        evaluating: false,
                    },
                    Some(e.to_string()),
                ),
            };
            let history = data.alert_history(100).await.unwrap_or_default();
            let mut active = String::new();
            if let Some(e) = err {
                let _ = write!(active, r#"<p class="error">{}</p>"#, esc(&e));
            }
            active.push_str(&alerts_tables(&alerts, viewer));
            let resolved: Vec<&AlertInfo> = history
                .iter()
                .rev()
                .filter(|t| t.alert.state == "resolved")
                .map(|t| &t.alert)
                .take(30)
                .collect();
            vec![
                ("active", active),
                ("silences", silences_table(&alerts, viewer)),
                ("resolved", resolved_table(&resolved)),
            ]
        }
    }
}

pub fn deploy_banner(status: &Status) -> String {
    match &status.deploy_in_progress {
        Some(d) => format!(
            r#"<p class="banner" role="status">Release in progress: {} · <a href="/releases">follow it</a></p>"#,
            esc(d)
        ),
        None => String::new(),
    }
}

fn traffic_split(svc: &ServiceStatus) -> String {
    let mut text = String::new();
    let mut bar = String::from(r#"<svg class="bar" viewBox="0 0 100 6" aria-hidden="true">"#);
    let total: u32 = svc.traffic.iter().map(|t| t.weight).sum::<u32>().max(1);
    let mut x = 0.0;
    for (i, t) in svc.traffic.iter().enumerate() {
        let share = f64::from(t.weight) * 100.0 / f64::from(total);
        let _ = write!(
            bar,
            r#"<rect x="{x:.1}" y="0" width="{share:.1}" height="6" class="c{}"/>"#,
            i % 2
        );
        x += share;
        if i > 0 {
            text.push_str(" · ");
        }
        let _ = write!(text, "{} {} {}%", esc(&t.version), esc(&t.colour), t.weight);
    }
    bar.push_str("</svg>");
    if svc.traffic.is_empty() {
        return "none".into();
    }
    format!(r#"<span class="split">{text}</span>{bar}"#)
}

fn versions(svc: &ServiceStatus) -> String {
    let mut v: Vec<&str> = svc.instances.iter().map(|i| i.version.as_str()).collect();
    v.sort();
    v.dedup();
    if v.is_empty() {
        esc(&svc.version)
    } else {
        esc(&v.join(", "))
    }
}

fn healthy_instances(svc: &ServiceStatus) -> usize {
    svc.instances
        .iter()
        .filter(|i| i.health == "healthy")
        .count()
}

pub fn services_table(
    status: &Status,
    alerts: Option<&AlertsList>,
    sparks: &[Vec<Point>],
) -> String {
    let mut rows = String::new();
    for (i, s) in status.services.iter().enumerate() {
        let m = s.metrics.as_ref();
        let firing = alerts.map_or(0, |a| {
            a.alerts
                .iter()
                .filter(|al| al.service == s.name && al.state == "firing")
                .count()
        });
        let health = if s.healthy { "healthy" } else { "unhealthy" };
        let band = m
            .and_then(|m| m.health_band.clone())
            .map(|b| format!(r#" <small class="band {b}">{b}</small>"#, b = esc(&b)))
            .unwrap_or_default();
        let p99 = m
            .and_then(|m| m.p99_ms)
            .map_or("–".to_string(), |v| format_value(v, "ms"));
        let _ = write!(
            rows,
            r#"<tr id="svc-{id}"><th scope="row"><a href="/services/{href}">{name}</a></th><td class="health"><span class="dot {health}"></span>{health}{band}</td><td class="version">{versions}</td><td class="traffic">{traffic}</td><td class="num rps">{rps}</td><td class="num err">{err}</td><td class="p99">{p99} {spark}</td><td class="num inst">{up}/{total}</td><td class="num alerts{alert_class}">{firing}</td></tr>"#,
            id = esc(&s.name),
            href = url_part(&s.name),
            name = esc(&s.name),
            versions = versions(s),
            traffic = traffic_split(s),
            rps = m.map_or("–".into(), |m| format!("{:.1}", m.requests_per_s)),
            err = m.map_or("–".into(), |m| format!(
                "{:.1}%",
                m.error_ratio_5xx * 100.0
            )),
            spark = sparkline(
                sparks.get(i).map_or(&[][..], Vec::as_slice),
                "p99 over the last hour"
            ),
            up = healthy_instances(s),
            total = s.instances.len(),
            alert_class = if firing > 0 { " firing" } else { "" },
        );
    }
    format!(
        r#"<h2>Services</h2><div class="scroll"><table class="services"><thead><tr><th scope="col">Service</th><th scope="col">Health</th><th scope="col">Version</th><th scope="col">Traffic</th><th scope="col">Req/s</th><th scope="col">5xx</th><th scope="col">p99 (1 h)</th><th scope="col">Instances</th><th scope="col">Firing</th></tr></thead><tbody>{rows}</tbody></table></div>"#
    )
}

pub fn dependencies_table(status: &Status) -> String {
    if status.dependencies.is_empty() {
        return r#"<h2>Dependencies</h2><p class="muted">No dependencies are configured.</p>"#
            .into();
    }
    let mut rows = String::new();
    for d in &status.dependencies {
        let state = match d.healthy {
            Some(true) => "healthy",
            Some(false) => "unhealthy",
            None => "unknown",
        };
        let _ = write!(
            rows,
            r#"<tr><th scope="row">{}</th><td>{}</td><td>{}</td><td><span class="dot {state}"></span>{state}</td><td>{}</td></tr>"#,
            esc(&d.name),
            esc(&d.kind),
            esc(&d.target),
            esc(d.last_error.as_deref().unwrap_or(""))
        );
    }
    format!(
        r#"<h2>Dependencies</h2><div class="scroll"><table><thead><tr><th scope="col">Name</th><th scope="col">Kind</th><th scope="col">Target</th><th scope="col">State</th><th scope="col">Last error</th></tr></thead><tbody>{rows}</tbody></table></div>"#
    )
}

pub fn host_table(h: &HostInfo) -> String {
    let f = |v: Option<f64>, unit: &str| v.map_or("–".to_string(), |v| format_value(v, unit));
    format!(
        r#"<h2>Host</h2><dl class="host"><div><dt>Name</dt><dd>{}</dd></div><div><dt>CPU</dt><dd>{}</dd></div><div><dt>Memory</dt><dd>{}</dd></div><div><dt>Disk (state)</dt><dd>{}</dd></div><div><dt>Load (1 min)</dt><dd>{}</dd></div></dl>"#,
        esc(&h.name),
        f(h.cpu_percent, "%"),
        f(h.memory_percent, "%"),
        f(h.disk_percent, "%"),
        h.load1.map_or("–".to_string(), |v| format!("{v:.2}")),
    )
}

pub fn service_summary(svc: &ServiceStatus, viewer: &Viewer) -> String {
    let m = svc.metrics.as_ref();
    let action = if viewer.role.can_act() {
        format!(
            r#"<p><a class="button danger" href="/services/{}/rollback">Roll back…</a></p>"#,
            url_part(&svc.name)
        )
    } else {
        String::new()
    };
    format!(
        r#"<dl class="summary"><div><dt>Health</dt><dd class="health"><span class="dot {h}"></span>{h}</dd></div><div><dt>Serving</dt><dd class="version">{v}</dd></div><div><dt>Traffic</dt><dd class="traffic">{t}</dd></div><div><dt>Listen</dt><dd>{l}</dd></div><div><dt>Req/s</dt><dd>{rps}</dd></div><div><dt>5xx</dt><dd>{err}</dd></div><div><dt>p50 / p99</dt><dd>{p50} / {p99}</dd></div></dl>{action}"#,
        h = if svc.healthy { "healthy" } else { "unhealthy" },
        v = esc(&svc.version),
        t = traffic_split(svc),
        l = esc(&svc.listen),
        rps = m.map_or("–".into(), |m| format!("{:.1}", m.requests_per_s)),
        err = m.map_or("–".into(), |m| format!(
            "{:.1}%",
            m.error_ratio_5xx * 100.0
        )),
        p50 = m
            .and_then(|m| m.p50_ms)
            .map_or("–".into(), |v| format_value(v, "ms")),
        p99 = m
            .and_then(|m| m.p99_ms)
            .map_or("–".into(), |v| format_value(v, "ms")),
    )
}

fn duration_text(s: u64) -> String {
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

pub fn instances_table(svc: &ServiceStatus) -> String {
    let mut rows = String::new();
    for i in &svc.instances {
        let _ = write!(
            rows,
            r#"<tr><th scope="row">{}</th><td>{} {}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td><span class="dot {h}"></span>{h}</td></tr>"#,
            esc(&i.id),
            esc(&i.version),
            esc(&i.colour),
            i.pid.map_or("–".into(), |p| p.to_string()),
            i.port,
            esc(&i.state),
            duration_text(i.uptime_s),
            i.restarts,
            h = esc(&i.health),
        );
    }
    format!(
        r#"<h2>Instances</h2><div class="scroll"><table><thead><tr><th scope="col">Instance</th><th scope="col">Version</th><th scope="col">Pid</th><th scope="col">Port</th><th scope="col">State</th><th scope="col">Uptime</th><th scope="col">Restarts</th><th scope="col">Health</th></tr></thead><tbody>{rows}</tbody></table></div>"#
    )
}

pub fn logs_block(lines: &[String]) -> String {
    let mut text = String::new();
    for l in lines {
        text.push_str(&esc(l));
        text.push('\n');
    }
    format!(r#"<h2>Logs</h2><pre class="logs" tabindex="0">{text}</pre>"#)
}

/// The chart ranges a service page offers: (name, span, step).
pub const RANGES: &[(&str, u64, u64)] = &[
    // Fine enough for the raw samples to answer (the minute rollup lags a minute behind).
    ("15m", 900, 5),
    ("1h", 3600, 15),
    ("24h", 86_400, 1800),
    ("7d", 7 * 86_400, 3 * 3600),
    ("30d", 30 * 86_400, 12 * 3600),
];

/// Release markers of one service: every deploy and rollback at its start, every revert at
/// its end.
pub fn markers(releases: &[Release], service: &str) -> Vec<Marker> {
    releases
        .iter()
        .filter_map(|r| {
            let version = r.versions.get(service)?;
            let started = parse_ms(&r.started)?;
            let (kind, at_ms) = if r.status == "reverted" {
                let took = r.duration_s.unwrap_or(0.0);
                ("revert", started + (took * 1000.0) as i64)
            } else if r.strategy.contains("rollback") {
                ("rollback", started)
            } else if ["restart", "scale"]
                .iter()
                .any(|k| r.strategy.starts_with(k))
            {
                return None;
            } else {
                ("deploy", started)
            };
            Some(Marker {
                at_ms,
                kind,
                label: format!(
                    "{} · release {} · {kind} to {version} ({}) by {}",
                    r.started, r.id, r.status, r.actor
                ),
            })
        })
        .collect()
}

/// The charts of a service over one range, from the history.
pub async fn service_charts(
    data: &dyn DataSource,
    svc: &ServiceStatus,
    range: &str,
    releases: &[Release],
) -> String {
    let (name, span, step) = RANGES
        .iter()
        .find(|r| r.0 == range)
        .copied()
        .unwrap_or(RANGES[1]);
    let until = now_ms();
    let since = until - span as i64 * 1000;
    let q = |metric: &str, sub: Option<String>, agg: &'static str| SeriesQuery {
        target: svc.name.clone(),
        metric: metric.into(),
        sub,
        since_ms: since,
        until_ms: until,
        step: Duration::from_secs(step),
        agg,
    };
    let get = |query: SeriesQuery| async move { data.series(query).await.unwrap_or_default() };
    let marks = markers(releases, &svc.name);
    let mut out = String::from(r#"<nav class="ranges" aria-label="Time range">"#);
    for (r, _, _) in RANGES {
        let cur = if *r == name {
            r#" aria-current="true""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r##"<a href="/services/{}?range={r}#charts"{cur}>{r}</a>"##,
            url_part(&svc.name)
        );
    }
    out.push_str(r#"</nav><div class="charts">"#);
    let rps = get(q("requests_per_s", None, "avg")).await;
    out.push_str(&line_chart(
        "Requests/s",
        "/s",
        &[("all".into(), rps)],
        since,
        until,
        &marks,
    ));
    let err = get(q("error_ratio_5xx", None, "avg"))
        .await
        .into_iter()
        .map(|(t, v)| (t, v * 100.0))
        .collect();
    out.push_str(&line_chart(
        "5xx ratio",
        "%",
        &[("5xx".into(), err)],
        since,
        until,
        &marks,
    ));
    let p50 = get(q("p50_ms", None, "avg")).await;
    let p99 = get(q("p99_ms", None, "avg")).await;
    out.push_str(&line_chart(
        "Latency",
        "ms",
        &[("p50".into(), p50), ("p99".into(), p99)],
        since,
        until,
        &marks,
    ));
    let mut cpu = Vec::new();
    let mut mem = Vec::new();
    for i in &svc.instances {
        cpu.push((
            i.id.clone(),
            get(q("cpu_percent", Some(i.id.clone()), "avg")).await,
        ));
        mem.push((
            i.id.clone(),
            get(q("rss_bytes", Some(i.id.clone()), "avg")).await,
        ));
    }
    out.push_str(&line_chart(
        "CPU per instance",
        "%",
        &cpu,
        since,
        until,
        &marks,
    ));
    out.push_str(&line_chart(
        "Memory per instance",
        "B",
        &mem,
        since,
        until,
        &marks,
    ));
    out.push_str(
        r#"</div><p class="legend"><span class="key marker deploy">deploy</span> <span class="key marker rollback">rollback</span> <span class="key marker revert">revert</span></p>"#,
    );
    out
}

pub fn releases_timeline(releases: &[Release]) -> String {
    if releases.is_empty() {
        return r#"<h2>History</h2><p class="muted">No release yet.</p>"#.into();
    }
    let mut items = String::new();
    for r in releases {
        let versions: Vec<String> = r
            .versions
            .iter()
            .map(|(s, v)| format!("{} {}", esc(s), esc(v)))
            .collect();
        let _ = write!(
            items,
            r#"<li class="release {status}"><div class="when"><time datetime="{start}">{start_short}</time></div><div class="what"><strong>#{id} {status}</strong> · {strategy} · by {actor}{duration}{backup}<br><span class="versions">{versions}</span>{reason}</div></li>"#,
            id = r.id,
            status = esc(&r.status),
            start = esc(&r.started),
            start_short = esc(r.started.get(..19).unwrap_or(&r.started)).replace('T', " "),
            strategy = esc(&r.strategy),
            actor = esc(&r.actor),
            duration = r
                .duration_s
                .map(|d| format!(" · {d:.1} s"))
                .unwrap_or_default(),
            backup = r
                .backup
                .as_ref()
                .map(|b| format!(" · backup {}", esc(b)))
                .unwrap_or_default(),
            versions = versions.join(", "),
            reason = r
                .reason
                .as_ref()
                .map(|x| format!(r#"<br><q>{}</q>"#, esc(x)))
                .unwrap_or_default(),
        );
    }
    format!(r#"<h2>History</h2><ol class="timeline">{items}</ol>"#)
}

/// The release running now: its steps (events since it started) and every traffic split.
pub fn live_release(status: &Status, recent: &[Event]) -> String {
    let mut out = String::from("<h2>Now</h2>");
    match &status.deploy_in_progress {
        Some(d) => {
            let _ = write!(
                out,
                r#"<p class="banner" role="status">In progress: {}</p>"#,
                esc(d)
            );
            // Its steps: the release events since the last start, oldest first.
            let start = recent.iter().position(|e| e.kind == "release.started");
            if let Some(start) = start {
                out.push_str(r#"<ol class="steps">"#);
                for e in recent[..=start].iter().rev() {
                    let _ = write!(
                        out,
                        "<li><time>{}</time> {}</li>",
                        esc(e.time.get(11..19).unwrap_or(&e.time)),
                        esc(&e.message)
                    );
                }
                out.push_str("</ol>");
            }
        }
        None => out.push_str(r#"<p class="muted">No release is running.</p>"#),
    }
    out.push_str(r#"<table class="splits"><thead><tr><th scope="col">Service</th><th scope="col">Traffic</th></tr></thead><tbody>"#);
    for s in &status.services {
        let _ = write!(
            out,
            r#"<tr id="split-{}"><th scope="row">{}</th><td class="traffic">{}</td></tr>"#,
            esc(&s.name),
            esc(&s.name),
            traffic_split(s)
        );
    }
    out.push_str("</tbody></table>");
    out
}

fn alert_row(a: &AlertInfo, viewer: &Viewer, with_action: bool) -> String {
    let action = if with_action && viewer.role.can_act() && !a.silenced {
        let matchers = format!("alertname={} service={}", a.rule, a.service);
        format!(
            r#"<form method="post" action="/alerts/silence" class="inline">{}<input type="hidden" name="matchers" value="{}"><input type="hidden" name="duration" value="1h"><input type="hidden" name="comment" value="silenced from the dashboard"><button type="submit" data-action="silence" aria-label="Silence {} on {} for 1 hour">Silence 1 h</button></form>"#,
            csrf_field(viewer),
            esc(&matchers),
            esc(&a.rule),
            esc(&a.service)
        )
    } else if a.silenced {
        "silenced".into()
    } else {
        String::new()
    };
    format!(
        r#"<tr class="alert {state}" data-rule="{rule}" data-service="{service}"><th scope="row">{rule}</th><td>{service}</td><td><span class="sev {sev}">{sev}</span></td><td>{state}</td><td>{summary}</td><td class="num">{value:.3}</td><td><time>{since}</time></td><td>{action}</td></tr>"#,
        state = esc(&a.state),
        rule = esc(&a.rule),
        service = esc(&a.service),
        sev = esc(&a.severity),
        summary = esc(&a.summary),
        value = a.value,
        since = esc(a.fired_at.as_deref().unwrap_or(&a.active_since)),
    )
}

const ALERT_HEAD: &str = r#"<thead><tr><th scope="col">Rule</th><th scope="col">Service</th><th scope="col">Severity</th><th scope="col">State</th><th scope="col">Summary</th><th scope="col">Value</th><th scope="col">Since</th><th scope="col"><span class="sr">Action</span></th></tr></thead>"#;

pub fn alerts_tables(alerts: &AlertsList, viewer: &Viewer) -> String {
    let mut out = String::new();
    if !alerts.evaluating {
        out.push_str(r#"<p class="banner">Alert rules are not being evaluated (prod monitor --action start --alerts).</p>"#);
    }
    for (title, pick) in [
        (
            "Firing",
            &(|a: &AlertInfo| a.state == "firing" && !a.silenced) as &dyn Fn(&AlertInfo) -> bool,
        ),
        ("Pending", &|a: &AlertInfo| {
            a.state == "pending" && !a.silenced
        }),
        ("Silenced", &|a: &AlertInfo| a.silenced),
    ] {
        let rows: String = alerts
            .alerts
            .iter()
            .filter(|a| pick(a))
            .map(|a| alert_row(a, viewer, true))
            .collect();
        let id = title.to_lowercase();
        if rows.is_empty() {
            let _ = write!(
                out,
                r#"<h2 id="h-{id}">{title}</h2><p class="muted">None.</p>"#
            );
        } else {
            let _ = write!(
                out,
                r#"<h2 id="h-{id}">{title}</h2><div class="scroll"><table class="alerts" id="t-{id}">{ALERT_HEAD}<tbody>{rows}</tbody></table></div>"#
            );
        }
    }
    out
}

pub fn silences_table(alerts: &AlertsList, viewer: &Viewer) -> String {
    let mut rows = String::new();
    for s in &alerts.silences {
        let action = if viewer.role.can_act() {
            format!(
                r#"<form method="post" action="/alerts/silences/{}/expire" class="inline">{}<button type="submit" data-action="unsilence">Unsilence</button></form>"#,
                url_part(&s.id),
                csrf_field(viewer)
            )
        } else {
            String::new()
        };
        let _ = write!(
            rows,
            r#"<tr data-silence="{id}"><th scope="row">{id}</th><td>{m}</td><td>{a}</td><td><time>{e}</time></td><td>{c}</td><td>{action}</td></tr>"#,
            id = esc(&s.id),
            m = esc(&s.matchers.join(" ")),
            a = esc(&s.author),
            e = esc(&s.ends),
            c = esc(&s.comment),
        );
    }
    let form = if viewer.role.can_act() {
        format!(
            r#"<details><summary>New silence</summary><form method="post" action="/alerts/silence" class="stack">{}<label>Matchers <input name="matchers" required placeholder="service=gateway alertname=high_5xx_ratio"></label><label>For <input name="duration" required value="2h"></label><label>Comment <input name="comment"></label><button type="submit">Silence</button></form></details>"#,
            csrf_field(viewer)
        )
    } else {
        String::new()
    };
    if rows.is_empty() {
        return format!(r#"<h2>Silences</h2><p class="muted">No silence in force.</p>{form}"#);
    }
    format!(
        r#"<h2>Silences</h2><div class="scroll"><table id="t-silences"><thead><tr><th scope="col">Id</th><th scope="col">Matchers</th><th scope="col">Author</th><th scope="col">Ends</th><th scope="col">Comment</th><th scope="col"><span class="sr">Action</span></th></tr></thead><tbody>{rows}</tbody></table></div>{form}"#
    )
}

pub fn resolved_table(resolved: &[&AlertInfo]) -> String {
    if resolved.is_empty() {
        return r#"<h2>Resolved</h2><p class="muted">None recently.</p>"#.into();
    }
    let mut rows = String::new();
    for a in resolved {
        let _ = write!(
            rows,
            r#"<tr><th scope="row">{}</th><td>{}</td><td>{}</td><td><time>{}</time></td></tr>"#,
            esc(&a.rule),
            esc(&a.service),
            esc(&a.summary),
            esc(a.resolved_at.as_deref().unwrap_or(""))
        );
    }
    format!(
        r#"<h2>Resolved</h2><div class="scroll"><table><thead><tr><th scope="col">Rule</th><th scope="col">Service</th><th scope="col">Summary</th><th scope="col">Resolved</th></tr></thead><tbody>{rows}</tbody></table></div>"#
    )
}

/// The events page's filter.
#[derive(Debug, Default, serde::Deserialize)]
pub struct EventFilter {
    pub service: Option<String>,
    pub kind: Option<String>,
    /// How far back: 15m, 1h, 1d…
    pub since: Option<String>,
}

pub fn events_page(
    events: &[Event],
    filter: &EventFilter,
    services: &[String],
) -> Result<String, String> {
    let since_ms = match filter.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            now_ms()
                - humantime::parse_duration(s)
                    .map_err(|e| format!("bad time {s:?}: {e} (write 15m, 1h or 2d)"))?
                    .as_millis() as i64,
        ),
    };
    let kind = filter.kind.as_deref().filter(|k| !k.is_empty());
    let mut options = String::from(r#"<option value="">all</option>"#);
    for s in services {
        let sel = if filter.service.as_deref() == Some(s) {
            " selected"
        } else {
            ""
        };
        let _ = write!(options, r#"<option{sel}>{}</option>"#, esc(s));
    }
    let mut out = format!(
        r#"<form method="get" action="/events" class="filters" role="search"><label>Service <select name="service">{options}</select></label><label>Kind <input name="kind" value="{}" placeholder="release, alert, instance…"></label><label>Since <input name="since" value="{}" placeholder="1h"></label><button type="submit">Filter</button></form>"#,
        esc(kind.unwrap_or("")),
        esc(filter.since.as_deref().unwrap_or(""))
    );
    let mut rows = String::new();
    let mut n = 0;
    for e in events {
        if kind.is_some_and(|k| !e.kind.starts_with(k)) {
            continue;
        }
        if since_ms.is_some_and(|s| parse_ms(&e.time).is_some_and(|t| t < s)) {
            continue;
        }
        n += 1;
        let _ = write!(
            rows,
            r#"<tr><td><time>{}</time></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&e.time),
            esc(&e.kind),
            esc(e.service.as_deref().unwrap_or("")),
            esc(&e.actor),
            esc(&e.message)
        );
    }
    let _ = write!(
        out,
        r#"<p class="muted">{n} event(s)</p><div class="scroll"><table class="events"><thead><tr><th scope="col">Time</th><th scope="col">Kind</th><th scope="col">Service</th><th scope="col">Actor</th><th scope="col">Message</th></tr></thead><tbody>{rows}</tbody></table></div>"#
    );
    Ok(out)
}

pub fn rollback_confirm(service: &str, changes: &[Change], viewer: &Viewer) -> String {
    let mut list = String::new();
    for c in changes {
        let _ = write!(
            list,
            "<li><strong>{}</strong>: {} → <strong>{}</strong> (traffic moves to {} once it is healthy)</li>",
            esc(&c.service),
            esc(&c.from),
            esc(&c.to),
            esc(&c.to)
        );
    }
    format!(
        r#"<p>This rollback will change:</p><ul class="changes">{list}</ul><form method="post" action="/services/{href}/rollback" class="stack">{csrf}<label>Reason <input name="reason" value="rolled back from the dashboard"></label><div><button type="submit" class="danger" id="confirm-rollback">Roll back {name}</button> <a href="/services/{href}">Cancel</a></div></form>"#,
        href = url_part(service),
        csrf = csrf_field(viewer),
        name = esc(service),
    )
}

pub fn message_box(kind: &str, text: &str) -> String {
    format!(r#"<p class="{}" role="alert">{}</p>"#, esc(kind), esc(text))
}

/// Re-exported for the service page's header.
pub use chart::clock;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_parse() {
        assert_eq!(View::parse("overview"), Some(View::Overview));
        assert_eq!(
            View::parse("service:gateway"),
            Some(View::Service("gateway".into()))
        );
        assert_eq!(View::parse("service:"), None);
        assert_eq!(View::parse("nope"), None);
        assert_eq!(View::Service("a".into()).name(), "service:a");
    }

    #[test]
    fn markers_from_releases() {
        let rel = |id: i64, strategy: &str, status: &str, service: &str| Release {
            id,
            versions: [(service.to_string(), "v2".to_string())]
                .into_iter()
                .collect(),
            strategy: strategy.into(),
            status: status.into(),
            actor: "me".into(),
            reason: None,
            started: "2026-11-25T10:00:00.000Z".into(),
            duration_s: Some(2.0),
            backup: None,
        };
        let m = markers(
            &[
                rel(1, "blue_green", "active", "api"),
                rel(2, "rollback", "active", "api"),
                rel(3, "canary", "reverted", "api"),
                rel(4, "restart", "active", "api"),
                rel(5, "blue_green", "active", "other"),
            ],
            "api",
        );
        let kinds: Vec<&str> = m.iter().map(|m| m.kind).collect();
        assert_eq!(kinds, ["deploy", "rollback", "revert"]);
        let start = parse_ms("2026-11-25T10:00:00Z").unwrap();
        assert_eq!(m[0].at_ms, start);
        assert_eq!(m[2].at_ms, start + 2000);
    }
}
