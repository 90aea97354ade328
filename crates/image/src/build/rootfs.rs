//! What the Debian root file system holds at the paths the added files need:
//! read from mmdebstrap's tar as it streams into the layer, and used to write
//! the files layer so it merges cleanly over the root file system.
//!
//! In an overlay, a directory of an upper layer gives the merged directory its
//! mode and owner, and hides a symlink of the same name below it. So the files
//! layer repeats each parent directory exactly as the root file system has it,
//! and a parent that is a symlink there (`/bin` -> `usr/bin` in a merged-/usr
//! system) is refused instead of silently replacing the link.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use super::recipe::RecipeFile;
use crate::writer::{Node, Tree, TreeEntry};

/// An entry of the root file system tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    Dir { mode: u32, uid: u32, gid: u32 },
    Symlink(String),
    Other,
}

/// Why a file cannot be added: its index in `files`, and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conflict {
    pub index: usize,
    pub reason: String,
}

/// The root file system entries the scan records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Wanted {
    /// Exact paths (relative, no leading `/`).
    pub paths: BTreeSet<String>,
    /// Also the entries the wheel layer needs: `usr/lib/python3.N` (which
    /// Pythons the system has) and the site directories' parents
    /// ([`super::pypi::wanted_by_wheels`]).
    pub wheels: bool,
}

impl Wanted {
    fn contains(&self, path: &str) -> bool {
        self.paths.contains(path) || (self.wheels && super::pypi::wanted_by_wheels(path))
    }

    fn is_empty(&self) -> bool {
        self.paths.is_empty() && !self.wheels
    }
}

/// The paths (relative, no leading `/`) whose entries in the root file system
/// decide how the files are added: every file and each of its parents.
pub(crate) fn wanted_paths(files: &[RecipeFile]) -> Wanted {
    let mut out = BTreeSet::new();
    for f in files {
        let rel = f.path.trim_start_matches('/');
        let mut end = 0;
        for c in rel.split('/') {
            end += c.len();
            out.insert(rel[..end].to_owned());
            end += 1;
        }
    }
    Wanted {
        paths: out,
        wheels: false,
    }
}

/// Passes `input` to `consume` while a second thread reads the same bytes as a
/// tar and records the entries at `wanted` paths (the last one of each wins,
/// as when unpacking).
pub(crate) fn with_scan<T>(
    input: &mut dyn Read,
    wanted: &Wanted,
    consume: impl FnOnce(&mut dyn Read) -> T,
) -> (T, io::Result<BTreeMap<String, Found>>) {
    std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<Vec<u8>>(16);
        let scanner = s.spawn(move || scan(ChanReader::new(rx), wanted));
        let mut tee = Tee {
            inner: input,
            tx: Some(tx),
        };
        let value = consume(&mut tee);
        drop(tee);
        let found = scanner
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the tar scanner panicked")));
        (value, found)
    })
}

fn scan(mut r: ChanReader, wanted: &Wanted) -> io::Result<BTreeMap<String, Found>> {
    let result = scan_entries(&mut r, wanted);
    // Whatever happened, read to the end so the sender never blocks on us (tar
    // stops at the end-of-archive blocks, before the stream's end).
    io::copy(&mut r, &mut io::sink())?;
    result
}

fn scan_entries(r: &mut ChanReader, wanted: &Wanted) -> io::Result<BTreeMap<String, Found>> {
    let mut found = BTreeMap::new();
    if wanted.is_empty() {
        return Ok(found);
    }
    let mut archive = tar::Archive::new(r);
    for entry in archive.entries()? {
        let entry = entry?;
        let raw = entry.path_bytes();
        let path = String::from_utf8_lossy(&raw);
        let path = path.trim_start_matches("./").trim_matches('/');
        if !wanted.contains(path) {
            continue;
        }
        let h = entry.header();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => Found::Dir {
                mode: h.mode()? & 0o7777,
                uid: h.uid()?.try_into().unwrap_or(0),
                gid: h.gid()?.try_into().unwrap_or(0),
            },
            tar::EntryType::Symlink => Found::Symlink(
                entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default(),
            ),
            _ => Found::Other,
        };
        found.insert(path.to_owned(), kind);
    }
    Ok(found)
}

