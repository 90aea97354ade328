//! Store operations: resolve, remove, gc, locks, id base, crash leftovers.

mod common;

use common::{import_layers, Fixture, ID_BASE};
use runbox_core::{Digest, ErrorCode, IdMap};
use runbox_image::{
    ImageConfig, ImageError, ImageRecord, ImportLimits, LayerRef, Store, StoreOptions,
};
use runbox_testkit::hostile::TarBuilder;

fn layer(name: &str) -> Vec<u8> {
    TarBuilder::new().file(name, name.as_bytes()).finish()
}

#[test]
fn rm_and_gc_free_layers_shared_ones_kept() {
    let f = Fixture::new();
    let a = import_layers(&f, &[layer("shared"), layer("only-a")]);
    let b = import_layers(&f, &[layer("shared"), layer("only-b")]);
    let shared = a.image.layers[0].diff_id.clone();
    let only_a = a.image.layers[1].diff_id.clone();
    assert_eq!(b.image.layers[0].diff_id, shared);

    let report = f
        .store
        .remove(&a.image.manifest_digest.to_string())
        .unwrap();
    assert_eq!(
        report.removed.as_ref().map(|r| &r.manifest_digest),
        Some(&a.image.manifest_digest)
    );
    let gc = report.gc.expect("gc ran");
    assert!(!report.gc_deferred);
    assert_eq!(gc.layers_removed, 1);
    assert_eq!(
        gc.blobs_removed, 3,
        "manifest, config and the only-a layer blob"
    );
    assert!(gc.bytes_freed > 0);
    assert!(!f.store.layer_dir(&only_a).exists());
    assert!(!f.store.layer_dir(&only_a).with_extension("json").exists());
    assert!(
        f.store.layer_complete(&shared),
        "layer still used by b is kept"
    );
    assert!(f.store.blob_path(&b.image.layers[0].blob_digest).is_file());
    assert!(matches!(
        f.store.resolve(&a.image.manifest_digest.to_string()),
        Err(ImageError::NotFound { .. })
    ));

    f.store.remove(&b.image.config_digest.hex()[..10]).unwrap();
    assert!(f.layers_in_store().is_empty());
    assert!(std::fs::read_dir(f.data.join("blobs/sha256"))
        .unwrap()
        .next()
        .is_none());
    assert_eq!(
        f.store.disk_usage().unwrap(),
        runbox_image::DiskUsage::default()
    );
}

#[test]
fn gc_waits_for_no_one_and_rm_defers_while_a_run_holds_the_store() {
    let f = Fixture::new();
    let a = import_layers(&f, &[layer("x")]);
    let lease = f.store.lock_shared().unwrap();
    let err = f.store.gc().unwrap_err();
    assert!(matches!(err, ImageError::StoreBusy { .. }));
    assert_eq!(err.code(), ErrorCode::StoreBusy);
    let report = f.store.remove("sha256:").err();
    assert!(matches!(report, Some(ImageError::NotFound { .. })));
    let report = f
        .store
        .remove(&a.image.manifest_digest.to_string())
        .unwrap();
    assert!(report.gc_deferred && report.gc.is_none());
    assert!(
        f.store.layer_complete(&a.image.layers[0].diff_id),
        "the mounted layer stays"
    );
    let du = f.store.disk_usage().unwrap();
    assert_eq!(du.images, 0);
    assert!(du.reclaimable_bytes > 0);
    drop(lease);
    let gc = f.store.gc().unwrap();
    assert_eq!(gc.layers_removed, 1);
    assert!(f.layers_in_store().is_empty());
}

