//! Program manifests: the TOML schema (documented in docs/catalog.md) and its
//! validation into [`Program`].
//!
//! The schema has no field that could widen a sandbox: no network, no host paths,
//! no mounts, no privileges. Unknown fields are errors, so such a field cannot be
//! slipped in either; paths are relative to the working directory and may not
//! climb out of it; limits are checked against the host's bounds at run time.

use std::collections::BTreeMap;

use runbox_core::{Data, ImageRef, LimitsSpec};
use serde::{Deserialize, Serialize};

use crate::form::{Choice, OptionField, OptionKind};
use crate::mime;

/// A validated catalog program.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Program {
    pub id: String,
    pub name: String,
    pub category: String,
    pub version: String,
    pub description: String,
    pub image: ImageSource,
    /// The command line; the element `{options}` expands to the options' fragments.
    pub argv: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    pub inputs: Vec<InputDecl>,
    pub stdin: StdinDecl,
    pub options: Vec<OptionField>,
    pub outputs: Vec<OutputDecl>,
    /// What the program writes to stdout, when that is its result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_mime: Option<String>,
    /// Defaults for this program, layered over runbox's defaults.
    pub limits: LimitsSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<SmokeTest>,
}

/// Where the program's image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageSource {
    /// A recipe in the catalog's `images/` directory, built with `runbox catalog build`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    /// An image reference (pulled or imported beforehand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// An input file the program reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InputDecl {
    /// Relative to the working directory.
    pub path: String,
    pub mime: String,
    pub required: bool,
    /// What `runbox run --program` and the playground start with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<Data>,
}

/// Whether the program reads stdin, and an example.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StdinDecl {
    pub accepted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<Data>,
}

/// A file the program writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputDecl {
    pub path: String,
    pub mime: String,
}

/// What running the program on its examples must give (`runbox catalog test`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SmokeTest {
    /// Option values for the test run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Text stdout must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_contains: Option<String>,
    /// Output files that must be collected, non-empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
}

// ---- the TOML as written ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestWire {
    id: String,
    name: String,
    category: String,
    version: String,
    description: String,
    image: ImageSource,
    argv: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    inputs: Vec<InputWire>,
    #[serde(default)]
    stdin: Option<StdinWire>,
    #[serde(default)]
    options: Vec<OptionWire>,
    #[serde(default)]
    outputs: Vec<OutputDecl>,
    #[serde(default)]
    stdout_mime: Option<String>,
    #[serde(default)]
    limits: LimitsSpec,
    #[serde(default)]
    test: Option<SmokeTest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputWire {
    path: String,
    mime: String,
    #[serde(default = "yes")]
    required: bool,
    #[serde(default)]
    example: Option<String>,
    #[serde(default)]
    example_base64: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StdinWire {
    accepted: bool,
    #[serde(default)]
    mime: Option<String>,
    #[serde(default)]
    example: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionWire {
    name: String,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    help: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    default: Option<toml::Value>,
    #[serde(default)]
    choices: Option<Vec<ChoiceWire>>,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
    #[serde(default)]
    integer: Option<bool>,
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    max_length: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChoiceWire {
    value: String,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    argv: Vec<String>,
}

fn yes() -> bool {
    true
}

/// Why a manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ManifestError {
    /// Where in the manifest, e.g. `options[1].max`.
    pub field: String,
    pub message: String,
}

pub(crate) fn bad(field: impl Into<String>, message: impl Into<String>) -> ManifestError {
    ManifestError {
        field: field.into(),
        message: message.into(),
    }
}

/// Program ids and recipe names: lowercase letters, digits, `-`, `_`.
pub(crate) fn check_id(field: &str, s: &str) -> Result<(), ManifestError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("{s:?} must be 1-64 lowercase letters, digits, '-' or '_'"),
        ))
    }
}

/// A path relative to the working directory that stays inside it.
pub(crate) fn check_rel_path(field: &str, p: &str) -> Result<(), ManifestError> {
    if p.is_empty() || p.starts_with('/') || p.contains('\0') || p.len() > 255 {
        return Err(bad(
            field,
            format!("{p:?} must be a relative path inside the working directory"),
        ));
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(bad(
            field,
            format!("{p:?} may not contain empty, '.' or '..' components"),
        ));
    }
    Ok(())
}

