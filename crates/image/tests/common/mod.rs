//! Shared fixture: a store in a temp dir, a sentinel directory beside it that
//! hostile images aim at, and before/after snapshots proving nothing changed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use runbox_image::{
    ImageError, ImportLimits, ImportOptions, ImportReport, NoProgress, Store, StoreOptions,
};
use runbox_testkit::hostile::snapshot_tree;
use tempfile::TempDir;

pub const ID_BASE: u32 = 2_000_000_000;

pub struct Fixture {
    pub tmp: TempDir,
    pub data: PathBuf,
    /// A directory outside the store that hostile entries try to write into.
    pub outside: PathBuf,
    pub store: Store,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    store_files: Vec<String>,
    images_json: Option<Vec<u8>>,
    outside: Vec<String>,
    root: Vec<String>,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_limits(ImportLimits::default())
    }

    pub fn with_limits(limits: ImportLimits) -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("sentinel"), b"untouched").unwrap();
        let store = Store::open(
            &data,
            StoreOptions {
                id_base: Some(ID_BASE),
                limits,
            },
        )
        .expect("open store");
        Fixture {
            tmp,
            data,
            outside,
            store,
        }
    }

    /// A fresh path for an input (layout dir or tarball) in the temp dir.
    pub fn input(&self, name: &str) -> PathBuf {
        let dir = self.tmp.path().join("inputs");
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    pub fn import(&self, path: &Path) -> Result<ImportReport, ImageError> {
        self.store
            .import(path, &ImportOptions::default(), &NoProgress)
    }

    pub fn import_named(&self, path: &Path, name: &str) -> Result<ImportReport, ImageError> {
        self.store.import(
            path,
            &ImportOptions {
                name: Some(name.into()),
            },
            &NoProgress,
        )
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut root = snapshot_tree(self.tmp.path());
        // Inputs and the store itself are compared separately.
        root.retain(|p| !p.starts_with("inputs") && !p.starts_with("data"));
        Snapshot {
            store_files: snapshot_tree(&self.data),
            images_json: std::fs::read(self.data.join("images.json")).ok(),
            outside: snapshot_tree(&self.outside),
            root,
        }
    }

    /// The store, the sentinel directory and the temp root are as before; tmp/ is empty.
    pub fn assert_unchanged(&self, before: &Snapshot) {
        let after = self.snapshot();
        assert_eq!(before.store_files, after.store_files, "store files changed");
        assert_eq!(before.images_json, after.images_json, "images.json changed");
        assert_eq!(
            before.outside, after.outside,
            "files appeared outside the store"
        );
        assert_eq!(before.root, after.root, "files appeared beside the store");
        assert_eq!(
            std::fs::read(self.outside.join("sentinel")).unwrap(),
            b"untouched"
        );
        assert!(
            snapshot_tree(&self.data.join("tmp")).is_empty(),
            "tmp/ is not empty"
        );
    }

    pub fn layers_in_store(&self) -> Vec<String> {
        std::fs::read_dir(self.store.layers_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".json"))
            .collect()
    }
}

/// Imports a single-layer image made of this raw tar and expects failure; asserts
/// the store and host are unchanged and returns the error.
pub fn import_layer_expect_err(f: &Fixture, layer: Vec<u8>) -> ImageError {
    let dir = f.input("layout");
    runbox_testkit::hostile::layout_with_layers(
        &dir,
        &[layer],
        runbox_image::writer::LayerCompression::Gzip,
    );
    let before = f.snapshot();
    let err = f.import(&dir).expect_err("import should fail");
    f.assert_unchanged(&before);
    err
}

/// Imports layers (one image) and expects success.
pub fn import_layers(f: &Fixture, layers: &[Vec<u8>]) -> ImportReport {
    let dir = f.input(&format!("layout-{}", rand_suffix()));
    runbox_testkit::hostile::layout_with_layers(
        &dir,
        layers,
        runbox_image::writer::LayerCompression::Gzip,
    );
    f.import(&dir).expect("import")
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}
