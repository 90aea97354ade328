//! [`Store::build`]: images built offline from Debian packages plus added files,
//! described by a [`Recipe`] and cached by its digest.
//!
//! A build runs mmdebstrap, which writes the Debian root file system as a tar on
//! stdout; the tar streams straight into a zstd-compressed layer of an OCI
//! layout in the build's staging directory `tmp/build-<pid>-<random>/`
//! (flocked while the build runs, removed when it ends, and by `Store::open`
//! after a crash). The recipe's files form a second, small layer. The layout
//! then goes through the store's normal verified import, so a built image is
//! exactly as trusted as an imported one, and gets the recipe's name.
//!
//! A recipe's `[[pypi]]` wheels are fetched first (from the store's blobs when
//! a build downloaded them before, else from the index, verified against the
//! pinned sha256 and then stored), and unpacked into a layer between the Debian
//! system and the files: `usr/local/lib/python3.N/dist-packages`, for the
//! Python the Debian system has (see `pypi.rs`).
//!
//! The image config carries the label [`RECIPE_DIGEST_LABEL`]; when the image
//! the recipe names already has the recipe's digest there, the build returns it
//! at once without running anything.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use runbox_core::Digest;
use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Result};
use crate::fsutil;
use crate::import::ImportOptions;
use crate::progress::{ImportProgress, NoProgress};
use crate::record::ImageRecord;
use crate::store::Store;
use crate::writer::{writer_err, ImageSpec, LayerCompression, LayoutWriter};

mod mmdebstrap;
mod pypi;
mod recipe;
mod rootfs;

pub use pypi::{DEFAULT_INDEX, MAX_WHEEL_BYTES, MAX_WHEEL_ENTRIES, MAX_WHEEL_UNPACKED_BYTES};
pub use recipe::{
    DebianSpec, PypiWheel, Recipe, RecipeFile, Variant, MAX_FILES, MAX_FILES_TOTAL_BYTES,
    MAX_FILE_BYTES, MAX_RECIPE_BYTES, MAX_WHEELS, RECIPE_DIGEST_LABEL,
};

/// Layers are zstd-compressed: on a Debian root file system (140 MB of tar)
/// zstd -3 takes 0.7 s and gives 40 MB, gzip -1 takes 2.4 s and gives 53 MB,
/// and zstd decompresses 4-5x faster when the import unpacks it.
const COMPRESSION: LayerCompression = LayerCompression::Zstd;

/// Bounds on a build. Exceeding one stops mmdebstrap and fails the build with a
/// specific error; the store is left unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BuildLimits {
    /// Wall-clock seconds mmdebstrap may run (default 1800: a `standard`
    /// variant over a slow mirror; an essential system with python3 takes ~20 s).
    pub max_seconds: u64,
    /// Bytes of root file system tar mmdebstrap may write (default 8 GiB; an
    /// essential system is ~140 MB, `standard` ~1 GB).
    pub max_rootfs_bytes: u64,
}

impl Default for BuildLimits {
    fn default() -> Self {
        BuildLimits {
            max_seconds: 1800,
            max_rootfs_bytes: 8 << 30,
        }
    }
}

/// Options for [`Store::build`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// Build even when the store has the image of this exact recipe.
    pub force: bool,
    pub limits: BuildLimits,
    /// Where mmdebstrap builds the Debian system before writing it out (its
    /// `TMPDIR`); `None`: this process's `TMPDIR`, else /tmp. dpkg writes and
    /// syncs every file there, so a tmpfs (`/dev/shm`) makes builds up to 3x
    /// faster on a busy disk, at the cost of holding the system (0.2-1 GB) in
    /// memory while it is built. Never inside the store: mmdebstrap mounts
    /// /proc, /sys and /dev in its chroot.
    pub scratch_dir: Option<PathBuf>,
    /// The PEP 691 simple index `[[pypi]]` wheels come from; `None`:
    /// `RUNBOX_PYPI_INDEX`, else [`DEFAULT_INDEX`] (PyPI). Wheels the store
    /// has already are not downloaded again.
    pub pypi_index: Option<String>,
}

/// What [`Store::build`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildReport {
    pub image: ImageRecord,
    /// The store already had the image of this recipe: nothing ran.
    pub cached: bool,
    /// Wall-clock seconds the build took.
    pub seconds: f64,
    /// The recipe's digest, as in the image's `org.runbox.recipe.digest` label.
    pub recipe_digest: Digest,
    /// The manifest digest of the image the recipe built before, removed because
    /// the new build took its name and it had no other.
    pub replaced: Option<Digest>,
}

