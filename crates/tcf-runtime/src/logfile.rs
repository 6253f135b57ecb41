//! Per-instance log files with a size cap: past the cap the file is renamed to `NAME.1`
//! (replacing the previous one) and a new file is started, so a chatty instance never fills the disk.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An instance's log, shared by the tasks that copy its output into it.
pub type SharedLog = std::sync::Arc<std::sync::Mutex<CappedLog>>;

/// Open the log of the instance `spec` describes, as every runtime does before starting it.
pub fn open_instance_log(spec: &crate::InstanceSpec) -> Result<SharedLog, crate::RuntimeError> {
    let log = CappedLog::open(&spec.log_path, spec.log_max_size).map_err(|source| {
        crate::RuntimeError::Log {
            path: spec.log_path.clone(),
            source,
        }
    })?;
    Ok(std::sync::Arc::new(std::sync::Mutex::new(log)))
}

pub struct CappedLog {
    path: PathBuf,
    file: File,
    written: u64,
    cap: u64,
}

impl CappedLog {
    pub fn open(path: &Path, cap: u64) -> std::io::Result<CappedLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(CappedLog {
            path: path.to_path_buf(),
            file,
            written,
            cap: cap.max(1024),
        })
    }

    /// Append bytes; rotates first when they would push the file past its cap.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.written + bytes.len() as u64 > self.cap && self.written > 0 {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            std::fs::rename(&self.path, &rotated)?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.written = 0;
        }
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_past_the_cap_and_keeps_one_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut log = CappedLog::open(&path, 1024).unwrap();
        let line = [b'x'; 100];
        for _ in 0..25 {
            log.write(&line).unwrap();
        }
        let cur = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(dir.path().join("a.log.1")).unwrap().len();
        assert!(cur <= 1024 && old <= 1024, "cur {cur} old {old}");
        assert_eq!((cur + old) % 100, 0);
    }
}
