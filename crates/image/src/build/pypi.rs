//! `[[pypi]]` wheels: downloaded from a PEP 691 simple index (PyPI by default),
//! verified against the recipe's pinned sha256, cached in the store as
//! content-addressed blobs (`blobs/sha256/<hex>`), and unpacked the way pip
//! unpacks a wheel into `/usr/local/lib/python3.X/dist-packages` of the image,
//! as a layer of its own.
//!
//! A wheel is a zip file. Its entries become files of the layer only when they
//! are plain files or directories at normalized relative paths: an absolute
//! path, a `..`, `.` or empty component, a backslash, a NUL, a symlink or a
//! device is refused, as is a path used twice or one below a file. (The layer
//! then goes through the store's verified import like every other layer.)

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use runbox_core::Digest;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::recipe::PypiWheel;
use super::rootfs::Found;
use crate::error::{ImageError, Result};
use crate::store::Store;

/// The index wheels come from unless [`super::BuildOptions::pypi_index`] or
/// `RUNBOX_PYPI_INDEX` names another (a PEP 691 JSON simple index).
pub const DEFAULT_INDEX: &str = "https://pypi.org/simple";

/// Largest wheel downloaded.
pub const MAX_WHEEL_BYTES: u64 = 1 << 30;
/// Largest index page (PyPI's page of duckdb, with every file of every
/// release, is 3.5 MB).
const MAX_INDEX_BYTES: u64 = 64 << 20;
/// Most entries in one wheel.
pub const MAX_WHEEL_ENTRIES: usize = 100_000;
/// Most bytes one wheel unpacks to (declared sizes, and enforced while reading).
pub const MAX_WHEEL_UNPACKED_BYTES: u64 = 4 << 30;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(120);

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;

/// The index URL: the option, else `RUNBOX_PYPI_INDEX`, else PyPI.
pub(crate) fn index_url(option: Option<&str>) -> String {
    option
        .map(str::to_owned)
        .or_else(|| std::env::var("RUNBOX_PYPI_INDEX").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_INDEX.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// Where each wheel of `wheels` is, in the store: a verified blob, downloaded
/// into `staging` first when the store does not have it yet. `log` receives a
/// line per wheel.
pub(crate) fn fetch_all(
    store: &Store,
    recipe: &Path,
    wheels: &[PypiWheel],
    index: &str,
    staging: &Path,
    log: &dyn Fn(&str),
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::with_capacity(wheels.len());
    let mut fetcher: Option<Fetcher> = None;
    for (i, w) in wheels.iter().enumerate() {
        let digest = w.digest();
        let dest = store.blob_path(&digest);
        if hash_file(&dest).is_ok_and(|d| d == digest) {
            log(&format!("I: pypi: {} is in the store", w.file));
            out.push(dest);
            continue;
        }
        if fetcher.is_none() {
            fetcher = Some(Fetcher::new(index)?);
        }
        let f = fetcher.as_ref().expect("set above");
        log(&format!("I: pypi: downloading {} from {index}", w.file));
        let what = format!("PyPI wheel {} (pypi[{i}] of {})", w.file, recipe.display());
        let tmp = staging.join(format!("wheel-{i}.whl"));
        let fetched = f.download(w, &what, &tmp);
        if let Err(e) = fetched {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &dest).map_err(|e| ImageError::io("storing", &dest, e))?;
        out.push(dest);
    }
    Ok(out)
}

fn hash_file(path: &Path) -> io::Result<Digest> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(Digest::from_sha256_bytes(&h.finalize().into()))
}

/// PEP 691's JSON page of a project (only what is read).
#[derive(Debug, Deserialize)]
struct IndexPage {
    files: Vec<IndexFile>,
}

#[derive(Debug, Deserialize)]
struct IndexFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: BTreeMap<String, String>,
}

/// An HTTP client on a small runtime of its own, behind a synchronous API.
struct Fetcher {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    index: String,
}

