//! System manifests (`systems/<id>.toml`, documented in docs/catalog.md): a
//! program with lifecycle scripts (install, start, check, load, query, stop,
//! clone) that runbox provisions once in a stateful sandbox, snapshots, and
//! serves queries from; and dataset manifests (`datasets/<name>.toml`): a file
//! made once by a generator job, checked against its sha256 and mounted
//! read-only into the systems that name it, at `/datasets/<name>/<file>`.
//!
//! Like program manifests, these have no field that could widen a sandbox, and
//! unknown fields are errors naming the field.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use runbox_core::{Data, ImageRef, InputFile, LimitsSpec};
use serde::{Deserialize, Serialize};

use crate::manifest::{bad, check_id, check_rel_path, check_text};
use crate::{io, mime, CatalogError, ImageSource, ManifestError};

/// Where datasets are mounted in a system's sandbox: `/datasets/<name>/<file>`.
pub const DATASETS_DIR: &str = "/datasets";

/// Largest lifecycle script.
pub const MAX_SCRIPT_BYTES: usize = 64 * 1024;

/// Largest file a dataset generator is given (`generate.files`).
pub const MAX_GENERATOR_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Part of every [`FingerprintInputs`]: bump it when runbox would provision
/// the same manifest into a different snapshot.
pub const SYSTEM_FORMAT: &str = "runbox-system/1";

/// Where a system's state lives, which decides how it is snapshotted.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SystemState {
    /// In files: runbox stops the daemons (the `stop` script) before it freezes
    /// the files into a snapshot.
    Disk,
    /// In processes (which the namespace backend cannot freeze): the snapshot
    /// holds what `install` made; every instance runs start, check and load.
    Memory,
}

/// The lifecycle scripts. Each is a POSIX sh script, run as `sh -c SCRIPT` in
/// the sandbox's working directory, as the system's user, with its env.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scripts {
    /// Once, before the first start (e.g. initdb).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<String>,
    /// Starts the daemons; they keep running after the script exits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Exits 0 when the system is ready; polled (bounded) after start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// Loads the datasets (from `/datasets/<name>/<file>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<String>,
    /// Reads one query on stdin, writes the answer on stdout (CSV with a
    /// header row), exits nonzero on error.
    pub query: String,
    /// Stops the daemons cleanly (before a `disk` snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
    /// On each instance started from a snapshot, before start: re-creates
    /// per-instance identity (random seeds, ids) where the system allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone: Option<String>,
}

impl Scripts {
    /// (name, script) of every script given, in lifecycle order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("install", self.install.as_deref()),
            ("start", self.start.as_deref()),
            ("check", self.check.as_deref()),
            ("load", self.load.as_deref()),
            ("query", Some(self.query.as_str())),
            ("stop", self.stop.as_deref()),
            ("clone", self.clone.as_deref()),
        ]
        .into_iter()
        .filter_map(|(n, s)| s.map(|s| (n, s)))
    }
}

/// An example query for people and smoke tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemExample {
    pub query: String,
}

/// A validated catalog system.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct System {
    pub id: String,
    pub name: String,
    pub version: String,
    pub description: String,
    pub category: String,
    pub image: ImageSource,
    /// Who the scripts run as: a name from the image or `uid[:gid]`; `None`:
    /// the image's user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub state: SystemState,
    /// Names of the datasets mounted at `/datasets/<name>/<file>`.
    pub datasets: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// What a query is (`application/sql`).
    pub query_mime: String,
    /// What an answer is (`text/csv`).
    pub answer_mime: String,
    pub scripts: Scripts,
    /// Defaults for provisioning and queries, layered over runbox's defaults.
    pub limits: LimitsSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<SystemExample>,
}

/// Everything of a system's manifest that goes into its snapshot, in a
/// canonical form (maps sorted, datasets sorted, defaults left out): serialize
/// it (e.g. [`FingerprintInputs::canonical_json`]) and hash it with the image's
/// manifest digest and the datasets' sha256s to name the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FingerprintInputs {
    /// [`SYSTEM_FORMAT`].
    pub format: &'static str,
    pub user: Option<String>,
    pub state: SystemState,
    pub env: BTreeMap<String, String>,
    /// Dataset names, sorted.
    pub datasets: Vec<String>,
    pub scripts: Scripts,
    pub limits: LimitsSpec,
}

