//! Unit tests of the snapshot walk, tar writer and tree digest on real files
//! (as root: owners, device nodes and `trusted.*` xattrs need it).

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use runbox_core::IdMap;
use rustix::fs::{chownat, makedev, mknodat, AtFlags, FileType, Gid, Mode, Uid};

use super::walk::open_regular;
use super::*;
use crate::error::{ImageError, SnapshotRefusal};
use crate::fsutil;

const BASE: u32 = 2_000_000_000;
const IDS: IdMap = IdMap { base: BASE };

fn chown(path: &Path, uid: u32, gid: u32) {
    chownat(
        rustix::fs::CWD,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// A directory whose every entry is owned by root of the sandbox.
fn own_all(root: &Path) {
    chown(root, BASE, BASE);
    for e in walk_paths(root) {
        chown(&e, BASE, BASE);
    }
}

fn walk_paths(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

fn write(dir: &Path, opts: &UpperTarOptions) -> Result<(Vec<u8>, UpperTarStats), ImageError> {
    let fd = fsutil::open_dir(dir).unwrap();
    write_upper_tar(fd.as_fd(), IDS, opts, Vec::new())
}

fn tar_of(dir: &Path) -> (Vec<u8>, UpperTarStats) {
    write(dir, &UpperTarOptions::default()).expect("write_upper_tar")
}

/// (path, type, link name) of every entry, as the tar crate reads them.
fn entries(tar: &[u8]) -> Vec<(Vec<u8>, tar::EntryType, Option<Vec<u8>>)> {
    let mut a = tar::Archive::new(tar);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path_bytes().into_owned(),
                e.header().entry_type(),
                e.link_name_bytes().map(|l| l.into_owned()),
            )
        })
        .collect()
}

fn refusal(e: ImageError) -> (String, SnapshotRefusal) {
    match e {
        ImageError::SnapshotEntry { path, reason } => (path, reason),
        other => panic!("expected a snapshot refusal, got {other:?}"),
    }
}

#[test]
fn symlinked_directories_are_stored_as_links_and_never_entered() {
    let tmp = tempfile::tempdir().unwrap();
    let secret_dir = tmp.path().join("secret");
    std::fs::create_dir(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("key"), b"TOP-SECRET-CONTENT").unwrap();
    let up = tmp.path().join("upper");
    std::fs::create_dir(&up).unwrap();
    symlink("/etc", up.join("a")).unwrap();
    symlink(&secret_dir, up.join("b")).unwrap();
    symlink("../../../../../../etc/shadow", up.join("c")).unwrap();
    own_all(&up);

    let (tar, stats) = tar_of(&up);
    let e = entries(&tar);
    let names: Vec<_> = e.iter().map(|(p, _, _)| p.clone()).collect();
    assert_eq!(
        names,
        vec![b"./".to_vec(), b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );
    assert_eq!(e[1].1, tar::EntryType::Symlink);
    assert_eq!(e[1].2.as_deref(), Some(&b"/etc"[..]));
    assert_eq!(
        e[3].2.as_deref(),
        Some(&b"../../../../../../etc/shadow"[..])
    );
    assert_eq!(stats.symlinks, 3);
    assert_eq!(stats.bytes, 0);
    assert!(!tar.windows(10).any(|w| w == b"TOP-SECRET"));
    // /etc/passwd's content is not there either.
    assert!(!tar.windows(8).any(|w| w == b"root:x:0"));
}

#[test]
fn a_file_swapped_for_a_symlink_or_fifo_is_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("target"), b"host file").unwrap();
    symlink(dir.join("target"), dir.join("link")).unwrap();
    mknodat(
        rustix::fs::CWD,
        dir.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let fd = fsutil::open_dir(dir).unwrap();
    let (path, reason) = refusal(
        open_regular(fd.as_fd(), b"link", b"sub/link", Path::new("<t>")).expect_err("a symlink"),
    );
    assert_eq!(path, "sub/link");
    assert!(
        matches!(reason, SnapshotRefusal::Changed { .. }),
        "{reason}"
    );
    // A FIFO opens at once (O_NONBLOCK) and is refused after fstat.
    let (_, reason) =
        refusal(open_regular(fd.as_fd(), b"fifo", b"fifo", Path::new("<t>")).expect_err("a FIFO"));
    assert!(
        matches!(reason, SnapshotRefusal::Changed { .. }),
        "{reason}"
    );
    let (mut f, st) = open_regular(fd.as_fd(), b"target", b"target", Path::new("<t>")).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!((s.as_str(), st.st_size), ("host file", 9));
}