impl Fetcher {
    fn new(index: &str) -> Result<Fetcher> {
        // rustls needs a process-wide crypto provider; one installed already is
        // as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ImageError::Internal(format!("starting the download runtime: {e}")))?;
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("runbox/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ImageError::Registry {
                registry: index.to_owned(),
                what: "setting up the HTTP client".into(),
                detail: chain(&e),
            })?;
        Ok(Fetcher {
            runtime,
            client,
            index: index.to_owned(),
        })
    }

    fn net_err(&self, what: String) -> impl FnOnce(reqwest::Error) -> ImageError + '_ {
        move |e| ImageError::Registry {
            registry: self.index.clone(),
            what,
            detail: chain(&e),
        }
    }

    /// Finds the wheel on the project's index page, checks the hash the index
    /// gives (when it gives one), downloads it to `dest` verifying size bound
    /// and sha256.
    fn download(&self, w: &PypiWheel, what: &str, dest: &Path) -> Result<()> {
        let page_url = format!("{}/{}/", self.index, w.normalized_name());
        let base = reqwest::Url::parse(&page_url).map_err(|e| ImageError::Registry {
            registry: self.index.clone(),
            what: "parsing the index URL".into(),
            detail: e.to_string(),
        })?;
        let pinned = w.digest();
        self.runtime.block_on(async {
            let reading = format!("reading the index page {page_url}");
            let mut resp = self
                .client
                .get(base.clone())
                .header(
                    reqwest::header::ACCEPT,
                    "application/vnd.pypi.simple.v1+json",
                )
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(self.net_err(reading.clone()))?;
            let json = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("json"));
            if !json {
                return Err(ImageError::Registry {
                    registry: self.index.clone(),
                    what: reading,
                    detail: "the index did not answer with PEP 691 JSON (application/vnd.pypi.simple.v1+json)".into(),
                });
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(self.net_err(reading.clone()))? {
                body.extend_from_slice(&chunk);
                if body.len() as u64 > MAX_INDEX_BYTES {
                    return Err(ImageError::DocumentTooLarge {
                        what: format!("the index page {page_url}"),
                        size: body.len() as u64,
                        limit: MAX_INDEX_BYTES,
                    });
                }
            }
            let page: IndexPage =
                serde_json::from_slice(&body).map_err(|e| ImageError::InvalidDocument {
                    what: format!("the index page {page_url}"),
                    reason: e.to_string(),
                })?;
            let Some(file) = page.files.into_iter().find(|f| f.filename == w.file) else {
                return Err(ImageError::RemoteNotFound {
                    registry: self.index.clone(),
                    reference: format!("{} {}", w.name, w.version),
                    detail: format!("{page_url} lists no file {:?}", w.file),
                });
            };
            if let Some(listed) = file.hashes.get("sha256") {
                if !listed.eq_ignore_ascii_case(&w.sha256) {
                    let actual = Digest::from_hex(&listed.to_ascii_lowercase())
                        .map_err(|e| ImageError::InvalidDocument {
                            what: format!("the index page {page_url}"),
                            reason: format!("the sha256 of {}: {e}", w.file),
                        })?;
                    return Err(ImageError::DigestMismatch {
                        what: format!("{what}, as the index lists it,"),
                        digest: pinned.clone(),
                        actual,
                    });
                }
            }
            let url = base.join(&file.url).map_err(|e| ImageError::InvalidDocument {
                what: format!("the index page {page_url}"),
                reason: format!("the URL of {}: {e}", w.file),
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ImageError::InvalidDocument {
                    what: format!("the index page {page_url}"),
                    reason: format!("the URL of {} is not http(s): {url}", w.file),
                });
            }
            let downloading = format!("downloading {url}");
            let mut resp = self
                .client
                .get(url.clone())
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(self.net_err(downloading.clone()))?;
            let mut out = File::options()
                .write(true)
                .create_new(true)
                .open(dest)
                .map_err(|e| ImageError::io("creating", dest, e))?;
            let mut hasher = Sha256::new();
            let mut total = 0u64;
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(self.net_err(downloading.clone()))?
            {
                total += chunk.len() as u64;
                if total > MAX_WHEEL_BYTES {
                    return Err(ImageError::DocumentTooLarge {
                        what: what.to_owned(),
                        size: total,
                        limit: MAX_WHEEL_BYTES,
                    });
                }
                hasher.update(&chunk);
                out.write_all(&chunk)
                    .map_err(|e| ImageError::io("writing", dest, e))?;
            }
            out.sync_all()
                .map_err(|e| ImageError::io("writing", dest, e))?;
            let actual = Digest::from_sha256_bytes(&hasher.finalize().into());
            if actual != pinned {
                return Err(ImageError::DigestMismatch {
                    what: what.to_owned(),
                    digest: pinned,
                    actual,
                });
            }
            Ok(())
        })
    }
}

/// An error and its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let m = x.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = x.source();
    }
    s
}

// ---- the image's Python ----

/// The `usr/lib/python3.N` directories of the root file system, as (3, N).
pub(crate) fn pythons(found: &BTreeMap<String, Found>) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = found
        .iter()
        .filter(|(_, f)| matches!(f, Found::Dir { .. }))
        .filter_map(|(p, _)| python_of(p.strip_prefix("usr/lib/")?))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// `python3.N` -> (3, N).
fn python_of(name: &str) -> Option<(u32, u32)> {
    let minor = name.strip_prefix("python3.")?;
    if minor.is_empty() || !minor.bytes().all(|b| b.is_ascii_digit()) || minor.len() > 3 {
        return None;
    }
    Some((3, minor.parse().ok()?))
}

