//! Reading an untrusted image source: an OCI layout directory, or a tarball (OCI
//! archive or docker-save, optionally gzip-compressed).
//!
//! Nothing from a tarball is ever created on the host under the archive's names:
//! the archive is indexed (entry name -> offset and size) and files are read in
//! place; symlink and hardlink entries are aliases resolved inside that index. A
//! layout directory is read through `openat2` below its descriptor, refusing
//! symlinks, so a planted link cannot make the import read a host file. A
//! registry source fetches the same names over HTTP (`blobs/sha256/<hex>`, and
//! `manifests/<digest>` for manifests and indexes).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{fstat, openat2, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::{ImageError, Result};
use crate::fsutil;
use crate::limits::ImportLimits;
use crate::registry::RegistrySource;

/// How to resolve a file name inside a source directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Links {
    /// No symlinks at all (OCI layout blobs and documents).
    Refuse,
    /// Symlinks that stay below the source root (legacy docker-save directories
    /// link shared `layer.tar` files).
    Beneath,
}

enum Entry {
    File { offset: u64, size: u64 },
    Link { target: String },
}

enum Kind {
    Dir(OwnedFd),
    Archive {
        file: File,
        entries: HashMap<String, Entry>,
    },
    Registry(Box<RegistrySource>),
}

/// An opened image source.
pub(crate) struct Source {
    kind: Kind,
    path: PathBuf,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A reader over one file of a source, with its size (a registry may not say).
pub(crate) struct SourceFile<'a> {
    pub reader: Box<dyn Read + Send + 'a>,
    pub size: Option<u64>,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

impl Source {
    /// Opens `path`: a directory is used in place; a regular file must be a tar
    /// archive, or a gzip-compressed one, which is decompressed into `staging`
    /// first (bounded by `limits.max_archive_bytes`).
    pub(crate) fn open(path: &Path, staging: &Path, limits: &ImportLimits) -> Result<Source> {
        let unreadable = |e| ImageError::InputUnreadable {
            path: path.to_owned(),
            source: e,
        };
        let meta = std::fs::metadata(path).map_err(unreadable)?;
        if meta.is_dir() {
            let fd = fsutil::open_dir(path).map_err(unreadable)?;
            return Ok(Source {
                kind: Kind::Dir(fd),
                path: path.to_owned(),
            });
        }
        if !meta.is_file() {
            return Err(ImageError::UnrecognizedInput {
                path: path.to_owned(),
                reason: "it is neither a directory nor a regular file".into(),
            });
        }
        let mut file = File::open(path).map_err(unreadable)?;
        let mut magic = [0u8; 2];
        let n = file
            .read_at(&mut magic, 0)
            .map_err(|e| ImageError::io("reading", path, e))?;
        let tar_file = if n == 2 && magic == GZIP_MAGIC {
            // Decompressed to a file so entries can be read in place, in parallel.
            let out_path = staging.join("input.tar");
            let mut out = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&out_path)
                .map_err(|e| ImageError::io("creating", &out_path, e))?;
            let mut dec = flate2::read::MultiGzDecoder::new(BufReader::new(&mut file))
                .take(limits.max_archive_bytes + 1);
            let copied = io::copy(&mut dec, &mut out).map_err(|e| ImageError::ArchiveFormat {
                path: path.to_owned(),
                source: e,
            })?;
            if copied > limits.max_archive_bytes {
                return Err(ImageError::ArchiveTooLarge {
                    path: path.to_owned(),
                    limit: limits.max_archive_bytes,
                });
            }
            out
        } else {
            if meta.len() > limits.max_archive_bytes {
                return Err(ImageError::ArchiveTooLarge {
                    path: path.to_owned(),
                    limit: limits.max_archive_bytes,
                });
            }
            file
        };
        let mut ustar = [0u8; 5];
        let n = tar_file
            .read_at(&mut ustar, 257)
            .map_err(|e| ImageError::io("reading", path, e))?;
        if n != 5 || &ustar != b"ustar" {
            return Err(ImageError::UnrecognizedInput {
                path: path.to_owned(),
                reason: "it is not a directory, a tar archive or a gzip-compressed tar archive"
                    .into(),
            });
        }
        let entries = index_archive(&tar_file, path, limits)?;
        Ok(Source {
            kind: Kind::Archive {
                file: tar_file,
                entries,
            },
            path: path.to_owned(),
        })
    }

