//! [`Store`]: the on-disk, content-addressed image store.
//!
//! ```text
//! <data>/store.json          {"format_version":1, "id_base": N}
//! <data>/images.json         image records (atomic write under index.lock)
//! <data>/index.lock          flock held exclusively around read-modify-write of images.json
//! <data>/store.lock          runs and imports hold it shared; gc takes it exclusive
//! <data>/blobs/sha256/<hex>  verified blobs
//! <data>/layers/<hex>/       unpacked layer (diff_id), read-only by convention
//! <data>/layers/<hex>.json   marker, written last: the layer is complete
//! <data>/tmp/                staging, one flocked directory per import, build or commit
//! ```

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use runbox_core::{Digest, IdMap, ImageRef};
use rustix::fs::{Dir, FlockOperation};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Result};
use crate::fsutil::{self, lock_file, LockMode};
use crate::limits::ImportLimits;
use crate::record::ImageRecord;

const FORMAT_VERSION: u32 = 1;

/// Options for [`Store::open`].
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Host id of uid/gid 0 inside sandboxes. `None`: the store's existing value, or
    /// [`IdMap::DEFAULT_BASE`] for a new store. A value different from an existing
    /// store's is an error ([`ImageError::IdBaseMismatch`]).
    pub id_base: Option<u32>,
    /// Bounds for imports.
    pub limits: ImportLimits,
}

/// The image store in one data directory. Cheap to share between threads; all
/// coordination with other processes goes through file locks.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    blobs: PathBuf,
    layers: PathBuf,
    tmp: PathBuf,
    id_map: IdMap,
    pub(crate) limits: ImportLimits,
}

/// A shared hold on the store: while any lease exists, gc and rm cannot delete
/// layers. A run holds one while its overlay is mounted.
#[derive(Debug)]
pub struct StoreLease {
    _file: File,
}

/// What [`Store::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub layers_removed: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
}

/// What [`Store::remove`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveReport {
    /// Names removed from an image that keeps other names (the image stays).
    pub untagged: Vec<String>,
    /// The image record removed, if the whole image was removed.
    pub removed: Option<ImageRecord>,
    /// The gc that followed, if it could run.
    pub gc: Option<GcReport>,
    /// True when the store was in use, so the space is freed by the next gc.
    pub gc_deferred: bool,
}

/// Space used by the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub images: usize,
    pub layers: usize,
    /// File content bytes of unpacked layers.
    pub layers_bytes: u64,
    pub blobs: usize,
    pub blobs_bytes: u64,
    /// Bytes a gc would free now.
    pub reclaimable_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoreFile {
    format_version: u32,
    id_base: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexFile {
    format_version: u32,
    images: Vec<ImageRecord>,
}

/// The marker `<data>/layers/<hex>.json`, written last.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LayerMarker {
    pub diff_id: Digest,
    pub unpacked_bytes: u64,
    pub entries: u64,
}

