//! [`Recipe`]: a TOML description of an image built from Debian packages plus
//! added files (the format is documented in `docs/recipes.md`). Everything is
//! validated when the recipe is loaded, and `from` files are read then, so the
//! digest and the build see the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use runbox_core::{Digest, ImageRef};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{ImageError, Result};
use crate::record::ImageConfig;

/// The label a built image carries: the [`Recipe::digest`] it was built from.
pub const RECIPE_DIGEST_LABEL: &str = "org.runbox.recipe.digest";

/// Part of every recipe digest. Bump it when the same recipe would build a
/// different image (other mmdebstrap options, layer layout), so caches rebuild.
const BUILD_FORMAT: &str = "runbox-build/1";

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Largest recipe file.
pub const MAX_RECIPE_BYTES: u64 = MIB;
/// Largest added file (`text`, `base64` or `from`). Added files are scripts and
/// small data; large content belongs in a package.
pub const MAX_FILE_BYTES: u64 = 16 * MIB;
/// Largest total of all added files.
pub const MAX_FILES_TOTAL_BYTES: u64 = 64 * MIB;
/// Most added files.
pub const MAX_FILES: usize = 1000;

const MAX_PATH_LEN: usize = 4096;

/// An mmdebstrap variant: which packages form the base system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// `Essential: yes` packages only (the smallest that runs `sh`).
    Essential,
    /// Essential plus apt.
    Apt,
    /// Essential, apt and `Priority: required`.
    Minbase,
    /// `Priority: required` (debootstrap's minbase).
    Required,
    /// Required and `Priority: important`.
    Important,
    /// Important and `Priority: standard`.
    Standard,
}

impl Variant {
    /// The name mmdebstrap's `--variant` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Essential => "essential",
            Variant::Apt => "apt",
            Variant::Minbase => "minbase",
            Variant::Required => "required",
            Variant::Important => "important",
            Variant::Standard => "standard",
        }
    }
}

/// The `[debian]` table: what mmdebstrap installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DebianSpec {
    pub suite: String,
    pub variant: Variant,
    /// Extra packages (`--include`), sorted, without duplicates.
    pub packages: Vec<String>,
    /// The mirror URL; `None`: mmdebstrap's default (deb.debian.org, plus the
    /// updates and security archives for a stable suite).
    pub mirror: Option<String>,
}

/// One `[[files]]` entry: a file added on top of the Debian system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeFile {
    /// Absolute, normalized path in the image.
    pub path: String,
    pub mode: u32,
    pub contents: Vec<u8>,
}

/// One `[[pypi]]` entry: a wheel from the Python Package Index, pinned by its
/// file name and sha256, unpacked into the image's
/// `/usr/local/lib/python3.X/dist-packages` (see [`crate::build`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PypiWheel {
    /// The project's name as given (`duckdb`).
    pub name: String,
    pub version: String,
    /// The wheel's file name, tags included
    /// (`duckdb-1.2.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl`).
    pub file: String,
    /// Lowercase hex.
    pub sha256: String,
}

impl PypiWheel {
    /// The name as the simple index spells it (PEP 503: lowercase, runs of
    /// `-`, `_` and `.` as one `-`).
    pub fn normalized_name(&self) -> String {
        normalize_project(&self.name)
    }

    /// The sha256 as a [`Digest`].
    pub fn digest(&self) -> Digest {
        Digest::from_hex(&self.sha256).expect("validated when the recipe loaded")
    }

    /// The file name's tags: (python tags, abi tags, platform tags), each
    /// split at `.` (`py2.py3` is two python tags).
    pub fn tags(&self) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
        let stem = self.file.strip_suffix(".whl").unwrap_or(&self.file);
        let parts: Vec<&str> = stem.split('-').collect();
        let n = parts.len();
        if n < 5 {
            return (Vec::new(), Vec::new(), Vec::new());
        }
        (
            parts[n - 3].split('.').collect(),
            parts[n - 2].split('.').collect(),
            parts[n - 1].split('.').collect(),
        )
    }
}