    /// A registry repository as a source. `path` is `registry/repository`, for messages.
    pub(crate) fn registry(registry: RegistrySource) -> Source {
        Source {
            path: PathBuf::from(registry.describe()),
            kind: Kind::Registry(Box::new(registry)),
        }
    }

    /// The path the user gave (`registry/repository` for a registry).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The registry, when the source is one.
    pub(crate) fn as_registry(&self) -> Option<&RegistrySource> {
        match &self.kind {
            Kind::Registry(r) => Some(r),
            _ => None,
        }
    }

    /// The name under which the blob with this digest and media type is read:
    /// `blobs/sha256/<hex>`, except manifests and indexes in a registry, which
    /// are served under `manifests/<digest>`.
    pub(crate) fn blob_name(&self, digest: &runbox_core::Digest, media_type: &str) -> String {
        let is_manifest = media_type.ends_with(".manifest.v1+json")
            || media_type.ends_with(".index.v1+json")
            || media_type.ends_with(".manifest.v2+json")
            || media_type.ends_with(".manifest.list.v2+json");
        match &self.kind {
            Kind::Registry(_) if is_manifest => format!("manifests/{digest}"),
            _ => format!("blobs/sha256/{}", digest.hex()),
        }
    }

    /// The error for a failed read of `name`.
    pub(crate) fn read_error(&self, name: &str, e: io::Error) -> ImageError {
        match &self.kind {
            Kind::Registry(r) => ImageError::Registry {
                registry: r.remote().registry.clone(),
                what: format!("downloading {name} of {}", r.describe()),
                detail: e.to_string(),
            },
            _ => ImageError::io("reading", self.path.join(name), e),
        }
    }

    /// Whether `name` names a regular file in the source (following no symlinks).
    pub(crate) fn has_file(&self, name: &str) -> bool {
        match &self.kind {
            Kind::Dir(fd) => matches!(
                rustix::fs::statat(fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW),
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
            ),
            Kind::Archive { entries, .. } => {
                matches!(entries.get(name), Some(Entry::File { .. }))
            }
            Kind::Registry(_) => false,
        }
    }

