//! [`write_upper_tar`]: an overlayfs upper directory as a deterministic OCI layer
//! tar stream.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use runbox_core::IdMap;
use rustix::fs::{fstat, major, minor, FileType, Stat};
use serde::{Deserialize, Serialize};

use super::walk::{self, name_of, refuse, Visitor, Xattrs};
use crate::error::{ImageError, Result, SnapshotRefusal};

const KIB: u64 = 1024;
const GIB: u64 = 1024 * 1024 * KIB;

/// Bytes of the name and link-name fields of a tar header.
const NAME_FIELD: usize = 100;
/// The unpacker's default bound on one tar extension header (pax records).
const MAX_PAX_BYTES: usize = 1024 * 1024;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
/// Most components an exclusion may have.
const MAX_EXCLUDE_DEPTH: usize = 8;

/// Options for [`write_upper_tar`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpperTarOptions {
    /// Paths relative to the upper directory left out with everything below them,
    /// matched exactly component by component (`"dev"`, `"proc"`,
    /// `"etc/hosts"`); at most 8 components, no `.` or `..`.
    pub exclude: Vec<String>,
    /// Bytes of regular-file content allowed in all (hard links counted once);
    /// more is [`ImageError::SnapshotTooLarge`]. Default 16 GiB (the import limit
    /// of one layer).
    pub max_bytes: u64,
    /// Tar entries allowed (whiteout markers included); more is
    /// [`ImageError::SnapshotTooManyEntries`]. Default 1,000,000 (the import
    /// limit of one layer).
    pub max_entries: u64,
}

impl Default for UpperTarOptions {
    fn default() -> Self {
        UpperTarOptions {
            exclude: Vec::new(),
            max_bytes: 16 * GIB,
            max_entries: 1_000_000,
        }
    }
}

/// What [`write_upper_tar`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpperTarStats {
    /// Tar entries (extension headers not counted).
    pub entries: u64,
    /// Regular files written with their content.
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    pub symlinks: u64,
    /// Regular files written as hard links to an earlier path.
    pub hardlinks: u64,
    pub fifos: u64,
    /// Whiteouts (0:0 character devices) written as `.wh.NAME`.
    pub whiteouts: u64,
    /// Opaque directories, written with a `.wh..wh..opq` marker.
    pub opaque_dirs: u64,
    /// Sockets left out (a socket cannot be stored; its server recreates it).
    pub sockets_skipped: u64,
    /// Bytes of regular-file content.
    pub bytes: u64,
}

/// Writes the overlayfs upper directory `upper` (a descriptor of it; `O_PATH`
/// is enough) as an uncompressed OCI layer tar stream to `out`, and returns
/// `out` with what was written.
///
/// The directory is hostile: nothing in it is ever followed (see the module
/// doc). The stream is deterministic: entries sorted bytewise at each level,
/// parents first, the root as `./`; modes (set-id and sticky bits included) and
/// mtimes (seconds; before 1970 written as 0) kept; owners shifted from the
/// host range `id_map.base..+65536` to container ids (anything else is refused
/// naming the path); `user.*` xattrs (except `user.overlay.*`) as pax
/// `SCHILY.xattr.` records, no other xattrs. Overlayfs metadata becomes OCI
/// metadata: a 0:0 character device `X` is written as an empty file `.wh.X`, a
/// directory with `trusted.overlay.opaque=y` gets an empty `.wh..wh..opq` in it;
/// `trusted.overlay.origin`, `impure` and `uuid` (inode-number bookkeeping that
/// overlayfs writes on every copy-up) are dropped; `redirect`, `metacopy` and
/// any other `trusted.overlay.*` attribute are refused. Other device nodes are
/// refused, sockets skipped, FIFOs kept; a regular file whose inode was
/// already written becomes a hard link to its first path. Names longer than a
/// tar header holds use GNU long-name entries (any bytes, which pax records
/// cannot carry through the `tar` crate's reader).
///
/// Run it on a quiescent tree (the sandbox's processes stopped): a file written
/// while it is read is refused as changed. On an error, what reached `out` is
/// an incomplete stream to discard.
pub fn write_upper_tar<W: Write>(
    upper: BorrowedFd<'_>,
    id_map: IdMap,
    opts: &UpperTarOptions,
    out: W,
) -> Result<(W, UpperTarStats)> {
    let exclude = parse_excludes(&opts.exclude)?;
    let mut w = UpperWriter {
        tar: tar::Builder::new(BufWriter::with_capacity(256 * KIB as usize, out)),
        id_map,
        opts,
        exclude,
        stats: UpperTarStats::default(),
        links: HashMap::new(),
        xattrs: Xattrs::new(),
        label: Path::new("<upper>"),
    };
    // The listing bound is only there to bound memory; the precise bound is on
    // the entries written.
    let max_names = opts.max_entries.saturating_mul(2).saturating_add(1024);
    walk::walk(upper, w.label, max_names, &mut w).map_err(|e| match e {
        ImageError::SnapshotTooManyEntries { .. } => ImageError::SnapshotTooManyEntries {
            limit: opts.max_entries,
        },
        e => e,
    })?;
    let UpperWriter { tar, stats, .. } = w;
    let buffered = tar.into_inner().map_err(write_err)?;
    let out = buffered
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?;
    Ok((out, stats))
}

