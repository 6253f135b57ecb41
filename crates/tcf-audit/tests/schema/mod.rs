//! Validation of reports against the official SARIF 2.1.0 schema (tests/data, source noted in
//! its README) and the JSON report's own schema (docs/audit-report.schema.json).

#![allow(dead_code)]

use serde_json::Value;

fn load(relative: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn errors(schema: &Value, instance: &Value) -> Vec<String> {
    let validator = jsonschema::validator_for(schema).unwrap();
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn assert_valid(schema: &Value, instance: &Value, what: &str) {
    let errors = errors(schema, instance);
    assert!(
        errors.is_empty(),
        "{what} does not validate:\n{}",
        errors.join("\n")
    );
}

/// The SARIF schema's complaints about `log` (for tests proving it does complain).
pub fn sarif_schema_errors(log: &Value) -> Vec<String> {
    errors(&load("tests/data/sarif-schema-2.1.0.json"), log)
}

pub fn assert_valid_sarif_schema(log: &Value) {
    assert_valid(
        &load("tests/data/sarif-schema-2.1.0.json"),
        log,
        "the SARIF log",
    );
}

pub fn assert_valid_report_schema(report: &Value) {
    assert_valid(
        &load("../../docs/audit-report.schema.json"),
        report,
        "the JSON report",
    );
}