/// How a reference matched in [`Store::resolve`].
enum Matched {
    Name(String),
    Digest,
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir`, mode 0700. Removes
    /// staging left in `tmp/` by crashed imports.
    pub fn open(data_dir: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        let root = data_dir.as_ref().to_owned();
        if let Some(base) = options.id_base {
            if base.checked_add(IdMap::SIZE).is_none() {
                return Err(ImageError::IdBaseOutOfRange(base));
            }
        }
        let mut store = Store {
            blobs: root.join("blobs").join("sha256"),
            layers: root.join("layers"),
            tmp: root.join("tmp"),
            root,
            id_map: IdMap::default(),
            limits: options.limits,
        };
        let store_json = store.root.join("store.json");
        // store.json is written last when a store is created: when it is there, the
        // directories and lock files are too (every `runbox run` opens the store, so
        // this path stays short).
        let base = match std::fs::read(&store_json) {
            Ok(bytes) => Self::check_store_file(&store, &store_json, &bytes, options.id_base)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                store.create(&store_json, options.id_base)?
            }
            Err(e) => return Err(ImageError::io("reading", &store_json, e)),
        };
        store.id_map = IdMap { base };
        store.clean_tmp()?;
        Ok(store)
    }

    /// Makes the directories, lock files and store.json of a new store (mode 0700).
    fn create(&self, store_json: &Path, id_base: Option<u32>) -> Result<u32> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| ImageError::io("creating", &self.root, e))?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ImageError::io("setting the mode of", &self.root, e))?;
        for d in [&self.blobs, &self.layers, &self.tmp] {
            std::fs::create_dir_all(d).map_err(|e| ImageError::io("creating", d, e))?;
        }
        let _index = self.lock_index()?;
        // Created up front so the first run or import changes nothing visible.
        let store_lock = self.root.join("store.lock");
        lock_file(&store_lock, LockMode::Shared, false)
            .map_err(|e| ImageError::io("creating", &store_lock, e))?;
        // Another process may have created the store while we waited for the lock.
        match std::fs::read(store_json) {
            Ok(bytes) => Self::check_store_file(self, store_json, &bytes, id_base),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let base = id_base.unwrap_or(IdMap::DEFAULT_BASE);
                let f = StoreFile {
                    format_version: FORMAT_VERSION,
                    id_base: base,
                };
                self.write_json(store_json, &f)?;
                Ok(base)
            }
            Err(e) => Err(ImageError::io("reading", store_json, e)),
        }
    }

    /// Parses store.json and checks it against the requested id base.
    fn check_store_file(
        &self,
        store_json: &Path,
        bytes: &[u8],
        requested: Option<u32>,
    ) -> Result<u32> {
        let f: StoreFile = serde_json::from_slice(bytes).map_err(|e| ImageError::StoreCorrupt {
            path: store_json.to_owned(),
            reason: e.to_string(),
        })?;
        if f.format_version != FORMAT_VERSION {
            return Err(ImageError::StoreCorrupt {
                path: store_json.to_owned(),
                reason: format!("unsupported format_version {}", f.format_version),
            });
        }
        if let Some(requested) = requested {
            if requested != f.id_base {
                return Err(ImageError::IdBaseMismatch {
                    path: self.root.clone(),
                    store: f.id_base,
                    requested,
                });
            }
        }
        Ok(f.id_base)
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<data>/layers`: the directory holding unpacked layers named by diff_id hex.
    /// The sandbox chdirs here and uses relative names in `lowerdir=`.
    pub fn layers_dir(&self) -> &Path {
        &self.layers
    }

