//! `Store::build` with the real mmdebstrap (needs root, the mmdebstrap package
//! and a reachable Debian mirror; `scripts/test` installs mmdebstrap).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use common::{Fixture, ID_BASE};
use runbox_core::ErrorCode;
use runbox_image::build::RECIPE_DIGEST_LABEL;
use runbox_image::{
    BuildOptions, BuildPhase, BuildProgress, ImageError, ImportProgress, NoProgress, Recipe,
};

/// Records what a build reported.
#[derive(Default)]
struct Recorder {
    phases: Mutex<Vec<BuildPhase>>,
    lines: Mutex<Vec<String>>,
    layers_unpacked: Mutex<usize>,
}

impl BuildProgress for Recorder {
    fn phase(&self, phase: BuildPhase, _elapsed: Duration) {
        self.phases.lock().unwrap().push(phase);
    }
    fn tool_line(&self, line: &str) {
        self.lines.lock().unwrap().push(line.to_owned());
    }
    fn import_progress(&self) -> &dyn ImportProgress {
        self
    }
}

impl ImportProgress for Recorder {
    fn layer_unpack_finished(&self, _: &runbox_core::Digest, _: u64, _: u64) {
        *self.layers_unpacked.lock().unwrap() += 1;
    }
}

const RECIPE: &str = r##"
# A small image: the essential Debian system plus jq, and two added files.
name = "runbox-test/jq:1"
[debian]
packages = ["jq"]
[[files]]
path = "/usr/local/bin/greet"
mode = 0o755
from = "files/greet"
[[files]]
path = "/opt/runbox-test/data.json"
text = '{"answer": 42}'
[config]
cmd = ["jq", "--version"]
env = ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"]
working_dir = "/work"
user = "1000:1000"
labels = { "org.example.kind" = "test" }
"##;

fn write_recipe(dir: &Path, greet: &str) -> Recipe {
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files/greet"), greet).unwrap();
    let path = dir.join("jq.toml");
    std::fs::write(&path, RECIPE).unwrap();
    Recipe::load(&path).unwrap()
}

/// Builds in memory: dpkg's synced writes on a shared CI disk triple the time.
fn opts() -> BuildOptions {
    BuildOptions {
        scratch_dir: Some("/dev/shm".into()),
        ..BuildOptions::default()
    }
}

fn tmp_is_empty(f: &Fixture) -> bool {
    std::fs::read_dir(f.data.join("tmp"))
        .unwrap()
        .next()
        .is_none()
}

