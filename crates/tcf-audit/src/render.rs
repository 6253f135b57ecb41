//! The report formats: a readable table, JSON (the project's own contract, see docs/audit.md),
//! SARIF 2.1.0 for code-scanning tools, and JUnit XML for CI test views.

use crate::model::{Finding, Location, Outcome, Severity};
use crate::report::Report;
use serde_json::{json, Value};
use std::fmt::Write;
use std::path::Path;

/// The version of the JSON report's shape; bumped only on an incompatible change.
pub const JSON_SCHEMA_VERSION: u32 = 1;
const TOOL_NAME: &str = "tcf-platform audit";
const INFORMATION_URI: &str =
    "https://github.com/tcf-platform/tcf-platform/blob/main/docs/audit.md";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Sarif,
    Junit,
}

impl Format {
    /// `.json`, `.sarif` (also `.sarif.json`), `.xml`; anything else is a table.
    pub fn from_extension(path: &Path) -> Format {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if name.ends_with(".sarif") || name.ends_with(".sarif.json") {
            Format::Sarif
        } else if name.ends_with(".json") {
            Format::Json
        } else if name.ends_with(".xml") {
            Format::Junit
        } else {
            Format::Table
        }
    }
}

pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Table => table(report),
        Format::Json => pretty(&json_report(report)),
        Format::Sarif => pretty(&sarif(report)),
        Format::Junit => junit(report),
    }
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

fn status_word(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Pass => "pass",
        Outcome::Fail => "fail",
        Outcome::Info { .. } => "info",
        Outcome::NotRun { .. } => "not_run",
    }
}

pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let meta = &report.meta;
    let _ = writeln!(
        out,
        "Audit of platform {} ({}){}",
        meta.platform,
        meta.config.display(),
        meta.environment
            .as_deref()
            .map(|e| format!(", environment {e}"))
            .unwrap_or_default()
    );
    match &meta.offline_reason {
        None => out.push_str("Mode: online (the running daemon, its processes and sockets)\n"),
        Some(why) => {
            let _ = writeln!(out, "Mode: OFFLINE, config and files only: {why}");
        }
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<8} {:<9} {:<13} TITLE",
        "STATE", "SEVERITY", "CHECK"
    );
    for check in &report.checks {
        let state = match check.outcome {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Info { .. } => "INFO",
            Outcome::NotRun { .. } => "NOT RUN",
        };
        let mut title = check.rule.title.to_string();
        if check.findings > 0 {
            let _ = write!(title, " ({} found)", check.findings);
        }
        if check.ignored > 0 {
            let _ = write!(title, " ({} ignored)", check.ignored);
        }
        let _ = writeln!(
            out,
            "{:<8} {:<9} {:<13} {}",
            state,
            check.rule.severity.as_str(),
            check.rule.id,
            title
        );
    }
    if !report.findings.is_empty() {
        out.push_str("\nFindings\n");
        for f in &report.findings {
            let _ = writeln!(
                out,
                "\n  [{}] {} {}\n    where: {}\n    what:  {}\n    fix:   {}\n    fingerprint: {}",
                f.severity.as_str().to_uppercase(),
                f.rule_id,
                f.title,
                where_text(&f.location),
                f.detail,
                f.remediation,
                f.fingerprint
            );
        }
    }
    let info: Vec<_> = report
        .checks
        .iter()
        .filter_map(|c| match &c.outcome {
            Outcome::Info { note } => Some((c.rule.id, note)),
            _ => None,
        })
        .collect();
    if !info.is_empty() {
        out.push_str("\nInformation (neither a pass nor a failure)\n");
        for (id, note) in info {
            let _ = writeln!(out, "  {id}: {note}");
        }
    }
    let not_run: Vec<_> = report
        .checks
        .iter()
        .filter_map(|c| match &c.outcome {
            Outcome::NotRun { reason } => Some((c.rule.id, reason)),
            _ => None,
        })
        .collect();
    if !not_run.is_empty() {
        out.push_str("\nNot checked (never counted as a pass)\n");
        for (id, reason) in not_run {
            let _ = writeln!(out, "  {id}: {reason}");
        }
    }
    if !report.ignored.is_empty() {
        out.push_str("\nIgnored\n");
        for i in &report.ignored {
            let _ = writeln!(
                out,
                "  {} {} until {}: {}",
                i.finding.rule_id,
                i.finding.location.resource,
                i.ignore.expires,
                i.ignore.statement
            );
        }
    }
    if !report.expired_ignores.is_empty() {
        out.push_str("\nExpired ignores (no longer applied)\n");
        for i in &report.expired_ignores {
            let _ = writeln!(
                out,
                "  {}{} expired {}: {}",
                i.id,
                i.resource
                    .as_deref()
                    .map(|r| format!(" {r}"))
                    .unwrap_or_default(),
                i.expires,
                i.statement
            );
        }
    }
    let s = &report.summary;
    let counts: Vec<String> = s
        .by_severity
        .iter()
        .map(|(sev, n)| format!("{n} {sev}"))
        .collect();
    let _ = writeln!(
        out,
        "\nSummary: {} checks: {} passed, {} failed, {} info, {} not run; findings: {}; {} ignored",
        s.checks,
        s.passed,
        s.failed,
        s.info,
        s.not_run,
        counts.join(", "),
        s.ignored
    );
    match s.score {
        Some(score) => {
            let _ = writeln!(out, "Hardening score: {score}/100 (of the checks that ran)");
        }
        None => out.push_str("Hardening score: none (no check ran)\n"),
    }
    out
}