/// PEP 503 normalization: lowercase, every run of `-`, `_`, `.` becomes `-`.
pub(crate) fn normalize_project(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// A parsed and validated image recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    path: PathBuf,
    name: String,
    debian: DebianSpec,
    files: Vec<RecipeFile>,
    pypi: Vec<PypiWheel>,
    config: ImageConfig,
    digest: Digest,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    name: String,
    #[serde(default)]
    debian: RawDebian,
    #[serde(default)]
    files: Vec<RawFile>,
    #[serde(default)]
    pypi: Vec<RawPypi>,
    #[serde(default)]
    config: RawConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPypi {
    name: String,
    version: String,
    file: String,
    sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDebian {
    #[serde(default = "default_suite")]
    suite: String,
    #[serde(default = "default_variant")]
    variant: Variant,
    #[serde(default)]
    packages: Vec<String>,
    mirror: Option<String>,
}

impl Default for RawDebian {
    fn default() -> Self {
        RawDebian {
            suite: default_suite(),
            variant: default_variant(),
            packages: Vec::new(),
            mirror: None,
        }
    }
}

fn default_suite() -> String {
    "bookworm".to_owned()
}

fn default_variant() -> Variant {
    Variant::Essential
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: String,
    mode: Option<u32>,
    text: Option<String>,
    base64: Option<String>,
    from: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Vec<String>,
    working_dir: Option<String>,
    user: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// The canonical form the digest is computed over: the parsed recipe with
/// defaults filled in and file contents replaced by their sha256.
#[derive(Serialize)]
struct Canonical<'a> {
    format: &'static str,
    name: &'a str,
    debian: &'a DebianSpec,
    files: Vec<CanonicalFile<'a>>,
    /// Left out when empty, so recipes without wheels keep the digests they had
    /// before wheels existed.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pypi: &'a [PypiWheel],
    config: &'a ImageConfig,
}

#[derive(Serialize)]
struct CanonicalFile<'a> {
    path: &'a str,
    mode: u32,
    sha256: String,
}

impl Recipe {
    /// Reads and validates the recipe at `path`. `from` files are read relative
    /// to its directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Recipe> {
        let path = path.as_ref();
        let unreadable = |source| ImageError::RecipeUnreadable {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(unreadable)?;
        let mut bytes = Vec::new();
        file.take(MAX_RECIPE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        if bytes.len() as u64 > MAX_RECIPE_BYTES {
            return Err(invalid(
                path,
                "",
                format!("the file is larger than {MAX_RECIPE_BYTES} bytes"),
            ));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| invalid(path, "", "the file is not UTF-8 text".into()))?;
        Recipe::parse(&text, path)
    }

    /// Parses and validates recipe text. `path` names the recipe in errors, and
    /// `from` files are read relative to its directory.
    pub fn parse(text: &str, path: &Path) -> Result<Recipe> {
        let raw = parse_toml(text, path)?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        let name = check_name(path, &raw.name)?;
        let debian = check_debian(path, raw.debian)?;
        let files = check_files(path, base_dir, raw.files)?;
        let pypi = check_pypi(path, raw.pypi)?;
        let config = check_config(path, raw.config)?;
        let mut recipe = Recipe {
            path: path.to_owned(),
            name,
            debian,
            files,
            pypi,
            config,
            digest: Digest::from_sha256_bytes(&[0; 32]),
        };
        recipe.digest = recipe.compute_digest();
        Ok(recipe)
    }

    /// The recipe file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `name:tag` the built image gets (tag `latest` unless given).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn debian(&self) -> &DebianSpec {
        &self.debian
    }

    pub fn files(&self) -> &[RecipeFile] {
        &self.files
    }

    /// The `[[pypi]]` wheels, in the recipe's order.
    pub fn pypi(&self) -> &[PypiWheel] {
        &self.pypi
    }

    /// The image config as the recipe gives it (without the digest label).
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// sha256 over a canonical form of the parsed recipe (defaults filled in,
    /// packages sorted), the bytes of every added file, the pinned wheels (name,
    /// version, file name, sha256), and the build format version. Whitespace, comments and how a file's content is written
    /// (`text`, `base64` or `from`) do not change it.
    pub fn digest(&self) -> Digest {
        self.digest.clone()
    }

    fn compute_digest(&self) -> Digest {
        let canonical = Canonical {
            format: BUILD_FORMAT,
            name: &self.name,
            debian: &self.debian,
            files: self
                .files
                .iter()
                .map(|f| CanonicalFile {
                    path: &f.path,
                    mode: f.mode,
                    sha256: hex::encode(Sha256::digest(&f.contents)),
                })
                .collect(),
            pypi: &self.pypi,
            config: &self.config,
        };
        let bytes = serde_json::to_vec(&canonical).expect("plain data serializes");
        Digest::from_sha256_bytes(&Sha256::digest(&bytes).into())
    }
}

fn invalid(path: &Path, field: &str, reason: String) -> ImageError {
    ImageError::RecipeInvalid {
        path: path.to_owned(),
        field: field.to_owned(),
        reason,
    }
}

/// Deserializes the TOML, naming the field (`files[1].mode`) and the line of
/// any syntax, type or unknown-field error.
fn parse_toml(text: &str, path: &Path) -> Result<RawRecipe> {
    let located = |e: &toml::de::Error| {
        let mut reason = e.message().trim_end().to_owned();
        if let Some(span) = e.span() {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            reason = format!("{reason} (line {line}, column {column})");
        }
        reason
    };
    let de = toml::Deserializer::parse(text).map_err(|e| invalid(path, "", located(&e)))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        invalid(path, &field, located(e.inner()))
    })
}

