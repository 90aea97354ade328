//! Every blob is verified against its descriptor before anything parses or
//! decompresses it, and the layout directory cannot make the import read a host
//! file (SECURITY-CHECKLIST item 17).

mod common;

use common::Fixture;
use runbox_core::{Digest, ErrorCode};
use runbox_image::writer::LayerCompression;
use runbox_image::ImageError;
use runbox_testkit::hostile::{self, layout_with_layers, LayoutEditor, TarBuilder};
use serde_json::json;

fn simple_layout(
    f: &Fixture,
    name: &str,
) -> (std::path::PathBuf, runbox_image::writer::WrittenImage) {
    let dir = f.input(name);
    let img = layout_with_layers(
        &dir,
        &[TarBuilder::new().file("hello", b"world").finish()],
        LayerCompression::Gzip,
    );
    (dir, img)
}

#[test]
fn blob_digest_mismatch_rejected_before_decompression() {
    let f = Fixture::new();
    // The layer blob is a hostile tar (it would be refused by the unpacker with
    // UnsafeTarEntry), but its descriptor names other content of the same size:
    // the import must stop at the digest check, before decompressing anything.
    let dir = f.input("layout");
    let hostile_tar = TarBuilder::new().file("../escape", b"x").finish();
    let img = layout_with_layers(&dir, &[hostile_tar], LayerCompression::Gzip);
    let mut ed = LayoutEditor::open(&dir);
    let fake = Digest::from_sha256_bytes(&[7u8; 32]);
    std::fs::copy(
        dir.join("blobs/sha256").join(img.layers[0].digest.hex()),
        dir.join("blobs/sha256").join(fake.hex()),
    )
    .unwrap();
    ed.manifest["layers"][0]["digest"] = json!(fake.to_string());
    ed.save();
    let before = f.snapshot();
    let err = f.import(&dir).unwrap_err();
    match &err {
        ImageError::DigestMismatch {
            what,
            digest,
            actual,
        } => {
            assert_eq!(what, "layer");
            assert_eq!(*digest, fake);
            assert_eq!(*actual, img.layers[0].digest);
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert_eq!(err.code(), ErrorCode::ImageInvalid);
    f.assert_unchanged(&before);
}

#[test]
fn corrupted_layer_blob_is_rejected() {
    let f = Fixture::new();
    let (dir, img) = simple_layout(&f, "layout");
    hostile::corrupt_blob(&dir, &img.layers[0].digest);
    let before = f.snapshot();
    let err = f.import(&dir).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
    f.assert_unchanged(&before);
}

#[test]
fn corrupted_manifest_and_config_are_rejected() {
    let f = Fixture::new();
    let (dir, img) = simple_layout(&f, "m");
    hostile::corrupt_blob(&dir, &img.manifest_digest);
    let before = f.snapshot();
    assert!(
        matches!(f.import(&dir).unwrap_err(), ImageError::DigestMismatch { ref what, .. } if what == "manifest")
    );
    f.assert_unchanged(&before);

    let (dir, img) = simple_layout(&f, "c");
    hostile::corrupt_blob(&dir, &img.config_digest);
    assert!(
        matches!(f.import(&dir).unwrap_err(), ImageError::DigestMismatch { ref what, .. } if what == "config")
    );
    f.assert_unchanged(&before);
}

#[test]
fn descriptor_size_mismatch_rejected() {
    let f = Fixture::new();
    for delta in [-1i64, 1, 1000] {
        let (dir, img) = simple_layout(&f, &format!("layout{delta}"));
        let mut ed = LayoutEditor::open(&dir);
        let size = img.layers[0].size as i64 + delta;
        ed.manifest["layers"][0]["size"] = json!(size);
        ed.save();
        let before = f.snapshot();
        let err = f.import(&dir).unwrap_err();
        match &err {
            ImageError::SizeMismatch { expected, .. } => assert_eq!(*expected as i64, size),
            other => panic!("expected SizeMismatch, got {other:?}"),
        }
        f.assert_unchanged(&before);
    }
}

#[test]
fn symlinked_blob_in_layout_is_not_followed() {
    let f = Fixture::new();
    let (dir, img) = simple_layout(&f, "layout");
    // The symlink points at a host file with exactly the right content: even so
    // the import must not follow it.
    let host_copy = f.outside.join("blob-copy");
    std::fs::copy(
        dir.join("blobs/sha256").join(img.layers[0].digest.hex()),
        &host_copy,
    )
    .unwrap();
    hostile::symlink_blob(&dir, &img.layers[0].digest, &host_copy);
    let before = f.snapshot();
    let err = f.import(&dir).unwrap_err();
    assert!(
        matches!(err, ImageError::UnsafeSourcePath { .. }),
        "{err:?}"
    );
    f.assert_unchanged(&before);

    // A symlinked blobs/ directory is refused the same way.
    let (dir2, _) = simple_layout(&f, "layout2");
    std::fs::rename(dir2.join("blobs"), f.input("elsewhere")).unwrap();
    std::os::unix::fs::symlink(f.input("elsewhere"), dir2.join("blobs")).unwrap();
    let err = f.import(&dir2).unwrap_err();
    assert!(
        matches!(err, ImageError::UnsafeSourcePath { .. }),
        "{err:?}"
    );
    f.assert_unchanged(&before);
}

#[test]
fn fifo_blob_is_refused_without_blocking() {
    let f = Fixture::new();
    let (dir, img) = simple_layout(&f, "layout");
    let p = dir.join("blobs/sha256").join(img.layers[0].digest.hex());
    std::fs::remove_file(&p).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let before = f.snapshot();
    let err = f.import(&dir).unwrap_err();
    assert!(
        matches!(err, ImageError::UnsafeSourcePath { .. }),
        "{err:?}"
    );
    f.assert_unchanged(&before);
}

#[test]
fn diff_id_mismatch_removes_partial_layer() {
    let f = Fixture::new();
    let (dir, _) = simple_layout(&f, "layout");
    let mut ed = LayoutEditor::open(&dir);
    let wrong = Digest::from_sha256_bytes(&[9u8; 32]);
    ed.config["rootfs"]["diff_ids"][0] = json!(wrong.to_string());
    ed.save();
    let before = f.snapshot();
    let err = f.import(&dir).unwrap_err();
    assert!(
        matches!(err, ImageError::DiffIdMismatch { ref expected, .. } if *expected == wrong),
        "{err:?}"
    );
    f.assert_unchanged(&before);
    assert!(f.layers_in_store().is_empty());
}

#[test]
fn invalid_config_is_rejected() {
    let f = Fixture::new();
    let before = f.snapshot();
    for raw in [
        &b"{}"[..],
        b"not json",
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":"x"}}"#,
    ] {
        let (dir, _) = simple_layout(&f, &format!("layout{}", raw.len()));
        LayoutEditor::open(&dir).save_with_raw_config(Some(raw));
        let err = f.import(&dir).unwrap_err();
        assert!(matches!(err, ImageError::InvalidDocument { .. }), "{err:?}");
        f.assert_unchanged(&before);
    }
}

#[test]
fn layer_count_must_match_diff_ids() {
    let f = Fixture::new();
    let (dir, _) = simple_layout(&f, "layout");
    let mut ed = LayoutEditor::open(&dir);
    ed.config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(json!(Digest::from_sha256_bytes(&[1; 32]).to_string()));
    ed.save();
    let before = f.snapshot();
    let err = f.import(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::LayerCountMismatch {
                layers: 1,
                diff_ids: 2
            }
        ),
        "{err:?}"
    );
    f.assert_unchanged(&before);
}

#[test]
fn non_distributable_layer_is_rejected() {
    let f = Fixture::new();
    let (dir, _) = simple_layout(&f, "layout");
    let mut ed = LayoutEditor::open(&dir);
    ed.manifest["layers"][0]["mediaType"] =
        json!("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip");
    ed.save();
    let before = f.snapshot();
    let err = f.import(&dir).unwrap_err();
    assert!(
        matches!(err, ImageError::NonDistributableLayer { .. }),
        "{err:?}"
    );
    f.assert_unchanged(&before);
}

#[test]
fn image_for_another_platform_lists_available_platforms() {
    let f = Fixture::new();
    let (dir, _) = simple_layout(&f, "layout");
    let mut ed = LayoutEditor::open(&dir);
    ed.index["manifests"][0]["platform"] = json!({"os": "linux", "architecture": "s390x"});
    ed.config["architecture"] = json!("s390x");
    ed.save();
    let before = f.snapshot();
    let err = f.import(&dir).unwrap_err();
    match &err {
        ImageError::NoMatchingPlatform { available, .. } => {
            assert_eq!(available, &vec!["linux/s390x".to_owned()])
        }
        other => panic!("expected NoMatchingPlatform, got {other:?}"),
    }
    assert!(err.to_string().contains("linux/s390x"));
    f.assert_unchanged(&before);
}

#[test]
fn not_an_image_is_unrecognized() {
    let f = Fixture::new();
    let p = f.input("junk");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, vec![b'x'; 4096]).unwrap();
    let before = f.snapshot();
    assert!(matches!(
        f.import(&p).unwrap_err(),
        ImageError::UnrecognizedInput { .. }
    ));
    let d = f.input("emptydir");
    std::fs::create_dir_all(&d).unwrap();
    assert!(matches!(
        f.import(&d).unwrap_err(),
        ImageError::UnrecognizedInput { .. }
    ));
    f.assert_unchanged(&before);
}

#[test]
fn missing_input_is_input_unreadable() {
    let f = Fixture::new();
    let err = f.import(&f.input("does-not-exist")).unwrap_err();
    assert!(matches!(err, ImageError::InputUnreadable { .. }), "{err:?}");
    assert_eq!(err.code(), ErrorCode::InputUnreadable);
}
