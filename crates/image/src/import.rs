//! [`Store::import`]: from an untrusted OCI layout, OCI archive or docker-save
//! tarball to a verified image record with unpacked layers.
//!
//! Every step works in a staging directory `tmp/import-<pid>-<random>/` (flocked
//! while the import runs) and only the final commit, under the index lock, moves
//! verified blobs and complete layers into place and writes the record. A failed
//! import therefore leaves the store as it was.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use runbox_core::{Digest, ImageRef};
use rustix::fs::{FlockOperation, Mode, RenameFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::blob::{copy_verified, read_staged, Expect, StagedBlob};
use crate::error::{ImageError, Result};
use crate::fsutil;
use crate::progress::ImportProgress;
use crate::record::{host_platform, ImageConfig, ImageRecord, LayerRef};
use crate::source::{normalize_member, Links, Source};
use crate::store::{LayerMarker, Store};
use crate::unpack::{
    check_layer_media_type, sniff_compression, unpack_layer, Compression, LayerJob,
};

const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const MAX_INDEX_DEPTH: usize = 4;

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
}

struct Ctx<'a> {
    store: &'a Store,
    source: &'a Source,
    staging: &'a Staging,
    progress: &'a dyn ImportProgress,
    cancel: AtomicBool,
    wanted: Option<ImageRef>,
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
            return Ok(ImportReport {
                image,
                already_present: true,
                layers_unpacked: 0,
                layers_reused: 0,
                bytes_read: plan.config.size + plan.manifest.as_ref().map_or(0, |m| m.size),
            });
        }

        let done = run_layer_jobs(&ctx, &plan.layers)?;
        let mut bytes_read = plan.config.size + plan.manifest.as_ref().map_or(0, |m| m.size);
        let manifest = match plan.manifest {
            Some(m) => m,
            None => synthesize_manifest(&ctx, &plan.config, &done)?,
        };
        let mut layers = Vec::with_capacity(plan.layers.len());
        let (mut unpacked, mut reused) = (0, 0);
        let mut sizes: HashMap<Digest, u64> = HashMap::new();
        for (lp, d) in plan.layers.iter().zip(&done) {
            bytes_read += d.blob_size;
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
        let (image, already_present) = self.commit(&staging, record, &done, &plan.layers)?;
        Ok(ImportReport {
            image,
            already_present,
            layers_unpacked: unpacked,
            layers_reused: reused,
            bytes_read,
        })
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

/// Whether a `ref.name` annotation is just a tag (as skopeo's `oci:dir:tag` writes)
/// rather than a full reference.
fn is_plain_tag(s: &str) -> bool {
    !s.contains('/') && !s.contains(':') && ImageRef::parse(&format!("x:{s}")).is_ok()
}

/// The names an imported image gets.
fn choose_names(
    wanted: Option<&ImageRef>,
    ref_name: Option<&str>,
    full_names: &[String],
) -> Vec<String> {
    if let Some(w) = wanted {
        let name = w.name.as_deref().unwrap_or_default();
        let tag = match (&w.tag, ref_name) {
            (Some(t), _) => t.clone(),
            (None, Some(r)) if is_plain_tag(r) => r.to_owned(),
            (None, _) => "latest".to_owned(),
        };
        return vec![format!("{name}:{tag}")];
    }
    let mut out = Vec::new();
    let push = |out: &mut Vec<String>, s: &str| match ImageRef::parse(s) {
        Ok(r) if r.digest.is_none() => {
            if let Some(n) = r.name_with_tag() {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        _ => tracing::warn!(name = s, "ignoring an invalid image name in the source"),
    };
    for n in full_names {
        push(&mut out, n);
    }
    if out.is_empty() {
        if let Some(r) = ref_name.filter(|r| !is_plain_tag(r)) {
            push(&mut out, r);
        }
    }
    out
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::InvalidDocument {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

fn to_digest(d: &oci_spec::image::Digest, what: &str) -> Result<Digest> {
    d.to_string()
        .parse()
        .map_err(|_| ImageError::UnsupportedDigest {
            what: what.to_owned(),
            digest: d.to_string(),
        })
}

fn host_platform_string() -> String {
    let (os, arch) = host_platform();
    format!("{os}/{arch}")
}

fn platform_string(os: &str, arch: &str, variant: Option<&str>) -> String {
    match variant {
        Some(v) if !v.is_empty() => format!("{os}/{arch}/{v}"),
        _ => format!("{os}/{arch}"),
    }
}

fn platform_matches(os: &str, arch: &str, variant: Option<&str>) -> bool {
    let (host_os, host_arch) = host_platform();
    os == host_os
        && arch == host_arch
        && (host_arch != "arm64" || matches!(variant, None | Some("") | Some("v8")))
}

impl Ctx<'_> {
    fn fetch_document(&self, desc: &Descriptor, what: &str) -> Result<(StagedBlob, Vec<u8>)> {
        let digest = to_digest(desc.digest(), what)?;
        let max = self.store.limits.max_document_bytes;
        if desc.size() > max {
            return Err(ImageError::DocumentTooLarge {
                what: format!("{what} {digest}"),
                size: desc.size(),
                limit: max,
            });
        }
        let blob = copy_verified(
            self.source,
            &format!("blobs/sha256/{}", digest.hex()),
            Links::Refuse,
            Expect {
                what,
                digest: Some(&digest),
                size: Some(desc.size()),
                max,
            },
            &self.staging.blobs(),
            self.progress,
            &self.cancel,
        )?;
        let bytes = read_staged(&blob)?;
        Ok((blob, bytes))
    }
}

/// Picks the image for this host from an index, descending nested indexes.
fn select_manifest(
    ctx: &Ctx<'_>,
    index: &ImageIndex,
    depth: usize,
    inherited_ref: Option<String>,
) -> Result<(Descriptor, Option<String>)> {
    if depth > MAX_INDEX_DEPTH {
        return Err(ImageError::IndexTooDeep(MAX_INDEX_DEPTH));
    }
    let mut available = Vec::new();
    let mut candidates: Vec<(&Descriptor, Option<String>)> = Vec::new();
    for d in index.manifests() {
        let mt = d.media_type().to_string();
        let ann = d.annotations().as_ref();
        if ann
            .and_then(|a| a.get("vnd.docker.reference.type"))
            .is_some_and(|t| t == "attestation-manifest")
        {
            continue;
        }
        if ![
            MT_OCI_INDEX,
            MT_DOCKER_LIST,
            MT_OCI_MANIFEST,
            MT_DOCKER_MANIFEST,
        ]
        .contains(&mt.as_str())
        {
            continue;
        }
        if let Some(p) = d.platform() {
            let (os, arch) = (p.os().to_string(), p.architecture().to_string());
            let variant = p.variant().as_deref();
            if os == "unknown" {
                continue;
            }
            available.push(platform_string(&os, &arch, variant));
            if !platform_matches(&os, &arch, variant) {
                continue;
            }
        }
        let ref_name = ann
            .and_then(|a| {
                a.get(ANNOTATION_CONTAINERD_NAME)
                    .or_else(|| a.get(ANNOTATION_REF_NAME))
            })
            .cloned()
            .or_else(|| inherited_ref.clone());
        candidates.push((d, ref_name));
    }
    if candidates.len() > 1 {
        // Several images: the wanted name's tag (or full name) picks one.
        if let Some(w) = &ctx.wanted {
            let full = w.name_with_tag();
            let picked: Vec<_> = candidates
                .iter()
                .filter(|(_, r)| match r {
                    Some(r) => {
                        Some(r.clone()) == full
                            || w.tag.as_deref() == Some(r.as_str())
                            || ImageRef::parse(r).ok().and_then(|x| x.name_with_tag()) == full
                    }
                    None => false,
                })
                .cloned()
                .collect();
            if picked.len() == 1 {
                candidates = picked;
            }
        }
    }
    if candidates.len() > 1 {
        // All for this platform and nothing distinguishes them by name: if they
        // came from platform entries, the first is as good as any.
        let all_platform = candidates.iter().all(|(d, _)| d.platform().is_some());
        if !all_platform {
            return Err(ImageError::SeveralImages {
                candidates: candidates
                    .iter()
                    .map(|(d, r)| match r {
                        Some(r) => format!("{r} ({})", d.digest()),
                        None => d.digest().to_string(),
                    })
                    .collect(),
            });
        }
        candidates.truncate(1);
    }
    let Some((desc, ref_name)) = candidates.into_iter().next() else {
        return Err(ImageError::NoMatchingPlatform {
            wanted: host_platform_string(),
            available,
        });
    };
    let mt = desc.media_type().to_string();
    if mt == MT_OCI_INDEX || mt == MT_DOCKER_LIST {
        let (_, bytes) = ctx.fetch_document(desc, "image index")?;
        let nested: ImageIndex = parse_json(&bytes, &format!("image index {}", desc.digest()))?;
        return select_manifest(ctx, &nested, depth + 1, ref_name);
    }
    Ok((desc.clone(), ref_name))
}

fn plan_oci(ctx: &Ctx<'_>) -> Result<Plan> {
    let limits = &ctx.store.limits;
    let layout = ctx
        .source
        .read_document("oci-layout", "oci-layout", limits.max_document_bytes);
    match layout {
        Ok(b) => {
            let v: serde_json::Value = parse_json(&b, "oci-layout")?;
            if v.get("imageLayoutVersion")
                .and_then(|v| v.as_str())
                .is_none()
            {
                return Err(ImageError::InvalidDocument {
                    what: "oci-layout".into(),
                    reason: "no imageLayoutVersion".into(),
                });
            }
        }
        Err(ImageError::MissingFile { .. }) => {
            return Err(ImageError::UnrecognizedInput {
                path: ctx.source.path().to_owned(),
                reason: "it has index.json but no oci-layout file".into(),
            })
        }
        Err(e) => return Err(e),
    }
    let index_bytes =
        ctx.source
            .read_document("index.json", "index.json", limits.max_document_bytes)?;
    let index: ImageIndex = parse_json(&index_bytes, "index.json")?;
    let (desc, ref_name) = select_manifest(ctx, &index, 0, None)?;
    let (manifest_blob, manifest_bytes) = ctx.fetch_document(&desc, "manifest")?;
    let manifest: ImageManifest = parse_json(
        &manifest_bytes,
        &format!("manifest {}", manifest_blob.digest),
    )?;
    let (config_blob, config_bytes) = ctx.fetch_document(manifest.config(), "config")?;
    let config_doc: ImageConfiguration =
        parse_json(&config_bytes, &format!("config {}", config_blob.digest))?;
    let diff_ids = check_config(&config_doc, manifest.layers().len(), limits.max_layers)?;
    let mut layers = Vec::new();
    for (d, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let digest = to_digest(d.digest(), "layer")?;
        let media_type = d.media_type().to_string();
        check_layer_media_type(&media_type, &digest)?;
        layers.push(LayerPlan {
            file: format!("blobs/sha256/{}", digest.hex()),
            links: Links::Refuse,
            digest: Some(digest),
            size: Some(d.size()),
            media_type: Some(media_type),
            diff_id,
        });
    }
    // docker save (25+) writes both a layout and manifest.json; its RepoTags name
    // the image when the index annotations do not.
    let mut full_names = Vec::new();
    if let Some(r) = ref_name.as_deref().filter(|r| !is_plain_tag(r)) {
        full_names.push(r.to_owned());
    }
    if full_names.is_empty() && ctx.wanted.is_none() {
        if let Ok(Some(bytes)) = ctx.source.read_optional_document(
            "manifest.json",
            "manifest.json",
            limits.max_document_bytes,
        ) {
            if let Ok(entries) = serde_json::from_slice::<Vec<DockerManifest>>(&bytes) {
                for e in entries {
                    if e.config.ends_with(config_blob.digest.hex()) {
                        full_names.extend(e.repo_tags.unwrap_or_default());
                    }
                }
            }
        }
    }
    let names = choose_names(ctx.wanted.as_ref(), ref_name.as_deref(), &full_names);
    Ok(Plan {
        manifest: Some(manifest_blob),
        config: config_blob,
        platform: config_platform(&config_doc),
        config_doc,
        layers,
        names,
    })
}

/// Checks what the config must say and returns its diff_ids.
fn check_config(
    config: &ImageConfiguration,
    layers: usize,
    max_layers: usize,
) -> Result<Vec<Digest>> {
    let os = config.os().to_string();
    let arch = config.architecture().to_string();
    if !platform_matches(&os, &arch, config.variant().as_deref()) {
        return Err(ImageError::NoMatchingPlatform {
            wanted: host_platform_string(),
            available: vec![config_platform(config)],
        });
    }
    if config.rootfs().typ() != "layers" {
        return Err(ImageError::InvalidDocument {
            what: "config".into(),
            reason: format!("rootfs.type is {:?}, not \"layers\"", config.rootfs().typ()),
        });
    }
    let ids = config.rootfs().diff_ids();
    if ids.len() != layers {
        return Err(ImageError::LayerCountMismatch {
            layers,
            diff_ids: ids.len(),
        });
    }
    if layers > max_layers {
        return Err(ImageError::TooManyLayers {
            count: layers,
            limit: max_layers,
        });
    }
    ids.iter()
        .map(|s| {
            s.parse::<Digest>()
                .map_err(|_| ImageError::UnsupportedDigest {
                    what: "diff_id".into(),
                    digest: s.clone(),
                })
        })
        .collect()
}

fn config_platform(config: &ImageConfiguration) -> String {
    platform_string(
        &config.os().to_string(),
        &config.architecture().to_string(),
        config.variant().as_deref(),
    )
}

fn image_config(doc: &ImageConfiguration) -> ImageConfig {
    let Some(c) = doc.config() else {
        return ImageConfig::default();
    };
    ImageConfig {
        entrypoint: c.entrypoint().clone(),
        cmd: c.cmd().clone(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone(),
        user: c.user().clone(),
        labels: c
            .labels()
            .clone()
            .map(|l| l.into_iter().collect::<BTreeMap<_, _>>())
            .unwrap_or_default(),
    }
}

/// One image in a docker-save `manifest.json`.
#[derive(Debug, Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// The digest a docker-save file name carries: `<hex>.json` or `blobs/sha256/<hex>`.
fn digest_in_name(name: &str) -> Option<Digest> {
    let base = name.rsplit('/').next()?;
    let base = base.strip_suffix(".json").unwrap_or(base);
    Digest::from_hex(base).ok()
}

fn plan_docker(ctx: &Ctx<'_>) -> Result<Plan> {
    let limits = &ctx.store.limits;
    let bytes =
        ctx.source
            .read_document("manifest.json", "manifest.json", limits.max_document_bytes)?;
    let mut entries: Vec<DockerManifest> = parse_json(&bytes, "manifest.json")?;
    if entries.len() > 1 {
        if let Some(full) = ctx.wanted.as_ref().and_then(|w| w.name_with_tag()) {
            entries.retain(|e| {
                e.repo_tags.iter().flatten().any(|t| {
                    ImageRef::parse(t)
                        .ok()
                        .and_then(|r| r.name_with_tag())
                        .as_ref()
                        == Some(&full)
                })
            });
        }
    }
    let entry = match entries.len() {
        0 => {
            return Err(ImageError::InvalidDocument {
                what: "manifest.json".into(),
                reason: "it lists no image".into(),
            })
        }
        1 => entries.remove(0),
        _ => {
            return Err(ImageError::SeveralImages {
                candidates: entries
                    .iter()
                    .map(|e| {
                        e.repo_tags
                            .as_ref()
                            .and_then(|t| t.first().cloned())
                            .unwrap_or_else(|| e.config.clone())
                    })
                    .collect(),
            })
        }
    };
    let bad_name = |n: &str| ImageError::InvalidDocument {
        what: "manifest.json".into(),
        reason: format!("invalid file name {n:?}"),
    };
    let config_file =
        normalize_member(entry.config.as_bytes()).ok_or_else(|| bad_name(&entry.config))?;
    let config_digest = digest_in_name(&config_file);
    let config = copy_verified(
        ctx.source,
        &config_file,
        Links::Beneath,
        Expect {
            what: "config",
            digest: config_digest.as_ref(),
            size: None,
            max: limits.max_document_bytes,
        },
        &ctx.staging.blobs(),
        ctx.progress,
        &ctx.cancel,
    )?;
    let config_doc: ImageConfiguration =
        parse_json(&read_staged(&config)?, &format!("config {}", config.digest))?;
    let diff_ids = check_config(&config_doc, entry.layers.len(), limits.max_layers)?;
    let mut layers = Vec::new();
    for (file, diff_id) in entry.layers.iter().zip(diff_ids) {
        let file = normalize_member(file.as_bytes()).ok_or_else(|| bad_name(file))?;
        layers.push(LayerPlan {
            digest: digest_in_name(&file),
            file,
            links: Links::Beneath,
            size: None,
            media_type: None,
            diff_id,
        });
    }
    let names = choose_names(
        ctx.wanted.as_ref(),
        None,
        entry.repo_tags.as_deref().unwrap_or_default(),
    );
    Ok(Plan {
        manifest: None,
        platform: config_platform(&config_doc),
        config,
        config_doc,
        layers,
        names,
    })
}

/// For a docker-save without an OCI layout: the OCI manifest of what was
/// imported, stored as a blob so the image has a manifest digest like any other.
fn synthesize_manifest(
    ctx: &Ctx<'_>,
    config: &StagedBlob,
    done: &[LayerDone],
) -> Result<StagedBlob> {
    let layers: Vec<serde_json::Value> = done
        .iter()
        .map(|d| serde_json::json!({ "mediaType": d.media_type, "digest": d.blob_digest.to_string(), "size": d.blob_size }))
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": { "mediaType": MT_OCI_CONFIG, "digest": config.digest.to_string(), "size": config.size },
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| ImageError::Internal(e.to_string()))?;
    let digest = Digest::from_sha256_bytes(&Sha256::digest(&bytes).into());
    let path = ctx.staging.blobs().join(digest.hex());
    std::fs::write(&path, &bytes).map_err(|e| ImageError::io("writing", &path, e))?;
    Ok(StagedBlob {
        digest,
        size: bytes.len() as u64,
        path,
    })
}

/// Copies and verifies layer blobs and unpacks the layers not yet in the store,
/// in parallel (bounded by the available cores).
fn run_layer_jobs(ctx: &Ctx<'_>, layers: &[LayerPlan]) -> Result<Vec<LayerDone>> {
    // The first layer with a given diff_id unpacks it; later ones share it.
    let mut first_of: HashMap<&Digest, usize> = HashMap::new();
    for (i, l) in layers.iter().enumerate() {
        first_of.entry(&l.diff_id).or_insert(i);
    }
    let results: Vec<Mutex<Option<LayerDone>>> = layers.iter().map(|_| Mutex::new(None)).collect();
    let first_error: Mutex<Option<ImageError>> = Mutex::new(None);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(layers.len())
        .max(1);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= layers.len() || ctx.cancel.load(Ordering::Relaxed) {
                    break;
                }
                let unpack = first_of[&layers[i].diff_id] == i;
                match layer_job(ctx, &layers[i], unpack) {
                    Ok(done) => *results[i].lock().expect("poisoned") = Some(done),
                    Err(e) => {
                        ctx.cancel.store(true, Ordering::Relaxed);
                        let mut slot = first_error.lock().expect("poisoned");
                        // The first real error wins over the cancellations it caused.
                        if slot.is_none() || matches!(*slot, Some(ImageError::Cancelled)) {
                            *slot = Some(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("poisoned") {
        return Err(e);
    }
    let mut out: Vec<LayerDone> = results
        .into_iter()
        .map(|m| m.into_inner().expect("poisoned").expect("every job ran"))
        .collect();
    // Duplicates of an unpacked diff_id report it as reused.
    for (i, l) in layers.iter().enumerate() {
        if first_of[&l.diff_id] != i {
            out[i].unpacked = None;
        }
    }
    Ok(out)
}

fn layer_job(ctx: &Ctx<'_>, plan: &LayerPlan, unpack: bool) -> Result<LayerDone> {
    let store = ctx.store;
    let limits = &store.limits;
    // A blob the store already has was verified when it came in.
    let (blob_digest, blob_size, blob_path) = match &plan.digest {
        Some(d) if store.blob_path(d).is_file() && plan.size.is_some() => {
            let path = store.blob_path(d);
            let size = std::fs::metadata(&path)
                .map_err(|e| ImageError::io("reading", &path, e))?
                .len();
            if Some(size) != plan.size {
                return Err(ImageError::SizeMismatch {
                    what: "layer".into(),
                    digest: d.to_string(),
                    expected: plan.size.unwrap_or(0),
                    actual: size.to_string(),
                });
            }
            (d.clone(), size, path)
        }
        _ => {
            let b = copy_verified(
                ctx.source,
                &plan.file,
                plan.links,
                Expect {
                    what: "layer",
                    digest: plan.digest.as_ref(),
                    size: plan.size,
                    max: limits.max_layer_bytes,
                },
                &ctx.staging.blobs(),
                ctx.progress,
                &ctx.cancel,
            )?;
            (b.digest, b.size, b.path)
        }
    };
    let media_type = match &plan.media_type {
        Some(m) => m.clone(),
        None => {
            // docker-save layers carry no media type: name what the bytes are.
            let mut head = [0u8; 4];
            let n = std::fs::File::open(&blob_path)
                .and_then(|f| std::os::unix::fs::FileExt::read_at(&f, &mut head, 0))
                .map_err(|e| ImageError::io("reading", &blob_path, e))?;
            match sniff_compression(&head[..n]) {
                Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::None => "application/vnd.oci.image.layer.v1.tar",
            }
            .to_owned()
        }
    };
    if !unpack || store.layer_complete(&plan.diff_id) {
        ctx.progress.layer_reused(&plan.diff_id);
        return Ok(LayerDone {
            blob_digest,
            blob_size,
            media_type,
            unpacked: None,
        });
    }
    let dest = ctx.staging.layers().join(plan.diff_id.hex());
    std::fs::create_dir(&dest).map_err(|e| ImageError::io("creating", &dest, e))?;
    ctx.progress.layer_unpack_started(&plan.diff_id);
    let job = LayerJob {
        blob_path: &blob_path,
        blob_digest: &blob_digest,
        diff_id: &plan.diff_id,
        dest: &dest,
        id_map: store.id_map(),
        limits,
        cancel: &ctx.cancel,
    };
    let result = unpack_layer(&job);
    match result {
        Ok(u) => {
            ctx.progress
                .layer_unpack_finished(&plan.diff_id, u.bytes, u.entries);
            Ok(LayerDone {
                blob_digest,
                blob_size,
                media_type,
                unpacked: Some((u.bytes, u.entries)),
            })
        }
        Err(e) => {
            // Free the space now; the staging directory goes anyway.
            let _ = fsutil::remove_tree(&dest);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(s: &str) -> ImageRef {
        parse_wanted_name(s).unwrap()
    }

    #[test]
    fn names_from_option_annotation_and_repo_tags() {
        // The caller's name wins; a tag-only annotation supplies its tag.
        assert_eq!(
            choose_names(Some(&wanted("bb")), Some("1.36"), &[]),
            vec!["bb:1.36"]
        );
        assert_eq!(
            choose_names(Some(&wanted("bb:x")), Some("1.36"), &[]),
            vec!["bb:x"]
        );
        assert_eq!(
            choose_names(Some(&wanted("bb")), Some("reg.io/a/b:2"), &[]),
            vec!["bb:latest"]
        );
        // A full reference annotation names the image; a bare tag does not.
        assert_eq!(
            choose_names(None, Some("reg.io/a/b:2"), &[]),
            vec!["reg.io/a/b:2"]
        );
        assert!(choose_names(None, Some("latest"), &[]).is_empty());
        // docker RepoTags, normalized, invalid ones skipped.
        let tags = vec![
            "busybox".to_owned(),
            "Bad Tag".to_owned(),
            "x/y:1".to_owned(),
        ];
        assert_eq!(
            choose_names(None, None, &tags),
            vec!["busybox:latest", "x/y:1"]
        );
    }

    #[test]
    fn docker_file_names_carry_digests() {
        let hex = "a".repeat(64);
        assert_eq!(digest_in_name(&format!("{hex}.json")).unwrap().hex(), hex);
        assert_eq!(
            digest_in_name(&format!("blobs/sha256/{hex}"))
                .unwrap()
                .hex(),
            hex
        );
        assert!(digest_in_name("abc/layer.tar").is_none());
    }
}
