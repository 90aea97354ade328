//! Small filesystem helpers built on rustix's safe wrappers: descriptor-relative
//! opens that refuse symlinks, recursive removal that never follows links, atomic
//! writes, and flock-based locks.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{
    openat, openat2, renameat, unlinkat, AtFlags, Dir, FileType, FlockOperation, Mode, OFlags,
    ResolveFlags,
};
use rustix::io::Errno;

/// Resolution rules for every path below an untrusted or image-controlled root:
/// stay beneath the root, never follow a symlink (or /proc magic link), never
/// cross a mount.
pub(crate) const RESOLVE_STRICT: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Opens a directory below `dirfd` with [`RESOLVE_STRICT`].
pub(crate) fn open_dir_beneath(dirfd: BorrowedFd<'_>, path: &OsStr) -> io::Result<OwnedFd> {
    Ok(openat2(
        dirfd,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        RESOLVE_STRICT,
    )?)
}

/// Opens a trusted directory (one of the store's own) by path.
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(openat(
        rustix::fs::CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Removes `name` in `dir` and, if it is a directory, everything below it, never
/// following a symlink. A missing `name` is not an error.
pub(crate) fn remove_tree_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = match openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut children = Vec::new();
    for entry in Dir::read_from(&sub)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        children.push((n.to_vec(), entry.file_type()));
    }
    for (child, ty) in children {
        let child = OsStr::from_bytes(&child);
        if ty == FileType::Directory || ty == FileType::Unknown {
            remove_tree_at(sub.as_fd(), child)?;
        } else {
            match unlinkat(&sub, child, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR) => remove_tree_at(sub.as_fd(), child)?,
                Err(e) => return Err(e.into()),
            }
        }
    }
    match unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes a path of the store (file or tree) without following symlinks below it.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot remove a root path",
        ));
    };
    let parent = match open_dir(parent) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    remove_tree_at(parent.as_fd(), name)
}

/// A file name unique to this process and call: `prefix-<pid>-<random>`.
pub(crate) fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    )
}

/// Writes `bytes` to `dest` atomically: a temp file in `tmp_dir` (same filesystem),
/// fsync, rename over `dest`, fsync of the destination directory.
pub(crate) fn atomic_write(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_dir.join(unique_name("write"));
    let result = (|| {
        let mut f = File::options().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        renameat(rustix::fs::CWD, &tmp, rustix::fs::CWD, dest)?;
        if let Some(parent) = dest.parent() {
            rustix::fs::fsync(open_dir(parent)?)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// How to take an flock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockMode {
    Shared,
    Exclusive,
}

/// Opens (creating) `path` and flocks it. With `wait == false`, returns `Ok(None)`
/// when another holder makes the lock unavailable.
pub(crate) fn lock_file(path: &Path, mode: LockMode, wait: bool) -> io::Result<Option<File>> {
    let fd = openat(
        rustix::fs::CWD,
        path,
        OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )?;
    let op = match (mode, wait) {
        (LockMode::Shared, true) => FlockOperation::LockShared,
        (LockMode::Shared, false) => FlockOperation::NonBlockingLockShared,
        (LockMode::Exclusive, true) => FlockOperation::LockExclusive,
        (LockMode::Exclusive, false) => FlockOperation::NonBlockingLockExclusive,
    };
    match rustix::fs::flock(&fd, op) {
        Ok(()) => Ok(Some(File::from(fd))),
        Err(Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Joins path components (already validated) into one relative path.
pub(crate) fn join_components(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(p);
    }
    out
}

/// A private directory under the store's `tmp/` (a build's or a commit's),
/// flocked while it lives so [`crate::Store::open`] of another process never
/// removes it (the same protocol as an import's staging); removed on drop.
pub(crate) struct TmpDir {
    pub path: std::path::PathBuf,
    _lock: OwnedFd,
}

impl TmpDir {
    /// `prefix` names it (`build`, `commit`) in `tmp/` and in the warning a failed
    /// removal logs.
    pub(crate) fn new(tmp: &Path, prefix: &str) -> crate::error::Result<TmpDir> {
        use crate::error::ImageError;
        // Another process's Store::open may flock the directory between our mkdir
        // and flock, taking it for a crashed one's: then use a fresh name.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let path = tmp.join(unique_name(prefix));
            rustix::fs::mkdir(&path, Mode::from_raw_mode(0o700))
                .map_err(|e| ImageError::io("creating", &path, e.into()))?;
            let fd = open_dir(&path).map_err(|e| ImageError::io("opening", &path, e))?;
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(TmpDir { path, _lock: fd }),
                Err(Errno::WOULDBLOCK) if attempts < 5 => continue,
                Err(e) => return Err(ImageError::io("locking", &path, e.into())),
            }
        }
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let removed = match (self.path.parent(), self.path.file_name()) {
            (Some(parent), Some(name)) => {
                open_dir(parent).and_then(|fd| remove_tree_at(fd.as_fd(), OsStr::new(name)))
            }
            _ => Ok(()),
        };
        if let Err(e) = removed {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove a staging directory");
        }
    }
}
