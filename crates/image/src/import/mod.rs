//! [`Store::import`]: from an untrusted OCI layout, OCI archive or docker-save
//! tarball to a verified image record with unpacked layers.
//!
//! Every step works in a staging directory `tmp/import-<pid>-<random>/` (flocked
//! while the import runs) and only the final commit, under the index lock, moves
//! verified blobs and complete layers into place and writes the record. A failed
//! import therefore leaves the store as it was.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::ImageConfiguration;
use runbox_core::{Digest, ImageRef};
use rustix::fs::{FlockOperation, Mode, RenameFlags};
use serde::{Deserialize, Serialize};

use crate::blob::StagedBlob;
use crate::error::{ImageError, Result};
use crate::fsutil;
use crate::progress::ImportProgress;
use crate::record::{ImageRecord, LayerRef};
use crate::source::{Links, Source};
use crate::store::{LayerMarker, Store};

mod layers;
mod plan;
mod pull;

use layers::run_layer_jobs;
use plan::{image_config, plan_docker, plan_oci, synthesize_manifest};
pub use pull::{PullOptions, PullReport};

/// Options for [`Store::import`].
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// `name[:tag]` to give the image (tag defaults to the source's tag, else
    /// `latest`). Moves the name from any other image that holds it.
    pub name: Option<String>,
}

/// What [`Store::import`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    pub image: ImageRecord,
    /// The image was already in the store (only names may have been added).
    pub already_present: bool,
    pub layers_unpacked: usize,
    pub layers_reused: usize,
    /// Bytes read from the source (blobs copied and verified).
    pub bytes_read: u64,
}

/// The import's private directory under `tmp/`, flocked while it lives so
/// [`Store::open`] of another process never removes it; removed on drop.
struct Staging {
    path: PathBuf,
    _lock: OwnedFd,
}

impl Staging {
    fn new(tmp: &Path) -> Result<Staging> {
        // Another process's Store::open may flock a directory in the instant
        // between our mkdir and flock (taking it for a crashed import's): then
        // the directory is not ours any more, so use a fresh name.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let path = tmp.join(fsutil::unique_name("import"));
            rustix::fs::mkdir(&path, Mode::from_raw_mode(0o700))
                .map_err(|e| ImageError::io("creating", &path, e.into()))?;
            let fd = fsutil::open_dir(&path).map_err(|e| ImageError::io("opening", &path, e))?;
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) if attempts < 5 => continue,
                Err(e) => return Err(ImageError::io("locking", &path, e.into())),
            }
            for sub in ["blobs", "layers"] {
                let p = path.join(sub);
                std::fs::create_dir(&p).map_err(|e| ImageError::io("creating", &p, e))?;
            }
            return Ok(Staging { path, _lock: fd });
        }
    }

    fn blobs(&self) -> PathBuf {
        self.path.join("blobs")
    }

    fn layers(&self) -> PathBuf {
        self.path.join("layers")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = fsutil::remove_tree(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove import staging");
        }
    }
}

/// One layer as the source describes it.
#[derive(Debug, Clone)]
struct LayerPlan {
    /// File name in the source.
    file: String,
    links: Links,
    digest: Option<Digest>,
    size: Option<u64>,
    media_type: Option<String>,
    diff_id: Digest,
}

/// What the source says the image is, before layers are read.
struct Plan {
    /// The manifest, already verified and staged (OCI), or `None` for a legacy
    /// docker-save, whose manifest is synthesized once the layer digests are known.
    manifest: Option<StagedBlob>,
    config: StagedBlob,
    config_doc: ImageConfiguration,
    layers: Vec<LayerPlan>,
    names: Vec<String>,
    platform: String,
}

/// A layer after its job ran.
#[derive(Debug, Clone)]
struct LayerDone {
    blob_digest: Digest,
    blob_size: u64,
    media_type: String,
    unpacked: Option<(u64, u64)>,
    /// The blob was read from the source (not already in the store).
    copied: bool,
}

struct Ctx<'a> {
    store: &'a Store,
    source: &'a Source,
    staging: &'a Staging,
    progress: &'a dyn ImportProgress,
    cancel: AtomicBool,
    wanted: Option<ImageRef>,
    /// Layer jobs run at once.
    workers: usize,
}

