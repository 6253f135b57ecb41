//! Golden files of every report format for one fixed set of results, and the SARIF checked
//! against the structure SARIF 2.1.0 requires.

mod schema;

use serde_json::Value;
use std::path::PathBuf;
use std::time::SystemTime;
use tcf_audit::render::{self, Format};
use tcf_audit::{rules, CheckResult, Finding, Ignores, Location, Meta, Report, Severity};

fn meta() -> Meta {
    Meta {
        tool_version: "0.1.0".into(),
        generated_at: "2026-11-25T12:00:00Z".into(),
        config: PathBuf::from("/srv/tcf/tcf-platform.toml"),
        platform: "tcf".into(),
        environment: None,
        offline_reason: Some("no daemon answers on /srv/tcf/.tcf/tcf.sock".into()),
        comprehensive: false,
        advisories: None,
    }
}

fn results() -> Vec<CheckResult> {
    let config = PathBuf::from("/srv/tcf/tcf-platform.toml");
    vec![
        CheckResult::ran(
            &rules::STATE_DIR_MODE,
            vec![Finding::new(
                &rules::STATE_DIR_MODE,
                Location::file("/srv/tcf/.tcf"),
                "mode 0755: group may list, enter; others may list, enter",
            )],
        ),
        CheckResult::ran(&rules::CONFIG_FILE_MODE, vec![]),
        CheckResult::ran(
            &rules::PLAINTEXT_SECRET,
            vec![Finding::new(
                &rules::PLAINTEXT_SECRET,
                Location::resource("service tokens, env DB_PASSWORD").in_file(&config, Some(12)),
                "env DB_PASSWORD of service tokens holds a literal credential in the config file (value not shown; rule: credential keyword in the key)",
            )],
        ),
        CheckResult::ran(
            &rules::PUBLIC_WITHOUT_TLS,
            vec![
                Finding::new(
                    &rules::PUBLIC_WITHOUT_TLS,
                    Location::resource("service gateway")
                        .in_file(&config, Some(30))
                        .with_uri("tcp://0.0.0.0:3000"),
                    "service gateway listens on 0.0.0.0:3000 (every interface) over plain HTTP",
                ),
                Finding::new(
                    &rules::PUBLIC_WITHOUT_TLS,
                    Location::resource("service <admin> & \"ops\""),
                    "a name that needs escaping in XML",
                ),
            ],
        ),
        CheckResult::ran(
            &rules::VULNERABLE_DEPENDENCY,
            vec![Finding::new(
                &rules::VULNERABLE_DEPENDENCY,
                Location::resource("crates.io smallvec@1.6.0 (RUSTSEC-2021-0003)")
                    .in_file("/srv/app/Cargo.lock", None),
                "smallvec 1.6.0 of service tokens is affected by RUSTSEC-2021-0003",
            )
            .severity(Severity::Critical)
            .remediation("Upgrade smallvec to 1.6.1 or later.")],
        ),
        CheckResult::not_run(
            &rules::INSTANCE_ROOT,
            "needs the running daemon (no daemon answers on /srv/tcf/.tcf/tcf.sock)",
        ),
        CheckResult::info(
            &rules::BACKUPS_UNENCRYPTED,
            "the config has no [backup]: nothing to inspect (TCF-BAK-001 reports that)",
        ),
    ]
}

fn ignores() -> Ignores {
    let now = humantime::parse_rfc3339("2026-11-25T12:00:00Z").unwrap();
    Ignores::parse(
        std::path::Path::new("ignore.toml"),
        r#"
[[ignore]]
id = "TCF-NET-001"
resource = "service gateway"
statement = "firewalled to the office network until TLS ships"
expires = "2026-12-31"

[[ignore]]
id = "TCF-FS-001"
statement = "accepted once"
expires = "2026-01-01"
"#,
        now,
    )
    .unwrap()
}

fn report() -> Report {
    Report::build(meta(), results(), &ignores())
}

