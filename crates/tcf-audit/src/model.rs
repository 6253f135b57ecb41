//! What an audit produces: checks (rules) with stable IDs, their outcome, and findings.

use serde::Serialize;
use std::path::PathBuf;

/// How bad a finding is. Ordered: `Info < Low < … < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Info,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Severity> {
        Severity::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text))
    }

    /// The weight of a check of this severity in the hardening score.
    pub fn weight(self) -> u32 {
        match self {
            Severity::Info => 1,
            Severity::Low => 2,
            Severity::Medium => 4,
            Severity::High => 7,
            Severity::Critical => 10,
        }
    }

    /// SARIF's `security-severity` (GitHub maps ≥9 critical, ≥7 high, ≥4 medium, else low).
    pub fn security_severity(self) -> &'static str {
        match self {
            Severity::Info => "0.0",
            Severity::Low => "2.0",
            Severity::Medium => "5.0",
            Severity::High => "7.5",
            Severity::Critical => "9.5",
        }
    }

    /// SARIF's result level.
    pub fn sarif_level(self) -> &'static str {
        match self {
            Severity::Info => "note",
            Severity::Low | Severity::Medium => "warning",
            Severity::High | Severity::Critical => "error",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A check: what it looks at, how bad a failure is and what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Stable across releases: `TCF-SEC-001`. Never reused for another check.
    pub id: &'static str,
    pub title: &'static str,
    /// The default severity of its findings (a finding may carry another, such as an advisory's).
    pub severity: Severity,
    /// What the check looks at.
    pub description: &'static str,
    pub remediation: &'static str,
    /// Needs the running daemon (its status, its pids, its socket).
    pub online: bool,
    /// Slower: runs with `--comprehensive` only.
    pub comprehensive: bool,
    /// The CIS Docker Benchmark recommendation it follows, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cis: Option<&'static str>,
}

/// Where a finding is: a human name of the resource, and a file or URI where there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// `service gateway, env DB_PASSWORD`, `/srv/tcf/.tcf/state.db`, `tcp://0.0.0.0:3000`.
    pub resource: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// A non-file location as a URI (`tcp://host:port`, `proc://1234`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

impl Location {
    pub fn resource(resource: impl Into<String>) -> Location {
        Location {
            resource: resource.into(),
            file: None,
            line: None,
            uri: None,
        }
    }

    pub fn file(path: impl Into<PathBuf>) -> Location {
        let path = path.into();
        Location {
            resource: path.display().to_string(),
            file: Some(path),
            line: None,
            uri: None,
        }
    }

    pub fn in_file(mut self, path: impl Into<PathBuf>, line: Option<u32>) -> Location {
        self.file = Some(path.into());
        self.line = line;
        self
    }

    pub fn with_uri(mut self, uri: impl Into<String>) -> Location {
        self.uri = Some(uri.into());
        self
    }
}

/// One problem a check found. `detail` never holds a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule_id: &'static str,
    pub severity: Severity,
    pub title: &'static str,
    pub detail: String,
    pub remediation: String,
    pub location: Location,
    /// Stable across runs for the same problem at the same place (ignores may name it).
    pub fingerprint: String,
}

impl Finding {
    pub fn new(rule: &Rule, location: Location, detail: impl Into<String>) -> Finding {
        Finding {
            rule_id: rule.id,
            severity: rule.severity,
            title: rule.title,
            detail: detail.into(),
            remediation: rule.remediation.to_string(),
            fingerprint: fingerprint(rule.id, &location.resource),
            location,
        }
    }

    pub fn severity(mut self, severity: Severity) -> Finding {
        self.severity = severity;
        self
    }

    pub fn remediation(mut self, remediation: impl Into<String>) -> Finding {
        self.remediation = remediation.into();
        self
    }
}

/// FNV-1a 64 of the rule and the resource: the same problem at the same place keeps its
/// fingerprint from run to run and machine to machine (the details may change).
pub fn fingerprint(rule_id: &str, resource: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in rule_id.bytes().chain([0]).chain(resource.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// What became of a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// It ran and found nothing.
    Pass,
    /// It ran and found something (the findings carry the details).
    Fail,
    /// It ran and found nothing wrong, and what it reports is a fact rather than a verdict:
    /// the advisory database's age while it is fresh, or nothing there to look at (no
    /// `[backup]` for the backup details). Neither a pass nor a failure: left out of the
    /// score, counted on its own.
    Info { note: String },
    /// It could not run (WARN); never counted as a pass.
    NotRun { reason: String },
}

/// A check's outcome with its findings, before ignores are applied.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub rule: &'static Rule,
    /// `Err(reason)`: the check could not run.
    pub findings: Result<Vec<Finding>, String>,
    /// What it has to say when it found nothing (an INFO outcome, [`Outcome::Info`]).
    pub note: Option<String>,
}

impl CheckResult {
    pub fn ran(rule: &'static Rule, findings: Vec<Finding>) -> CheckResult {
        CheckResult {
            rule,
            findings: Ok(findings),
            note: None,
        }
    }

    /// It ran, found nothing wrong, and reports `note` (INFO).
    pub fn info(rule: &'static Rule, note: impl Into<String>) -> CheckResult {
        CheckResult::ran(rule, Vec::new()).with_note(note)
    }

    /// A note to report when no finding is left (after ignores): the check's INFO.
    pub fn with_note(mut self, note: impl Into<String>) -> CheckResult {
        self.note = Some(note.into());
        self
    }

    pub fn not_run(rule: &'static Rule, reason: impl Into<String>) -> CheckResult {
        CheckResult {
            rule,
            findings: Err(reason.into()),
            note: None,
        }
    }
}
