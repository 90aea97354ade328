//! Layer unpacking never writes outside the layer root, whatever the tar says
//! (SECURITY-CHECKLIST items 13-16).

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use common::{import_layer_expect_err, import_layers, Fixture, ID_BASE};
use runbox_image::{ImageError, UnsafeEntry};
use runbox_testkit::hostile::{kind, RawEntry, TarBuilder};

fn reason(e: &ImageError) -> &UnsafeEntry {
    match e {
        ImageError::UnsafeTarEntry { reason, .. } => reason,
        other => panic!("expected UnsafeTarEntry, got {other:?}"),
    }
}

#[test]
fn rejects_tar_entry_escaping_root() {
    let f = Fixture::new();
    for name in ["../outside/pwned", "a/../../outside/pwned", "./../pwned"] {
        let layer = TarBuilder::new().dir("a").file(name, b"x").finish();
        let err = import_layer_expect_err(&f, layer);
        assert_eq!(reason(&err), &UnsafeEntry::ParentDir, "{name}");
        assert_eq!(err.code(), runbox_core::ErrorCode::ImageInvalid);
    }
}

#[test]
fn rejects_absolute_tar_entry() {
    let f = Fixture::new();
    let target = f.outside.join("pwned");
    let layer = TarBuilder::new()
        .file(target.to_str().unwrap(), b"x")
        .finish();
    let err = import_layer_expect_err(&f, layer);
    assert_eq!(reason(&err), &UnsafeEntry::AbsolutePath);
    assert!(!target.exists());
}

#[test]
fn symlink_then_child_entry_is_rejected() {
    let f = Fixture::new();
    // Relative escape (l -> ..), absolute escape (l -> /outside), nested.
    let outside = f.outside.to_str().unwrap().to_owned();
    let cases: Vec<Vec<u8>> = vec![
        TarBuilder::new()
            .symlink("l", "..")
            .file("l/a", b"x")
            .finish(),
        TarBuilder::new()
            .symlink("l", &outside)
            .file("l/pwned", b"x")
            .finish(),
        TarBuilder::new()
            .dir("d")
            .symlink("d/l", &outside)
            .file("d/l/pwned", b"x")
            .finish(),
        TarBuilder::new()
            .symlink("l", &outside)
            .dir("l/sub")
            .finish(),
        TarBuilder::new()
            .symlink("l", &outside)
            .symlink("l/evil", "/etc")
            .finish(),
    ];
    for layer in cases {
        let err = import_layer_expect_err(&f, layer);
        assert_eq!(reason(&err), &UnsafeEntry::ThroughSymlink);
    }
}

#[test]
fn symlink_named_dot_or_root_is_rejected() {
    let f = Fixture::new();
    let outside = f.outside.to_str().unwrap().to_owned();
    let err = import_layer_expect_err(
        &f,
        TarBuilder::new()
            .symlink(".", &outside)
            .file("pwned", b"x")
            .finish(),
    );
    assert_eq!(reason(&err), &UnsafeEntry::ReplacesRoot);
    let err = import_layer_expect_err(&f, TarBuilder::new().symlink("./", &outside).finish());
    assert_eq!(reason(&err), &UnsafeEntry::ReplacesRoot);
    let err = import_layer_expect_err(&f, TarBuilder::new().symlink("/", &outside).finish());
    assert_eq!(reason(&err), &UnsafeEntry::AbsolutePath);
    let err = import_layer_expect_err(&f, TarBuilder::new().file(".", b"x").finish());
    assert_eq!(reason(&err), &UnsafeEntry::ReplacesRoot);
}

