//! Directory backups end to end (no server needed): restore, encryption, every kind of damage
//! verify must name, a full filesystem, leftovers, retention, and hostile archives.

mod common;

use common::{flip_byte, truncate};
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::Path;
use tcf_backup::{
    Backups, CheckStatus, Identities, Level, Policy, Settings, Silent, Source, Trigger,
};

fn settings(repo: &Path, tree: &Path) -> Settings {
    Settings {
        repository: repo.to_path_buf(),
        recipients: vec![],
        retention: None,
        pg_bin_dir: None,
        sources: [(
            "uploads".to_string(),
            Source::Directory {
                path: tree.to_path_buf(),
            },
        )]
        .into(),
    }
}

fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b")).unwrap();
    fs::write(
        root.join("a/b/report.txt"),
        "quarterly numbers\n".repeat(100),
    )
    .unwrap();
    fs::write(
        root.join("top.bin"),
        (0..5000u32)
            .flat_map(|i| i.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    std::os::unix::fs::symlink("a/b/report.txt", root.join("latest")).unwrap();
    fs::create_dir(root.join("empty")).unwrap();
}

/// Relative path → content (files) or "-> target" (links) or "/" (directories).
fn snapshot(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_symlink() {
                out.push((
                    rel,
                    format!("-> {}", fs::read_link(&p).unwrap().display()).into_bytes(),
                ));
            } else if md.is_dir() {
                out.push((rel, b"/".to_vec()));
                stack.push(p);
            } else {
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn restore_brings_the_tree_back() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("uploads");
    make_tree(&tree);
    let before = snapshot(&tree);
    let backups = Backups::new(settings(&tmp.path().join("repo"), &tree));
    let m = backups.create(Trigger::Manual, None, &Silent).unwrap();
    assert_eq!(
        m.artifacts[0].expect,
        tcf_backup::Expectation::Files {
            files: 2,
            directories: 3,
            symlinks: 1,
            bytes: 1800 + 20000
        }
    );
    assert!(
        backups
            .verify(&m.id, Level::Restore, &Identities::none(), &Silent)
            .unwrap()
            .ok
    );

    fs::remove_dir_all(tree.join("a")).unwrap();
    fs::write(tree.join("top.bin"), "overwritten").unwrap();
    fs::write(tree.join("stray"), "new").unwrap();
    let report = backups
        .restore(&m.id, Some("uploads"), &Identities::none(), &Silent)
        .unwrap();
    assert_eq!(snapshot(&tree), before);
    // The recovery point holds what was overwritten.
    let recovery = backups
        .repository()
        .manifest(report.recovery_point.as_ref().unwrap())
        .unwrap();
    assert_eq!(
        recovery.trigger,
        Trigger::RecoveryPoint {
            restoring: m.id.clone()
        }
    );
    // Nothing left beside the tree.
    let siblings: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(siblings.len(), 2, "{siblings:?}");
}

#[test]
fn encrypted_round_trip_needs_the_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("uploads");
    make_tree(&tree);
    let before = snapshot(&tree);
    let identity = age::x25519::Identity::generate();
    let mut s = settings(&tmp.path().join("repo"), &tree);
    s.recipients = vec![identity.to_public().to_string()];
    let backups = Backups::new(s);
    let m = backups.create(Trigger::Manual, None, &Silent).unwrap();
    let art = &m.artifacts[0];
    assert!(
        art.encrypted && art.file.ends_with(".tar.zst.age"),
        "{art:?}"
    );
    let stored = fs::read(backups.repository().backup_dir(&m.id).join(&art.file)).unwrap();
    assert!(stored.starts_with(b"age-encryption.org/v1"));
    assert!(!stored.windows(9).any(|w| w == b"quarterly"));
    // Checksums need no identity.
    assert!(
        backups
            .verify(&m.id, Level::Checksums, &Identities::none(), &Silent)
            .unwrap()
            .ok
    );
    // A restore-verify without the identity could not run: reported as such, not as a pass.
    let report = backups
        .verify(&m.id, Level::Restore, &Identities::none(), &Silent)
        .unwrap();
    assert!(!report.ok);
    assert_eq!(
        report.artifacts[0].status,
        CheckStatus::NotRun,
        "{report:#?}"
    );
    // With the identity file, it runs and passes, and restore brings the tree back.
    let key = tmp.path().join("key.txt");
    use age::secrecy::ExposeSecret;
    fs::write(&key, format!("{}\n", identity.to_string().expose_secret())).unwrap();
    let ids = Identities::from_file(&key).unwrap();
    assert_eq!(backups.last_passed_verify(Level::Restore).unwrap(), None);
    // Each backup keeps its last verification only: the restore-verify that could not run
    // replaced the passing checksum check.
    assert_eq!(backups.last_passed_verify(Level::Checksums).unwrap(), None);
    assert!(
        backups
            .verify(&m.id, Level::Restore, &ids, &Silent)
            .unwrap()
            .ok
    );
    assert!(backups
        .last_passed_verify(Level::Restore)
        .unwrap()
        .is_some());
    fs::remove_dir_all(&tree).unwrap();
    backups.restore(&m.id, None, &ids, &Silent).unwrap();
    assert_eq!(snapshot(&tree), before);
}

#[test]
fn verify_names_what_is_damaged() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("uploads");
    make_tree(&tree);
    let backups = Backups::new(settings(&tmp.path().join("repo"), &tree));
    let m = backups.create(Trigger::Manual, None, &Silent).unwrap();
    let dir = backups.repository().backup_dir(&m.id);
    let art = dir.join(&m.artifacts[0].file);
    let good = fs::read(&art).unwrap();
    let verify = || {
        backups
            .verify(&m.id, Level::Restore, &Identities::none(), &Silent)
            .unwrap()
    };
    assert!(verify().ok);

    flip_byte(&art);
    let r = verify();
    assert!(!r.ok);
    assert_eq!(r.artifacts[0].artifact, m.artifacts[0].file);
    assert!(
        r.artifacts[0].detail[0].contains("does not match the recorded"),
        "{r:#?}"
    );
    // The failure is recorded, so retention does not count this backup as verified.
    assert!(!backups.list().unwrap()[0].last_verify.as_ref().unwrap().ok);

    fs::write(&art, &good).unwrap();
    truncate(&art);
    let r = verify();
    assert!(
        !r.ok && r.artifacts[0].detail[0].contains("truncated"),
        "{r:#?}"
    );

    fs::remove_file(&art).unwrap();
    let r = verify();
    assert!(
        !r.ok && r.artifacts[0].detail[0].contains("missing"),
        "{r:#?}"
    );
    fs::write(&art, &good).unwrap();
    assert!(verify().ok);

    let manifest = dir.join("manifest.json");
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(&manifest, text.replace("\"manual\"", "\"schedule\"")).unwrap();
    let r = verify();
    assert!(
        !r.ok && r.problems[0].contains("manifest.json does not match its checksum"),
        "{r:#?}"
    );

    fs::remove_file(&manifest).unwrap();
    let r = verify();
    assert!(
        !r.ok && r.problems[0].contains("manifest.json is missing"),
        "{r:#?}"
    );
    let listed = backups.list().unwrap();
    assert!(listed[0].manifest.as_ref().unwrap_err().contains("missing"));
    let err = backups
        .restore(&m.id, None, &Identities::none(), &Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("manifest.json is missing"), "{err}");
}

