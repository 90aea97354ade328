//! Writing collected output files into a host directory.
//!
//! The names come from the sandbox (a directory output lists what the program left
//! there), so the host side never follows a symlink while creating them: the
//! directory may hold links from an earlier run, or from anyone else.

use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::Context;
use runbox_core::OutputFile;
use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags};

const NO_LINKS: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Writes every collected file under `dir` (created if missing), moving its content
/// out of the result and recording where it went.
pub fn save_outputs(dir: &Path, outputs: &mut [OutputFile]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating output directory {}", dir.display()))?;
    let base = rfs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening output directory {}", dir.display()))?;
    for o in outputs.iter_mut() {
        let Some(content) = o.content.take() else {
            continue;
        };
        let rel = o.path.trim_start_matches('/');
        match write_beneath(&base, rel, content.as_bytes()) {
            Ok(()) => o.saved_to = Some(dir.join(rel).display().to_string()),
            Err(e) => o.error = Some(format!("could not be saved to {}: {e}", dir.display())),
        }
    }
    Ok(())
}

fn write_beneath(base: &OwnedFd, rel: &str, bytes: &[u8]) -> std::io::Result<()> {
    let parts: Vec<&str> = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let Some((name, dirs)) = parts.split_last() else {
        return Err(std::io::Error::other("empty path"));
    };
    if parts.contains(&"..") {
        return Err(std::io::Error::other("'..' in an output name"));
    }
    let mut cur = rfs::openat2(
        base,
        ".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        NO_LINKS,
    )?;
    for d in dirs {
        match rfs::mkdirat(&cur, *d, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        cur = rfs::openat2(
            &cur,
            *d,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            NO_LINKS,
        )?;
    }
    let fd = rfs::openat2(
        &cur,
        *name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
        NO_LINKS,
    )?;
    let mut f = std::fs::File::from(fd);
    std::io::Write::write_all(&mut f, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runbox_core::Data;

    fn out(path: &str, bytes: &[u8]) -> OutputFile {
        OutputFile {
            path: path.into(),
            size: bytes.len() as u64,
            truncated: false,
            content: Some(Data(bytes.to_vec())),
            saved_to: None,
            error: None,
        }
    }

    #[test]
    fn saves_nested_outputs_and_refuses_planted_links() {
        let d = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(victim.path(), d.path().join("linked")).unwrap();
        std::os::unix::fs::symlink(victim.path().join("f"), d.path().join("file-link")).unwrap();
        let mut outs = vec![
            out("/tmp/a.txt", b"a"),
            out("d/e/b.txt", b"b"),
            out("linked/x", b"x"),
            out("file-link", b"y"),
        ];
        save_outputs(d.path(), &mut outs).unwrap();
        assert_eq!(std::fs::read(d.path().join("tmp/a.txt")).unwrap(), b"a");
        assert_eq!(std::fs::read(d.path().join("d/e/b.txt")).unwrap(), b"b");
        assert!(outs[0].saved_to.is_some() && outs[0].content.is_none());
        assert!(
            outs[2].error.is_some() && outs[3].error.is_some(),
            "{outs:?}"
        );
        assert_eq!(
            std::fs::read_dir(victim.path()).unwrap().count(),
            0,
            "wrote through a planted link"
        );
    }
}