#[test]
fn symlink_then_same_named_dir_replaces_the_link() {
    // containerd CVE-2021-32760 / umoci CVE-2021-29136 class: the directory entry
    // must not follow the symlink; it replaces it.
    let f = Fixture::new();
    let outside = f.outside.to_str().unwrap().to_owned();
    let before_outside = runbox_testkit::hostile::snapshot_tree(&f.outside);
    let layer = TarBuilder::new()
        .symlink("d", &outside)
        .dir_with("d", 0o700, 0, 0)
        .file("d/inside", b"ok")
        .finish();
    let report = import_layers(&f, &[layer]);
    let root = f.store.layer_dir(&report.image.layers[0].diff_id);
    let d = std::fs::symlink_metadata(root.join("d")).unwrap();
    assert!(d.is_dir(), "d must be a real directory now");
    assert_eq!(d.permissions().mode() & 0o7777, 0o700);
    assert_eq!(std::fs::read(root.join("d/inside")).unwrap(), b"ok");
    assert_eq!(
        before_outside,
        runbox_testkit::hostile::snapshot_tree(&f.outside)
    );
}

#[test]
fn later_entry_replaces_earlier_without_following_it() {
    let f = Fixture::new();
    let target = f.outside.join("sentinel");
    let layer = TarBuilder::new()
        .file("f", b"first")
        .symlink("f", target.to_str().unwrap())
        .file("f", b"last")
        .dir("g")
        .file("g/child", b"c")
        .file("g", b"file over dir")
        .finish();
    let report = import_layers(&f, &[layer]);
    let root = f.store.layer_dir(&report.image.layers[0].diff_id);
    let m = std::fs::symlink_metadata(root.join("f")).unwrap();
    assert!(m.is_file());
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"last");
    assert_eq!(std::fs::read(root.join("g")).unwrap(), b"file over dir");
    assert_eq!(std::fs::read(&target).unwrap(), b"untouched");
}

#[test]
fn hardlink_outside_layer_is_rejected() {
    let f = Fixture::new();
    let sentinel = f.outside.join("sentinel");
    let outside = f.outside.to_str().unwrap().to_owned();
    let err = import_layer_expect_err(
        &f,
        TarBuilder::new()
            .hardlink("x", sentinel.to_str().unwrap())
            .finish(),
    );
    assert_eq!(reason(&err), &UnsafeEntry::HardlinkAbsolute);
    let err = import_layer_expect_err(
        &f,
        TarBuilder::new()
            .hardlink("x", "../../outside/sentinel")
            .finish(),
    );
    assert_eq!(reason(&err), &UnsafeEntry::HardlinkParentDir);
    let err = import_layer_expect_err(
        &f,
        TarBuilder::new()
            .symlink("l", &outside)
            .hardlink("x", "l/sentinel")
            .finish(),
    );
    assert_eq!(reason(&err), &UnsafeEntry::HardlinkThroughSymlink);
    let err = import_layer_expect_err(&f, TarBuilder::new().hardlink("x", "missing").finish());
    assert!(matches!(reason(&err), UnsafeEntry::HardlinkMissing { .. }));
    let err = import_layer_expect_err(&f, TarBuilder::new().dir("d").hardlink("x", "d").finish());
    assert_eq!(reason(&err), &UnsafeEntry::HardlinkToDirectory);
    assert_eq!(
        std::fs::metadata(&sentinel).unwrap().nlink(),
        1,
        "no new link to the host file"
    );
}

#[test]
fn hardlink_inside_layer_is_created() {
    let f = Fixture::new();
    let layer = TarBuilder::new()
        .dir("a")
        .file("a/f", b"data")
        .hardlink("b", "a/f")
        .hardlink("./c", "./a/f")
        .finish();
    let report = import_layers(&f, &[layer]);
    let root = f.store.layer_dir(&report.image.layers[0].diff_id);
    let a = std::fs::metadata(root.join("a/f")).unwrap();
    let b = std::fs::metadata(root.join("b")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 3);
}