fn check_name(path: &Path, name: &str) -> Result<String> {
    let r = ImageRef::parse(name).map_err(|e| invalid(path, "name", e.to_string()))?;
    if r.digest.is_some() {
        return Err(invalid(
            path,
            "name",
            format!("{name:?}: give name[:tag], without a digest"),
        ));
    }
    let with_tag = r
        .name_with_tag()
        .ok_or_else(|| invalid(path, "name", format!("{name:?} has no name")))?;
    Ok(with_tag)
}

fn no_nul(path: &Path, field: &str, s: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(invalid(path, field, "contains a NUL character".into()));
    }
    Ok(())
}

/// Debian package names: `[a-z0-9][a-z0-9+.-]*`.
fn is_package_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+.-".contains(&c))
}

/// Suite and code names: `[a-z0-9][a-z0-9.-]*` (`bookworm`, `stable`,
/// `bookworm-backports`).
fn is_suite_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b".-".contains(&c))
}

fn check_debian(path: &Path, raw: RawDebian) -> Result<DebianSpec> {
    if !is_suite_name(&raw.suite) {
        return Err(invalid(
            path,
            "debian.suite",
            format!(
                "{:?} is not a suite name (lowercase letters, digits, '.', '-')",
                raw.suite
            ),
        ));
    }
    let mut packages = BTreeSet::new();
    for (i, p) in raw.packages.iter().enumerate() {
        if !is_package_name(p) {
            return Err(invalid(
                path,
                &format!("debian.packages[{i}]"),
                format!("{p:?} is not a Debian package name ([a-z0-9][a-z0-9+.-]*)"),
            ));
        }
        packages.insert(p.clone());
    }
    if let Some(m) = &raw.mirror {
        let ok_scheme = m.starts_with("http://") || m.starts_with("https://");
        let ok_chars = m.bytes().all(|c| c.is_ascii_graphic());
        if !ok_scheme || !ok_chars || m.len() > 2048 {
            return Err(invalid(
                path,
                "debian.mirror",
                format!("{m:?} is not an http:// or https:// URL"),
            ));
        }
    }
    Ok(DebianSpec {
        suite: raw.suite,
        variant: raw.variant,
        packages: packages.into_iter().collect(),
        mirror: raw.mirror,
    })
}

/// Checks an image path: absolute, normalized (no empty, `.` or `..`
/// components, no trailing `/`), not the root, not under /proc, /sys or /dev
/// (the sandbox mounts its own there).
fn check_image_path(p: &str) -> std::result::Result<(), String> {
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!("{p:?} is not an absolute path"));
    };
    if rest.is_empty() {
        return Err("\"/\" is the root directory, not a file".into());
    }
    if p.len() > MAX_PATH_LEN {
        return Err(format!("the path is longer than {MAX_PATH_LEN} bytes"));
    }
    if p.contains('\0') {
        return Err("the path contains a NUL character".into());
    }
    for c in rest.split('/') {
        match c {
            "" => return Err(format!("{p:?} is not normalized (empty component)")),
            "." => return Err(format!("{p:?} is not normalized ('.' component)")),
            ".." => return Err(format!("{p:?} has a '..' component")),
            c if c.len() > 255 => {
                return Err(format!("{p:?} has a component longer than 255 bytes"))
            }
            _ => {}
        }
    }
    let top = rest.split('/').next().unwrap_or_default();
    if ["proc", "sys", "dev"].contains(&top) {
        return Err(format!(
            "{p:?} is under /{top}, which the sandbox mounts its own of"
        ));
    }
    Ok(())
}

