//! The monitoring endpoints' JSON contracts, pinned (docs/api.md): a renamed or removed field
//! fails here.

use std::collections::BTreeMap;
use tcf_api::monitor::*;

fn alert() -> AlertInfo {
    AlertInfo {
        rule: "high_5xx_ratio".into(),
        service: "gateway".into(),
        state: "firing".into(),
        severity: "warning".into(),
        value: 0.2,
        summary: "gateway: 20.0% of requests answered 5xx".into(),
        labels: BTreeMap::from([
            ("alertname".to_string(), "high_5xx_ratio".to_string()),
            ("service".to_string(), "gateway".to_string()),
            ("severity".to_string(), "warning".to_string()),
        ]),
        active_since: "2026-11-25T16:00:00.000Z".into(),
        fired_at: Some("2026-11-25T16:02:00.000Z".into()),
        resolved_at: None,
        silenced: false,
    }
}

fn silence() -> SilenceInfo {
    SilenceInfo {
        id: "s19ab".into(),
        matchers: vec!["service=gateway".into()],
        starts: "2026-11-25T16:00:00.000Z".into(),
        ends: "2026-11-25T18:00:00.000Z".into(),
        author: "alice@host".into(),
        comment: "migration".into(),
    }
}

#[test]
fn metrics() {
    insta::assert_json_snapshot!(
        "metrics_list",
        MetricsList {
            series: vec![SeriesInfo {
                target: "gateway".into(),
                metric: "requests".into(),
                sub: Some("blue".into()),
                kind: "gauge".into(),
            }],
        }
    );
    insta::assert_json_snapshot!(
        "metrics_query",
        MetricsQuery {
            target: "gateway".into(),
            metric: "latency".into(),
            sub: None,
            agg: "p99".into(),
            step_s: 60,
            since: "2026-11-25T15:00:00.000Z".into(),
            until: "2026-11-25T16:00:00.000Z".into(),
            points: vec![MetricPoint {
                time: "2026-11-25T15:00:00.000Z".into(),
                value: 12.288,
            }],
        }
    );
}

#[test]
fn alerts() {
    insta::assert_json_snapshot!(
        "alerts_list",
        AlertsList {
            alerts: vec![alert()],
            silences: vec![silence()],
            evaluating: true,
        }
    );
    insta::assert_json_snapshot!(
        "alert_transition",
        AlertTransition {
            time: "2026-11-25T16:02:00.000Z".into(),
            from: "pending".into(),
            alert: alert(),
        }
    );
}

#[test]
fn monitor_status() {
    insta::assert_json_snapshot!(
        "monitor_status",
        MonitorStatus {
            collecting: true,
            alerts: true,
            interval_s: 5.0,
            collected: vec!["per service and colour: requests".into()],
            series: 137,
            bytes_on_disk: 1_048_576,
            bytes_per_sample: Some(3.9),
            last_collection: Some("2026-11-25T16:02:00.000Z".into()),
            last_evaluation: Some("2026-11-25T16:02:00.000Z".into()),
            last_error: None,
            firing: vec![alert()],
            pending: vec![],
            notifiers: vec![NotifierStatus {
                name: "ops".into(),
                kind: "webhook".into(),
                last_attempt: Some("2026-11-25T16:02:01.000Z".into()),
                last_success: Some("2026-11-25T16:02:01.000Z".into()),
                last_error: None,
                delivered: 1,
                failed: 0,
            }],
            metrics_url: Some("http://127.0.0.1:9464/metrics".into()),
            dashboard_url: None,
            services: vec![ServiceHealth {
                service: "gateway".into(),
                score: 91.5,
                band: "excellent".into(),
                trend: Some(Trend {
                    metric: "requests_per_s".into(),
                    last_hour: 12.0,
                    baseline_mean: Some(10.0),
                    baseline_stddev: Some(1.0),
                    baseline_days: 7,
                    z: Some(2.0),
                    anomaly: false,
                }),
            }],
        }
    );
}
