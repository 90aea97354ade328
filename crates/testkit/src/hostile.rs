//! Hostile inputs: tar streams with entries safe builders refuse to write (`..`,
//! absolute names, links anywhere, whiteouts, lying sizes, huge extension
//! headers), compression bombs, and helpers that wrap such layers into OCI
//! layouts, OCI archives and docker-save tarballs, or tamper with a layout.

use std::io::Write;
use std::path::{Path, PathBuf};

use runbox_core::Digest;
use runbox_image::writer::{self, ImageSpec, LayerCompression, LayoutWriter, WrittenImage};
use runbox_image::ImageConfig;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// Tar entry type bytes.
pub mod kind {
    pub const FILE: u8 = b'0';
    pub const HARDLINK: u8 = b'1';
    pub const SYMLINK: u8 = b'2';
    pub const CHAR: u8 = b'3';
    pub const BLOCK: u8 = b'4';
    pub const DIR: u8 = b'5';
    pub const FIFO: u8 = b'6';
    pub const PAX: u8 = b'x';
    pub const GNU_LONGNAME: u8 = b'L';
    pub const GNU_SPARSE: u8 = b'S';
}

/// Writes raw ustar headers, so a test can put anything in a name or link.
/// Names over 100 bytes get a GNU long-name entry first.
#[derive(Debug, Default, Clone)]
pub struct TarBuilder {
    buf: Vec<u8>,
}

/// One raw entry.
#[derive(Debug, Clone)]
pub struct RawEntry<'a> {
    pub name: &'a [u8],
    pub kind: u8,
    pub link: &'a [u8],
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Size written in the header; `None`: the data's length.
    pub claimed_size: Option<u64>,
    pub data: &'a [u8],
    pub dev: (u32, u32),
}

impl Default for RawEntry<'_> {
    fn default() -> Self {
        RawEntry {
            name: b"",
            kind: kind::FILE,
            link: b"",
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            claimed_size: None,
            data: b"",
            dev: (0, 0),
        }
    }
}

fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    if value < 8u64.pow(width as u32) {
        let s = format!("{value:0width$o}");
        field[..width].copy_from_slice(s.as_bytes());
        field[width] = 0;
    } else {
        // GNU base-256 for values that do not fit.
        field.fill(0);
        let bytes = value.to_be_bytes();
        let n = field.len();
        let k = (n - 1).min(8);
        field[n - k..].copy_from_slice(&bytes[8 - k..]);
        field[0] |= 0x80;
    }
}