fn where_text(location: &Location) -> String {
    match (&location.file, location.line) {
        (Some(file), Some(line)) if file.display().to_string() != location.resource => {
            format!("{} ({}:{line})", location.resource, file.display())
        }
        (Some(file), None) if file.display().to_string() != location.resource => {
            format!("{} ({})", location.resource, file.display())
        }
        _ => location.resource.clone(),
    }
}

fn location_json(location: &Location) -> Value {
    serde_json::to_value(location).unwrap_or(Value::Null)
}

fn finding_json(f: &Finding) -> Value {
    json!({
        "id": f.rule_id,
        "title": f.title,
        "severity": f.severity,
        "detail": f.detail,
        "remediation": f.remediation,
        "location": location_json(&f.location),
        "fingerprint": f.fingerprint,
    })
}

/// The JSON report (docs/audit.md, "JSON report"). Fields are added, never renamed.
pub fn json_report(report: &Report) -> Value {
    let meta = &report.meta;
    let s = &report.summary;
    json!({
        "schema_version": JSON_SCHEMA_VERSION,
        "tool": { "name": TOOL_NAME, "version": meta.tool_version },
        "generated_at": meta.generated_at,
        "target": {
            "platform": meta.platform,
            "config": meta.config,
            "environment": meta.environment,
        },
        "mode": if meta.offline_reason.is_some() { "offline" } else { "online" },
        "offline_reason": meta.offline_reason,
        "comprehensive": meta.comprehensive,
        "advisories": meta.advisories,
        "checks": report.checks.iter().map(|c| {
            let mut v = json!({
                "id": c.rule.id,
                "title": c.rule.title,
                "severity": c.rule.severity,
                "status": status_word(&c.outcome),
                "findings": c.findings,
                "ignored": c.ignored,
            });
            match &c.outcome {
                Outcome::NotRun { reason } => v["reason"] = json!(reason),
                Outcome::Info { note } => v["note"] = json!(note),
                Outcome::Pass | Outcome::Fail => {}
            }
            v
        }).collect::<Vec<_>>(),
        "findings": report.findings.iter().map(finding_json).collect::<Vec<_>>(),
        "ignored": report.ignored.iter().map(|i| {
            let mut v = finding_json(&i.finding);
            v["statement"] = json!(i.ignore.statement);
            v["expires"] = json!(i.ignore.expires);
            v
        }).collect::<Vec<_>>(),
        "expired_ignores": report.expired_ignores,
        "summary": {
            "checks": s.checks,
            "passed": s.passed,
            "failed": s.failed,
            "info": s.info,
            "not_run": s.not_run,
            "ignored": s.ignored,
            "findings": s.by_severity.iter()
                .map(|(sev, n)| (sev.as_str().to_string(), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
            "score": s.score,
        },
    })
}

/// A file location as a URI: absolute paths become `file:///…` (percent-encoding what a URI
/// may not hold), anything else stays relative.
fn file_uri(path: &Path) -> String {
    let text = path.display().to_string();
    let mut encoded = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    if path.is_absolute() {
        format!("file://{encoded}")
    } else {
        encoded
    }
}

fn sarif_location(location: &Location) -> Value {
    let mut physical = None;
    if let Some(file) = &location.file {
        let mut p = json!({ "artifactLocation": { "uri": file_uri(file) } });
        if let Some(line) = location.line {
            p["region"] = json!({ "startLine": line });
        }
        physical = Some(p);
    } else if let Some(uri) = &location.uri {
        physical = Some(json!({ "artifactLocation": { "uri": uri } }));
    }
    let mut v = json!({
        "logicalLocations": [{ "fullyQualifiedName": location.resource }],
    });
    if let Some(p) = physical {
        v["physicalLocation"] = p;
    }
    v
}

/// SARIF 2.1.0: one run, the selected checks as rules, findings as results, and checks that
/// could not run (level `warning`) or report INFO (level `note`) as tool execution
/// notifications: they are not results, since nothing was found, and a result whose kind is
/// not `fail` may only have level `none` (SARIF §3.27.9).
pub fn sarif(report: &Report) -> Value {
    let rules = report.rules();
    let rule_index = |id: &str| rules.iter().position(|r| r.id == id);
    // Ignored findings stay in the log as suppressed results (SARIF §3.35), with the statement.
    let suppressed = report.ignored.iter().map(|i| (&i.finding, Some(&i.ignore)));
    let results: Vec<Value> = report
        .findings
        .iter()
        .map(|f| (f, None))
        .chain(suppressed)
        .map(|(f, ignore): (&Finding, Option<&crate::ignore::Ignore>)| {
            let mut v = json!({
                "ruleId": f.rule_id,
                "level": f.severity.sarif_level(),
                "message": { "text": format!("{}: {}", f.title, f.detail) },
                "locations": [sarif_location(&f.location)],
                "partialFingerprints": { "tcfFingerprint/v1": f.fingerprint },
                "properties": {
                    "severity": f.severity,
                    "security-severity": f.severity.security_severity(),
                    "remediation": f.remediation,
                },
            });
            if let Some(index) = rule_index(f.rule_id) {
                v["ruleIndex"] = json!(index);
            }
            if let Some(ignore) = ignore {
                v["suppressions"] = json!([{
                    "kind": "external",
                    "status": "accepted",
                    "justification": format!("{} (until {})", ignore.statement, ignore.expires),
                }]);
            }
            v
        })
        .collect();
    let notifications: Vec<Value> = report
        .checks
        .iter()
        .filter_map(|c| match &c.outcome {
            Outcome::NotRun { reason } => Some(json!({
                "level": "warning",
                "message": { "text": format!("{} was not run: {reason}", c.rule.id) },
                "associatedRule": { "id": c.rule.id },
            })),
            Outcome::Info { note } => Some(json!({
                "level": "note",
                "message": { "text": format!("{}: {note}", c.rule.id) },
                "associatedRule": { "id": c.rule.id },
            })),
            _ => None,
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": TOOL_NAME,
                    "version": report.meta.tool_version,
                    "informationUri": INFORMATION_URI,
                    "rules": rules.iter().map(|r| {
                        let mut tags = vec!["security".to_string()];
                        if let Some(cis) = r.cis {
                            tags.push(format!("CIS-Docker-{cis}"));
                        }
                        json!({
                            "id": r.id,
                            "name": pascal_case(r.title),
                            "shortDescription": { "text": r.title },
                            "fullDescription": { "text": r.description },
                            "help": { "text": r.remediation },
                            "helpUri": format!("{INFORMATION_URI}#{}", r.id.to_ascii_lowercase()),
                            "defaultConfiguration": { "level": r.severity.sarif_level() },
                            "properties": {
                                "security-severity": r.severity.security_severity(),
                                "tags": tags,
                            },
                        })
                    }).collect::<Vec<_>>(),
                }
            },
            "invocations": [{
                "executionSuccessful": true,
                "startTimeUtc": report.meta.generated_at,
                "toolExecutionNotifications": notifications,
            }],
            "results": results,
        }]
    })
}