/// A small tmpfs as the repository: a backup that does not fit fails with a clear error and
/// leaves nothing that looks like a backup; the next run cleans what an interrupted run left.
#[test]
fn full_filesystem_leaves_no_backup() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts a tmpfs and must run as root (CI does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    fs::create_dir(&repo).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &repo,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=512k"),
    )
    .expect("mounting a tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(&repo);

    let tree = tmp.path().join("uploads");
    fs::create_dir(&tree).unwrap();
    // Random bytes do not compress: 2 MiB cannot fit in 512 KiB.
    let mut f = fs::File::create(tree.join("big.bin")).unwrap();
    for _ in 0..512 {
        let chunk: Vec<u8> = (0..4096).map(|_| fastrand::u8(..)).collect();
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    let backups = Backups::new(settings(&repo, &tree));
    let err = backups
        .create(Trigger::Manual, None, &Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        err.contains("writing the artifact uploads.tree.tar.zst"),
        "{err}"
    );
    assert!(backups.list().unwrap().is_empty());
    let names = |p: &Path| -> Vec<String> {
        fs::read_dir(p)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert!(
        !names(&repo).iter().any(|n| n.starts_with(".tmp-")),
        "{:?}",
        names(&repo)
    );

    // A run killed half-way leaves a staging directory: the next run removes it.
    fs::create_dir(repo.join(".tmp-20260101T000000Z-dead")).unwrap();
    fs::write(repo.join(".tmp-20260101T000000Z-dead/half.zst"), b"partial").unwrap();
    fs::remove_file(tree.join("big.bin")).unwrap();
    fs::write(tree.join("small.txt"), "fits").unwrap();
    let m = backups.create(Trigger::Manual, None, &Silent).unwrap();
    assert!(
        !names(&repo).iter().any(|n| n.starts_with(".tmp-")),
        "{:?}",
        names(&repo)
    );
    assert_eq!(backups.list().unwrap().len(), 1);
    assert_eq!(backups.list().unwrap()[0].id, m.id);
}

#[test]
fn prune_keeps_policy_newest_verified_and_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("uploads");
    make_tree(&tree);
    let mut s = settings(&tmp.path().join("repo"), &tree);
    let backups = Backups::new(s.clone());
    let ids: Vec<String> = (0..4)
        .map(|_| backups.create(Trigger::Manual, None, &Silent).unwrap().id)
        .collect();
    // No policy: refused. An empty one: refused.
    assert!(backups
        .prune(true, &BTreeSet::new(), &Silent)
        .unwrap_err()
        .to_string()
        .contains("no retention policy"));
    s.retention = Some(Policy::default());
    assert!(Backups::new(s.clone())
        .prune(true, &BTreeSet::new(), &Silent)
        .unwrap_err()
        .to_string()
        .contains("every backup would be deleted"));

    // Make only the oldest verified: damage the newer ones' records by failing a verify.
    for id in &ids[1..] {
        let art = backups.repository().manifest(id).unwrap().artifacts[0]
            .file
            .clone();
        let path = backups.repository().backup_dir(id).join(&art);
        let good = fs::read(&path).unwrap();
        flip_byte(&path);
        assert!(
            !backups
                .verify(id, Level::Checksums, &Identities::none(), &Silent)
                .unwrap()
                .ok
        );
        fs::write(&path, good).unwrap();
    }
    s.retention = Some(Policy {
        keep_last: 1,
        ..Policy::default()
    });
    let backups = Backups::new(s);
    let pinned: BTreeSet<String> = [ids[1].clone()].into();
    let dry = backups.prune(true, &pinned, &Silent).unwrap();
    let kept: Vec<(&str, Vec<String>)> = dry
        .decisions
        .iter()
        .filter(|d| d.keep)
        .map(|d| (d.id.as_str(), d.reasons.clone()))
        .collect();
    assert_eq!(
        kept,
        vec![
            (ids[3].as_str(), vec!["last".to_string()]),
            (ids[1].as_str(), vec!["pinned".to_string()]),
            (ids[0].as_str(), vec!["newest verified".to_string()]),
        ]
    );
    assert_eq!(
        backups.list().unwrap().len(),
        4,
        "a dry run removes nothing"
    );
    backups.prune(false, &pinned, &Silent).unwrap();
    let left: Vec<String> = backups.list().unwrap().into_iter().map(|l| l.id).collect();
    assert_eq!(left, vec![ids[0].clone(), ids[1].clone(), ids[3].clone()]);
}

/// Raw tar bytes, so the archive can hold what tar libraries refuse to write.
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn hostile_archives_are_refused() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let abs = format!("{}/abs-evil", outside.display());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            raw_tar(&[
                ("ok.txt", Regular, "", b"fine"),
                ("../outside/evil", Regular, "", b"x"),
            ]),
            "`..`",
        ),
        (
            "absolute",
            raw_tar(&[(&abs, Regular, "", b"x")]),
            "absolute path",
        ),
        (
            "symlink out",
            raw_tar(&[("link", Symlink, outside.to_str().unwrap(), b"")]),
            "outside the target",
        ),
        (
            "relative symlink out",
            raw_tar(&[
                ("d", Directory, "", b""),
                ("d/link", Symlink, "../../outside", b""),
            ]),
            "outside the target",
        ),
        (
            "write through a link",
            raw_tar(&[
                ("sub", Directory, "", b""),
                ("l", Symlink, "sub", b""),
                ("l/evil", Regular, "", b"x"),
            ]),
            "written through the link",
        ),
        (
            "chain of links",
            raw_tar(&[("a", Symlink, ".", b""), ("b", Symlink, "a/..", b"")]),
            "outside the target",
        ),
        (
            "hard link out",
            raw_tar(&[("h", Link, "../outside/x", b"")]),
            "`..`",
        ),
        (
            "device",
            raw_tar(&[("dev", tar::EntryType::Char, "", b"")]),
            "special files",
        ),
    ];
    for (name, bytes, expected) in cases {
        let target = tmp
            .path()
            .join(format!("target-{}", name.replace(' ', "-")));
        fs::create_dir(&target).unwrap();
        let err = tcf_backup::directory::extract(&mut bytes.as_slice(), &target, "evil.tar")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expected) && err.contains("evil.tar"),
            "{name}: {err}"
        );
        assert!(
            fs::read_dir(&outside).unwrap().next().is_none(),
            "{name} wrote outside the target"
        );
    }

    // Through `restore`: a backup whose archive was replaced by a hostile one (and the manifest
    // re-signed to match) is refused and the live tree is untouched.
    let tree = tmp.path().join("uploads");
    make_tree(&tree);
    let before = snapshot(&tree);
    let backups = Backups::new(settings(&tmp.path().join("repo"), &tree));
    let mut m = backups.create(Trigger::Manual, None, &Silent).unwrap();
    let dir = backups.repository().backup_dir(&m.id);
    let art = dir.join(&m.artifacts[0].file);
    let hostile = raw_tar(&[
        ("ok.txt", Regular, "", b"fine"),
        ("../outside/evil", Regular, "", b"x"),
    ]);
    fs::remove_file(&art).unwrap();
    let mut w =
        tcf_backup::pipeline::ArtifactWriter::create(&art, &tcf_backup::Recipients::default())
            .unwrap();
    w.write_all(&hostile).unwrap();
    let sums = w.finish().unwrap();
    let a = &mut m.artifacts[0];
    (a.size, a.sha256, a.content_size, a.content_sha256) = (
        sums.size,
        sums.sha256,
        sums.content_size,
        sums.content_sha256,
    );
    fs::write(dir.join("manifest.json"), m.to_file_bytes().unwrap()).unwrap();
    let err = backups
        .restore(&m.id, None, &Identities::none(), &Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is refused") && err.contains("`..`"), "{err}");
    assert_eq!(snapshot(&tree), before);
    assert!(fs::read_dir(&outside).unwrap().next().is_none());
    let leftovers: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tcf-restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// What `prod deploy --backup` calls: a checked backup of every source, with the release in its
/// trigger; a failing source fails it and leaves nothing.
#[tokio::test]
async fn pre_deploy_backup_records_the_release() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("uploads");
    make_tree(&tree);
    let s = settings(&tmp.path().join("repo"), &tree);
    let id = tcf_backup::pre_deploy_backup(s.clone(), "42".into(), std::sync::Arc::new(Silent))
        .await
        .unwrap();
    let backups = Backups::new(s.clone());
    let m = backups.repository().manifest(&id).unwrap();
    assert_eq!(
        m.trigger,
        Trigger::PreDeploy {
            release: "42".into()
        }
    );
    assert!(backups.list().unwrap()[0].last_verify.as_ref().unwrap().ok);

    let mut broken = s;
    broken.sources.insert(
        "gone".into(),
        Source::Directory {
            path: tmp.path().join("nothing-here"),
        },
    );
    let err = tcf_backup::pre_deploy_backup(broken, "43".into(), std::sync::Arc::new(Silent))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing-here"), "{err}");
    assert_eq!(backups.list().unwrap().len(), 1);
}