    /// The unpacked layer with this diff_id: `<data>/layers/<hex>`.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.layers.join(diff_id.hex())
    }

    /// The stored blob with this digest: `<data>/blobs/sha256/<hex>`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// The id range layers are owned by.
    pub fn id_map(&self) -> IdMap {
        self.id_map
    }

    /// The import limits in force.
    pub fn limits(&self) -> &ImportLimits {
        &self.limits
    }

    pub(crate) fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Takes the store lock shared for as long as the lease lives: gc (and the gc
    /// part of rm) cannot remove anything meanwhile. Waits only while a gc runs.
    pub fn lock_shared(&self) -> Result<StoreLease> {
        let path = self.root.join("store.lock");
        let file = lock_file(&path, LockMode::Shared, true)
            .map_err(|e| ImageError::io("locking", &path, e))?
            .ok_or_else(|| ImageError::Internal("blocking flock returned would-block".into()))?;
        Ok(StoreLease { _file: file })
    }

    pub(crate) fn lock_index(&self) -> Result<File> {
        let path = self.root.join("index.lock");
        lock_file(&path, LockMode::Exclusive, true)
            .map_err(|e| ImageError::io("locking", &path, e))?
            .ok_or_else(|| ImageError::Internal("blocking flock returned would-block".into()))
    }

    fn lock_exclusive_now(&self) -> Result<File> {
        let path = self.root.join("store.lock");
        lock_file(&path, LockMode::Exclusive, false)
            .map_err(|e| ImageError::io("locking", &path, e))?
            .ok_or(ImageError::StoreBusy {
                path: self.root.clone(),
            })
    }

    pub(crate) fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(value)
            .map_err(|e| ImageError::Internal(format!("serializing {}: {e}", path.display())))?;
        bytes.push(b'\n');
        fsutil::atomic_write(&self.tmp, path, &bytes)
            .map_err(|e| ImageError::io("writing", path, e))
    }

    /// Reads images.json (a missing file is an empty store).
    pub(crate) fn load_records(&self) -> Result<Vec<ImageRecord>> {
        let path = self.root.join("images.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let f: IndexFile =
                    serde_json::from_slice(&bytes).map_err(|e| ImageError::StoreCorrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if f.format_version != FORMAT_VERSION {
                    return Err(ImageError::StoreCorrupt {
                        path,
                        reason: format!("unsupported format_version {}", f.format_version),
                    });
                }
                Ok(f.images)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(ImageError::io("reading", &path, e)),
        }
    }

    /// Writes images.json. The caller holds the index lock.
    pub(crate) fn save_records(&self, images: Vec<ImageRecord>) -> Result<()> {
        let path = self.root.join("images.json");
        self.write_json(
            &path,
            &IndexFile {
                format_version: FORMAT_VERSION,
                images,
            },
        )
    }

    /// Whether the layer with this diff_id is completely unpacked (its marker exists).
    pub fn layer_complete(&self, diff_id: &Digest) -> bool {
        self.layers
            .join(format!("{}.json", diff_id.hex()))
            .is_file()
            && self.layer_dir(diff_id).is_dir()
    }

    pub(crate) fn marker_path(&self, diff_id: &Digest) -> PathBuf {
        self.layers.join(format!("{}.json", diff_id.hex()))
    }

    /// Forgets the unpacked form of a layer found damaged (a snapshot layer whose
    /// tree digest no longer matches): its marker goes first, so the layer counts
    /// as incomplete and the next import that needs it unpacks it again from its
    /// verified blob; then the directory is moved aside and removed. Sandboxes
    /// still running on it keep what they have open.
    pub fn discard_layer(&self, diff_id: &Digest) -> Result<()> {
        let _index = self.lock_index()?;
        let marker = self.marker_path(diff_id);
        match std::fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("removing", &marker, e)),
        }
        let dir = self.layer_dir(diff_id);
        if dir.exists() {
            let aside = self.tmp.join(fsutil::unique_name("discarded"));
            std::fs::rename(&dir, &aside).map_err(|e| ImageError::io("moving", &dir, e))?;
            fsutil::remove_tree(&aside).map_err(|e| ImageError::io("removing", &aside, e))?;
        }
        tracing::warn!(layer = %diff_id, "discarded a damaged unpacked layer");
        Ok(())
    }

    /// All images, sorted by name then digest.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let mut records = self.load_records()?;
        records.sort_by(|a, b| {
            a.names
                .first()
                .cmp(&b.names.first())
                .then(a.manifest_digest.cmp(&b.manifest_digest))
        });
        Ok(records)
    }

    /// Finds one image by `name[:tag]` (tag defaults to `latest`), by full
    /// `sha256:` manifest or config digest (the config digest is Docker's image id),
    /// by `name[:tag]@sha256:...` (the manifest digest decides when the name is
    /// not in the store), or by a unique prefix of at least 6 hex characters of
    /// the digests.
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord> {
        let records = self.load_records()?;
        let (i, _) = resolve_in(&records, reference)?;
        Ok(records[i].clone())
    }

    /// Removes an image. By name, when the image has other names, only that name
    /// is removed (like `docker rmi` of one tag); otherwise the record goes and a gc
    /// runs. If the store is in use (a run holds it) the space is freed by a later
    /// gc, which the report says.
    pub fn remove(&self, reference: &str) -> Result<RemoveReport> {
        let mut report = {
            let _index = self.lock_index()?;
            let mut records = self.load_records()?;
            let (i, matched) = resolve_in(&records, reference)?;
            let report = match matched {
                Matched::Name(name) if records[i].names.len() > 1 => {
                    records[i].names.retain(|n| *n != name);
                    RemoveReport {
                        untagged: vec![name],
                        removed: None,
                        gc: None,
                        gc_deferred: false,
                    }
                }
                _ => {
                    let r = records.remove(i);
                    RemoveReport {
                        untagged: r.names.clone(),
                        removed: Some(r),
                        gc: None,
                        gc_deferred: false,
                    }
                }
            };
            self.save_records(records)?;
            report
        };
        if report.removed.is_some() {
            match self.gc() {
                Ok(gc) => report.gc = Some(gc),
                Err(ImageError::StoreBusy { .. }) => report.gc_deferred = true,
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// Removes layers, blobs and staging no image references. Fails with
    /// [`ImageError::StoreBusy`] at once (never waits) while a run or an import
    /// holds the store.
    pub fn gc(&self) -> Result<GcReport> {
        let _exclusive = self.lock_exclusive_now()?;
        let _index = self.lock_index()?;
        let records = self.load_records()?;
        let (keep_layers, keep_blobs) = referenced(&records);
        let mut report = GcReport::default();

        // Markers first: an interrupted gc leaves a marker-less directory, which
        // counts as incomplete and is removed next time.
        let mut removed_markers = HashSet::new();
        for name in list_dir(&self.layers)? {
            let Some(hex) = name.strip_suffix(".json") else {
                continue;
            };
            if keep_layers.contains(hex) {
                continue;
            }
            let path = self.layers.join(&name);
            if let Ok(bytes) = std::fs::read(&path) {
                if let Ok(m) = serde_json::from_slice::<LayerMarker>(&bytes) {
                    report.bytes_freed += m.unpacked_bytes;
                }
            }
            std::fs::remove_file(&path).map_err(|e| ImageError::io("removing", &path, e))?;
            removed_markers.insert(hex.to_owned());
        }
        for name in list_dir(&self.layers)? {
            if name.ends_with(".json") || keep_layers.contains(name.as_str()) {
                continue;
            }
            let path = self.layers.join(&name);
            fsutil::remove_tree(&path).map_err(|e| ImageError::io("removing", &path, e))?;
            report.layers_removed += 1;
        }
        for name in list_dir(&self.blobs)? {
            if keep_blobs.contains(name.as_str()) {
                continue;
            }
            let path = self.blobs.join(&name);
            if let Ok(m) = std::fs::symlink_metadata(&path) {
                report.bytes_freed += m.len();
            }
            fsutil::remove_tree(&path).map_err(|e| ImageError::io("removing", &path, e))?;
            report.blobs_removed += 1;
        }
        // No import runs while we hold the store exclusively: all staging is stale.
        for name in list_dir(&self.tmp)? {
            let path = self.tmp.join(&name);
            fsutil::remove_tree(&path).map_err(|e| ImageError::io("removing", &path, e))?;
        }
        Ok(report)
    }

    /// Space used by images, layers and blobs, and how much a gc would free.
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let records = self.load_records()?;
        let (keep_layers, keep_blobs) = referenced(&records);
        let mut du = DiskUsage {
            images: records.len(),
            ..DiskUsage::default()
        };
        for name in list_dir(&self.layers)? {
            let Some(hex) = name.strip_suffix(".json") else {
                continue;
            };
            let Ok(bytes) = std::fs::read(self.layers.join(&name)) else {
                continue;
            };
            let Ok(m) = serde_json::from_slice::<LayerMarker>(&bytes) else {
                continue;
            };
            du.layers += 1;
            du.layers_bytes += m.unpacked_bytes;
            if !keep_layers.contains(hex) {
                du.reclaimable_bytes += m.unpacked_bytes;
            }
        }
        for name in list_dir(&self.blobs)? {
            let Ok(meta) = std::fs::symlink_metadata(self.blobs.join(&name)) else {
                continue;
            };
            du.blobs += 1;
            du.blobs_bytes += meta.len();
            if !keep_blobs.contains(name.as_str()) {
                du.reclaimable_bytes += meta.len();
            }
        }
        Ok(du)
    }

    /// Removes staging of imports that are no longer running (their directory is
    /// not flocked), and stray temp files.
    fn clean_tmp(&self) -> Result<()> {
        let tmp_fd =
            fsutil::open_dir(&self.tmp).map_err(|e| ImageError::io("opening", &self.tmp, e))?;
        for name in list_dir(&self.tmp)? {
            let path = self.tmp.join(&name);
            let is_dir = std::fs::symlink_metadata(&path)
                .map(|m| m.is_dir())
                .unwrap_or(false);
            if is_dir {
                let Ok(fd) = fsutil::open_dir_beneath(tmp_fd.as_fd(), OsStr::new(&name)) else {
                    continue;
                };
                match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                    Ok(()) => {}
                    Err(Errno::WOULDBLOCK) => continue, // a live import
                    Err(e) => return Err(ImageError::io("locking", &path, e.into())),
                }
            }
            fsutil::remove_tree_at(tmp_fd.as_fd(), OsStr::new(&name))
                .map_err(|e| ImageError::io("removing", &path, e))?;
        }
        Ok(())
    }
}