    /// Opens the regular file `name` (relative, `/`-separated) of the source. `what`
    /// describes it for errors.
    pub(crate) fn open_file(&self, name: &str, what: &str, links: Links) -> Result<SourceFile<'_>> {
        let unsafe_path = |source: io::Error| ImageError::UnsafeSourcePath {
            what: what.to_owned(),
            file: name.to_owned(),
            source,
        };
        let missing = || ImageError::MissingFile {
            what: what.to_owned(),
            file: name.to_owned(),
        };
        match &self.kind {
            Kind::Dir(dirfd) => {
                // Mount points inside a layout are allowed (unlike in a layer).
                let resolve = match links {
                    Links::Refuse => {
                        ResolveFlags::BENEATH
                            | ResolveFlags::NO_SYMLINKS
                            | ResolveFlags::NO_MAGICLINKS
                    }
                    Links::Beneath => ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
                };
                // Look first with O_PATH, so a FIFO or device planted in the layout
                // is never opened for reading.
                let probe = openat2(
                    dirfd,
                    name,
                    OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                    Mode::empty(),
                    resolve,
                )
                .map_err(|e| match e {
                    Errno::NOENT => missing(),
                    e => unsafe_path(e.into()),
                })?;
                let st = fstat(&probe).map_err(|e| unsafe_path(e.into()))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                    return Err(unsafe_path(io::Error::other("not a regular file")));
                }
                let fd = openat2(
                    dirfd,
                    name,
                    OFlags::RDONLY
                        | OFlags::CLOEXEC
                        | OFlags::NOFOLLOW
                        | OFlags::NOCTTY
                        | OFlags::NONBLOCK,
                    Mode::empty(),
                    resolve,
                )
                .map_err(|e| unsafe_path(e.into()))?;
                let st2 = fstat(&fd).map_err(|e| unsafe_path(e.into()))?;
                if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) {
                    return Err(unsafe_path(io::Error::other(
                        "the file changed while opening it",
                    )));
                }
                let size = st2.st_size as u64;
                Ok(SourceFile {
                    reader: Box::new(File::from(fd)),
                    size: Some(size),
                })
            }
            Kind::Archive { file, entries } => {
                let mut current = name.to_owned();
                for _ in 0..16 {
                    match entries.get(&current) {
                        None => return Err(missing()),
                        Some(Entry::File { offset, size }) => {
                            return Ok(SourceFile {
                                reader: Box::new(AtReader {
                                    file,
                                    pos: *offset,
                                    end: offset + size,
                                }),
                                size: Some(*size),
                            })
                        }
                        Some(Entry::Link { target }) => current = target.clone(),
                    }
                }
                Err(unsafe_path(io::Error::other(
                    "too many levels of links in the archive",
                )))
            }
            Kind::Registry(r) => {
                let digest = |s: &str| s.parse::<runbox_core::Digest>().map_err(|_| missing());
                if let Some(d) = name.strip_prefix("manifests/") {
                    let body = r.fetch_manifest(Some(&digest(d)?), what)?;
                    let size = body.len() as u64;
                    Ok(SourceFile {
                        reader: Box::new(io::Cursor::new(body)),
                        size: Some(size),
                    })
                } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                    let (reader, size) = r.open_blob(&digest(&format!("sha256:{hex}"))?, what)?;
                    Ok(SourceFile { reader, size })
                } else {
                    Err(missing())
                }
            }
        }
    }

    /// Reads a whole small document (JSON), refusing more than `max` bytes.
    pub(crate) fn read_document(&self, name: &str, what: &str, max: u64) -> Result<Vec<u8>> {
        let f = self.open_file(name, what, Links::Refuse)?;
        let size = f.size.unwrap_or(0);
        if size > max {
            return Err(ImageError::DocumentTooLarge {
                what: what.to_owned(),
                size,
                limit: max,
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        f.reader
            .take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| ImageError::io("reading", self.path.join(name), e))?;
        if buf.len() as u64 > max {
            return Err(ImageError::DocumentTooLarge {
                what: what.to_owned(),
                size: buf.len() as u64,
                limit: max,
            });
        }
        Ok(buf)
    }

    /// Reads a document that may be missing.
    pub(crate) fn read_optional_document(
        &self,
        name: &str,
        what: &str,
        max: u64,
    ) -> Result<Option<Vec<u8>>> {
        match self.read_document(name, what, max) {
            Ok(b) => Ok(Some(b)),
            Err(ImageError::MissingFile { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Reads `[pos, end)` of a shared file with pread, so threads can read different
/// entries of one archive at once.
struct AtReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for AtReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive is truncated",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Lexically normalizes an archive member name: strips `./` and empty components.
/// Returns `None` for absolute names or names with `..`, which no valid reference
/// can name, so they are simply not indexed.
pub(crate) fn normalize_member(name: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(name).ok()?;
    if s.starts_with('/') || s.contains('\0') {
        return None;
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

/// Resolves a symlink target found at member `from`, lexically, inside the archive.
fn resolve_link(from: &str, target: &[u8]) -> Option<String> {
    let t = std::str::from_utf8(target).ok()?;
    if t.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = from.split('/').collect();
    parts.pop();
    for c in t.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    }
}

/// Walks the archive's headers with pread before the tar crate sees it: the tar
/// crate reads extension headers (GNU long names, pax records) whole into memory,
/// so their size is checked first, and entries are counted.
fn prescan_archive(file: &File, path: &Path, limits: &ImportLimits) -> Result<()> {
    let fmt_err = |e: io::Error| ImageError::ArchiveFormat {
        path: path.to_owned(),
        source: e,
    };
    let len = file
        .metadata()
        .map_err(|e| ImageError::io("reading", path, e))?
        .len();
    let mut pos = 0u64;
    let mut entries = 0u64;
    let mut pending_size = None;
    let mut header = [0u8; 512];
    while pos + 512 <= len {
        file.read_exact_at(&mut header, pos).map_err(fmt_err)?;
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let h = tar::Header::from_byte_slice(&header);
        let size = h.entry_size().map_err(fmt_err)?;
        let ty = header[156];
        let size = if matches!(ty, b'L' | b'K' | b'x' | b'g') {
            if size > limits.max_tar_header_bytes {
                return Err(ImageError::ArchiveHeaderTooLarge {
                    path: path.to_owned(),
                    size,
                    limit: limits.max_tar_header_bytes,
                });
            }
            if ty == b'x' {
                let mut pax = vec![0u8; size as usize];
                file.read_exact_at(&mut pax, pos + 512).map_err(fmt_err)?;
                for ext in tar::PaxExtensions::new(&pax).flatten() {
                    if ext.key_bytes() == b"size" {
                        pending_size = ext.value().ok().and_then(|v| v.parse::<u64>().ok());
                    }
                }
            }
            size
        } else {
            entries += 1;
            if entries > limits.max_archive_entries {
                return Err(ImageError::ArchiveTooManyEntries {
                    path: path.to_owned(),
                    limit: limits.max_archive_entries,
                });
            }
            pending_size.take().unwrap_or(size)
        };
        pos = pos
            .saturating_add(512)
            .saturating_add(size.div_ceil(512).saturating_mul(512));
    }
    Ok(())
}

fn index_archive(
    file: &File,
    path: &Path,
    limits: &ImportLimits,
) -> Result<HashMap<String, Entry>> {
    let fmt_err = |e: io::Error| ImageError::ArchiveFormat {
        path: path.to_owned(),
        source: e,
    };
    prescan_archive(file, path, limits)?;
    let mut reader = file;
    reader
        .seek(io::SeekFrom::Start(0))
        .map_err(|e| ImageError::io("reading", path, e))?;
    let mut archive = tar::Archive::new(reader);
    let mut entries = HashMap::new();
    let mut count = 0u64;
    for entry in archive.entries_with_seek().map_err(fmt_err)? {
        let entry = entry.map_err(fmt_err)?;
        count += 1;
        if count > limits.max_archive_entries {
            return Err(ImageError::ArchiveTooManyEntries {
                path: path.to_owned(),
                limit: limits.max_archive_entries,
            });
        }
        let Some(name) = normalize_member(&entry.path_bytes()) else {
            continue;
        };
        let ty = entry.header().entry_type();
        let value = if ty.is_file() {
            Entry::File {
                offset: entry.raw_file_position(),
                size: entry.size(),
            }
        } else if ty.is_symlink() {
            let Some(target) = entry
                .link_name_bytes()
                .and_then(|t| resolve_link(&name, &t))
            else {
                continue;
            };
            Entry::Link { target }
        } else if ty.is_hard_link() {
            let Some(target) = entry.link_name_bytes().and_then(|t| normalize_member(&t)) else {
                continue;
            };
            Entry::Link { target }
        } else {
            continue;
        };
        entries.insert(name, value);
    }
    if entries.is_empty() {
        return Err(ImageError::UnrecognizedInput {
            path: path.to_owned(),
            reason: "the tar archive has no files".into(),
        });
    }
    // The whole archive must be present: an entry past the end means truncation.
    let len = file
        .metadata()
        .map_err(|e| ImageError::io("reading", path, e))?
        .len();
    for e in entries.values() {
        if let Entry::File { offset, size } = e {
            if offset.saturating_add(*size) > len {
                return Err(fmt_err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the archive is truncated",
                )));
            }
        }
    }
    Ok(entries)
}
