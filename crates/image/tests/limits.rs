//! Compression bombs, entry floods and oversized headers hit documented caps, and
//! the failed import leaves nothing behind (SECURITY-CHECKLIST item 18).

mod common;

use common::{import_layer_expect_err, Fixture};
use runbox_image::writer::LayerCompression;
use runbox_image::{ImageError, ImportLimits};
use runbox_testkit::hostile::{self, kind, layout_with_layers, RawEntry, TarBuilder};

const MIB: u64 = 1 << 20;

#[test]
fn gzip_bomb_hits_uncompressed_cap() {
    let f = Fixture::with_limits(ImportLimits {
        max_layer_bytes: 4 * MIB,
        ..ImportLimits::default()
    });
    let (bomb, diff_id) = hostile::gzip_bomb(64 * MIB);
    assert!(
        bomb.len() < MIB as usize,
        "the bomb is small compressed ({} bytes)",
        bomb.len()
    );
    let dir = f.input("layout");
    hostile::layout_with_blob_layer(
        &dir,
        &bomb,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        diff_id,
    );
    let before = f.snapshot();
    let err = f.import(&dir).unwrap_err();
    assert!(
        matches!(err, ImageError::LayerTooLarge { limit, .. } if limit == 4 * MIB),
        "{err:?}"
    );
    f.assert_unchanged(&before);
}

#[test]
fn uncompressed_cap_applies_to_plain_tar_too() {
    let f = Fixture::with_limits(ImportLimits {
        max_layer_bytes: 64 * 1024,
        ..ImportLimits::default()
    });
    let layer = TarBuilder::new()
        .file("big", &vec![1u8; 200 * 1024])
        .finish();
    let dir = f.input("layout");
    layout_with_layers(&dir, &[layer], LayerCompression::None);
    let before = f.snapshot();
    // The compressed blob itself is over the cap too: refused before reading it.
    let err = f.import(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::DocumentTooLarge { .. } | ImageError::LayerTooLarge { .. }
        ),
        "{err:?}"
    );
    f.assert_unchanged(&before);
}

#[test]
fn entry_count_cap() {
    let f = Fixture::with_limits(ImportLimits {
        max_layer_entries: 100,
        ..ImportLimits::default()
    });
    let mut t = TarBuilder::new();
    for i in 0..101 {
        t.file(&format!("f{i}"), b"");
    }
    let err = import_layer_expect_err(&f, t.finish());
    assert!(
        matches!(err, ImageError::TooManyEntries { limit: 100, .. }),
        "{err:?}"
    );

    // Exactly at the cap is fine.
    let mut t = TarBuilder::new();
    for i in 0..100 {
        t.file(&format!("f{i}"), b"");
    }
    common::import_layers(&f, &[t.finish()]);
}

#[test]
fn oversized_tar_extension_header_is_refused_before_buffering() {
    // A GNU long-name header claiming 512 MiB: the tar crate would read it whole
    // into memory; the guard refuses it first.
    let f = Fixture::new();
    let mut t = TarBuilder::new();
    t.lying_entry("././@LongLink", kind::GNU_LONGNAME, 512 * MIB, b"aaaa");
    let err = import_layer_expect_err(&f, t.bytes().to_vec());
    assert!(
        matches!(err, ImageError::TarHeaderTooLarge { size, .. } if size == 512 * MIB),
        "{err:?}"
    );

    let mut t = TarBuilder::new();
    t.lying_entry("PaxHeaders/x", kind::PAX, 64 * MIB, b"");
    let err = import_layer_expect_err(&f, t.bytes().to_vec());
    assert!(
        matches!(err, ImageError::TarHeaderTooLarge { .. }),
        "{err:?}"
    );
}

