//! [`tree_digest`]: a canonical sha256 over an unpacked layer directory.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use runbox_core::Digest;
use rustix::fs::{major, minor, FileType, Stat};
use sha2::{Digest as _, Sha256};

use super::walk::{self, refuse, Visitor, Xattrs};
use crate::error::{ImageError, Result, SnapshotRefusal};
use crate::fsutil;

/// Domain separation: a tree digest is never a digest of anything else.
const MAGIC: &[u8] = b"runbox tree digest v1\0";
const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";
const READ_BUF: usize = 256 * 1024;

/// The canonical digest of the directory tree at `dir`, as an unpacked layer in
/// the store is laid out (overlayfs whiteouts, owners in the host range).
///
/// For every entry, the root first, then children in bytewise name order
/// (depth first), it hashes: the relative path, the type, the permission bits
/// (set-id and sticky included), uid, gid, and by type: a regular file's size
/// and content sha256 (a further link to an inode already hashed: the path it
/// was first hashed under), a symlink's target, a device's major and minor;
/// and for directories and regular files the `trusted.overlay.opaque` and
/// `user.*` extended attributes (the only ones an unpacked layer carries).
/// Every variable-length field is length-prefixed, so no two trees share an
/// encoding. Mtimes are not included. Nothing is followed: the same rules as
/// [`crate::write_upper_tar`].
///
/// Record it right after a layer is unpacked; a different value later means the
/// layer was changed on disk.
pub fn tree_digest(dir: &Path) -> Result<Digest> {
    let fd = fsutil::open_dir(dir).map_err(|e| ImageError::io("opening", dir, e))?;
    digest_at(fd.as_fd(), dir)
}

/// [`tree_digest`] of the directory open as `dir` (`O_PATH` is enough).
pub fn tree_digest_fd(dir: BorrowedFd<'_>) -> Result<Digest> {
    digest_at(dir, Path::new("<dir>"))
}

fn digest_at(dir: BorrowedFd<'_>, label: &Path) -> Result<Digest> {
    let mut h = Hasher {
        sha: Sha256::new(),
        links: HashMap::new(),
        xattrs: Xattrs::new(),
        buf: vec![0; READ_BUF],
        entries: 0,
        label,
    };
    h.sha.update(MAGIC);
    walk::walk(dir, label, u64::MAX, &mut h)?;
    let entries = h.entries;
    h.u64(entries);
    Ok(Digest::from_sha256_bytes(&h.sha.finalize().into()))
}

struct Hasher<'a> {
    sha: Sha256,
    /// (dev, ino) of regular files with several links -> the first path hashed.
    links: HashMap<(u64, u64), Vec<u8>>,
    xattrs: Xattrs,
    buf: Vec<u8>,
    entries: u64,
    label: &'a Path,
}

impl Hasher<'_> {
    fn u32(&mut self, v: u32) {
        self.sha.update(v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.sha.update(v.to_le_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.sha.update(b);
    }

    /// What every entry starts with.
    fn common(&mut self, path: &[u8], ty: u8, st: &Stat) {
        self.entries += 1;
        self.sha.update(b"E");
        self.bytes(path);
        self.sha.update([ty]);
        self.u32(st.st_mode & 0o7777);
        self.u32(st.st_uid);
        self.u32(st.st_gid);
    }

    fn xattrs(&mut self, path: &[u8], fd: BorrowedFd<'_>) -> Result<()> {
        let kept: Vec<_> = self
            .xattrs
            .read(fd, path, self.label)?
            .into_iter()
            .filter(|(name, _)| name == OPAQUE_XATTR || name.starts_with(b"user."))
            .collect();
        self.u64(kept.len() as u64);
        for (name, value) in &kept {
            self.bytes(name);
            self.bytes(value);
        }
        Ok(())
    }
}

impl Visitor for Hasher<'_> {
    fn dir(&mut self, path: &[u8], fd: BorrowedFd<'_>, st: &Stat) -> Result<()> {
        self.common(path, b'd', st);
        self.xattrs(path, fd)
    }

    fn file(&mut self, path: &[u8], file: &File, st: &Stat) -> Result<()> {
        if st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key).cloned() {
                self.common(path, b'h', st);
                self.bytes(&first);
                return Ok(());
            }
            self.links.insert(key, path.to_vec());
        }
        self.common(path, b'f', st);
        let size = u64::try_from(st.st_size).unwrap_or(0);
        self.u64(size);
        let mut content = Sha256::new();
        let mut total = 0u64;
        let mut reader = file;
        loop {
            let n = match reader.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(ImageError::io(
                        "reading",
                        self.label.join(OsStr::from_bytes(path)),
                        e,
                    ))
                }
            };
            content.update(&self.buf[..n]);
            total += n as u64;
        }
        if total != size {
            return Err(refuse(
                path,
                SnapshotRefusal::Changed {
                    what: "a file was written while it was read",
                },
            ));
        }
        let content: [u8; 32] = content.finalize().into();
        self.sha.update(content);
        self.xattrs(path, file.as_fd())
    }

    fn symlink(&mut self, path: &[u8], target: &[u8], st: &Stat) -> Result<()> {
        self.common(path, b'l', st);
        self.bytes(target);
        Ok(())
    }

    fn special(&mut self, path: &[u8], st: &Stat) -> Result<()> {
        let ty = match FileType::from_raw_mode(st.st_mode) {
            FileType::Fifo => b'p',
            FileType::Socket => b's',
            FileType::CharacterDevice => b'c',
            FileType::BlockDevice => b'b',
            _ => b'?',
        };
        self.common(path, ty, st);
        if matches!(ty, b'c' | b'b') {
            self.u32(major(st.st_rdev));
            self.u32(minor(st.st_rdev));
        }
        Ok(())
    }
}