/// The available cores: layer jobs of an import are CPU-bound (hashing,
/// decompressing, unpacking).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Store {
    /// Imports an image from `path`: an OCI image layout directory, an OCI archive
    /// (a tar of a layout, optionally gzip-compressed), or a `docker save` tarball.
    /// Every blob is verified (size and sha256) before it is parsed or
    /// decompressed; every layer's uncompressed digest must match the config's
    /// diff_id. Importing an image that is already present only adds the name.
    /// On any error the store is unchanged.
    pub fn import(
        &self,
        path: &Path,
        opts: &ImportOptions,
        progress: &dyn ImportProgress,
    ) -> Result<ImportReport> {
        let wanted = opts.name.as_deref().map(parse_wanted_name).transpose()?;
        // gc must not remove layers this import decides to reuse.
        let _lease = self.lock_shared()?;
        let staging = Staging::new(self.tmp_dir())?;
        let source = Source::open(path, &staging.path, &self.limits)?;
        let ctx = Ctx {
            store: self,
            source: &source,
            staging: &staging,
            progress,
            cancel: AtomicBool::new(false),
            wanted,
            workers: cores(),
        };

        let plan = if source.has_file("index.json") {
            plan_oci(&ctx)?
        } else if source.has_file("manifest.json") {
            plan_docker(&ctx)?
        } else {
            return Err(ImageError::UnrecognizedInput {
                path: path.to_owned(),
                reason: "it has neither index.json (OCI layout) nor manifest.json (docker save)"
                    .into(),
            });
        };
        Ok(self.import_plan(&ctx, plan)?.0)
    }

    /// The part of an import (or pull) after planning: an image already present
    /// only gets the names; otherwise the layer jobs run and everything is
    /// committed. Also returns how many layer blobs were read from the source.
    fn import_plan(&self, ctx: &Ctx<'_>, plan: Plan) -> Result<(ImportReport, usize)> {
        let staging = ctx.staging;
        // Already here? (Same manifest, or for docker-save the same config, whose
        // diff_ids pin the layer contents.)
        let existing = self
            .load_records()?
            .into_iter()
            .find(|r| match &plan.manifest {
                Some(m) => r.manifest_digest == m.digest,
                None => r.config_digest == plan.config.digest,
            });
        if let Some(record) = existing {
            let image = self.commit_names(&record.manifest_digest, &plan.names)?;
            let report = ImportReport {
                image,
                already_present: true,
                layers_unpacked: 0,
                layers_reused: 0,
                bytes_read: plan.config.size + plan.manifest.as_ref().map_or(0, |m| m.size),
            };
            return Ok((report, 0));
        }

        let done = run_layer_jobs(ctx, &plan.layers)?;
        let mut bytes_read = plan.config.size + plan.manifest.as_ref().map_or(0, |m| m.size);
        let manifest = match plan.manifest {
            Some(m) => m,
            None => synthesize_manifest(ctx, &plan.config, &done)?,
        };
        let mut layers = Vec::with_capacity(plan.layers.len());
        let (mut unpacked, mut reused) = (0, 0);
        let mut sizes: HashMap<Digest, u64> = HashMap::new();
        for (lp, d) in plan.layers.iter().zip(&done) {
            if d.copied {
                bytes_read += d.blob_size;
            }
            if let Some((bytes, _)) = d.unpacked {
                sizes.insert(lp.diff_id.clone(), bytes);
            }
        }
        for (lp, d) in plan.layers.iter().zip(&done) {
            let unpacked_size = match sizes.get(&lp.diff_id) {
                Some(b) => *b,
                None => self
                    .read_marker(&lp.diff_id)
                    .map(|m| m.unpacked_bytes)
                    .unwrap_or(0),
            };
            if d.unpacked.is_some() {
                unpacked += 1;
            } else {
                reused += 1;
            }
            layers.push(LayerRef {
                diff_id: lp.diff_id.clone(),
                blob_digest: d.blob_digest.clone(),
                media_type: d.media_type.clone(),
                compressed_size: d.blob_size,
                unpacked_size,
            });
        }
        let record = ImageRecord {
            names: plan.names.clone(),
            manifest_digest: manifest.digest.clone(),
            config_digest: plan.config.digest.clone(),
            size_bytes: layers.iter().map(|l| l.unpacked_size).sum(),
            layers,
            config: image_config(&plan.config_doc),
            platform: plan.platform.clone(),
            imported_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let (image, already_present) = self.commit(staging, record, &done, &plan.layers)?;
        let copied = done.iter().filter(|d| d.copied).count();
        let report = ImportReport {
            image,
            already_present,
            layers_unpacked: unpacked,
            layers_reused: reused,
            bytes_read,
        };
        Ok((report, copied))
    }

    fn read_marker(&self, diff_id: &Digest) -> Option<LayerMarker> {
        let bytes = std::fs::read(self.marker_path(diff_id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Adds names to an existing record (moving them from other records).
    fn commit_names(&self, manifest: &Digest, names: &[String]) -> Result<ImageRecord> {
        let _index = self.lock_index()?;
        let mut records = self.load_records()?;
        let Some(i) = records.iter().position(|r| r.manifest_digest == *manifest) else {
            return Err(ImageError::Internal(
                "the record vanished during import".into(),
            ));
        };
        if names.iter().all(|n| records[i].names.contains(n)) {
            return Ok(records[i].clone());
        }
        assign_names(&mut records, i, names);
        let image = records[i].clone();
        self.save_records(records)?;
        Ok(image)
    }

    /// Moves verified blobs and complete layers into place, writes markers, then
    /// the record. Returns the record as stored and whether it already existed.
    fn commit(
        &self,
        staging: &Staging,
        record: ImageRecord,
        done: &[LayerDone],
        plans: &[LayerPlan],
    ) -> Result<(ImageRecord, bool)> {
        // Everything staged reaches the disk before a marker or record names it.
        let fd = fsutil::open_dir(&staging.path)
            .map_err(|e| ImageError::io("opening", &staging.path, e))?;
        rustix::fs::syncfs(&fd).map_err(|e| ImageError::io("syncing", &staging.path, e.into()))?;

        let _index = self.lock_index()?;
        let blobs_dir = staging.blobs();
        for name in
            std::fs::read_dir(&blobs_dir).map_err(|e| ImageError::io("reading", &blobs_dir, e))?
        {
            let name = name
                .map_err(|e| ImageError::io("reading", &blobs_dir, e))?
                .file_name();
            let Some(hex) = name.to_str().filter(|n| Digest::from_hex(n).is_ok()) else {
                continue;
            };
            let from = blobs_dir.join(hex);
            let to = self.blob_path(&Digest::from_hex(hex).expect("checked"));
            std::fs::rename(&from, &to).map_err(|e| ImageError::io("renaming", &to, e))?;
        }
        let layers_dir = fsutil::open_dir(self.layers_dir())
            .map_err(|e| ImageError::io("opening", self.layers_dir(), e))?;
        let staged_layers = fsutil::open_dir(&staging.layers())
            .map_err(|e| ImageError::io("opening", staging.layers(), e))?;
        for (plan, d) in plans.iter().zip(done) {
            let Some((bytes, entries)) = d.unpacked else {
                continue;
            };
            let hex = plan.diff_id.hex();
            if self.layer_complete(&plan.diff_id) {
                continue; // another import finished it meanwhile
            }
            // A directory without a marker is a crashed commit's: replace it.
            fsutil::remove_tree_at(layers_dir.as_fd(), OsStr::new(hex))
                .map_err(|e| ImageError::io("removing", self.layer_dir(&plan.diff_id), e))?;
            match rustix::fs::renameat_with(
                &staged_layers,
                hex,
                &layers_dir,
                hex,
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) => {}
                Err(rustix::io::Errno::NOENT) => continue, // duplicate diff_id, moved already
                Err(e) => {
                    return Err(ImageError::io(
                        "renaming",
                        self.layer_dir(&plan.diff_id),
                        e.into(),
                    ))
                }
            }
            let marker = LayerMarker {
                diff_id: plan.diff_id.clone(),
                unpacked_bytes: bytes,
                entries,
            };
            self.write_json(&self.marker_path(&plan.diff_id), &marker)?;
        }
        let mut records = self.load_records()?;
        let (i, existed) = match records
            .iter()
            .position(|r| r.manifest_digest == record.manifest_digest)
        {
            Some(i) => (i, true),
            None => {
                records.push(ImageRecord {
                    names: Vec::new(),
                    ..record.clone()
                });
                (records.len() - 1, false)
            }
        };
        assign_names(&mut records, i, &record.names);
        let image = records[i].clone();
        self.save_records(records)?;
        Ok((image, existed))
    }
}

/// Gives `names` to `records[i]`, removing them from every other record.
fn assign_names(records: &mut [ImageRecord], i: usize, names: &[String]) {
    for (j, r) in records.iter_mut().enumerate() {
        if j != i {
            r.names.retain(|n| !names.contains(n));
        }
    }
    for n in names {
        if !records[i].names.contains(n) {
            records[i].names.push(n.clone());
        }
    }
}

fn parse_wanted_name(name: &str) -> Result<ImageRef> {
    let r = ImageRef::parse(name).map_err(|e| ImageError::InvalidName {
        name: name.to_owned(),
        source: e,
    })?;
    if r.digest.is_some() || r.name.is_none() {
        return Err(ImageError::InvalidNameForm {
            name: name.to_owned(),
            reason: "a name to give an image is name[:tag], without a digest",
        });
    }
    Ok(r)
}
