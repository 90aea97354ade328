//! From a request and an image to a [`JobPlan`]: everything a backend needs, checked.
//!
//! This is where `docker run` semantics are applied to the image's config
//! (Entrypoint, Cmd, Env, WorkingDir, User) and where hostile values are refused:
//! paths with `..` or into /proc, /sys, /dev (runc CVE-2024-21626 used a WorkingDir
//! under /proc/self/fd), NUL bytes, ids outside the sandbox's range, and sizes the
//! kernel or the limits would refuse later. Nothing here touches the host.

use std::collections::BTreeMap;
use std::path::PathBuf;

use runbox_core::{ErrorCode, JobSpec, LimitError, Limits, LimitsPolicy};

use crate::user::{UserError, UserSpec};

/// The default working directory when neither the request nor the image sets one.
/// (docker uses `/`; a job needs a place it may write its files, so runbox creates
/// `/work`, owned by the job's user.)
pub const DEFAULT_WORKDIR: &str = "/work";
/// PATH when the image sets none (docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
pub const HOSTNAME: &str = "runbox";
/// The kernel's limit on one argument or environment string (MAX_ARG_STRLEN).
pub const MAX_ARG_STRLEN: usize = 128 * 1024;
/// Total bytes of arguments and environment accepted.
pub const MAX_ARGS_TOTAL: usize = 1024 * 1024;
pub const MAX_INPUTS: usize = 1024;
pub const MAX_OUTPUTS: usize = 256;
const MAX_PATH: usize = 4096;
const MAX_NAME: usize = 255;

/// The parts of an image's config that decide how a job runs, as stored (untrusted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// An image ready to run: its unpacked layers and its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunImage {
    /// Directory holding the unpacked layers.
    pub layers_dir: PathBuf,
    /// Layer directory names under `layers_dir`, lowest layer first.
    pub layers: Vec<String>,
    pub defaults: ImageDefaults,
}

/// A file to place before the program starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedInput {
    /// Normalized absolute path inside the sandbox.
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
}

/// A path to collect after the program ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedOutput {
    /// As the request named it (reported back in the result).
    pub requested: String,
    /// Normalized absolute path inside the sandbox.
    pub path: String,
}

/// Everything a backend needs to run one job, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPlan {
    pub job_id: String,
    pub image: RunImage,
    pub argv: Vec<String>,
    /// Final environment, in a stable order. HOME is filled in by the backend from
    /// the image's /etc/passwd when absent.
    pub env: BTreeMap<String, String>,
    pub workdir: String,
    /// `None`: the default unprivileged user.
    pub user: Option<UserSpec>,
    pub hostname: String,
    pub stdin: Vec<u8>,
    pub inputs: Vec<PlannedInput>,
    pub outputs: Vec<PlannedOutput>,
    pub limits: Limits,
}

/// Why a job cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no command to run: the image has no Entrypoint or Cmd; give the command after `--`")]
    NoCommand,
    #[error("argument {index} contains a NUL byte")]
    ArgNul { index: usize },
    #[error(
        "argument {index} is {len} bytes, over the kernel's limit of {MAX_ARG_STRLEN} per argument"
    )]
    ArgTooLong { index: usize, len: usize },
    #[error("arguments and environment total {total} bytes, over the {MAX_ARGS_TOTAL} bytes runbox passes to a program")]
    ArgsTooLarge { total: usize },
    #[error(
        "environment variable name {name:?} is invalid: it must be non-empty, without '=' or NUL"
    )]
    EnvName { name: String },
    #[error("environment variable {name} contains a NUL byte")]
    EnvNul { name: String },
    #[error("{what} {path:?} is not allowed: {why}")]
    Path {
        what: &'static str,
        path: String,
        why: &'static str,
    },
    #[error("the image's {field} {value:?} is refused: {why}")]
    ImageConfig {
        field: &'static str,
        value: String,
        why: String,
    },
    #[error("user: {0}")]
    User(#[from] UserError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("stdin and input files total {total} bytes, over the input limit of {limit} bytes (raise it with --input-limit)")]
    InputsTooLarge { total: u64, limit: u64 },
    #[error("{count} {what} given; at most {max} are allowed")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("input file {path:?} is given twice")]
    DuplicateInput { path: String },
}