#[test]
fn rm_by_name_untags_when_other_names_remain() {
    let f = Fixture::new();
    let dir = f.input("l");
    runbox_testkit::hostile::layout_with_layers(
        &dir,
        &[layer("x")],
        runbox_image::writer::LayerCompression::Gzip,
    );
    f.import_named(&dir, "a:1").unwrap();
    f.import_named(&dir, "b:2").unwrap();
    let r = f.store.remove("a:1").unwrap();
    assert_eq!(r.untagged, vec!["a:1".to_owned()]);
    assert!(r.removed.is_none());
    assert_eq!(
        f.store.resolve("b:2").unwrap().names,
        vec!["b:2".to_owned()]
    );
    let r = f.store.remove("b:2").unwrap();
    assert!(r.removed.is_some());
    assert!(f.store.list().unwrap().is_empty());
}

#[test]
fn resolve_by_name_digest_prefix() {
    let f = Fixture::new();
    let dir = f.input("l");
    runbox_testkit::hostile::layout_with_layers(
        &dir,
        &[layer("x")],
        runbox_image::writer::LayerCompression::Gzip,
    );
    let img = f.import_named(&dir, "localhost:5000/tool").unwrap().image;
    let m = img.manifest_digest.clone();
    let c = img.config_digest.clone();
    for r in [
        "localhost:5000/tool".to_owned(),
        "localhost:5000/tool:latest".to_owned(),
        format!("localhost:5000/tool@{m}"),
        m.to_string(),
        c.to_string(),
        m.hex()[..6].to_owned(),
        c.hex()[..12].to_owned(),
        format!("sha256:{}", &m.hex()[..8]),
    ] {
        assert_eq!(f.store.resolve(&r).unwrap().manifest_digest, m, "{r}");
    }
    for r in ["localhost:5000/tool:v2", "other", &m.hex()[..5], "zzzzzzzz"] {
        let err = f.store.resolve(r).unwrap_err();
        assert!(matches!(err, ImageError::NotFound { .. }), "{r}: {err:?}");
        assert_eq!(err.code(), ErrorCode::ImageNotFound);
    }
    let wrong = format!(
        "localhost:5000/tool@{}",
        Digest::from_sha256_bytes(&[0; 32])
    );
    assert!(matches!(
        f.store.resolve(&wrong),
        Err(ImageError::NotFound { .. })
    ));
}

fn record(manifest_hex: &str, config_hex: &str, name: Option<&str>) -> ImageRecord {
    ImageRecord {
        names: name.map(|n| vec![n.to_owned()]).unwrap_or_default(),
        manifest_digest: Digest::from_hex(manifest_hex).unwrap(),
        config_digest: Digest::from_hex(config_hex).unwrap(),
        layers: vec![LayerRef {
            diff_id: Digest::from_sha256_bytes(&[1; 32]),
            blob_digest: Digest::from_sha256_bytes(&[2; 32]),
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            compressed_size: 1,
            unpacked_size: 1,
        }],
        config: ImageConfig::default(),
        platform: "linux/amd64".into(),
        size_bytes: 1,
        imported_at: 0,
    }
}

#[test]
fn ambiguous_prefix_errors() {
    // Two digests sharing a long prefix cannot be produced by importing in a test's
    // time, so the records are written in the store's own format.
    let f = Fixture::new();
    let m1 = format!("abcdef01{}", "0".repeat(56));
    let m2 = format!("abcdef02{}", "0".repeat(56));
    let records = vec![
        record(&m1, &"1".repeat(64), Some("one:latest")),
        record(&m2, &"2".repeat(64), None),
    ];
    let json = serde_json::json!({ "format_version": 1, "images": records });
    std::fs::write(
        f.data.join("images.json"),
        serde_json::to_vec(&json).unwrap(),
    )
    .unwrap();
    let err = f.store.resolve("abcdef").unwrap_err();
    match &err {
        ImageError::AmbiguousReference { candidates, .. } => {
            assert_eq!(candidates.len(), 2);
            assert!(candidates.iter().any(|c| c.contains("one:latest")));
        }
        other => panic!("expected AmbiguousReference, got {other:?}"),
    }
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert_eq!(
        f.store.resolve("abcdef01").unwrap().manifest_digest.hex(),
        m1
    );
    assert_eq!(f.store.resolve("one").unwrap().manifest_digest.hex(), m1);
    assert!(matches!(
        f.store.remove("abcdef"),
        Err(ImageError::AmbiguousReference { .. })
    ));
    assert_eq!(
        f.store.list().unwrap().len(),
        2,
        "an ambiguous rm removes nothing"
    );
}

