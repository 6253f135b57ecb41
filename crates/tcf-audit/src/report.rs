//! A finished audit: every selected check with its outcome, the findings left after ignores,
//! the ignored ones, and the summary. The formats in `render` only read it.

use crate::ignore::{Ignore, Ignores};
use crate::model::{CheckResult, Finding, Outcome, Rule, Severity};
use std::path::PathBuf;

/// What was audited, when and how.
#[derive(Debug, Clone)]
pub struct Meta {
    pub tool_version: String,
    /// RFC 3339, UTC.
    pub generated_at: String,
    pub config: PathBuf,
    pub platform: String,
    pub environment: Option<String>,
    /// None: the daemon answered (online). Some(why): config and files only.
    pub offline_reason: Option<String>,
    pub comprehensive: bool,
    /// The advisory source given with --advisories, described (path, entries, age).
    pub advisories: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CheckReport {
    pub rule: &'static Rule,
    pub outcome: Outcome,
    /// Findings left after ignores.
    pub findings: usize,
    pub ignored: usize,
}

#[derive(Debug, Clone)]
pub struct IgnoredFinding {
    pub finding: Finding,
    pub ignore: Ignore,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub checks: usize,
    pub passed: usize,
    pub failed: usize,
    /// Checks whose outcome is INFO: neither passes nor failures.
    pub info: usize,
    pub not_run: usize,
    /// Findings per severity, `Severity::ALL` order (critical first).
    pub by_severity: Vec<(Severity, usize)>,
    pub ignored: usize,
    /// Weighted passes ÷ weighted checks that ran × 100; None when no check ran.
    pub score: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub meta: Meta,
    pub checks: Vec<CheckReport>,
    /// Most severe first, then by check and resource.
    pub findings: Vec<Finding>,
    pub ignored: Vec<IgnoredFinding>,
    /// Ignores whose date passed: they no longer hide anything, and are reported so.
    pub expired_ignores: Vec<Ignore>,
    pub summary: Summary,
}

impl Report {
    pub fn build(meta: Meta, results: Vec<CheckResult>, ignores: &Ignores) -> Report {
        let mut checks = Vec::new();
        let mut findings = Vec::new();
        let mut ignored = Vec::new();
        for result in results {
            match result.findings {
                Err(reason) => checks.push(CheckReport {
                    rule: result.rule,
                    outcome: Outcome::NotRun { reason },
                    findings: 0,
                    ignored: 0,
                }),
                Ok(found) => {
                    let (mut kept, mut hidden) = (0, 0);
                    for finding in found {
                        match ignores.covering(&finding) {
                            Some(ignore) => {
                                hidden += 1;
                                ignored.push(IgnoredFinding {
                                    finding,
                                    ignore: ignore.clone(),
                                });
                            }
                            None => {
                                kept += 1;
                                findings.push(finding);
                            }
                        }
                    }
                    checks.push(CheckReport {
                        rule: result.rule,
                        outcome: match result.note {
                            _ if kept > 0 => Outcome::Fail,
                            Some(note) => Outcome::Info { note },
                            None => Outcome::Pass,
                        },
                        findings: kept,
                        ignored: hidden,
                    });
                }
            }
        }
        findings.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| a.rule_id.cmp(b.rule_id))
                .then_with(|| a.location.resource.cmp(&b.location.resource))
        });
        let summary = summarize(&checks, &findings, ignored.len());
        Report {
            meta,
            checks,
            findings,
            ignored,
            expired_ignores: ignores.expired.clone(),
            summary,
        }
    }

    /// True when a finding is at or above `threshold` (`--fail-on`).
    pub fn fails_at(&self, threshold: Severity) -> bool {
        self.findings.iter().any(|f| f.severity >= threshold)
    }

    /// The rules of the findings, each once, in catalogue order (for SARIF's rule table).
    pub fn rules(&self) -> Vec<&'static Rule> {
        self.checks.iter().map(|c| c.rule).collect()
    }
}