#[test]
fn whiteout_and_opaque_dir_use_overlay_format() {
    let f = Fixture::new();
    let lower = TarBuilder::new()
        .dir("a")
        .file("a/gone", b"1")
        .file("a/keep", b"2")
        .dir("d")
        .file("d/old", b"3")
        .finish();
    let upper = TarBuilder::new()
        .dir("a")
        .whiteout("a/gone")
        .dir("d")
        .opaque("d")
        .file("d/new", b"4")
        .finish();
    let report = import_layers(&f, &[lower, upper]);
    let up = f.store.layer_dir(&report.image.layers[1].diff_id);
    let w = std::fs::symlink_metadata(up.join("a/gone")).unwrap();
    assert!(
        w.file_type().is_char_device(),
        "whiteout is a character device"
    );
    assert_eq!(w.rdev(), 0, "whiteout device is 0:0");
    assert!(
        !up.join("a/.wh.gone").exists(),
        "the .wh. file itself is not created"
    );
    assert!(!up.join("d/.wh..wh..opq").exists());
    let mut buf = [0u8; 8];
    let n = rustix::fs::getxattr(
        up.join("d").as_path(),
        "trusted.overlay.opaque",
        &mut buf[..],
    )
    .expect("opaque xattr");
    assert_eq!(&buf[..n], b"y");
    assert!(rustix::fs::getxattr(
        up.join("a").as_path(),
        "trusted.overlay.opaque",
        &mut buf[..]
    )
    .is_err());
}

#[test]
fn whiteout_through_symlink_is_rejected() {
    let f = Fixture::new();
    let outside = f.outside.to_str().unwrap().to_owned();
    for layer in [
        TarBuilder::new()
            .symlink("l", &outside)
            .whiteout("l/sentinel")
            .finish(),
        TarBuilder::new()
            .symlink("l", &outside)
            .opaque("l")
            .finish(),
    ] {
        let err = import_layer_expect_err(&f, layer);
        assert_eq!(reason(&err), &UnsafeEntry::ThroughSymlink);
    }
    let mut buf = [0u8; 8];
    assert!(
        rustix::fs::getxattr(f.outside.as_path(), "trusted.overlay.opaque", &mut buf[..]).is_err()
    );
    let err = import_layer_expect_err(&f, TarBuilder::new().file(".wh..", b"").finish());
    assert_eq!(reason(&err), &UnsafeEntry::BadWhiteout);
}

