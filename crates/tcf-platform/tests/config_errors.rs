//! Config error messages, as the user sees them: snapshot tests of `config validate`.

use assert_cmd::Command;

const GOOD: &str = r#"[platform]
name = "demo"

[services.api]
command = ["tcf-demo"]
version = "v1"
listen = "127.0.0.1:18080"
depends_on = ["db"]

[services.db]
command = ["tcf-demo"]
version = "v1"
listen = "127.0.0.1:18081"
"#;

/// Run `tcf-platform ARGS` in a fresh directory holding `text` as tcf-platform.toml (none when
/// `text` is None); returns (exit code, stdout, stderr).
fn run_in_dir(text: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    if let Some(text) = text {
        std::fs::write(dir.path().join("tcf-platform.toml"), text).unwrap();
    }
    let out = Command::cargo_bin("tcf-platform")
        .unwrap()
        .current_dir(dir.path())
        .env_remove("TCF_CONFIG")
        .env_remove("TCF_ENV")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Run `config validate` on `text`; returns (exit code, stdout, stderr).
fn validate(text: &str, extra: &[&str]) -> (i32, String, String) {
    run_in_dir(Some(text), &[&["config", "validate"], extra].concat())
}

fn invalid(text: &str) -> String {
    let (code, _, stderr) = validate(text, &[]);
    assert_eq!(
        code, 2,
        "expected exit 2 for an invalid config, stderr:\n{stderr}"
    );
    stderr
}

#[test]
fn a_valid_config_passes() {
    let (code, stdout, _) = validate(GOOD, &[]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("config ok: "), "{stdout}");
}

#[test]
fn unknown_key() {
    insta::assert_snapshot!(invalid(&GOOD.replace("depends_on", "depend_on")));
}

#[test]
fn bad_duration() {
    insta::assert_snapshot!(invalid(&format!("{GOOD}stop_timeout = \"10 parsecs\"\n")));
}

#[test]
fn duration_without_unit() {
    insta::assert_snapshot!(invalid(&format!("{GOOD}stop_timeout = 10\n")));
}

#[test]
fn unknown_dependency() {
    insta::assert_snapshot!(invalid(&GOOD.replace("[\"db\"]", "[\"db\", \"cache\"]")));
}

#[test]
fn dependency_cycle() {
    insta::assert_snapshot!(invalid(&format!("{GOOD}depends_on = [\"api\"]\n")));
}

#[test]
fn two_services_on_one_address() {
    insta::assert_snapshot!(invalid(&GOOD.replace("18081", "18080")));
}

#[test]
fn invalid_listen_address_and_missing_command_are_reported_together() {
    let text = GOOD.replace("127.0.0.1:18081", "localhost").replace(
        "command = [\"tcf-demo\"]\nversion = \"v1\"\nlisten = \"127.0.0.1:18080\"",
        "version = \"v1\"\nlisten = \"127.0.0.1:18080\"",
    );
    insta::assert_snapshot!(invalid(&text));
}

#[test]
fn toml_syntax_error() {
    insta::assert_snapshot!(invalid(&GOOD.replace("name = \"demo\"", "name = \"demo")));
}

#[test]
fn unknown_environment() {
    let (code, _, stderr) = validate(GOOD, &["--env", "prod"]);
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr);
}

#[test]
fn environment_overrides_apply() {
    let text = format!("{GOOD}\n[environments.staging.services.api]\ninstances = 3\n");
    let (code, stdout, _) = run_in_dir(
        Some(&text),
        &["--env", "staging", "config", "show", "--format", "json"],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["services"]["api"]["instances"], 3);
    assert_eq!(v["services"]["db"]["instances"], 1);
    assert_eq!(v["environment"], "staging");
}

#[test]
fn json_errors_carry_line_and_column() {
    let (code, stdout, _) = validate(
        &GOOD.replace("[\"db\"]", "[\"dbx\"]"),
        &["--format", "json"],
    );
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"][0]["line"], 8);
    assert_eq!(v["errors"][0]["column"], 15);
}

#[test]
fn a_missing_config_says_where_it_looked() {
    let (code, _, stderr) = run_in_dir(None, &["config", "validate"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no tcf-platform.toml in"), "{stderr}");
    assert!(stderr.contains("--config"), "{stderr}");
}
