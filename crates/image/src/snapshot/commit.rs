//! [`Store::commit_image`] and [`Store::commit_files_image`]: new images made of
//! layers already in the store plus one new layer, through the normal verified
//! import.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use runbox_core::Digest;
use sha2::{Digest as _, Sha256};

use super::tree_digest;
use crate::error::{ImageError, Result};
use crate::fsutil;
use crate::import::{ImportOptions, ImportReport};
use crate::progress::ImportProgress;
use crate::record::{ImageConfig, ImageRecord, LayerRef};
use crate::store::Store;
use crate::writer::{
    writer_err, ImageSpec, LayerCompression, LayoutWriter, Tree, TreeEntry, WrittenLayer,
};

/// How the new layer of a commit is stored. Uncompressed: the blob is the tar
/// written by [`crate::write_upper_tar`], hashed once and linked into the layout
/// rather than copied; the import copies, verifies and unpacks it. Measured
/// (release build, 100 MB in 3,000 half-compressible files, the
/// `measure_100mb_snapshot` test): `commit_image` 0.9-1.6 s uncompressed,
/// 1.6-3.5 s with zstd level 3, whose blob is half the size. The blob stays in
/// the store beside the unpacked layer, so zstd would save disk, not time.
const NEW_LAYER: LayerCompression = LayerCompression::None;

/// What [`Store::commit_image`] makes.
#[derive(Debug, Clone)]
pub struct CommitSpec {
    /// `name[:tag]` to give the new image (e.g. `runbox-snapshot/postgres:1a2b3c4d5e6f`).
    pub name: String,
    /// The image whose layers come first. Its blobs and unpacked layers are
    /// reused from the store, never copied.
    pub base: ImageRecord,
    /// Layers already in the store (e.g. dataset layers), after the base's.
    pub extra_layers: Vec<LayerRef>,
    /// An uncompressed layer tar (from [`crate::write_upper_tar`]) to add last.
    pub new_layer_tar: Option<PathBuf>,
    /// The new image's execution defaults (not merged with the base's: start
    /// from `base.config.clone()` to keep them).
    pub config: ImageConfig,
}

/// One host file for [`Store::commit_files_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitFile {
    /// Absolute, normalized path in the image (`/data/db.sqlite`).
    pub path: String,
    /// The host file to copy (read when the layer is written, streamed).
    pub host: PathBuf,
    /// Permission bits (at most `0o7777`).
    pub mode: u32,
}

fn argument(what: impl Into<String>, reason: impl Into<String>) -> ImageError {
    ImageError::SnapshotArgument {
        what: what.into(),
        reason: reason.into(),
    }
}

impl Store {
    /// Makes the image `spec` describes and names it `spec.name`: the base's
    /// layers, the extra layers, then the new layer tar, with `spec.config`.
    /// An OCI layout is written in the store's `tmp/` (the existing layers only
    /// as descriptors: their blobs are already in the store, so the import
    /// neither copies nor unpacks them again), imported with [`Store::import`]
    /// (which verifies and unpacks the new layer with the safe unpacker) and
    /// removed. The result is an ordinary image record. Committing the same
    /// content again yields the same image (the config has no creation time),
    /// which then only gets the name.
    pub fn commit_image(
        &self,
        spec: &CommitSpec,
        progress: &dyn ImportProgress,
    ) -> Result<ImportReport> {
        // gc must not remove the layers reused while the layout is written.
        let _lease = self.lock_shared()?;
        for l in spec.base.layers.iter().chain(&spec.extra_layers) {
            self.check_reusable(l)?;
        }
        let dir = fsutil::TmpDir::new(self.tmp_dir(), "commit")?;
        let layout = dir.path.join("layout");
        let mut writer = LayoutWriter::create(&layout).map_err(writer_err)?;
        for l in spec.base.layers.iter().chain(&spec.extra_layers) {
            writer.push_layer(WrittenLayer {
                digest: l.blob_digest.clone(),
                size: l.compressed_size,
                diff_id: l.diff_id.clone(),
                media_type: l.media_type.clone(),
            });
        }
        if let Some(tar) = &spec.new_layer_tar {
            add_tar_layer(&mut writer, tar, NEW_LAYER)?;
        }
        writer
            .finish(&ImageSpec {
                config: spec.config.clone(),
                ..ImageSpec::default()
            })
            .map_err(writer_err)?;
        self.import(
            &layout,
            &ImportOptions {
                name: Some(spec.name.clone()),
            },
            progress,
        )
    }

    /// Makes a one-layer image of host files and names it `name`: each file at
    /// its path owned by 0:0 with its mode, missing parent directories 0755
    /// owned by 0:0, every mtime 0. Files are streamed from the host when the
    /// layer is written, never held in memory. For datasets: add the image's
    /// layer to a [`CommitSpec`]'s `extra_layers`.
    pub fn commit_files_image(
        &self,
        name: &str,
        files: &[CommitFile],
        config: ImageConfig,
        progress: &dyn ImportProgress,
    ) -> Result<ImportReport> {
        let tree = files_tree(files)?;
        let _lease = self.lock_shared()?;
        let dir = fsutil::TmpDir::new(self.tmp_dir(), "commit")?;
        let layout = dir.path.join("layout");
        let mut writer = LayoutWriter::create(&layout).map_err(writer_err)?;
        writer
            .add_layer_tree(&tree, NEW_LAYER)
            .map_err(writer_err)?;
        writer
            .finish(&ImageSpec {
                config,
                ..ImageSpec::default()
            })
            .map_err(writer_err)?;
        self.import(
            &layout,
            &ImportOptions {
                name: Some(name.to_owned()),
            },
            progress,
        )
    }

