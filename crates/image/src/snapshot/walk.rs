//! The walk under both snapshot functions: a directory tree visited through
//! descriptors, parents before children, names sorted bytewise, never through a
//! link.
//!
//! Every directory is opened below its parent's descriptor with `openat2(
//! RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`;
//! regular files with `O_NOFOLLOW | O_NONBLOCK` and checked with `fstat` after
//! opening (a name swapped for a symlink, FIFO or device between the listing and
//! the open is refused, never followed or read); symlinks are read with
//! `readlinkat`. At most [`OPEN_DIRS`] directory descriptors stay open: deeper
//! ancestors are closed and reopened below the root when the walk returns to
//! them (checked to be the same directory), so a deep tree cannot exhaust
//! descriptors. Paths are bounded by [`MAX_PATH_LEN`], which bounds the depth.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{fstat, openat, readlinkat, statat, AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::error::{ImageError, Result, SnapshotRefusal};
use crate::fsutil::open_dir_beneath;

/// Longest relative path a layer entry may have, directories counted with their
/// trailing `/`: the unpacker's default `max_path_len` (Linux's `PATH_MAX`).
pub(crate) const MAX_PATH_LEN: usize = 4096;

/// Directory descriptors (besides the root) the walk keeps open at once.
const OPEN_DIRS: usize = 32;