/// Whether the root file system entry at `path` is one the wheel layer needs
/// to know: a Python's library directory, or the site directory's parents.
pub(crate) fn wanted_by_wheels(path: &str) -> bool {
    if matches!(path, "usr" | "usr/local" | "usr/local/lib") {
        return true;
    }
    if let Some(rest) = path.strip_prefix("usr/lib/") {
        return python_of(rest).is_some();
    }
    if let Some(rest) = path.strip_prefix("usr/local/lib/") {
        let (dir, sub) = rest.split_once('/').unwrap_or((rest, ""));
        return python_of(dir).is_some() && matches!(sub, "" | "dist-packages");
    }
    false
}

/// Why a wheel does not fit the image's Python, if it does not.
fn incompatible(w: &PypiWheel, (major, minor): (u32, u32)) -> Option<String> {
    let (py, abi, plat) = w.tags();
    let cp = format!("cp{major}{minor}");
    let py_ok = py.iter().any(|t| {
        *t == "py3"
            || *t == format!("py{major}{minor}")
            || *t == cp
            // A stable-ABI wheel for an older CPython 3.
            || (abi.contains(&"abi3")
                && t.strip_prefix("cp3")
                    .and_then(|m| m.parse::<u32>().ok())
                    .is_some_and(|m| m <= minor))
    });
    if !py_ok {
        return Some(format!(
            "{} is for Python {}, and the image has Python {major}.{minor}",
            w.file,
            py.join(".")
        ));
    }
    let abi_ok = abi.iter().any(|t| *t == "none" || *t == "abi3" || *t == cp);
    if !abi_ok {
        return Some(format!(
            "{} is for the ABI {}, and the image has CPython {major}.{minor} ({cp})",
            w.file,
            abi.join(".")
        ));
    }
    let arch = std::env::consts::ARCH;
    let plat_ok = plat.iter().any(|t| {
        *t == "any"
            || ((t.starts_with("manylinux") || t.starts_with("linux_"))
                && t.ends_with(&format!("_{arch}")))
    });
    if !plat_ok {
        return Some(format!(
            "{} is for the platform {}, and images are built for glibc Linux on {arch} (manylinux_*_{arch} or any)",
            w.file,
            plat.join(".")
        ));
    }
    None
}

/// The Python (3, N) the wheels go to: the one in the image every wheel fits,
/// the newest when several do. `Err((index of the wheel at fault, reason))`.
pub(crate) fn choose_python(
    found: &BTreeMap<String, Found>,
    wheels: &[PypiWheel],
) -> std::result::Result<(u32, u32), (usize, String)> {
    let available = pythons(found);
    if available.is_empty() {
        return Err((
            0,
            "the Debian system has no Python 3 (no /usr/lib/python3.N): add python3 to debian.packages".into(),
        ));
    }
    let mut last = (0, String::new());
    for py in available.iter().rev() {
        match wheels
            .iter()
            .enumerate()
            .find_map(|(i, w)| incompatible(w, *py).map(|r| (i, r)))
        {
            None => return Ok(*py),
            Some(e) => last = e,
        }
    }
    Err(last)
}

// ---- unpacking ----

/// Why a wheel cannot be unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WheelError {
    /// The entry at fault (empty when the whole file is).
    pub entry: String,
    pub reason: String,
}

fn werr(entry: &str, reason: impl Into<String>) -> WheelError {
    WheelError {
        entry: entry.to_owned(),
        reason: reason.into(),
    }
}

impl std::fmt::Display for WheelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.entry.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "refused entry {:?}: {}", self.entry, self.reason)
        }
    }
}

/// One entry to write: its path below the site directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Planned {
    index: usize,
    path: String,
    dir: bool,
    mode: u32,
    size: u64,
}

/// Checks an entry name: relative, normalized, UTF-8, no backslash or NUL.
/// Returns the components (a trailing `/` marks a directory and is dropped).
fn entry_components(raw: &[u8]) -> std::result::Result<(Vec<&str>, bool), String> {
    let name = std::str::from_utf8(raw).map_err(|_| "the name is not UTF-8".to_owned())?;
    if name.contains('\0') {
        return Err("the name contains a NUL byte".into());
    }
    if name.contains('\\') {
        return Err("the name contains a backslash".into());
    }
    if name.starts_with('/') {
        return Err("absolute path".into());
    }
    let dir = name.ends_with('/');
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    if trimmed.is_empty() {
        return Err("empty name".into());
    }
    let comps: Vec<&str> = trimmed.split('/').collect();
    for c in &comps {
        match *c {
            ".." => return Err("'..' path component".into()),
            "." | "" => return Err("not a normalized path ('.' or empty component)".into()),
            c if c.len() > 255 => return Err("path component longer than 255 bytes".into()),
            _ => {}
        }
    }
    if name.len() > 4096 {
        return Err("path longer than 4096 bytes".into());
    }
    Ok((comps, dir))
}