pub(crate) fn check_text(field: &str, s: &str, max: usize) -> Result<(), ManifestError> {
    if s.trim().is_empty() || s.len() > max {
        return Err(bad(
            field,
            format!("must be non-empty text of at most {max} bytes"),
        ));
    }
    Ok(())
}

impl Program {
    /// Parses and validates a manifest.
    pub fn from_toml(text: &str) -> Result<Program, ManifestError> {
        let w: ManifestWire = toml::from_str(text).map_err(|e| {
            let span = e
                .span()
                .map(|s| format!(" (at bytes {}..{})", s.start, s.end))
                .unwrap_or_default();
            bad("manifest", format!("{}{span}", e.message()))
        })?;
        check_id("id", &w.id)?;
        check_text("name", &w.name, 100)?;
        check_id("category", &w.category)?;
        check_text("version", &w.version, 64)?;
        check_text("description", &w.description, 2000)?;
        match (&w.image.recipe, &w.image.reference) {
            (Some(r), None) => check_id("image.recipe", r)?,
            (None, Some(r)) => {
                ImageRef::parse(r).map_err(|e| bad("image.reference", e.to_string()))?;
            }
            _ => {
                return Err(bad(
                    "image",
                    "give exactly one of \"recipe\" or \"reference\"",
                ))
            }
        }
        if w.argv.is_empty() || w.argv[0].is_empty() || w.argv[0] == "{options}" {
            return Err(bad("argv", "must start with the command"));
        }
        let placeholders = w.argv.iter().filter(|a| *a == "{options}").count();
        if placeholders > 1 {
            return Err(bad("argv", "\"{options}\" may appear once"));
        }
        if !w.options.is_empty() && placeholders == 0 {
            return Err(bad(
                "argv",
                "the program has options, so argv needs an \"{options}\" element where they go",
            ));
        }
        if let Some((i, _)) = w
            .argv
            .iter()
            .enumerate()
            .find(|(_, a)| a.contains('\0') || a.contains("{value}"))
        {
            return Err(bad(
                format!("argv[{i}]"),
                "may not contain NUL or {value} (that belongs in an option's argv)",
            ));
        }
        for (k, v) in &w.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(bad(
                    format!("env.{k}"),
                    "names are non-empty without '=' or NUL; values without NUL",
                ));
            }
        }
        if let Some(wd) = &w.workdir {
            if !wd.starts_with('/')
                || wd.split('/').any(|c| c == "..")
                || ["/proc", "/sys", "/dev"]
                    .iter()
                    .any(|p| wd == p || wd.starts_with(&format!("{p}/")))
            {
                return Err(bad(
                    "workdir",
                    format!("{wd:?} must be absolute, without '..', outside /proc, /sys and /dev"),
                ));
            }
        }

        let mut inputs = Vec::new();
        for (i, inp) in w.inputs.into_iter().enumerate() {
            let f = |s: &str| format!("inputs[{i}].{s}");
            check_rel_path(&f("path"), &inp.path)?;
            mime::check(&inp.mime).map_err(|m| bad(f("mime"), m))?;
            if inputs.iter().any(|x: &InputDecl| x.path == inp.path) {
                return Err(bad(f("path"), format!("{:?} is declared twice", inp.path)));
            }
            let example = match (inp.example, inp.example_base64) {
                (Some(t), None) => Some(Data(t.into_bytes())),
                (None, Some(b)) => {
                    Some(Data(runbox_core::data::from_base64(&b).map_err(|e| {
                        bad(f("example_base64"), format!("not valid base64: {e}"))
                    })?))
                }
                (None, None) => None,
                (Some(_), Some(_)) => {
                    return Err(bad(
                        f("example"),
                        "give \"example\" or \"example_base64\", not both",
                    ))
                }
            };
            inputs.push(InputDecl {
                path: inp.path,
                mime: inp.mime,
                required: inp.required,
                example,
            });
        }
        let stdin = match w.stdin {
            None => StdinDecl::default(),
            Some(s) => {
                if !s.accepted && s.example.is_some() {
                    return Err(bad(
                        "stdin.example",
                        "an example for a program that does not read stdin",
                    ));
                }
                if let Some(m) = &s.mime {
                    mime::check(m).map_err(|m| bad("stdin.mime", m))?;
                }
                StdinDecl {
                    accepted: s.accepted,
                    mime: s.mime,
                    example: s.example.map(|e| Data(e.into_bytes())),
                }
            }
        };

        let mut options = Vec::new();
        for (i, o) in w.options.into_iter().enumerate() {
            let field = option(i, o)?;
            if options.iter().any(|x: &OptionField| x.name == field.name) {
                return Err(bad(
                    format!("options[{i}].name"),
                    format!("{:?} is declared twice", field.name),
                ));
            }
            options.push(field);
        }

        let mut outputs: Vec<OutputDecl> = Vec::new();
        for (i, o) in w.outputs.into_iter().enumerate() {
            check_rel_path(&format!("outputs[{i}].path"), &o.path)?;
            mime::check(&o.mime).map_err(|m| bad(format!("outputs[{i}].mime"), m))?;
            if outputs.iter().any(|x| x.path == o.path) {
                return Err(bad(
                    format!("outputs[{i}].path"),
                    format!("{:?} is declared twice", o.path),
                ));
            }
            outputs.push(o);
        }
        if let Some(m) = &w.stdout_mime {
            mime::check(m).map_err(|m| bad("stdout_mime", m))?;
        }
        if let Some(t) = &w.test {
            for name in t.options.keys() {
                if !options.iter().any(|o| &o.name == name) {
                    return Err(bad(
                        "test.options",
                        format!("{name:?} is not one of the program's options"),
                    ));
                }
            }
            for p in &t.outputs {
                if !outputs.iter().any(|o| &o.path == p) {
                    return Err(bad(
                        "test.outputs",
                        format!("{p:?} is not a declared output"),
                    ));
                }
            }
        }

        Ok(Program {
            id: w.id,
            name: w.name,
            category: w.category,
            version: w.version,
            description: w.description,
            image: w.image,
            argv: w.argv,
            env: w.env,
            workdir: w.workdir,
            inputs,
            stdin,
            options,
            outputs,
            stdout_mime: w.stdout_mime,
            limits: w.limits,
            test: w.test,
        })
    }

    /// Whether the program reads a file (or stdin) of this MIME type.
    pub fn accepts(&self, mime: &str) -> bool {
        self.inputs.iter().any(|i| i.mime == mime) || self.stdin.mime.as_deref() == Some(mime)
    }

    /// Whether the program writes a file (or stdout) of this MIME type.
    pub fn produces(&self, mime: &str) -> bool {
        self.outputs.iter().any(|o| o.mime == mime) || self.stdout_mime.as_deref() == Some(mime)
    }
}