/// What the walk calls, in order. Paths are relative to the root, `/`-separated,
/// without a leading `./`; the root itself is `""`.
pub(super) trait Visitor {
    /// Whether to leave out this entry (and, for a directory, all below it).
    fn skip(&mut self, _path: &[u8]) -> bool {
        false
    }
    /// A directory, opened; its children are visited next.
    fn dir(&mut self, path: &[u8], fd: BorrowedFd<'_>, st: &Stat) -> Result<()>;
    /// A regular file, opened read-only; `st` is the opened file's.
    fn file(&mut self, path: &[u8], file: &File, st: &Stat) -> Result<()>;
    fn symlink(&mut self, path: &[u8], target: &[u8], st: &Stat) -> Result<()>;
    /// A FIFO, socket or device node (`lstat` only: never opened).
    fn special(&mut self, path: &[u8], st: &Stat) -> Result<()>;
}

/// A refusal of the entry at `path`.
pub(super) fn refuse(path: &[u8], reason: SnapshotRefusal) -> ImageError {
    ImageError::SnapshotEntry {
        path: String::from_utf8_lossy(path).into_owned(),
        reason,
    }
}

/// An I/O error on the entry at `path` below `label` (the walked directory as
/// the caller names it).
pub(super) fn io_err(op: &'static str, label: &Path, path: &[u8], e: Errno) -> ImageError {
    let full: PathBuf = if path.is_empty() {
        label.to_owned()
    } else {
        label.join(OsStr::from_bytes(path))
    };
    ImageError::io(op, full, e.into())
}

/// Opens the regular file `name` in `dir` without following a symlink, without
/// blocking on a FIFO, and checks (on the opened file) that it is regular.
/// `path` names it in errors.
pub(super) fn open_regular(
    dir: BorrowedFd<'_>,
    name: &[u8],
    path: &[u8],
    label: &Path,
) -> Result<(File, Stat)> {
    let fd = match openat(
        dir,
        OsStr::from_bytes(name),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::LOOP) => {
            return Err(refuse(
                path,
                SnapshotRefusal::Changed {
                    what: "a file was replaced by a symbolic link",
                },
            ))
        }
        Err(Errno::NOENT) => {
            return Err(refuse(
                path,
                SnapshotRefusal::Changed {
                    what: "a file was removed",
                },
            ))
        }
        Err(e) => return Err(io_err("opening", label, path, e)),
    };
    let st = fstat(&fd).map_err(|e| io_err("reading the status of", label, path, e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(refuse(
            path,
            SnapshotRefusal::Changed {
                what: "a regular file was replaced by something else",
            },
        ));
    }
    Ok((File::from(fd), st))
}

enum FrameFd {
    Root,
    Open(OwnedFd),
    /// Closed to save descriptors; reopened below the root when the walk returns.
    Closed,
}

struct Frame {
    fd: FrameFd,
    dev: u64,
    ino: u64,
    /// Length of this directory's path in the walk's path buffer.
    path_len: usize,
    /// Children not visited yet, sorted descending (popped from the end).
    children: Vec<Vec<u8>>,
}

/// Walks the tree below `root` (a directory descriptor, `O_PATH` is enough).
/// `label` names it in I/O errors; more than `max_names` names listed in all is
/// [`ImageError::SnapshotTooManyEntries`] (a bound on the memory the listings
/// take).
pub(super) fn walk(
    root: BorrowedFd<'_>,
    label: &Path,
    max_names: u64,
    v: &mut dyn Visitor,
) -> Result<()> {
    let root = openat(
        root,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("opening", label, b"", e))?;
    let st = fstat(&root).map_err(|e| io_err("reading the status of", label, b"", e))?;
    v.dir(b"", root.as_fd(), &st)?;
    let mut listed = 0u64;
    let children = list(root.as_fd(), b"", label, &mut listed, max_names)?;
    let mut stack = vec![Frame {
        fd: FrameFd::Root,
        dev: st.st_dev,
        ino: st.st_ino,
        path_len: 0,
        children,
    }];
    let mut open = 0usize;
    let mut path: Vec<u8> = Vec::new();
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.children.pop() else {
            if matches!(stack.pop().map(|f| f.fd), Some(FrameFd::Open(_))) {
                open -= 1;
            }
            if let Some(parent) = stack.last_mut() {
                if matches!(parent.fd, FrameFd::Closed) {
                    parent.fd = FrameFd::Open(reopen(root.as_fd(), parent, &path, label)?);
                    open += 1;
                }
            }
            continue;
        };
        path.truncate(top.path_len);
        if top.path_len > 0 {
            path.push(b'/');
        }
        path.extend_from_slice(&name);
        if v.skip(&path) {
            continue;
        }
        if path.len() > MAX_PATH_LEN {
            return Err(refuse(
                &path,
                SnapshotRefusal::PathTooLong {
                    limit: MAX_PATH_LEN,
                },
            ));
        }
        let dir = match &top.fd {
            FrameFd::Root => root.as_fd(),
            FrameFd::Open(fd) => fd.as_fd(),
            FrameFd::Closed => {
                return Err(ImageError::Internal(
                    "snapshot walk: the current directory is closed".into(),
                ))
            }
        };
        let name_os = OsStr::from_bytes(&name);
        let st = match statat(dir, name_os, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => {
                return Err(refuse(
                    &path,
                    SnapshotRefusal::Changed {
                        what: "an entry was removed",
                    },
                ))
            }
            Err(e) => return Err(io_err("reading the status of", label, &path, e)),
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                if path.len() + 1 > MAX_PATH_LEN {
                    return Err(refuse(
                        &path,
                        SnapshotRefusal::PathTooLong {
                            limit: MAX_PATH_LEN,
                        },
                    ));
                }
                let fd = open_dir_beneath(dir, name_os).map_err(|e| {
                    match e.raw_os_error().map(Errno::from_raw_os_error) {
                        Some(Errno::LOOP | Errno::NOTDIR | Errno::NOENT) => refuse(
                            &path,
                            SnapshotRefusal::Changed {
                                what: "a directory was replaced or removed",
                            },
                        ),
                        Some(e) => io_err(
                            "opening (beneath, no links, no mount crossing)",
                            label,
                            &path,
                            e,
                        ),
                        None => ImageError::io("opening", label.join(OsStr::from_bytes(&path)), e),
                    }
                })?;
                let st =
                    fstat(&fd).map_err(|e| io_err("reading the status of", label, &path, e))?;
                v.dir(&path, fd.as_fd(), &st)?;
                let children = list(fd.as_fd(), &path, label, &mut listed, max_names)?;
                if open >= OPEN_DIRS {
                    // Close the outermost open ancestor: the walk returns to it last.
                    if let Some(f) = stack.iter_mut().find(|f| matches!(f.fd, FrameFd::Open(_))) {
                        f.fd = FrameFd::Closed;
                        open -= 1;
                    }
                }
                stack.push(Frame {
                    fd: FrameFd::Open(fd),
                    dev: st.st_dev,
                    ino: st.st_ino,
                    path_len: path.len(),
                    children,
                });
                open += 1;
            }
            FileType::RegularFile => {
                let (file, st) = open_regular(dir, &name, &path, label)?;
                v.file(&path, &file, &st)?;
            }
            FileType::Symlink => {
                let target = match readlinkat(dir, name_os, Vec::new()) {
                    Ok(t) => t,
                    Err(Errno::INVAL | Errno::NOENT) => {
                        return Err(refuse(
                            &path,
                            SnapshotRefusal::Changed {
                                what: "a symbolic link was replaced or removed",
                            },
                        ))
                    }
                    Err(e) => return Err(io_err("reading the link", label, &path, e)),
                };
                v.symlink(&path, target.as_bytes(), &st)?;
            }
            _ => v.special(&path, &st)?,
        }
    }
    Ok(())
}

