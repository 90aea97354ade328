//! Unpacking one layer blob into a directory, safely, in the overlayfs on-disk format.
//!
//! Written by hand on the `tar` crate's entry iterator (never its `unpack`): every
//! entry is created relative to a descriptor of its parent directory, which is
//! opened below the layer root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`, so no name in the archive can reach
//! outside the layer root, whatever symlinks earlier entries planted. Whiteouts
//! become overlayfs whiteouts (0:0 character devices, `trusted.overlay.opaque`),
//! owners are shifted into the sandbox id range, and only `user.*` xattrs are
//! applied. The sha256 of the uncompressed stream is computed on the way and
//! compared with the config's diff_id.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use runbox_core::{Digest, IdMap};
use rustix::fs::{
    chmodat, chownat, fchmod, fchown, fsetxattr, futimens, linkat, makedev, mkdirat, mknodat,
    openat, statat, symlinkat, unlinkat, utimensat, AtFlags, FileType, Gid, Mode, OFlags, Timespec,
    Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

use crate::error::{ImageError, Result, UnsafeEntry};
use crate::fsutil::{self, join_components, open_dir_beneath, remove_tree_at};
use crate::limits::ImportLimits;

/// Layer media types runbox unpacks.
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// Layer media types whose content is by definition not in the image.
const NON_DISTRIBUTABLE: &[&str] = &[
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const META_PREFIX: &[u8] = b".wh..wh.";
const COPY_BUF: usize = 256 * 1024;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// Checks a layer's media type: non-distributable layers and non-layer types are
/// refused.
pub(crate) fn check_layer_media_type(media_type: &str, digest: &Digest) -> Result<()> {
    if NON_DISTRIBUTABLE.contains(&media_type) {
        return Err(ImageError::NonDistributableLayer {
            digest: digest.clone(),
            media_type: media_type.to_owned(),
        });
    }
    // Unknown tar-ish types are let through: the content is sniffed and the
    // diff_id check decides.
    if LAYER_TYPES.contains(&media_type) || media_type.contains("tar") {
        return Ok(());
    }
    Err(ImageError::UnsupportedMediaType {
        digest: digest.clone(),
        media_type: media_type.to_owned(),
    })
}

/// The compression of a blob from its first bytes. The magic wins over the media
/// type: docker-save's "tar.gzip" layers are often plain tar.
pub(crate) fn sniff_compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// What unpacking a layer produced.
#[derive(Debug, Clone)]
pub(crate) struct Unpacked {
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Tar entries processed.
    pub entries: u64,
}

/// One layer to unpack.
pub(crate) struct LayerJob<'a> {
    pub blob_path: &'a Path,
    pub blob_digest: &'a Digest,
    pub diff_id: &'a Digest,
    /// An existing, empty directory: the layer root.
    pub dest: &'a Path,
    pub id_map: IdMap,
    pub limits: &'a ImportLimits,
    pub cancel: &'a AtomicBool,
}

/// Unpacks `job.blob_path` into `job.dest`. On error the caller removes `dest`.
pub(crate) fn unpack_layer(job: &LayerJob<'_>) -> Result<Unpacked> {
    let layer = job.blob_digest;
    let file =
        File::open(job.blob_path).map_err(|e| ImageError::io("opening", job.blob_path, e))?;
    let mut buffered = BufReader::with_capacity(COPY_BUF, file);
    let head = buffered
        .fill_buf()
        .map_err(|e| ImageError::io("reading", job.blob_path, e))?;
    let compression = sniff_compression(head);
    let decoder: Box<dyn Read> = match compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => {
            // zstd's default refuses windows above 128 MiB, which bounds its memory.
            let d = zstd::stream::read::Decoder::with_buffer(buffered).map_err(|e| {
                ImageError::LayerFormat {
                    layer: layer.clone(),
                    format: "zstd",
                    entry: None,
                    source: e,
                }
            })?;
            Box::new(d)
        }
    };
    let fault = Rc::new(RefCell::new(None));
    let guard = StreamGuard::new(decoder, job.limits, fault.clone());
    let mut archive = tar::Archive::new(guard);

    let root = fsutil::open_dir(job.dest).map_err(|e| ImageError::io("opening", job.dest, e))?;
    let mut u = Unpacker {
        root: Rc::new(root),
        layer,
        id_map: job.id_map,
        limits: job.limits,
        cache: None,
        dirs: BTreeMap::new(),
        root_attrs: None,
        bytes: 0,
        entries: 0,
        devices_skipped: 0,
        xattrs_dropped: 0,
        buf: vec![0u8; COPY_BUF],
    };

    let stream_error = |e: io::Error, entry: Option<String>| -> ImageError {
        match fault.borrow_mut().take() {
            Some(Fault::TooLarge) => ImageError::LayerTooLarge {
                layer: layer.clone(),
                limit: job.limits.max_layer_bytes,
            },
            Some(Fault::HeaderTooLarge(size)) => ImageError::TarHeaderTooLarge {
                layer: layer.clone(),
                size,
                limit: job.limits.max_tar_header_bytes,
            },
            Some(Fault::Sparse) => ImageError::UnsafeTarEntry {
                layer: layer.clone(),
                entry: entry.unwrap_or_default(),
                reason: UnsafeEntry::Sparse,
            },
            Some(Fault::Decompress) => ImageError::LayerFormat {
                layer: layer.clone(),
                format: compression.name(),
                entry,
                source: e,
            },
            None => ImageError::LayerFormat {
                layer: layer.clone(),
                format: "tar",
                entry,
                source: e,
            },
        }
    };

    let entries = archive.entries().map_err(|e| stream_error(e, None))?;
    let mut last_entry: Option<String> = None;
    for entry in entries {
        if job.cancel.load(Ordering::Relaxed) {
            return Err(ImageError::Cancelled);
        }
        let mut entry = entry.map_err(|e| stream_error(e, last_entry.clone()))?;
        u.entries += 1;
        if u.entries > job.limits.max_layer_entries {
            return Err(ImageError::TooManyEntries {
                layer: layer.clone(),
                limit: job.limits.max_layer_entries,
            });
        }
        let name = display_name(&entry.path_bytes());
        match u.entry(&mut entry, &name) {
            Ok(()) => {}
            Err(Step::Image(e)) => return Err(e),
            Err(Step::Stream(e)) => return Err(stream_error(e, Some(name))),
        }
        last_entry = Some(name);
    }
    // Hash the end-of-archive blocks and any padding too: the diff_id covers the
    // whole stream.
    let mut guard = archive.into_inner();
    io::copy(&mut guard, &mut io::sink()).map_err(|e| stream_error(e, None))?;
    let (actual, _) = guard.finish();
    if actual != *job.diff_id {
        return Err(ImageError::DiffIdMismatch {
            layer: layer.clone(),
            expected: job.diff_id.clone(),
            actual,
        });
    }
    u.finish_dirs()?;
    if u.devices_skipped > 0 {
        tracing::warn!(layer = %layer, count = u.devices_skipped, "skipped device nodes in layer");
    }
    if u.xattrs_dropped > 0 {
        tracing::debug!(layer = %layer, count = u.xattrs_dropped, "dropped non-user xattrs in layer");
    }
    Ok(Unpacked {
        bytes: u.bytes,
        entries: u.entries,
    })
}

