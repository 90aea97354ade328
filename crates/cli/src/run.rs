//! `runbox run`: from command-line flags to a JobSpec, a sandbox, and back to the
//! terminal (or one JSON JobResult).

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use runbox_core::{Data, ErrorCode, InputFile, JobResult, JobSpec, JobStatus, Limits, LimitsSpec};
use runbox_engine::{Engine, EngineConfig};
use runbox_sandbox::{CancelToken, Cancellable, JobEvents};

use crate::cli::{JobArgs, LimitArgs, RunArgs};
use crate::error::CliError;
use crate::units::human_bytes;
use crate::{hostout, print_json, Exit};

/// Mirrors the program's output to ours as it comes.
struct Mirror;

impl JobEvents for Mirror {
    fn stdout(&mut self, chunk: &[u8]) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(chunk).and_then(|_| out.flush());
    }
    fn stderr(&mut self, chunk: &[u8]) {
        let _ = std::io::stderr().write_all(chunk);
    }
}

/// Collects nothing live (the JSON result carries the output).
struct Quiet;
impl JobEvents for Quiet {}

/// SIGINT (Ctrl+C) and SIGTERM while a job runs: the first one cancels the job
/// (its sandbox is killed and removed, and its result still reported); a second
/// one takes the signal's default action, so an impatient user is never stuck
/// (the sandbox then dies with runbox, and the next start removes its cgroup).
struct Interrupts {
    token: CancelToken,
    /// The signal that cancelled the job (0: none).
    signal: Arc<AtomicUsize>,
}

impl Interrupts {
    fn install() -> anyhow::Result<Interrupts> {
        use signal_hook::{
            consts::signal::{SIGINT, SIGTERM},
            flag,
        };
        let cancelled = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicUsize::new(0));
        for sig in [SIGINT, SIGTERM] {
            // Actions run in registration order: a second signal finds the flag
            // set and dies; the first records itself, then sets the flag.
            flag::register_conditional_default(sig, cancelled.clone())
                .and_then(|_| flag::register_usize(sig, signal.clone(), sig as usize))
                .and_then(|_| flag::register(sig, cancelled.clone()))
                .with_context(|| format!("installing a handler for signal {sig}"))?;
        }
        Ok(Interrupts {
            token: CancelToken::from(cancelled),
            signal,
        })
    }

    /// The signal that cancelled the job, if one did.
    fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }
}

pub(crate) fn limits_spec(l: &LimitArgs) -> LimitsSpec {
    LimitsSpec {
        wall_time_ms: l.wall_time,
        cpu_time_ms: l.cpu_time,
        cpu_millis: l.cpus,
        memory_bytes: l.memory,
        pids: l.pids,
        nofile: l.nofile,
        file_size_bytes: l.file_size,
        tmpfs_bytes: l.tmpfs_size,
        tmpfs_inodes: l.tmpfs_inodes,
        output_bytes: l.output_limit,
        output_files_bytes: l.output_files_limit,
        input_bytes: l.input_limit,
    }
}

fn parse_options(opts: &[String]) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    for o in opts {
        let (k, v) = o.split_once('=').ok_or_else(|| {
            CliError::new(
                ErrorCode::InvalidArgument,
                format!("--option {o:?}: expected NAME=VALUE"),
            )
        })?;
        if out.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(CliError::new(
                ErrorCode::InvalidArgument,
                format!("--option {k} is given twice"),
            )
            .into());
        }
    }
    Ok(out)
}

fn parse_input(spec: &str, max: u64) -> anyhow::Result<InputFile> {
    let bad = || {
        CliError::new(
            ErrorCode::InvalidArgument,
            format!("--input {spec:?}: expected PATH=@HOSTFILE or PATH=TEXT (PATH:x=... for an executable)"),
        )
    };
    let (path, value) = spec.split_once('=').ok_or_else(bad)?;
    let (path, executable) = match path.strip_suffix(":x") {
        Some(p) => (p, true),
        None => (path, false),
    };
    if path.is_empty() {
        return Err(bad().into());
    }
    let content = match value.strip_prefix('@') {
        Some(host) => read_host_file(Path::new(host), max)?,
        None => value.as_bytes().to_vec(),
    };
    Ok(InputFile {
        path: path.to_owned(),
        content: Data(content),
        executable,
    })
}