/// Reads a wheel's directory and decides where each entry goes below the site
/// directory, refusing hostile entries. `data_dir` is `{name}-{version}.data`:
/// its `purelib` and `platlib` go to the site directory (as pip does); its
/// `scripts`, `headers` and `data` are refused (not supported).
fn plan<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    data_dir: &str,
    taken: &mut BTreeMap<String, bool>,
) -> std::result::Result<Vec<Planned>, WheelError> {
    if zip.len() > MAX_WHEEL_ENTRIES {
        return Err(werr("", format!("more than {MAX_WHEEL_ENTRIES} entries")));
    }
    let mut out = Vec::with_capacity(zip.len());
    let mut total = 0u64;
    for index in 0..zip.len() {
        let f = zip
            .by_index(index)
            .map_err(|e| werr("", format!("entry {index}: {e}")))?;
        let shown = String::from_utf8_lossy(f.name_raw()).into_owned();
        let (comps, named_dir) = entry_components(f.name_raw()).map_err(|r| werr(&shown, r))?;
        let kind = f.unix_mode().map(|m| m & S_IFMT).unwrap_or(0);
        let dir = match kind {
            0 => named_dir,
            S_IFDIR => true,
            S_IFREG if !named_dir => false,
            S_IFREG => return Err(werr(&shown, "a regular file named like a directory")),
            _ if f.is_symlink() => return Err(werr(&shown, "symlinks are not allowed")),
            _ => {
                return Err(werr(
                    &shown,
                    "not a regular file or directory (device, FIFO, socket)",
                ))
            }
        };
        if dir && named_dir != dir {
            return Err(werr(&shown, "a directory whose name has no trailing '/'"));
        }
        // `{name}-{version}.data/purelib/x` and `.../platlib/x` go to `x`.
        let comps: Vec<&str> = if comps[0] == data_dir {
            match comps.get(1).copied() {
                None => continue,
                Some("purelib" | "platlib") if comps.len() == 2 => continue,
                Some("purelib" | "platlib") => comps[2..].to_vec(),
                Some(other) => {
                    return Err(werr(
                        &shown,
                        format!("the wheel's {other:?} data is not supported (only purelib and platlib are installed)"),
                    ))
                }
            }
        } else {
            comps
        };
        let path = comps.join("/");
        // Every parent is a directory, never a file.
        let mut end = 0;
        for c in &comps[..comps.len() - 1] {
            end += c.len();
            let parent = &path[..end];
            end += 1;
            match taken.get(parent) {
                Some(false) => return Err(werr(&shown, format!("{parent:?} is a file"))),
                Some(true) => {}
                None => {
                    taken.insert(parent.to_owned(), true);
                }
            }
        }
        match taken.get(&path) {
            Some(true) if dir => continue,
            Some(_) => return Err(werr(&shown, format!("{path:?} is given twice"))),
            None => {
                taken.insert(path.clone(), dir);
            }
        }
        let size = if dir { 0 } else { f.size() };
        total = total.saturating_add(size);
        if total > MAX_WHEEL_UNPACKED_BYTES {
            return Err(werr(
                "",
                format!("it unpacks to more than {MAX_WHEEL_UNPACKED_BYTES} bytes"),
            ));
        }
        let exec = f.unix_mode().is_some_and(|m| m & 0o111 != 0);
        out.push(Planned {
            index,
            path,
            dir,
            mode: if dir || exec { 0o755 } else { 0o644 },
            size,
        });
    }
    Ok(out)
}

/// Reads at most the declared size, and fails past it.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::other(
                "the entry holds more bytes than its declared size",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Writes the layer that installs `wheels` (name, version, file) into the site
