//! Directories: a tar archive of the tree that records symbolic links as links (it follows
//! nothing, so nothing outside the tree gets in), and an extractor that refuses archives with
//! absolute paths, `..` components, links leading out of the target or special files, and never
//! writes through a link.

use crate::error::{BackupError, IoContext, Result};
use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeStats {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// Archive the tree at `root` into `out`. Sockets, FIFOs and devices are skipped (and counted
/// in the returned list of skipped paths).
pub fn archive(root: &Path, out: &mut dyn Write) -> Result<(TreeStats, Vec<PathBuf>)> {
    let meta = fs::metadata(root).context(|| format!("reading {}", root.display()))?;
    if !meta.is_dir() {
        return Err(BackupError::Invalid(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    let mut stats = TreeStats::default();
    let mut skipped = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .context(|| format!("reading {}", dir.display()))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for name in names.into_iter().rev() {
            let rel_path = rel.join(&name);
            let full = root.join(&rel_path);
            let md =
                fs::symlink_metadata(&full).context(|| format!("reading {}", full.display()))?;
            let ft = md.file_type();
            if ft.is_dir() {
                builder.append_dir(&rel_path, &full)
            } else if ft.is_file() || ft.is_symlink() {
                builder.append_path_with_name(&full, &rel_path)
            } else {
                skipped.push(rel_path);
                continue;
            }
            .context(|| format!("archiving {}", full.display()))?;
            if ft.is_dir() {
                stats.directories += 1;
                stack.push(rel_path);
            } else if ft.is_symlink() {
                stats.symlinks += 1;
            } else {
                stats.files += 1;
                stats.bytes += md.len();
            }
        }
    }
    builder
        .finish()
        .context(|| "finishing the tar archive".to_string())?;
    Ok((stats, skipped))
}

/// What is applied to a directory once everything in it is written.
struct DirectoryMeta {
    path: PathBuf,
    mode: u32,
    mtime: u64,
    /// (uid, gid), restored when running as root.
    owner: Option<(u64, u64)>,
}

/// A path inside the archive, checked: relative, no `..`, no root or prefix.
fn safe_relative(path: &Path) -> std::result::Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("{} has a `..` component", path.display())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{} is an absolute path", path.display()))
            }
        }
    }
    Ok(out)
}

/// Where a symlink at `entry` pointing to `target` leads, relative to the archive's root, if it
/// stays inside it (judged by the text of the link; the physical check follows extraction).
fn link_inside(entry: &Path, target: &Path) -> Option<PathBuf> {
    if target.is_absolute() {
        return None;
    }
    let mut parts: Vec<std::ffi::OsString> = entry
        .parent()
        .map(|p| p.components().map(|c| c.as_os_str().to_owned()).collect())
        .unwrap_or_default();
    for c in target.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => return None,
        }
    }
    Some(parts.iter().collect())
}

