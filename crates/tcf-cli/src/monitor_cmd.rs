//! `metrics`, `alerts` and `prod monitor`: clients of the daemon's monitoring API.

use crate::cli::{Cli, Format};
use crate::{actor, client, print_json, print_text, CmdResult};
use clap::{Args, Subcommand, ValueEnum};
use std::fmt::Write;
use std::process::ExitCode;
use tcf_api::monitor::{
    AlertInfo, AlertTransition, AlertsList, DashboardRequest, DashboardStatus, MetricsList,
    MetricsQuery, MonitorRequest, MonitorStatus, SilenceInfo, SilenceRequest, UnsilenceRequest,
};

#[derive(Debug, Subcommand)]
pub enum MetricsCommand {
    /// List the stored series (target, metric, colour or instance)
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show the history of one metric of a service, dependency or `host`
    #[command(
        long_about = "Show the history of METRIC for TARGET (a service, a dependency, or `host`), one \
point per --step, aggregated by --agg. Raw samples are kept for 24 h, 1-minute rollups for 14 days and \
1-hour rollups for a year; the coarsest tier that fits --step answers.\n\n\
Examples:\n  tcf-platform metrics query gateway requests --since 1h --step 1m --agg sum\n  \
tcf-platform metrics query gateway latency --since 1d --step 1h --agg p99\n  \
tcf-platform metrics query host disk_percent --since 7d --step 1h --agg max --format csv"
    )]
    Query(QueryArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum QueryFormat {
    #[default]
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// A service, a dependency, or `host`
    pub target: String,
    /// A metric name as `metrics list` shows it (requests, error_ratio_5xx, latency, …)
    pub metric: String,
    /// How far back (1h, 2d) or a time (2026-11-25T10:00:00Z)
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// The end: `now`, a duration ago or a time
    #[arg(long, default_value = "now")]
    pub until: String,
    /// One point per step (10s, 1m, 1h); default: about 60 points
    #[arg(long)]
    pub step: Option<String>,
    /// avg, min, max, sum, count, or p50/p99 (latency)
    #[arg(long, default_value = "avg")]
    pub agg: String,
    /// A colour (requests, errors_5xx) or an instance (cpu_percent, rss_bytes, open_fds)
    #[arg(long)]
    pub sub: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub format: QueryFormat,
}

#[derive(Debug, Args)]
pub struct AlertsArgs {
    #[command(subcommand)]
    pub command: Option<AlertsCommand>,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Pending and firing alerts, and the silences in force (the default)
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Alert transitions, oldest first
    History {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Hold back notifications of matching alerts until the silence expires
    #[command(
        long_about = "Hold back notifications of the alerts whose labels match every MATCHER \
(NAME=VALUE or NAME!=VALUE; labels are alertname, service, severity and the rule's own) for the \
time given with --for. An expiry is mandatory; you are recorded as the author.\n\n\
Example: tcf-platform alerts silence service=gateway alertname=high_5xx_ratio --for 2h --comment \"db migration\""
    )]
    Silence {
        #[arg(required = true)]
        matchers: Vec<String>,
        /// How long it lasts (30m, 2h, 1d)
        #[arg(long = "for", value_parser = parse_duration, required = true)]
        duration: std::time::Duration,
        #[arg(long, default_value = "")]
        comment: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// End a silence now
    Unsilence { id: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MonitorAction {
    Start,
    Stop,
    Status,
    Restart,
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    #[arg(long, value_enum, default_value = "status")]
    pub action: MonitorAction,
    /// start/stop alert evaluation and notifications (rather than collection)
    #[arg(long)]
    pub alerts: bool,
    /// Serve the web dashboard from the running daemon and print its URL
    #[arg(long)]
    pub dashboard: bool,
    /// The dashboard's port (default: `[monitor.dashboard] listen`, else 3006), on loopback
    #[arg(long, requires = "dashboard")]
    pub port: Option<u16>,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write it like 30m, 2h or 1d)"))
}

/// Query-string encoding for values a user typed.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i + 1 == r.len() {
                    s.clone()
                } else {
                    format!("{s:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

pub async fn metrics(cli: &Cli, cmd: &MetricsCommand) -> CmdResult {
    let client = client(cli)?;
    match cmd {
        MetricsCommand::List { format } => {
            let list: MetricsList = client.get("/v1/metrics").await?;
            match format {
                Format::Json => print_json(&list)?,
                Format::Table => {
                    let mut rows = vec![vec![
                        "TARGET".to_string(),
                        "METRIC".into(),
                        "COLOUR/INSTANCE".into(),
                        "KIND".into(),
                    ]];
                    for s in &list.series {
                        rows.push(vec![
                            s.target.clone(),
                            s.metric.clone(),
                            s.sub.clone().unwrap_or_else(|| "-".into()),
                            s.kind.clone(),
                        ]);
                    }
                    print_text(&table(&rows))?;
                }
            }
        }
        MetricsCommand::Query(q) => {
            let mut path = format!(
                "/v1/metrics/query?target={}&metric={}&since={}&until={}&agg={}",
                encode(&q.target),
                encode(&q.metric),
                encode(&q.since),
                encode(&q.until),
                encode(&q.agg)
            );
            if let Some(s) = &q.step {
                path.push_str(&format!("&step={}", encode(s)));
            }
            if let Some(s) = &q.sub {
                path.push_str(&format!("&sub={}", encode(s)));
            }
            let r: MetricsQuery = client.get(&path).await?;
            match q.format {
                QueryFormat::Json => print_json(&r)?,
                QueryFormat::Csv => {
                    let mut out = String::from("time,value\n");
                    for p in &r.points {
                        let _ = writeln!(out, "{},{}", p.time, p.value);
                    }
                    print_text(&out)?;
                }
                QueryFormat::Table => {
                    let mut rows = vec![vec!["TIME".to_string(), r.agg.to_uppercase()]];
                    for p in &r.points {
                        rows.push(vec![p.time.clone(), number(p.value)]);
                    }
                    if r.points.is_empty() {
                        print_text(&format!(
                            "no points for {} {} between {} and {}\n",
                            r.target, r.metric, r.since, r.until
                        ))?;
                    } else {
                        print_text(&table(&rows))?;
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn alert_rows(alerts: &[AlertInfo]) -> String {
    let mut rows = vec![vec![
        "STATE".to_string(),
        "SEVERITY".into(),
        "RULE".into(),
        "SERVICE".into(),
        "SINCE".into(),
        "SUMMARY".into(),
    ]];
    for a in alerts {
        rows.push(vec![
            format!("{}{}", a.state, if a.silenced { " (silenced)" } else { "" }),
            a.severity.clone(),
            a.rule.clone(),
            a.service.clone(),
            a.fired_at.clone().unwrap_or_else(|| a.active_since.clone()),
            a.summary.clone(),
        ]);
    }
    table(&rows)
}

fn silence_rows(silences: &[SilenceInfo]) -> String {
    let mut rows = vec![vec![
        "SILENCE".to_string(),
        "ENDS".into(),
        "AUTHOR".into(),
        "MATCHERS".into(),
        "COMMENT".into(),
    ]];
    for s in silences {
        rows.push(vec![
            s.id.clone(),
            s.ends.clone(),
            s.author.clone(),
            s.matchers.join(" "),
            s.comment.clone(),
        ]);
    }
    table(&rows)
}

pub async fn alerts(cli: &Cli, args: &AlertsArgs) -> CmdResult {
    let client = client(cli)?;
    match &args.command {
        None => list_alerts(&client, args.format).await,
        Some(AlertsCommand::List { format }) => {
            let f = if *format == Format::Json {
                *format
            } else {
                args.format
            };
            list_alerts(&client, f).await
        }
        Some(AlertsCommand::History { limit, format }) => {
            let h: Vec<AlertTransition> = client
                .get(&format!("/v1/alerts/history?limit={limit}"))
                .await?;
            if *format == Format::Json || args.format == Format::Json {
                print_json(&h)?;
            } else if h.is_empty() {
                print_text("no alert transitions yet\n")?;
            } else {
                let mut rows = vec![vec![
                    "TIME".to_string(),
                    "TRANSITION".into(),
                    "RULE".into(),
                    "SERVICE".into(),
                    "SUMMARY".into(),
                ]];
                for t in &h {
                    rows.push(vec![
                        t.time.clone(),
                        format!(
                            "{} -> {}{}",
                            t.from,
                            t.alert.state,
                            if t.alert.silenced { " (silenced)" } else { "" }
                        ),
                        t.alert.rule.clone(),
                        t.alert.service.clone(),
                        t.alert.summary.clone(),
                    ]);
                }
                print_text(&table(&rows))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(AlertsCommand::Silence {
            matchers,
            duration,
            comment,
            format,
        }) => {
            let s: SilenceInfo = client
                .post(
                    "/v1/alerts/silences",
                    &SilenceRequest {
                        matchers: matchers.clone(),
                        duration_s: duration.as_secs().max(1),
                        comment: comment.clone(),
                        actor: actor(),
                    },
                )
                .await?;
            if *format == Format::Json || args.format == Format::Json {
                print_json(&s)?;
            } else {
                print_text(&format!(
                    "silence {} until {} for {}\n",
                    s.id,
                    s.ends,
                    s.matchers.join(" ")
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(AlertsCommand::Unsilence { id }) => {
            let s: SilenceInfo = client
                .post(
                    &format!("/v1/alerts/silences/{}/expire", encode(id)),
                    &UnsilenceRequest { actor: actor() },
                )
                .await?;
            print_text(&format!("silence {} ended\n", s.id))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list_alerts(client: &tcf_api::Client, format: Format) -> CmdResult {
    let l: AlertsList = client.get("/v1/alerts").await?;
    match format {
        Format::Json => print_json(&l)?,
        Format::Table => {
            let mut out = String::new();
            if !l.evaluating {
                out.push_str("alert evaluation is off (start it with `tcf-platform prod monitor --action start --alerts`)\n");
            }
            if l.alerts.is_empty() {
                out.push_str("no alerts pending or firing\n");
            } else {
                out.push_str(&alert_rows(&l.alerts));
            }
            if !l.silences.is_empty() {
                out.push('\n');
                out.push_str(&silence_rows(&l.silences));
            }
            print_text(&out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn monitor(cli: &Cli, args: &MonitorArgs) -> CmdResult {
    let client = client(cli)?;
    let action = match args.action {
        MonitorAction::Start => "start",
        MonitorAction::Stop => "stop",
        MonitorAction::Status => "status",
        MonitorAction::Restart => "restart",
    };
    let mut out = String::new();
    if args.dashboard {
        let d: DashboardStatus = client
            .post(
                "/v1/dashboard",
                &DashboardRequest {
                    port: args.port,
                    actor: actor(),
                },
            )
            .await?;
        let _ = writeln!(
            out,
            "dashboard {} at {}",
            if d.started {
                "started"
            } else {
                "already served"
            },
            d.url
        );
    }
    let s: MonitorStatus = if args.action == MonitorAction::Status {
        client.get("/v1/monitor").await?
    } else {
        client
            .post(
                "/v1/monitor",
                &MonitorRequest {
                    action: action.into(),
                    alerts: args.alerts,
                    actor: actor(),
                },
            )
            .await?
    };
    if args.format == Format::Json {
        print_json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    let on = |b: bool| if b { "on" } else { "off" };
    let _ = writeln!(
        out,
        "collection: {} (every {}s)   alerts: {}",
        on(s.collecting),
        s.interval_s,
        on(s.alerts)
    );
    let _ = writeln!(
        out,
        "history:    {} series, {} bytes on disk{}",
        s.series,
        s.bytes_on_disk,
        s.bytes_per_sample
            .map(|b| format!(", {b:.1} bytes per raw sample"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "last:       collection {}, evaluation {}",
        s.last_collection.as_deref().unwrap_or("never"),
        s.last_evaluation.as_deref().unwrap_or("never")
    );
    if let Some(e) = &s.last_error {
        let _ = writeln!(out, "error:      {e}");
    }
    if let Some(u) = &s.metrics_url {
        let _ = writeln!(out, "prometheus: {u}");
    }
    if let Some(u) = &s.dashboard_url {
        let _ = writeln!(out, "dashboard:  {u}");
    }
    out.push_str("collected:\n");
    for c in &s.collected {
        let _ = writeln!(out, "  - {c}");
    }
    if !s.services.is_empty() {
        let mut rows = vec![vec![
            "SERVICE".to_string(),
            "SCORE".into(),
            "BAND".into(),
            "TREND (req/s, last hour vs same hour before)".into(),
        ]];
        for h in &s.services {
            let trend = match &h.trend {
                None => "-".to_string(),
                Some(t) => match t.z {
                    Some(z) => format!(
                        "{:.2} vs {:.2} (z {z:.1}){}",
                        t.last_hour,
                        t.baseline_mean.unwrap_or_default(),
                        if t.anomaly { " ANOMALY" } else { "" }
                    ),
                    None => format!("{:.2} (no baseline yet)", t.last_hour),
                },
            };
            rows.push(vec![
                h.service.clone(),
                format!("{:.1}", h.score),
                h.band.clone(),
                trend,
            ]);
        }
        out.push('\n');
        out.push_str(&table(&rows));
    }
    let active: Vec<AlertInfo> = s.firing.iter().chain(s.pending.iter()).cloned().collect();
    out.push('\n');
    if active.is_empty() {
        out.push_str("no alerts pending or firing\n");
    } else {
        out.push_str(&alert_rows(&active));
    }
    if !s.notifiers.is_empty() {
        let mut rows = vec![vec![
            "NOTIFIER".to_string(),
            "KIND".into(),
            "LAST DELIVERY".into(),
            "SENT".into(),
            "FAILED".into(),
            "LAST ERROR".into(),
        ]];
        for n in &s.notifiers {
            rows.push(vec![
                n.name.clone(),
                n.kind.clone(),
                n.last_success.clone().unwrap_or_else(|| "never".into()),
                n.delivered.to_string(),
                n.failed.to_string(),
                n.last_error.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        out.push('\n');
        out.push_str(&table(&rows));
    }
    print_text(&out)?;
    Ok(ExitCode::SUCCESS)
}
