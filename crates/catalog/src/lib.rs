//! The program catalog: manifests that describe programs well enough for a web
//! page to build their input form, and to turn a request (`--program ID`, option
//! values, input files) into a validated [`JobSpec`].
//!
//! A catalog is a directory: `programs/*.toml` (manifests, see docs/catalog.md),
//! `images/*.toml` (the recipes their images are built from), `systems/*.toml`
//! (databases and other stateful programs answering queries, see [`System`])
//! and `datasets/*.toml` (the files systems load, see [`Dataset`]). The default
//! catalog (the repository's `catalog/`) is compiled into the binary and written
//! out to the data directory when needed ([`extract_default`]).

mod form;
mod manifest;
mod mime;
mod system;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use runbox_core::{ErrorCode, InputFile, JobSpec, LimitsSpec};
use serde::Deserialize;

pub use form::{Choice, OptionError, OptionField, OptionKind};
pub use manifest::{
    ImageSource, InputDecl, ManifestError, OutputDecl, Program, SmokeTest, StdinDecl,
};
pub use system::{
    load_datasets, load_systems, load_systems_with, Dataset, FingerprintInputs, Generator, Scripts,
    System, SystemExample, SystemState, DATASETS_DIR, MAX_GENERATOR_FILE_BYTES, MAX_SCRIPT_BYTES,
    SYSTEM_FORMAT,
};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

/// Errors of the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{file}: {source}")]
    Manifest {
        file: PathBuf,
        #[source]
        source: ManifestError,
    },
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("program {id:?} is defined twice ({first} and {second})")]
    Duplicate {
        id: String,
        first: PathBuf,
        second: PathBuf,
    },
    /// A system or dataset defined twice.
    #[error("{kind} {name:?} is defined twice ({first} and {second})")]
    Defined {
        kind: &'static str,
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{file}: image.recipe {recipe:?} has no recipe file {path}")]
    MissingRecipe {
        file: PathBuf,
        recipe: String,
        path: PathBuf,
    },
    #[error("recipe {path}: {message}")]
    Recipe { path: PathBuf, message: String },
    #[error("no program {0:?} in the catalog (list them with `runbox programs`)")]
    UnknownProgram(String),
    #[error(
        "no system {0:?} in the catalog (list them with `runbox system ls` or GET /api/systems)"
    )]
    UnknownSystem(String),
    #[error("no dataset {0:?} in the catalog")]
    UnknownDataset(String),
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("{0}")]
    Request(String),
}

impl CatalogError {
    pub fn code(&self) -> ErrorCode {
        match self {
            CatalogError::UnknownProgram(_) => ErrorCode::ProgramNotFound,
            CatalogError::UnknownSystem(_) | CatalogError::UnknownDataset(_) => ErrorCode::NotFound,
            CatalogError::Option(_) | CatalogError::Request(_) => ErrorCode::InvalidArgument,
            CatalogError::Io { .. } => ErrorCode::Io,
            _ => ErrorCode::ImageInvalid,
        }
    }
}

/// Filters for [`Catalog::query`]; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub category: Option<String>,
    /// Programs with an input file of this MIME type.
    pub accepts: Option<String>,
    /// Programs with an output file of this MIME type.
    pub produces: Option<String>,
}

/// A request resolved against its program.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// An image job: image, argv, inputs and outputs filled in.
    pub spec: JobSpec,
    /// The program's default limits, to layer under the request's own.
    pub defaults: LimitsSpec,
}

/// A loaded, validated catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    dir: PathBuf,
    programs: BTreeMap<String, Program>,
    systems: BTreeMap<String, System>,
    datasets: BTreeMap<String, Dataset>,
    /// The store name of every recipe the catalog uses, by recipe.
    image_names: BTreeMap<String, String>,
    /// The recipes programs use.
    program_recipes: BTreeSet<String>,
}

#[derive(Deserialize)]
struct RecipeName {
    name: String,
}