fn write_err(e: io::Error) -> ImageError {
    ImageError::io("writing the snapshot tar of", "<upper>", e)
}

fn parse_excludes(list: &[String]) -> Result<HashSet<Vec<u8>>> {
    let mut out = HashSet::new();
    for e in list {
        let bad = |reason: &str| ImageError::SnapshotArgument {
            what: format!("snapshot exclusion {e:?}"),
            reason: reason.to_owned(),
        };
        let trimmed = e.trim_matches('/');
        if trimmed.is_empty() {
            return Err(bad("names nothing (the root cannot be excluded)"));
        }
        if trimmed.contains('\0') {
            return Err(bad("contains a NUL byte"));
        }
        let comps: Vec<&str> = trimmed.split('/').collect();
        if comps.len() > MAX_EXCLUDE_DEPTH {
            return Err(bad("has more than 8 components"));
        }
        if comps
            .iter()
            .any(|c| c.is_empty() || *c == "." || *c == "..")
        {
            return Err(bad(
                "is not a normalized relative path (empty, '.' or '..' component)",
            ));
        }
        out.insert(trimmed.as_bytes().to_vec());
    }
    Ok(out)
}

struct UpperWriter<'a, W: Write> {
    tar: tar::Builder<BufWriter<W>>,
    id_map: IdMap,
    opts: &'a UpperTarOptions,
    exclude: HashSet<Vec<u8>>,
    stats: UpperTarStats,
    /// (dev, ino) of regular files with several links -> the first path written.
    links: HashMap<(u64, u64), Vec<u8>>,
    xattrs: Xattrs,
    label: &'a Path,
}

/// What a file's or directory's xattrs say.
struct Meta {
    opaque: bool,
    /// `SCHILY.xattr.<name>` pax records to write.
    user: Vec<(Vec<u8>, Vec<u8>)>,
}

/// `dir/name` for a sibling of `path`.
fn sibling(path: &[u8], name: &[u8]) -> Vec<u8> {
    let parent_len = path.len() - name_of(path).len();
    let mut out = path[..parent_len].to_vec();
    out.extend_from_slice(name);
    out
}

fn check_name(path: &[u8]) -> Result<()> {
    if name_of(path).starts_with(WHITEOUT_PREFIX) {
        return Err(refuse(path, SnapshotRefusal::ReservedName));
    }
    Ok(())
}

/// A reader that yields exactly `left` bytes of a file, failing if the file
/// ends sooner (it shrank while the snapshot was taken).
struct Exact<'a> {
    file: &'a File,
    left: u64,
    shrank: bool,
}

impl Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = (&*self.file).read(&mut buf[..want])?;
        if n == 0 {
            self.shrank = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was read",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn header(ty: tar::EntryType, mode: u32, uid: u32, gid: u32, mtime: i64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(ty);
    h.set_mode(mode & 0o7777);
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    h.set_mtime(u64::try_from(mtime).unwrap_or(0));
    h.set_size(0);
    h
}

