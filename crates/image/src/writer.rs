//! Writing OCI image layouts and OCI archives, deterministically: entries sorted,
//! fixed mtimes, fixed owners unless given. Used by tests (through
//! `runbox-testkit`) and by image builds (`crate::build`).
//!
//! ```no_run
//! use runbox_image::writer::{ImageSpec, LayerCompression, LayoutWriter, Tree};
//! # fn main() -> Result<(), runbox_image::writer::WriterError> {
//! let mut tree = Tree::new();
//! tree.dir("etc", 0o755).file("etc/motd", 0o644, b"hello\n".to_vec());
//! let mut w = LayoutWriter::create(std::path::Path::new("/tmp/img"))?;
//! w.add_layer_tree(&tree, LayerCompression::Gzip)?;
//! let image = w.finish(&ImageSpec::default())?;
//! println!("{}", image.manifest_digest);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use runbox_core::Digest;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::record::{host_platform, ImageConfig};

/// Errors writing a layout.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("serializing JSON: {0}")]
    Json(#[from] serde_json::Error),
}

type Result<T> = std::result::Result<T, WriterError>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriterError + 'a {
    move |source| WriterError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// How to compress a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

impl LayerCompression {
    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            LayerCompression::None => "application/vnd.oci.image.layer.v1.tar",
            LayerCompression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            LayerCompression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// What a [`Tree`] entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File(FileContents),
    Symlink(String),
    /// A hardlink to another path of the tree.
    Hardlink(String),
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContents {
    Bytes(Vec<u8>),
    /// Copied from a host file when the tar is written.
    Host(PathBuf),
}

/// One entry of a [`Tree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    pub node: Node,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A filesystem tree to pack as a layer, keyed by relative path (no leading `/`).
/// Written in sorted order, so parents come before children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    entries: BTreeMap<String, TreeEntry>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Adds or replaces an entry.
    pub fn insert(&mut self, path: &str, entry: TreeEntry) -> &mut Self {
        self.entries
            .insert(path.trim_matches('/').to_owned(), entry);
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.insert(
            path,
            TreeEntry {
                node: Node::Dir,
                mode,
                uid: 0,
                gid: 0,
            },
        )
    }

    pub fn file(&mut self, path: &str, mode: u32, contents: Vec<u8>) -> &mut Self {
        self.insert(
            path,
            TreeEntry {
                node: Node::File(FileContents::Bytes(contents)),
                mode,
                uid: 0,
                gid: 0,
            },
        )
    }

    pub fn host_file(&mut self, path: &str, mode: u32, host: &Path) -> &mut Self {
        self.insert(
            path,
            TreeEntry {
                node: Node::File(FileContents::Host(host.to_owned())),
                mode,
                uid: 0,
                gid: 0,
            },
        )
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.insert(
            path,
            TreeEntry {
                node: Node::Symlink(target.to_owned()),
                mode: 0o777,
                uid: 0,
                gid: 0,
            },
        )
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.insert(
            path,
            TreeEntry {
                node: Node::Hardlink(target.to_owned()),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        )
    }

    /// Sets the owner of an existing entry.
    pub fn owner(&mut self, path: &str, uid: u32, gid: u32) -> &mut Self {
        if let Some(e) = self.entries.get_mut(path.trim_matches('/')) {
            e.uid = uid;
            e.gid = gid;
        }
        self
    }

    pub fn entries(&self) -> impl Iterator<Item = (&String, &TreeEntry)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reads a host directory (not following symlinks), keeping modes and owners.
    /// Device nodes, sockets and FIFOs are skipped.
    pub fn from_dir(root: &Path) -> Result<Tree> {
        let mut tree = Tree::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let dir = root.join(&rel);
            for entry in std::fs::read_dir(&dir).map_err(io_err("reading", &dir))? {
                let entry = entry.map_err(io_err("reading", &dir))?;
                let path = entry.path();
                let meta = std::fs::symlink_metadata(&path).map_err(io_err("reading", &path))?;
                let rel_path = rel.join(entry.file_name());
                let key = rel_path.to_string_lossy().into_owned();
                let mode = meta.permissions().mode() & 0o7777;
                let node = if meta.is_dir() {
                    stack.push(rel_path);
                    Node::Dir
                } else if meta.file_type().is_symlink() {
                    let t = std::fs::read_link(&path).map_err(io_err("reading", &path))?;
                    Node::Symlink(t.to_string_lossy().into_owned())
                } else if meta.is_file() {
                    Node::File(FileContents::Host(path.clone()))
                } else {
                    continue;
                };
                tree.insert(
                    &key,
                    TreeEntry {
                        node,
                        mode,
                        uid: meta.uid(),
                        gid: meta.gid(),
                    },
                );
            }
        }
        Ok(tree)
    }

