//! Alert rules and their state machine: inactive → pending → firing → resolved.
//!
//! A rule compares one metric of every target that has it (a service, a dependency, `host`)
//! with a threshold at each evaluation. The condition must hold for `for` before the alert
//! fires (a value that clears earlier never fires), and a firing alert stays firing until the
//! condition has been false for `keep_firing_for` (a flapping value does not page twice).
//! Built-in rules are on by default; config overrides any field or disables them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RuleError {
    #[error("alert rule {rule}: `{field}` is required for a rule that is not built in (built-in rules: {builtins})")]
    Missing {
        rule: String,
        field: &'static str,
        builtins: String,
    },
    #[error("alert rule {rule}: unknown comparison {op:?}; use one of > >= < <= == !=")]
    BadOp { rule: String, op: String },
    #[error("alert rule {rule}: unknown severity {severity:?}; use info, warning or critical")]
    BadSeverity { rule: String, severity: String },
    #[error("bad silence matcher {0:?}: write NAME=VALUE or NAME!=VALUE, e.g. service=gateway or alertname=high_5xx_ratio")]
    BadMatcher(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s.trim() {
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            "==" | "=" => Op::Eq,
            "!=" => Op::Ne,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
            Op::Eq => (value - threshold).abs() < 1e-9,
            Op::Ne => (value - threshold).abs() >= 1e-9,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "info" => Severity::Info,
            "warning" => Severity::Warning,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub metric: String,
    /// Targets the rule applies to; empty: every target that has the metric.
    pub services: Vec<String>,
    pub op: Op,
    pub threshold: f64,
    pub for_: Duration,
    pub keep_firing_for: Duration,
    pub severity: Severity,
    pub summary: String,
    pub labels: BTreeMap<String, String>,
    pub enabled: bool,
}

/// A rule as config writes it: every field optional, so a built-in can be partly overridden.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleOverride {
    pub metric: Option<String>,
    pub services: Option<Vec<String>>,
    pub op: Option<String>,
    pub threshold: Option<f64>,
    pub for_: Option<Duration>,
    pub keep_firing_for: Option<Duration>,
    pub severity: Option<String>,
    pub summary: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub enabled: Option<bool>,
}

fn builtin(
    name: &str,
    metric: &str,
    op: Op,
    threshold: f64,
    for_secs: u64,
    severity: Severity,
    summary: &str,
) -> Rule {
    Rule {
        name: name.into(),
        metric: metric.into(),
        services: Vec::new(),
        op,
        threshold,
        for_: Duration::from_secs(for_secs),
        keep_firing_for: Duration::ZERO,
        severity,
        summary: summary.into(),
        labels: BTreeMap::new(),
        enabled: true,
    }
}

/// The rules on by default (docs/monitoring.md lists them).
pub fn builtin_rules() -> Vec<Rule> {
    use Severity::*;
    vec![
        builtin(
            "service_down",
            "healthy_instances",
            Op::Lt,
            1.0,
            30,
            Critical,
            "{service}: no healthy instance",
        ),
        builtin(
            "high_5xx_ratio",
            "error_ratio_5xx",
            Op::Gt,
            0.05,
            120,
            Warning,
            "{service}: {value} of requests answered 5xx",
        ),
        builtin(
            "slow_p99",
            "p99_ms",
            Op::Gt,
            2000.0,
            120,
            Warning,
            "{service}: p99 latency {value} ms",
        ),
        builtin(
            "very_slow_p99",
            "p99_ms",
            Op::Gt,
            10_000.0,
            60,
            Critical,
            "{service}: p99 latency {value} ms",
        ),
        builtin(
            "high_cpu",
            "cpu_percent",
            Op::Gt,
            80.0,
            300,
            Warning,
            "{service}: an instance uses {value}% CPU",
        ),
        builtin(
            "very_high_cpu",
            "cpu_percent",
            Op::Gt,
            95.0,
            120,
            Critical,
            "{service}: an instance uses {value}% CPU",
        ),
        builtin(
            "high_memory",
            "memory_percent",
            Op::Gt,
            85.0,
            300,
            Warning,
            "{service}: an instance uses {value}% of its memory",
        ),
        builtin(
            "very_high_memory",
            "memory_percent",
            Op::Gt,
            98.0,
            60,
            Critical,
            "{service}: an instance uses {value}% of its memory",
        ),
        builtin(
            "disk_full",
            "disk_percent",
            Op::Gt,
            90.0,
            300,
            Warning,
            "{service}: the state directory's disk is {value}% full",
        ),
        builtin(
            "dependency_down",
            "dependency_up",
            Op::Lt,
            1.0,
            30,
            Critical,
            "dependency {service} is down",
        ),
        builtin(
            "crashloop",
            "crashloop_instances",
            Op::Gt,
            0.0,
            0,
            Critical,
            "{service}: {value} instance(s) in a crash loop",
        ),
        builtin(
            "backup_failed",
            "backup_failures",
            Op::Gt,
            0.0,
            0,
            Critical,
            "{value} scheduled backup(s) failed in a row",
        ),
        builtin(
            "restore_verify_stale",
            "restore_verify_age_days",
            Op::Gt,
            7.0,
            0,
            Warning,
            "no backup passed a restore-verify in {value} days",
        ),
        builtin(
            "certificate_expiring",
            "cert_expiry_days",
            Op::Lt,
            30.0,
            0,
            Warning,
            "{service}: certificate expires in {value} days",
        ),
        builtin(
            "certificate_expiring_soon",
            "cert_expiry_days",
            Op::Lt,
            7.0,
            0,
            Critical,
            "{service}: certificate expires in {value} days",
        ),
    ]
}