/// Builds one 512-byte header for `e` (names and links cut at 100 bytes; the
/// size field says `size`).
pub fn header(e: &RawEntry<'_>, size: u64) -> [u8; 512] {
    let RawEntry {
        name,
        kind,
        link,
        mode,
        uid,
        gid,
        mtime,
        dev,
        ..
    } = *e;
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], mode.into());
    octal(&mut h[108..116], uid);
    octal(&mut h[116..124], gid);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = kind;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], dev.0.into());
    octal(&mut h[337..345], dev.1.into());
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder::default()
    }

    fn pad(&mut self) {
        let rem = self.buf.len() % 512;
        if rem != 0 {
            self.buf.resize(self.buf.len() + 512 - rem, 0);
        }
    }

    /// Appends raw bytes (a hand-made header, garbage, ...).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// Appends one entry exactly as described.
    pub fn entry(&mut self, e: RawEntry<'_>) -> &mut Self {
        if e.name.len() > 100 {
            let mut long = e.name.to_vec();
            long.push(0);
            let h = header(
                &RawEntry {
                    name: b"././@LongLink",
                    kind: kind::GNU_LONGNAME,
                    link: b"",
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    dev: (0, 0),
                    ..RawEntry::default()
                },
                long.len() as u64,
            );
            self.buf.extend_from_slice(&h);
            self.buf.extend_from_slice(&long);
            self.pad();
        }
        if e.link.len() > 100 {
            let mut long = e.link.to_vec();
            long.push(0);
            let h = header(
                &RawEntry {
                    name: b"././@LongLink",
                    kind: b'K',
                    link: b"",
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    dev: (0, 0),
                    ..RawEntry::default()
                },
                long.len() as u64,
            );
            self.buf.extend_from_slice(&h);
            self.buf.extend_from_slice(&long);
            self.pad();
        }
        let size = e.claimed_size.unwrap_or(e.data.len() as u64);
        let h = header(
            &RawEntry {
                name: e.name,
                kind: e.kind,
                link: e.link,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                mtime: e.mtime,
                dev: e.dev,
                ..RawEntry::default()
            },
            size,
        );
        self.buf.extend_from_slice(&h);
        self.buf.extend_from_slice(e.data);
        self.pad();
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(RawEntry {
            name: name.as_bytes(),
            data,
            ..RawEntry::default()
        })
    }

    pub fn file_with(
        &mut self,
        name: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        self.entry(RawEntry {
            name: name.as_bytes(),
            data,
            mode,
            uid,
            gid,
            ..RawEntry::default()
        })
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(RawEntry {
            name: name.as_bytes(),
            kind: kind::DIR,
            mode: 0o755,
            ..RawEntry::default()
        })
    }

    pub fn dir_with(&mut self, name: &str, mode: u32, uid: u64, gid: u64) -> &mut Self {
        self.entry(RawEntry {
            name: name.as_bytes(),
            kind: kind::DIR,
            mode,
            uid,
            gid,
            ..RawEntry::default()
        })
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(RawEntry {
            name: name.as_bytes(),
            kind: kind::SYMLINK,
            link: target.as_bytes(),
            mode: 0o777,
            ..RawEntry::default()
        })
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(RawEntry {
            name: name.as_bytes(),
            kind: kind::HARDLINK,
            link: target.as_bytes(),
            ..RawEntry::default()
        })
    }

    pub fn fifo(&mut self, name: &str) -> &mut Self {
        self.entry(RawEntry {
            name: name.as_bytes(),
            kind: kind::FIFO,
            ..RawEntry::default()
        })
    }

    pub fn char_device(&mut self, name: &str, major: u32, minor: u32) -> &mut Self {
        self.entry(RawEntry {
            name: name.as_bytes(),
            kind: kind::CHAR,
            dev: (major, minor),
            ..RawEntry::default()
        })
    }

    /// A whiteout hiding `path` of lower layers: `dir/.wh.name`.
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let name = match path.rsplit_once('/') {
            Some((dir, base)) => format!("{dir}/.wh.{base}"),
            None => format!(".wh.{path}"),
        };
        self.file(&name, b"")
    }

    /// Marks `dir` opaque: `dir/.wh..wh..opq`.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"")
    }

    /// A pax extended header applying to the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            // "<len> <key>=<value>\n", where len counts itself.
            let body = k.len() + v.len() + 3;
            let mut len = body + 1;
            while len.to_string().len() + body != len {
                len = len.to_string().len() + body;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        self.entry(RawEntry {
            name: b"PaxHeaders/x",
            kind: kind::PAX,
            data: &data,
            ..RawEntry::default()
        })
    }

    /// A header claiming `claimed_size` bytes with `data` (possibly fewer) after it.
    pub fn lying_entry(
        &mut self,
        name: &str,
        kind: u8,
        claimed_size: u64,
        data: &[u8],
    ) -> &mut Self {
        self.entry(RawEntry {
            name: name.as_bytes(),
            kind,
            claimed_size: Some(claimed_size),
            data,
            ..RawEntry::default()
        })
    }

    /// The tar so far plus the two zero blocks that end an archive.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = self.buf.clone();
        out.resize(out.len() + 1024, 0);
        out
    }

    /// The tar so far, without an end marker.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// sha256 of bytes as a [`Digest`].
pub fn sha256(bytes: &[u8]) -> Digest {
    Digest::from_sha256_bytes(&Sha256::digest(bytes).into())
}