/// The phases of a build, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum BuildPhase {
    /// apt reads the package lists and resolves dependencies.
    Resolving = 1,
    Downloading = 2,
    /// Packages are unpacked and configured.
    Installing = 3,
    /// The root file system tar is written and compressed, the files layer added.
    Packing = 4,
    /// The layout is verified and unpacked into the store.
    Importing = 5,
}

impl BuildPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildPhase::Resolving => "resolving",
            BuildPhase::Downloading => "downloading",
            BuildPhase::Installing => "installing",
            BuildPhase::Packing => "packing",
            BuildPhase::Importing => "importing",
        }
    }
}

impl std::fmt::Display for BuildPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Receives progress events from [`Store::build`]. Every method has a no-op
/// default. Methods may be called from several threads.
pub trait BuildProgress: Sync {
    /// A phase started, `elapsed` after the build started. Phases only move
    /// forward; some may be skipped.
    fn phase(&self, _phase: BuildPhase, _elapsed: Duration) {}
    /// mmdebstrap wrote this line on stderr (status `I: ...`, warnings, errors).
    fn tool_line(&self, _line: &str) {}
    /// Where the import's progress events go (the `importing` phase).
    fn import_progress(&self) -> &dyn ImportProgress {
        &NoProgress
    }
}

impl BuildProgress for NoProgress {}

/// Reports each phase once, in order.
struct Phases<'a> {
    progress: &'a dyn BuildProgress,
    started: Instant,
    current: AtomicU8,
}

impl Phases<'_> {
    fn enter(&self, phase: BuildPhase) {
        let prev = self.current.fetch_max(phase as u8, Ordering::SeqCst);
        if prev < phase as u8 {
            tracing::debug!(phase = phase.as_str(), "build phase");
            self.progress.phase(phase, self.started.elapsed());
        }
    }
}

impl Store {
    /// Builds the image `recipe` describes and names it `recipe.name()`, or, unless
    /// `opts.force`, returns the image of that name at once when it was built
    /// from a recipe with the same digest. A failed build leaves the store
    /// unchanged. The image this name had before is removed when it was built
    /// from a recipe and has no other name.
    pub fn build(
        &self,
        recipe: &Recipe,
        opts: &BuildOptions,
        progress: &dyn BuildProgress,
    ) -> Result<BuildReport> {
        let started = Instant::now();
        let digest = recipe.digest();
        let previous = self
            .load_records()?
            .into_iter()
            .find(|r| r.names.iter().any(|n| n == recipe.name()));
        if let Some(p) = &previous {
            let label = p.config.labels.get(RECIPE_DIGEST_LABEL);
            if !opts.force && label == Some(&digest.to_string()) {
                return Ok(BuildReport {
                    image: p.clone(),
                    cached: true,
                    seconds: started.elapsed().as_secs_f64(),
                    recipe_digest: digest,
                    replaced: None,
                });
            }
        }
        let phases = Phases {
            progress,
            started,
            current: AtomicU8::new(0),
        };
        let image = {
            // gc removes everything in tmp/ unless a lease holds the store.
            let _lease = self.lock_shared()?;
            let dir = fsutil::TmpDir::new(self.tmp_dir(), "build")?;
            let index = pypi::index_url(opts.pypi_index.as_deref());
            let wheels = pypi::fetch_all(
                self,
                recipe.path(),
                recipe.pypi(),
                &index,
                &dir.path,
                &|line| {
                    tracing::info!(target: "pypi", "{line}");
                    progress.tool_line(line);
                },
            )?;
            let layout = write_layout(recipe, &wheels, &dir.path, opts, &phases)?;
            phases.enter(BuildPhase::Importing);
            let imported = self.import(
                &layout,
                &ImportOptions {
                    name: Some(recipe.name().to_owned()),
                },
                progress.import_progress(),
            )?;
            imported.image
        };
        let replaced = match previous {
            Some(p)
                if p.manifest_digest != image.manifest_digest
                    && p.config.labels.contains_key(RECIPE_DIGEST_LABEL) =>
            {
                self.remove_if_unnamed(&p.manifest_digest)
            }
            _ => None,
        };
        Ok(BuildReport {
            image,
            cached: false,
            seconds: started.elapsed().as_secs_f64(),
            recipe_digest: digest,
            replaced,
        })
    }

    /// Removes the image with this manifest digest if it has no name left.
    /// Failing to is not the build's failure: the image stays, nameless.
    fn remove_if_unnamed(&self, manifest: &Digest) -> Option<Digest> {
        let unnamed = self
            .load_records()
            .ok()?
            .into_iter()
            .any(|r| r.manifest_digest == *manifest && r.names.is_empty());
        if !unnamed {
            return None;
        }
        match self.remove(&manifest.to_string()) {
            Ok(_) => Some(manifest.clone()),
            Err(e) => {
                tracing::warn!(image = %manifest, error = %e, "could not remove the image the build replaced");
                None
            }
        }
    }
}