/// Built-in rules with the config's overrides applied, plus the config's own rules.
pub fn build_rules(overrides: &BTreeMap<String, RuleOverride>) -> Result<Vec<Rule>, RuleError> {
    let mut rules = builtin_rules();
    let builtins = rules
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    for (name, o) in overrides {
        let idx = match rules.iter().position(|r| r.name == *name) {
            Some(i) => i,
            None => {
                let missing = |field| RuleError::Missing {
                    rule: name.clone(),
                    field,
                    builtins: builtins.clone(),
                };
                let metric = o.metric.clone().ok_or_else(|| missing("metric"))?;
                o.op.as_ref().ok_or_else(|| missing("op"))?;
                let threshold = o.threshold.ok_or_else(|| missing("threshold"))?;
                rules.push(Rule {
                    name: name.clone(),
                    metric,
                    services: Vec::new(),
                    op: Op::Gt,
                    threshold,
                    for_: Duration::ZERO,
                    keep_firing_for: Duration::ZERO,
                    severity: Severity::Warning,
                    summary: format!("{name}: {{service}} {{value}}"),
                    labels: BTreeMap::new(),
                    enabled: true,
                });
                rules.len() - 1
            }
        };
        let r = &mut rules[idx];
        if let Some(m) = &o.metric {
            r.metric = m.clone();
        }
        if let Some(s) = &o.services {
            r.services = s.clone();
        }
        if let Some(op) = &o.op {
            r.op = Op::parse(op).ok_or_else(|| RuleError::BadOp {
                rule: name.clone(),
                op: op.clone(),
            })?;
        }
        if let Some(t) = o.threshold {
            r.threshold = t;
        }
        if let Some(d) = o.for_ {
            r.for_ = d;
        }
        if let Some(d) = o.keep_firing_for {
            r.keep_firing_for = d;
        }
        if let Some(s) = &o.severity {
            r.severity = Severity::parse(s).ok_or_else(|| RuleError::BadSeverity {
                rule: name.clone(),
                severity: s.clone(),
            })?;
        }
        if let Some(s) = &o.summary {
            r.summary = s.clone();
        }
        r.labels.extend(o.labels.clone());
        if let Some(e) = o.enabled {
            r.enabled = e;
        }
    }
    Ok(rules)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Inactive,
    Pending,
    Firing,
    Resolved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Inactive => "inactive",
            State::Pending => "pending",
            State::Firing => "firing",
            State::Resolved => "resolved",
        }
    }
}

/// One rule on one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub rule: String,
    pub target: String,
    pub state: State,
    pub severity: Severity,
    pub value: f64,
    pub summary: String,
    /// alertname, service, severity and the rule's own labels.
    pub labels: BTreeMap<String, String>,
    /// When the condition started to hold (pending since).
    pub active_since_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    /// The last evaluation at which the condition held.
    pub last_true_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: State,
    pub alert: Alert,
}