/// Reads a host file named on the command line, refusing it before reading when it
/// is larger than `max`.
pub(crate) fn read_host_file(path: &Path, max: u64) -> anyhow::Result<Vec<u8>> {
    let unreadable = |e: std::io::Error| {
        CliError::new(
            ErrorCode::InputUnreadable,
            format!("cannot read input file {}: {e}", path.display()),
        )
    };
    let mut f = std::fs::File::open(path).map_err(unreadable)?;
    let meta = f.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(CliError::new(
            ErrorCode::InputUnreadable,
            format!("input file {} is not a regular file", path.display()),
        )
        .into());
    }
    if meta.len() > max {
        return Err(too_big(&format!("input file {}", path.display()), meta.len(), max).into());
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.read_to_end(&mut buf).map_err(unreadable)?;
    Ok(buf)
}

fn too_big(what: &str, size: u64, max: u64) -> CliError {
    CliError::new(
        ErrorCode::InvalidLimit,
        format!("{what} is {} ({size} bytes), over the input limit of {max} bytes; raise it with --input-limit", human_bytes(size)),
    )
}

/// Reads our stdin (unless it is a terminal or --no-stdin), up to `max` bytes.
fn read_stdin(no_stdin: bool, max: u64) -> anyhow::Result<Option<Data>> {
    let stdin = std::io::stdin();
    if no_stdin || stdin.is_terminal() {
        return Ok(None);
    }
    let mut buf = Vec::new();
    stdin
        .lock()
        .take(max + 1)
        .read_to_end(&mut buf)
        .context("reading stdin")?;
    if buf.len() as u64 > max {
        return Err(too_big("stdin", buf.len() as u64, max).into());
    }
    Ok(Some(Data(buf)))
}

/// `-e KEY=VALUE` flags (`-e KEY` passes the host's value, like docker).
fn parse_env(flags: &[String]) -> std::collections::BTreeMap<String, String> {
    let mut env = std::collections::BTreeMap::new();
    for e in flags {
        match e.split_once('=') {
            Some((k, v)) => {
                env.insert(k.to_owned(), v.to_owned());
            }
            // docker: `-e KEY` passes the host's value, and nothing when it is unset.
            None => {
                if let Ok(v) = std::env::var(e) {
                    env.insert(e.clone(), v);
                }
            }
        }
    }
    env
}

/// The parts of a job the shared flags give: env, working directory, user, stdin,
/// input files, outputs and limits (host files and stdin read up to the input
/// limit, checked before anything runs).
pub(crate) struct JobParts {
    pub env: std::collections::BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub stdin: Option<Data>,
    pub inputs: Vec<InputFile>,
    pub outputs: Vec<String>,
    pub limits: LimitsSpec,
}

pub(crate) fn job_parts(j: &JobArgs) -> anyhow::Result<JobParts> {
    // The input limit applies while reading host files, before planning checks it.
    let input_max = j
        .limits
        .input_limit
        .unwrap_or(Limits::default().input_bytes);
    if !j.outputs.is_empty() && j.output_dir.is_none() && !j.json {
        return Err(CliError::new(
            ErrorCode::InvalidArgument,
            "--output needs --output-dir DIR to write the files to (or --json to get them in the result)",
        )
        .into());
    }
    let inputs = j
        .inputs
        .iter()
        .map(|i| parse_input(i, input_max))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(JobParts {
        env: parse_env(&j.env),
        workdir: j.workdir.clone(),
        user: j.user.clone(),
        stdin: read_stdin(j.no_stdin, input_max)?,
        inputs,
        outputs: j.outputs.clone(),
        limits: limits_spec(&j.limits),
    })
}