#[test]
fn summary_counts_not_run_and_never_as_passes() {
    let r = report();
    let s = &r.summary;
    assert_eq!(
        (s.checks, s.passed, s.failed, s.info, s.not_run),
        (7, 1, 4, 1, 1)
    );
    assert_eq!(s.ignored, 1);
    // An expired ignore hides nothing and is reported.
    assert!(r.findings.iter().any(|f| f.rule_id == "TCF-FS-001"));
    assert_eq!(r.expired_ignores.len(), 1);
    // Score: passes weighted by severity over the checks that ran (info and not_run excluded).
    // ran: FS-001 high 7, FS-003 high 7 (pass), SEC-001 high 7, NET-001 medium 4, DEP-001 high 7.
    assert_eq!(s.score, Some((7 * 100 + 16) / 32));
    assert!(r.fails_at(Severity::Critical));
    assert!(r.fails_at(Severity::High));
    let without_dep = Report::build(
        meta(),
        results()
            .into_iter()
            .filter(|c| c.rule.id != "TCF-DEP-001")
            .collect(),
        &ignores(),
    );
    assert!(!without_dep.fails_at(Severity::Critical));
}

#[test]
fn golden_table() {
    insta::assert_snapshot!("table", render::render(&report(), Format::Table));
}

#[test]
fn json_follows_its_documented_schema() {
    let report: Value = serde_json::from_str(&render::render(&report(), Format::Json)).unwrap();
    schema::assert_valid_report_schema(&report);
    // The schema is strict enough to catch a change of shape.
    let mut changed = report.clone();
    changed["checks"][0]["status"] = "skipped".into();
    let schema = jsonschema::validator_for(
        &serde_json::from_str::<Value>(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../docs/audit-report.schema.json"
            ))
            .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(schema.validate(&changed).is_err());
    // INFO carries its note, and only INFO does.
    let info = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .position(|c| c["status"] == "info")
        .expect("an info check");
    assert!(report["checks"][info]["note"]
        .as_str()
        .unwrap()
        .contains("no [backup]"));
    assert_eq!(report["summary"]["info"], 1);
    let mut without_note = report.clone();
    without_note["checks"][info]
        .as_object_mut()
        .unwrap()
        .remove("note");
    assert!(schema.validate(&without_note).is_err());
    let mut pass_with_note = report.clone();
    pass_with_note["checks"][1]["note"] = "a pass says nothing".into();
    assert_eq!(pass_with_note["checks"][1]["status"], "pass");
    assert!(schema.validate(&pass_with_note).is_err());
}

#[test]
fn golden_json() {
    insta::assert_snapshot!("json", render::render(&report(), Format::Json));
}

#[test]
fn golden_sarif() {
    insta::assert_snapshot!("sarif", render::render(&report(), Format::Sarif));
}

#[test]
fn golden_junit() {
    insta::assert_snapshot!("junit", render::render(&report(), Format::Junit));
}

/// The structure SARIF 2.1.0 requires of a log (§3.13 sarifLog, §3.14 run, §3.19 tool,
/// §3.49 reportingDescriptor, §3.27 result, §3.28 location), as code-scanning tools read it.
pub fn assert_valid_sarif(log: &Value) {
    assert_eq!(log["version"], "2.1.0");
    assert!(log["$schema"].as_str().unwrap().contains("sarif-2.1.0"));
    let runs = log["runs"].as_array().expect("runs is an array");
    assert!(!runs.is_empty());
    for run in runs {
        let driver = &run["tool"]["driver"];
        assert!(driver["name"].as_str().is_some_and(|n| !n.is_empty()));
        let rules = driver["rules"].as_array().expect("tool.driver.rules");
        let mut ids = std::collections::BTreeSet::new();
        for rule in rules {
            let id = rule["id"].as_str().expect("rule id");
            assert!(ids.insert(id.to_string()), "duplicate rule {id}");
            assert!(rule["shortDescription"]["text"].is_string());
            assert!(rule["properties"]["security-severity"]
                .as_str()
                .unwrap()
                .parse::<f64>()
                .is_ok());
            let level = rule["defaultConfiguration"]["level"].as_str().unwrap();
            assert!(["none", "note", "warning", "error"].contains(&level));
        }
        for result in run["results"].as_array().expect("results") {
            let rule_id = result["ruleId"].as_str().expect("ruleId");
            assert!(ids.contains(rule_id), "result of unknown rule {rule_id}");
            if let Some(index) = result["ruleIndex"].as_u64() {
                assert_eq!(rules[index as usize]["id"], rule_id);
            }
            let level = result["level"].as_str().unwrap();
            assert!(["none", "note", "warning", "error"].contains(&level));
            assert!(result["message"]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty()));
            let locations = result["locations"].as_array().expect("locations");
            assert!(!locations.is_empty());
            for location in locations {
                assert!(
                    location["physicalLocation"]["artifactLocation"]["uri"].is_string()
                        || location["logicalLocations"].is_array()
                );
                if let Some(line) = location["physicalLocation"]["region"]["startLine"].as_u64() {
                    assert!(line >= 1);
                }
            }
            assert!(result["partialFingerprints"].is_object());
        }
        for invocation in run["invocations"].as_array().into_iter().flatten() {
            assert!(invocation["executionSuccessful"].is_boolean());
        }
    }
}