impl PlanError {
    pub fn code(&self) -> ErrorCode {
        match self {
            PlanError::Path { .. } | PlanError::DuplicateInput { .. } => ErrorCode::InvalidPath,
            PlanError::ImageConfig { .. } => ErrorCode::ImageInvalid,
            PlanError::Limit(_) | PlanError::InputsTooLarge { .. } => ErrorCode::InvalidLimit,
            _ => ErrorCode::InvalidArgument,
        }
    }
}

/// How a path is being normalized.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PathRule {
    /// From the request: `..` is an error.
    Strict,
    /// From the image config: `..` is resolved lexically, as docker does.
    Lexical,
}

/// Normalizes `path` (relative ones against `base`) to an absolute path without `.`,
/// `..` or empty components, refusing /proc, /sys and /dev.
fn normalize(
    what: &'static str,
    path: &str,
    base: &str,
    rule: PathRule,
) -> Result<String, PlanError> {
    let err = |why| PlanError::Path {
        what,
        path: path.to_owned(),
        why,
    };
    if path.is_empty() {
        return Err(err("it is empty"));
    }
    if path.contains('\0') {
        return Err(err("it contains a NUL byte"));
    }
    if path.len() > MAX_PATH {
        return Err(err("it is longer than 4096 bytes"));
    }
    let mut parts: Vec<&str> = Vec::new();
    let joined;
    let full = if path.starts_with('/') {
        path
    } else {
        joined = format!("{base}/{path}");
        &joined
    };
    for c in full.split('/') {
        match c {
            "" | "." => {}
            ".." if rule == PathRule::Lexical => {
                parts.pop();
            }
            ".." => return Err(err("'..' is not allowed")),
            c if c.len() > MAX_NAME => return Err(err("a component is longer than 255 bytes")),
            c => parts.push(c),
        }
    }
    if matches!(parts.first(), Some(&("proc" | "sys" | "dev"))) {
        return Err(err("it is inside /proc, /sys or /dev"));
    }
    Ok(format!("/{}", parts.join("/")))
}