/// The layer diff_id hexes and blob hexes that records reference.
fn referenced(records: &[ImageRecord]) -> (HashSet<String>, HashSet<String>) {
    let mut layers = HashSet::new();
    let mut blobs = HashSet::new();
    for r in records {
        blobs.insert(r.manifest_digest.hex().to_owned());
        blobs.insert(r.config_digest.hex().to_owned());
        for l in &r.layers {
            layers.insert(l.diff_id.hex().to_owned());
            blobs.insert(l.blob_digest.hex().to_owned());
        }
    }
    (layers, blobs)
}

/// Names in a store directory (not `.`/`..`).
fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let fd: OwnedFd = fsutil::open_dir(dir).map_err(|e| ImageError::io("opening", dir, e))?;
    let mut out = Vec::new();
    for entry in Dir::read_from(&fd).map_err(|e| ImageError::io("reading", dir, e.into()))? {
        let entry = entry.map_err(|e| ImageError::io("reading", dir, e.into()))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        // The store only ever creates ASCII names; anything else is foreign.
        match std::str::from_utf8(name) {
            Ok(s) => out.push(s.to_owned()),
            Err(_) => {
                tracing::warn!(dir = %dir.display(), name = ?OsStr::from_bytes(name), "ignoring foreign file in the store")
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Resolves a reference among records; see [`Store::resolve`].
fn resolve_in(records: &[ImageRecord], reference: &str) -> Result<(usize, Matched)> {
    let not_found = || ImageError::NotFound {
        reference: reference.to_owned(),
    };
    let r = reference.trim();
    if let Some(hex) = r.strip_prefix("sha256:") {
        if hex.len() == 64 {
            let d: Digest = r.parse().map_err(|_| not_found())?;
            return records
                .iter()
                .position(|x| x.manifest_digest == d || x.config_digest == d)
                .map(|i| (i, Matched::Digest))
                .ok_or_else(not_found);
        }
        return by_prefix(records, reference, hex);
    }
    if let Ok(iref) = ImageRef::parse(r) {
        if let Some(name) = iref.name_with_tag() {
            if let Some(i) = records.iter().position(|x| x.names.contains(&name)) {
                if let Some(d) = &iref.digest {
                    if records[i].manifest_digest != *d {
                        return Err(not_found());
                    }
                }
                return Ok((i, Matched::Name(name)));
            }
        }
        // `name@sha256:...` of an image not under that name (e.g. pulled by
        // digest): the digest pins the content.
        if let Some(d) = &iref.digest {
            return records
                .iter()
                .position(|x| x.manifest_digest == *d)
                .map(|i| (i, Matched::Digest))
                .ok_or_else(not_found);
        }
    }
    by_prefix(records, reference, r)
}

fn by_prefix(records: &[ImageRecord], reference: &str, hex: &str) -> Result<(usize, Matched)> {
    let is_hex = hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if hex.len() < 6 || hex.len() > 64 || !is_hex {
        return Err(ImageError::NotFound {
            reference: reference.to_owned(),
        });
    }
    let hits: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, x)| {
            x.manifest_digest.hex().starts_with(hex) || x.config_digest.hex().starts_with(hex)
        })
        .map(|(i, _)| i)
        .collect();
    match hits.as_slice() {
        [] => Err(ImageError::NotFound {
            reference: reference.to_owned(),
        }),
        [i] => Ok((*i, Matched::Digest)),
        many => Err(ImageError::AmbiguousReference {
            reference: reference.to_owned(),
            candidates: many
                .iter()
                .map(|&i| {
                    let x = &records[i];
                    match x.names.first() {
                        Some(n) => format!("{} ({n})", x.short_id()),
                        None => x.short_id().to_owned(),
                    }
                })
                .collect(),
        }),
    }
}
