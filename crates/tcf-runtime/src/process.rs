//! The process runtime: each instance is a child process in its own process group, with its
//! stdout and stderr captured into a capped log file.
//!
//! With a log shim (the daemon's case), an instance's output goes through a pipe to a small
//! process of its own (`tcf-platform __log-shim`) that stamps and writes the file: the
//! instance never depends on the daemon to write its output, so it keeps running, and its
//! output keeps being captured, while the daemon restarts, upgrades or crashes. A daemon that
//! starts takes such an instance over with [`ProcessRuntime::adopt`](crate::Runtime::adopt).

use crate::logfile::{open_instance_log, SharedLog};
use crate::{procfs, BoxFuture, Exit, Identity, InstanceSpec, Running, Runtime, RuntimeError};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// Runs instances as local processes.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    /// Relative program paths and the instances' working directory (the config's directory).
    workdir: PathBuf,
    /// The program (and its leading arguments) that copies an instance's output into its log
    /// file; the log path and cap are appended. None: this process copies it (tests, tools).
    log_shim: Option<Vec<OsString>>,
}

/// How often an adopted instance (not our child: no exit notification) is checked for life.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

impl ProcessRuntime {
    pub fn new(workdir: impl Into<PathBuf>) -> Self {
        ProcessRuntime {
            workdir: workdir.into(),
            log_shim: None,
        }
    }

    /// Capture instances' output through `program args... LOG_PATH MAX_SIZE`, a process that
    /// outlives this one (see [`crate::logfile::copy_to_log`]).
    pub fn with_log_shim(mut self, program: impl Into<OsString>, args: &[&str]) -> Self {
        let mut argv = vec![program.into()];
        argv.extend(args.iter().map(OsString::from));
        self.log_shim = Some(argv);
        self
    }

    /// Where a command's program is: a path with '/' is taken relative to the config's
    /// directory; a bare name is looked up beside this binary first (so the workspace's own
    /// programs are found after `cargo build`), then in PATH.
    pub fn resolve_program(&self, program: &str) -> Option<PathBuf> {
        if program.contains('/') {
            let p = self.workdir.join(program);
            return p.is_file().then_some(p);
        }
        let beside_us = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join(program)))
            .filter(|p| p.is_file());
        beside_us.or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(program))
                    .find(|p| p.is_file())
            })
        })
    }
}

struct ProcessInstance {
    child: Child,
    identity: Identity,
    exited: Arc<AtomicBool>,
}

fn signal_group(pgid: u32, signal: Signal) {
    // ESRCH (group already gone) is the normal case after an exit.
    let _ = killpg(Pid::from_raw(pgid as i32), signal);
}

impl Running for ProcessInstance {
    fn identity(&self) -> Identity {
        self.identity
    }

    fn terminate(&self) {
        if !self.exited.load(Ordering::SeqCst) {
            signal_group(self.identity.pgid, Signal::SIGTERM);
        }
    }

    fn kill(&self) {
        if !self.exited.load(Ordering::SeqCst) {
            signal_group(self.identity.pgid, Signal::SIGKILL);
        }
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            let status = self.child.wait().await;
            // The leader is gone; whatever it spawned into its group goes with it.
            if !self.exited.swap(true, Ordering::SeqCst) {
                signal_group(self.identity.pgid, Signal::SIGKILL);
            }
            match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (s.code(), s.signal()) {
                        (Some(c), _) => Exit::Code(c),
                        (None, Some(sig)) => Exit::Signal(sig),
                        _ => Exit::Unknown("no code and no signal".into()),
                    }
                }
                Err(e) => Exit::Unknown(e.to_string()),
            }
        })
    }
}

/// An instance a previous daemon started: not our child, so its end is noticed by polling its
/// leader's start time (a reused pid has another) and state (a zombie is gone).
struct AdoptedInstance {
    identity: Identity,
    since: u64,
    exited: Arc<AtomicBool>,
}

impl AdoptedInstance {
    fn leader_alive(&self) -> bool {
        procfs::start_ticks(self.identity.pid) == Some(self.since)
            && !procfs::is_zombie(self.identity.pid)
    }

    /// Signal the group only while a member of ours is in it: once it is empty, its number
    /// may belong to a stranger.
    fn signal(&self, signal: Signal) {
        if !self.exited.load(Ordering::SeqCst)
            && !procfs::group_members(self.identity.pgid, self.since).is_empty()
        {
            signal_group(self.identity.pgid, signal);
        }
    }
}

impl Running for AdoptedInstance {
    fn identity(&self) -> Identity {
        self.identity
    }

    fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            while self.leader_alive() {
                tokio::time::sleep(ADOPTED_POLL).await;
            }
            self.signal(Signal::SIGKILL);
            self.exited.store(true, Ordering::SeqCst);
            // Its exit status went to its parent (init, or the daemon that started it).
            Exit::Unknown("exited while adopted (its exit status went to its parent)".into())
        })
    }
}