fn summarize(checks: &[CheckReport], findings: &[Finding], ignored: usize) -> Summary {
    let count = |f: fn(&Outcome) -> bool| checks.iter().filter(|c| f(&c.outcome)).count();
    let (mut passed_weight, mut run_weight) = (0u32, 0u32);
    for check in checks {
        match check.outcome {
            Outcome::Pass => {
                passed_weight += check.rule.severity.weight();
                run_weight += check.rule.severity.weight();
            }
            Outcome::Fail => run_weight += check.rule.severity.weight(),
            // A fact, not a verdict: it says nothing about how hardened the platform is.
            Outcome::Info { .. } | Outcome::NotRun { .. } => {}
        }
    }
    Summary {
        checks: checks.len(),
        passed: count(|o| matches!(o, Outcome::Pass)),
        failed: count(|o| matches!(o, Outcome::Fail)),
        info: count(|o| matches!(o, Outcome::Info { .. })),
        not_run: count(|o| matches!(o, Outcome::NotRun { .. })),
        by_severity: Severity::ALL
            .into_iter()
            .map(|s| (s, findings.iter().filter(|f| f.severity == s).count()))
            .collect(),
        ignored,
        score: (run_weight > 0)
            .then(|| ((passed_weight * 100 + run_weight / 2) / run_weight).min(100)),
    }
}

/// A JSON report (`render::json_report`) read back as what it was built from: the meta and
/// every check's outcome with all its findings, ignored ones included. The CLI gets a remote
/// daemon's report this way, applies its own ignores ([`Report::build`]) and renders any
/// format. Checks this build does not know (a newer daemon) are returned by ID, left out.
pub fn results_from_json(
    value: &serde_json::Value,
) -> Result<(Meta, Vec<CheckResult>, Vec<String>), String> {
    use crate::model::Location;
    let text = |v: &serde_json::Value, what: &str| -> Result<String, String> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("the report has no {what}"))
    };
    let opt = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let version = value["schema_version"].as_u64().unwrap_or(0);
    if version != u64::from(crate::render::JSON_SCHEMA_VERSION) {
        return Err(format!(
            "the report has schema_version {version}, this tcf-platform reads {}",
            crate::render::JSON_SCHEMA_VERSION
        ));
    }
    let meta = Meta {
        tool_version: text(&value["tool"]["version"], "tool.version")?,
        generated_at: text(&value["generated_at"], "generated_at")?,
        config: PathBuf::from(text(&value["target"]["config"], "target.config")?),
        platform: text(&value["target"]["platform"], "target.platform")?,
        environment: opt(&value["target"]["environment"]),
        offline_reason: opt(&value["offline_reason"]),
        comprehensive: value["comprehensive"].as_bool().unwrap_or(false),
        advisories: opt(&value["advisories"]),
    };
    let mut findings_of: std::collections::BTreeMap<String, Vec<Finding>> = Default::default();
    let empty = Vec::new();
    let all = value["findings"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .chain(value["ignored"].as_array().unwrap_or(&empty));
    for f in all {
        let id = text(&f["id"], "finding id")?;
        let Some(rule) = crate::rules::find(&id) else {
            continue;
        };
        let l = &f["location"];
        let location = Location {
            resource: text(&l["resource"], "finding location")?,
            file: opt(&l["file"]).map(PathBuf::from),
            line: l["line"].as_u64().and_then(|n| u32::try_from(n).ok()),
            uri: opt(&l["uri"]),
        };
        let severity = f["severity"]
            .as_str()
            .and_then(Severity::parse)
            .ok_or_else(|| format!("a finding of {id} has no severity"))?;
        let mut finding = Finding::new(rule, location, text(&f["detail"], "finding detail")?)
            .severity(severity)
            .remediation(text(&f["remediation"], "finding remediation")?);
        if let Some(fp) = opt(&f["fingerprint"]) {
            finding.fingerprint = fp;
        }
        findings_of
            .entry(rule.id.to_string())
            .or_default()
            .push(finding);
    }
    let mut results = Vec::new();
    let mut unknown = Vec::new();
    for c in value["checks"].as_array().unwrap_or(&empty) {
        let id = text(&c["id"], "check id")?;
        let Some(rule) = crate::rules::find(&id) else {
            unknown.push(id);
            continue;
        };
        results.push(match c["status"].as_str() {
            Some("not_run") => CheckResult::not_run(rule, opt(&c["reason"]).unwrap_or_default()),
            Some("pass" | "fail") => {
                CheckResult::ran(rule, findings_of.remove(rule.id).unwrap_or_default())
            }
            Some("info") => CheckResult::ran(rule, findings_of.remove(rule.id).unwrap_or_default())
                .with_note(opt(&c["note"]).unwrap_or_default()),
            other => return Err(format!("check {id} has the status {other:?}")),
        });
    }
    Ok((meta, results, unknown))
}