/// The pax extended header records for `records`: `"<len> <key>=<value>\n"`,
/// where `<len>` counts the whole record, itself included.
fn pax_records(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let rest = 1 + k.len() + 1 + v.len() + 1; // ' ' key '=' value '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

impl<W: Write> UpperWriter<'_, W> {
    /// Container ids for a host-owned entry.
    fn owner(&self, path: &[u8], st: &Stat) -> Result<(u32, u32)> {
        let base = self.id_map.base;
        let shift = |which: &'static str, id: u32| {
            if id >= base && u64::from(id) < u64::from(base) + u64::from(IdMap::SIZE) {
                Ok(id - base)
            } else {
                Err(refuse(
                    path,
                    SnapshotRefusal::IdOutOfRange { which, id, base },
                ))
            }
        };
        Ok((shift("uid", st.st_uid)?, shift("gid", st.st_gid)?))
    }

    fn meta(&mut self, path: &[u8], fd: BorrowedFd<'_>) -> Result<Meta> {
        let mut meta = Meta {
            opaque: false,
            user: Vec::new(),
        };
        for (name, value) in self.xattrs.read(fd, path, self.label)? {
            if let Some(what) = name.strip_prefix(OVERLAY_PREFIX) {
                match what {
                    b"opaque" if value == b"y" => meta.opaque = true,
                    // Inode-number bookkeeping: written on every copy-up (origin),
                    // on directories holding copied-up entries (impure) and on the
                    // upper root (uuid). The layer is complete without them.
                    b"origin" | b"impure" | b"uuid" => {}
                    _ => {
                        return Err(refuse(
                            path,
                            SnapshotRefusal::OverlayXattr {
                                name: String::from_utf8_lossy(&name).into_owned(),
                            },
                        ))
                    }
                }
                continue;
            }
            // user.overlay.* is overlay metadata for overlays mounted with
            // `userxattr`; a layer never carries it.
            if !name.starts_with(b"user.") || name.starts_with(b"user.overlay.") {
                continue;
            }
            let refuse_xattr = |reason: &'static str| {
                refuse(
                    path,
                    SnapshotRefusal::Xattr {
                        name: String::from_utf8_lossy(&name).into_owned(),
                        reason,
                    },
                )
            };
            // The tar crate's pax parser splits records at newlines and keys at
            // the first '='.
            if name.contains(&b'=') || name.contains(&b'\n') {
                return Err(refuse_xattr("its name contains '=' or a newline"));
            }
            if value.contains(&b'\n') {
                return Err(refuse_xattr(
                    "its value contains a newline byte, which pax records cannot carry to runbox's unpacker",
                ));
            }
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(&name);
            meta.user.push((key, value));
        }
        Ok(meta)
    }

    fn count_entry(&mut self) -> Result<()> {
        self.stats.entries += 1;
        if self.stats.entries > self.opts.max_entries {
            return Err(ImageError::SnapshotTooManyEntries {
                limit: self.opts.max_entries,
            });
        }
        Ok(())
    }

    /// A GNU long name (`L`) or long link name (`K`) entry: the bytes and a NUL.
    fn long_name(&mut self, kind: u8, bytes: &[u8]) -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(bytes.len() as u64 + 1);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_cksum();
        self.tar.append(&h, bytes.chain(&[0u8][..]))
    }

    /// Appends one entry: `path` and `link` stored byte for byte (GNU long-name
    /// entries when they do not fit the header), `pax` records in a pax header.
    fn append(
        &mut self,
        path: &[u8],
        mut h: tar::Header,
        link: Option<&[u8]>,
        pax: &[(Vec<u8>, Vec<u8>)],
        data: &mut dyn Read,
    ) -> Result<()> {
        self.count_entry()?;
        (|| {
            if path.len() > NAME_FIELD {
                self.long_name(b'L', path)?;
            }
            let n = path.len().min(NAME_FIELD);
            let name = &mut h.as_old_mut().name;
            name.fill(0);
            name[..n].copy_from_slice(&path[..n]);
            if let Some(link) = link {
                if link.len() > NAME_FIELD {
                    self.long_name(b'K', link)?;
                }
                let n = link.len().min(NAME_FIELD);
                let field = &mut h.as_old_mut().linkname;
                field.fill(0);
                field[..n].copy_from_slice(&link[..n]);
            }
            if !pax.is_empty() {
                let records = pax_records(pax);
                let mut x = tar::Header::new_gnu();
                x.as_old_mut().name[..14].copy_from_slice(b"././@PaxHeader");
                x.set_mode(0o644);
                x.set_uid(0);
                x.set_gid(0);
                x.set_mtime(0);
                x.set_size(records.len() as u64);
                x.set_entry_type(tar::EntryType::XHeader);
                x.set_cksum();
                self.tar.append(&x, records.as_slice())?;
            }
            h.set_cksum();
            self.tar.append(&h, data)
        })()
        .map_err(write_err)
    }

    /// An empty regular file owned by 0:0 with mode 0: a whiteout marker.
    fn marker(&mut self, path: &[u8]) -> Result<()> {
        let h = header(tar::EntryType::Regular, 0, 0, 0, 0);
        self.append(path, h, None, &[], &mut io::empty())
    }

    fn check_pax(&self, path: &[u8], pax: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        let total: usize = pax.iter().map(|(k, v)| k.len() + v.len() + 16).sum();
        if total > MAX_PAX_BYTES {
            return Err(refuse(
                path,
                SnapshotRefusal::Xattr {
                    name: "user.*".into(),
                    reason: "its user.* attributes together are larger than 1 MiB, the unpacker's bound on a pax header",
                },
            ));
        }
        Ok(())
    }
}

