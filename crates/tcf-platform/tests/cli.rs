//! The command line itself: help that teaches, version, completions (snapshots of CLI output).

use assert_cmd::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::cargo_bin("tcf-platform")
        .unwrap()
        .env_remove("TCF_CONFIG")
        .env_remove("TCF_ENV")
        .env("COLUMNS", "100")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn top_level_help() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(stdout);
}

#[test]
fn status_help() {
    let (code, stdout, _) = run(&["status", "--help"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(stdout);
}

#[test]
fn version_text_and_json() {
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        format!("tcf-platform {}", env!("CARGO_PKG_VERSION"))
    );
    let (_, json, _) = run(&["version", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn completions_for_bash_name_the_commands() {
    let (code, stdout, _) = run(&["completions", "bash"]);
    assert_eq!(code, 0);
    for word in ["tcf-platform", "status", "logs", "events", "completions"] {
        assert!(
            stdout.contains(word),
            "{word} missing from the bash completions"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, stderr) = run(&["status", "--format", "yaml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("possible values: table, json"), "{stderr}");
}