const KINDS: [&str; 4] = ["checkbox", "select", "number", "text"];

fn option(i: usize, o: OptionWire) -> Result<OptionField, ManifestError> {
    let f = |s: &str| format!("options[{i}].{s}");
    check_id(&f("name"), &o.name)?;
    // Which fields each kind of option may have: a field of another kind is a
    // mistake worth naming, not something to ignore.
    let fields: [(&str, bool, &[&str]); 7] = [
        ("choices", o.choices.is_some(), &["select"]),
        ("argv", o.argv.is_some(), &["checkbox", "number", "text"]),
        ("min", o.min.is_some(), &["number"]),
        ("max", o.max.is_some(), &["number"]),
        ("integer", o.integer.is_some(), &["number"]),
        ("pattern", o.pattern.is_some(), &["text"]),
        ("max_length", o.max_length.is_some(), &["text"]),
    ];
    if KINDS.contains(&o.kind.as_str()) {
        for (name, present, kinds) in fields {
            if present && !kinds.contains(&o.kind.as_str()) {
                return Err(bad(
                    f(name),
                    format!("only {} options have {name:?}", kinds.join(", ")),
                ));
            }
        }
    }
    let fragments = |argv: Option<Vec<String>>| -> Result<Vec<String>, ManifestError> {
        let v =
            argv.ok_or_else(|| bad(f("argv"), "missing: the argv fragments this option adds"))?;
        if v.iter().any(|a| a.contains('\0')) {
            return Err(bad(f("argv"), "may not contain NUL"));
        }
        Ok(v)
    };
    let kind = match o.kind.as_str() {
        "checkbox" => {
            let default = match o.default {
                None => false,
                Some(toml::Value::Boolean(b)) => b,
                Some(_) => return Err(bad(f("default"), "a checkbox's default is true or false")),
            };
            OptionKind::Checkbox {
                default,
                argv: fragments(o.argv)?,
            }
        }
        "select" => {
            let choices = o
                .choices
                .ok_or_else(|| bad(f("choices"), "missing: a select needs choices"))?;
            if choices.is_empty() {
                return Err(bad(f("choices"), "needs at least one choice"));
            }
            let mut out: Vec<Choice> = Vec::new();
            for (j, c) in choices.into_iter().enumerate() {
                if c.value.is_empty() || out.iter().any(|x| x.value == c.value) {
                    return Err(bad(
                        format!("options[{i}].choices[{j}].value"),
                        "must be non-empty and unique",
                    ));
                }
                if c.argv.iter().any(|a| a.contains('\0')) {
                    return Err(bad(
                        format!("options[{i}].choices[{j}].argv"),
                        "may not contain NUL",
                    ));
                }
                out.push(Choice {
                    label: c.label.unwrap_or_else(|| c.value.clone()),
                    value: c.value,
                    argv: c.argv,
                });
            }
            let default = match o.default {
                None => out[0].value.clone(),
                Some(toml::Value::String(s)) if out.iter().any(|c| c.value == s) => s,
                Some(_) => return Err(bad(f("default"), "must be one of the choices' values")),
            };
            OptionKind::Select {
                default,
                choices: out,
            }
        }
        "number" => {
            let (min, max) = match (o.min, o.max) {
                (Some(a), Some(b)) if a.is_finite() && b.is_finite() && a <= b => (a, b),
                _ => {
                    return Err(bad(
                        f("min"),
                        "a number needs finite \"min\" and \"max\" with min <= max",
                    ))
                }
            };
            let integer = o.integer.unwrap_or(true);
            let default = match o.default {
                None => min,
                Some(toml::Value::Integer(n)) => n as f64,
                Some(toml::Value::Float(x)) => x,
                Some(_) => return Err(bad(f("default"), "must be a number")),
            };
            if default < min || default > max || (integer && default.fract() != 0.0) {
                return Err(bad(
                    f("default"),
                    format!("{default} is outside {min}..={max} or not whole"),
                ));
            }
            OptionKind::Number {
                default,
                min,
                max,
                integer,
                argv: fragments(o.argv)?,
            }
        }
        "text" => {
            let pattern = o.pattern.ok_or_else(|| {
                bad(
                    f("pattern"),
                    "missing: text options need a pattern their values must match",
                )
            })?;
            let regex = regex::Regex::new(&format!("^(?:{pattern})$"))
                .map_err(|e| bad(f("pattern"), format!("not a valid regex: {e}")))?;
            let max_length = o.max_length.unwrap_or(256);
            if max_length == 0 || max_length > 4096 {
                return Err(bad(f("max_length"), "must be 1 to 4096"));
            }
            let default = match o.default {
                None => String::new(),
                Some(toml::Value::String(s)) => s,
                Some(_) => return Err(bad(f("default"), "must be a string")),
            };
            if !default.is_empty() && !regex.is_match(&default) {
                return Err(bad(
                    f("default"),
                    format!("{default:?} does not match the pattern"),
                ));
            }
            OptionKind::Text {
                default,
                pattern,
                max_length,
                argv: fragments(o.argv)?,
                regex,
            }
        }
        other => {
            return Err(bad(
                f("type"),
                format!("{other:?} is not one of {}", KINDS.join(", ")),
            ))
        }
    };
    Ok(OptionField {
        label: o.label.unwrap_or_else(|| o.name.clone()),
        name: o.name,
        help: o.help,
        kind,
    })
}
