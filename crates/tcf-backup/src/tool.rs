//! Running the dump and restore tools as child processes under our control: argv only (secrets
//! go through the environment), stdout streamed, stderr kept for the error, the exit status
//! checked. Never a blind shell pipe.

use crate::error::{BackupError, Result};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

/// The last this-many bytes of a tool's stderr go into the error.
const STDERR_KEEP: usize = 8 * 1024;

fn collect_stderr(child: &mut Child) -> Option<JoinHandle<String>> {
    let mut stderr = child.stderr.take()?;
    Some(std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        if buf.len() > STDERR_KEEP {
            buf.drain(..buf.len() - STDERR_KEEP);
        }
        String::from_utf8_lossy(&buf).trim().to_string()
    }))
}

fn spawn(cmd: &mut Command, tool: &str) -> Result<Child> {
    cmd.spawn().map_err(|e| {
        BackupError::ToolMissing(format!(
            "cannot run {tool} ({}): {e}",
            Path::new(cmd.get_program()).display()
        ))
    })
}

fn finish(
    mut child: Child,
    stderr: Option<JoinHandle<String>>,
    tool: &str,
    what: &str,
) -> Result<()> {
    let status = child.wait().map_err(|e| BackupError::Io {
        context: format!("waiting for {tool}"),
        source: e,
    })?;
    let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    Err(BackupError::ToolFailed {
        tool: tool.to_string(),
        what: what.to_string(),
        status: status
            .code()
            .map(|c| c.to_string())
            .unwrap_or_else(|| format!("{status}")),
        stderr: if stderr.is_empty() {
            "(nothing on stderr)".into()
        } else {
            stderr
        },
    })
}

/// Run `cmd`, copying its stdout into `out`. A failure to write (a full disk) stops the tool
/// and is reported as `write_context`; a tool that exits non-zero is reported with its stderr.
pub fn stream_from(
    cmd: &mut Command,
    tool: &str,
    what: &str,
    out: &mut dyn Write,
    write_context: &str,
) -> Result<()> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(cmd, tool)?;
    let stderr = collect_stderr(&mut child);
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| BackupError::Invalid(format!("{tool}: no stdout")))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BackupError::Io {
                    context: format!("reading the output of {tool} for {what}"),
                    source: e,
                });
            }
        };
        if let Err(e) = out.write_all(&buf[..n]) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BackupError::Io {
                context: write_context.to_string(),
                source: e,
            });
        }
    }
    drop(stdout);
    finish(child, stderr, tool, what)
}

/// Run `cmd`, feeding it `input` on stdin. If the tool stops reading early, its own error (exit
/// status and stderr) is what is reported.
pub fn stream_into(cmd: &mut Command, tool: &str, what: &str, input: &mut dyn Read) -> Result<()> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = spawn(cmd, tool)?;
    let stderr = collect_stderr(&mut child);
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| BackupError::Invalid(format!("{tool}: no stdin")))?;
    let copied = io::copy(input, &mut stdin);
    drop(stdin);
    let finished = finish(child, stderr, tool, what);
    match copied {
        Ok(_) => finished,
        // The tool closed its input: its exit status says why.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => finished.and(Err(BackupError::Io {
            context: format!("{tool} stopped reading its input for {what}"),
            source: e,
        })),
        Err(e) => {
            finished?;
            Err(BackupError::Io {
                context: format!("reading the backup data for {what}"),
                source: e,
            })
        }
    }
}

/// Run `cmd` to completion and return its stdout.
pub fn output(cmd: &mut Command, tool: &str, what: &str) -> Result<String> {
    cmd.stdin(Stdio::null());
    let out = cmd.output().map_err(|e| {
        BackupError::ToolMissing(format!(
            "cannot run {tool} ({}): {e}",
            Path::new(cmd.get_program()).display()
        ))
    })?;
    if !out.status.success() {
        return Err(BackupError::ToolFailed {
            tool: tool.to_string(),
            what: what.to_string(),
            status: out
                .status
                .code()
                .map(|c| c.to_string())
                .unwrap_or_else(|| format!("{}", out.status)),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `name` on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
