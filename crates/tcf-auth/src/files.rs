//! Private files: the state directory 0700, the store and keys 0600, and a check for modes
//! that let other users read them.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Create `path` with `bytes`, mode 0600 from the start (never briefly readable), refusing to
/// replace an existing file.
pub fn create_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Each existing path among `paths` that others (group or world) can read or enter.
pub fn readable_by_others(paths: &[&Path]) -> Vec<String> {
    paths
        .iter()
        .filter_map(|p| {
            let mode = std::fs::metadata(p).ok()?.permissions().mode() & 0o777;
            (mode & 0o077 != 0).then(|| {
                format!(
                    "{} has mode {mode:04o}: other users can read it; run `chmod {} {}`",
                    p.display(),
                    if p.is_dir() { "700" } else { "600" },
                    p.display()
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_loose_modes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        create_private_file(&f, b"x").unwrap();
        assert!(create_private_file(&f, b"y").is_err());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(readable_by_others(&[dir.path(), &f]).is_empty());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warnings = readable_by_others(&[dir.path(), &f]);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("mode 0644"), "{warnings:?}");
    }
}