#[test]
fn devices_are_skipped_and_fifos_created() {
    let f = Fixture::new();
    let layer = TarBuilder::new()
        .char_device("null", 1, 3)
        .fifo("pipe")
        .file("x", b"1")
        .finish();
    let report = import_layers(&f, &[layer]);
    let root = f.store.layer_dir(&report.image.layers[0].diff_id);
    assert!(
        !root.join("null").exists(),
        "device nodes are never created"
    );
    assert!(std::fs::symlink_metadata(root.join("pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn only_user_xattrs_are_applied() {
    let f = Fixture::new();
    let layer = TarBuilder::new()
        .pax(&[
            ("SCHILY.xattr.user.note", b"hello"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            (
                "SCHILY.xattr.security.capability",
                b"\x01\x00\x00\x02\xff\xff\xff\xff",
            ),
        ])
        .dir("d")
        .pax(&[
            ("SCHILY.xattr.user.f", b"v"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        ])
        .file("d/f", b"x")
        .finish();
    let report = import_layers(&f, &[layer]);
    let root = f.store.layer_dir(&report.image.layers[0].diff_id);
    let mut buf = [0u8; 64];
    let n = rustix::fs::getxattr(root.join("d").as_path(), "user.note", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"hello");
    assert!(rustix::fs::getxattr(
        root.join("d").as_path(),
        "trusted.overlay.opaque",
        &mut buf[..]
    )
    .is_err());
    assert!(rustix::fs::getxattr(
        root.join("d").as_path(),
        "security.capability",
        &mut buf[..]
    )
    .is_err());
    let n = rustix::fs::getxattr(root.join("d/f").as_path(), "user.f", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"v");
    assert!(rustix::fs::getxattr(
        root.join("d/f").as_path(),
        "trusted.overlay.redirect",
        &mut buf[..]
    )
    .is_err());
}

#[test]
fn uids_are_shifted_by_id_base() {
    let f = Fixture::new();
    let layer = TarBuilder::new()
        .dir_with("home", 0o755, 0, 0)
        .dir_with("home/runner", 0o750, 1000, 1000)
        .file_with("home/runner/suid", b"x", 0o4755, 1000, 1001)
        .file_with("big", b"x", 0o100644, 70_000, 4_000_000_000)
        .entry(RawEntry {
            name: b"link",
            kind: kind::SYMLINK,
            link: b"big",
            uid: 5,
            gid: 6,
            mode: 0o777,
            ..RawEntry::default()
        })
        .finish();
    let report = import_layers(&f, &[layer]);
    let root = f.store.layer_dir(&report.image.layers[0].diff_id);
    let m = std::fs::symlink_metadata(root.join("home/runner")).unwrap();
    assert_eq!((m.uid(), m.gid()), (ID_BASE + 1000, ID_BASE + 1000));
    assert_eq!(m.permissions().mode() & 0o7777, 0o750);
    let m = std::fs::symlink_metadata(root.join("home/runner/suid")).unwrap();
    assert_eq!((m.uid(), m.gid()), (ID_BASE + 1000, ID_BASE + 1001));
    assert_eq!(
        m.permissions().mode() & 0o7777,
        0o4755,
        "set-id bits survive the chown"
    );
    let m = std::fs::symlink_metadata(root.join("big")).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (ID_BASE + 65534, ID_BASE + 65534),
        "ids >= 65536 become nobody"
    );
    assert_eq!(m.permissions().mode() & 0o7777, 0o644);
    let m = std::fs::symlink_metadata(root.join("link")).unwrap();
    assert_eq!((m.uid(), m.gid()), (ID_BASE + 5, ID_BASE + 6));
    let m = std::fs::symlink_metadata(&root).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (ID_BASE, ID_BASE),
        "layer root owned by sandbox root"
    );
    assert_eq!(m.mtime(), 0);
    let m = std::fs::symlink_metadata(root.join("home")).unwrap();
    assert_eq!(
        m.mtime(),
        1_700_000_000,
        "directory mtimes applied after their contents"
    );
}

#[test]
fn unsupported_and_sparse_entries_are_rejected() {
    let f = Fixture::new();
    let err = import_layer_expect_err(
        &f,
        TarBuilder::new()
            .entry(RawEntry {
                name: b"v",
                kind: b'V',
                ..RawEntry::default()
            })
            .finish(),
    );
    assert_eq!(reason(&err), &UnsafeEntry::UnsupportedType('V'));
    let err = import_layer_expect_err(
        &f,
        TarBuilder::new()
            .entry(RawEntry {
                name: b"s",
                kind: kind::GNU_SPARSE,
                ..RawEntry::default()
            })
            .finish(),
    );
    assert_eq!(reason(&err), &UnsafeEntry::Sparse);
    let err = import_layer_expect_err(
        &f,
        TarBuilder::new()
            .pax(&[("path", b"a\0b")])
            .file("x", b"1")
            .finish(),
    );
    assert_eq!(reason(&err), &UnsafeEntry::NulByte);
}

#[test]
fn parent_directories_are_created_like_docker() {
    let f = Fixture::new();
    let report = import_layers(&f, &[TarBuilder::new().file("a/b/c", b"x").finish()]);
    let root = f.store.layer_dir(&report.image.layers[0].diff_id);
    let m = std::fs::symlink_metadata(root.join("a/b")).unwrap();
    assert!(m.is_dir());
    assert_eq!(m.permissions().mode() & 0o7777, 0o755);
    assert_eq!(m.uid(), ID_BASE);
}

#[test]
fn one_bad_layer_among_many_leaves_nothing() {
    let f = Fixture::new();
    let dir = f.input("layout");
    let mut layers: Vec<Vec<u8>> = (0..5)
        .map(|i| {
            TarBuilder::new()
                .file(&format!("ok{i}"), &vec![7u8; 100_000])
                .finish()
        })
        .collect();
    layers[3] = TarBuilder::new()
        .symlink("l", "/")
        .file("l/pwned", b"x")
        .finish();
    runbox_testkit::hostile::layout_with_layers(
        &dir,
        &layers,
        runbox_image::writer::LayerCompression::Gzip,
    );
    let before = f.snapshot();
    let err = f.import(&dir).unwrap_err();
    assert_eq!(reason(&err), &UnsafeEntry::ThroughSymlink);
    f.assert_unchanged(&before);
    assert!(
        f.layers_in_store().is_empty(),
        "layers unpacked in parallel are not committed"
    );
    assert!(!std::path::Path::new("/pwned").exists());
}