#[test]
fn builds_an_image_serves_it_from_cache_and_rebuilds_when_a_from_file_changes() {
    let f = Fixture::new();
    let dir = f.input("recipe");
    let recipe = write_recipe(&dir, "#!/bin/sh\necho hello\n");
    let rec = Recorder::default();

    // Cold build.
    let report = f.store.build(&recipe, &opts(), &rec).unwrap();
    assert!(!report.cached);
    assert_eq!(report.recipe_digest, recipe.digest());
    let image = f.store.resolve("runbox-test/jq:1").unwrap();
    assert_eq!(image, report.image);
    assert_eq!(
        image.config.labels[RECIPE_DIGEST_LABEL],
        recipe.digest().to_string()
    );
    assert_eq!(image.config.labels["org.example.kind"], "test");
    assert_eq!(
        image.config.cmd,
        Some(vec!["jq".into(), "--version".into()])
    );
    assert_eq!(image.config.working_dir.as_deref(), Some("/work"));
    assert_eq!(image.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(image.config.env[1], "LANG=C.UTF-8");
    assert_eq!(image.layers.len(), 2, "the Debian system and the files");
    assert_eq!(*rec.layers_unpacked.lock().unwrap(), 2);
    assert_eq!(
        *rec.phases.lock().unwrap(),
        [
            BuildPhase::Resolving,
            BuildPhase::Downloading,
            BuildPhase::Installing,
            BuildPhase::Packing,
            BuildPhase::Importing
        ]
    );
    assert!(rec
        .lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.starts_with("I: ")));
    assert!(tmp_is_empty(&f), "the build's staging is removed");

    // The Debian system has jq, and no device nodes.
    let rootfs = f.store.layer_dir(&image.layers[0].diff_id);
    assert!(rootfs.join("usr/bin/jq").is_file());
    assert!(!rootfs.join("dev/null").exists());
    // The files layer: the files with their modes, owned by (shifted) root, and
    // parents as the Debian system has them.
    let files = f.store.layer_dir(&image.layers[1].diff_id);
    let greet = std::fs::metadata(files.join("usr/local/bin/greet")).unwrap();
    assert_eq!(greet.permissions().mode() & 0o7777, 0o755);
    assert_eq!((greet.uid(), greet.gid()), (ID_BASE, ID_BASE));
    assert_eq!(
        std::fs::read(files.join("usr/local/bin/greet")).unwrap(),
        b"#!/bin/sh\necho hello\n"
    );
    let data = files.join("opt/runbox-test/data.json");
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o7777,
        0o644
    );
    assert_eq!(std::fs::read(&data).unwrap(), br#"{"answer": 42}"#);
    let mode_of = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        mode_of(&files.join("usr/local")),
        mode_of(&rootfs.join("usr/local"))
    );
    assert_eq!(mode_of(&files.join("opt/runbox-test")), 0o755);

    // Same recipe: served from the cache without running anything. With tmp/
    // replaced by a file, any staging (mmdebstrap, layout, import) would fail.
    let tmp = f.data.join("tmp");
    std::fs::rename(&tmp, f.data.join("tmp.away")).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let rec2 = Recorder::default();
    let again = Recipe::load(recipe.path()).unwrap();
    let cached = f.store.build(&again, &opts(), &rec2).unwrap();
    std::fs::remove_file(&tmp).unwrap();
    std::fs::rename(f.data.join("tmp.away"), &tmp).unwrap();
    assert!(cached.cached);
    assert_eq!(cached.image, image);
    assert!(rec2.phases.lock().unwrap().is_empty(), "no build phase ran");
    assert!(
        rec2.lines.lock().unwrap().is_empty(),
        "mmdebstrap did not run"
    );

    // A changed `from` file changes the digest and rebuilds; the old image,
    // nameless now, is removed.
    let changed = write_recipe(&dir, "#!/bin/sh\necho hullo\n");
    assert_ne!(changed.digest(), recipe.digest());
    let rebuilt = f.store.build(&changed, &opts(), &NoProgress).unwrap();
    assert!(!rebuilt.cached);
    assert_ne!(rebuilt.image.manifest_digest, image.manifest_digest);
    assert_eq!(rebuilt.replaced.as_ref(), Some(&image.manifest_digest));
    let images = f.store.list().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].names, ["runbox-test/jq:1"]);
    let files = f.store.layer_dir(&rebuilt.image.layers[1].diff_id);
    assert_eq!(
        std::fs::read(files.join("usr/local/bin/greet")).unwrap(),
        b"#!/bin/sh\necho hullo\n"
    );
    assert!(tmp_is_empty(&f));
}

#[test]
fn a_failing_mmdebstrap_is_a_specific_error_and_leaves_the_store_unchanged() {
    let f = Fixture::new();
    let path = f.input("bad.toml");
    std::fs::write(
        &path,
        "name = \"runbox-test/bad\"\n[debian]\npackages = [\"runbox-no-such-package\"]\n",
    )
    .unwrap();
    let recipe = Recipe::load(&path).unwrap();
    let before = f.snapshot();
    let err = f.store.build(&recipe, &opts(), &NoProgress).unwrap_err();
    match &err {
        ImageError::BuildToolFailed { tool, stderr, .. } => {
            assert_eq!(*tool, "mmdebstrap");
            assert!(
                stderr
                    .iter()
                    .any(|l| l.contains("Unable to locate package runbox-no-such-package")),
                "{stderr:?}"
            );
        }
        other => panic!("expected BuildToolFailed, got {other:?}"),
    }
    assert_eq!(err.code(), ErrorCode::BuildFailed);
    assert!(err.to_string().contains("runbox-no-such-package"), "{err}");
    f.assert_unchanged(&before);
    assert!(f.store.list().unwrap().is_empty());
}
