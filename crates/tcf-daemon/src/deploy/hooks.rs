//! Release hooks: a command run with the release in its environment, in its own process group,
//! within the hooks' timeout. A hook that overruns is killed with everything it spawned.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("did not finish within {}; stopped it and everything it started", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("{status}: {last_line}")]
    Failed {
        status: std::process::ExitStatus,
        last_line: String,
    },
}

/// The last line a hook printed, for the progress line.
pub fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .last()
        .unwrap_or("")
        .to_string()
}

/// Run `argv` in `workdir` with `env` added, within `timeout`. The command leads a process
/// group of its own, so a timeout kills its children and grandchildren too (a `sh -c` that
/// started a background job, say), not just the direct child.
pub async fn run(
    argv: &[String],
    env: &[(&str, String)],
    workdir: &Path,
    timeout: Duration,
) -> Result<Output, HookError> {
    let program = argv.first().cloned().unwrap_or_default();
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(argv.iter().skip(1))
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().map_err(|source| HookError::Spawn {
        program: program.clone(),
        source,
    })?;
    let group = child.id().map(|pid| Pid::from_raw(pid as i32));
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(out),
        Ok(Ok(out)) => Err(HookError::Failed {
            status: out.status,
            last_line: last_line(&out.stderr),
        }),
        Ok(Err(source)) => Err(HookError::Spawn { program, source }),
        Err(_) => {
            if let Some(group) = group {
                let _ = killpg(group, Signal::SIGKILL);
            }
            Err(HookError::Timeout(timeout))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: i32) -> bool {
        // A zombie is as good as gone: it only waits to be reaped by its parent.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn a_hook_that_overruns_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let argv = vec!["sh".to_string(), "-c".to_string(), script];
        let err = run(&argv, &[], dir.path(), Duration::from_millis(700))
            .await
            .unwrap_err();
        assert!(matches!(err, HookError::Timeout(_)), "{err}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(pid) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(pid), "the hook's background job {pid} survived");
    }

    #[tokio::test]
    async fn a_failing_hook_reports_its_status_and_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let argv: Vec<String> = ["sh", "-c", "echo one >&2; echo two >&2; exit 3"]
            .map(String::from)
            .to_vec();
        let err = run(
            &argv,
            &[("X", "1".into())],
            dir.path(),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "exit status: 3: two");
    }
}