impl FingerprintInputs {
    /// The JSON bytes of this struct: fields in declaration order, maps sorted.
    pub fn canonical_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain data serializes")
    }
}

// ---- the TOML as written ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SystemWire {
    id: String,
    name: String,
    version: String,
    description: String,
    category: String,
    image: ImageSource,
    #[serde(default)]
    user: Option<String>,
    state: SystemState,
    #[serde(default)]
    datasets: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    query_mime: String,
    answer_mime: String,
    scripts: Scripts,
    #[serde(default)]
    limits: LimitsSpec,
    #[serde(default)]
    example: Option<SystemExample>,
}

/// Deserializes TOML naming the field (`scripts.query`, `datasets[1]`) and the
/// line of any syntax, type, missing or unknown field error.
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ManifestError> {
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
    let de = toml::Deserializer::parse(text).map_err(|e| bad("manifest", located(&e)))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." {
            "manifest".to_owned()
        } else {
            field
        };
        bad(field, located(e.inner()))
    })
}

fn check_image(field: &str, image: &ImageSource) -> Result<(), ManifestError> {
    match (&image.recipe, &image.reference) {
        (Some(r), None) => check_id(&format!("{field}.recipe"), r),
        (None, Some(r)) => ImageRef::parse(r)
            .map(|_| ())
            .map_err(|e| bad(format!("{field}.reference"), e.to_string())),
        _ => Err(bad(
            field,
            "give exactly one of \"recipe\" or \"reference\"",
        )),
    }
}

/// `name[:group]` or `uid[:gid]`: names as useradd takes them, ids below 65536
/// (a sandbox maps 65536 ids).
fn check_user(u: &str) -> Result<(), ManifestError> {
    let part_ok = |p: &str| {
        if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
            return p.len() <= 5 && p.parse::<u32>().is_ok_and(|n| n < 65536);
        }
        let b = p.as_bytes();
        !b.is_empty()
            && b.len() <= 32
            && (b[0].is_ascii_alphabetic() || b[0] == b'_')
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
    };
    let ok = match u.split_once(':') {
        Some((a, b)) => part_ok(a) && part_ok(b),
        None => part_ok(u),
    };
    if ok {
        Ok(())
    } else {
        Err(bad(
            "user",
            format!("{u:?} is not a user (name[:group] or uid[:gid], ids below 65536)"),
        ))
    }
}

fn check_script(field: &str, s: &str) -> Result<(), ManifestError> {
    if s.trim().is_empty() {
        return Err(bad(field, "is empty (leave the script out instead)"));
    }
    if s.contains('\0') {
        return Err(bad(field, "contains a NUL byte"));
    }
    if s.len() > MAX_SCRIPT_BYTES {
        return Err(bad(
            field,
            format!("is longer than {MAX_SCRIPT_BYTES} bytes"),
        ));
    }
    Ok(())
}