#[test]
fn id_base_mismatch_is_refused() {
    let f = Fixture::new();
    let s = Store::open(&f.data, StoreOptions::default()).unwrap();
    assert_eq!(
        s.id_map(),
        IdMap { base: ID_BASE },
        "an existing store keeps its base"
    );
    let err = Store::open(
        &f.data,
        StoreOptions {
            id_base: Some(ID_BASE + 65536),
            limits: ImportLimits::default(),
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::IdBaseMismatch { store: ID_BASE, .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    let err = Store::open(
        f.tmp.path().join("new"),
        StoreOptions {
            id_base: Some(u32::MAX - 10),
            limits: ImportLimits::default(),
        },
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::IdBaseOutOfRange(_)));
    let fresh = Store::open(f.tmp.path().join("fresh"), StoreOptions::default()).unwrap();
    assert_eq!(fresh.id_map(), IdMap::default());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(f.tmp.path().join("fresh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
}

#[test]
fn open_removes_crashed_imports_but_not_live_ones() {
    let f = Fixture::new();
    let tmp = f.data.join("tmp");
    let stale = tmp.join("import-1-dead");
    std::fs::create_dir_all(stale.join("layers/x")).unwrap();
    std::os::unix::fs::symlink(&f.outside, stale.join("layers/x/l")).unwrap();
    std::fs::write(tmp.join("write-1-dead"), b"partial").unwrap();
    let live = tmp.join("import-2-live");
    std::fs::create_dir(&live).unwrap();
    let live_fd = std::fs::File::open(&live).unwrap();
    rustix::fs::flock(&live_fd, rustix::fs::FlockOperation::LockExclusive).unwrap();
    Store::open(&f.data, StoreOptions::default()).unwrap();
    assert!(!stale.exists());
    assert!(!tmp.join("write-1-dead").exists());
    assert!(live.exists(), "a live import's staging is left alone");
    assert_eq!(
        std::fs::read(f.outside.join("sentinel")).unwrap(),
        b"untouched",
        "symlinks in staging not followed"
    );
    drop(live_fd);
    // gc removes everything in tmp/.
    f.store.gc().unwrap();
    assert!(!live.exists());
}

#[test]
fn marker_less_layer_dir_is_replaced_on_import() {
    // A crash between moving a layer into place and writing its marker leaves a
    // directory without a marker: it is not trusted, and the next import redoes it.
    let f = Fixture::new();
    let l = layer("x");
    let diff_id = runbox_testkit::hostile::sha256(&l);
    let stale = f.store.layer_dir(&diff_id);
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("garbage"), b"half").unwrap();
    assert!(!f.store.layer_complete(&diff_id));
    let r = import_layers(&f, &[l]);
    assert_eq!(r.layers_unpacked, 1);
    assert!(!stale.join("garbage").exists());
    assert!(stale.join("x").is_file());
}

#[test]
fn concurrent_imports_of_one_image_agree() {
    let f = Fixture::new();
    let dir = f.input("l");
    let layers: Vec<Vec<u8>> = (0..3).map(|i| layer(&format!("f{i}"))).collect();
    runbox_testkit::hostile::layout_with_layers(
        &dir,
        &layers,
        runbox_image::writer::LayerCompression::Gzip,
    );
    let reports: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let (f, dir) = (&f, &dir);
                s.spawn(move || f.import_named(dir, &format!("n:{i}")).unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let list = f.store.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].names.len(), 3);
    assert!(reports
        .iter()
        .all(|r| r.image.manifest_digest == list[0].manifest_digest));
    assert_eq!(f.layers_in_store().len(), 3);
    assert!(std::fs::read_dir(f.data.join("tmp"))
        .unwrap()
        .next()
        .is_none());
}