impl<W: Write> Visitor for UpperWriter<'_, W> {
    fn skip(&mut self, path: &[u8]) -> bool {
        self.exclude.contains(path)
    }

    fn dir(&mut self, path: &[u8], fd: BorrowedFd<'_>, st: &Stat) -> Result<()> {
        if !path.is_empty() {
            check_name(path)?;
        }
        let meta = self.meta(path, fd)?;
        self.check_pax(path, &meta.user)?;
        let (uid, gid) = self.owner(path, st)?;
        let h = header(tar::EntryType::Directory, st.st_mode, uid, gid, st.st_mtime);
        let tar_path = if path.is_empty() {
            b"./".to_vec()
        } else {
            let mut p = path.to_vec();
            p.push(b'/');
            p
        };
        self.append(&tar_path, h, None, &meta.user, &mut io::empty())?;
        self.stats.dirs += 1;
        if meta.opaque {
            let mut marker = if path.is_empty() {
                Vec::new()
            } else {
                let mut p = path.to_vec();
                p.push(b'/');
                p
            };
            marker.extend_from_slice(OPAQUE_MARKER);
            if marker.len() > walk::MAX_PATH_LEN {
                return Err(refuse(
                    path,
                    SnapshotRefusal::PathTooLong {
                        limit: walk::MAX_PATH_LEN,
                    },
                ));
            }
            self.marker(&marker)?;
            self.stats.opaque_dirs += 1;
        }
        Ok(())
    }

    fn file(&mut self, path: &[u8], file: &File, st: &Stat) -> Result<()> {
        check_name(path)?;
        let (uid, gid) = self.owner(path, st)?;
        if st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key).cloned() {
                let h = header(tar::EntryType::Link, st.st_mode, uid, gid, st.st_mtime);
                self.append(path, h, Some(&first), &[], &mut io::empty())?;
                self.stats.hardlinks += 1;
                return Ok(());
            }
            self.links.insert(key, path.to_vec());
        }
        let meta = self.meta(path, file.as_fd())?;
        self.check_pax(path, &meta.user)?;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if self.stats.bytes.saturating_add(size) > self.opts.max_bytes {
            return Err(ImageError::SnapshotTooLarge {
                limit: self.opts.max_bytes,
            });
        }
        let mut h = header(tar::EntryType::Regular, st.st_mode, uid, gid, st.st_mtime);
        h.set_size(size);
        let mut data = Exact {
            file,
            left: size,
            shrank: false,
        };
        let appended = self.append(path, h, None, &meta.user, &mut data);
        let changed = || {
            refuse(
                path,
                SnapshotRefusal::Changed {
                    what: "a file was written while it was read",
                },
            )
        };
        if data.shrank {
            return Err(changed());
        }
        appended?;
        let after =
            fstat(file).map_err(|e| walk::io_err("reading the status of", self.label, path, e))?;
        if after.st_size != st.st_size
            || after.st_mtime != st.st_mtime
            || after.st_mtime_nsec != st.st_mtime_nsec
        {
            return Err(changed());
        }
        self.stats.files += 1;
        self.stats.bytes += size;
        Ok(())
    }

    fn symlink(&mut self, path: &[u8], target: &[u8], st: &Stat) -> Result<()> {
        check_name(path)?;
        let (uid, gid) = self.owner(path, st)?;
        let h = header(tar::EntryType::Symlink, st.st_mode, uid, gid, st.st_mtime);
        self.append(path, h, Some(target), &[], &mut io::empty())?;
        self.stats.symlinks += 1;
        Ok(())
    }

    fn special(&mut self, path: &[u8], st: &Stat) -> Result<()> {
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Socket => {
                self.stats.sockets_skipped += 1;
                Ok(())
            }
            FileType::Fifo => {
                check_name(path)?;
                let (uid, gid) = self.owner(path, st)?;
                let h = header(tar::EntryType::Fifo, st.st_mode, uid, gid, st.st_mtime);
                self.append(path, h, None, &[], &mut io::empty())?;
                self.stats.fifos += 1;
                Ok(())
            }
            FileType::CharacterDevice if major(st.st_rdev) == 0 && minor(st.st_rdev) == 0 => {
                // A whiteout: overlayfs makes it (owned by the host's root), so its
                // owner and mode mean nothing. `.wh..wh.X` would be AUFS metadata.
                check_name(path)?;
                let mut name = WHITEOUT_PREFIX.to_vec();
                name.extend_from_slice(name_of(path));
                if name.len() > 255 {
                    return Err(refuse(path, SnapshotRefusal::WhiteoutNameTooLong));
                }
                let marker = sibling(path, &name);
                if marker.len() > walk::MAX_PATH_LEN {
                    return Err(refuse(
                        path,
                        SnapshotRefusal::PathTooLong {
                            limit: walk::MAX_PATH_LEN,
                        },
                    ));
                }
                self.marker(&marker)?;
                self.stats.whiteouts += 1;
                Ok(())
            }
            FileType::CharacterDevice | FileType::BlockDevice => Err(refuse(
                path,
                SnapshotRefusal::Device {
                    major: major(st.st_rdev),
                    minor: minor(st.st_rdev),
                },
            )),
            _ => Err(refuse(
                path,
                SnapshotRefusal::Changed {
                    what: "an entry of an unknown type appeared",
                },
            )),
        }
    }
}