impl System {
    /// Parses and validates a manifest. That its datasets and recipe exist is
    /// checked by [`load_systems`], which knows the catalog.
    pub fn from_toml(text: &str) -> Result<System, ManifestError> {
        let w: SystemWire = parse_toml(text)?;
        check_id("id", &w.id)?;
        check_text("name", &w.name, 100)?;
        check_text("version", &w.version, 64)?;
        check_text("description", &w.description, 2000)?;
        check_id("category", &w.category)?;
        check_image("image", &w.image)?;
        if let Some(u) = &w.user {
            check_user(u)?;
        }
        let mut seen = BTreeSet::new();
        for (i, d) in w.datasets.iter().enumerate() {
            check_id(&format!("datasets[{i}]"), d)?;
            if !seen.insert(d) {
                return Err(bad(
                    format!("datasets[{i}]"),
                    format!("{d:?} is listed twice"),
                ));
            }
        }
        for (k, v) in &w.env {
            let field = format!("env.{k}");
            let b = k.as_bytes();
            let name_ok = !b.is_empty()
                && b.len() <= 128
                && (b[0].is_ascii_alphabetic() || b[0] == b'_')
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_');
            if !name_ok {
                return Err(bad(
                    field,
                    "names are letters, digits and '_', not starting with a digit",
                ));
            }
            if k.starts_with("RUNBOX_") {
                return Err(bad(field, "names starting with RUNBOX_ are runbox's"));
            }
            if v.contains('\0') {
                return Err(bad(field, "the value contains a NUL byte"));
            }
        }
        mime::check(&w.query_mime).map_err(|m| bad("query_mime", m))?;
        mime::check(&w.answer_mime).map_err(|m| bad("answer_mime", m))?;
        for (name, script) in w.scripts.iter() {
            check_script(&format!("scripts.{name}"), script)?;
        }
        if w.state == SystemState::Disk && w.scripts.start.is_some() && w.scripts.stop.is_none() {
            return Err(bad(
                "scripts.stop",
                "missing: a system with state = \"disk\" and a start script needs a stop script (runbox stops the daemons before it freezes the files)",
            ));
        }
        if let Some(ex) = &w.example {
            check_text("example.query", &ex.query, MAX_SCRIPT_BYTES)?;
        }
        Ok(System {
            id: w.id,
            name: w.name,
            version: w.version,
            description: w.description,
            category: w.category,
            image: w.image,
            user: w.user,
            state: w.state,
            datasets: w.datasets,
            env: w.env,
            query_mime: w.query_mime,
            answer_mime: w.answer_mime,
            scripts: w.scripts,
            limits: w.limits,
            example: w.example,
        })
    }

    /// What, besides the image and the datasets' contents, makes the system's
    /// snapshot: scripts, user, env, state, dataset names, limits.
    pub fn fingerprint_inputs(&self) -> FingerprintInputs {
        let mut datasets = self.datasets.clone();
        datasets.sort();
        FingerprintInputs {
            format: SYSTEM_FORMAT,
            user: self.user.clone(),
            state: self.state,
            env: self.env.clone(),
            datasets,
            scripts: self.scripts.clone(),
            limits: self.limits,
        }
    }
}

// ---- datasets ----

/// How a dataset's file is made: one job, whose output file is the dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Generator {
    pub image: ImageSource,
    pub argv: Vec<String>,
    /// Files the job is given: its path (relative to the job's working
    /// directory) -> the file's path relative to the catalog's `datasets/`.
    pub files: BTreeMap<String, String>,
    /// Their bytes, read when the catalog was loaded (by path in the job).
    #[serde(skip)]
    pub contents: BTreeMap<String, Data>,
    /// The file the job writes, relative to its working directory.
    pub output: String,
    /// Limits for the job, layered over runbox's defaults.
    pub limits: LimitsSpec,
}

/// A validated dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Dataset {
    pub name: String,
    pub description: String,
    /// The file's name in `/datasets/<name>/`.
    pub file: String,
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
    /// Rows of data (for people; not checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    pub generate: Generator,
}

impl Dataset {
    /// Where systems find the file: `/datasets/<name>/<file>`.
    pub fn mount_path(&self) -> String {
        format!("{DATASETS_DIR}/{}/{}", self.name, self.file)
    }