/// The files layer: each file with its mode (owner root), and its parent
/// directories as the root file system has them (new ones 0755 root).
pub(crate) fn files_tree(
    files: &[RecipeFile],
    found: &BTreeMap<String, Found>,
) -> Result<Tree, Conflict> {
    let mut tree = Tree::new();
    for (index, f) in files.iter().enumerate() {
        let rel = f.path.trim_start_matches('/');
        let comps: Vec<&str> = rel.split('/').collect();
        let mut end = 0;
        for c in &comps[..comps.len() - 1] {
            end += c.len();
            let parent = &rel[..end];
            end += 1;
            let entry = match found.get(parent) {
                None => TreeEntry {
                    node: Node::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                },
                Some(Found::Dir { mode, uid, gid }) => TreeEntry {
                    node: Node::Dir,
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                },
                Some(Found::Symlink(target)) => {
                    return Err(Conflict {
                        index,
                        reason: format!(
                            "/{parent} is a symlink to {target:?} in the Debian system; give the path it points to"
                        ),
                    })
                }
                Some(Found::Other) => {
                    return Err(Conflict {
                        index,
                        reason: format!("/{parent} is a file in the Debian system, not a directory"),
                    })
                }
            };
            tree.insert(parent, entry);
        }
        if let Some(Found::Dir { .. }) = found.get(rel) {
            return Err(Conflict {
                index,
                reason: format!("{} is a directory in the Debian system", f.path),
            });
        }
        tree.file(rel, f.mode, f.contents.clone());
    }
    Ok(tree)
}

/// Reads from `inner` and sends a copy of every chunk to the scanner.
struct Tee<'a> {
    inner: &'a mut dyn Read,
    tx: Option<SyncSender<Vec<u8>>>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            if let Some(tx) = &self.tx {
                if tx.send(buf[..n].to_vec()).is_err() {
                    self.tx = None; // the scanner is gone; keep streaming
                }
            }
        }
        Ok(n)
    }
}

/// The scanner's end of the channel, as a reader.
struct ChanReader {
    rx: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl ChanReader {
    fn new(rx: Receiver<Vec<u8>>) -> ChanReader {
        ChanReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChanReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(b) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> RecipeFile {
        RecipeFile {
            path: path.into(),
            mode: 0o755,
            contents: b"x".to_vec(),
        }
    }

    /// A root file system like mmdebstrap's: `./`-prefixed, merged /usr.
    fn rootfs_tar() -> Vec<u8> {
        let mut t = Tree::new();
        t.dir("usr", 0o755)
            .dir("usr/local", 0o2775)
            .owner("usr/local", 0, 50)
            .dir("usr/local/bin", 0o755)
            .symlink("bin", "usr/bin")
            .dir("etc", 0o755)
            .file("etc/hostname", 0o644, b"x\n".to_vec());
        let plain = t.write_tar(Vec::new(), 0).unwrap();
        // Re-prefix every entry with "./" as GNU tar -C root . writes them.
        let mut out = tar::Builder::new(Vec::new());
        let mut a = tar::Archive::new(&plain[..]);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let mut h = e.header().clone();
            let p = format!("./{}", String::from_utf8_lossy(&e.path_bytes()));
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if h.entry_type() == tar::EntryType::Symlink {
                let target = e.link_name().unwrap().unwrap().into_owned();
                out.append_link(&mut h, p, target).unwrap();
            } else {
                out.append_data(&mut h, p, &data[..]).unwrap();
            }
        }
        out.into_inner().unwrap()
    }

    fn scan_of(files: &[RecipeFile]) -> BTreeMap<String, Found> {
        let tar = rootfs_tar();
        let (copied, found) = with_scan(&mut &tar[..], &wanted_paths(files), |r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v)
        });
        assert_eq!(copied.unwrap(), tar, "the stream passes through unchanged");
        found.unwrap()
    }

    #[test]
    fn parents_keep_the_root_file_systems_mode_and_owner() {
        let files = [file("/usr/local/bin/run"), file("/opt/new/thing")];
        let tree = files_tree(&files, &scan_of(&files)).unwrap();
        let entries: BTreeMap<String, TreeEntry> = tree
            .entries()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let local = &entries["usr/local"];
        assert_eq!((local.mode, local.uid, local.gid), (0o2775, 0, 50));
        assert_eq!(entries["opt/new"].mode, 0o755);
        assert_eq!(entries["usr/local/bin/run"].mode, 0o755);
    }

    #[test]
    fn refuses_a_file_below_a_symlinked_directory() {
        let files = [file("/etc/motd"), file("/bin/run")];
        let e = files_tree(&files, &scan_of(&files)).unwrap_err();
        assert_eq!(e.index, 1);
        assert!(
            e.reason.contains("/bin is a symlink to \"usr/bin\""),
            "{}",
            e.reason
        );
    }

    #[test]
    fn refuses_a_file_that_replaces_a_directory_or_passes_through_a_file() {
        let files = [file("/usr/local")];
        let e = files_tree(&files, &scan_of(&files)).unwrap_err();
        assert!(e.reason.contains("is a directory"), "{}", e.reason);
        let files = [file("/etc/hostname/x")];
        let e = files_tree(&files, &scan_of(&files)).unwrap_err();
        assert!(e.reason.contains("is a file"), "{}", e.reason);
    }
}