/// A gzip-compressed tar holding one file of `uncompressed` zero bytes: tiny
/// compressed, huge uncompressed. Returns the blob and the tar's diff_id.
pub fn gzip_bomb(uncompressed: u64) -> (Vec<u8>, Digest) {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut hasher = Sha256::new();
    let h = header(
        &RawEntry {
            name: b"zeros",
            kind: kind::FILE,
            link: b"",
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            dev: (0, 0),
            ..RawEntry::default()
        },
        uncompressed,
    );
    let mut feed = |b: &[u8]| {
        hasher.update(b);
        enc.write_all(b).expect("compressing");
    };
    feed(&h);
    let chunk = vec![0u8; 1 << 20];
    let mut left = uncompressed.div_ceil(512) * 512 + 1024;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        feed(&chunk[..n]);
        left -= n as u64;
    }
    let diff_id = Digest::from_sha256_bytes(&hasher.finalize().into());
    (enc.finish().expect("compressing"), diff_id)
}

/// An OCI layout at `dir` whose layers are these raw tar streams, compressed as
/// asked; diff_ids are computed honestly.
pub fn layout_with_layers(
    dir: &Path,
    layers: &[Vec<u8>],
    compression: LayerCompression,
) -> WrittenImage {
    layout_with_layers_and_spec(dir, layers, compression, &ImageSpec::default())
}

/// Like [`layout_with_layers`] with a given image spec (config, ref name).
pub fn layout_with_layers_and_spec(
    dir: &Path,
    layers: &[Vec<u8>],
    compression: LayerCompression,
    spec: &ImageSpec,
) -> WrittenImage {
    let mut w = LayoutWriter::create(dir).expect("creating layout");
    for l in layers {
        w.add_layer_tar(l.as_slice(), compression)
            .expect("writing layer");
    }
    w.finish(spec).expect("finishing layout")
}

/// A layout whose only layer is this already-compressed blob, with this diff_id.
pub fn layout_with_blob_layer(
    dir: &Path,
    blob: &[u8],
    media_type: &str,
    diff_id: Digest,
) -> WrittenImage {
    let mut w = LayoutWriter::create(dir).expect("creating layout");
    let (digest, size) = w.add_blob(blob).expect("writing blob");
    w.push_layer(writer::WrittenLayer {
        digest,
        size,
        diff_id,
        media_type: media_type.to_owned(),
    });
    w.finish(&ImageSpec::default()).expect("finishing layout")
}

/// Packs a layout into an OCI archive tarball.
pub fn oci_archive(layout: &Path, out: &Path, gzip: bool) -> PathBuf {
    writer::write_oci_archive(layout, out, gzip).expect("writing OCI archive");
    out.to_owned()
}

/// Writes a legacy `docker save` tarball (no OCI layout inside): `manifest.json`,
/// `<config-hex>.json`, `<id>/layer.tar` per layer (uncompressed). A layer equal
/// to an earlier one is stored as a symlink to the earlier `layer.tar`, as docker does.
pub fn docker_save(
    out: &Path,
    layers: &[Vec<u8>],
    config: &ImageConfig,
    repo_tags: &[&str],
) -> PathBuf {
    let (os, arch) = runbox_image::host_platform();
    let config_json = json!({
        "architecture": arch,
        "os": os,
        "config": {
            "Env": config.env,
            "Cmd": config.cmd,
            "Entrypoint": config.entrypoint,
            "WorkingDir": config.working_dir.clone().unwrap_or_default(),
            "User": config.user.clone().unwrap_or_default(),
        },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| sha256(l).to_string()).collect::<Vec<_>>() },
    });
    let config_bytes = serde_json::to_vec(&config_json).expect("json");
    let config_name = format!("{}.json", sha256(&config_bytes).hex());
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).expect("tar");
    };
    add(&mut b, &config_name, &config_bytes);
    let mut layer_names: Vec<String> = Vec::new();
    let mut seen: Vec<(Digest, String)> = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let id = sha256(format!("layer{i}").as_bytes()).hex().to_owned();
        let d = sha256(l);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, format!("{id}/"), std::io::empty())
            .expect("tar");
        let name = format!("{id}/layer.tar");
        if let Some((_, earlier)) = seen.iter().find(|(x, _)| *x == d) {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, &name, format!("../{earlier}"))
                .expect("tar");
        } else {
            add(&mut b, &name, l);
            seen.push((d, name.clone()));
        }
        add(&mut b, &format!("{id}/VERSION"), b"1.0");
        layer_names.push(name);
    }
    let manifest = json!([{ "Config": config_name, "RepoTags": repo_tags, "Layers": layer_names }]);
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("json"),
    );
    let bytes = b.into_inner().expect("tar");
    std::fs::write(out, bytes).expect("writing docker-save tarball");
    out.to_owned()
}