    /// Writes the tree as a tar stream: sorted, every mtime `mtime`.
    pub fn write_tar<W: Write>(&self, out: W, mtime: u64) -> Result<W> {
        let mut b = tar::Builder::new(out);
        let wrap = |e: io::Error| WriterError::Io {
            op: "writing",
            path: PathBuf::from("<tar>"),
            source: e,
        };
        for (path, e) in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(e.mode & 0o7777);
            h.set_uid(e.uid.into());
            h.set_gid(e.gid.into());
            h.set_mtime(mtime);
            match &e.node {
                Node::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{path}/"), io::empty())
                        .map_err(wrap)?;
                }
                Node::File(FileContents::Bytes(bytes)) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(bytes.len() as u64);
                    b.append_data(&mut h, path, bytes.as_slice())
                        .map_err(wrap)?;
                }
                Node::File(FileContents::Host(host)) => {
                    let f = File::open(host).map_err(io_err("opening", host))?;
                    let len = f.metadata().map_err(io_err("reading", host))?.len();
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(len);
                    b.append_data(&mut h, path, f.take(len)).map_err(wrap)?;
                }
                Node::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, path, target).map_err(wrap)?;
                }
                Node::Hardlink(target) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, path, target).map_err(wrap)?;
                }
            }
        }
        b.into_inner().map_err(wrap)
    }
}

/// A layer written into a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenLayer {
    /// Digest of the blob (compressed).
    pub digest: Digest,
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    pub media_type: String,
}

/// The image config and index entry to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSpec {
    pub config: ImageConfig,
    /// Defaults to the host's ([`host_platform`]).
    pub architecture: Option<String>,
    /// `org.opencontainers.image.ref.name` for index.json: a tag or a full name.
    pub ref_name: Option<String>,
    /// RFC 3339 creation time; omitted when `None` (keeps output deterministic).
    pub created: Option<String>,
}

/// A finished layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenImage {
    pub dir: PathBuf,
    pub manifest_digest: Digest,
    pub manifest_size: u64,
    pub config_digest: Digest,
    pub layers: Vec<WrittenLayer>,
}

/// Writes an OCI image layout directory: `oci-layout`, `blobs/sha256/*`, `index.json`.
#[derive(Debug)]
pub struct LayoutWriter {
    dir: PathBuf,
    layers: Vec<WrittenLayer>,
}

/// A writer that hashes and counts what passes through.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

impl<W: Write> Encoder<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(w) => w.finish(),
            Encoder::Zstd(w) => w.finish(),
        }
    }
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest::from_sha256_bytes(&Sha256::digest(bytes).into())
}