/// No existing component of `rel`'s parents under `root` may be a symlink: extraction never
/// writes through a link.
fn no_links_on_the_way(root: &Path, rel: &Path) -> std::result::Result<(), String> {
    let mut at = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            at.push(c);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(format!(
                        "{} would be written through the link {}",
                        rel.display(),
                        at.display()
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Extract the archive read from `input` into `dest`, a new empty directory. On a refused entry
/// it stops and returns the problem; the caller removes `dest`. `artifact` names the archive in
/// errors.
pub fn extract(input: &mut dyn Read, dest: &Path, artifact: &str) -> Result<TreeStats> {
    let hostile = |problem: String| BackupError::HostileArchive {
        artifact: artifact.to_string(),
        problem,
        target: dest.to_path_buf(),
    };
    let mut archive = tar::Archive::new(input);
    let mut stats = TreeStats::default();
    let mut regular: HashSet<PathBuf> = HashSet::new();
    let mut links: Vec<PathBuf> = Vec::new();
    let as_root = nix::unistd::geteuid().is_root();
    let mut directories: Vec<DirectoryMeta> = Vec::new();
    for entry in archive
        .entries()
        .context(|| format!("reading the archive {artifact}"))?
    {
        let mut entry = entry.context(|| format!("reading the archive {artifact}"))?;
        let raw_path = entry
            .path()
            .context(|| format!("reading the archive {artifact}"))?
            .into_owned();
        let rel = safe_relative(&raw_path).map_err(hostile)?;
        if rel.as_os_str().is_empty() {
            continue; // "./" itself
        }
        no_links_on_the_way(dest, &rel).map_err(hostile)?;
        let target = dest.join(&rel);
        let kind = entry.header().entry_type();
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).context(|| format!("creating {}", parent.display()))?;
        }
        if !kind.is_dir() && fs::symlink_metadata(&target).is_ok() {
            return Err(hostile(format!("{} appears twice", rel.display())));
        }
        match kind {
            tar::EntryType::Directory => {
                fs::create_dir_all(&target).context(|| format!("creating {}", target.display()))?;
                let mode = entry.header().mode().unwrap_or(0o755);
                let mtime = entry.header().mtime().unwrap_or(0);
                let owner = entry.header().uid().ok().zip(entry.header().gid().ok());
                directories.push(DirectoryMeta {
                    path: target.clone(),
                    mode,
                    mtime,
                    owner,
                });
                stats.directories += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                stats.bytes += entry.header().size().unwrap_or(0);
                entry.set_preserve_mtime(true);
                entry
                    .unpack(&target)
                    .context(|| format!("writing {}", target.display()))?;
                regular.insert(rel.clone());
                stats.files += 1;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .context(|| format!("reading the archive {artifact}"))?
                    .ok_or_else(|| hostile(format!("the link {} has no target", rel.display())))?
                    .into_owned();
                if link_inside(&rel, &link).is_none() {
                    return Err(hostile(format!(
                        "the link {} points to {}, outside the target",
                        rel.display(),
                        link.display()
                    )));
                }
                std::os::unix::fs::symlink(&link, &target)
                    .context(|| format!("creating the link {}", target.display()))?;
                links.push(rel.clone());
                stats.symlinks += 1;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .context(|| format!("reading the archive {artifact}"))?
                    .ok_or_else(|| {
                        hostile(format!("the hard link {} has no target", rel.display()))
                    })?
                    .into_owned();
                let source = safe_relative(&link).map_err(hostile)?;
                if !regular.contains(&source) {
                    return Err(hostile(format!(
                        "the hard link {} refers to {}, which is not a file earlier in the archive",
                        rel.display(),
                        link.display()
                    )));
                }
                fs::hard_link(dest.join(&source), &target)
                    .context(|| format!("creating the hard link {}", target.display()))?;
                stats.files += 1;
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            other => {
                return Err(hostile(format!(
                    "{} is a {other:?} entry (special files are not restored)",
                    rel.display()
                )))
            }
        }
        if as_root && !kind.is_dir() {
            let (uid, gid) = (entry.header().uid().ok(), entry.header().gid().ok());
            if let (Some(uid), Some(gid)) = (uid, gid) {
                let _ = std::os::unix::fs::lchown(&target, Some(uid as u32), Some(gid as u32));
            }
        }
    }
    // Physically, too: every link that resolves must resolve inside (a chain of links can
    // leave a tree even when each one's text stays inside).
    let root = fs::canonicalize(dest).context(|| format!("resolving {}", dest.display()))?;
    for link in &links {
        if let Ok(resolved) = fs::canonicalize(dest.join(link)) {
            if !resolved.starts_with(&root) {
                return Err(hostile(format!(
                    "the link {} leads to {}, outside the target",
                    link.display(),
                    resolved.display()
                )));
            }
        }
    }
    // Directory modes last, so a read-only directory did not stop its own entries.
    for DirectoryMeta {
        path: dir,
        mode,
        mtime,
        owner,
    } in directories.into_iter().rev()
    {
        if let (true, Some((uid, gid))) = (as_root, owner) {
            let _ = std::os::unix::fs::lchown(&dir, Some(uid as u32), Some(gid as u32));
        }
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(mode & 0o7777));
        let t = nix::sys::time::TimeSpec::new(mtime as i64, 0);
        let _ = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &dir,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
    Ok(stats)
}

/// Replace `target` with the extracted tree in `staged` (a sibling of it): the old tree is
/// renamed aside, the new one renamed into place, then the old one removed.
pub fn swap_into_place(staged: &Path, target: &Path, id: &str) -> Result<()> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "restore".into());
    let aside = target.with_file_name(format!(".{name}.tcf-replaced-{id}"));
    let existed = target.exists();
    if existed {
        fs::rename(target, &aside).context(|| format!("moving {} aside", target.display()))?;
    }
    if let Err(e) = fs::rename(staged, target) {
        if existed {
            let _ = fs::rename(&aside, target);
        }
        return Err(BackupError::Io {
            context: format!("moving the restored tree into {}", target.display()),
            source: e,
        });
    }
    if existed {
        fs::remove_dir_all(&aside)
            .context(|| format!("removing the replaced tree {}", aside.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets() {
        assert_eq!(
            link_inside(Path::new("a/b"), Path::new("../c")),
            Some(PathBuf::from("c"))
        );
        assert_eq!(link_inside(Path::new("a/b"), Path::new("../../c")), None);
        assert_eq!(link_inside(Path::new("a"), Path::new("/etc")), None);
        assert!(safe_relative(Path::new("../x")).is_err());
        assert!(safe_relative(Path::new("/x")).is_err());
        assert_eq!(
            safe_relative(Path::new("./a/b")).unwrap(),
            PathBuf::from("a/b")
        );
    }
}