fn pump<R: tokio::io::AsyncRead + Unpin + Send + 'static>(mut from: R, log: SharedLog) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => log.write(buf[..n].to_vec()).await,
            }
        }
    });
}

impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    /// The program of the release must be there before anything starts.
    fn check(&self, spec: &InstanceSpec) -> BoxFuture<'_, Result<(), String>> {
        let program = spec.command.first().cloned().unwrap_or_default();
        let found = self.resolve_program(&program);
        Box::pin(async move {
            match found {
                Some(path) if is_executable(&path) => Ok(()),
                Some(path) => Err(format!(
                    "program {} is not executable (chmod +x it)",
                    path.display()
                )),
                None => Err(format!(
                    "program {program:?} not found (relative to the config's directory when it has a '/', else beside tcf-platform or in PATH)"
                )),
            }
        })
    }

    fn start(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<Box<dyn Running>, RuntimeError>> {
        Box::pin(async move {
            let program_name = spec.command.first().cloned().unwrap_or_default();
            let program = self.resolve_program(&program_name).ok_or_else(|| {
                RuntimeError::ProgramNotFound {
                    instance: spec.id.clone(),
                    program: program_name.clone(),
                }
            })?;
            let log_err = |source| RuntimeError::Log {
                path: spec.log_path.clone(),
                source,
            };
            // With a shim, the instance writes into a pipe the shim reads; without, into pipes
            // this process reads.
            let (output, log) = match &self.log_shim {
                Some(shim) => {
                    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                        .map_err(|e| log_err(std::io::Error::from(e)))?;
                    let mut shim_cmd = Command::new(&shim[0]);
                    shim_cmd
                        .args(&shim[1..])
                        .arg(&spec.log_path)
                        .arg(spec.log_max_size.to_string())
                        // Its own group: a signal to the instance's group, or Ctrl-C to the
                        // daemon's, must not stop the copy before the instance's last line.
                        .process_group(0)
                        .stdin(Stdio::from(read_end))
                        .stdout(Stdio::null())
                        .stderr(Stdio::inherit())
                        .kill_on_drop(false);
                    let mut shim_child = shim_cmd.spawn().map_err(log_err)?;
                    // Reap it when it ends (while we live; init does afterwards).
                    tokio::spawn(async move {
                        let _ = shim_child.wait().await;
                    });
                    (Some(write_end), None)
                }
                None => (None, Some(open_instance_log(&spec)?)),
            };
            let mut cmd = Command::new(&program);
            cmd.args(&spec.command[1..])
                .envs(&spec.env)
                .env("PORT", spec.port.to_string())
                .env("TCF_SERVICE", &spec.service)
                .env("TCF_VERSION", &spec.version)
                .env("TCF_INSTANCE", &spec.id)
                // A daemon run by systemd with NotifyAccess=all: the instance must not be able
                // to speak for it.
                .env_remove("NOTIFY_SOCKET")
                .current_dir(&self.workdir)
                .process_group(0)
                .stdin(Stdio::null())
                .kill_on_drop(false);
            match output {
                Some(pipe) => {
                    let for_stderr = pipe.try_clone().map_err(log_err)?;
                    cmd.stdout(Stdio::from(pipe))
                        .stderr(Stdio::from(for_stderr));
                }
                None => {
                    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
                }
            }
            let mut child = cmd.spawn().map_err(|source| RuntimeError::Spawn {
                instance: spec.id.clone(),
                program: program.display().to_string(),
                source,
            })?;
            let pid = child.id().unwrap_or(0);
            if let Some(log) = log {
                if let Some(out) = child.stdout.take() {
                    pump(out, log.clone());
                }
                if let Some(err) = child.stderr.take() {
                    pump(err, log);
                }
            }
            Ok(Box::new(ProcessInstance {
                child,
                identity: Identity {
                    pid,
                    pgid: pid,
                    start_ticks: procfs::start_ticks(pid),
                },
                exited: Arc::new(AtomicBool::new(false)),
            }) as Box<dyn Running>)
        })
    }

    /// Take over an instance a previous daemon started, if its group leader still runs with
    /// the recorded start time (a reused pid never is taken for ours).
    fn adopt(&self, left: Identity) -> Option<Box<dyn Running>> {
        let since = left.start_ticks?;
        let adopted = AdoptedInstance {
            identity: left,
            since,
            exited: Arc::new(AtomicBool::new(false)),
        };
        (left.pid == left.pgid && adopted.leader_alive())
            .then(|| Box::new(adopted) as Box<dyn Running>)
    }

    fn clean_up(&self, left: Identity, grace: Duration) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            // Without a recorded start time we cannot tell our process from a stranger's.
            let Some(since) = left.start_ticks else {
                return false;
            };
            // A live leader that started at another time is not ours: our leader died and its
            // number was reused. (While any member of our group lives, the kernel never hands
            // its number out again, so members without a leader are ours.)
            if procfs::start_ticks(left.pgid).is_some_and(|t| t != since)
                && !procfs::is_zombie(left.pgid)
            {
                return false;
            }
            let members = procfs::group_members(left.pgid, since);
            if members.is_empty() {
                return false;
            }
            signal_group(left.pgid, Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + grace;
            while tokio::time::Instant::now() < deadline {
                if procfs::group_members(left.pgid, since).is_empty() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            signal_group(left.pgid, Signal::SIGKILL);
            true
        })
    }
}