/// Edits a layout's index, manifest and config as JSON and rewrites the blobs and
/// index.json consistently (so only the intended lie remains).
#[derive(Debug)]
pub struct LayoutEditor {
    pub dir: PathBuf,
    pub index: Value,
    pub manifest: Value,
    pub config: Value,
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

impl LayoutEditor {
    /// Loads the first manifest of the layout and its config.
    pub fn open(dir: &Path) -> LayoutEditor {
        let read = |p: PathBuf| -> Value {
            serde_json::from_slice(&std::fs::read(&p).expect("reading")).expect("json")
        };
        let index = read(dir.join("index.json"));
        let manifest = read(blob_path(
            dir,
            index["manifests"][0]["digest"].as_str().expect("digest"),
        ));
        let config = read(blob_path(
            dir,
            manifest["config"]["digest"].as_str().expect("digest"),
        ));
        LayoutEditor {
            dir: dir.to_owned(),
            index,
            manifest,
            config,
        }
    }

    fn write_blob(&self, bytes: &[u8]) -> (String, u64) {
        let d = sha256(bytes);
        std::fs::write(blob_path(&self.dir, d.hex()), bytes).expect("writing blob");
        (d.to_string(), bytes.len() as u64)
    }

    /// Writes config (unless `raw_config` replaces it), manifest and index.json.
    /// Returns the new manifest digest.
    pub fn save_with_raw_config(mut self, raw_config: Option<&[u8]>) -> Digest {
        let config_bytes = match raw_config {
            Some(b) => b.to_vec(),
            None => serde_json::to_vec(&self.config).expect("json"),
        };
        let (cd, cs) = self.write_blob(&config_bytes);
        self.manifest["config"]["digest"] = json!(cd);
        self.manifest["config"]["size"] = json!(cs);
        let (md, ms) = self.write_blob(&serde_json::to_vec(&self.manifest).expect("json"));
        self.index["manifests"][0]["digest"] = json!(md);
        self.index["manifests"][0]["size"] = json!(ms);
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&self.index).expect("json"),
        )
        .expect("writing index");
        md.parse().expect("digest")
    }

    pub fn save(self) -> Digest {
        self.save_with_raw_config(None)
    }
}

/// Flips one byte in the middle of a blob, keeping its size.
pub fn corrupt_blob(layout: &Path, digest: &Digest) {
    let p = blob_path(layout, digest.hex());
    let mut bytes = std::fs::read(&p).expect("reading blob");
    let i = bytes.len() / 2;
    bytes[i] ^= 0xff;
    std::fs::write(&p, bytes).expect("writing blob");
}

/// Replaces a blob file with a symlink to `target`.
pub fn symlink_blob(layout: &Path, digest: &Digest, target: &Path) {
    let p = blob_path(layout, digest.hex());
    std::fs::remove_file(&p).expect("removing blob");
    std::os::unix::fs::symlink(target, &p).expect("symlinking blob");
}

/// Every path under `dir` (relative, sorted), for before/after comparisons.
pub fn snapshot_tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.push(
                p.strip_prefix(dir)
                    .expect("prefix")
                    .to_string_lossy()
                    .into_owned(),
            );
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Makes the manifest lie about layer `index`'s size (everything else stays
/// consistent). Returns the new manifest digest.
pub fn set_layer_size(layout: &Path, index: usize, size: u64) -> Digest {
    let mut ed = LayoutEditor::open(layout);
    ed.manifest["layers"][index]["size"] = json!(size);
    ed.save()
}

/// Makes the config claim `diff_id` for layer `index`. Returns the new manifest digest.
pub fn set_diff_id(layout: &Path, index: usize, diff_id: &Digest) -> Digest {
    let mut ed = LayoutEditor::open(layout);
    ed.config["rootfs"]["diff_ids"][index] = json!(diff_id.to_string());
    ed.save()
}