fn check_files(path: &Path, base_dir: &Path, raw: Vec<RawFile>) -> Result<Vec<RecipeFile>> {
    if raw.len() > MAX_FILES {
        return Err(invalid(
            path,
            "files",
            format!("{} files, more than the limit of {MAX_FILES}", raw.len()),
        ));
    }
    let mut out: Vec<RecipeFile> = Vec::with_capacity(raw.len());
    let mut total = 0u64;
    for (i, f) in raw.into_iter().enumerate() {
        let field = |name: &str| format!("files[{i}].{name}");
        check_image_path(&f.path).map_err(|r| invalid(path, &field("path"), r))?;
        for (j, other) in out.iter().enumerate() {
            let conflict = if other.path == f.path {
                Some("is already added")
            } else if f.path.starts_with(&format!("{}/", other.path)) {
                Some("is below the file")
            } else if other.path.starts_with(&format!("{}/", f.path)) {
                Some("is a parent directory of the file")
            } else {
                None
            };
            if let Some(how) = conflict {
                return Err(invalid(
                    path,
                    &field("path"),
                    format!("{:?} {how} {:?} of files[{j}]", f.path, other.path),
                ));
            }
        }
        let mode = f.mode.unwrap_or(0o644);
        if mode > 0o7777 {
            return Err(invalid(
                path,
                &field("mode"),
                format!("{mode:#o} is not a file mode (at most 0o7777)"),
            ));
        }
        if mode & 0o1000 != 0 {
            // The sticky bit means nothing on a file: this is almost always a mode
            // written in decimal (755 is 0o1363).
            return Err(invalid(
                path,
                &field("mode"),
                format!("{mode:#o} ({mode} in decimal) has the sticky bit set; write modes in octal, e.g. 0o755"),
            ));
        }
        let sources = [
            ("text", f.text.is_some()),
            ("base64", f.base64.is_some()),
            ("from", f.from.is_some()),
        ];
        let given: Vec<&str> = sources.iter().filter(|s| s.1).map(|s| s.0).collect();
        if given.len() != 1 {
            let found = if given.is_empty() {
                "none".to_owned()
            } else {
                given.join(" and ")
            };
            return Err(invalid(
                path,
                &format!("files[{i}]"),
                format!("give exactly one of text, base64 or from (found {found})"),
            ));
        }
        let contents = if let Some(t) = f.text {
            t.into_bytes()
        } else if let Some(b) = f.base64 {
            let compact: String = b.split_whitespace().collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact.as_bytes())
                .map_err(|e| invalid(path, &field("base64"), format!("not valid base64: {e}")))?
        } else {
            let from = f.from.unwrap_or_default();
            read_from(path, base_dir, &field("from"), &from)?
        };
        if contents.len() as u64 > MAX_FILE_BYTES {
            return Err(invalid(
                path,
                &format!("files[{i}]"),
                format!(
                    "the content is {} bytes, more than the limit of {MAX_FILE_BYTES}",
                    contents.len()
                ),
            ));
        }
        total += contents.len() as u64;
        if total > MAX_FILES_TOTAL_BYTES {
            return Err(invalid(
                path,
                "files",
                format!("the files add up to more than {MAX_FILES_TOTAL_BYTES} bytes"),
            ));
        }
        out.push(RecipeFile {
            path: f.path,
            mode,
            contents,
        });
    }
    Ok(out)
}

/// Reads a `from` file: a relative path, resolved against the recipe's directory.
fn read_from(path: &Path, base_dir: &Path, field: &str, from: &str) -> Result<Vec<u8>> {
    if from.is_empty() || Path::new(from).is_absolute() {
        return Err(invalid(
            path,
            field,
            format!("{from:?} must be a path relative to the recipe's directory"),
        ));
    }
    no_nul(path, field, from)?;
    let file_path = base_dir.join(from);
    let unreadable = |source| ImageError::RecipeFileUnreadable {
        recipe: path.to_owned(),
        field: field.to_owned(),
        path: file_path.clone(),
        source,
    };
    let file = std::fs::File::open(&file_path).map_err(unreadable)?;
    let mut contents = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut contents)
        .map_err(unreadable)?;
    Ok(contents)
}

/// Most `[[pypi]]` wheels in one recipe.
pub const MAX_WHEELS: usize = 100;

/// PEP 508 project names: ASCII letters and digits, with `-`, `_`, `.` inside.
fn is_project_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
}

/// PEP 440 versions, loosely: a digit first, then letters, digits and `.+!_-`.
fn is_version(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_digit()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b".+!_-".contains(&c))
}

/// Checks a wheel file name (PEP 427:
/// `{name}-{version}(-{build})?-{python}-{abi}-{platform}.whl`) against the
/// entry's name and version.
fn check_wheel_file(file: &str, name: &str, version: &str) -> std::result::Result<(), String> {
    let ok_chars = file
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"._+!-".contains(&c));
    let Some(stem) = file
        .strip_suffix(".whl")
        .filter(|_| ok_chars && file.len() <= 255)
    else {
        return Err(format!(
            "{file:?} is not a wheel file name (NAME-VERSION-PYTHON-ABI-PLATFORM.whl; letters, digits, '._+!-')"
        ));
    };
    let parts: Vec<&str> = stem.split('-').collect();
    if !(5..=6).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "{file:?} is not a wheel file name: it needs 5 or 6 '-'-separated parts (NAME-VERSION[-BUILD]-PYTHON-ABI-PLATFORM.whl)"
        ));
    }
    if normalize_project(parts[0]) != normalize_project(name) {
        return Err(format!(
            "{file:?} is a wheel of {:?}, not of {name:?}",
            parts[0]
        ));
    }
    // Wheel file names write the version's '-' as '_'.
    if parts[1] != version.replace('-', "_") {
        return Err(format!(
            "{file:?} is a wheel of version {:?}, not {version:?}",
            parts[1]
        ));
    }
    if parts.len() == 6 && !parts[2].as_bytes()[0].is_ascii_digit() {
        return Err(format!(
            "{file:?}: the build tag {:?} must start with a digit",
            parts[2]
        ));
    }
    Ok(())
}

