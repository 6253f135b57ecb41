//! Instance logs over the API: the last lines of each instance's log file, then (with follow)
//! whatever is appended, each line prefixed with its instance.

use crate::platform::Platform;
use axum::body::Body;
use bytes::Bytes;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tcf_runtime::logfile::strip_stamp;

/// How far back from the end to look for the last lines.
const TAIL_WINDOW: u64 = 256 * 1024;
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub(crate) fn last_lines(path: &Path, n: usize) -> (Vec<String>, u64) {
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

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Where a follower is in one instance's log: the file it reads, held open (so a rotation
/// can be finished from it, and its inode cannot be reused while we compare), the offset, and
/// a line not yet complete.
#[derive(Default)]
struct Cursor {
    file: Option<std::fs::File>,
    offset: u64,
    partial: Vec<u8>,
}

fn inode_of(f: &std::fs::File) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    f.metadata().ok().map(|m| m.ino())
}

/// Complete lines from `f` between `from` and its end, after what `partial` holds.
fn read_from(f: &mut std::fs::File, from: u64, partial: &mut Vec<u8>) -> (Vec<String>, u64) {
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    if len <= from
        || f.seek(SeekFrom::Start(from)).is_err()
        || f.take(len - from).read_to_end(&mut buf).is_err()
    {
        return (Vec::new(), from.min(len));
    }
    partial.extend_from_slice(&buf);
    let mut lines = Vec::new();
    while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = partial.drain(..=pos).collect();
        lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).to_string());
    }
    (lines, len)
}

/// Lines appended since the cursor. Across a rotation the rest of the old file comes first
/// (we still hold it open); if a whole file went by between two reads (two rotations), a line
/// says so instead of dropping it silently.
fn read_new(path: &Path, cursor: &mut Cursor) -> Vec<String> {
    let current = inode(path);
    let mut lines = Vec::new();
    let held = cursor.file.as_ref().and_then(inode_of);
    if held.is_some() && current != held {
        if let Some(mut old) = cursor.file.take() {
            let (rest, _) = read_from(&mut old, cursor.offset, &mut cursor.partial);
            lines.extend(rest);
        }
        if !cursor.partial.is_empty() {
            lines.push(String::from_utf8_lossy(&std::mem::take(&mut cursor.partial)).to_string());
        }
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        if inode(&PathBuf::from(rotated)) != held {
            lines.push(
                "[tcf-platform: lines skipped: the log rotated twice between two reads]".into(),
            );
        }
        cursor.offset = 0;
    }
    if cursor.file.is_none() {
        cursor.file = std::fs::File::open(path).ok();
    }
    if let Some(f) = cursor.file.as_mut() {
        let (new, offset) = read_from(f, cursor.offset, &mut cursor.partial);
        cursor.offset = offset;
        lines.extend(new);
    }
    lines
}

/// The last `tail` lines of each file, then (with `follow`) what is appended; each line
/// prefixed with its file's name if it has one (an instance's log; the access log has none).
pub fn stream(
    p: Arc<Platform>,
    files: Vec<(Option<String>, PathBuf)>,
    tail: usize,
    follow: bool,
    timestamps: bool,
) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let render = move |id: &Option<String>, lines: &[String]| -> String {
        lines
            .iter()
            .map(|l| {
                let l = if timestamps {
                    l.as_str()
                } else {
                    strip_stamp(l)
                };
                match id {
                    Some(id) => format!("{id} | {l}\n"),
                    None => format!("{l}\n"),
                }
            })
            .collect()
    };
    tokio::spawn(async move {
        let mut cursors = Vec::new();
        // File reads run on blocking threads: a slow disk must not stall a runtime thread.
        for (id, path) in &files {
            let at = path.clone();
            let (lines, cursor) = tokio::task::spawn_blocking(move || {
                // Opened before the tail is read: nothing written in between is missed.
                let file = std::fs::File::open(&at).ok();
                let (lines, len) = last_lines(&at, tail);
                let cursor = Cursor {
                    file,
                    offset: len,
                    partial: Vec::new(),
                };
                (lines, cursor)
            })
            .await
            .unwrap_or_default();
            cursors.push(cursor);
            let chunk = render(id, &lines);
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
            for ((id, path), cursor) in files.iter().zip(cursors.iter_mut()) {
                let (at, mut c) = (path.clone(), std::mem::take(cursor));
                let read = tokio::task::spawn_blocking(move || {
                    let lines = read_new(&at, &mut c);
                    (lines, c)
                })
                .await;
                let Ok((lines, c)) = read else {
                    continue;
                };
                *cursor = c;
                let chunk = render(id, &lines);
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
        let mut cursor = Cursor {
            file: std::fs::File::open(&path).ok(),
            offset: len,
            partial: Vec::new(),
        };
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        write!(f, "four\nfi").unwrap();
        assert_eq!(read_new(&path, &mut cursor), vec!["four"]);
        writeln!(f, "ve").unwrap();
        assert_eq!(read_new(&path, &mut cursor), vec!["five"]);
        // Written to, then rotated, and the new file already longer than our offset: the
        // old file's rest comes first, nothing is lost.
        writeln!(f, "six").unwrap();
        drop(f);
        std::fs::rename(&path, dir.path().join("a.log.1")).unwrap();
        std::fs::write(&path, "seven, a line longer than everything before it\n").unwrap();
        assert_eq!(
            read_new(&path, &mut cursor),
            vec!["six", "seven, a line longer than everything before it"]
        );
        // Rotated twice between reads: said, not silent.
        std::fs::rename(&path, dir.path().join("a.log.1")).unwrap();
        std::fs::write(&path, "x\n").unwrap();
        std::fs::rename(&path, dir.path().join("a.log.1")).unwrap();
        std::fs::write(&path, "nine\n").unwrap();
        let lines = read_new(&path, &mut cursor);
        assert!(lines[0].contains("lines skipped"), "{lines:?}");
        assert_eq!(lines.last().unwrap(), "nine");
    }
}
