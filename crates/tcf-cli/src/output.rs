//! Human output: aligned tables for status and events. JSON output is the `tcf-api` types.

use tcf_api::{Event, Release, Status};

/// A cell as it may reach a terminal: control characters (a newline, an escape sequence in a
/// reason or a hook's output) shown escaped, so no cell can forge a row or restyle the screen.
fn cell(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Columns padded to their widest cell; the last column is not padded. Cells are escaped.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cell(c)).collect())
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn uptime(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.1}ms"))
}

pub fn status(s: &Status, instances: bool, metrics: bool) -> String {
    let healthy = s.services.iter().filter(|x| x.healthy).count();
    let mut out = format!(
        "platform {}: {} of {} services healthy\n\n",
        s.platform,
        healthy,
        s.services.len()
    );
    for w in &s.warnings {
        out.push_str(&format!("WARNING: {w}\n"));
    }
    if !s.warnings.is_empty() {
        out.push('\n');
    }
    let changed: Vec<&str> = s
        .services
        .iter()
        .filter(|x| x.config_changed)
        .map(|x| x.name.as_str())
        .collect();
    if !changed.is_empty() {
        out.push_str(&format!(
            "config file changed for {}: not applied yet (the next deploy of each applies it)\n\n",
            changed.join(", ")
        ));
    }
    for svc in &s.services {
        if let Some(m) = &svc.maintenance {
            let why = if m.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", m.reason)
            };
            out.push_str(&format!(
                "{} is in maintenance (503, Retry-After {} s) since {} by {}{why}\n\n",
                svc.name, m.retry_after_s, m.since, m.by
            ));
        }
    }
    for x in s.services.iter().filter(|x| !x.stale_secrets.is_empty()) {
        out.push_str(&format!(
            "secrets changed for {}: {} (the next deploy or rollback picks up the new values)\n\n",
            x.name,
            x.stale_secrets.join(", ")
        ));
    }
    if let Some(d) = &s.deploy_in_progress {
        out.push_str(&format!("in progress: {d}\n\n"));
    }
    let mut headers = vec![
        "SERVICE",
        "VERSION",
        "LISTEN",
        "HEALTH",
        "INSTANCES",
        "TRAFFIC",
    ];
    if metrics {
        headers.extend(["REQ/S", "5XX/S", "P50", "P99", "CPU", "RSS", "SCORE"]);
    }
    let rows: Vec<Vec<String>> = s
        .services
        .iter()
        .map(|svc| {
            // Instances of colours that take traffic; a warm previous colour is counted apart.
            let serving: Vec<&str> = svc
                .traffic
                .iter()
                .filter(|t| t.weight > 0)
                .map(|t| t.colour.as_str())
                .collect();
            let (live, warm): (Vec<_>, Vec<_>) = svc
                .instances
                .iter()
                .partition(|i| serving.contains(&i.colour.as_str()));
            let ready = live.iter().filter(|i| i.health == "healthy").count();
            let warm = if warm.is_empty() {
                String::new()
            } else {
                format!(" (+{} warm)", warm.len())
            };
            let mut r = vec![
                svc.name.clone(),
                svc.version.clone(),
                svc.listen.clone(),
                if svc.healthy { "healthy" } else { "unhealthy" }.to_string(),
                format!("{ready}/{} healthy{warm}", live.len()),
                svc.traffic
                    .iter()
                    .map(|t| format!("{} {} {}%", t.colour, t.version, t.weight))
                    .collect::<Vec<_>>()
                    .join(", "),
            ];
            if let Some(m) = svc.metrics.as_ref().filter(|_| metrics) {
                r.extend([
                    format!("{:.1}", m.requests_per_s),
                    format!("{:.1}", m.errors_5xx_per_s),
                    ms(m.p50_ms),
                    ms(m.p99_ms),
                    format!("{:.1}%", m.cpu_percent),
                    bytes(m.rss_bytes),
                    m.health_score.map_or("-".into(), |sc| {
                        format!("{sc:.0} {}", m.health_band.as_deref().unwrap_or(""))
                    }),
                ]);
            }
            r
        })
        .collect();
    out.push_str(&table(&headers, &rows));
    if instances {
        // A NODE column once any instance runs on a machine of a cluster (a Swarm node).
        let with_node = s
            .services
            .iter()
            .flat_map(|svc| svc.instances.iter())
            .any(|i| i.node.is_some());
        let rows: Vec<Vec<String>> = s
            .services
            .iter()
            .flat_map(|svc| svc.instances.iter())
            .map(|i| {
                let mut row = vec![
                    i.id.clone(),
                    i.colour.clone(),
                    i.version.clone(),
                    i.pid.map_or("-".into(), |p| p.to_string()),
                    i.port.to_string(),
                    i.state.clone(),
                    i.health.clone(),
                    i.restarts.to_string(),
                    uptime(i.uptime_s),
                ];
                if with_node {
                    row.push(i.node.clone().unwrap_or_else(|| "-".into()));
                }
                row
            })
            .collect();
        let mut headers = vec![
            "INSTANCE", "COLOUR", "VERSION", "PID", "PORT", "STATE", "HEALTH", "RESTARTS", "UPTIME",
        ];
        if with_node {
            headers.push("NODE");
        }
        out.push('\n');
        out.push_str(&table(&headers, &rows));
    }
    if !s.nodes.is_empty() {
        let rows: Vec<Vec<String>> = s
            .nodes
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    n.addr.clone(),
                    n.state.clone(),
                    n.availability.clone(),
                    if n.manager { "manager" } else { "worker" }.to_string(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["NODE", "ADDRESS", "STATE", "AVAILABILITY", "ROLE"],
            &rows,
        ));
    }
    if !s.dependencies.is_empty() {
        let rows: Vec<Vec<String>> = s
            .dependencies
            .iter()
            .map(|d| {
                vec![
                    d.name.clone(),
                    d.kind.clone(),
                    d.target.clone(),
                    match d.healthy {
                        None => "unknown".to_string(),
                        Some(true) => "healthy".to_string(),
                        Some(false) => {
                            format!("unhealthy: {}", d.last_error.clone().unwrap_or_default())
                        }
                    },
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&["DEPENDENCY", "KIND", "TARGET", "HEALTH"], &rows));
    }
    out
}