    /// [`tree_digest`] of the unpacked layer with this diff_id. Hold a
    /// [`Store::lock_shared`] lease meanwhile if gc may run.
    pub fn layer_tree_digest(&self, diff_id: &Digest) -> Result<Digest> {
        if !self.layer_complete(diff_id) {
            return Err(argument(
                format!("layer {diff_id}"),
                "is not (completely) unpacked in the store",
            ));
        }
        tree_digest(&self.layer_dir(diff_id))
    }

    /// A layer an image being committed reuses must be in the store: its blob
    /// (the import verifies the descriptor against it) and its unpacked form.
    fn check_reusable(&self, l: &LayerRef) -> Result<()> {
        let blob = self.blob_path(&l.blob_digest);
        let size = std::fs::symlink_metadata(&blob)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        if size.is_none() || !self.layer_complete(&l.diff_id) {
            return Err(argument(
                format!("layer {}", l.diff_id),
                "is not in the store (was its image removed?)",
            ));
        }
        if size != Some(l.compressed_size) {
            return Err(argument(
                format!("layer {}", l.diff_id),
                format!(
                    "the record says its blob has {} bytes, the store's has {}",
                    l.compressed_size,
                    size.unwrap_or(0)
                ),
            ));
        }
        Ok(())
    }
}

/// Adds the tar file at `path` as a layer. Uncompressed, the tar is the blob:
/// hashed once and hard-linked into the layout (copied when it is on another
/// file system).
fn add_tar_layer(
    writer: &mut LayoutWriter,
    path: &Path,
    compression: LayerCompression,
) -> Result<()> {
    let unreadable = |e| ImageError::InputUnreadable {
        path: path.to_owned(),
        source: e,
    };
    let file = File::open(path).map_err(unreadable)?;
    if compression != LayerCompression::None {
        writer
            .add_layer_tar(io::BufReader::new(file), compression)
            .map_err(writer_err)?;
        return Ok(());
    }
    let mut sha = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut reader = &file;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(unreadable(e)),
        };
        sha.update(&buf[..n]);
        size += n as u64;
    }
    let digest = Digest::from_sha256_bytes(&sha.finalize().into());
    let dest = writer.dir().join("blobs/sha256").join(digest.hex());
    if std::fs::hard_link(path, &dest).is_err() {
        // Another file system (or no links allowed): copy, then check the copy
        // is what was hashed.
        std::fs::copy(path, &dest).map_err(|e| ImageError::io("copying", &dest, e))?;
        let copied = std::fs::metadata(&dest)
            .map_err(|e| ImageError::io("reading", &dest, e))?
            .len();
        if copied != size {
            return Err(argument(
                format!("layer tar {}", path.display()),
                "changed while it was copied",
            ));
        }
    }
    writer.push_layer(WrittenLayer {
        digest: digest.clone(),
        size,
        diff_id: digest,
        media_type: LayerCompression::None.media_type().to_owned(),
    });
    Ok(())
}

/// The layer tree of [`Store::commit_files_image`], refusing paths that are not
/// absolute and normalized, that a layer cannot hold or that collide.
fn files_tree(files: &[CommitFile]) -> Result<Tree> {
    if files.is_empty() {
        return Err(argument("files", "no files given"));
    }
    // path -> is a directory
    let mut seen: BTreeMap<String, bool> = BTreeMap::new();
    let mut tree = Tree::new();
    for (i, f) in files.iter().enumerate() {
        let what = || format!("files[{i}] ({:?})", f.path);
        check_image_path(&f.path).map_err(|r| argument(what(), r))?;
        if f.mode > 0o7777 {
            return Err(argument(
                what(),
                format!("mode {:o} has more than permission bits", f.mode),
            ));
        }
        let meta = std::fs::metadata(&f.host).map_err(|e| ImageError::InputUnreadable {
            path: f.host.clone(),
            source: e,
        })?;
        if !meta.is_file() {
            return Err(argument(
                what(),
                format!("{} is not a regular file", f.host.display()),
            ));
        }
        let rel = f.path.trim_start_matches('/');
        let mut parent = String::new();
        let comps: Vec<&str> = rel.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            match seen.get(&parent) {
                Some(false) => {
                    return Err(argument(
                        what(),
                        format!("/{parent} is also given as a file"),
                    ))
                }
                Some(true) => {}
                None => {
                    seen.insert(parent.clone(), true);
                    tree.dir(&parent, 0o755);
                }
            }
        }
        if seen.insert(rel.to_owned(), false).is_some() {
            return Err(argument(
                what(),
                "the path is given twice, or is also a directory",
            ));
        }
        tree.insert(
            rel,
            TreeEntry {
                node: crate::writer::Node::File(crate::writer::FileContents::Host(f.host.clone())),
                mode: f.mode,
                uid: 0,
                gid: 0,
            },
        );
    }
    Ok(tree)
}

fn check_image_path(p: &str) -> std::result::Result<(), String> {
    let Some(rest) = p.strip_prefix('/') else {
        return Err("not an absolute path".into());
    };
    if rest.is_empty() {
        return Err("\"/\" is the root directory, not a file".into());
    }
    if p.len() > super::walk::MAX_PATH_LEN {
        return Err(format!("longer than {} bytes", super::walk::MAX_PATH_LEN));
    }
    if p.contains('\0') {
        return Err("contains a NUL character".into());
    }
    for c in rest.split('/') {
        match c {
            "" | "." => return Err("not normalized (empty or '.' component)".into()),
            ".." => return Err("has a '..' component".into()),
            c if c.len() > 255 => return Err("has a component longer than 255 bytes".into()),
            c if c.starts_with(".wh.") => {
                return Err("has a component beginning with .wh. (an OCI whiteout marker)".into())
            }
            _ => {}
        }
    }
    Ok(())
}
