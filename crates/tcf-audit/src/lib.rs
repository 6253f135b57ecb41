//! `tcf-platform prod audit`: the platform's security audit.
//!
//! [`rules`] is the catalogue of checks (stable IDs, severities, remediation); [`checks::run`]
//! runs the selected ones against the config, the files and, when the daemon answers, the
//! running processes ([`checks::LiveView`]); [`Report::build`] applies the ignores and sums
//! up; [`render`] writes a table, JSON, SARIF 2.1.0 or JUnit XML. A check that could not run
//! is reported as `not_run` with the reason, never as a pass. docs/audit.md lists every check.

pub mod access;
pub mod advisories;
pub mod certs;
pub mod checks;
pub mod containers;
pub mod ignore;
pub mod model;
pub mod procnet;
pub mod render;
pub mod report;
pub mod rules;
pub mod scan;
pub mod secrets;
pub mod tls;

pub use checks::{Inputs, LiveContainer, LiveInstance, LiveService, LiveView};
pub use ignore::{Ignore, IgnoreError, Ignores};
pub use model::{CheckResult, Finding, Location, Outcome, Rule, Severity};
pub use render::Format;
pub use report::{Meta, Report};

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("unknown check ID {0:?}\nhint: the IDs are listed in docs/audit.md (TCF-FS-001, TCF-SEC-001, ...)")]
    UnknownId(String),
}

/// The checks `--check` and `--skip` leave, in catalogue order. `--check` empty: all of them.
/// A group prefix selects its checks: `TCF-CTR` (or `CTR`) is every container check.
pub fn select(check: &[String], skip: &[String]) -> Result<Vec<&'static Rule>, SelectError> {
    let matching = |id: &str| -> Result<Vec<&'static Rule>, SelectError> {
        if let Some(rule) = rules::find(id) {
            return Ok(vec![rule]);
        }
        let upper = id.to_ascii_uppercase();
        let prefix = if upper.starts_with("TCF-") {
            format!("{upper}-")
        } else {
            format!("TCF-{upper}-")
        };
        let group: Vec<_> = rules::all().filter(|r| r.id.starts_with(&prefix)).collect();
        if group.is_empty() {
            Err(SelectError::UnknownId(id.to_string()))
        } else {
            Ok(group)
        }
    };
    let mut wanted: Vec<&'static Rule> = Vec::new();
    for id in check {
        wanted.extend(matching(id)?);
    }
    let mut skipped: Vec<&'static Rule> = Vec::new();
    for id in skip {
        skipped.extend(matching(id)?);
    }
    Ok(rules::all()
        .filter(|r| check.is_empty() || wanted.iter().any(|w| w.id == r.id))
        .filter(|r| !skipped.iter().any(|s| s.id == r.id))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_by_id_group_and_skip() {
        let all = select(&[], &[]).unwrap();
        assert_eq!(all.len(), rules::ALL.len());
        let ctr = select(&["CTR".into()], &["tcf-ctr-002".into()]).unwrap();
        let ids: Vec<_> = ctr.iter().map(|r| r.id).collect();
        assert_eq!(
            ids,
            vec![
                "TCF-CTR-001",
                "TCF-CTR-003",
                "TCF-CTR-004",
                "TCF-CTR-005",
                "TCF-CTR-006",
                "TCF-CTR-007",
                "TCF-CTR-008"
            ]
        );
        assert!(select(&["TCF-NOPE-001".into()], &[]).is_err());
        assert!(select(&[], &["bogus".into()]).is_err());
    }
}
