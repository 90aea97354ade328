//! Host-side file operations on a sandbox's tree, through a descriptor of its root.
//!
//! runbox runs as root, so a path it follows on behalf of a sandbox must never lead
//! out of it (Judge0 CVE-2024-28185/28189 were exactly this). Two rules:
//!
//! - Before the program runs, the tree holds only the image (untrusted, but static):
//!   paths resolve with `RESOLVE_IN_ROOT` (symlinks stay inside the sandbox root),
//!   `RESOLVE_NO_MAGICLINKS` and `RESOLVE_NO_XDEV` (never into /proc).
//! - After it ran, the sandbox may have planted anything: output paths resolve with
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` and `O_NOFOLLOW`, so no symbolic link is
//!   followed at all, and only regular files with a single link are read.
//!
//! Files are opened `O_NONBLOCK` and checked to be regular before any byte moves, so
//! a planted FIFO or device cannot stall or feed the host.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use runbox_core::{Data, OutputFile};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::plan::PlannedInput;

const PRE_RUN: ResolveFlags = ResolveFlags::IN_ROOT
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);
const POST_RUN: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Most files an output directory may contribute, and how deep it is walked.
const MAX_DIR_FILES: usize = 1000;
const MAX_DIR_DEPTH: usize = 16;

/// A descriptor of a sandbox's root directory.
#[derive(Debug)]
pub(crate) struct SandboxRoot {
    fd: OwnedFd,
    /// How paths resolve when placing files: pre-run rules for a fresh sandbox,
    /// post-run rules for a live one (its programs may have planted links).
    place: ResolveFlags,
}

fn rel(path: &str) -> &str {
    let r = path.trim_start_matches('/');
    if r.is_empty() {
        "."
    } else {
        r
    }
}

fn split_parent(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i.max(1)], &path[i + 1..]),
        None => ("/", path),
    }
}

fn describe(e: Errno) -> String {
    match e {
        Errno::NOENT => "it does not exist".into(),
        Errno::LOOP => "it is, or passes through, a symbolic link (not followed)".into(),
        Errno::XDEV => "it leads out of the sandbox's file system".into(),
        Errno::NOTDIR => "a component of it is not a directory".into(),
        Errno::ISDIR => "it is a directory".into(),
        Errno::NOSPC => "the sandbox's writable space is full (raise --tmpfs-size)".into(),
        other => io::Error::from(other).to_string(),
    }
}

/// An error placing a file, with a message for the user.
#[derive(Debug)]
pub(crate) struct PlaceError {
    pub path: String,
    pub reason: String,
}

impl SandboxRoot {
    /// Opens `/proc/<pid>/root`: the root of the process's mount namespace.
    pub(crate) fn of_process(pid: i32) -> io::Result<SandboxRoot> {
        let fd = rfs::open(
            format!("/proc/{pid}/root").as_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(SandboxRoot { fd, place: PRE_RUN })
    }

    /// Opens the root of a live sandbox, where programs have run: every path
    /// resolves by the post-run rules, placing files included.
    pub(crate) fn of_live_process(pid: i32) -> io::Result<SandboxRoot> {
        let mut root = SandboxRoot::of_process(pid)?;
        root.place = POST_RUN;
        Ok(root)
    }

    /// Reads a small regular file (post-run rules): `None` when it is absent or
    /// not a regular file, at most `max` bytes.
    pub(crate) fn read_small(&self, path: &str, max: u64) -> Option<Vec<u8>> {
        let fd = rfs::openat2(
            &self.fd,
            rel(path),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
            POST_RUN,
        )
        .ok()?;
        let st = rfs::fstat(&fd).ok()?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return None;
        }
        read_up_to(&fd, max).ok()
    }

    /// Makes sure `path` is a directory, creating missing components owned by
    /// `uid:gid` (host ids) with mode 0755. Pre-run rules, or post-run rules in a
    /// live sandbox.
    pub(crate) fn ensure_dir(&self, path: &str, uid: u32, gid: u32) -> Result<OwnedFd, PlaceError> {
        let err = |e: Errno| PlaceError {
            path: path.to_owned(),
            reason: describe(e),
        };
        let dirflags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut cur =
            rfs::openat2(&self.fd, ".", dirflags, Mode::empty(), self.place).map_err(err)?;
        let mut prefix = String::new();
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            prefix.push('/');
            prefix.push_str(comp);
            // Resolve each prefix from the root, so a symlink in the image resolves
            // against the sandbox root, never against the host's.
            match rfs::openat2(&self.fd, rel(&prefix), dirflags, Mode::empty(), self.place) {
                Ok(fd) => cur = fd,
                Err(Errno::NOENT) => {
                    match rfs::mkdirat(&cur, comp, Mode::from_raw_mode(0o755)) {
                        Ok(()) => rfs::chownat(
                            &cur,
                            comp,
                            Some(rfs::Uid::from_raw(uid)),
                            Some(rfs::Gid::from_raw(gid)),
                            AtFlags::SYMLINK_NOFOLLOW,
                        )
                        .map_err(err)?,
                        // Made meanwhile (another exec into the same live sandbox):
                        // opened below like any existing directory, links refused.
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(err(e)),
                    }
                    cur = rfs::openat(&cur, comp, dirflags | OFlags::NOFOLLOW, Mode::empty())
                        .map_err(err)?;
                }
                Err(e) => return Err(err(e)),
            }
        }
        Ok(cur)
    }

    /// Writes an input file owned by `uid:gid` (pre-run rules, or post-run rules
    /// in a live sandbox); an existing symlink, directory, FIFO or device at the
    /// path is an error, never a target. So is a file with other hard links (in a
    /// live sandbox, a program may have linked it to one it cannot write).
    pub(crate) fn write_input(
        &self,
        input: &PlannedInput,
        uid: u32,
        gid: u32,
    ) -> Result<(), PlaceError> {
        let err = |e: Errno| PlaceError {
            path: input.path.clone(),
            reason: describe(e),
        };
        let (parent, name) = split_parent(&input.path);
        let dir = self.ensure_dir(parent, uid, gid)?;
        let fd = rfs::openat(
            &dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::from_raw_mode(input.mode),
        )
        .map_err(err)?;
        let st = rfs::fstat(&fd).map_err(err)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(PlaceError {
                path: input.path.clone(),
                reason: "the image has something other than a regular file there".into(),
            });
        }
        if st.st_nlink > 1 {
            return Err(PlaceError {
                path: input.path.clone(),
                reason: format!(
                    "the file there has {} hard links; remove it first",
                    st.st_nlink
                ),
            });
        }
        rfs::ftruncate(&fd, 0).map_err(err)?;
        write_all(&fd, &input.content).map_err(err)?;
        rfs::fchown(
            &fd,
            Some(rfs::Uid::from_raw(uid)),
            Some(rfs::Gid::from_raw(gid)),
        )
        .map_err(err)?;
        rfs::fchmod(&fd, Mode::from_raw_mode(input.mode)).map_err(err)?;
        Ok(())
    }

    /// Collects a job's declared outputs, in order, within its output-files limit.
    pub(crate) fn collect_outputs(&self, plan: &crate::plan::JobPlan) -> Vec<OutputFile> {
        let mut budget = plan.limits.output_files_bytes;
        plan.outputs
            .iter()
            .flat_map(|o| self.collect(&o.requested, &o.path, &mut budget))
            .collect()
    }

    /// Collects the output at `path` (a file, or every regular file under a
    /// directory), reading at most `budget` bytes in total. Post-run rules.
    pub(crate) fn collect(&self, requested: &str, path: &str, budget: &mut u64) -> Vec<OutputFile> {
        let failed = |reason: String| OutputFile {
            path: requested.to_owned(),
            size: 0,
            truncated: false,
            content: None,
            saved_to: None,
            error: Some(reason),
        };
        let fd = match rfs::openat2(
            &self.fd,
            rel(path),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
            POST_RUN,
        ) {
            Ok(fd) => fd,
            Err(e) => return vec![failed(describe(e))],
        };
        let mut out = Vec::new();
        collect_fd(fd, requested, budget, 0, &mut out);
        out
    }
}

fn collect_fd(fd: OwnedFd, name: &str, budget: &mut u64, depth: usize, out: &mut Vec<OutputFile>) {
    let mut file = OutputFile {
        path: name.to_owned(),
        size: 0,
        truncated: false,
        content: None,
        saved_to: None,
        error: None,
    };
    let st = match rfs::fstat(&fd) {
        Ok(st) => st,
        Err(e) => {
            file.error = Some(describe(e));
            out.push(file);
            return;
        }
    };
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile if st.st_nlink > 1 => {
            file.error = Some(format!("it has {} hard links (not collected)", st.st_nlink));
        }
        FileType::RegularFile => {
            let size = st.st_size as u64;
            file.size = size;
            let take = size.min(*budget);
            match read_up_to(&fd, take) {
                Ok(bytes) => {
                    *budget -= bytes.len() as u64;
                    file.truncated = (bytes.len() as u64) < size;
                    file.content = Some(Data(bytes));
                }
                Err(e) => file.error = Some(describe(e)),
            }
        }
        FileType::Directory if depth < MAX_DIR_DEPTH => {
            return collect_dir(fd, name, budget, depth, out)
        }
        FileType::Directory => {
            file.error = Some(format!(
                "deeper than {MAX_DIR_DEPTH} directories (not collected)"
            ))
        }
        _ => file.error = Some("it is not a regular file (not collected)".into()),
    }
    out.push(file);
}

fn collect_dir(fd: OwnedFd, name: &str, budget: &mut u64, depth: usize, out: &mut Vec<OutputFile>) {
    let mut names: Vec<String> = Vec::new();
    match rfs::Dir::read_from(&fd) {
        Ok(mut dir) => {
            while let Some(Ok(entry)) = dir.read() {
                let n = entry.file_name().to_string_lossy().into_owned();
                if n != "." && n != ".." {
                    names.push(n);
                }
            }
        }
        Err(e) => {
            out.push(OutputFile {
                path: name.into(),
                size: 0,
                truncated: false,
                content: None,
                saved_to: None,
                error: Some(describe(e)),
            });
            return;
        }
    }
    names.sort();
    for n in names {
        if out.len() >= MAX_DIR_FILES {
            out.push(OutputFile {
                path: format!("{name}/{n}"),
                size: 0,
                truncated: true,
                content: None,
                saved_to: None,
                error: Some(format!(
                    "more than {MAX_DIR_FILES} files (the rest were not collected)"
                )),
            });
            return;
        }
        let child = format!("{}/{n}", name.trim_end_matches('/'));
        match rfs::openat2(
            &fd,
            n.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
            POST_RUN,
        ) {
            Ok(cfd) => collect_fd(cfd, &child, budget, depth + 1, out),
            Err(e) => out.push(OutputFile {
                path: child,
                size: 0,
                truncated: false,
                content: None,
                saved_to: None,
                error: Some(describe(e)),
            }),
        }
    }
}

fn write_all(fd: &OwnedFd, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        let n = rustix::io::write(fd, buf)?;
        buf = &buf[n..];
    }
    Ok(())
}

fn read_up_to(fd: &OwnedFd, max: u64) -> Result<Vec<u8>, Errno> {
    let mut out = Vec::with_capacity(max.min(1 << 20) as usize);
    let mut chunk = vec![0u8; 64 * 1024];
    while (out.len() as u64) < max {
        let want = chunk.len().min((max - out.len() as u64) as usize);
        let n = rustix::io::read(fd, &mut chunk[..want])?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

/// Reads a small regular file from an image's unpacked layers, top layer first,
/// honouring whiteouts: what `path` shows in the merged view, for files like
/// /etc/passwd that decide how the job starts. `None` when absent or not a regular
/// file. Layers are not sandbox-writable, but still untrusted: no symlinks followed.
pub(crate) fn read_image_file(
    layers_dir: &Path,
    layers: &[String],
    path: &str,
    max: u64,
) -> io::Result<Option<Vec<u8>>> {
    let base = rfs::open(
        layers_dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let rel_path = rel(path);
    for layer in layers.iter().rev() {
        let full = format!("{layer}/{rel_path}");
        match rfs::openat2(
            &base,
            full.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
            POST_RUN,
        ) {
            Ok(fd) => {
                let st = rfs::fstat(&fd)?;
                return Ok(match FileType::from_raw_mode(st.st_mode) {
                    FileType::RegularFile => Some(read_up_to(&fd, max)?),
                    // A 0:0 character device is an overlay whiteout: deleted here.
                    _ => None,
                });
            }
            // Opening an overlay whiteout (a 0:0 character device) fails with ENXIO.
            Err(Errno::NXIO) => return Ok(None),
            Err(Errno::NOENT) => {
                if hidden_below(&base, layer, rel_path) {
                    return Ok(None);
                }
            }
            // A symlink somewhere on the way: not worth resolving for these files.
            Err(Errno::LOOP | Errno::NOTDIR) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// Whether some ancestor of `rel_path` in `layer` is a whiteout or an opaque
/// directory, hiding the lower layers' copies.
fn hidden_below(base: &impl AsFd, layer: &str, rel_path: &str) -> bool {
    let mut prefix = layer.to_owned();
    for comp in rel_path.split('/').filter(|c| !c.is_empty()) {
        prefix.push('/');
        prefix.push_str(comp);
        match rfs::statat(base, prefix.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let ft = FileType::from_raw_mode(st.st_mode);
                if ft == FileType::CharacterDevice {
                    return true;
                }
                if ft == FileType::Directory {
                    let dir = rfs::openat(
                        base,
                        prefix.as_str(),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    );
                    let mut v = [0u8; 1];
                    if let Ok(dir) = dir {
                        if matches!(rfs::fgetxattr(&dir, "trusted.overlay.opaque", &mut v), Ok(1) if v[0] == b'y')
                        {
                            return true;
                        }
                    }
                }
            }
            Err(_) => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_split() {
        assert_eq!(split_parent("/a/b/c"), ("/a/b", "c"));
        assert_eq!(split_parent("/c"), ("/", "c"));
        assert_eq!(rel("/"), ".");
        assert_eq!(rel("/a/b"), "a/b");
    }

    #[test]
    fn image_file_lookup_honours_whiteouts_and_opaque_dirs() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("low/etc")).unwrap();
        std::fs::write(p.join("low/etc/passwd"), "low").unwrap();
        std::fs::create_dir_all(p.join("mid/etc")).unwrap();
        std::fs::create_dir_all(p.join("top/etc")).unwrap();
        let layers = vec!["low".to_string(), "mid".to_string(), "top".to_string()];
        assert_eq!(
            read_image_file(p, &layers, "/etc/passwd", 100)
                .unwrap()
                .unwrap(),
            b"low"
        );
        std::fs::write(p.join("mid/etc/passwd"), "mid").unwrap();
        assert_eq!(
            read_image_file(p, &layers, "/etc/passwd", 100)
                .unwrap()
                .unwrap(),
            b"mid"
        );
        assert_eq!(
            read_image_file(p, &layers, "/etc/passwd", 2)
                .unwrap()
                .unwrap(),
            b"mi",
            "capped"
        );
        // A whiteout in the top layer hides both.
        rfs::mknodat(
            rfs::CWD,
            p.join("top/etc/passwd").as_path(),
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .unwrap();
        assert_eq!(
            read_image_file(p, &layers, "/etc/passwd", 100).unwrap(),
            None
        );
        // A symlinked file is not followed.
        std::fs::remove_file(p.join("top/etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", p.join("top/etc/passwd")).unwrap();
        assert_eq!(
            read_image_file(p, &layers, "/etc/passwd", 100).unwrap(),
            None
        );
        // An opaque /etc in the top layer hides the lower ones.
        std::fs::remove_file(p.join("top/etc/passwd")).unwrap();
        rfs::setxattr(
            p.join("top/etc").as_path(),
            "trusted.overlay.opaque",
            b"y",
            rfs::XattrFlags::empty(),
        )
        .unwrap();
        assert_eq!(
            read_image_file(p, &layers, "/etc/passwd", 100).unwrap(),
            None
        );
    }
}