/// Runs mmdebstrap into the rootfs layer, adds the wheels layer (`wheels`:
/// the recipe's `[[pypi]]` files, fetched), the files layer and the config: an
/// OCI layout in `dir/layout`.
fn write_layout(
    recipe: &Recipe,
    wheels: &[PathBuf],
    dir: &Path,
    opts: &BuildOptions,
    phases: &Phases<'_>,
) -> Result<PathBuf> {
    let limits = &opts.limits;
    let mut cmd = mmdebstrap::command(recipe.debian());
    if let Some(scratch) = &opts.scratch_dir {
        if !scratch.is_dir() {
            return Err(ImageError::io(
                "using as the build's scratch directory",
                scratch,
                std::io::ErrorKind::NotFound.into(),
            ));
        }
        cmd.env("TMPDIR", scratch);
    }
    let layout_dir = dir.join("layout");
    let mut writer = LayoutWriter::create(&layout_dir).map_err(writer_err)?;
    let mut wanted = rootfs::wanted_paths(recipe.files());
    wanted.wheels = !recipe.pypi().is_empty();
    let on_line = |line: &str| {
        tracing::debug!(target: "mmdebstrap", "{line}");
        phases.progress.tool_line(line);
        if let Some(p) = mmdebstrap::phase_of(line) {
            phases.enter(p);
        }
    };
    phases.enter(BuildPhase::Resolving);
    let tool_limits = mmdebstrap::ToolLimits {
        time: Duration::from_secs(limits.max_seconds),
        max_output: limits.max_rootfs_bytes,
    };
    let run = mmdebstrap::run_tool(cmd, tool_limits, &on_line, |stdout| {
        let (layer, found) = rootfs::with_scan(stdout, &wanted, |tar| {
            writer.add_layer_tar(tar, COMPRESSION)
        });
        let layer = layer.map_err(writer_err)?;
        let found = found.map_err(|e| ImageError::io("reading the tar of", "mmdebstrap", e))?;
        Ok::<_, ImageError>((layer, found))
    })
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ImageError::BuildToolMissing {
                tool: mmdebstrap::TOOL,
                package: mmdebstrap::TOOL_PACKAGE,
            }
        } else {
            ImageError::io("running", mmdebstrap::TOOL, e)
        }
    })?;
    match run.end {
        mmdebstrap::ToolEnd::TimedOut => {
            return Err(ImageError::BuildTimedOut {
                tool: mmdebstrap::TOOL,
                limit_seconds: limits.max_seconds,
                stderr: run.stderr_tail,
            })
        }
        mmdebstrap::ToolEnd::OutputTooLarge => {
            return Err(ImageError::BuildOutputTooLarge {
                tool: mmdebstrap::TOOL,
                limit: limits.max_rootfs_bytes,
            })
        }
        mmdebstrap::ToolEnd::Exited(status) if !status.success() => {
            return Err(ImageError::BuildToolFailed {
                tool: mmdebstrap::TOOL,
                status: status.to_string(),
                stderr: run.stderr_tail,
            })
        }
        mmdebstrap::ToolEnd::Exited(_) => {}
    }
    let (_rootfs, found) = run.value?;
    phases.enter(BuildPhase::Packing);
    if !recipe.pypi().is_empty() {
        add_wheels_layer(recipe, wheels, &found, dir, &mut writer)?;
    }
    if !recipe.files().is_empty() {
        let tree =
            rootfs::files_tree(recipe.files(), &found).map_err(|c| ImageError::RecipeInvalid {
                path: recipe.path().to_owned(),
                field: format!("files[{}].path", c.index),
                reason: c.reason,
            })?;
        writer
            .add_layer_tree(&tree, COMPRESSION)
            .map_err(writer_err)?;
    }
    let mut config = recipe.config().clone();
    config
        .labels
        .insert(RECIPE_DIGEST_LABEL.to_owned(), recipe.digest().to_string());
    writer
        .finish(&ImageSpec {
            config,
            ..ImageSpec::default()
        })
        .map_err(writer_err)?;
    Ok(layout_dir)
}