impl Catalog {
    /// Loads `dir/programs/*.toml`, `dir/datasets/*.toml` and
    /// `dir/systems/*.toml` (the last two may be missing), checking every
    /// manifest, that each recipe they name exists in `dir/images/`, and that
    /// each dataset a system names exists.
    pub fn load(dir: impl Into<PathBuf>) -> Result<Catalog, CatalogError> {
        let dir = dir.into();
        let programs_dir = dir.join("programs");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&programs_dir)
            .map_err(io("reading", &programs_dir))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut programs: BTreeMap<String, Program> = BTreeMap::new();
        let mut origin: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut image_names = BTreeMap::new();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(io("reading", &file))?;
            let p = Program::from_toml(&text).map_err(|source| CatalogError::Manifest {
                file: file.clone(),
                source,
            })?;
            if let Some(first) = origin.get(&p.id) {
                return Err(CatalogError::Duplicate {
                    id: p.id.clone(),
                    first: first.clone(),
                    second: file,
                });
            }
            if let Some(recipe) = &p.image.recipe {
                if !image_names.contains_key(recipe) {
                    let path = dir.join("images").join(format!("{recipe}.toml"));
                    let text = std::fs::read_to_string(&path).map_err(|_| {
                        CatalogError::MissingRecipe {
                            file: file.clone(),
                            recipe: recipe.clone(),
                            path: path.clone(),
                        }
                    })?;
                    let r: RecipeName =
                        toml::from_str(&text).map_err(|e| CatalogError::Recipe {
                            path,
                            message: e.message().to_owned(),
                        })?;
                    image_names.insert(recipe.clone(), r.name);
                }
            }
            origin.insert(p.id.clone(), file);
            programs.insert(p.id.clone(), p);
        }
        let program_recipes: BTreeSet<String> = image_names.keys().cloned().collect();
        let datasets = load_datasets(&dir)?;
        let systems = load_systems_with(&dir, &datasets)?;
        let used = systems
            .values()
            .map(|s| &s.image)
            .chain(datasets.values().map(|d| &d.generate.image));
        for recipe in used.filter_map(|i| i.recipe.as_ref()) {
            if !image_names.contains_key(recipe) {
                let path = dir.join("images").join(format!("{recipe}.toml"));
                let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
                let r: RecipeName = toml::from_str(&text).map_err(|e| CatalogError::Recipe {
                    path,
                    message: e.message().to_owned(),
                })?;
                image_names.insert(recipe.clone(), r.name);
            }
        }
        Ok(Catalog {
            dir,
            programs,
            systems,
            datasets,
            image_names,
            program_recipes,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn programs(&self) -> impl Iterator<Item = &Program> {
        self.programs.values()
    }

    pub fn get(&self, id: &str) -> Result<&Program, CatalogError> {
        self.programs
            .get(id)
            .ok_or_else(|| CatalogError::UnknownProgram(id.to_owned()))
    }

    /// Programs matching every filter given.
    pub fn query(&self, q: &Query) -> Vec<&Program> {
        self.programs
            .values()
            .filter(|p| q.category.as_ref().is_none_or(|c| &p.category == c))
            .filter(|p| q.accepts.as_ref().is_none_or(|m| p.accepts(m)))
            .filter(|p| q.produces.as_ref().is_none_or(|m| p.produces(m)))
            .collect()
    }

    /// The recipe files the catalog's programs use, by recipe name. (Not the
    /// systems' and datasets': [`Catalog::system_recipes`].)
    pub fn recipes(&self) -> Vec<(String, PathBuf)> {
        self.program_recipes
            .iter()
            .map(|r| (r.clone(), self.dir.join("images").join(format!("{r}.toml"))))
            .collect()
    }

    /// The recipe files the catalog's systems and dataset generators use, by
    /// recipe name (some may be programs' too).
    pub fn system_recipes(&self) -> Vec<(String, PathBuf)> {
        let used: BTreeSet<&String> = self
            .systems
            .values()
            .map(|s| &s.image)
            .chain(self.datasets.values().map(|d| &d.generate.image))
            .filter_map(|i| i.recipe.as_ref())
            .collect();
        used.into_iter()
            .map(|r| (r.clone(), self.dir.join("images").join(format!("{r}.toml"))))
            .collect()
    }

    /// Every recipe the catalog uses (programs', systems' and dataset
    /// generators'), each once, by recipe name.
    pub fn all_recipes(&self) -> Vec<(String, PathBuf)> {
        let mut all: std::collections::BTreeMap<String, PathBuf> =
            self.recipes().into_iter().collect();
        all.extend(self.system_recipes());
        all.into_iter().collect()
    }

    pub fn systems(&self) -> impl Iterator<Item = &System> {
        self.systems.values()
    }

    pub fn system(&self, id: &str) -> Result<&System, CatalogError> {
        self.systems
            .get(id)
            .ok_or_else(|| CatalogError::UnknownSystem(id.to_owned()))
    }

    pub fn datasets(&self) -> impl Iterator<Item = &Dataset> {
        self.datasets.values()
    }

    pub fn dataset(&self, name: &str) -> Result<&Dataset, CatalogError> {
        self.datasets
            .get(name)
            .ok_or_else(|| CatalogError::UnknownDataset(name.to_owned()))
    }

    /// The store name of an image source's image (a recipe's name, or the
    /// reference itself).
    pub fn image_name_of(&self, image: &ImageSource) -> String {
        match (&image.recipe, &image.reference) {
            (Some(r), _) => self.image_names.get(r).cloned().unwrap_or_default(),
            (None, Some(r)) => r.clone(),
            (None, None) => String::new(),
        }
    }

    /// The store name of the image a recipe builds.
    pub fn recipe_image_name(&self, recipe: &str) -> String {
        self.image_names.get(recipe).cloned().unwrap_or_default()
    }

    /// [`Catalog::image_name_of`], by another name.
    pub fn source_image_name(&self, image: &ImageSource) -> String {
        self.image_name_of(image)
    }

    /// The store name of a program's image.
    pub fn image_name(&self, p: &Program) -> String {
        self.image_name_of(&p.image)
    }

    /// Turns a request for a program into an image job: the image, the command
    /// line with the options' fragments, the declared inputs (the request's, or
    /// the examples), stdin, outputs and env. Refuses what a program request may
    /// not carry (its own image, argv, entrypoint, workdir or user), unknown
    /// options and bad values, missing required inputs, and stdin for a program
    /// that does not read it.
    pub fn resolve(&self, mut req: JobSpec) -> Result<Resolved, CatalogError> {
        let id = req
            .program
            .take()
            .ok_or_else(|| CatalogError::Request("no program given".into()))?;
        let p = self.get(&id)?;
        let refuse = |what: &str| {
            Err(CatalogError::Request(format!("{what} cannot be given with a program; it comes from {id}'s manifest (set its options instead)")))
        };
        if !req.image.is_empty() {
            return refuse("an image");
        }
        if req.argv.is_some() {
            return refuse("a command (argv)");
        }
        if req.entrypoint.is_some() {
            return refuse("an entrypoint");
        }
        if req.workdir.is_some() {
            return refuse("a working directory");
        }
        if req.user.is_some() {
            return refuse("a user");
        }
        if let Some(unknown) = req
            .options
            .keys()
            .find(|k| !p.options.iter().any(|o| &o.name == *k))
        {
            let known = p
                .options
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(OptionError::Unknown {
                name: unknown.clone(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known
                },
            }
            .into());
        }
        let mut fragments = Vec::new();
        for o in &p.options {
            fragments.extend(o.fragments(req.options.get(&o.name).map(String::as_str))?);
        }
        let argv: Vec<String> = p
            .argv
            .iter()
            .flat_map(|a| {
                if a == "{options}" {
                    fragments.clone()
                } else {
                    vec![a.clone()]
                }
            })
            .collect();

        let mut inputs = Vec::with_capacity(p.inputs.len() + req.inputs.len());
        for decl in &p.inputs {
            match req.inputs.iter().position(|f| f.path == decl.path) {
                Some(i) => inputs.push(req.inputs.remove(i)),
                None => match &decl.example {
                    Some(ex) => inputs.push(InputFile {
                        path: decl.path.clone(),
                        content: ex.clone(),
                        executable: false,
                    }),
                    None if decl.required => {
                        return Err(CatalogError::Request(format!(
                            "{id} needs the input file {:?} ({})",
                            decl.path, decl.mime
                        )))
                    }
                    None => {}
                },
            }
        }
        inputs.extend(req.inputs);
        let stdin = match req.stdin {
            // An empty stdin (a CLI run from /dev/null, say) is no input at all.
            Some(s) if !p.stdin.accepted && s.0.is_empty() => None,
            Some(s) if !p.stdin.accepted => {
                return Err(CatalogError::Request(format!(
                    "{id} does not read stdin, but {} bytes were given (the CLI sends its stdin unless --no-stdin)",
                    s.0.len()
                )))
            }
            Some(s) => Some(s),
            None => p.stdin.example.clone(),
        };
        let mut outputs: Vec<String> = p.outputs.iter().map(|o| o.path.clone()).collect();
        outputs.extend(
            req.outputs
                .into_iter()
                .filter(|o| !p.outputs.iter().any(|d| &d.path == o)),
        );
        let mut env = p.env.clone();
        env.extend(req.env);

        Ok(Resolved {
            spec: JobSpec {
                image: self.image_name(p),
                program: None,
                options: BTreeMap::new(),
                argv: Some(argv),
                entrypoint: Some(Vec::new()),
                env,
                workdir: p.workdir.clone(),
                user: None,
                stdin,
                inputs,
                outputs,
                limits: req.limits,
                network: req.network,
            },
            defaults: p.limits,
        })
    }
}

/// The default catalog's files, compiled in: (path relative to the catalog, bytes).
pub fn default_files() -> &'static [(&'static str, &'static [u8])] {
    embedded::FILES
}