fn build_spec(args: &RunArgs) -> anyhow::Result<JobSpec> {
    let p = job_parts(&args.job)?;
    Ok(JobSpec {
        image: args.image.clone().unwrap_or_default(),
        program: args.program.clone(),
        options: parse_options(&args.options)?,
        argv: (!args.argv.is_empty()).then(|| args.argv.clone()),
        entrypoint: args.entrypoint.as_ref().map(|e| {
            if e.is_empty() {
                vec![]
            } else {
                vec![e.clone()]
            }
        }),
        env: p.env,
        workdir: p.workdir,
        user: p.user,
        stdin: p.stdin,
        inputs: p.inputs,
        outputs: p.outputs,
        limits: p.limits,
        network: Default::default(),
    })
}

pub fn run(data_dir: &Path, catalog_dir: Option<&Path>, args: RunArgs) -> anyhow::Result<Exit> {
    let spec = build_spec(&args)?;
    let mut cfg = EngineConfig::new(data_dir);
    if args.program.is_some() {
        cfg.catalog = Some(crate::catalog::load(data_dir, catalog_dir)?);
    }
    // Installed only now, so Ctrl+C still ends a runbox that waits on its stdin.
    let interrupts = Interrupts::install()?;
    let engine = Engine::open(cfg)?;
    let token = interrupts.token.clone();
    let mut result = if args.job.json {
        engine.run(spec, &mut Cancellable::new(Quiet, token))?
    } else {
        engine.run(spec, &mut Cancellable::new(Mirror, token))?
    };
    if let Some(dir) = &args.job.output_dir {
        hostout::save_outputs(dir, &mut result.outputs)?;
    }
    let signal = interrupts
        .signal()
        .filter(|_| result.status == JobStatus::Cancelled);
    if args.job.json {
        print_json(&result)?;
    } else {
        report_cuts(&result);
        if let Some(sig) = signal {
            eprintln!(
                "runbox: {}: the job was cancelled and its sandbox removed",
                runbox_core::signal_name(sig)
            );
        }
    }
    // Like a shell: 128+N for a run ended by signal N (130 for Ctrl+C).
    Ok(Exit::Code(match signal {
        Some(sig) => (128 + sig) as u8,
        None => exit_code(&result),
    }))
}

/// The exit status `runbox run` mirrors: the program's code, or 128+signal.
pub fn exit_code(r: &JobResult) -> u8 {
    match (r.exit_code, r.signal) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => (128 + s) as u8,
        (None, None) => 125,
    }
}

/// Tells a person what limits cut the job, on stderr after the program's output.
pub(crate) fn report_cuts(r: &JobResult) {
    let l = &r.limits;
    let why = match r.status {
        JobStatus::WallTimeLimit => {
            Some(format!("wall time limit of {} ms reached", l.wall_time_ms))
        }
        JobStatus::CpuTimeLimit => Some(format!("CPU time limit of {} ms reached", l.cpu_time_ms)),
        JobStatus::MemoryLimit => Some(format!(
            "memory limit of {} reached",
            human_bytes(l.memory_bytes)
        )),
        JobStatus::PidsLimit => Some(format!("process limit of {} reached", l.pids)),
        JobStatus::FileSizeLimit => Some(format!(
            "file size limit of {} reached",
            human_bytes(l.file_size_bytes)
        )),
        _ => None,
    };
    if let Some(why) = why {
        eprintln!("runbox: {why}; the job was stopped ({})", r.status.as_str());
    }
    for (name, truncated, total) in [
        ("stdout", r.stdout_truncated, r.stdout_bytes),
        ("stderr", r.stderr_truncated, r.stderr_bytes),
    ] {
        if truncated {
            eprintln!(
                "runbox: {name} truncated: kept {} of {} ({total} bytes)",
                human_bytes(l.output_bytes),
                human_bytes(total)
            );
        }
    }
    for o in &r.outputs {
        if let Some(e) = &o.error {
            eprintln!("runbox: output {} not collected: {e}", o.path);
        } else if o.truncated {
            eprintln!(
                "runbox: output {} truncated (output-files limit of {})",
                o.path,
                human_bytes(l.output_files_bytes)
            );
        }
    }
}
