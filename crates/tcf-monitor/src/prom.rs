//! The Prometheus text exposition format 0.0.4: `tcf_*` families with HELP and TYPE, label
//! values escaped, latency as a real histogram (cumulative `le` buckets, `_sum`, `_count`).

use crate::collect::{ServiceHealth, Tick};
use crate::latency;
use crate::rules::{Alert, State};
use std::collections::BTreeMap;
use std::fmt::Write;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// A family: written only when it has samples, HELP and TYPE first.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    lines: Vec<String>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind,
            lines: Vec::new(),
        }
    }

    fn add(&mut self, l: &[(&str, &str)], v: f64) {
        self.lines
            .push(format!("{}{} {}", self.name, labels(l), number(v)));
    }

    fn write(&self, out: &mut String) {
        if self.lines.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
    }
}

/// Render the last tick, the health scores and the active alerts.
pub fn render(
    tick: Option<&Tick>,
    health: &BTreeMap<String, ServiceHealth>,
    alerts: &[Alert],
) -> String {
    let mut requests = Family::new(
        "tcf_requests_total",
        "counter",
        "Requests the proxy answered, by service, colour and version.",
    );
    let mut r2 = Family::new(
        "tcf_responses_2xx_total",
        "counter",
        "Responses with a 2xx status.",
    );
    let mut r4 = Family::new(
        "tcf_responses_4xx_total",
        "counter",
        "Responses with a 4xx status.",
    );
    let mut e5 = Family::new(
        "tcf_responses_5xx_total",
        "counter",
        "Responses with a status of 500 or more, whoever made them.",
    );
    let mut pe = Family::new(
        "tcf_proxy_errors_total",
        "counter",
        "Responses the proxy made itself because it could not get one from upstream.",
    );
    let mut broken = Family::new(
        "tcf_broken_responses_total",
        "counter",
        "Answers that broke off after their head (malformed or truncated body); also counted as 5xx.",
    );
    let mut lat = Family::new(
        "tcf_request_duration_seconds",
        "histogram",
        "Request latency through the proxy, in seconds (sum approximated from bucket bounds).",
    );
    let mut cpu = Family::new(
        "tcf_instance_cpu_usage_ratio",
        "gauge",
        "CPU used by an instance's process, in cores (1 = one core busy).",
    );
    let mut rss = Family::new(
        "tcf_instance_resident_memory_bytes",
        "gauge",
        "Resident memory of an instance's process.",
    );
    let mut fds = Family::new(
        "tcf_instance_open_fds",
        "gauge",
        "Open file descriptors of an instance's process.",
    );
    let mut restarts = Family::new(
        "tcf_instance_restarts_total",
        "counter",
        "Restarts of an instance by the supervisor.",
    );
    let mut healthy = Family::new(
        "tcf_instance_healthy",
        "gauge",
        "1 when the instance passes its health check and takes traffic.",
    );
    let mut svc_healthy = Family::new(
        "tcf_service_healthy_instances",
        "gauge",
        "Instances of a service that are healthy and in the proxy's pool.",
    );
    let mut score = Family::new(
        "tcf_service_health_score",
        "gauge",
        "Health score of a service, 0 to 100 (docs/monitoring.md).",
    );
    let mut dep_up = Family::new(
        "tcf_dependency_up",
        "gauge",
        "1 when the dependency's probe passes.",
    );
    let mut dep_lat = Family::new(
        "tcf_dependency_probe_duration_seconds",
        "gauge",
        "Duration of the last dependency probe.",
    );
    let mut host_cpu = Family::new(
        "tcf_host_cpu_usage_ratio",
        "gauge",
        "Busy share of the host's CPU time, 0 to 1.",
    );
    let mut load = Family::new(
        "tcf_host_load1",
        "gauge",
        "One-minute load average of the host.",
    );
    let mut mem_used = Family::new(
        "tcf_host_memory_used_bytes",
        "gauge",
        "Memory in use on the host (total minus available).",
    );
    let mut mem_total = Family::new(
        "tcf_host_memory_total_bytes",
        "gauge",
        "Memory of the host.",
    );
    let mut disk_used = Family::new(
        "tcf_host_disk_used_bytes",
        "gauge",
        "Bytes used on the state directory's filesystem.",
    );
    let mut disk_total = Family::new(
        "tcf_host_disk_total_bytes",
        "gauge",
        "Size of the state directory's filesystem.",
    );
    let mut rx = Family::new(
        "tcf_host_network_receive_bytes_total",
        "counter",
        "Bytes received by the host's interfaces other than loopback.",
    );
    let mut tx = Family::new(
        "tcf_host_network_transmit_bytes_total",
        "counter",
        "Bytes sent by the host's interfaces other than loopback.",
    );
    let mut alert_f = Family::new(
        "tcf_alerts",
        "gauge",
        "Alerts pending or firing, by rule, service, severity and state.",
    );

    let mut lat_lines = Vec::new();
    if let Some(t) = tick {
        for s in &t.services {
            for c in &s.colours {
                let l = [
                    ("service", s.name.as_str()),
                    ("colour", c.name.as_str()),
                    ("version", c.version.as_str()),
                ];
                requests.add(&l, c.requests as f64);
                r2.add(&l, c.responses_2xx as f64);
                r4.add(&l, c.responses_4xx as f64);
                e5.add(&l, c.responses_5xx as f64);
                pe.add(&l, c.proxy_errors as f64);
                broken.add(&l, c.broken_responses as f64);
                let (cum, total, sum) = latency::prometheus_buckets(&c.latency);
                let base = labels(&l);
                let base_inner = base.trim_start_matches('{').trim_end_matches('}');
                for (bound, n) in latency::PROM_BOUNDS.iter().zip(cum) {
                    lat_lines.push(format!(
                        "tcf_request_duration_seconds_bucket{{{base_inner},le=\"{bound}\"}} {n}"
                    ));
                }
                lat_lines.push(format!(
                    "tcf_request_duration_seconds_bucket{{{base_inner},le=\"+Inf\"}} {total}"
                ));
                lat_lines.push(format!(
                    "tcf_request_duration_seconds_sum{base} {}",
                    number(sum)
                ));
                lat_lines.push(format!("tcf_request_duration_seconds_count{base} {total}"));
            }
            for i in &s.instances {
                let l = [
                    ("service", s.name.as_str()),
                    ("colour", i.colour.as_str()),
                    ("version", i.version.as_str()),
                    ("instance", i.id.as_str()),
                ];
                cpu.add(&l, i.cpu_percent / 100.0);
                rss.add(&l, i.rss_bytes as f64);
                if let Some(f) = i.open_fds {
                    fds.add(&l, f as f64);
                }
                restarts.add(&l, f64::from(i.restarts));
                healthy.add(&l, f64::from(u8::from(i.healthy)));
            }
            svc_healthy.add(
                &[("service", s.name.as_str())],
                f64::from(s.healthy_instances),
            );
        }
        for d in &t.dependencies {
            let l = [("dependency", d.name.as_str())];
            if let Some(up) = d.up {
                dep_up.add(&l, f64::from(u8::from(up)));
            }
            if let Some(ms) = d.latency_ms {
                dep_lat.add(&l, ms / 1000.0);
            }
        }
        let h = &t.host;
        if let Some(c) = h.cpu_percent {
            host_cpu.add(&[], c / 100.0);
        }
        if let Some(l) = h.load1 {
            load.add(&[], l);
        }
        if let Some((used, total)) = h.memory {
            mem_used.add(&[], used as f64);
            mem_total.add(&[], total as f64);
        }
        if let Some((used, total)) = h.disk {
            disk_used.add(&[], used as f64);
            disk_total.add(&[], total as f64);
        }
        if let Some((r, t)) = h.network {
            rx.add(&[], r as f64);
            tx.add(&[], t as f64);
        }
    }
    lat.lines = lat_lines;
    for (service, h) in health {
        score.add(&[("service", service.as_str())], h.score);
    }
    for a in alerts {
        let state = if a.state == State::Firing {
            "firing"
        } else {
            "pending"
        };
        alert_f.add(
            &[
                ("alertname", a.rule.as_str()),
                ("service", a.target.as_str()),
                ("severity", a.severity.as_str()),
                ("state", state),
            ],
            1.0,
        );
    }
    let mut out = String::new();
    for f in [
        &requests,
        &r2,
        &r4,
        &e5,
        &pe,
        &broken,
        &lat,
        &cpu,
        &rss,
        &fds,
        &restarts,
        &healthy,
        &svc_healthy,
        &score,
        &dep_up,
        &dep_lat,
        &host_cpu,
        &load,
        &mem_used,
        &mem_total,
        &disk_used,
        &disk_total,
        &rx,
        &tx,
        &alert_f,
    ] {
        f.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::{ColourTick, ServiceTick};

    #[test]
    fn histogram_help_type_and_escaping() {
        let mut dense = vec![0u64; latency::BUCKETS];
        let index_for = |us: u64| {
            (0..latency::BUCKETS)
                .find(|i| latency::bucket_upper_micros(*i) >= us)
                .unwrap()
        };
        dense[index_for(1500)] = 3;
        dense[index_for(460_000)] = 1;
        let tick = Tick {
            at_ms: 0,
            services: vec![ServiceTick {
                name: "gate\"way\\\n".into(),
                colours: vec![ColourTick {
                    name: "blue".into(),
                    version: "v1".into(),
                    requests: 4,
                    responses_2xx: 3,
                    responses_4xx: 0,
                    responses_5xx: 1,
                    proxy_errors: 0,
                    broken_responses: 0,
                    latency: dense,
                }],
                instances: vec![],
                healthy_instances: 1,
                cert_expiry_days: None,
            }],
            ..Default::default()
        };
        let text = render(Some(&tick), &BTreeMap::new(), &[]);
        assert!(text.contains("# HELP tcf_requests_total "));
        assert!(text.contains("# TYPE tcf_request_duration_seconds histogram"));
        assert!(text.contains(
            "tcf_requests_total{service=\"gate\\\"way\\\\\\n\",colour=\"blue\",version=\"v1\"} 4"
        ));
        assert!(text.contains(
            "tcf_responses_2xx_total{service=\"gate\\\"way\\\\\\n\",colour=\"blue\",version=\"v1\"} 3"
        ));
        assert!(text.contains("# TYPE tcf_responses_4xx_total counter"));
        assert!(text.contains("le=\"0.001\"} 0"), "{text}");
        assert!(text.contains("le=\"0.0025\"} 3"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 4"));
        assert!(text.contains("tcf_request_duration_seconds_count{"));
        // Every sample line belongs to a family announced before it.
        let mut announced = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                announced.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(
                    announced.iter().any(|f| name == f
                        || name
                            .strip_prefix(f.as_str())
                            .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))),
                    "{name} has no TYPE"
                );
            }
        }
    }
}
