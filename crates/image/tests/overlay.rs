//! The unpacked layers really work as overlayfs lower directories: a whiteout
//! hides the lower file and an opaque directory hides the lower directory's
//! contents (SECURITY-CHECKLIST item 16). Needs root, as the sandbox does.

mod common;

use common::{import_layers, Fixture};
use runbox_testkit::hostile::TarBuilder;
use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = unmount(&self.0, UnmountFlags::DETACH);
    }
}

#[test]
fn overlay_merges_whiteouts_and_opaque_dirs() {
    let f = Fixture::new();
    let lower = TarBuilder::new()
        .dir("a")
        .file("a/gone", b"lower")
        .file("a/keep", b"lower")
        .dir("d")
        .file("d/old", b"lower")
        .dir("d/sub")
        .file("d/sub/deep", b"lower")
        .file("top-gone", b"lower")
        .finish();
    let upper = TarBuilder::new()
        .dir("a")
        .whiteout("a/gone")
        .whiteout("top-gone")
        .dir("d")
        .opaque("d")
        .file("d/new", b"upper")
        .file("a/added", b"upper")
        .finish();
    let report = import_layers(&f, &[lower, upper]);
    let layers = &report.image.layers;
    let merged = f.tmp.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    // The sandbox builds lowerdir= from relative names inside layers/; here the
    // absolute paths are short enough.
    let opts = format!(
        "lowerdir={}:{}",
        f.store.layer_dir(&layers[1].diff_id).display(),
        f.store.layer_dir(&layers[0].diff_id).display()
    );
    let opts = std::ffi::CString::new(opts).unwrap();
    mount(
        "overlay",
        &merged,
        "overlay",
        MountFlags::RDONLY,
        Some(opts.as_c_str()),
    )
    .expect("mounting overlay (needs root)");
    let _guard = Unmount(merged.clone());

    let names = |dir: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(merged.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("a"), vec!["added", "keep"], "whiteout hides a/gone");
    assert_eq!(
        names("d"),
        vec!["new"],
        "opaque d hides the lower d/old and d/sub"
    );
    assert_eq!(names(""), vec!["a", "d"]);
    assert_eq!(std::fs::read(merged.join("a/keep")).unwrap(), b"lower");
    assert!(!merged.join("a/gone").exists());
    assert!(!merged.join("d/sub/deep").exists());
}