fn check_env_name(name: &str) -> Result<(), PlanError> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(PlanError::EnvName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Builds the plan for `spec` on `image`. `base` holds the limits the request's
/// overrides apply to; `policy` bounds the result.
pub fn plan(
    job_id: String,
    spec: JobSpec,
    image: RunImage,
    base: &Limits,
    policy: &LimitsPolicy,
) -> Result<JobPlan, PlanError> {
    let limits = Limits::resolve(base, &spec.limits, policy)?;
    let d = &image.defaults;

    // docker: --entrypoint replaces the image's Entrypoint and drops its Cmd.
    let entrypoint = spec
        .entrypoint
        .clone()
        .or_else(|| d.entrypoint.clone())
        .unwrap_or_default();
    let cmd = match (&spec.argv, &spec.entrypoint) {
        (Some(a), _) => a.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => d.cmd.clone().unwrap_or_default(),
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() || argv[0].is_empty() {
        return Err(PlanError::NoCommand);
    }
    for (index, a) in argv.iter().enumerate() {
        if a.contains('\0') {
            return Err(PlanError::ArgNul { index });
        }
        if a.len() > MAX_ARG_STRLEN {
            return Err(PlanError::ArgTooLong {
                index,
                len: a.len(),
            });
        }
    }

    let mut env = BTreeMap::new();
    for entry in &d.env {
        // Malformed image entries are dropped, not fatal: the image is not the caller's.
        if let Some((k, v)) = entry.split_once('=') {
            if check_env_name(k).is_ok() && !v.contains('\0') {
                env.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    for (k, v) in &spec.env {
        check_env_name(k)?;
        if v.contains('\0') {
            return Err(PlanError::EnvNul { name: k.clone() });
        }
        env.insert(k.clone(), v.clone());
    }
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    env.entry("HOSTNAME".into())
        .or_insert_with(|| HOSTNAME.into());
    for (k, v) in &env {
        if k.len() + v.len() + 1 > MAX_ARG_STRLEN {
            return Err(PlanError::ArgTooLong {
                index: argv.len(),
                len: k.len() + v.len() + 1,
            });
        }
    }
    let total: usize = argv.iter().map(|a| a.len() + 1).sum::<usize>()
        + env
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
    if total > MAX_ARGS_TOTAL {
        return Err(PlanError::ArgsTooLarge { total });
    }

    let workdir = match (&spec.workdir, &d.working_dir) {
        (Some(w), _) => normalize("working directory", w, "/", PathRule::Strict)?,
        (None, Some(w)) if !w.is_empty() => normalize("WorkingDir", w, "/", PathRule::Lexical)
            .map_err(|e| PlanError::ImageConfig {
                field: "WorkingDir",
                value: w.clone(),
                why: format!("{e}; override it with --workdir"),
            })?,
        _ => DEFAULT_WORKDIR.to_owned(),
    };

    let user = match (&spec.user, &d.user) {
        (Some(u), _) => Some(UserSpec::parse(u)?),
        (None, Some(u)) if !u.is_empty() => {
            Some(UserSpec::parse(u).map_err(|e| PlanError::ImageConfig {
                field: "User",
                value: u.clone(),
                why: format!("{e}; override it with --user"),
            })?)
        }
        _ => None,
    };

    if spec.inputs.len() > MAX_INPUTS {
        return Err(PlanError::TooMany {
            what: "input files",
            count: spec.inputs.len(),
            max: MAX_INPUTS,
        });
    }
    if spec.outputs.len() > MAX_OUTPUTS {
        return Err(PlanError::TooMany {
            what: "output paths",
            count: spec.outputs.len(),
            max: MAX_OUTPUTS,
        });
    }
    let stdin = spec.stdin.map(|d| d.0).unwrap_or_default();
    let total_in = stdin.len() as u64
        + spec
            .inputs
            .iter()
            .map(|f| f.content.len() as u64)
            .sum::<u64>();
    if total_in > limits.input_bytes {
        return Err(PlanError::InputsTooLarge {
            total: total_in,
            limit: limits.input_bytes,
        });
    }
    let mut inputs = Vec::with_capacity(spec.inputs.len());
    for f in spec.inputs {
        let path = normalize("input path", &f.path, &workdir, PathRule::Strict)?;
        if path == "/" || path == workdir {
            return Err(PlanError::Path {
                what: "input path",
                path: f.path,
                why: "it names a directory",
            });
        }
        if inputs.iter().any(|i: &PlannedInput| i.path == path) {
            return Err(PlanError::DuplicateInput { path: f.path });
        }
        inputs.push(PlannedInput {
            path,
            content: f.content.0,
            mode: if f.executable { 0o755 } else { 0o644 },
        });
    }
    let mut outputs = Vec::with_capacity(spec.outputs.len());
    for o in spec.outputs {
        let path = normalize("output path", &o, &workdir, PathRule::Strict)?;
        if path == "/" {
            return Err(PlanError::Path {
                what: "output path",
                path: o,
                why: "it is the root directory",
            });
        }
        outputs.push(PlannedOutput { requested: o, path });
    }

    Ok(JobPlan {
        job_id,
        image,
        argv,
        env,
        workdir,
        user,
        hostname: HOSTNAME.to_owned(),
        stdin,
        inputs,
        outputs,
        limits,
    })
}

impl JobPlan {
    /// Paths to try for `argv[0]`, the way execvp searches PATH: the name itself when
    /// it contains a `/`, else each absolute PATH entry joined with it.
    pub fn exec_candidates(&self) -> Vec<String> {
        let cmd = &self.argv[0];
        if cmd.contains('/') {
            return vec![cmd.clone()];
        }
        let path = self
            .env
            .get("PATH")
            .map(String::as_str)
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| format!("{}/{cmd}", d.trim_end_matches('/')))
            .collect()
    }

    /// Environment as `KEY=VALUE` strings.
    pub fn env_strings(&self) -> Vec<String> {
        self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runbox_core::{Data, InputFile};

    fn image(defaults: ImageDefaults) -> RunImage {
        RunImage {
            layers_dir: "/layers".into(),
            layers: vec!["a".into()],
            defaults,
        }
    }

    fn policy() -> LimitsPolicy {
        LimitsPolicy::for_host(8 << 30, 2)
    }

    fn run(spec: JobSpec, d: ImageDefaults) -> Result<JobPlan, PlanError> {
        plan("j".into(), spec, image(d), &Limits::default(), &policy())
    }

    fn spec() -> JobSpec {
        JobSpec {
            image: "x".into(),
            ..Default::default()
        }
    }

    #[test]
    fn entrypoint_and_cmd_follow_docker() {
        let d = ImageDefaults {
            entrypoint: Some(vec!["/ep".into()]),
            cmd: Some(vec!["default".into()]),
            ..Default::default()
        };
        assert_eq!(run(spec(), d.clone()).unwrap().argv, ["/ep", "default"]);
        let s = JobSpec {
            argv: Some(vec!["mine".into()]),
            ..spec()
        };
        assert_eq!(run(s, d.clone()).unwrap().argv, ["/ep", "mine"]);
        let s = JobSpec {
            entrypoint: Some(vec!["/other".into()]),
            ..spec()
        };
        assert_eq!(
            run(s, d).unwrap().argv,
            ["/other"],
            "--entrypoint drops the image Cmd"
        );
        assert_eq!(
            run(spec(), ImageDefaults::default()).unwrap_err(),
            PlanError::NoCommand
        );
    }

    #[test]
    fn env_merges_image_then_request_and_never_the_host() {
        let d = ImageDefaults {
            env: vec!["A=1".into(), "B=2".into(), "broken".into(), "=x".into()],
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        };
        let mut s = spec();
        s.env.insert("B".into(), "3".into());
        let p = run(s, d).unwrap();
        assert_eq!(p.env.get("A").unwrap(), "1");
        assert_eq!(p.env.get("B").unwrap(), "3");
        assert_eq!(p.env.get("PATH").unwrap(), DEFAULT_PATH);
        assert!(!p.env.contains_key("broken") && !p.env.contains_key(""));
        assert!(
            !p.env.contains_key("HOME"),
            "HOME comes from the image's passwd at run time"
        );
        assert!(p
            .env
            .keys()
            .all(|k| ["A", "B", "PATH", "HOSTNAME"].contains(&k.as_str())));
    }

    #[test]
    fn bad_env_and_argv_are_rejected() {
        let cmd = ImageDefaults {
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        };
        let mut s = spec();
        s.env.insert("A=B".into(), "x".into());
        assert!(matches!(
            run(s, cmd.clone()),
            Err(PlanError::EnvName { .. })
        ));
        let s = JobSpec {
            argv: Some(vec!["a\0b".into()]),
            ..spec()
        };
        assert_eq!(
            run(s, cmd.clone()).unwrap_err(),
            PlanError::ArgNul { index: 0 }
        );
        let s = JobSpec {
            argv: Some(vec!["x".repeat(MAX_ARG_STRLEN + 1)]),
            ..spec()
        };
        assert!(matches!(run(s, cmd), Err(PlanError::ArgTooLong { .. })));
    }

    #[test]
    fn hostile_working_dirs_are_refused() {
        for wd in [
            "/proc/self/fd/7",
            "/proc/../proc/1/cwd",
            "/sys/kernel",
            "dev/shm",
        ] {
            let d = ImageDefaults {
                working_dir: Some(wd.into()),
                cmd: Some(vec!["sh".into()]),
                ..Default::default()
            };
            let e = run(spec(), d).unwrap_err();
            assert_eq!(e.code(), ErrorCode::ImageInvalid, "{wd}: {e}");
            assert!(e.to_string().contains("--workdir"), "{e}");
        }
        let d = ImageDefaults {
            working_dir: Some("/a/b/../../c".into()),
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        };
        assert_eq!(
            run(spec(), d).unwrap().workdir,
            "/c",
            "image paths are cleaned like docker"
        );
        let s = JobSpec {
            workdir: Some("/a/../b".into()),
            argv: Some(vec!["sh".into()]),
            ..spec()
        };
        assert!(matches!(
            run(s, ImageDefaults::default()),
            Err(PlanError::Path { .. })
        ));
    }

    #[test]
    fn workdir_defaults_to_work() {
        let s = JobSpec {
            argv: Some(vec!["sh".into()]),
            ..spec()
        };
        assert_eq!(
            run(s, ImageDefaults::default()).unwrap().workdir,
            DEFAULT_WORKDIR
        );
    }

    #[test]
    fn input_and_output_paths_are_normalized_under_the_workdir() {
        let mut s = JobSpec {
            argv: Some(vec!["sh".into()]),
            workdir: Some("/w".into()),
            ..spec()
        };
        s.inputs = vec![
            InputFile {
                path: "a/./b.txt".into(),
                content: Data::from("x"),
                executable: false,
            },
            InputFile {
                path: "/etc/x".into(),
                content: Data::from("y"),
                executable: true,
            },
        ];
        s.outputs = vec!["out.png".into()];
        let p = run(s, ImageDefaults::default()).unwrap();
        assert_eq!(p.inputs[0].path, "/w/a/b.txt");
        assert_eq!(
            (p.inputs[1].path.as_str(), p.inputs[1].mode),
            ("/etc/x", 0o755)
        );
        assert_eq!(p.outputs[0].path, "/w/out.png");
    }

    #[test]
    fn hostile_input_and_output_paths_are_refused() {
        for bad in [
            "../escape",
            "/proc/self/mem",
            "a/../../b",
            "/dev/null",
            "",
            "a\0b",
            "/",
        ] {
            let mut s = JobSpec {
                argv: Some(vec!["sh".into()]),
                ..spec()
            };
            s.inputs = vec![InputFile {
                path: bad.into(),
                content: Data::from("x"),
                executable: false,
            }];
            assert_eq!(
                run(s, ImageDefaults::default()).unwrap_err().code(),
                ErrorCode::InvalidPath,
                "input {bad:?}"
            );
            let mut s = JobSpec {
                argv: Some(vec!["sh".into()]),
                ..spec()
            };
            s.outputs = vec![bad.into()];
            assert_eq!(
                run(s, ImageDefaults::default()).unwrap_err().code(),
                ErrorCode::InvalidPath,
                "output {bad:?}"
            );
        }
    }

    #[test]
    fn inputs_over_the_limit_are_refused_before_anything_runs() {
        let mut s = JobSpec {
            argv: Some(vec!["sh".into()]),
            ..spec()
        };
        s.limits.input_bytes = Some(4);
        s.stdin = Some(Data::from("12345"));
        assert!(matches!(
            run(s, ImageDefaults::default()),
            Err(PlanError::InputsTooLarge { total: 5, limit: 4 })
        ));
    }

    #[test]
    fn image_user_is_parsed_and_hostile_values_refused() {
        let d = ImageDefaults {
            user: Some("postgres".into()),
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        };
        assert!(run(spec(), d).unwrap().user.is_some());
        let d = ImageDefaults {
            user: Some("0:4294967296".into()),
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        };
        assert_eq!(run(spec(), d).unwrap_err().code(), ErrorCode::ImageInvalid);
    }

    #[test]
    fn exec_candidates_follow_path() {
        let s = JobSpec {
            argv: Some(vec!["ls".into()]),
            ..spec()
        };
        let mut p = run(s, ImageDefaults::default()).unwrap();
        p.env.insert("PATH".into(), "/a:relative:/b/".into());
        assert_eq!(p.exec_candidates(), ["/a/ls", "/b/ls"]);
        p.argv[0] = "./prog".into();
        assert_eq!(p.exec_candidates(), ["./prog"]);
    }
}