#[test]
fn pax_size_override_keeps_the_guard_in_step() {
    // A pax `size` record overrides the header; the guard must follow the tar
    // crate's view or a later oversized header would slip through.
    let f = Fixture::with_limits(ImportLimits {
        max_tar_header_bytes: 4096,
        ..ImportLimits::default()
    });
    let mut t = TarBuilder::new();
    t.pax(&[("size", b"1024")]);
    t.entry(RawEntry {
        name: b"data",
        claimed_size: Some(0),
        data: &[0u8; 1024],
        ..RawEntry::default()
    });
    t.lying_entry("././@LongLink", kind::GNU_LONGNAME, 10 * MIB, b"");
    let err = import_layer_expect_err(&f, t.bytes().to_vec());
    assert!(
        matches!(err, ImageError::TarHeaderTooLarge { .. }),
        "{err:?}"
    );
}

#[test]
fn path_length_cap() {
    let f = Fixture::with_limits(ImportLimits {
        max_path_len: 200,
        ..ImportLimits::default()
    });
    let long = format!("{}/f", "d".repeat(250));
    let err = import_layer_expect_err(&f, TarBuilder::new().file(&long, b"x").finish());
    assert!(
        matches!(
            err,
            ImageError::UnsafeTarEntry {
                reason: runbox_image::UnsafeEntry::PathTooLong { limit: 200 },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn layer_count_cap() {
    let f = Fixture::with_limits(ImportLimits {
        max_layers: 3,
        ..ImportLimits::default()
    });
    let layers: Vec<Vec<u8>> = (0..4)
        .map(|i| TarBuilder::new().file(&format!("f{i}"), b"x").finish())
        .collect();
    let dir = f.input("layout");
    layout_with_layers(&dir, &layers, LayerCompression::Gzip);
    let before = f.snapshot();
    let err = f.import(&dir).unwrap_err();
    assert!(
        matches!(err, ImageError::TooManyLayers { count: 4, limit: 3 }),
        "{err:?}"
    );
    f.assert_unchanged(&before);
}

#[test]
fn json_document_cap() {
    let f = Fixture::with_limits(ImportLimits {
        max_document_bytes: 256,
        ..ImportLimits::default()
    });
    let dir = f.input("layout");
    layout_with_layers(
        &dir,
        &[TarBuilder::new().file("x", b"1").finish()],
        LayerCompression::Gzip,
    );
    let mut ed = hostile::LayoutEditor::open(&dir);
    ed.config["config"]["Labels"] = serde_json::json!({ "padding": "p".repeat(1000) });
    ed.save();
    let before = f.snapshot();
    let err = f.import(&dir).unwrap_err();
    assert!(
        matches!(err, ImageError::DocumentTooLarge { limit: 256, .. }),
        "{err:?}"
    );
    f.assert_unchanged(&before);
}

#[test]
fn archive_entry_cap() {
    let f = Fixture::with_limits(ImportLimits {
        max_archive_entries: 5,
        ..ImportLimits::default()
    });
    let dir = f.input("layout");
    let layers: Vec<Vec<u8>> = (0..4)
        .map(|i| TarBuilder::new().file(&format!("f{i}"), b"x").finish())
        .collect();
    layout_with_layers(&dir, &layers, LayerCompression::Gzip);
    let archive = hostile::oci_archive(&dir, &f.input("img.tar"), false);
    let before = f.snapshot();
    let err = f.import(&archive).unwrap_err();
    assert!(
        matches!(err, ImageError::ArchiveTooManyEntries { limit: 5, .. }),
        "{err:?}"
    );
    f.assert_unchanged(&before);
}

#[test]
fn oversized_header_in_an_archive_input_is_refused() {
    let f = Fixture::new();
    let mut t = TarBuilder::new();
    t.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    t.lying_entry("././@LongLink", kind::GNU_LONGNAME, 2048 * MIB, b"");
    let p = f.input("evil.tar");
    std::fs::write(&p, t.finish()).unwrap();
    let before = f.snapshot();
    let err = f.import(&p).unwrap_err();
    assert!(
        matches!(err, ImageError::ArchiveHeaderTooLarge { size, .. } if size == 2048 * MIB),
        "{err:?}"
    );
    f.assert_unchanged(&before);
}