fn check_pypi(path: &Path, raw: Vec<RawPypi>) -> Result<Vec<PypiWheel>> {
    if raw.len() > MAX_WHEELS {
        return Err(invalid(
            path,
            "pypi",
            format!("{} wheels, more than the limit of {MAX_WHEELS}", raw.len()),
        ));
    }
    let mut out: Vec<PypiWheel> = Vec::with_capacity(raw.len());
    for (i, w) in raw.into_iter().enumerate() {
        let field = |name: &str| format!("pypi[{i}].{name}");
        if !is_project_name(&w.name) {
            return Err(invalid(
                path,
                &field("name"),
                format!(
                    "{:?} is not a PyPI project name (letters, digits, '-', '_', '.')",
                    w.name
                ),
            ));
        }
        if !is_version(&w.version) {
            return Err(invalid(
                path,
                &field("version"),
                format!(
                    "{:?} is not a version (a digit first, then letters, digits, '.+!_-')",
                    w.version
                ),
            ));
        }
        check_wheel_file(&w.file, &w.name, &w.version)
            .map_err(|r| invalid(path, &field("file"), r))?;
        if w.sha256.len() != 64 || !w.sha256.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid(
                path,
                &field("sha256"),
                format!("{:?} is not a sha256 (64 hex digits)", w.sha256),
            ));
        }
        let wheel = PypiWheel {
            sha256: w.sha256.to_ascii_lowercase(),
            name: w.name,
            version: w.version,
            file: w.file,
        };
        if let Some(j) = out
            .iter()
            .position(|o| o.normalized_name() == wheel.normalized_name())
        {
            return Err(invalid(
                path,
                &field("name"),
                format!("{:?} is already installed by pypi[{j}]", wheel.name),
            ));
        }
        out.push(wheel);
    }
    Ok(out)
}