/// `{value}` as a reader wants it: ratios as percentages, others with a few decimals.
fn format_value(metric: &str, v: f64) -> String {
    if metric.contains("ratio") {
        format!("{:.1}%", v * 100.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub fn render_summary(rule: &Rule, target: &str, value: f64) -> String {
    rule.summary
        .replace("{service}", target)
        .replace("{value}", &format_value(&rule.metric, value))
        .replace("{threshold}", &format_value(&rule.metric, rule.threshold))
        .replace("{rule}", &rule.name)
}

/// The evaluator: rules and the state of every alert that is not inactive.
#[derive(Debug, Clone)]
pub struct Evaluator {
    rules: Vec<Rule>,
    alerts: BTreeMap<(String, String), Alert>,
    /// Evaluations left in which an alert whose target reports no value keeps its state: after
    /// a restart the first ticks have no counter deltas (no request rates, no ratios), which
    /// must not resolve what was firing.
    settling: u32,
}

/// How many evaluations restored alerts are given to see their values again.
const SETTLING_EVALUATIONS: u32 = 3;

impl Evaluator {
    pub fn new(rules: Vec<Rule>) -> Evaluator {
        Evaluator {
            rules,
            alerts: BTreeMap::new(),
            settling: 0,
        }
    }

    /// Take back the pending and firing alerts a previous process had (`alerts.json`), so a
    /// restart neither re-notifies what already fired nor restarts a `for` wait. Alerts of
    /// rules that no longer exist are dropped.
    pub fn restore(&mut self, alerts: impl IntoIterator<Item = Alert>) {
        for a in alerts {
            if matches!(a.state, State::Pending | State::Firing)
                && self.rules.iter().any(|r| r.name == a.rule && r.enabled)
            {
                self.alerts.insert((a.rule.clone(), a.target.clone()), a);
            }
        }
        if !self.alerts.is_empty() {
            self.settling = SETTLING_EVALUATIONS;
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Pending and firing alerts.
    pub fn active(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.values()
    }

    /// Evaluate every enabled rule against the current values, keyed by (target, metric);
    /// returns the transitions, in rule then target order. A target without a value (no
    /// requests, say) counts as the condition not holding.
    pub fn evaluate(
        &mut self,
        now_ms: i64,
        values: &BTreeMap<(String, String), f64>,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        let settling = self.settling > 0;
        self.settling = self.settling.saturating_sub(1);
        for rule in self.rules.iter().filter(|r| r.enabled) {
            let mut seen = Vec::new();
            for ((target, metric), value) in values {
                if *metric != rule.metric
                    || (!rule.services.is_empty() && !rule.services.contains(target))
                {
                    continue;
                }
                seen.push(target.clone());
                step(
                    rule,
                    target,
                    Some(*value),
                    now_ms,
                    &mut self.alerts,
                    &mut out,
                );
            }
            // Alerts whose target no longer reports the metric go through the same path
            // (not while restored alerts settle: no value is not yet news).
            if settling {
                continue;
            }
            let stale: Vec<String> = self
                .alerts
                .keys()
                .filter(|(r, t)| *r == rule.name && !seen.contains(t))
                .map(|(_, t)| t.clone())
                .collect();
            for target in stale {
                step(rule, &target, None, now_ms, &mut self.alerts, &mut out);
            }
        }
        out
    }
}

fn step(
    rule: &Rule,
    target: &str,
    value: Option<f64>,
    now: i64,
    alerts: &mut BTreeMap<(String, String), Alert>,
    out: &mut Vec<Transition>,
) {
    let key = (rule.name.clone(), target.to_string());
    let holds = value.is_some_and(|v| rule.op.holds(v, rule.threshold));
    let for_ms = rule.for_.as_millis() as i64;
    let keep_ms = rule.keep_firing_for.as_millis() as i64;
    match alerts.get_mut(&key) {
        None if holds => {
            let v = value.unwrap_or_default();
            let mut labels = rule.labels.clone();
            labels.insert("alertname".into(), rule.name.clone());
            labels.insert("service".into(), target.to_string());
            labels.insert("severity".into(), rule.severity.as_str().into());
            let mut alert = Alert {
                rule: rule.name.clone(),
                target: target.to_string(),
                state: State::Pending,
                severity: rule.severity,
                value: v,
                summary: render_summary(rule, target, v),
                labels,
                active_since_ms: now,
                fired_at_ms: None,
                resolved_at_ms: None,
                last_true_ms: now,
            };
            if for_ms == 0 {
                alert.state = State::Firing;
                alert.fired_at_ms = Some(now);
            }
            out.push(Transition {
                from: State::Inactive,
                alert: alert.clone(),
            });
            alerts.insert(key, alert);
        }
        None => {}
        Some(alert) => {
            if let Some(v) = value {
                alert.value = v;
            }
            if holds {
                alert.last_true_ms = now;
                alert.summary = render_summary(rule, target, alert.value);
            }
            match alert.state {
                State::Pending if !holds => {
                    let mut a = alert.clone();
                    a.state = State::Inactive;
                    alerts.remove(&key);
                    out.push(Transition {
                        from: State::Pending,
                        alert: a,
                    });
                }
                State::Pending if now - alert.active_since_ms >= for_ms => {
                    alert.state = State::Firing;
                    alert.fired_at_ms = Some(now);
                    out.push(Transition {
                        from: State::Pending,
                        alert: alert.clone(),
                    });
                }
                State::Firing if !holds && now - alert.last_true_ms >= keep_ms => {
                    let mut a = alert.clone();
                    a.state = State::Resolved;
                    a.resolved_at_ms = Some(now);
                    alerts.remove(&key);
                    out.push(Transition {
                        from: State::Firing,
                        alert: a,
                    });
                }
                _ => {}
            }
        }
    }
}

/// `NAME=VALUE` or `NAME!=VALUE` against an alert's labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matcher {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub negate: bool,
}

impl Matcher {
    pub fn parse(s: &str) -> Result<Matcher, RuleError> {
        let bad = || RuleError::BadMatcher(s.to_string());
        let (name, value, negate) = match s.split_once("!=") {
            Some((n, v)) => (n, v, true),
            None => {
                let (n, v) = s.split_once('=').ok_or_else(bad)?;
                (n, v, false)
            }
        };
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad());
        }
        Ok(Matcher {
            name: name.to_string(),
            value: value.trim().trim_matches('"').to_string(),
            negate,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let equal = labels.get(&self.name).is_some_and(|v| *v == self.value);
        equal != self.negate
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = if self.negate { "!=" } else { "=" };
        write!(f, "{}{op}{}", self.name, self.value)
    }
}

/// A silence: matching alerts still show, but notify no one until it expires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub author: String,
    pub comment: String,
}

impl Silence {
    pub fn active(&self, now_ms: i64) -> bool {
        self.starts_ms <= now_ms && now_ms < self.ends_ms
    }

    pub fn silences(&self, labels: &BTreeMap<String, String>, now_ms: i64) -> bool {
        self.active(now_ms) && self.matchers.iter().all(|m| m.matches(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A series in, alerts at times out, the way `promtool test rules` reads: `series` gives
    /// the value of `gateway/error_ratio_5xx` at each 10 s evaluation (None: no value).
    fn run(rule: Rule, series: &[Option<f64>]) -> Vec<(i64, State, State)> {
        let mut ev = Evaluator::new(vec![rule]);
        let mut out = Vec::new();
        for (i, v) in series.iter().enumerate() {
            let at = i as i64 * 10_000;
            let mut values = BTreeMap::new();
            if let Some(v) = v {
                values.insert(("gateway".to_string(), "error_ratio_5xx".to_string()), *v);
            }
            for t in ev.evaluate(at, &values) {
                out.push((at / 1000, t.from, t.alert.state));
            }
        }
        out
    }

    fn ratio_rule(for_s: u64, keep_s: u64) -> Rule {
        let mut r = builtin_rules()
            .into_iter()
            .find(|r| r.name == "high_5xx_ratio")
            .unwrap();
        r.for_ = Duration::from_secs(for_s);
        r.keep_firing_for = Duration::from_secs(keep_s);
        r
    }

    use State::*;

    #[test]
    fn pending_that_clears_before_for_never_fires() {
        let high = Some(0.5);
        let ok = Some(0.0);
        let got = run(ratio_rule(30, 0), &[ok, high, high, high, ok, ok, high, ok]);
        assert_eq!(
            got,
            vec![
                (10, Inactive, Pending),
                (40, Pending, Inactive),
                (60, Inactive, Pending),
                (70, Pending, Inactive),
            ]
        );
    }

    #[test]
    fn fires_after_for_and_resolves_once() {
        let high = Some(0.5);
        let ok = Some(0.01);
        let got = run(ratio_rule(20, 0), &[high, high, high, high, ok, ok, ok]);
        assert_eq!(
            got,
            vec![
                (0, Inactive, Pending),
                (20, Pending, Firing),
                (40, Firing, Resolved),
            ],
            "one firing, one resolution, nothing after"
        );
    }

    #[test]
    fn keep_firing_for_holds_a_flapping_alert() {
        let high = Some(0.5);
        let ok = Some(0.0);
        // Fires at 10 s, then flaps every 10 s: it must not resolve (and re-fire) while it
        // flaps, and resolves 30 s after the last breach.
        let got = run(
            ratio_rule(10, 30),
            &[high, high, ok, high, ok, ok, high, ok, ok, ok, ok, ok],
        );
        assert_eq!(
            got,
            vec![
                (0, Inactive, Pending),
                (10, Pending, Firing),
                (90, Firing, Resolved)
            ]
        );
    }

    #[test]
    fn no_value_counts_as_clear_and_for_zero_fires_at_once() {
        let got = run(ratio_rule(0, 0), &[Some(0.9), None, Some(0.9)]);
        assert_eq!(
            got,
            vec![
                (0, Inactive, Firing),
                (10, Firing, Resolved),
                (20, Inactive, Firing)
            ]
        );
    }

    #[test]
    fn the_config_knows_every_builtin_rule() {
        let names: Vec<String> = builtin_rules().into_iter().map(|r| r.name).collect();
        assert_eq!(names, tcf_config::monitor::BUILTIN_ALERT_RULES);
    }

    #[test]
    fn overrides_and_custom_rules() {
        let mut o = BTreeMap::new();
        o.insert(
            "service_down".to_string(),
            RuleOverride {
                for_: Some(Duration::from_secs(10)),
                ..Default::default()
            },
        );
        o.insert(
            "disk_full".to_string(),
            RuleOverride {
                enabled: Some(false),
                ..Default::default()
            },
        );
        o.insert(
            "gateway_errors".to_string(),
            RuleOverride {
                metric: Some("error_ratio_5xx".into()),
                services: Some(vec!["gateway".into()]),
                op: Some(">=".into()),
                threshold: Some(0.05),
                severity: Some("critical".into()),
                summary: Some("{service}: {value} of requests answered 5xx".into()),
                labels: [("team".to_string(), "edge".to_string())].into(),
                ..Default::default()
            },
        );
        let rules = build_rules(&o).unwrap();
        let down = rules.iter().find(|r| r.name == "service_down").unwrap();
        assert_eq!(down.for_, Duration::from_secs(10));
        assert_eq!(down.severity, Severity::Critical);
        assert!(
            !rules
                .iter()
                .find(|r| r.name == "disk_full")
                .unwrap()
                .enabled
        );
        let custom = rules.iter().find(|r| r.name == "gateway_errors").unwrap();
        assert_eq!(custom.op, Op::Ge);
        assert_eq!(
            render_summary(custom, "gateway", 0.0712),
            "gateway: 7.1% of requests answered 5xx"
        );
        let mut ev = Evaluator::new(rules);
        let mut values = BTreeMap::new();
        values.insert(("gateway".into(), "error_ratio_5xx".into()), 0.5);
        values.insert(("tokens".into(), "error_ratio_5xx".into()), 0.5);
        let t = ev.evaluate(0, &values);
        let custom: Vec<_> = t
            .iter()
            .filter(|t| t.alert.rule == "gateway_errors")
            .collect();
        assert_eq!(custom.len(), 1, "the selector limits the rule to gateway");
        assert_eq!(custom[0].alert.labels["team"], "edge");

        let mut bad = BTreeMap::new();
        bad.insert("mine".to_string(), RuleOverride::default());
        assert!(matches!(
            build_rules(&bad),
            Err(RuleError::Missing {
                field: "metric",
                ..
            })
        ));
    }

    #[test]
    fn silences_match_labels_until_they_expire() {
        let m = Matcher::parse("service=gateway").unwrap();
        let n = Matcher::parse("severity!=critical").unwrap();
        assert!(Matcher::parse("no-operator").is_err());
        let s = Silence {
            id: "s1".into(),
            matchers: vec![m, n],
            starts_ms: 100,
            ends_ms: 200,
            author: "ops".into(),
            comment: "maintenance".into(),
        };
        let mut labels = BTreeMap::new();
        labels.insert("service".to_string(), "gateway".to_string());
        labels.insert("severity".to_string(), "warning".to_string());
        assert!(s.silences(&labels, 150));
        assert!(!s.silences(&labels, 200), "expired");
        labels.insert("severity".to_string(), "critical".to_string());
        assert!(!s.silences(&labels, 150));
    }
}
