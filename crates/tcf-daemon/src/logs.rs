//! Instance logs over the API: the last lines of each instance's log file, then (with follow)
//! whatever is appended, each line prefixed with its instance.

use crate::platform::Platform;
use axum::body::Body;
use bytes::Bytes;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How far back from the end to look for the last lines.
const TAIL_WINDOW: u64 = 256 * 1024;
const FOLLOW_POLL: Duration = Duration::from_millis(200);

fn last_lines(path: &Path, n: usize) -> (Vec<String>, u64) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (Vec::new(), 0);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_WINDOW);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return (Vec::new(), len);
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // probably cut in the middle
    }
    let skip = lines.len().saturating_sub(n);
    (lines.split_off(skip), len)
}

/// Read what was appended since `offset`; returns complete lines and the new offset.
fn read_new(path: &Path, offset: u64, partial: &mut Vec<u8>) -> (Vec<String>, u64) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (Vec::new(), offset);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    // Rotated: the file is new and shorter; read it from the start.
    let offset = if len < offset { 0 } else { offset };
    if len == offset {
        return (Vec::new(), offset);
    }
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(offset)).is_err()
        || f.take(len - offset).read_to_end(&mut buf).is_err()
    {
        return (Vec::new(), offset);
    }
    partial.extend_from_slice(&buf);
    let mut lines = Vec::new();
    while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = partial.drain(..=pos).collect();
        lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).to_string());
    }
    (lines, len)
}

pub fn stream(p: Arc<Platform>, instances: Vec<String>, tail: usize, follow: bool) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let files: Vec<(String, PathBuf)> = instances
        .into_iter()
        .map(|id| {
            let path = p.logs_dir().join(format!("{id}.log"));
            (id, path)
        })
        .collect();
    tokio::spawn(async move {
        let mut offsets = Vec::new();
        // File reads run on blocking threads: a slow disk must not stall a runtime thread.
        for (id, path) in &files {
            let at = path.clone();
            let (lines, len) = tokio::task::spawn_blocking(move || last_lines(&at, tail))
                .await
                .unwrap_or_default();
            offsets.push((len, Vec::new()));
            let chunk: String = lines.iter().map(|l| format!("{id} | {l}\n")).collect();
            if !chunk.is_empty() && tx.send(Bytes::from(chunk)).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        let mut shutdown = p.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tx.closed() => return,
            }
            for ((id, path), (offset, partial)) in files.iter().zip(offsets.iter_mut()) {
                let (at, from, mut pending) = (path.clone(), *offset, std::mem::take(partial));
                let read = tokio::task::spawn_blocking(move || {
                    let (lines, next) = read_new(&at, from, &mut pending);
                    (lines, next, pending)
                })
                .await;
                let Ok((lines, new_offset, pending)) = read else {
                    continue;
                };
                *partial = pending;
                *offset = new_offset;
                let chunk: String = lines.iter().map(|l| format!("{id} | {l}\n")).collect();
                if !chunk.is_empty() && tx.send(Bytes::from(chunk)).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tails_and_follows_a_file_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
        let (lines, len) = last_lines(&path, 2);
        assert_eq!(lines, vec!["two", "three"]);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        write!(f, "four\nfi").unwrap();
        let mut partial = Vec::new();
        let (new, off) = read_new(&path, len, &mut partial);
        assert_eq!(new, vec!["four"]);
        writeln!(f, "ve").unwrap();
        let (new, off) = read_new(&path, off, &mut partial);
        assert_eq!(new, vec!["five"]);
        // Rotation: a new, shorter file.
        std::fs::write(&path, "six\n").unwrap();
        let (new, _) = read_new(&path, off, &mut partial);
        assert_eq!(new, vec!["six"]);
    }
}