fn check_config(path: &Path, raw: RawConfig) -> Result<ImageConfig> {
    for (what, list) in [("entrypoint", &raw.entrypoint), ("cmd", &raw.cmd)] {
        for (i, s) in list.iter().flatten().enumerate() {
            no_nul(path, &format!("config.{what}[{i}]"), s)?;
        }
    }
    for (i, e) in raw.env.iter().enumerate() {
        let field = format!("config.env[{i}]");
        no_nul(path, &field, e)?;
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => return Err(invalid(path, &field, format!("{e:?} is not KEY=VALUE"))),
        }
    }
    if let Some(w) = &raw.working_dir {
        no_nul(path, "config.working_dir", w)?;
        if !w.starts_with('/') {
            return Err(invalid(
                path,
                "config.working_dir",
                format!("{w:?} is not an absolute path"),
            ));
        }
    }
    if let Some(u) = &raw.user {
        no_nul(path, "config.user", u)?;
        if u.is_empty() {
            return Err(invalid(path, "config.user", "is empty".into()));
        }
    }
    for (k, v) in &raw.labels {
        let field = format!("config.labels.{k}");
        no_nul(path, &field, k)?;
        no_nul(path, &field, v)?;
        if k.is_empty() {
            return Err(invalid(
                path,
                "config.labels",
                "a label key is empty".into(),
            ));
        }
        if k == RECIPE_DIGEST_LABEL {
            return Err(invalid(
                path,
                &field,
                "is set by runbox to the recipe's digest".into(),
            ));
        }
    }
    Ok(ImageConfig {
        entrypoint: raw.entrypoint,
        cmd: raw.cmd,
        env: raw.env,
        working_dir: raw.working_dir,
        user: raw.user,
        labels: raw.labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r##"
name = "runbox/test:1"
[debian]
packages = ["jq", "busybox-static"]
[[files]]
path = "/usr/local/bin/hello"
mode = 0o755
text = "#!/bin/sh\necho hello\n"
[config]
cmd = ["hello"]
env = ["PATH=/usr/bin:/bin"]
working_dir = "/work"
user = "1000:1000"
labels = { "org.example" = "x" }
"##;

    fn parse(text: &str) -> Result<Recipe> {
        Recipe::parse(text, Path::new("/nonexistent/recipe.toml"))
    }

    /// The field and reason of a `RecipeInvalid`.
    fn field_error(text: &str) -> (String, String) {
        match parse(text) {
            Err(ImageError::RecipeInvalid { field, reason, .. }) => (field, reason),
            other => panic!("expected RecipeInvalid, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_recipe_with_defaults_filled_in() {
        let r = parse(GOOD).unwrap();
        assert_eq!(r.name(), "runbox/test:1");
        assert_eq!(r.debian().suite, "bookworm");
        assert_eq!(r.debian().variant, Variant::Essential);
        assert_eq!(r.debian().packages, ["busybox-static", "jq"]);
        assert_eq!(r.debian().mirror, None);
        assert_eq!(r.files().len(), 1);
        assert_eq!(r.files()[0].mode, 0o755);
        assert_eq!(r.files()[0].contents, b"#!/bin/sh\necho hello\n");
        assert_eq!(r.config().cmd.as_deref(), Some(&["hello".to_owned()][..]));
        assert_eq!(r.config().labels["org.example"], "x");
        let minimal = parse("name = \"x\"").unwrap();
        assert_eq!(minimal.name(), "x:latest");
        assert!(minimal.files().is_empty());
    }

    #[test]
    fn digest_ignores_formatting_comments_and_content_encoding() {
        let reformatted = r##"
# the same recipe, written differently
name="runbox/test:1"
[config]
labels={"org.example"="x"}
user="1000:1000"
working_dir="/work"
env=["PATH=/usr/bin:/bin"]
cmd=["hello"]
[debian]
packages=["busybox-static","jq","jq"]   # order and duplicates do not matter
variant="essential"
[[files]]
base64 = "IyEvYmluL3NoCmVjaG8gaGVsbG8K"
path = "/usr/local/bin/hello"
mode = 493
"##;
        assert_eq!(
            parse(GOOD).unwrap().digest(),
            parse(reformatted).unwrap().digest()
        );
    }

    #[test]
    fn digest_changes_with_any_meaningful_field() {
        let base = parse(GOOD).unwrap().digest();
        for changed in [
            GOOD.replace("runbox/test:1", "runbox/test:2"),
            GOOD.replace("\"jq\", ", ""),
            GOOD.replace("0o755", "0o700"),
            GOOD.replace("echo hello", "echo hullo"),
            GOOD.replace("\"hello\"]", "\"hello\", \"-v\"]"),
            GOOD.replace("[debian]", "[debian]\nsuite = \"trixie\""),
        ] {
            assert_ne!(parse(&changed).unwrap().digest(), base, "{changed}");
        }
    }

    #[test]
    fn from_files_are_read_relative_to_the_recipe_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("files")).unwrap();
        std::fs::write(dir.path().join("files/run"), "v1").unwrap();
        let text = "name = \"x\"\n[[files]]\npath = \"/run-it\"\nfrom = \"files/run\"\n";
        let path = dir.path().join("r.toml");
        std::fs::write(&path, text).unwrap();
        let v1 = Recipe::load(&path).unwrap();
        assert_eq!(v1.files()[0].contents, b"v1");
        std::fs::write(dir.path().join("files/run"), "v2").unwrap();
        let v2 = Recipe::load(&path).unwrap();
        assert_ne!(v1.digest(), v2.digest());

        std::fs::remove_file(dir.path().join("files/run")).unwrap();
        match Recipe::load(&path) {
            Err(e @ ImageError::RecipeFileUnreadable { .. }) => {
                assert!(e.to_string().contains("files[0].from"), "{e}");
                assert_eq!(e.code(), runbox_core::ErrorCode::InputUnreadable);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_unknown_fields_naming_them() {
        let (field, reason) = field_error("name = \"x\"\n[debian]\npakages = [\"jq\"]\n");
        assert_eq!(field, "debian.pakages");
        assert!(reason.contains("unknown field `pakages`"), "{reason}");
        assert!(reason.contains("line 3"), "{reason}");
        let (field, reason) = field_error("name = \"x\"\n[[files]]\npath = \"/a\"\ntxt = \"\"\n");
        assert_eq!(field, "files[0].txt");
        assert!(reason.contains("unknown field `txt`"), "{reason}");
        let (_, reason) = field_error("name = \"x\"\nimage = \"y\"\n");
        assert!(reason.contains("unknown field `image`"), "{reason}");
    }

    const WHEEL: &str = r##"
[[pypi]]
name = "DuckDB"
version = "1.2.2"
file = "duckdb-1.2.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
sha256 = "FD9C434127FD1575694E1CF19A393BED301F5D6E80B4BCDAE80CAA368A61A678"
"##;

    #[test]
    fn parses_pypi_wheels() {
        let r = parse(&format!("{GOOD}{WHEEL}")).unwrap();
        let w = &r.pypi()[0];
        assert_eq!(w.name, "DuckDB");
        assert_eq!(w.normalized_name(), "duckdb");
        assert_eq!(
            w.sha256,
            "fd9c434127fd1575694e1cf19a393bed301f5d6e80b4bcdae80caa368a61a678"
        );
        assert_eq!(w.digest().hex(), w.sha256);
        let (py, abi, plat) = w.tags();
        assert_eq!(py, ["cp311"]);
        assert_eq!(abi, ["cp311"]);
        assert_eq!(plat, ["manylinux_2_17_x86_64", "manylinux2014_x86_64"]);
        assert_eq!(super::normalize_project("Foo.._-Bar"), "foo-bar");
        assert!(parse(GOOD).unwrap().pypi().is_empty());
    }

    #[test]
    fn digest_covers_the_pinned_wheels_and_not_their_absence() {
        let plain = parse(GOOD).unwrap().digest();
        // The digest recipes without wheels had before wheels existed.
        assert_eq!(
            plain.to_string(),
            "sha256:14c4a6496976e6251b1ee04cf35b06bec1e8d601fbe62be05422f32a880a0dcf"
        );
        let with = format!("{GOOD}{WHEEL}");
        let base = parse(&with).unwrap().digest();
        assert_ne!(base, plain);
        // The sha256's case is not meaningful; everything else is.
        assert_eq!(parse(&with.replace("FD9C", "fd9c")).unwrap().digest(), base);
        for changed in [
            with.replace("A678\"", "A679\""),
            with.replace("1.2.2", "1.2.3"),
            with.replace(
                "manylinux_2_17_x86_64.manylinux2014_x86_64",
                "manylinux_2_17_x86_64",
            ),
            with.replace("\"DuckDB\"", "\"duckdb\""),
        ] {
            assert_ne!(parse(&changed).unwrap().digest(), base, "{changed}");
        }
    }

    #[test]
    fn rejects_malformed_pypi_entries() {
        let with = format!("name = \"x\"\n{WHEEL}");
        for (from, to, field, why) in [
            (
                "\"DuckDB\"",
                "\"duck db\"",
                "pypi[0].name",
                "not a PyPI project name",
            ),
            (
                "\"DuckDB\"",
                "\"-duckdb\"",
                "pypi[0].name",
                "not a PyPI project name",
            ),
            (
                "version = \"1.2.2\"",
                "version = \"latest\"",
                "pypi[0].version",
                "not a version",
            ),
            (
                "version = \"1.2.2\"",
                "version = \"1.2.3\"",
                "pypi[0].file",
                "not \"1.2.3\"",
            ),
            (
                "file = \"duckdb-",
                "file = \"pandas-",
                "pypi[0].file",
                "wheel of \"pandas\"",
            ),
            (".whl\"", ".zip\"", "pypi[0].file", "not a wheel file name"),
            ("-cp311-cp311-", "-cp311-", "pypi[0].file", "5 or 6"),
            (
                "duckdb-1.2.2-cp311",
                "../duckdb-1.2.2-cp311",
                "pypi[0].file",
                "not a wheel file name",
            ),
            ("FD9C", "FD9", "pypi[0].sha256", "64 hex"),
            ("FD9C", "XD9C", "pypi[0].sha256", "64 hex"),
        ] {
            assert!(with.contains(from), "{from}");
            let (f, reason) = field_error(&with.replace(from, to));
            assert_eq!(f, field, "{to}");
            assert!(reason.contains(why), "{to}: {reason}");
        }
        let (f, reason) = field_error(&format!("{with}{}", WHEEL.replace("DuckDB", "duckdb")));
        assert_eq!(f, "pypi[1].name");
        assert!(reason.contains("already installed by pypi[0]"), "{reason}");
        let (f, reason) = field_error(&with.replace("version =", "url = \"x\"\nversion ="));
        assert_eq!(f, "pypi[0].url");
        assert!(reason.contains("unknown field `url`"), "{reason}");
        let (f, reason) = field_error(&with.replace("sha256 = ", "#"));
        assert_eq!(f, "pypi[0]");
        assert!(reason.contains("missing field `sha256`"), "{reason}");
    }

    #[test]
    fn rejects_bad_package_names() {
        let (field, reason) = field_error(
            "name = \"x\"\n[debian]\npackages = [\"jq\", \"--allow-unauthenticated\"]\n",
        );
        assert_eq!(field, "debian.packages[1]");
        assert!(reason.contains("not a Debian package name"), "{reason}");
        let (field, _) = field_error("name = \"x\"\n[debian]\npackages = [\"Python3\"]\n");
        assert_eq!(field, "debian.packages[0]");
    }

    #[test]
    fn rejects_paths_that_are_not_absolute_and_normalized() {
        for (p, why) in [
            ("/usr/../etc/passwd", "'..'"),
            ("usr/bin/x", "not an absolute path"),
            ("/usr//bin/x", "not normalized"),
            ("/usr/./bin", "not normalized"),
            ("/usr/bin/", "not normalized"),
            ("/", "root directory"),
            ("/proc/self/x", "/proc"),
            ("/dev/null", "/dev"),
            ("/sys/x", "/sys"),
        ] {
            let text = format!("name = \"x\"\n[[files]]\npath = {p:?}\ntext = \"\"\n");
            let (field, reason) = field_error(&text);
            assert_eq!(field, "files[0].path", "{p}");
            assert!(reason.contains(why), "{p}: {reason}");
        }
        let (field, reason) = field_error(
            "name = \"x\"\n[[files]]\npath = \"/a\"\ntext = \"\"\n[[files]]\npath = \"/a/b\"\ntext = \"\"\n",
        );
        assert_eq!(field, "files[1].path");
        assert!(reason.contains("below the file"), "{reason}");
    }

    #[test]
    fn rejects_two_content_sources_or_none() {
        let (field, reason) =
            field_error("name = \"x\"\n[[files]]\npath = \"/a\"\ntext = \"\"\nfrom = \"f\"\n");
        assert_eq!(field, "files[0]");
        assert!(
            reason.contains("exactly one of text, base64 or from (found text and from)"),
            "{reason}"
        );
        let (_, reason) = field_error("name = \"x\"\n[[files]]\npath = \"/a\"\n");
        assert!(reason.contains("found none"), "{reason}");
    }

    #[test]
    fn rejects_bad_modes() {
        let (field, reason) =
            field_error("name = \"x\"\n[[files]]\npath = \"/a\"\nmode = 0o17777\ntext = \"\"\n");
        assert_eq!(field, "files[0].mode");
        assert!(reason.contains("at most 0o7777"), "{reason}");
        let (field, reason) =
            field_error("name = \"x\"\n[[files]]\npath = \"/a\"\nmode = 755\ntext = \"\"\n");
        assert_eq!(field, "files[0].mode");
        assert!(reason.contains("octal"), "{reason}");
        let (field, reason) =
            field_error("name = \"x\"\n[[files]]\npath = \"/a\"\nmode = \"0755\"\ntext = \"\"\n");
        assert_eq!(field, "files[0].mode");
        assert!(reason.contains("invalid type"), "{reason}");
        let (field, _) =
            field_error("name = \"x\"\n[[files]]\npath = \"/a\"\nmode = -1\ntext = \"\"\n");
        assert_eq!(field, "files[0].mode");
    }

    #[test]
    fn rejects_unknown_variants_and_bad_suites_and_mirrors() {
        let (field, reason) = field_error("name = \"x\"\n[debian]\nvariant = \"tiny\"\n");
        assert_eq!(field, "debian.variant");
        assert!(reason.contains("unknown variant `tiny`"), "{reason}");
        assert!(reason.contains("essential"), "{reason}");
        let (field, _) = field_error("name = \"x\"\n[debian]\nsuite = \"-q\"\n");
        assert_eq!(field, "debian.suite");
        let (field, _) = field_error("name = \"x\"\n[debian]\nmirror = \"--x\"\n");
        assert_eq!(field, "debian.mirror");
    }

    #[test]
    fn rejects_bad_names_config_values_and_the_reserved_label() {
        let (field, _) = field_error("name = \"Not A Name\"\n");
        assert_eq!(field, "name");
        let (field, _) = field_error("name = \"x@sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n");
        assert_eq!(field, "name");
        let (field, _) = field_error("[debian]\n");
        assert!(field.is_empty(), "{field}");
        let (field, _) = field_error("name = \"x\"\n[config]\nenv = [\"NOEQUALS\"]\n");
        assert_eq!(field, "config.env[0]");
        let (field, _) = field_error("name = \"x\"\n[config]\nworking_dir = \"work\"\n");
        assert_eq!(field, "config.working_dir");
        let (field, reason) = field_error(&format!(
            "name = \"x\"\n[config]\nlabels = {{ {RECIPE_DIGEST_LABEL:?} = \"x\" }}\n"
        ));
        assert_eq!(field, format!("config.labels.{RECIPE_DIGEST_LABEL}"));
        assert!(reason.contains("set by runbox"), "{reason}");
        let e = parse("name = \"x\"\n[debian]\nvariant = \"tiny\"\n").unwrap_err();
        assert_eq!(e.code(), runbox_core::ErrorCode::InvalidArgument);
        assert!(e.to_string().contains("/nonexistent/recipe.toml"), "{e}");
    }
}