fn pascal_case(title: &str) -> String {
    title
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters at all.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML: a test case per check; a failed check is a failure listing its findings, one
/// that could not run is skipped with the reason, an INFO one passes with its note as output.
pub fn junit(report: &Report) -> String {
    let s = &report.summary;
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"{TOOL_NAME}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\">",
        s.checks, s.failed, s.not_run
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" timestamp=\"{}\">",
        xml_escape(&format!("audit of {}", report.meta.platform)),
        s.checks,
        s.failed,
        s.not_run,
        xml_escape(&report.meta.generated_at)
    );
    for check in &report.checks {
        let rule = check.rule;
        let group = rule.id.split('-').nth(1).unwrap_or("AUDIT");
        let open = format!(
            "    <testcase classname=\"tcf.audit.{}\" name=\"{}\"",
            group,
            xml_escape(&format!("{} {}", rule.id, rule.title))
        );
        match &check.outcome {
            Outcome::Pass => {
                let _ = writeln!(out, "{open}/>");
            }
            Outcome::Info { note } => {
                let _ = writeln!(
                    out,
                    "{open}>\n      <system-out>{}</system-out>\n    </testcase>",
                    xml_escape(&format!("INFO: {note}"))
                );
            }
            Outcome::NotRun { reason } => {
                let _ = writeln!(
                    out,
                    "{open}>\n      <skipped message=\"{}\"/>\n    </testcase>",
                    xml_escape(reason)
                );
            }
            Outcome::Fail => {
                let found: Vec<&Finding> = report
                    .findings
                    .iter()
                    .filter(|f| f.rule_id == rule.id)
                    .collect();
                let worst = found
                    .iter()
                    .map(|f| f.severity)
                    .max()
                    .unwrap_or(Severity::Info);
                let mut body = String::new();
                for f in &found {
                    let _ = writeln!(
                        body,
                        "[{}] {}: {}\nfix: {}",
                        f.severity,
                        where_text(&f.location),
                        f.detail,
                        f.remediation
                    );
                }
                let _ = writeln!(
                    out,
                    "{open}>\n      <failure message=\"{}\" type=\"{}\">{}</failure>\n    </testcase>",
                    xml_escape(&format!("{} finding(s)", found.len())),
                    worst,
                    xml_escape(body.trim_end())
                );
            }
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_extension() {
        assert_eq!(Format::from_extension(Path::new("a.sarif")), Format::Sarif);
        assert_eq!(
            Format::from_extension(Path::new("a.sarif.json")),
            Format::Sarif
        );
        assert_eq!(Format::from_extension(Path::new("A.JSON")), Format::Json);
        assert_eq!(
            Format::from_extension(Path::new("r/junit.xml")),
            Format::Junit
        );
        assert_eq!(
            Format::from_extension(Path::new("audit.txt")),
            Format::Table
        );
    }

    #[test]
    fn xml_escapes_markup_and_control_characters() {
        assert_eq!(xml_escape("a<b>&\"'\u{1}"), "a&lt;b&gt;&amp;&quot;&apos;?");
    }

    #[test]
    fn file_uris_are_encoded() {
        assert_eq!(
            file_uri(Path::new("/srv/my app/x.toml")),
            "file:///srv/my%20app/x.toml"
        );
        assert_eq!(file_uri(Path::new("rel/x")), "rel/x");
    }
}