/// directory `site` (relative, e.g. `usr/local/lib/python3.11/dist-packages`)
/// as an uncompressed tar on `out`. The site directory and its parents are
/// written as the root file system has them (`found`; new ones 0755 root).
/// Returns the wheel at fault with its error.
pub(crate) fn write_layer<W: Write>(
    wheels: &[(&PypiWheel, &Path)],
    site: &str,
    found: &BTreeMap<String, Found>,
    out: W,
) -> std::result::Result<W, (usize, WheelError)> {
    let mut b = tar::Builder::new(out);
    let io_err = |i: usize, entry: &str| {
        let entry = entry.to_owned();
        move |e: io::Error| (i, werr(&entry, e.to_string()))
    };
    // The site directory and its parents.
    let mut end = 0;
    let comps: Vec<&str> = site.split('/').collect();
    for c in &comps {
        end += c.len();
        let p = &site[..end];
        end += 1;
        let (mode, uid, gid) = match found.get(p) {
            Some(Found::Dir { mode, uid, gid }) => (*mode, *uid, *gid),
            None => (0o755, 0, 0),
            Some(_) => {
                return Err((
                    0,
                    werr("", format!("/{p} is not a directory in the Debian system")),
                ))
            }
        };
        append_dir(&mut b, p, mode, uid, gid).map_err(io_err(0, p))?;
    }
    // Paths taken (true: a directory), and directories written, over all wheels.
    let mut taken: BTreeMap<String, bool> = BTreeMap::new();
    let mut made: BTreeSet<String> = BTreeSet::new();
    for (i, (w, file)) in wheels.iter().enumerate() {
        let fail = |e: WheelError| (i, e);
        let f = File::open(file)
            .map_err(|e| fail(werr("", format!("opening {}: {e}", file.display()))))?;
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f))
            .map_err(|e| fail(werr("", format!("not a valid zip file: {e}"))))?;
        let stem = w.file.split('-').take(2).collect::<Vec<_>>().join("-");
        let data_dir = format!("{stem}.data");
        let planned = plan(&mut zip, &data_dir, &mut taken).map_err(fail)?;
        for p in planned {
            // Parents first (a wheel may list no directory entries at all).
            let mut end = 0;
            let comps: Vec<&str> = p.path.split('/').collect();
            for c in &comps[..comps.len() - 1] {
                end += c.len();
                let parent = p.path[..end].to_owned();
                end += 1;
                if made.insert(parent.clone()) {
                    append_dir(&mut b, &format!("{site}/{parent}"), 0o755, 0, 0)
                        .map_err(io_err(i, &parent))?;
                }
            }
            let full = format!("{site}/{}", p.path);
            if p.dir {
                if made.insert(p.path.clone()) {
                    append_dir(&mut b, &full, 0o755, 0, 0).map_err(io_err(i, &p.path))?;
                }
                continue;
            }
            let entry = zip
                .by_index(p.index)
                .map_err(|e| fail(werr(&p.path, e.to_string())))?;
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(p.mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(p.size);
            let mut r = Exact {
                inner: entry,
                left: p.size,
            };
            b.append_data(&mut h, &full, &mut r)
                .map_err(io_err(i, &p.path))?;
            if r.left != 0 {
                return Err(fail(werr(
                    &p.path,
                    "the entry holds fewer bytes than its declared size",
                )));
            }
        }
    }
    b.into_inner().map_err(io_err(0, ""))
}

fn append_dir<W: Write>(
    b: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    uid: u32,
    gid: u32,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode & 0o7777);
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    h.set_mtime(0);
    h.set_size(0);
    b.append_data(&mut h, format!("{path}/"), io::empty())
}