/// Maps an I/O error on `path` to a [`CatalogError::Io`] saying what was being done.
fn io(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CatalogError {
    let path = path.to_owned();
    move |source| CatalogError::Io {
        context,
        path,
        source,
    }
}

/// Writes the compiled-in default catalog to `dir` (replacing what is there when
/// it differs) and returns `dir`.
pub fn extract_default(dir: &Path) -> Result<PathBuf, CatalogError> {
    use fingerprint::digest_of;
    let want = digest_of(embedded::FILES);
    let stamp = dir.join(".runbox-catalog");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        return Ok(dir.to_owned());
    }
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for (rel, bytes) in embedded::FILES {
        let path = tmp.join(rel);
        std::fs::create_dir_all(path.parent().expect("relative paths have parents"))
            .map_err(io("creating", &path))?;
        std::fs::write(&path, bytes).map_err(io("writing", &path))?;
    }
    std::fs::write(tmp.join(".runbox-catalog"), &want).map_err(io("writing", &tmp))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(io("moving into place", dir))?;
    Ok(dir.to_owned())
}

/// A content fingerprint of the embedded files (FNV-1a over names and bytes: this
/// only tells "changed" from "same", so no cryptographic hash is needed).
mod fingerprint {
    pub fn digest_of(files: &[(&str, &[u8])]) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (name, bytes) in files {
            for b in name
                .bytes()
                .chain([0u8])
                .chain(bytes.iter().copied())
                .chain([0u8])
            {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }
}