fn display_name(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s.into_owned()
    }
}

/// A per-entry failure: either a final error, or a stream error to classify.
enum Step {
    Image(ImageError),
    Stream(io::Error),
}

impl From<ImageError> for Step {
    fn from(e: ImageError) -> Self {
        Step::Image(e)
    }
}

#[derive(Debug, Clone, Copy)]
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

impl Attrs {
    fn times(&self) -> Timestamps {
        let t = Timespec {
            tv_sec: self.mtime,
            tv_nsec: 0,
        };
        Timestamps {
            last_access: t,
            last_modification: t,
        }
    }
}

struct Unpacker<'a> {
    root: Rc<OwnedFd>,
    layer: &'a Digest,
    id_map: IdMap,
    limits: &'a ImportLimits,
    /// The last parent directory used (entries come grouped by directory).
    cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
    /// Directories whose attributes are applied after all entries.
    dirs: BTreeMap<Vec<u8>, Attrs>,
    root_attrs: Option<Attrs>,
    bytes: u64,
    entries: u64,
    devices_skipped: u64,
    xattrs_dropped: u64,
    buf: Vec<u8>,
}

/// Splits a tar path into components: `./` and empty components dropped;
/// absolute paths, `..`, NUL and over-long names refused.
fn components(raw: &[u8], max_len: usize) -> std::result::Result<Vec<&[u8]>, UnsafeEntry> {
    if raw.len() > max_len {
        return Err(UnsafeEntry::PathTooLong { limit: max_len });
    }
    if raw.contains(&0) {
        return Err(UnsafeEntry::NulByte);
    }
    if raw.starts_with(b"/") {
        return Err(UnsafeEntry::AbsolutePath);
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(UnsafeEntry::ParentDir),
            c if c.len() > 255 => return Err(UnsafeEntry::NameTooLong),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

impl Unpacker<'_> {
    fn refuse(&self, entry: &str, reason: UnsafeEntry) -> ImageError {
        ImageError::UnsafeTarEntry {
            layer: self.layer.clone(),
            entry: entry.to_owned(),
            reason,
        }
    }

    fn write_err(&self, entry: &str, e: impl Into<io::Error>) -> ImageError {
        ImageError::LayerWrite {
            layer: self.layer.clone(),
            entry: entry.to_owned(),
            source: e.into(),
        }
    }

    fn attrs(&self, header: &tar::Header) -> io::Result<Attrs> {
        let shift = |id: u64| self.id_map.to_host(u32::try_from(id).unwrap_or(u32::MAX));
        Ok(Attrs {
            mode: header.mode()? & 0o7777,
            uid: shift(header.uid()?),
            gid: shift(header.gid()?),
            mtime: i64::try_from(header.mtime()?).unwrap_or(0),
        })
    }

    /// Opens (creating missing directories) the parent directory `comps` below the
    /// root, never through a symlink.
    fn parent(&mut self, comps: &[&[u8]], entry: &str) -> Result<Rc<OwnedFd>> {
        if comps.is_empty() {
            return Ok(self.root.clone());
        }
        let key = join_components(comps);
        if let Some((k, fd)) = &self.cache {
            if *k == key {
                return Ok(fd.clone());
            }
        }
        let fd = match open_dir_beneath(self.root.as_fd(), os(&key)) {
            Ok(fd) => Rc::new(fd),
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                self.create_parents(comps, entry)?
            }
            Err(e) => return Err(self.parent_err(comps, entry, e)),
        };
        self.cache = Some((key, fd.clone()));
        Ok(fd)
    }

    fn parent_err(&self, comps: &[&[u8]], entry: &str, e: io::Error) -> ImageError {
        match e.raw_os_error().map(Errno::from_raw_os_error) {
            Some(Errno::LOOP) | Some(Errno::XDEV) | Some(Errno::NOTDIR) => {
                match self.blocker(comps) {
                    Some(FileType::Symlink) => self.refuse(entry, UnsafeEntry::ThroughSymlink),
                    _ => self.refuse(entry, UnsafeEntry::ParentNotDirectory),
                }
            }
            _ => self.write_err(entry, e),
        }
    }

    /// After a failed resolution of `comps`: the type of the first component that
    /// is not a directory (lstat only, for the error message).
    fn blocker(&self, comps: &[&[u8]]) -> Option<FileType> {
        let mut cur = self.root.clone();
        for c in comps {
            let st = statat(cur.as_fd(), os(c), AtFlags::SYMLINK_NOFOLLOW).ok()?;
            let ty = FileType::from_raw_mode(st.st_mode);
            if ty != FileType::Directory {
                return Some(ty);
            }
            cur = Rc::new(open_dir_beneath(cur.as_fd(), os(c)).ok()?);
        }
        None
    }

    /// Creates missing parent directories like Docker does: mode 0755, owned by
    /// root (of the sandbox).
    fn create_parents(&mut self, comps: &[&[u8]], entry: &str) -> Result<Rc<OwnedFd>> {
        let mut cur = self.root.clone();
        for c in comps {
            let next = match open_dir_beneath(cur.as_fd(), os(c)) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                    mkdirat(cur.as_fd(), os(c), Mode::from_raw_mode(0o700))
                        .map_err(|e| self.write_err(entry, e))?;
                    let fd = open_dir_beneath(cur.as_fd(), os(c))
                        .map_err(|e| self.parent_err(comps, entry, e))?;
                    let root = self.id_map.to_host(0);
                    fchown(&fd, Some(Uid::from_raw(root)), Some(Gid::from_raw(root)))
                        .map_err(|e| self.write_err(entry, e))?;
                    fchmod(&fd, Mode::from_raw_mode(0o755))
                        .map_err(|e| self.write_err(entry, e))?;
                    fd
                }
                Err(e) => return Err(self.parent_err(comps, entry, e)),
            };
            cur = Rc::new(next);
        }
        Ok(cur)
    }

    /// Makes room for a non-directory entry at `parent/name`: a later entry
    /// replaces an earlier one; a directory is removed with all it holds (as
    /// containerd does). Never follows a symlink.
    fn clear(&mut self, parent: &OwnedFd, name: &[u8], path: &[u8], entry: &str) -> Result<()> {
        match statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.write_err(entry, e)),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                remove_tree_at(parent.as_fd(), os(name)).map_err(|e| self.write_err(entry, e))?;
                self.cache = None;
                let mut prefix = path.to_vec();
                prefix.push(b'/');
                self.dirs
                    .retain(|k, _| k.as_slice() != path && !k.starts_with(&prefix));
                Ok(())
            }
            Ok(_) => {
                unlinkat(parent, os(name), AtFlags::empty()).map_err(|e| self.write_err(entry, e))
            }
        }
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> std::result::Result<(), Step> {
        let raw_path = entry.path_bytes().into_owned();
        let comps =
            components(&raw_path, self.limits.max_path_len).map_err(|r| self.refuse(name, r))?;
        let header = entry.header().clone();
        let ty = header.entry_type();
        let attrs = self.attrs(&header).map_err(Step::Stream)?;

        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(Step::Stream)? {
            for ext in exts {
                let ext = ext.map_err(Step::Stream)?;
                let key = ext.key_bytes();
                if key.starts_with(b"GNU.sparse.") {
                    return Err(self.refuse(name, UnsafeEntry::Sparse).into());
                }
                if let Some(xname) = key.strip_prefix(b"SCHILY.xattr.") {
                    // An image must not set overlay (trusted.*) or security.* xattrs.
                    if xname.starts_with(b"user.") && !xname.contains(&0) {
                        xattrs.push((xname.to_vec(), ext.value_bytes().to_vec()));
                    } else {
                        self.xattrs_dropped += 1;
                    }
                }
            }
        }

        let Some((last, parent_comps)) = comps.split_last() else {
            // The entry names the layer root itself.
            return match ty {
                tar::EntryType::Directory => {
                    self.root_attrs = Some(attrs);
                    Ok(())
                }
                tar::EntryType::XGlobalHeader => Ok(()),
                _ => Err(self.refuse(name, UnsafeEntry::ReplacesRoot).into()),
            };
        };
        let last: &[u8] = last;

        if last.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(parent_comps, last, name).map_err(Step::Image);
        }

        match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let parent = self.parent(parent_comps, name)?;
                self.clear(&parent, last, &raw_path, name)?;
                let fd = openat(
                    &*parent,
                    os(last),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.write_err(name, e))?;
                let mut file = File::from(fd);
                loop {
                    let n = match entry.read(&mut self.buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(Step::Stream(e)),
                    };
                    file.write_all(&self.buf[..n])
                        .map_err(|e| self.write_err(name, e))?;
                    self.bytes += n as u64;
                }
                self.set_owner_mode(&file, &attrs, name)?;
                for (k, v) in &xattrs {
                    fsetxattr(&file, os(k), v, XattrFlags::empty())
                        .map_err(|e| self.write_err(name, e))?;
                }
                futimens(&file, &attrs.times()).map_err(|e| self.write_err(name, e))?;
            }
            tar::EntryType::Directory => {
                let parent = self.parent(parent_comps, name)?;
                match statat(&*parent, os(last), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                    Ok(_) => {
                        // e.g. a symlink of the same name earlier in the layer: it is
                        // removed, never followed (CVE-2021-32760 class).
                        unlinkat(&*parent, os(last), AtFlags::empty())
                            .map_err(|e| self.write_err(name, e))?;
                        mkdirat(&*parent, os(last), Mode::from_raw_mode(0o700))
                            .map_err(|e| self.write_err(name, e))?;
                    }
                    Err(Errno::NOENT) => {
                        mkdirat(&*parent, os(last), Mode::from_raw_mode(0o700))
                            .map_err(|e| self.write_err(name, e))?;
                    }
                    Err(e) => return Err(self.write_err(name, e).into()),
                }
                if !xattrs.is_empty() {
                    let fd = open_dir_beneath(parent.as_fd(), os(last))
                        .map_err(|e| self.parent_err(&comps, name, e))?;
                    for (k, v) in &xattrs {
                        fsetxattr(&fd, os(k), v, XattrFlags::empty())
                            .map_err(|e| self.write_err(name, e))?;
                    }
                }
                self.dirs.insert(join_components(&comps), attrs);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty() {
                    return Err(self.refuse(name, UnsafeEntry::EmptyLinkTarget).into());
                }
                if target.contains(&0) {
                    return Err(self.refuse(name, UnsafeEntry::NulByte).into());
                }
                if target.len() > self.limits.max_path_len {
                    return Err(self
                        .refuse(
                            name,
                            UnsafeEntry::PathTooLong {
                                limit: self.limits.max_path_len,
                            },
                        )
                        .into());
                }
                let parent = self.parent(parent_comps, name)?;
                self.clear(&parent, last, &raw_path, name)?;
                // The target is stored verbatim: the host never follows it.
                symlinkat(os(&target), &*parent, os(last)).map_err(|e| self.write_err(name, e))?;
                self.set_owner_at(&parent, last, &attrs, name)?;
                utimensat(
                    &*parent,
                    os(last),
                    &attrs.times(),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| self.write_err(name, e))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.hardlink(&comps, &raw_path, &target, name)?;
            }
            tar::EntryType::Fifo => {
                let parent = self.parent(parent_comps, name)?;
                self.clear(&parent, last, &raw_path, name)?;
                mknodat(
                    &*parent,
                    os(last),
                    FileType::Fifo,
                    Mode::from_raw_mode(0o600),
                    0,
                )
                .map_err(|e| self.write_err(name, e))?;
                self.set_owner_at(&parent, last, &attrs, name)?;
                // chmodat cannot refuse symlinks, but this name was just created as a
                // FIFO in our own staging directory.
                chmodat(
                    &*parent,
                    os(last),
                    Mode::from_raw_mode(attrs.mode),
                    AtFlags::empty(),
                )
                .map_err(|e| self.write_err(name, e))?;
                utimensat(
                    &*parent,
                    os(last),
                    &attrs.times(),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| self.write_err(name, e))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                // Devices are never created from an image; the sandbox provides /dev.
                self.devices_skipped += 1;
                tracing::warn!(layer = %self.layer, entry = name, "skipping device node");
            }
            tar::EntryType::XGlobalHeader => {}
            tar::EntryType::GNUSparse => return Err(self.refuse(name, UnsafeEntry::Sparse).into()),
            other => {
                return Err(self
                    .refuse(name, UnsafeEntry::UnsupportedType(other.as_byte() as char))
                    .into())
            }
        }
        Ok(())
    }

    fn set_owner_mode(&self, file: &File, a: &Attrs, name: &str) -> Result<()> {
        // chown first: it clears set-id bits, which the mode then restores.
        fchown(file, Some(Uid::from_raw(a.uid)), Some(Gid::from_raw(a.gid)))
            .map_err(|e| self.write_err(name, e))?;
        fchmod(file, Mode::from_raw_mode(a.mode)).map_err(|e| self.write_err(name, e))
    }

    fn set_owner_at(&self, parent: &OwnedFd, last: &[u8], a: &Attrs, name: &str) -> Result<()> {
        chownat(
            parent,
            os(last),
            Some(Uid::from_raw(a.uid)),
            Some(Gid::from_raw(a.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.write_err(name, e))
    }

    fn hardlink(
        &mut self,
        comps: &[&[u8]],
        raw_path: &[u8],
        target: &[u8],
        name: &str,
    ) -> Result<()> {
        let tcomps = components(target, self.limits.max_path_len).map_err(|r| {
            self.refuse(
                name,
                match r {
                    UnsafeEntry::AbsolutePath => UnsafeEntry::HardlinkAbsolute,
                    UnsafeEntry::ParentDir => UnsafeEntry::HardlinkParentDir,
                    r => r,
                },
            )
        })?;
        let Some((tlast, tparent_comps)) = tcomps.split_last() else {
            return Err(self.refuse(name, UnsafeEntry::HardlinkToDirectory));
        };
        let missing = || UnsafeEntry::HardlinkMissing {
            target: display_name(target),
        };
        let tparent = if tparent_comps.is_empty() {
            self.root.clone()
        } else {
            match open_dir_beneath(self.root.as_fd(), os(&join_components(tparent_comps))) {
                Ok(fd) => Rc::new(fd),
                Err(e) => {
                    return Err(match e.raw_os_error().map(Errno::from_raw_os_error) {
                        Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV) => {
                            if self.blocker(tparent_comps) == Some(FileType::Symlink) {
                                self.refuse(name, UnsafeEntry::HardlinkThroughSymlink)
                            } else {
                                self.refuse(name, missing())
                            }
                        }
                        _ => self.write_err(name, e),
                    })
                }
            }
        };
        match statat(&*tparent, os(tlast), AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => return Err(self.refuse(name, missing())),
            Err(e) => return Err(self.write_err(name, e)),
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    return Err(self.refuse(name, UnsafeEntry::HardlinkToDirectory))
                }
                FileType::RegularFile | FileType::Symlink | FileType::Fifo => {}
                _ => return Err(self.refuse(name, UnsafeEntry::HardlinkToSpecial)),
            },
        }
        if tcomps.as_slice() == comps {
            return Ok(()); // a link to itself: already there
        }
        let Some((last, parent_comps)) = comps.split_last() else {
            return Err(self.refuse(name, UnsafeEntry::ReplacesRoot));
        };
        let parent = self.parent(parent_comps, name)?;
        self.clear(&parent, last, raw_path, name)?;
        match linkat(&*tparent, os(tlast), &*parent, os(last), AtFlags::empty()) {
            Ok(()) => Ok(()),
            // Clearing the link's own path removed a directory holding the target.
            Err(Errno::NOENT) => Err(self.refuse(name, missing())),
            Err(e) => Err(self.write_err(name, e)),
        }
    }

    /// `.wh.NAME` becomes a 0:0 character device NAME; `.wh..wh..opq` marks its
    /// directory opaque. The parent is resolved with the same no-symlink rules.
    fn whiteout(&mut self, parent_comps: &[&[u8]], last: &[u8], name: &str) -> Result<()> {
        let parent = self.parent(parent_comps, name)?;
        if last == OPAQUE_MARKER {
            return fsetxattr(&*parent, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(|e| self.write_err(name, e));
        }
        if last.starts_with(META_PREFIX) {
            return Ok(()); // other AUFS metadata (.wh..wh.plnk, ...): ignored like Docker does
        }
        let hidden = &last[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(self.refuse(name, UnsafeEntry::BadWhiteout));
        }
        match statat(&*parent, os(hidden), AtFlags::SYMLINK_NOFOLLOW) {
            // Something of that name in this same layer: a whiteout hides only
            // lower layers, so the entry stays.
            Ok(_) => Ok(()),
            Err(Errno::NOENT) => mknodat(
                &*parent,
                os(hidden),
                FileType::CharacterDevice,
                Mode::empty(),
                makedev(0, 0),
            )
            .map_err(|e| self.write_err(name, e)),
            Err(e) => Err(self.write_err(name, e)),
        }
    }

    /// Applies directory owners, modes and mtimes, deepest first, now that their
    /// contents are complete.
    fn finish_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (path, a) in dirs.iter().rev() {
            let name = display_name(path);
            let fd = match open_dir_beneath(self.root.as_fd(), os(path)) {
                Ok(fd) => fd,
                // Replaced by a later entry.
                Err(e)
                    if matches!(
                        e.raw_os_error().map(Errno::from_raw_os_error),
                        Some(Errno::NOENT) | Some(Errno::NOTDIR) | Some(Errno::LOOP)
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(self.write_err(&name, e)),
            };
            self.apply_dir(&fd, a, &name)?;
        }
        let root_default = Attrs {
            mode: 0o755,
            uid: self.id_map.to_host(0),
            gid: self.id_map.to_host(0),
            mtime: 0,
        };
        let root = self.root.clone();
        let a = self.root_attrs.unwrap_or(root_default);
        self.apply_dir(&root, &a, "./")
    }

    fn apply_dir(&self, fd: &OwnedFd, a: &Attrs, name: &str) -> Result<()> {
        fchown(fd, Some(Uid::from_raw(a.uid)), Some(Gid::from_raw(a.gid)))
            .map_err(|e| self.write_err(name, e))?;
        fchmod(fd, Mode::from_raw_mode(a.mode)).map_err(|e| self.write_err(name, e))?;
        futimens(fd, &a.times()).map_err(|e| self.write_err(name, e))
    }
}