    /// The generator job's input files (with the bytes read when the catalog
    /// was loaded).
    pub fn generator_inputs(&self) -> Vec<InputFile> {
        self.generate
            .contents
            .iter()
            .map(|(path, content)| InputFile {
                path: path.clone(),
                content: content.clone(),
                executable: false,
            })
            .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetWire {
    name: String,
    description: String,
    file: String,
    sha256: String,
    size: u64,
    #[serde(default)]
    rows: Option<u64>,
    generate: GeneratorWire,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GeneratorWire {
    image: ImageSource,
    argv: Vec<String>,
    #[serde(default)]
    files: BTreeMap<String, String>,
    output: String,
    #[serde(default)]
    limits: LimitsSpec,
}

impl Dataset {
    /// Parses and validates a dataset manifest; `generate.files` are read
    /// relative to `base_dir` (the catalog's `datasets/`).
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Dataset, ManifestError> {
        let w: DatasetWire = parse_toml(text)?;
        check_id("name", &w.name)?;
        check_text("description", &w.description, 2000)?;
        let f = w.file.as_bytes();
        let file_ok = !f.is_empty()
            && f.len() <= 255
            && f[0] != b'.'
            && f.iter()
                .all(|&c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
        if !file_ok {
            return Err(bad(
                "file",
                format!("{:?} must be a file name (letters, digits, '.', '_', '-'; not starting with '.')", w.file),
            ));
        }
        if w.sha256.len() != 64
            || !w
                .sha256
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            return Err(bad(
                "sha256",
                format!("{:?} is not a sha256 (64 lowercase hex digits)", w.sha256),
            ));
        }
        if w.size == 0 {
            return Err(bad("size", "must be the file's size in bytes, not 0"));
        }
        let g = w.generate;
        check_image("generate.image", &g.image)?;
        if g.argv.is_empty() || g.argv[0].is_empty() {
            return Err(bad("generate.argv", "must start with the command"));
        }
        if let Some(i) = g.argv.iter().position(|a| a.contains('\0')) {
            return Err(bad(format!("generate.argv[{i}]"), "contains a NUL byte"));
        }
        check_rel_path("generate.output", &g.output)?;
        let mut contents = BTreeMap::new();
        for (path, source) in &g.files {
            let field = format!("generate.files.{path:?}");
            check_rel_path(&field, path)?;
            if *path == g.output {
                return Err(bad(field, "is the output file"));
            }
            check_rel_path(&field, source)?;
            let full = base_dir.join(source);
            let read = std::fs::File::open(&full).and_then(|file| {
                let mut v = Vec::new();
                file.take(MAX_GENERATOR_FILE_BYTES + 1)
                    .read_to_end(&mut v)?;
                Ok(v)
            });
            let content = read.map_err(|e| {
                bad(
                    field.clone(),
                    format!("cannot read {}: {e}", full.display()),
                )
            })?;
            if content.len() as u64 > MAX_GENERATOR_FILE_BYTES {
                return Err(bad(
                    field,
                    format!(
                        "{} is larger than {MAX_GENERATOR_FILE_BYTES} bytes",
                        full.display()
                    ),
                ));
            }
            contents.insert(path.clone(), Data(content));
        }
        Ok(Dataset {
            name: w.name,
            description: w.description,
            file: w.file,
            sha256: w.sha256,
            size: w.size,
            rows: w.rows,
            generate: Generator {
                image: g.image,
                argv: g.argv,
                files: g.files,
                contents,
                output: g.output,
                limits: g.limits,
            },
        })
    }
}

// ---- loaders ----

/// The `*.toml` files of `dir`, sorted; none when `dir` does not exist.
fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, CatalogError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("reading", dir)(e)),
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

fn manifest_err(file: &Path) -> impl FnOnce(ManifestError) -> CatalogError + '_ {
    move |source| CatalogError::Manifest {
        file: file.to_owned(),
        source,
    }
}

/// Checks that a recipe named by a manifest exists in `catalog_dir/images/`.
fn check_recipe(
    catalog_dir: &Path,
    file: &Path,
    field: &str,
    image: &ImageSource,
) -> Result<(), CatalogError> {
    if let Some(r) = &image.recipe {
        let path = catalog_dir.join("images").join(format!("{r}.toml"));
        if !path.is_file() {
            return Err(CatalogError::Manifest {
                file: file.to_owned(),
                source: bad(
                    format!("{field}.recipe"),
                    format!("{r:?} has no recipe file {}", path.display()),
                ),
            });
        }
    }
    Ok(())
}

/// Loads `catalog_dir/datasets/*.toml` (none when the directory does not
/// exist), by name. Checks every manifest, reads the generators' files, and
/// checks that the recipes they name exist.
pub fn load_datasets(catalog_dir: &Path) -> Result<BTreeMap<String, Dataset>, CatalogError> {
    let dir = catalog_dir.join("datasets");
    let mut out: BTreeMap<String, Dataset> = BTreeMap::new();
    let mut origin: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in toml_files(&dir)? {
        let text = std::fs::read_to_string(&file).map_err(io("reading", &file))?;
        let d = Dataset::from_toml(&text, &dir).map_err(manifest_err(&file))?;
        check_recipe(catalog_dir, &file, "generate.image", &d.generate.image)?;
        if let Some(first) = origin.get(&d.name) {
            return Err(CatalogError::Defined {
                kind: "dataset",
                name: d.name.clone(),
                first: first.clone(),
                second: file,
            });
        }
        origin.insert(d.name.clone(), file);
        out.insert(d.name.clone(), d);
    }
    Ok(out)
}

/// Loads `catalog_dir/systems/*.toml` (none when the directory does not
/// exist), by id. Checks every manifest, that the datasets each names are in
/// `datasets`, and that the recipes exist.
pub fn load_systems_with(
    catalog_dir: &Path,
    datasets: &BTreeMap<String, Dataset>,
) -> Result<BTreeMap<String, System>, CatalogError> {
    let mut out: BTreeMap<String, System> = BTreeMap::new();
    let mut origin: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in toml_files(&catalog_dir.join("systems"))? {
        let text = std::fs::read_to_string(&file).map_err(io("reading", &file))?;
        let s = System::from_toml(&text).map_err(manifest_err(&file))?;
        for (i, d) in s.datasets.iter().enumerate() {
            if !datasets.contains_key(d) {
                let known: Vec<&str> = datasets.keys().map(String::as_str).collect();
                return Err(CatalogError::Manifest {
                    file,
                    source: bad(
                        format!("datasets[{i}]"),
                        format!(
                            "no dataset {d:?} in {} (known: {})",
                            catalog_dir.join("datasets").display(),
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ),
                });
            }
        }
        check_recipe(catalog_dir, &file, "image", &s.image)?;
        if let Some(first) = origin.get(&s.id) {
            return Err(CatalogError::Defined {
                kind: "system",
                name: s.id.clone(),
                first: first.clone(),
                second: file,
            });
        }
        origin.insert(s.id.clone(), file);
        out.insert(s.id.clone(), s);
    }
    Ok(out)
}

/// Loads the catalog's systems (and, to check their names, its datasets).
pub fn load_systems(catalog_dir: &Path) -> Result<BTreeMap<String, System>, CatalogError> {
    let datasets = load_datasets(catalog_dir)?;
    load_systems_with(catalog_dir, &datasets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = "pg"
name = "PostgreSQL"
version = "15"
description = "A database."
category = "databases"
image = { recipe = "postgres" }
user = "postgres"
state = "disk"
datasets = ["orders"]
env = { PGDATA = "/var/lib/postgresql/data" }
query_mime = "application/sql"
answer_mime = "text/csv"

[scripts]
install = "initdb"
start = "pg_ctl start"
check = "pg_isready"
load = "psql -f load.sql"
query = "psql -f -"
stop = "pg_ctl stop"
clone = "true"

[limits]
memory_bytes = 1073741824

[example]
query = "SELECT 1;"
"#;

    fn err(text: &str) -> ManifestError {
        System::from_toml(text).unwrap_err()
    }

    #[test]
    fn a_good_manifest_parses() {
        let s = System::from_toml(GOOD).unwrap();
        assert_eq!(s.id, "pg");
        assert_eq!(s.state, SystemState::Disk);
        assert_eq!(s.user.as_deref(), Some("postgres"));
        assert_eq!(s.datasets, ["orders"]);
        assert_eq!(s.env["PGDATA"], "/var/lib/postgresql/data");
        assert_eq!(s.scripts.query, "psql -f -");
        assert_eq!(
            s.scripts.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["install", "start", "check", "load", "query", "stop", "clone"]
        );
        assert_eq!(s.limits.memory_bytes, Some(1 << 30));
        assert_eq!(s.example.unwrap().query, "SELECT 1;");
        // The smallest system: a query script and the required fields.
        let minimal = "id = \"m\"\nname = \"M\"\nversion = \"1\"\ndescription = \"d\"\ncategory = \"databases\"\nimage = { reference = \"busybox:1\" }\nstate = \"memory\"\nquery_mime = \"application/sql\"\nanswer_mime = \"text/csv\"\n[scripts]\nquery = \"cat\"\n";
        let m = System::from_toml(minimal).unwrap();
        assert_eq!(m.state, SystemState::Memory);
        assert!(m.user.is_none() && m.datasets.is_empty() && m.scripts.start.is_none());
    }

    #[test]
    fn bad_manifests_are_refused_naming_the_field() {
        for (from, to, field, why) in [
            (
                "user = \"postgres\"",
                "user = \"postgres\"\nnetwork = \"host\"",
                "network",
                "unknown field `network`",
            ),
            (
                "clone = \"true\"",
                "clone = \"true\"\nreload = \"x\"",
                "scripts.reload",
                "unknown field `reload`",
            ),
            ("id = \"pg\"", "id = \"PG!\"", "id", "lowercase letters"),
            ("id = \"pg\"", "id = \"\"", "id", "1-64"),
            (
                "query = \"psql -f -\"\n",
                "",
                "scripts",
                "missing field `query`",
            ),
            (
                "query = \"psql -f -\"",
                "query = \"  \"",
                "scripts.query",
                "is empty",
            ),
            (
                "load = \"psql -f load.sql\"",
                "load = \"\"",
                "scripts.load",
                "is empty",
            ),
            (
                "state = \"disk\"",
                "state = \"ram\"",
                "state",
                "unknown variant `ram`",
            ),
            (
                "state = \"disk\"\n",
                "",
                "manifest",
                "missing field `state`",
            ),
            (
                "stop = \"pg_ctl stop\"\n",
                "",
                "scripts.stop",
                "needs a stop script",
            ),
            (
                "datasets = [\"orders\"]",
                "datasets = [\"orders\", \"orders\"]",
                "datasets[1]",
                "listed twice",
            ),
            (
                "datasets = [\"orders\"]",
                "datasets = [\"../x\"]",
                "datasets[0]",
                "lowercase letters",
            ),
            (
                "user = \"postgres\"",
                "user = \"root;rm\"",
                "user",
                "not a user",
            ),
            (
                "user = \"postgres\"",
                "user = \"70000\"",
                "user",
                "not a user",
            ),
            ("PGDATA =", "RUNBOX_X =", "env.RUNBOX_X", "runbox's"),
            ("PGDATA =", "\"A-B\" =", "env.A-B", "letters, digits"),
            (
                "query_mime = \"application/sql\"",
                "query_mime = \"SQL\"",
                "query_mime",
                "MIME",
            ),
            (
                "image = { recipe = \"postgres\" }",
                "image = { recipe = \"postgres\", reference = \"x:1\" }",
                "image",
                "exactly one",
            ),
            (
                "image = { recipe = \"postgres\" }",
                "image = { recipe = \"postgres\", mounts = [] }",
                "image.mounts",
                "unknown field `mounts`",
            ),
            (
                "memory_bytes = 1073741824",
                "memory = 1",
                "limits.memory",
                "unknown field `memory`",
            ),
            (
                "[example]\nquery = \"SELECT 1;\"",
                "[example]\nquery = \"\"",
                "example.query",
                "non-empty",
            ),
        ] {
            assert!(GOOD.contains(from), "{from}");
            let e = err(&GOOD.replace(from, to));
            assert_eq!(e.field, field, "{to}: {e}");
            assert!(e.message.contains(why), "{to}: {e}");
        }
        let e = err("id = 5");
        assert_eq!(e.field, "id");
        assert!(e.message.contains("line 1"), "{e}");
    }

    #[test]
    fn every_script_the_limits_user_env_state_and_datasets_change_the_fingerprint() {
        let base = System::from_toml(GOOD).unwrap().fingerprint_inputs();
        assert_eq!(base.format, SYSTEM_FORMAT);
        let json = base.canonical_json();
        for (from, to) in [
            ("install = \"initdb\"", "install = \"initdb -k\""),
            ("start = \"pg_ctl start\"", "start = \"pg_ctl start -w\""),
            ("check = \"pg_isready\"", "check = \"pg_isready -q\""),
            (
                "load = \"psql -f load.sql\"",
                "load = \"psql -f load2.sql\"",
            ),
            ("query = \"psql -f -\"", "query = \"psql -X -f -\""),
            ("stop = \"pg_ctl stop\"", "stop = \"pg_ctl stop -m fast\""),
            ("clone = \"true\"", "clone = \"false\""),
            ("clone = \"true\"\n", ""),
            ("user = \"postgres\"", "user = \"100:102\""),
            ("user = \"postgres\"\n", ""),
            ("/var/lib/postgresql/data", "/srv/pg"),
            ("state = \"disk\"", "state = \"memory\""),
            (
                "datasets = [\"orders\"]",
                "datasets = [\"orders\", \"trips\"]",
            ),
            ("memory_bytes = 1073741824", "memory_bytes = 1073741825"),
        ] {
            assert!(GOOD.contains(from), "{from}");
            let other = System::from_toml(&GOOD.replace(from, to))
                .unwrap()
                .fingerprint_inputs();
            assert_ne!(other.canonical_json(), json, "{to}");
        }
        // What does not make the snapshot: names, descriptions, the example,
        // MIME types, the order of datasets and of env and TOML formatting.
        for (from, to) in [
            ("name = \"PostgreSQL\"", "name = \"Postgres\""),
            (
                "description = \"A database.\"",
                "description = \"Another.\"",
            ),
            ("version = \"15\"", "version = \"15.1\""),
            ("query = \"SELECT 1;\"", "query = \"SELECT 2;\""),
            ("answer_mime = \"text/csv\"", "answer_mime = \"text/plain\""),
            ("env = { PGDATA", "env = {PGDATA"),
        ] {
            let other = System::from_toml(&GOOD.replace(from, to))
                .unwrap()
                .fingerprint_inputs();
            assert_eq!(other.canonical_json(), json, "{to}");
        }
        let a = System::from_toml(&GOOD.replace("[\"orders\"]", "[\"a\", \"b\"]")).unwrap();
        let b = System::from_toml(&GOOD.replace("[\"orders\"]", "[\"b\", \"a\"]")).unwrap();
        assert_eq!(a.fingerprint_inputs(), b.fingerprint_inputs());
        let two = GOOD.replace(
            "env = { PGDATA = \"/var/lib/postgresql/data\" }",
            "env = { A = \"1\", B = \"2\" }",
        );
        let swapped = GOOD.replace(
            "env = { PGDATA = \"/var/lib/postgresql/data\" }",
            "env = { B = \"2\", A = \"1\" }",
        );
        assert_eq!(
            System::from_toml(&two)
                .unwrap()
                .fingerprint_inputs()
                .canonical_json(),
            System::from_toml(&swapped)
                .unwrap()
                .fingerprint_inputs()
                .canonical_json()
        );
    }

    const DATASET: &str = r#"
name = "orders"
description = "Orders."
file = "orders.csv"
sha256 = "fbf27e1354fc2ec45c35d2ba371adc4cec9728e16b32de615267aca82dbd2515"
size = 59839279
rows = 1000000

[generate]
image = { recipe = "python" }
argv = ["python3", "gen.py", "orders.csv"]
files = { "gen.py" = "files/gen.py" }
output = "orders.csv"
"#;

    fn dataset_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("files")).unwrap();
        std::fs::write(d.path().join("files/gen.py"), "print('x')\n").unwrap();
        d
    }

    #[test]
    fn a_dataset_parses_with_its_generators_files() {
        let d = dataset_dir();
        let ds = Dataset::from_toml(DATASET, d.path()).unwrap();
        assert_eq!(ds.mount_path(), "/datasets/orders/orders.csv");
        assert_eq!(ds.rows, Some(1_000_000));
        assert_eq!(ds.generate.files["gen.py"], "files/gen.py");
        let inputs = ds.generator_inputs();
        assert_eq!(inputs[0].path, "gen.py");
        assert_eq!(inputs[0].content.0, b"print('x')\n");
        // The content is not in the serialized form (the API's).
        let json = serde_json::to_string(&ds).unwrap();
        assert!(!json.contains("print"), "{json}");
    }

    #[test]
    fn bad_datasets_are_refused_naming_the_field() {
        let d = dataset_dir();
        for (from, to, field, why) in [
            (
                "rows = 1000000",
                "rows = 1000000\nurl = \"x\"",
                "url",
                "unknown field `url`",
            ),
            (
                "file = \"orders.csv\"",
                "file = \"../orders.csv\"",
                "file",
                "file name",
            ),
            (
                "file = \"orders.csv\"",
                "file = \".hidden\"",
                "file",
                "file name",
            ),
            (
                "sha256 = \"fbf2",
                "sha256 = \"FBF2",
                "sha256",
                "lowercase hex",
            ),
            ("size = 59839279", "size = 0", "size", "not 0"),
            ("size = 59839279", "size = -1", "size", "invalid value"),
            (
                "output = \"orders.csv\"",
                "output = \"/tmp/orders.csv\"",
                "generate.output",
                "relative",
            ),
            (
                "\"gen.py\" = \"files/gen.py\"",
                "\"gen.py\" = \"../gen.py\"",
                "generate.files.\"gen.py\"",
                "'..'",
            ),
            (
                "\"gen.py\" = \"files/gen.py\"",
                "\"gen.py\" = \"files/nope.py\"",
                "generate.files.\"gen.py\"",
                "cannot read",
            ),
            (
                "\"gen.py\" = \"files/gen.py\"",
                "\"orders.csv\" = \"files/gen.py\"",
                "generate.files.\"orders.csv\"",
                "output file",
            ),
            (
                "argv = [\"python3\", \"gen.py\", \"orders.csv\"]",
                "argv = []",
                "generate.argv",
                "command",
            ),
            (
                "image = { recipe = \"python\" }",
                "image = {}",
                "generate.image",
                "exactly one",
            ),
        ] {
            assert!(DATASET.contains(from), "{from}");
            let e = Dataset::from_toml(&DATASET.replace(from, to), d.path()).unwrap_err();
            assert_eq!(e.field, field, "{to}: {e}");
            assert!(e.message.contains(why), "{to}: {e}");
        }
    }

    /// A catalog directory with one dataset and these systems.
    fn catalog(systems: &[(&str, String)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for sub in ["images", "systems", "datasets/files"] {
            std::fs::create_dir_all(d.path().join(sub)).unwrap();
        }
        for r in ["postgres", "python"] {
            std::fs::write(d.path().join(format!("images/{r}.toml")), "name = \"x\"\n").unwrap();
        }
        std::fs::write(d.path().join("datasets/files/gen.py"), "").unwrap();
        std::fs::write(d.path().join("datasets/orders.toml"), DATASET).unwrap();
        for (name, text) in systems {
            std::fs::write(d.path().join(format!("systems/{name}.toml")), text).unwrap();
        }
        d
    }

    #[test]
    fn the_loader_checks_dataset_names_recipes_and_duplicates() {
        let d = catalog(&[("pg", GOOD.to_owned())]);
        let systems = load_systems(d.path()).unwrap();
        assert_eq!(systems.keys().collect::<Vec<_>>(), ["pg"]);

        let d = catalog(&[(
            "pg",
            GOOD.replace("[\"orders\"]", "[\"orders\", \"trips\"]"),
        )]);
        let e = load_systems(d.path()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("systems/pg.toml: datasets[1]: no dataset \"trips\""),
            "{msg}"
        );
        assert!(msg.contains("known: orders"), "{msg}");

        let d = catalog(&[("pg", GOOD.replace("\"postgres\" }", "\"nosuch\" }"))]);
        let msg = load_systems(d.path()).unwrap_err().to_string();
        assert!(
            msg.contains("pg.toml: image.recipe: \"nosuch\" has no recipe file"),
            "{msg}"
        );

        let d = catalog(&[("a", GOOD.to_owned()), ("b", GOOD.to_owned())]);
        let msg = load_systems(d.path()).unwrap_err().to_string();
        assert!(msg.contains("system \"pg\" is defined twice"), "{msg}");

        let d = catalog(&[("pg", GOOD.replace("state = \"disk\"", "state = \"ram\""))]);
        let msg = load_systems(d.path()).unwrap_err().to_string();
        assert!(
            msg.contains("pg.toml: state: unknown variant `ram`"),
            "{msg}"
        );

        // A dataset whose generator's recipe is missing.
        let d = catalog(&[]);
        std::fs::remove_file(d.path().join("images/python.toml")).unwrap();
        let msg = load_datasets(d.path()).unwrap_err().to_string();
        assert!(
            msg.contains("orders.toml: generate.image.recipe: \"python\" has no recipe file"),
            "{msg}"
        );

        // No systems/ or datasets/ at all: none.
        let empty = tempfile::tempdir().unwrap();
        assert!(load_systems(empty.path()).unwrap().is_empty());
    }
}