/// Whether `path` names a program we could run (used by `config validate`).
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(dir: &Path, cmd: &[&str]) -> InstanceSpec {
        InstanceSpec {
            id: "svc-1".into(),
            service: "svc".into(),
            version: "v1".into(),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            port: 4242,
            log_path: dir.join("logs/svc-1.log"),
            log_max_size: 1 << 20,
            colour: "blue".into(),
            stop_timeout: Duration::from_secs(1),
            container: None,
            secret_env: Default::default(),
        }
    }

    #[tokio::test]
    async fn captures_output_and_passes_the_port() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path());
        let mut inst = rt
            .start(spec(
                dir.path(),
                &[
                    "sh",
                    "-c",
                    "echo port=$PORT service=$TCF_SERVICE; echo oops >&2; exit 3",
                ],
            ))
            .await
            .unwrap();
        assert_eq!(inst.wait().await, Exit::Code(3));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = std::fs::read_to_string(dir.path().join("logs/svc-1.log")).unwrap();
        assert!(log.contains("port=4242 service=svc"), "{log}");
        assert!(log.contains("oops"), "{log}");
    }

    #[tokio::test]
    async fn stop_kills_the_whole_group_even_when_sigterm_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path());
        // The shell ignores SIGTERM and has a grandchild that would otherwise be orphaned.
        let mut inst = rt
            .start(spec(
                dir.path(),
                &["sh", "-c", "trap '' TERM; sleep 1000 & wait"],
            ))
            .await
            .unwrap();
        let id = inst.identity();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let members = procfs::group_members(id.pgid, id.start_ticks.unwrap());
        assert!(
            members.len() >= 2,
            "expected shell and sleep, got {members:?}"
        );
        let exit = crate::stop(inst.as_mut(), Duration::from_millis(300)).await;
        assert_eq!(exit, Exit::Signal(9));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(procfs::group_members(id.pgid, id.start_ticks.unwrap()).is_empty());
    }

    #[tokio::test]
    async fn clean_up_removes_a_group_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path());
        let inst = rt
            .start(spec(dir.path(), &["sleep", "1000"]))
            .await
            .unwrap();
        let id = inst.identity();
        // Forget the handle, like a daemon that was killed.
        std::mem::forget(inst);
        assert!(rt.clean_up(id, Duration::from_secs(2)).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(procfs::group_members(id.pgid, id.start_ticks.unwrap()).is_empty());
        assert!(!rt.clean_up(id, Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn a_reused_pid_is_never_signalled() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path());
        let inst = rt
            .start(spec(dir.path(), &["sleep", "1000"]))
            .await
            .unwrap();
        let id = inst.identity();
        // The record says the group's leader started earlier than the process now holding that
        // pid: ours died and the number was reused by a stranger (played here by a live
        // instance), which must be left alone.
        let earlier = Identity {
            start_ticks: id.start_ticks.map(|t| t - 1),
            ..id
        };
        assert!(!rt.clean_up(earlier, Duration::from_secs(1)).await);
        let later = Identity {
            start_ticks: id.start_ticks.map(|t| t + 1),
            ..id
        };
        assert!(!rt.clean_up(later, Duration::from_secs(1)).await);
        // No start time recorded: we cannot tell, so we do nothing either.
        let unknown = Identity {
            start_ticks: None,
            ..id
        };
        assert!(!rt.clean_up(unknown, Duration::from_secs(1)).await);
        assert!(!procfs::group_members(id.pgid, id.start_ticks.unwrap()).is_empty());
        assert!(rt.clean_up(id, Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn an_adopted_instance_is_stopped_and_its_end_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path());
        let inst = rt
            .start(spec(dir.path(), &["sleep", "1000"]))
            .await
            .unwrap();
        let id = inst.identity();
        // Forget the handle, like a daemon that was replaced; a new one adopts the group.
        std::mem::forget(inst);
        let stranger = Identity {
            start_ticks: id.start_ticks.map(|t| t + 1),
            ..id
        };
        assert!(rt.adopt(stranger).is_none(), "a reused pid is not ours");
        let mut adopted = rt.adopt(id).expect("a live instance is adopted");
        assert_eq!(adopted.identity(), id);
        let exit = crate::stop(adopted.as_mut(), Duration::from_secs(2)).await;
        assert!(matches!(exit, Exit::Unknown(_)), "{exit}");
        assert!(procfs::group_members(id.pgid, id.start_ticks.unwrap()).is_empty());
        assert!(rt.adopt(id).is_none(), "nothing left to adopt");
    }

    #[tokio::test]
    async fn a_missing_program_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path());
        let err = rt
            .start(spec(dir.path(), &["no-such-program-tcf"]))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("no-such-program-tcf"));
    }
}