/// Unpacks the wheels into a layer for the newest Python of the system they
/// all fit.
fn add_wheels_layer(
    recipe: &Recipe,
    wheels: &[PathBuf],
    found: &std::collections::BTreeMap<String, rootfs::Found>,
    dir: &Path,
    writer: &mut LayoutWriter,
) -> Result<()> {
    let (major, minor) = pypi::choose_python(found, recipe.pypi()).map_err(|(i, reason)| {
        ImageError::RecipeInvalid {
            path: recipe.path().to_owned(),
            field: format!("pypi[{i}].file"),
            reason,
        }
    })?;
    let site = format!("usr/local/lib/python{major}.{minor}/dist-packages");
    let pairs: Vec<(&recipe::PypiWheel, &Path)> = recipe
        .pypi()
        .iter()
        .zip(wheels.iter().map(PathBuf::as_path))
        .collect();
    let tar_path = dir.join("wheels.tar");
    pypi::write_layer_file(&pairs, &site, found, &tar_path).map_err(|(i, e)| {
        ImageError::InvalidDocument {
            what: format!(
                "PyPI wheel {} (pypi[{i}] of {})",
                recipe.pypi()[i].file,
                recipe.path().display()
            ),
            reason: e.to_string(),
        }
    })?;
    let tar =
        std::fs::File::open(&tar_path).map_err(|e| ImageError::io("opening", &tar_path, e))?;
    writer
        .add_layer_tar(std::io::BufReader::new(tar), COMPRESSION)
        .map_err(writer_err)?;
    let _ = std::fs::remove_file(&tar_path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole build with a wheel (the real mmdebstrap, like tests/build.rs:
    /// root, the mmdebstrap package, a Debian mirror): the wheel, served by a
    /// local index, lands in the Python the system has, in a layer between the
    /// system and the files; a rebuild takes the wheel from the store.
    #[test]
    fn builds_an_image_with_a_wheel_from_the_index() {
        use std::sync::atomic::Ordering;

        let wheel = pypi::tests::zip_of(&[
            ("demo/__init__.py", Some(0o644), b"ANSWER = 42\n"),
            ("demo-1.0.dist-info/METADATA", Some(0o644), b"Name: demo\n"),
        ]);
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&wheel));
        let (index, hits) = pypi::tests::serve(pypi::tests::index_json(Some(&sha)), wheel);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("data"), crate::StoreOptions::default()).unwrap();
        let text = format!(
            "name = \"runbox-test/wheel:1\"\n[debian]\npackages = [\"python3\"]\n\
             [[pypi]]\nname = \"demo\"\nversion = \"1.0\"\nfile = \"demo-1.0-py3-none-any.whl\"\nsha256 = \"{sha}\"\n\
             [[files]]\npath = \"/usr/local/bin/hello\"\nmode = 0o755\ntext = \"#!/bin/sh\\n\"\n"
        );
        let recipe = Recipe::parse(&text, &dir.path().join("r.toml")).unwrap();
        let opts = BuildOptions {
            scratch_dir: Some("/dev/shm".into()),
            pypi_index: Some(index),
            ..BuildOptions::default()
        };
        let report = store.build(&recipe, &opts, &NoProgress).unwrap();
        assert_eq!(
            hits.load(Ordering::SeqCst),
            2,
            "the index page and the wheel"
        );
        let layers = &report.image.layers;
        assert_eq!(layers.len(), 3, "system, wheels, files");
        let site = store
            .layer_dir(&layers[1].diff_id)
            .join("usr/local/lib/python3.11/dist-packages");
        assert_eq!(
            std::fs::read(site.join("demo/__init__.py")).unwrap(),
            b"ANSWER = 42\n"
        );
        assert!(site.join("demo-1.0.dist-info/METADATA").is_file());
        assert!(store
            .layer_dir(&layers[2].diff_id)
            .join("usr/local/bin/hello")
            .is_file());
        let again = BuildOptions {
            force: true,
            ..opts
        };
        let rebuilt = store.build(&recipe, &again, &NoProgress).unwrap();
        assert!(!rebuilt.cached);
        assert_eq!(rebuilt.image.layers[1].diff_id, layers[1].diff_id);
        assert_eq!(
            hits.load(Ordering::SeqCst),
            2,
            "the wheel came from the store"
        );
    }

    #[test]
    fn phases_are_reported_once_and_only_forward() {
        #[derive(Default)]
        struct Rec(std::sync::Mutex<Vec<BuildPhase>>);
        impl BuildProgress for Rec {
            fn phase(&self, p: BuildPhase, _: Duration) {
                self.0.lock().unwrap().push(p);
            }
        }
        let rec = Rec::default();
        let phases = Phases {
            progress: &rec,
            started: Instant::now(),
            current: AtomicU8::new(0),
        };
        for p in [
            BuildPhase::Resolving,
            BuildPhase::Downloading,
            BuildPhase::Resolving,
            BuildPhase::Installing,
            BuildPhase::Installing,
            BuildPhase::Importing,
            BuildPhase::Packing,
        ] {
            phases.enter(p);
        }
        assert_eq!(
            *rec.0.lock().unwrap(),
            [
                BuildPhase::Resolving,
                BuildPhase::Downloading,
                BuildPhase::Installing,
                BuildPhase::Importing
            ]
        );
    }
}
