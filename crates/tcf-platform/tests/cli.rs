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
    // "tcf-platform 0.1.0 (commit 0123456789ab, built 2026-11-25)"
    let line = stdout.trim();
    let rest = line
        .strip_prefix(&format!(
            "tcf-platform {} (commit ",
            env!("CARGO_PKG_VERSION")
        ))
        .unwrap_or_else(|| panic!("{line}"));
    let (commit, date) = rest
        .strip_suffix(')')
        .and_then(|r| r.split_once(", built "))
        .unwrap_or_else(|| panic!("{line}"));
    assert!(!commit.is_empty(), "{line}");
    assert!(
        date.len() == 10 && date.chars().filter(|c| *c == '-').count() == 2,
        "{line}"
    );
    let (_, text, _) = run(&["version"]);
    assert_eq!(text.trim(), line);
    let (_, json, _) = run(&["version", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["commit"], commit);
    assert_eq!(v["build_date"], date);
}

#[test]
fn man_pages_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("tcf-platform"))
        .arg("manpages")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "tcf-platform.1",
        "tcf-platform-init.1",
        "tcf-platform-prod-deploy.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains("\n.TH "), "{page} is not a man page: {text}");
    }
    assert!(
        !dir.path().join("tcf-platform-manpages.1").exists(),
        "hidden commands get no page"
    );
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

#[test]
fn validate_looks_up_programs_of_processes_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tcf-platform.toml");
    std::fs::write(
        &config,
        "[platform]\nname = \"t\"\n\n\
         [services.api]\nruntime = \"docker\"\nimage = \"app:{version}\"\ncontainer_port = 8080\n\
         command = [\"serve\", \"--fast\"]\nversion = \"v1\"\nlisten = \"127.0.0.1:18080\"\n\n\
         [services.worker]\ncommand = [\"no-such-program-here\"]\nversion = \"v1\"\nlisten = \"127.0.0.1:18081\"\n",
    )
    .unwrap();
    let path = config.to_str().unwrap();
    let (code, _, stderr) = run(&["config", "validate", "--config", path]);
    assert_eq!(code, 0, "{stderr}");
    // A container's command is its arguments: nothing to find on this machine.
    assert!(!stderr.contains("\"serve\""), "{stderr}");
    assert!(
        stderr.contains("\"no-such-program-here\" not found"),
        "{stderr}"
    );
}