/// Why [`StreamGuard`] stopped the stream.
#[derive(Debug)]
enum Fault {
    TooLarge,
    HeaderTooLarge(u64),
    Sparse,
    Decompress,
}

enum Scan {
    Header { filled: usize },
    Data { remaining: u64, capture: u64 },
    Ended,
}

/// Sits between the decompressor and the tar parser: hashes and counts the
/// uncompressed stream (capping it), and follows the tar block structure to refuse
/// extension headers (GNU long names, pax records) larger than the limit before
/// the tar crate buffers them whole in memory.
struct StreamGuard<R> {
    inner: R,
    hasher: Sha256,
    total: u64,
    max_total: u64,
    max_header: u64,
    fault: Rc<RefCell<Option<Fault>>>,
    scan: Scan,
    header: [u8; 512],
    pax: Vec<u8>,
    pending_size: Option<u64>,
    pending_pax: bool,
}

impl<R: Read> StreamGuard<R> {
    fn new(inner: R, limits: &ImportLimits, fault: Rc<RefCell<Option<Fault>>>) -> Self {
        StreamGuard {
            inner,
            hasher: Sha256::new(),
            total: 0,
            max_total: limits.max_layer_bytes,
            max_header: limits.max_tar_header_bytes,
            fault,
            scan: Scan::Header { filled: 0 },
            header: [0; 512],
            pax: Vec::new(),
            pending_size: None,
            pending_pax: false,
        }
    }