/// Writes the wheel layer's tar into `path` (see [`write_layer`]).
pub(crate) fn write_layer_file(
    wheels: &[(&PypiWheel, &Path)],
    site: &str,
    found: &BTreeMap<String, Found>,
    path: &Path,
) -> std::result::Result<(), (usize, WheelError)> {
    let file = File::create(path)
        .map_err(|e| (0, werr("", format!("creating {}: {e}", path.display()))))?;
    let w = write_layer(wheels, site, found, BufWriter::new(file))?;
    w.into_inner()
        .map_err(|e| (0, werr("", format!("writing {}: {e}", path.display()))))?
        .sync_all()
        .map_err(|e| (0, werr("", format!("writing {}: {e}", path.display()))))?;
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use std::io::Cursor;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use zip::write::SimpleFileOptions;

    use super::*;
    use crate::store::StoreOptions;

    fn wheel(name: &str, file: &str, bytes: &[u8]) -> PypiWheel {
        PypiWheel {
            name: name.into(),
            version: "1.0".into(),
            file: file.into(),
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// A zip with these entries: (name, unix mode or None, contents).
    pub(crate) fn zip_of(entries: &[(&str, Option<u32>, &[u8])]) -> Vec<u8> {
        let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, mode, data) in entries {
            let mut o =
                SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
            if let Some(m) = mode {
                o = o.unix_permissions(*m);
            }
            if name.ends_with('/') {
                z.add_directory(*name, o).unwrap();
            } else {
                z.start_file(*name, o).unwrap();
                z.write_all(data).unwrap();
            }
        }
        z.finish().unwrap().into_inner()
    }

    /// Plans a wheel's entries (`demo-1.0.data` is its data directory).
    fn plan_of(bytes: Vec<u8>) -> std::result::Result<Vec<Planned>, WheelError> {
        let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        plan(&mut zip, "demo-1.0.data", &mut BTreeMap::new())
    }

    /// A layer entry: (path, mode, uid, gid, bytes).
    type Entry = (String, u32, u64, u64, Vec<u8>);

    /// Unpacks `zips` as wheels and lists the layer.
    fn layer_of(
        zips: &[Vec<u8>],
        found: &BTreeMap<String, Found>,
    ) -> std::result::Result<Vec<Entry>, (usize, WheelError)> {
        let dir = tempfile::tempdir().unwrap();
        let mut owned = Vec::new();
        for (i, z) in zips.iter().enumerate() {
            let p = dir.path().join(format!("{i}.whl"));
            std::fs::write(&p, z).unwrap();
            owned.push((wheel("demo", "demo-1.0-py3-none-any.whl", z), p));
        }
        let pairs: Vec<(&PypiWheel, &Path)> = owned.iter().map(|(w, p)| (w, p.as_path())).collect();
        let tar = write_layer(
            &pairs,
            "usr/local/lib/python3.11/dist-packages",
            found,
            Vec::new(),
        )?;
        let mut a = tar::Archive::new(&tar[..]);
        Ok(a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (
                    String::from_utf8(e.path_bytes().into_owned()).unwrap(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    data,
                )
            })
            .collect())
    }

    #[test]
    fn unpacks_a_wheel_below_the_site_directory_with_pips_modes() {
        let z = zip_of(&[
            ("demo/", None, b""),
            ("demo/__init__.py", Some(0o644), b"x = 1\n"),
            ("demo/_native.so", Some(0o775), b"ELF"),
            ("demo/sub/deep.py", None, b"y = 2\n"),
            ("demo-1.0.data/purelib/extra.py", Some(0o644), b"z = 3\n"),
            ("demo-1.0.dist-info/RECORD", Some(0o600), b""),
        ]);
        let mut found = BTreeMap::new();
        found.insert(
            "usr/local".to_owned(),
            Found::Dir {
                mode: 0o2775,
                uid: 0,
                gid: 50,
            },
        );
        let layer = layer_of(&[z], &found).unwrap();
        let site = "usr/local/lib/python3.11/dist-packages";
        let got: Vec<(&str, u32)> = layer.iter().map(|e| (e.0.as_str(), e.1)).collect();
        assert_eq!(
            got,
            [
                ("usr/", 0o755),
                ("usr/local/", 0o2775),
                ("usr/local/lib/", 0o755),
                ("usr/local/lib/python3.11/", 0o755),
                (&format!("{site}/")[..], 0o755),
                (&format!("{site}/demo/")[..], 0o755),
                (&format!("{site}/demo/__init__.py")[..], 0o644),
                (&format!("{site}/demo/_native.so")[..], 0o755),
                (&format!("{site}/demo/sub/")[..], 0o755),
                (&format!("{site}/demo/sub/deep.py")[..], 0o644),
                (&format!("{site}/extra.py")[..], 0o644),
                (&format!("{site}/demo-1.0.dist-info/")[..], 0o755),
                (&format!("{site}/demo-1.0.dist-info/RECORD")[..], 0o644),
            ]
        );
        assert_eq!(
            (layer[1].2, layer[1].3),
            (0, 50),
            "usr/local keeps its owner"
        );
        assert_eq!(layer[6].4, b"x = 1\n");
        assert_eq!(layer[7].4, b"ELF");
    }

    #[test]
    fn refuses_entries_that_climb_out_or_are_not_plain_files() {
        for (name, why) in [
            ("../evil.py", "'..'"),
            ("demo/../../evil.py", "'..'"),
            ("/etc/passwd", "absolute"),
            ("demo//x.py", "normalized"),
            ("demo/./x.py", "normalized"),
            ("demo\\..\\x.py", "backslash"),
        ] {
            let e = plan_of(zip_of(&[(name, None, b"x")])).unwrap_err();
            assert_eq!(e.entry, name);
            assert!(e.reason.contains(why), "{name}: {}", e.reason);
        }
        // A symlink, through the writer's own API.
        let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
        z.add_symlink("demo/link", "/etc/shadow", SimpleFileOptions::default())
            .unwrap();
        let e = plan_of(z.finish().unwrap().into_inner()).unwrap_err();
        assert_eq!(e.entry, "demo/link");
        assert!(e.reason.contains("symlink"), "{}", e.reason);
        // The same path twice, a path below a file, the unsupported data kinds.
        // (The zip crate refuses an archive naming one file twice itself.)
        let e = plan_of(zip_of(&[("a/", None, b""), ("a", None, b"")])).unwrap_err();
        assert!(e.reason.contains("twice"), "{}", e.reason);
        let e = plan_of(zip_of(&[("a", None, b""), ("a/b.py", None, b"")])).unwrap_err();
        assert!(e.reason.contains("is a file"), "{}", e.reason);
        let e = plan_of(zip_of(&[("demo-1.0.data/scripts/run", None, b"")])).unwrap_err();
        assert!(e.reason.contains("not supported"), "{}", e.reason);
        // purelib content colliding with a top-level file.
        let e = plan_of(zip_of(&[
            ("x.py", None, b""),
            ("demo-1.0.data/platlib/x.py", None, b""),
        ]))
        .unwrap_err();
        assert!(e.reason.contains("twice"), "{}", e.reason);
    }

    #[test]
    fn two_wheels_may_not_write_the_same_file() {
        let a = zip_of(&[("shared/x.py", None, b"a")]);
        let b = zip_of(&[("shared/y.py", None, b"b"), ("shared/x.py", None, b"b")]);
        let (i, e) = layer_of(&[a, b], &BTreeMap::new()).unwrap_err();
        assert_eq!(i, 1);
        assert!(e.reason.contains("twice"), "{e}");
    }

    #[test]
    fn two_wheels_may_share_a_directory_which_is_written_once() {
        let a = zip_of(&[("ns/", None, b""), ("ns/a.py", None, b"a")]);
        let b = zip_of(&[("ns/b.py", None, b"b"), ("ns/", None, b"")]);
        let layer = layer_of(&[a, b], &BTreeMap::new()).unwrap();
        let site = "usr/local/lib/python3.11/dist-packages";
        let names: Vec<&str> = layer.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names
                .iter()
                .filter(|n| **n == format!("{site}/ns/"))
                .count(),
            1,
            "{names:?}"
        );
        assert!(names.contains(&&format!("{site}/ns/b.py")[..]), "{names:?}");
    }

    #[test]
    fn refuses_a_site_directory_below_a_symlink() {
        let mut found = BTreeMap::new();
        found.insert(
            "usr/local/lib".to_owned(),
            Found::Symlink("/elsewhere".into()),
        );
        let (_, e) = layer_of(&[zip_of(&[("a.py", None, b"")])], &found).unwrap_err();
        assert!(e.reason.contains("not a directory"), "{e}");
    }

    fn dir() -> Found {
        Found::Dir {
            mode: 0o755,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn picks_the_python_every_wheel_fits() {
        let arch = std::env::consts::ARCH;
        let mut found = BTreeMap::new();
        for p in [
            "usr/lib/python3.11",
            "usr/lib/python3",
            "usr/lib/python3.12",
        ] {
            found.insert(p.to_owned(), dir());
        }
        found.insert("usr/lib/python3.13".to_owned(), Found::Other);
        assert_eq!(pythons(&found), [(3, 11), (3, 12)]);
        let w = |file: &str| PypiWheel {
            name: "demo".into(),
            version: "1.0".into(),
            file: file.into(),
            sha256: "0".repeat(64),
        };
        let cp311 = w(&format!(
            "demo-1.0-cp311-cp311-manylinux_2_17_{arch}.manylinux2014_{arch}.whl"
        ));
        let pure = w("demo-1.0-py2.py3-none-any.whl");
        let abi3 = w(&format!("demo-1.0-cp38-abi3-manylinux_2_28_{arch}.whl"));
        assert_eq!(
            choose_python(&found, std::slice::from_ref(&pure)),
            Ok((3, 12))
        );
        assert_eq!(
            choose_python(&found, std::slice::from_ref(&abi3)),
            Ok((3, 12))
        );
        assert_eq!(
            choose_python(&found, &[pure, cp311.clone(), abi3]),
            Ok((3, 11))
        );
        let cp310 = w(&format!("demo-1.0-cp310-cp310-manylinux_2_17_{arch}.whl"));
        let (i, why) = choose_python(&found, &[cp311.clone(), cp310]).unwrap_err();
        assert_eq!(i, 1);
        assert!(why.contains("cp310"), "{why}");
        let musl = w(&format!("demo-1.0-cp311-cp311-musllinux_1_2_{arch}.whl"));
        let (_, why) = choose_python(&found, &[musl]).unwrap_err();
        assert!(why.contains("platform"), "{why}");
        let (_, why) = choose_python(&BTreeMap::new(), &[cp311]).unwrap_err();
        assert!(why.contains("add python3"), "{why}");
    }

    #[test]
    fn the_scan_wants_pythons_and_the_site_directorys_parents() {
        for p in [
            "usr",
            "usr/local",
            "usr/local/lib",
            "usr/lib/python3.11",
            "usr/local/lib/python3.11",
            "usr/local/lib/python3.11/dist-packages",
        ] {
            assert!(wanted_by_wheels(p), "{p}");
        }
        for p in [
            "usr/lib",
            "usr/lib/python3",
            "usr/lib/python3.11/os.py",
            "usr/local/lib/python3.11/site-packages",
            "usr/local/lib/python3.x",
            "etc",
        ] {
            assert!(!wanted_by_wheels(p), "{p}");
        }
    }

    /// A one-thread HTTP/1.0 server: `/simple/demo/` answers `index` (JSON),
    /// `/files/demo-1.0-py3-none-any.whl` answers `wheel`. Counts requests.
    pub(crate) fn serve(index: String, wheel: Vec<u8>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let path = line.split(' ').nth(1).unwrap_or("");
                let (status, ctype, body) = match path {
                    "/simple/demo/" => (
                        "200 OK",
                        "application/vnd.pypi.simple.v1+json",
                        index.clone().into_bytes(),
                    ),
                    "/files/demo-1.0-py3-none-any.whl" => {
                        ("200 OK", "application/octet-stream", wheel.clone())
                    }
                    _ => ("404 Not Found", "text/plain", b"no".to_vec()),
                };
                let head = format!(
                    "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body);
            }
        });
        (format!("http://{addr}/simple"), hits)
    }

    pub(crate) fn index_json(sha: Option<&str>) -> String {
        let hashes = sha.map_or("{}".to_owned(), |s| format!("{{\"sha256\": \"{s}\"}}"));
        format!(
            r#"{{"meta": {{"api-version": "1.1"}}, "name": "demo", "files": [
                {{"filename": "demo-1.0-py2-none-any.whl", "url": "../../files/x", "hashes": {{}}}},
                {{"filename": "demo-1.0-py3-none-any.whl", "url": "../../files/demo-1.0-py3-none-any.whl", "hashes": {hashes}}}]}}"#
        )
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("data"), StoreOptions::default()).unwrap();
        (dir, store)
    }

    fn fetch(store: &Store, w: &PypiWheel, index: &str) -> Result<Vec<PathBuf>> {
        let staging = tempfile::tempdir_in(store.tmp_dir()).unwrap();
        fetch_all(
            store,
            Path::new("r.toml"),
            std::slice::from_ref(w),
            index,
            staging.path(),
            &|_| {},
        )
    }

    #[test]
    fn downloads_verifies_and_caches_a_wheel_in_the_store() {
        let bytes = zip_of(&[("demo/__init__.py", None, b"")]);
        let w = wheel("Demo", "demo-1.0-py3-none-any.whl", &bytes);
        let (index, hits) = serve(index_json(Some(&w.sha256)), bytes.clone());
        let (_d, store) = store();
        let paths = fetch(&store, &w, &index).unwrap();
        assert_eq!(paths, [store.blob_path(&w.digest())]);
        assert_eq!(std::fs::read(&paths[0]).unwrap(), bytes);
        assert_eq!(
            hits.load(Ordering::SeqCst),
            2,
            "the index page and the file"
        );
        // A second fetch is served by the store.
        assert_eq!(fetch(&store, &w, &index).unwrap(), paths);
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        // A damaged blob is downloaded again.
        std::fs::write(&paths[0], b"damaged").unwrap();
        fetch(&store, &w, &index).unwrap();
        assert_eq!(std::fs::read(&paths[0]).unwrap(), bytes);
        assert_eq!(hits.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_wheel_whose_sha256_differs_from_the_pin_is_refused_and_not_stored() {
        let bytes = zip_of(&[("demo/__init__.py", None, b"")]);
        let mut w = wheel("demo", "demo-1.0-py3-none-any.whl", &bytes);
        w.sha256 = hex::encode(Sha256::digest(b"something else"));
        // The index lists no hash: the download itself is checked.
        let (index, _) = serve(index_json(None), bytes.clone());
        let (_d, store) = store();
        match fetch(&store, &w, &index) {
            Err(ImageError::DigestMismatch {
                what,
                digest,
                actual,
            }) => {
                assert!(what.contains("demo-1.0-py3-none-any.whl"), "{what}");
                assert_eq!(digest, w.digest());
                assert_eq!(actual.hex(), hex::encode(Sha256::digest(&bytes)));
            }
            other => panic!("{other:?}"),
        }
        assert!(!store.blob_path(&w.digest()).exists());
        let actual = Digest::from_sha256_bytes(&Sha256::digest(&bytes).into());
        assert!(!store.blob_path(&actual).exists(), "nothing is stored");
        // The index lists another hash: refused before downloading.
        let (index, hits) = serve(
            index_json(Some(&hex::encode(Sha256::digest(&bytes)))),
            bytes,
        );
        match fetch(&store, &w, &index) {
            Err(e @ ImageError::DigestMismatch { .. }) => {
                assert!(e.to_string().contains("as the index lists it"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1, "only the index page");
        // A file the index does not list.
        let mut missing = w.clone();
        missing.file = "demo-1.0-py3-none-manylinux_2_17_x86_64.whl".into();
        assert!(matches!(
            fetch(&store, &missing, &index),
            Err(ImageError::RemoteNotFound { .. })
        ));
    }

    /// The real thing: DuckDB's wheel for CPython 3.11 from PyPI (20 MB), as
    /// catalog/images/duckdb.toml pins it.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn downloads_the_duckdb_wheel_from_pypi() {
        let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../catalog/images/duckdb.toml");
        let recipe = crate::build::Recipe::load(&recipe).unwrap();
        let w = &recipe.pypi()[0];
        let (_d, store) = store();
        let paths = fetch(&store, w, &index_url(None)).unwrap();
        assert_eq!(hash_file(&paths[0]).unwrap(), w.digest());
        let mut found = BTreeMap::new();
        found.insert("usr/lib/python3.11".to_owned(), dir());
        assert_eq!(choose_python(&found, recipe.pypi()), Ok((3, 11)));
        let tar = write_layer(
            &[(w, paths[0].as_path())],
            "usr/local/lib/python3.11/dist-packages",
            &found,
            Vec::new(),
        )
        .unwrap();
        let names: Vec<String> = tar::Archive::new(&tar[..])
            .entries()
            .unwrap()
            .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
            .collect();
        assert!(
            names.iter().any(
                |n| n.starts_with("usr/local/lib/python3.11/dist-packages/duckdb/")
                    && n.ends_with(".so")
            ),
            "{names:?}"
        );
    }
}