#[test]
fn sarif_has_the_required_structure() {
    let log: Value = serde_json::from_str(&render::render(&report(), Format::Sarif)).unwrap();
    assert_valid_sarif(&log);
    schema::assert_valid_sarif_schema(&log);
    // The schema does catch what a code-scanning tool would refuse.
    let mut bad = log.clone();
    bad["runs"][0]["results"][0]["level"] = "severe".into();
    assert!(!schema::sarif_schema_errors(&bad).is_empty());
    let mut bad = log.clone();
    bad["runs"][0]["results"][0]["message"] = serde_json::json!({});
    assert!(!schema::sarif_schema_errors(&bad).is_empty());
    // Checks that did not run (warning) and INFO ones (note) are notifications, not results.
    let notes = &log["runs"][0]["invocations"][0]["toolExecutionNotifications"];
    let levels: Vec<(&str, &str)> = notes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["associatedRule"]["id"].as_str().unwrap(),
                n["level"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        levels,
        [("TCF-PROC-001", "warning"), ("TCF-BAK-002", "note")]
    );
    assert!(log["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["ruleId"] != "TCF-PROC-001"));
    // The ignored finding is a suppressed result, with its statement.
    let suppressed: Vec<&Value> = log["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["suppressions"].is_array())
        .collect();
    assert_eq!(suppressed.len(), 1);
    assert_eq!(suppressed[0]["ruleId"], "TCF-NET-001");
    assert!(suppressed[0]["suppressions"][0]["justification"]
        .as_str()
        .unwrap()
        .contains("firewalled"));
}

#[test]
fn fingerprints_are_stable_across_runs() {
    let a = report();
    let b = Report::build(
        Meta {
            generated_at: "2027-01-01T00:00:00Z".into(),
            ..meta()
        },
        results(),
        &Ignores::load(std::path::Path::new("/nonexistent"), SystemTime::now()).unwrap_or_default(),
    );
    let fp = |r: &Report, id: &str| {
        r.findings
            .iter()
            .find(|f| f.rule_id == id)
            .map(|f| f.fingerprint.clone())
    };
    assert_eq!(fp(&a, "TCF-SEC-001"), fp(&b, "TCF-SEC-001"));
    assert!(fp(&a, "TCF-SEC-001").is_some());
}

/// A remote daemon's report (JSON, no ignores) read back, with the ignores applied here, is
/// the report that was built locally, in every format.
#[test]
fn a_json_report_reads_back_to_the_same_report() {
    let remote = Report::build(meta(), results(), &Ignores::default());
    let json = render::json_report(&remote);
    let (meta_back, results_back, unknown) = tcf_audit::report::results_from_json(&json).unwrap();
    assert!(unknown.is_empty());
    let local = report();
    let back = Report::build(meta_back, results_back, &ignores());
    for format in [Format::Table, Format::Json, Format::Sarif, Format::Junit] {
        assert_eq!(
            render::render(&back, format),
            render::render(&local, format),
            "{format:?}"
        );
    }
    // A check this build does not know is left out and named; a bad status is an error.
    let mut newer = json.clone();
    newer["checks"][0]["id"] = "TCF-NEW-001".into();
    let (_, results, unknown) = tcf_audit::report::results_from_json(&newer).unwrap();
    assert_eq!(unknown, ["TCF-NEW-001"]);
    assert_eq!(results.len(), 6);
    let mut broken = json.clone();
    broken["checks"][0]["status"] = "maybe".into();
    assert!(tcf_audit::report::results_from_json(&broken).is_err());
    let mut other = json;
    other["schema_version"] = 2.into();
    assert!(tcf_audit::report::results_from_json(&other).is_err());
}