/// The names in a directory, sorted descending.
fn list(
    fd: BorrowedFd<'_>,
    path: &[u8],
    label: &Path,
    listed: &mut u64,
    max: u64,
) -> Result<Vec<Vec<u8>>> {
    let err = |e: Errno| io_err("listing", label, path, e);
    let mut out = Vec::new();
    for entry in Dir::read_from(fd).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        *listed += 1;
        if *listed > max {
            return Err(ImageError::SnapshotTooManyEntries { limit: max });
        }
        out.push(name.to_vec());
    }
    out.sort_unstable_by(|a, b| b.cmp(a));
    Ok(out)
}

/// Reopens a directory whose descriptor was closed: below the root, no links,
/// and it must be the same directory as before.
fn reopen(root: BorrowedFd<'_>, frame: &Frame, path: &[u8], label: &Path) -> Result<OwnedFd> {
    let rel = &path[..frame.path_len];
    let changed = || {
        refuse(
            rel,
            SnapshotRefusal::Changed {
                what: "a directory was moved",
            },
        )
    };
    let fd = open_dir_beneath(root, OsStr::from_bytes(rel)).map_err(|e| {
        match e.raw_os_error().map(Errno::from_raw_os_error) {
            Some(Errno::LOOP | Errno::NOTDIR | Errno::NOENT | Errno::XDEV) => changed(),
            _ => ImageError::io("reopening", label.join(OsStr::from_bytes(rel)), e),
        }
    })?;
    let st = fstat(&fd).map_err(|e| io_err("reading the status of", label, rel, e))?;
    if (st.st_dev, st.st_ino) != (frame.dev, frame.ino) {
        return Err(changed());
    }
    Ok(fd)
}

/// The last component of a walk path.
pub(super) fn name_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Largest xattr name list and value Linux allows (`XATTR_LIST_MAX`, `XATTR_SIZE_MAX`).
const XATTR_MAX: usize = 64 * 1024;

/// Reads extended attributes through a descriptor, reusing its buffers.
pub(super) struct Xattrs {
    list: Vec<u8>,
    value: Vec<u8>,
}

impl Xattrs {
    pub(super) fn new() -> Xattrs {
        Xattrs {
            list: vec![0; XATTR_MAX],
            value: vec![0; XATTR_MAX],
        }
    }

    /// Every extended attribute of `fd` the caller can see (`trusted.*` needs
    /// CAP_SYS_ADMIN), as (name, value), sorted by name.
    pub(super) fn read(
        &mut self,
        fd: BorrowedFd<'_>,
        path: &[u8],
        label: &Path,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let n = match rustix::fs::flistxattr(fd, &mut self.list[..]) {
            Ok(n) => n,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listing the extended attributes of", label, path, e)),
        };
        let mut out = Vec::new();
        for name in self.list[..n].split_inclusive(|&b| b == 0) {
            let Ok(cname) = std::ffi::CStr::from_bytes_with_nul(name) else {
                continue;
            };
            if cname.is_empty() {
                continue;
            }
            let len = match rustix::fs::fgetxattr(fd, cname, &mut self.value[..]) {
                Ok(len) => len,
                // Removed since the listing.
                Err(Errno::NODATA) => continue,
                Err(e) => return Err(io_err("reading the extended attributes of", label, path, e)),
            };
            out.push((cname.to_bytes().to_vec(), self.value[..len].to_vec()));
        }
        out.sort();
        Ok(out)
    }
}
