//! Docker helpers for the tests that run containers on a real engine: the CLI, and guards that
//! remove a test's images, containers and networks however the test ends.

use std::process::Command;

/// Fail (never skip) when no engine answers.
pub fn require_engine() {
    let engine = Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output();
    assert!(
        engine.as_ref().is_ok_and(|o| o.status.success()),
        "no Docker engine answers: start dockerd (scripts/test does) — this test does not skip"
    );
}

/// Build the demo image as `repo:VERSION` for each version (scripts/build-images), labelled
/// `label`; the returned guard removes them.
pub fn build_demo_images(repo: &str, label: &str, versions: &[&str]) -> Images {
    let images = Images {
        label: label.to_string(),
    };
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-images");
    let built = Command::new("bash")
        .arg(&script)
        .args(["--repo", repo, "--label", label])
        .args(versions)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "build-images failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    images
}

pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI (apt-get install docker.io)");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn count(args: &[&str]) -> usize {
    docker(args)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// Images built for this test run, removed when it ends, however it ends.
pub struct Images {
    pub label: String,
}

impl Drop for Images {
    fn drop(&mut self) {
        let ids = docker(&[
            "image",
            "ls",
            "-q",
            "--filter",
            &format!("label={}", self.label),
        ]);
        let ids: Vec<&str> = ids.lines().filter(|l| !l.is_empty()).collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["image", "rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

/// Containers and networks of a platform, removed when the test ends, even when it fails.
pub struct PlatformObjects {
    pub platform: String,
}

impl Drop for PlatformObjects {
    fn drop(&mut self) {
        let filter = format!("label=tcf.platform={}", self.platform);
        for kind in [["ps", "-aq"], ["network", "ls"]] {
            let mut args: Vec<&str> = kind.to_vec();
            if kind[0] == "network" {
                args.push("-q");
            }
            args.extend(["--filter", &filter]);
            let ids = docker(&args);
            let ids: Vec<&str> = ids.lines().filter(|l| !l.is_empty()).collect();
            if !ids.is_empty() {
                let rm: &[&str] = if kind[0] == "ps" {
                    &["rm", "-f"]
                } else {
                    &["network", "rm"]
                };
                let _ = Command::new("docker").args(rm).args(&ids).output();
            }
        }
    }
}