/// `prod validate`: one row per check, failures with their remedy, then the verdict.
pub fn validation(r: &tcf_api::ValidateReport) -> String {
    let rows: Vec<Vec<String>> = r
        .checks
        .iter()
        .map(|c| {
            vec![
                c.state.to_uppercase(),
                c.id.clone(),
                c.service.clone().unwrap_or_default(),
                match &c.remedy {
                    Some(fix) if c.state != "pass" => format!("{} — {fix}", c.message),
                    _ => c.message.clone(),
                },
            ]
        })
        .collect();
    let mut out = table(&["STATE", "CHECK", "SERVICE", "DETAIL"], &rows);
    let failed = r.checks.iter().filter(|c| c.state == "fail").count();
    let warned = r.checks.iter().filter(|c| c.state == "warn").count();
    out.push_str(&if r.ready {
        format!(
            "\nready to deploy ({warned} warning(s): checks that could not run or worth a look)\n"
        )
    } else {
        format!("\nNOT ready: {failed} check(s) failed\n")
    });
    out
}

pub fn history(releases: &[Release]) -> String {
    let rows: Vec<Vec<String>> = releases
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.started.clone(),
                r.strategy.clone(),
                r.status.clone(),
                r.duration_s.map_or("-".into(), |d| format!("{d:.1}s")),
                r.actor.clone(),
                r.versions
                    .iter()
                    .map(|(s, v)| format!("{s}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                r.backup.clone().unwrap_or_else(|| "-".into()),
                r.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "STARTED", "STRATEGY", "STATUS", "TOOK", "ACTOR", "VERSIONS", "BACKUP", "REASON",
        ],
        &rows,
    )
}

pub fn events(events: &[Event]) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.time.clone(),
                e.kind.clone(),
                e.actor.clone(),
                e.instance
                    .clone()
                    .or_else(|| e.service.clone())
                    .unwrap_or_else(|| "-".into()),
                e.message.clone(),
            ]
        })
        .collect();
    table(&["TIME", "EVENT", "ACTOR", "WHERE", "MESSAGE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cannot_forge_rows_or_restyle_the_terminal() {
        let t = table(
            &["A", "B"],
            &[vec!["x\nFORGED  row".into(), "\u{1b}[31mred".into()]],
        );
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(!t.contains('\u{1b}'), "{t}");
    }

    #[test]
    fn events_name_who_caused_them() {
        let t = events(&[Event {
            id: 1,
            time: "2026-12-06T09:00:00Z".into(),
            actor: "ci-deployer".into(),
            kind: "deploy.started".into(),
            service: Some("gateway".into()),
            instance: None,
            message: "v2".into(),
        }]);
        assert_eq!(
            t,
            "TIME                  EVENT           ACTOR        WHERE    MESSAGE\n\
             2026-12-06T09:00:00Z  deploy.started  ci-deployer  gateway  v2\n"
        );
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "LONGER"], &[vec!["wide cell".into(), "x".into()]]);
        assert_eq!(t, "A          LONGER\nwide cell  x\n");
    }

    #[test]
    fn sizes_and_uptimes_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(uptime(75), "1m15s");
        assert_eq!(uptime(7300), "2h1m");
    }
}
