//! `--ignore FILE`: accepted findings, each with a statement and an expiry date.
//!
//! ```toml
//! [[ignore]]
//! id = "TCF-NET-001"
//! resource = "service gateway"        # optional: only this resource (or a fingerprint)
//! statement = "behind the office firewall until the TLS listener ships"
//! expires = "2026-12-31"              # mandatory; from the day after, it stops applying
//! ```

use crate::model::Finding;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    #[error("cannot read the ignore file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the ignore file {path} is not valid: {message}\nhint: each [[ignore]] needs id, statement and expires = \"YYYY-MM-DD\"; resource is optional")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ignore {
    pub id: String,
    /// A finding's resource as reports show it, or its fingerprint. None: every finding of `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    pub statement: String,
    /// `YYYY-MM-DD`: the last day the ignore applies.
    pub expires: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IgnoreFile {
    #[serde(default)]
    ignore: Vec<Ignore>,
}

/// The ignores of a file, split into those that apply at `now` and those that expired.
#[derive(Debug, Clone, Default)]
pub struct Ignores {
    pub active: Vec<Ignore>,
    pub expired: Vec<Ignore>,
}

impl Ignores {
    pub fn load(path: &Path, now: SystemTime) -> Result<Ignores, IgnoreError> {
        let text = std::fs::read_to_string(path).map_err(|source| IgnoreError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ignores::parse(path, &text, now)
    }

    pub fn parse(path: &Path, text: &str, now: SystemTime) -> Result<Ignores, IgnoreError> {
        let invalid = |message: String| IgnoreError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let file: IgnoreFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut ignores = Ignores::default();
        for entry in file.ignore {
            if crate::rules::find(&entry.id).is_none() {
                return Err(invalid(format!(
                    "unknown check ID {:?} (see `tcf-platform prod audit --help` or docs/audit.md)",
                    entry.id
                )));
            }
            if entry.statement.trim().is_empty() {
                return Err(invalid(format!(
                    "the ignore of {} has an empty statement: say why it is accepted",
                    entry.id
                )));
            }
            let last_day = end_of_day(&entry.expires).ok_or_else(|| {
                invalid(format!(
                    "expires = {:?} of the ignore of {} is not a date like 2026-12-31",
                    entry.expires, entry.id
                ))
            })?;
            if now > last_day {
                ignores.expired.push(entry);
            } else {
                ignores.active.push(entry);
            }
        }
        Ok(ignores)
    }

    /// The active ignore that covers `finding`, if any.
    pub fn covering(&self, finding: &Finding) -> Option<&Ignore> {
        self.active.iter().find(|i| {
            i.id.eq_ignore_ascii_case(finding.rule_id)
                && i.resource.as_deref().is_none_or(|r| {
                    r == finding.location.resource || r.eq_ignore_ascii_case(&finding.fingerprint)
                })
        })
    }
}

/// The last second of day `YYYY-MM-DD`, UTC.
fn end_of_day(date: &str) -> Option<SystemTime> {
    let valid_shape = date.len() == 10
        && date.chars().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    if !valid_shape {
        return None;
    }
    let start = humantime::parse_rfc3339(&format!("{date}T00:00:00Z")).ok()?;
    Some(start + Duration::from_secs(86_399))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Finding, Location};

    fn at(date: &str) -> SystemTime {
        humantime::parse_rfc3339(&format!("{date}T12:00:00Z")).unwrap()
    }

    const FILE: &str = r#"
[[ignore]]
id = "TCF-NET-001"
resource = "service gateway"
statement = "behind the firewall"
expires = "2026-12-31"

[[ignore]]
id = "TCF-CFG-002"
statement = "old"
expires = "2025-01-01"
"#;

    #[test]
    fn active_and_expired_are_split_by_date() {
        let ignores = Ignores::parse(Path::new("i.toml"), FILE, at("2026-06-01")).unwrap();
        assert_eq!(ignores.active.len(), 1);
        assert_eq!(ignores.expired.len(), 1);
        assert_eq!(ignores.expired[0].id, "TCF-CFG-002");
        // The expiry day itself still applies; the day after, it does not.
        let last = Ignores::parse(Path::new("i.toml"), FILE, at("2026-12-31")).unwrap();
        assert_eq!(last.active.len(), 1);
        let after = Ignores::parse(Path::new("i.toml"), FILE, at("2027-01-01")).unwrap();
        assert!(after.active.is_empty());
    }

    #[test]
    fn matches_by_id_and_resource_or_fingerprint() {
        let ignores = Ignores::parse(Path::new("i.toml"), FILE, at("2026-06-01")).unwrap();
        let rule = &crate::rules::PUBLIC_WITHOUT_TLS;
        let gateway = Finding::new(rule, Location::resource("service gateway"), "x");
        let other = Finding::new(rule, Location::resource("service tokens"), "x");
        assert!(ignores.covering(&gateway).is_some());
        assert!(ignores.covering(&other).is_none());
        let by_fp = format!(
            "[[ignore]]\nid = \"TCF-NET-001\"\nresource = \"{}\"\nstatement = \"s\"\nexpires = \"2026-12-31\"\n",
            other.fingerprint
        );
        let ignores = Ignores::parse(Path::new("i.toml"), &by_fp, at("2026-06-01")).unwrap();
        assert!(ignores.covering(&other).is_some());
        assert!(ignores.covering(&gateway).is_none());
    }

    #[test]
    fn refuses_missing_expiry_unknown_ids_and_bad_dates() {
        let now = at("2026-06-01");
        let no_expiry = "[[ignore]]\nid = \"TCF-NET-001\"\nstatement = \"s\"\n";
        assert!(Ignores::parse(Path::new("i"), no_expiry, now).is_err());
        let unknown =
            "[[ignore]]\nid = \"TCF-XXX-001\"\nstatement = \"s\"\nexpires = \"2026-12-31\"\n";
        assert!(Ignores::parse(Path::new("i"), unknown, now)
            .unwrap_err()
            .to_string()
            .contains("unknown check ID"));
        let bad_date =
            "[[ignore]]\nid = \"TCF-NET-001\"\nstatement = \"s\"\nexpires = \"31/12/2026\"\n";
        assert!(Ignores::parse(Path::new("i"), bad_date, now).is_err());
        let empty_statement =
            "[[ignore]]\nid = \"TCF-NET-001\"\nstatement = \" \"\nexpires = \"2026-12-31\"\n";
        assert!(Ignores::parse(Path::new("i"), empty_statement, now).is_err());
    }
}
