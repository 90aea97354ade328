//! Snapshot layers end to end, as root on real files: an upper directory written
//! by hand (and one written by a real overlayfs mount) becomes a tar with
//! `write_upper_tar`, an image with `commit_image` on top of a base image, and
//! comes back out of the store's unpacker in overlay form.

mod common;

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{Fixture, ID_BASE};
use runbox_core::IdMap;
use runbox_image::writer::{ImageSpec, LayerCompression, LayoutWriter, Tree};
use runbox_image::{
    tree_digest, write_upper_tar, CommitFile, CommitSpec, ImageConfig, ImageRecord, NoProgress,
    UpperTarOptions, UpperTarStats,
};
use rustix::fs::{
    chownat, makedev, mknodat, utimensat, AtFlags, FileType, Gid, Mode, Timespec, Timestamps, Uid,
    XattrFlags,
};

const IDS: IdMap = IdMap { base: ID_BASE };

fn chown(path: &Path, uid: u32, gid: u32) {
    chownat(
        rustix::fs::CWD,
        path,
        Some(Uid::from_raw(ID_BASE + uid)),
        Some(Gid::from_raw(ID_BASE + gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn set_mtime(path: &Path, secs: i64) {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    utimensat(
        rustix::fs::CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()).unwrap();
}

/// A small base image: /etc/passwd, /etc/motd, /data/old, /dir/{a,b}.
fn base_image(f: &Fixture) -> ImageRecord {
    let mut tree = Tree::new();
    tree.dir("etc", 0o755)
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        )
        .file("etc/motd", 0o644, b"base motd\n".to_vec())
        .dir("data", 0o755)
        .file("data/old", 0o644, b"old data\n".to_vec())
        .dir("dir", 0o755)
        .file("dir/a", 0o644, b"a\n".to_vec())
        .file("dir/b", 0o644, b"b\n".to_vec());
    let mut second = Tree::new();
    second
        .dir("usr", 0o755)
        .file("usr/tool", 0o755, b"#!/bin/sh\n".to_vec());
    let dir = f.input(&format!("base-{}", rand::random::<u32>()));
    let mut w = LayoutWriter::create(&dir).unwrap();
    w.add_layer_tree(&tree, LayerCompression::Gzip).unwrap();
    w.add_layer_tree(&second, LayerCompression::Gzip).unwrap();
    w.finish(&ImageSpec {
        config: ImageConfig {
            cmd: Some(vec!["/bin/sh".into()]),
            ..ImageConfig::default()
        },
        ..ImageSpec::default()
    })
    .unwrap();
    f.import_named(&dir, "base:1").unwrap().image
}

const LONG_DIRS: [&str; 3] = ["l", "m", "n"];

/// The 300-byte relative path of the deep file.
fn long_path() -> String {
    let a = "a".repeat(120);
    let b = "b".repeat(120);
    let c = "c".repeat(300 - 2 - 120 - 1 - 120 - 1 - 5);
    let p = format!("{}/{a}/{b}/{c}.data", LONG_DIRS[0]);
    assert_eq!(p.len(), 300);
    p
}

/// An upper directory with one of everything, owners in the id range.
fn build_upper(up: &Path) {
    std::fs::create_dir(up).unwrap();
    for d in ["etc", "dev", "proc", "data", "opaque", "sticky"] {
        std::fs::create_dir(up.join(d)).unwrap();
    }
    std::fs::write(up.join("etc/hosts"), b"127.0.0.1 sandbox\n").unwrap();
    std::fs::write(up.join("etc/app.conf"), b"listen=5432\n").unwrap();
    std::fs::write(
        up.join("data/db"),
        (0..200_000u32).map(|i| i as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::hard_link(up.join("data/db"), up.join("data/db.hardlink")).unwrap();
    std::fs::write(up.join("opaque/new"), b"only this\n").unwrap();
    std::fs::write(up.join("suid"), b"#!/bin/sh\nid\n").unwrap();
    std::fs::write(up.join(OsStr::from_bytes(b"weird\n\xffname")), b"weird\n").unwrap();
    std::fs::write(up.join("copied-up"), b"modified lower file\n").unwrap();
    symlink("/etc/passwd", up.join("passwd-link")).unwrap();
    let long = up.join(long_path());
    std::fs::create_dir_all(long.parent().unwrap()).unwrap();
    std::fs::write(&long, b"deep\n").unwrap();
    mknodat(
        rustix::fs::CWD,
        up.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    mknodat(
        rustix::fs::CWD,
        up.join("dev/null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        makedev(1, 3),
    )
    .unwrap();
    let _ = std::os::unix::net::UnixListener::bind(up.join("socket")).unwrap();

    // Everything owned by root of the sandbox, then a few others.
    let mut stack = vec![up.to_owned()];
    chown(up, 0, 0);
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            chown(&p, 0, 0);
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    chown(&up.join("data"), 999, 999);
    chown(&up.join("data/db"), 999, 998);
    chown(&up.join("etc/app.conf"), 1000, 1000);
    chmod(&up.join("data"), 0o700);
    chmod(&up.join("data/db"), 0o600);
    chmod(&up.join("etc/app.conf"), 0o640);
    chmod(&up.join("suid"), 0o4755);
    chmod(&up.join("sticky"), 0o1777);
    set_xattr(&up.join("data/db"), "user.checksum", b"sha256:abc\0binary");
    set_xattr(&up.join("opaque"), "trusted.overlay.opaque", b"y");
    set_xattr(
        &up.join("copied-up"),
        "trusted.overlay.origin",
        b"\0\xfb\x1d\0\x01",
    );
    set_xattr(up, "trusted.overlay.impure", b"y");
    set_mtime(&up.join("etc/app.conf"), 1_600_000_000);
    // Whiteouts as overlayfs makes them: 0:0 devices owned by the host's root.
    for w in ["gone", "dir"] {
        mknodat(
            rustix::fs::CWD,
            up.join(w),
            FileType::CharacterDevice,
            Mode::empty(),
            makedev(0, 0),
        )
        .unwrap();
    }
}

fn snapshot_opts() -> UpperTarOptions {
    UpperTarOptions {
        exclude: vec!["dev".into(), "proc".into(), "etc/hosts".into()],
        ..UpperTarOptions::default()
    }
}

fn write_tar(up: &Path, out: &Path) -> UpperTarStats {
    let fd = rustix::fs::open(
        up,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    let file = std::fs::File::create(out).unwrap();
    let (_, stats) = write_upper_tar(fd.as_fd(), IDS, &snapshot_opts(), file).unwrap();
    stats
}

fn blob_count(f: &Fixture) -> usize {
    std::fs::read_dir(f.data.join("blobs/sha256"))
        .unwrap()
        .count()
}

#[test]
fn an_upper_directory_round_trips_through_commit_image() {
    let f = Fixture::new();
    let base = base_image(&f);
    let up = f.tmp.path().join("upper");
    build_upper(&up);
    let tar = f.tmp.path().join("upper.tar");
    let stats = write_tar(&up, &tar);
    assert_eq!(
        stats,
        UpperTarStats {
            // ./ etc/ etc/app.conf data/ data/db data/db.hardlink opaque/
            // opaque/.wh..wh..opq opaque/new sticky/ suid weird copied-up
            // passwd-link fifo l/ l/a/ l/a/b/ l/a/b/c.data .wh.gone .wh.dir
            entries: 21,
            files: 7,
            dirs: 8,
            symlinks: 1,
            hardlinks: 1,
            fifos: 1,
            whiteouts: 2,
            opaque_dirs: 1,
            sockets_skipped: 1,
            bytes: 200_000 + 12 + 10 + 13 + 6 + 20 + 5,
        }
    );
    let blobs_before = blob_count(&f);

    let config = ImageConfig {
        env: vec!["PGDATA=/data".into()],
        cmd: Some(vec!["postgres".into()]),
        ..base.config.clone()
    };
    let report = f
        .store
        .commit_image(
            &CommitSpec {
                name: "runbox-snapshot/postgres:1a2b3c4d5e6f".into(),
                base: base.clone(),
                extra_layers: Vec::new(),
                new_layer_tar: Some(tar.clone()),
                config: config.clone(),
            },
            &NoProgress,
        )
        .unwrap();
    let image = &report.image;
    assert_eq!(image.names, vec!["runbox-snapshot/postgres:1a2b3c4d5e6f"]);
    assert_eq!(image.layers.len(), 3);
    assert_eq!(image.layers[..2], base.layers[..]);
    assert_eq!(image.config.env, config.env);
    assert_eq!(image.config.cmd, config.cmd);
    assert_eq!((report.layers_unpacked, report.layers_reused), (1, 2));
    assert_eq!(
        blob_count(&f),
        blobs_before + 3,
        "only the new layer, the config and the manifest are added"
    );
    assert!(f.data.join("tmp").read_dir().unwrap().next().is_none());
    let listed = f.store.list().unwrap();
    assert!(listed
        .iter()
        .any(|r| r.manifest_digest == image.manifest_digest));
    let new = &image.layers[2];
    assert_eq!(new.media_type, "application/vnd.oci.image.layer.v1.tar");

    // The unpacked layer, entry by entry.
    let l = f.store.layer_dir(&new.diff_id);
    let meta = |p: &str| std::fs::symlink_metadata(l.join(p)).unwrap();
    let owner = |p: &str| {
        let m = meta(p);
        (m.uid() - ID_BASE, m.gid() - ID_BASE)
    };
    assert_eq!(meta("").mode() & 0o7777, 0o755);
    assert_eq!(owner(""), (0, 0));
    for gone in ["dev", "proc", "etc/hosts", "socket"] {
        assert!(
            std::fs::symlink_metadata(l.join(gone)).is_err(),
            "{gone} was excluded or skipped"
        );
    }
    assert_eq!(
        std::fs::read(l.join("etc/app.conf")).unwrap(),
        b"listen=5432\n"
    );
    assert_eq!(meta("etc/app.conf").mode() & 0o7777, 0o640);
    assert_eq!(owner("etc/app.conf"), (1000, 1000));
    assert_eq!(meta("etc/app.conf").mtime(), 1_600_000_000);
    assert_eq!(meta("data").mode() & 0o7777, 0o700);
    assert_eq!(owner("data"), (999, 999));
    assert_eq!(owner("data/db"), (999, 998));
    assert_eq!(
        std::fs::read(l.join("data/db")).unwrap(),
        std::fs::read(up.join("data/db")).unwrap()
    );
    assert_eq!(
        xattr(&l.join("data/db"), "user.checksum").as_deref(),
        Some(&b"sha256:abc\0binary"[..])
    );
    assert_eq!(meta("data/db").ino(), meta("data/db.hardlink").ino());
    assert_eq!(meta("data/db").nlink(), 2);
    let link = meta("passwd-link");
    assert!(link.file_type().is_symlink(), "still a symlink");
    assert_eq!(
        std::fs::read_link(l.join("passwd-link")).unwrap(),
        PathBuf::from("/etc/passwd")
    );
    assert!(meta("fifo").file_type().is_fifo());
    assert_eq!(meta("fifo").mode() & 0o7777, 0o600);
    assert_eq!(meta("suid").mode() & 0o7777, 0o4755);
    assert_eq!(meta("sticky").mode() & 0o7777, 0o1777);
    assert_eq!(
        std::fs::read(l.join(OsStr::from_bytes(b"weird\n\xffname"))).unwrap(),
        b"weird\n"
    );
    assert_eq!(std::fs::read(l.join(long_path())).unwrap(), b"deep\n");
    // Overlay metadata back in overlay form; bookkeeping xattrs gone.
    for w in ["gone", "dir"] {
        let m = meta(w);
        assert!(m.file_type().is_char_device(), "{w} is a whiteout");
        assert_eq!(m.rdev(), 0);
    }
    assert_eq!(
        xattr(&l.join("opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(std::fs::read(l.join("opaque/new")).unwrap(), b"only this\n");
    assert!(std::fs::symlink_metadata(l.join("opaque/.wh..wh..opq")).is_err());
    assert_eq!(xattr(&l.join("copied-up"), "trusted.overlay.origin"), None);
    assert_eq!(xattr(&l, "trusted.overlay.impure"), None);

    // The digest of the unpacked layer: stable, and what the store computes.
    let d = tree_digest(&l).unwrap();
    assert_eq!(d, f.store.layer_tree_digest(&new.diff_id).unwrap());
    assert_eq!(d, tree_digest(&l).unwrap());

    // Committing the same content again gives the same image, with the new name.
    let again = f
        .store
        .commit_image(
            &CommitSpec {
                name: "runbox-snapshot/postgres:again".into(),
                base: base.clone(),
                extra_layers: Vec::new(),
                new_layer_tar: Some(tar),
                config,
            },
            &NoProgress,
        )
        .unwrap();
    assert!(again.already_present);
    assert_eq!(again.image.manifest_digest, image.manifest_digest);
}

#[test]
fn commit_image_reuses_base_and_dataset_layers_and_gc_keeps_them() {
    let f = Fixture::new();
    let base = base_image(&f);

    // A dataset from host files: streamed, owned by root, parents 0755, mtime 0.
    let host = f.tmp.path().join("host");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("big.csv"), vec![b'x'; 3 * 1024 * 1024]).unwrap();
    std::fs::write(host.join("small.txt"), b"hello\n").unwrap();
    let dataset = f
        .store
        .commit_files_image(
            "runbox-dataset/sales:1",
            &[
                CommitFile {
                    path: "/datasets/sales/big.csv".into(),
                    host: host.join("big.csv"),
                    mode: 0o644,
                },
                CommitFile {
                    path: "/datasets/small.txt".into(),
                    host: host.join("small.txt"),
                    mode: 0o600,
                },
            ],
            ImageConfig::default(),
            &NoProgress,
        )
        .unwrap()
        .image;
    assert_eq!(dataset.layers.len(), 1);
    let dl = f.store.layer_dir(&dataset.layers[0].diff_id);
    let m = std::fs::metadata(dl.join("datasets/sales/big.csv")).unwrap();
    assert_eq!(
        (m.len(), m.mode() & 0o7777, m.uid(), m.mtime()),
        (3 << 20, 0o644, ID_BASE, 0)
    );
    let m = std::fs::metadata(dl.join("datasets/sales")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o755, ID_BASE));
    assert_eq!(
        std::fs::read(dl.join("datasets/small.txt")).unwrap(),
        b"hello\n"
    );
    assert_eq!(
        std::fs::metadata(dl.join("datasets/small.txt"))
            .unwrap()
            .mode()
            & 0o7777,
        0o600
    );

    // Bad file lists are refused before anything is written.
    for bad in ["datasets/x", "/a/../b", "/", "/a/.wh.b", "/a//b"] {
        let err = f
            .store
            .commit_files_image(
                "bad:1",
                &[CommitFile {
                    path: bad.into(),
                    host: host.join("small.txt"),
                    mode: 0o644,
                }],
                ImageConfig::default(),
                &NoProgress,
            )
            .unwrap_err();
        assert_eq!(
            err.code(),
            runbox_core::ErrorCode::InvalidArgument,
            "{bad}: {err}"
        );
    }

    let up = f.tmp.path().join("upper");
    std::fs::create_dir(&up).unwrap();
    std::fs::write(up.join("state"), b"provisioned\n").unwrap();
    chown(&up, 0, 0);
    chown(&up.join("state"), 0, 0);
    let tar = f.tmp.path().join("upper.tar");
    write_tar(&up, &tar);

    let blobs_before = blob_count(&f);
    let layers_before = f.layers_in_store().len();
    let snap = f
        .store
        .commit_image(
            &CommitSpec {
                name: "runbox-snapshot/app:1".into(),
                base: base.clone(),
                extra_layers: dataset.layers.clone(),
                new_layer_tar: Some(tar),
                config: base.config.clone(),
            },
            &NoProgress,
        )
        .unwrap()
        .image;
    let mut expected = base.layers.clone();
    expected.extend(dataset.layers.iter().cloned());
    assert_eq!(snap.layers[..3], expected[..]);
    assert_eq!(snap.layers.len(), 4);
    assert_eq!(blob_count(&f), blobs_before + 3);
    assert_eq!(f.layers_in_store().len(), layers_before + 1);

    // gc keeps everything the snapshot uses, even with its sources gone.
    f.store.remove("base:1").unwrap();
    f.store.remove("runbox-dataset/sales:1").unwrap();
    f.store.gc().unwrap();
    for l in &snap.layers {
        assert!(f.store.layer_complete(&l.diff_id));
        assert!(f.store.blob_path(&l.blob_digest).is_file());
    }
    // A layer that is not in the store cannot be reused.
    let mut missing = base.clone();
    missing.layers[0].diff_id = runbox_testkit::hostile::sha256(b"nothing");
    let err = f
        .store
        .commit_image(
            &CommitSpec {
                name: "x:1".into(),
                base: missing,
                extra_layers: Vec::new(),
                new_layer_tar: None,
                config: ImageConfig::default(),
            },
            &NoProgress,
        )
        .unwrap_err();
    assert!(err.to_string().contains("is not in the store"), "{err}");

    f.store.remove("runbox-snapshot/app:1").unwrap();
    assert!(f.layers_in_store().is_empty());
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

fn mount_overlay(
    f: &Fixture,
    image: &ImageRecord,
    upper: Option<(&Path, &Path)>,
    at: &Path,
) -> Unmount {
    std::fs::create_dir_all(at).unwrap();
    let lower: Vec<String> = image
        .layers
        .iter()
        .rev()
        .map(|l| f.store.layer_dir(&l.diff_id).display().to_string())
        .collect();
    let mut opts = format!("lowerdir={}", lower.join(":"));
    if let Some((u, w)) = upper {
        opts.push_str(&format!(
            ",upperdir={},workdir={}",
            u.display(),
            w.display()
        ));
    }
    let opts = std::ffi::CString::new(opts).unwrap();
    rustix::mount::mount(
        "overlay",
        at,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(opts.as_c_str()),
    )
    .expect("mounting overlay (needs root)");
    Unmount(at.to_owned())
}

/// (path, mode, uid, gid, content or link target) of everything below `root`.
fn listing(root: &Path) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let (mode, uid, gid) = (m.mode(), m.uid(), m.gid());
            if m.is_dir() {
                stack.push(p);
                out.push((rel + "/", mode, uid, gid, Vec::new()));
            } else if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec();
                out.push((rel, mode, uid, gid, t));
            } else {
                out.push((rel, mode, uid, gid, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The upper directory a real overlayfs mount writes (copy-up `origin`, `impure`
/// and `uuid` xattrs, whiteouts, an opaque directory) snapshots into a layer
/// whose image shows the same merged tree.
#[test]
fn a_real_overlay_upper_snapshots_to_the_same_merged_view() {
    let f = Fixture::new();
    let base = base_image(&f);
    let scratch = f.tmp.path().join("scratch");
    let (upper, work, merged) = (
        scratch.join("upper"),
        scratch.join("work"),
        scratch.join("merged"),
    );
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    chown(&upper, 0, 0);
    let expected = {
        let _m = mount_overlay(&f, &base, Some((&upper, &work)), &merged);
        std::fs::write(merged.join("data/old"), b"changed in place\n").unwrap(); // copy-up
        std::fs::write(merged.join("data/new"), b"new\n").unwrap();
        chown(&merged.join("data/new"), 70, 70);
        std::fs::remove_file(merged.join("etc/motd")).unwrap(); // whiteout
        std::fs::remove_dir_all(merged.join("dir")).unwrap();
        std::fs::create_dir(merged.join("dir")).unwrap(); // opaque
        chown(&merged.join("dir"), 0, 0);
        std::fs::write(merged.join("dir/c"), b"c\n").unwrap();
        chown(&merged.join("dir/c"), 0, 0);
        symlink("../etc/passwd", merged.join("data/pw")).unwrap();
        chown(&merged.join("data/pw"), 0, 0);
        listing(&merged)
    };
    if xattr(&upper.join("data/old"), "trusted.overlay.origin").is_none() {
        eprintln!("note: this kernel wrote no trusted.overlay.origin on copy-up");
    }
    let tar = f.tmp.path().join("upper.tar");
    let stats = write_tar(&upper, &tar);
    assert!(stats.whiteouts >= 1, "{stats:?}");
    let snap = f
        .store
        .commit_image(
            &CommitSpec {
                name: "runbox-snapshot/real:1".into(),
                base: base.clone(),
                extra_layers: Vec::new(),
                new_layer_tar: Some(tar),
                config: base.config.clone(),
            },
            &NoProgress,
        )
        .unwrap()
        .image;
    let view = f.tmp.path().join("view");
    let _m = mount_overlay(&f, &snap, None, &view);
    let got = listing(&view);
    assert_eq!(got, expected);
    let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
    assert!(!names.contains(&"etc/motd"));
    assert!(!names.contains(&"dir/a"));
    assert!(names.contains(&"dir/c"));
}

/// Prints when each import event happens.
struct Timeline(Instant);

impl runbox_image::ImportProgress for Timeline {
    fn blob_finished(&self, d: &runbox_core::Digest, size: u64) {
        eprintln!(
            "  {:?} blob {} verified ({size} bytes)",
            self.0.elapsed(),
            d.short()
        );
    }
    fn layer_unpack_started(&self, d: &runbox_core::Digest) {
        eprintln!("  {:?} unpack {} started", self.0.elapsed(), d.short());
    }
    fn layer_unpack_finished(&self, d: &runbox_core::Digest, bytes: u64, entries: u64) {
        eprintln!(
            "  {:?} unpack {} finished ({bytes} bytes, {entries} entries)",
            self.0.elapsed(),
            d.short()
        );
    }
}

/// Figures: `write_upper_tar` + `commit_image` for ~100 MB in ~3,000 files.
/// `cargo test -p runbox-image --release --test snapshot -- --ignored --nocapture`
#[test]
#[ignore]
fn measure_100mb_snapshot() {
    let f = Fixture::new();
    let base = base_image(&f);
    let up = f.tmp.path().join("upper");
    std::fs::create_dir(&up).unwrap();
    chown(&up, 0, 0);
    let mut seed = 0x9e3779b97f4a7c15u64;
    for d in 0..30 {
        let dir = up.join(format!("dir{d:02}"));
        std::fs::create_dir(&dir).unwrap();
        chown(&dir, 0, 0);
        for i in 0..100 {
            // Half-compressible content, like database pages.
            let mut buf = vec![0u8; 34 * 1024];
            for chunk in buf.chunks_mut(8).step_by(2) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
            }
            let p = dir.join(format!("file{i:03}"));
            std::fs::write(&p, &buf).unwrap();
            chown(&p, 0, 0);
        }
    }
    let tar = f.tmp.path().join("upper.tar");
    let t = Instant::now();
    let stats = write_tar(&up, &tar);
    let t_tar = t.elapsed();
    let t = Instant::now();
    let report = f
        .store
        .commit_image(
            &CommitSpec {
                name: "runbox-snapshot/measure:1".into(),
                base: base.clone(),
                extra_layers: Vec::new(),
                new_layer_tar: Some(tar.clone()),
                config: base.config.clone(),
            },
            &Timeline(t),
        )
        .unwrap();
    let t_commit = t.elapsed();
    let l = f.store.layer_dir(&report.image.layers[2].diff_id);
    let t = Instant::now();
    tree_digest(&l).unwrap();
    let t_digest = t.elapsed();
    eprintln!(
        "{} files, {} bytes: write_upper_tar {:?}, commit_image {:?} (blob {} bytes, {}), tree_digest {:?}",
        stats.files,
        stats.bytes,
        t_tar,
        t_commit,
        report.image.layers[2].compressed_size,
        report.image.layers[2].media_type,
        t_digest
    );
}