impl LayoutWriter {
    /// Creates the layout skeleton in `dir` (created if missing).
    pub fn create(dir: &Path) -> Result<LayoutWriter> {
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(io_err("creating", &blobs))?;
        let layout = dir.join("oci-layout");
        std::fs::write(&layout, b"{\"imageLayoutVersion\":\"1.0.0\"}")
            .map_err(io_err("writing", &layout))?;
        Ok(LayoutWriter {
            dir: dir.to_owned(),
            layers: Vec::new(),
        })
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Layers added so far.
    pub fn layers(&self) -> &[WrittenLayer] {
        &self.layers
    }

    /// Writes a blob and returns its digest and size.
    pub fn add_blob(&self, bytes: &[u8]) -> Result<(Digest, u64)> {
        let d = sha256(bytes);
        let path = self.dir.join("blobs/sha256").join(d.hex());
        std::fs::write(&path, bytes).map_err(io_err("writing", &path))?;
        Ok((d, bytes.len() as u64))
    }

    /// Adds a layer from an uncompressed tar stream, compressing it.
    pub fn add_layer_tar(
        &mut self,
        mut tar: impl Read,
        compression: LayerCompression,
    ) -> Result<WrittenLayer> {
        self.write_layer(compression, |w| {
            io::copy(&mut tar, w)
                .map(|_| ())
                .map_err(|e| WriterError::Io {
                    op: "reading",
                    path: "<tar>".into(),
                    source: e,
                })
        })
    }

    /// Adds a layer holding `tree` (mtimes 0).
    pub fn add_layer_tree(
        &mut self,
        tree: &Tree,
        compression: LayerCompression,
    ) -> Result<WrittenLayer> {
        self.write_layer(compression, |w| tree.write_tar(w, 0).map(|_| ()))
    }

    fn write_layer(
        &mut self,
        compression: LayerCompression,
        fill: impl FnOnce(&mut dyn Write) -> Result<()>,
    ) -> Result<WrittenLayer> {
        let tmp = self
            .dir
            .join("blobs/sha256")
            .join(format!(".tmp-{}", std::process::id()));
        let file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        let blob = HashingWriter {
            inner: io::BufWriter::new(file),
            hasher: Sha256::new(),
            count: 0,
        };
        let enc = match compression {
            LayerCompression::None => Encoder::None(blob),
            LayerCompression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                blob,
                flate2::Compression::fast(),
            )),
            LayerCompression::Zstd => Encoder::Zstd(
                zstd::stream::write::Encoder::new(blob, 3).map_err(io_err("compressing", &tmp))?,
            ),
        };
        let mut plain = HashingWriter {
            inner: enc,
            hasher: Sha256::new(),
            count: 0,
        };
        fill(&mut plain)?;
        let diff_id = Digest::from_sha256_bytes(&plain.hasher.finalize().into());
        let mut blob = plain.inner.finish().map_err(io_err("compressing", &tmp))?;
        blob.flush().map_err(io_err("writing", &tmp))?;
        let digest = Digest::from_sha256_bytes(&blob.hasher.finalize().into());
        let dest = self.dir.join("blobs/sha256").join(digest.hex());
        std::fs::rename(&tmp, &dest).map_err(io_err("renaming", &dest))?;
        let layer = WrittenLayer {
            digest,
            size: blob.count,
            diff_id,
            media_type: compression.media_type().to_owned(),
        };
        self.layers.push(layer.clone());
        Ok(layer)
    }

    /// Adds an already written layer blob (for tests that craft descriptors).
    pub fn push_layer(&mut self, layer: WrittenLayer) {
        self.layers.push(layer);
    }

    /// Writes the config, the manifest and index.json.
    pub fn finish(self, spec: &ImageSpec) -> Result<WrittenImage> {
        let (os, host_arch) = host_platform();
        let arch = spec
            .architecture
            .clone()
            .unwrap_or_else(|| host_arch.to_owned());
        let c = &spec.config;
        let mut cfg = serde_json::Map::new();
        if let Some(v) = &c.user {
            cfg.insert("User".into(), json!(v));
        }
        if !c.env.is_empty() {
            cfg.insert("Env".into(), json!(c.env));
        }
        if let Some(v) = &c.entrypoint {
            cfg.insert("Entrypoint".into(), json!(v));
        }
        if let Some(v) = &c.cmd {
            cfg.insert("Cmd".into(), json!(v));
        }
        if let Some(v) = &c.working_dir {
            cfg.insert("WorkingDir".into(), json!(v));
        }
        if !c.labels.is_empty() {
            cfg.insert("Labels".into(), json!(c.labels));
        }
        let mut config = json!({
            "architecture": arch,
            "os": os,
            "config": cfg,
            "rootfs": {
                "type": "layers",
                "diff_ids": self.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
            },
        });
        if let Some(created) = &spec.created {
            config["created"] = json!(created);
        }
        let (config_digest, config_size) = self.add_blob(&serde_json::to_vec(&config)?)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest.to_string(),
                "size": config_size,
            },
            "layers": self.layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": l.digest.to_string(),
                "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let (manifest_digest, manifest_size) = self.add_blob(&serde_json::to_vec(&manifest)?)?;
        let mut desc = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest.to_string(),
            "size": manifest_size,
            "platform": { "architecture": arch, "os": os },
        });
        if let Some(r) = &spec.ref_name {
            desc["annotations"] = json!({ "org.opencontainers.image.ref.name": r });
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [desc],
        });
        let index_path = self.dir.join("index.json");
        std::fs::write(&index_path, serde_json::to_vec(&index)?)
            .map_err(io_err("writing", &index_path))?;
        Ok(WrittenImage {
            dir: self.dir,
            manifest_digest,
            manifest_size,
            config_digest,
            layers: self.layers,
        })
    }
}

/// Packs a layout directory into an OCI archive (a tar of the layout), sorted with
/// fixed mtimes; gzip-compressed when `gzip`.
pub fn write_oci_archive(layout: &Path, out: &Path, gzip: bool) -> Result<()> {
    let mut files = vec![PathBuf::from("oci-layout"), PathBuf::from("index.json")];
    let blobs = layout.join("blobs/sha256");
    let mut names: Vec<_> = std::fs::read_dir(&blobs)
        .map_err(io_err("reading", &blobs))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|n| !n.to_string_lossy().starts_with('.'))
        .collect();
    names.sort();
    files.extend(names.into_iter().map(|n| Path::new("blobs/sha256").join(n)));
    let mut tree = Tree::new();
    tree.dir("blobs", 0o755).dir("blobs/sha256", 0o755);
    for f in &files {
        tree.host_file(&f.to_string_lossy(), 0o644, &layout.join(f));
    }
    let file = File::create(out).map_err(io_err("creating", out))?;
    let w = io::BufWriter::new(file);
    if gzip {
        let enc = tree.write_tar(
            flate2::write::GzEncoder::new(w, flate2::Compression::fast()),
            0,
        )?;
        enc.finish()
            .map_err(io_err("writing", out))?
            .flush()
            .map_err(io_err("writing", out))?;
    } else {
        tree.write_tar(w, 0)?
            .flush()
            .map_err(io_err("writing", out))?;
    }
    Ok(())
}

/// A writer error as the store reports it (builds and commits write layouts).
pub(crate) fn writer_err(e: WriterError) -> crate::error::ImageError {
    use crate::error::ImageError;
    match e {
        WriterError::Io { op, path, source } => ImageError::Io { op, path, source },
        WriterError::Json(e) => ImageError::Internal(format!("writing the image layout: {e}")),
    }
}