    fn finish(self) -> (Digest, u64) {
        (
            Digest::from_sha256_bytes(&self.hasher.finalize().into()),
            self.total,
        )
    }

    fn fail(&self, f: Fault) -> io::Error {
        let msg = format!("{f:?}");
        *self.fault.borrow_mut() = Some(f);
        io::Error::other(msg)
    }

    /// Follows the tar structure over `data`.
    fn scan(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match &mut self.scan {
                Scan::Ended => return Ok(()),
                Scan::Header { filled } => {
                    let take = (512 - *filled).min(data.len());
                    self.header[*filled..*filled + take].copy_from_slice(&data[..take]);
                    *filled += take;
                    data = &data[take..];
                    if *filled == 512 {
                        self.on_header()?;
                    }
                }
                Scan::Data { remaining, capture } => {
                    let take = u64::try_from(data.len())
                        .unwrap_or(u64::MAX)
                        .min(*remaining);
                    let cap = take.min(*capture);
                    if cap > 0 {
                        self.pax.extend_from_slice(&data[..cap as usize]);
                        *capture -= cap;
                    }
                    *remaining -= take;
                    data = &data[take as usize..];
                    if *remaining == 0 {
                        self.end_of_data();
                    }
                }
            }
        }
        Ok(())
    }

    fn on_header(&mut self) -> io::Result<()> {
        if self.header.iter().all(|&b| b == 0) {
            // The tar crate stops at the first zero block; what follows is trailer.
            self.scan = Scan::Ended;
            return Ok(());
        }
        let h = tar::Header::from_byte_slice(&self.header);
        let Ok(size) = h.entry_size() else {
            // Malformed: let the tar crate report it.
            self.scan = Scan::Ended;
            return Ok(());
        };
        let ty = self.header[156];
        let is_ext = matches!(ty, b'L' | b'K' | b'x' | b'g');
        let size = if is_ext {
            if size > self.max_header {
                return Err(self.fail(Fault::HeaderTooLarge(size)));
            }
            size
        } else {
            if ty == b'S' {
                return Err(self.fail(Fault::Sparse));
            }
            // A pax `size` record overrides the header's size for the next
            // member, as the tar crate applies it.
            self.pending_size.take().unwrap_or(size)
        };
        self.pending_pax = ty == b'x';
        if self.pending_pax {
            self.pax.clear();
        }
        let padded = size.div_ceil(512).saturating_mul(512);
        self.scan = Scan::Data {
            remaining: padded,
            capture: if self.pending_pax { size } else { 0 },
        };
        if padded == 0 {
            self.end_of_data();
        }
        Ok(())
    }

    fn end_of_data(&mut self) {
        if self.pending_pax {
            self.pending_pax = false;
            for ext in tar::PaxExtensions::new(&self.pax).flatten() {
                if ext.key_bytes() == b"size" {
                    if let Some(v) = ext.value().ok().and_then(|v| v.parse::<u64>().ok()) {
                        self.pending_size = Some(v);
                    }
                }
            }
        }
        self.scan = Scan::Header { filled: 0 };
    }
}

impl<R: Read> Read for StreamGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                *self.fault.borrow_mut() = Some(Fault::Decompress);
                return Err(e);
            }
        };
        self.total += n as u64;
        if self.total > self.max_total {
            return Err(self.fail(Fault::TooLarge));
        }
        self.hasher.update(&buf[..n]);
        self.scan(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_normalize_and_refuse() {
        assert_eq!(
            components(b"./a//b/./c/", 4096).unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert!(components(b"./", 4096).unwrap().is_empty());
        assert_eq!(components(b"/etc/x", 4096), Err(UnsafeEntry::AbsolutePath));
        assert_eq!(components(b"a/../../x", 4096), Err(UnsafeEntry::ParentDir));
        assert_eq!(components(b"a\0b", 4096), Err(UnsafeEntry::NulByte));
        assert_eq!(
            components(&[b'a'; 20], 10),
            Err(UnsafeEntry::PathTooLong { limit: 10 })
        );
    }

    #[test]
    fn sniffs_compression() {
        assert_eq!(sniff_compression(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            sniff_compression(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(sniff_compression(b"hello"), Compression::None);
    }
}