#[test]
fn ids_outside_the_sandbox_range_are_refused_naming_the_path() {
    for (uid, gid, which) in [
        (0, BASE, "uid"),
        (BASE + IdMap::SIZE, BASE, "uid"),
        (BASE + 5, BASE - 1, "gid"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let up = tmp.path();
        std::fs::create_dir(up.join("d")).unwrap();
        std::fs::write(up.join("d/f"), b"x").unwrap();
        own_all(up);
        chown(&up.join("d/f"), uid, gid);
        let (path, reason) = refusal(write(up, &UpperTarOptions::default()).unwrap_err());
        assert_eq!(path, "d/f");
        match reason {
            SnapshotRefusal::IdOutOfRange { which: w, base, .. } => {
                assert_eq!((w, base), (which, BASE))
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn size_and_entry_limits_are_specific_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let up = tmp.path();
    std::fs::write(up.join("a"), vec![1u8; 600]).unwrap();
    std::fs::write(up.join("b"), vec![2u8; 600]).unwrap();
    own_all(up);
    let err = write(
        up,
        &UpperTarOptions {
            max_bytes: 1000,
            ..UpperTarOptions::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::SnapshotTooLarge { limit: 1000 }),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .contains("larger than the snapshot limit of 1000"));
    assert_eq!(err.code(), runbox_core::ErrorCode::ImageInvalid);
    // Exactly at the limit passes.
    let (_, stats) = write(
        up,
        &UpperTarOptions {
            max_bytes: 1200,
            ..UpperTarOptions::default()
        },
    )
    .unwrap();
    assert_eq!(stats.bytes, 1200);

    let err = write(
        up,
        &UpperTarOptions {
            max_entries: 2,
            ..UpperTarOptions::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::SnapshotTooManyEntries { limit: 2 }),
        "{err:?}"
    );
}

#[test]
fn device_nodes_other_than_whiteouts_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let up = tmp.path();
    own_all(up);
    mknodat(
        rustix::fs::CWD,
        up.join("null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        makedev(1, 3),
    )
    .unwrap();
    chown(&up.join("null"), BASE, BASE);
    let (path, reason) = refusal(write(up, &UpperTarOptions::default()).unwrap_err());
    assert_eq!(path, "null");
    assert_eq!(reason, SnapshotRefusal::Device { major: 1, minor: 3 });
    // Excluded, it is fine.
    let (tar, _) = write(
        up,
        &UpperTarOptions {
            exclude: vec!["null".into()],
            ..UpperTarOptions::default()
        },
    )
    .unwrap();
    assert_eq!(entries(&tar).len(), 1);
}

#[test]
fn overlay_features_the_layer_cannot_carry_are_refused() {
    for (name, on_dir) in [
        ("trusted.overlay.redirect", true),
        ("trusted.overlay.metacopy", false),
        ("trusted.overlay.nlink", false),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let up = tmp.path();
        std::fs::create_dir(up.join("d")).unwrap();
        std::fs::write(up.join("f"), b"x").unwrap();
        own_all(up);
        let target = up.join(if on_dir { "d" } else { "f" });
        rustix::fs::setxattr(&target, name, b"/x", rustix::fs::XattrFlags::empty()).unwrap();
        let (path, reason) = refusal(write(up, &UpperTarOptions::default()).unwrap_err());
        assert_eq!(path, if on_dir { "d" } else { "f" });
        assert_eq!(
            reason,
            SnapshotRefusal::OverlayXattr {
                name: name.to_owned()
            }
        );
        assert!(reason
            .to_string()
            .contains("runbox mounts its overlays without"));
    }
}

#[test]
fn names_and_xattrs_a_layer_cannot_hold_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let up = tmp.path();
    std::fs::write(up.join(".wh.sneaky"), b"x").unwrap();
    own_all(up);
    let (path, reason) = refusal(write(up, &UpperTarOptions::default()).unwrap_err());
    assert_eq!(
        (path.as_str(), reason),
        (".wh.sneaky", SnapshotRefusal::ReservedName)
    );

    let tmp = tempfile::tempdir().unwrap();
    let up = tmp.path();
    std::fs::write(up.join("f"), b"x").unwrap();
    own_all(up);
    rustix::fs::setxattr(
        up.join("f"),
        "user.bin",
        b"a\nb",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let (path, reason) = refusal(write(up, &UpperTarOptions::default()).unwrap_err());
    assert_eq!(path, "f");
    assert!(matches!(reason, SnapshotRefusal::Xattr { .. }), "{reason}");

    for bad in ["", "/", "a/../b", "./a", "a//b"] {
        let err = write(
            up,
            &UpperTarOptions {
                exclude: vec![bad.into()],
                ..UpperTarOptions::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, ImageError::SnapshotArgument { .. }),
            "{bad}: {err:?}"
        );
    }
}

#[test]
fn deep_trees_are_walked_with_few_descriptors_and_long_paths_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let up = tmp.path().join("u");
    let mut p = up.clone();
    for i in 0..100 {
        p.push(format!("d{i:02}"));
    }
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("leaf"), b"leaf").unwrap();
    // A sibling after the deep branch at several levels: the walk must come back
    // to ancestors whose descriptors it closed.
    let mut q = up.clone();
    for i in 0..60 {
        q.push(format!("d{i:02}"));
        if i % 10 == 0 {
            std::fs::write(q.join("zz-after"), b"after").unwrap();
        }
    }
    own_all(&up);
    let (tar, stats) = tar_of(&up);
    assert_eq!(stats.dirs, 101);
    assert_eq!(stats.files, 7);
    let e = entries(&tar);
    let leaf = e
        .iter()
        .position(|(p, _, _)| p.ends_with(b"/leaf"))
        .unwrap();
    let after = e.iter().position(|(p, _, _)| p == b"d00/zz-after").unwrap();
    assert!(leaf < after, "depth first, sorted");
    assert_eq!(e.last().unwrap().0, b"d00/zz-after".to_vec());
    let d1 = tree_digest(&up).unwrap();
    assert_eq!(d1, tree_digest(&up).unwrap());

    // A path over 4096 bytes cannot be unpacked: refused before writing.
    // (Made through descriptors: the whole path is longer than PATH_MAX.)
    let tmp = tempfile::tempdir().unwrap();
    let up = tmp.path();
    chown(up, BASE, BASE);
    let mut cur = fsutil::open_dir(up).unwrap();
    let name = "x".repeat(250);
    for _ in 0..20 {
        rustix::fs::mkdirat(&cur, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
        let next = fsutil::open_dir_beneath(cur.as_fd(), std::ffi::OsStr::new(&name)).unwrap();
        rustix::fs::fchown(&next, Some(Uid::from_raw(BASE)), Some(Gid::from_raw(BASE))).unwrap();
        cur = next;
    }
    let (_, reason) = refusal(write(up, &UpperTarOptions::default()).unwrap_err());
    assert_eq!(reason, SnapshotRefusal::PathTooLong { limit: 4096 });
}

/// An upper directory with one of everything.
fn sample_upper(up: &Path) {
    std::fs::create_dir_all(up.join("etc")).unwrap();
    std::fs::write(up.join("etc/app.conf"), b"key=value\n").unwrap();
    std::fs::write(up.join("etc/hosts"), b"127.0.0.1 x\n").unwrap();
    std::fs::create_dir_all(up.join("dev")).unwrap();
    std::fs::create_dir_all(up.join("data/sub")).unwrap();
    std::fs::write(up.join("data/sub/db"), vec![7u8; 100_000]).unwrap();
    std::fs::hard_link(up.join("data/sub/db"), up.join("data/db-link")).unwrap();
    symlink("/etc/passwd", up.join("passwd")).unwrap();
    std::fs::write(up.join("suid"), b"#!/bin/sh\n").unwrap();
    own_all(up);
    std::fs::set_permissions(up.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    mknodat(
        rustix::fs::CWD,
        up.join("gone"),
        FileType::CharacterDevice,
        Mode::empty(),
        makedev(0, 0),
    )
    .unwrap();
}

/// A change to a tree, named.
type Change = (&'static str, Box<dyn Fn(&Path)>);

#[test]
fn output_is_deterministic_and_the_digest_sees_every_change() {
    let tmp = tempfile::tempdir().unwrap();
    let up = tmp.path().join("u");
    sample_upper(&up);
    let (t1, s1) = tar_of(&up);
    let (t2, s2) = tar_of(&up);
    assert_eq!(t1, t2, "the same tree gives the same bytes");
    assert_eq!(s1, s2);
    assert_eq!(s1.hardlinks, 1);
    assert_eq!(s1.whiteouts, 1);
    let e = entries(&t1);
    let names: Vec<String> = e
        .iter()
        .map(|(p, _, _)| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "./",
            "data/",
            "data/db-link",
            "data/sub/",
            "data/sub/db",
            "dev/",
            "etc/",
            "etc/app.conf",
            "etc/hosts",
            ".wh.gone",
            "passwd",
            "suid"
        ]
    );
    // The hard link points at the first path written.
    assert_eq!(e[4].1, tar::EntryType::Link);
    assert_eq!(e[4].2.as_deref(), Some(&b"data/db-link"[..]));

    let d0 = tree_digest(&up).unwrap();
    assert_eq!(d0, tree_digest(&up).unwrap(), "stable");
    let fd = fsutil::open_dir(&up).unwrap();
    assert_eq!(d0, tree_digest_fd(fd.as_fd()).unwrap());

    let mut changes: Vec<Change> = Vec::new();
    changes.push((
        "one byte",
        Box::new(|up| {
            let mut c = std::fs::read(up.join("data/sub/db")).unwrap();
            c[50_000] ^= 1;
            std::fs::write(up.join("data/sub/db"), c).unwrap();
        }),
    ));
    changes.push((
        "a file added",
        Box::new(|up| {
            std::fs::write(up.join("etc/new"), b"").unwrap();
            chown(&up.join("etc/new"), BASE, BASE);
        }),
    ));
    changes.push((
        "a file removed",
        Box::new(|up| std::fs::remove_file(up.join("etc/hosts")).unwrap()),
    ));
    changes.push((
        "a mode",
        Box::new(|up| {
            std::fs::set_permissions(
                up.join("etc/app.conf"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap()
        }),
    ));
    changes.push((
        "a symlink target",
        Box::new(|up| {
            std::fs::remove_file(up.join("passwd")).unwrap();
            symlink("/etc/shadow", up.join("passwd")).unwrap();
            chown(&up.join("passwd"), BASE, BASE);
        }),
    ));
    changes.push((
        "an owner",
        Box::new(|up| chown(&up.join("suid"), BASE + 1, BASE)),
    ));
    changes.push((
        "a user xattr",
        Box::new(|up| {
            rustix::fs::setxattr(
                up.join("etc"),
                "user.x",
                b"1",
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap()
        }),
    ));
    changes.push((
        "an opaque marker",
        Box::new(|up| {
            rustix::fs::setxattr(
                up.join("data/sub"),
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap()
        }),
    ));
    changes.push((
        "a hard link broken into a copy",
        Box::new(|up| {
            std::fs::remove_file(up.join("data/db-link")).unwrap();
            std::fs::copy(up.join("data/sub/db"), up.join("data/db-link")).unwrap();
            chown(&up.join("data/db-link"), BASE, BASE);
        }),
    ));
    let mut seen = vec![d0];
    for (what, change) in changes {
        change(&up);
        let d = tree_digest(&up).unwrap();
        assert!(!seen.contains(&d), "{what}: the digest did not change");
        seen.push(d);
        let (t, _) = tar_of(&up);
        assert_ne!(t, t1, "{what}: the tar did not change");
    }
}

#[test]
fn digest_encoding_is_unambiguous_between_names_and_contents() {
    // "ab" + "" vs "a" + "b": the same bytes concatenated, different trees.
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("one");
    let two = tmp.path().join("two");
    std::fs::create_dir(&one).unwrap();
    std::fs::create_dir(&two).unwrap();
    std::fs::write(one.join("ab"), b"").unwrap();
    std::fs::write(two.join("a"), b"b").unwrap();
    assert_ne!(tree_digest(&one).unwrap(), tree_digest(&two).unwrap());
    let _ = File::open(&one).unwrap();
}
