//! `runbox script`: a scenario is a data file, not code.
//!
//! A script is JSON lines: one command per line (blank lines and `#` comments
//! allowed). For each command the driver writes exactly one JSON line: the line
//! number, the command name, `ok`, the result or a structured error, and the time
//! it took. Malformed lines (bad JSON, unknown command, missing or mistyped field,
//! unknown variable) are errors on their line, never a panic, and the script goes
//! on unless `--fail-fast`. `expect_error` runs a nested command and succeeds only
//! if it fails, so bad input is something a script can assert.
//!
//! Live sandboxes a script creates (`sandbox_create`) are deleted when the script
//! ends, also when it fails or stops early: a script leaves none behind.

mod commands;
mod expect;
mod vars;

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine as _;
use runbox_core::{Data, ErrorBody, ErrorCode, ExecSpec, InputFile, JobResult, JobSpec};
use runbox_engine::{Engine, EngineError};
use runbox_image::{ImportOptions, NoProgress};
use runbox_sandbox::NoEvents;
use serde::Serialize;
use serde_json::{json, Value};

pub use commands::{Command, ParseError, COMMANDS};
pub use expect::ExpectSpec;

/// One response line.
#[derive(Debug, Clone, Serialize)]
pub struct Response {
    pub line: usize,
    pub cmd: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    pub elapsed_ms: f64,
}

/// How a script went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub commands: usize,
    pub failed: usize,
    /// Live sandboxes the script left, deleted when it ended.
    pub sandboxes_deleted: usize,
}

/// Runs script commands against an [`Engine`].
#[derive(Debug)]
pub struct Driver<'e> {
    engine: &'e Engine,
    /// Relative paths in the script (`import`, `from`) resolve here.
    base_dir: PathBuf,
    vars: HashMap<String, String>,
    /// Named job results, with the whole result of the command that made them
    /// (a `system_query`'s answer holds its job result).
    results: HashMap<String, (JobResult, Value)>,
    /// The last job result: what `expect`'s checks read.
    last: Option<JobResult>,
    /// The last command's result: what `set`'s `from` and `expect`'s `json` read.
    last_value: Option<Value>,
    /// Live sandboxes this driver created and has not seen end.
    sandboxes: Vec<String>,
}

type Outcome = Result<Value, ErrorBody>;

fn fail(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        code,
        message: message.into(),
    }
}

fn invalid(message: impl Into<String>) -> ErrorBody {
    fail(ErrorCode::ScriptInvalid, message)
}

fn engine_err(e: EngineError) -> ErrorBody {
    fail(e.code(), chain(&e))
}

fn to_json<T: Serialize>(v: &T) -> Outcome {
    serde_json::to_value(v).map_err(|e| fail(ErrorCode::Internal, e.to_string()))
}

/// The message of an error and of every cause, without repeating itself.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

impl<'e> Driver<'e> {
    pub fn new(engine: &'e Engine, base_dir: impl Into<PathBuf>) -> Self {
        Driver {
            engine,
            base_dir: base_dir.into(),
            vars: HashMap::new(),
            results: HashMap::new(),
            last: None,
            last_value: None,
            sandboxes: Vec::new(),
        }
    }

    /// Deletes the live sandboxes this driver created that still live; returns how
    /// many. Runs when a script ends and when the driver is dropped.
    pub fn cleanup(&mut self) -> usize {
        let mut deleted = 0;
        for id in std::mem::take(&mut self.sandboxes) {
            // NotFound: it ended on its own (expired, snapshotted elsewhere).
            if self.engine.delete_sandbox(&id).is_ok() {
                deleted += 1;
            }
        }
        deleted
    }

    /// Runs every command of `input`, writing one response line each to `out`.
    pub fn run_script(
        &mut self,
        input: impl BufRead,
        out: &mut dyn Write,
        fail_fast: bool,
    ) -> io::Result<Summary> {
        let mut summary = Summary::default();
        for (i, line) in input.lines().enumerate() {
            let line = line?;
            let text = line.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let response = self.line(i + 1, text);
            summary.commands += 1;
            if !response.ok {
                summary.failed += 1;
            }
            serde_json::to_writer(&mut *out, &response)?;
            out.write_all(b"\n")?;
            out.flush()?;
            if !response.ok && fail_fast {
                break;
            }
        }
        summary.sandboxes_deleted = self.cleanup();
        Ok(summary)
    }

    /// Runs one script line.
    pub fn line(&mut self, number: usize, text: &str) -> Response {
        let t = Instant::now();
        let mut cmd = String::from("?");
        let outcome = (|| -> Outcome {
            let v: Value = serde_json::from_str(text)
                .map_err(|e| invalid(ParseError::Json(e.to_string()).to_string()))?;
            if let Some(c) = v.get("cmd").and_then(Value::as_str) {
                cmd = c.to_owned();
            }
            self.value(v)
        })();
        let elapsed_ms = (t.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        match outcome {
            Ok(result) => Response {
                line: number,
                cmd,
                ok: true,
                result: Some(result),
                error: None,
                elapsed_ms,
            },
            Err(error) => Response {
                line: number,
                cmd,
                ok: false,
                result: None,
                error: Some(error),
                elapsed_ms,
            },
        }
    }

    /// Interpolates, parses and runs a command given as JSON.
    fn value(&mut self, v: Value) -> Outcome {
        let v = vars::interpolate(v, &self.vars).map_err(invalid)?;
        let cmd = Command::from_value(v).map_err(|e| invalid(e.to_string()))?;
        let records = cmd.records_result();
        let v = self.exec(cmd)?;
        if records {
            self.last_value = Some(v.clone());
        }
        Ok(v)
    }

    /// Keeps a job result for `expect` (and under `name`); `whole` is the result of
    /// the command that made it.
    fn record_job(&mut self, name: Option<String>, job: JobResult, whole: Value) {
        if let Some(n) = name {
            self.results.insert(n, (job.clone(), whole));
        }
        self.last = Some(job);
    }

    fn exec(&mut self, cmd: Command) -> Outcome {
        let store = self.engine.store();
        match cmd {
            Command::Import(c) => {
                let path = self.path(&c.path);
                let r = store
                    .import(&path, &ImportOptions { name: c.name }, &NoProgress)
                    .map_err(|e| fail(e.code(), chain(&e)))?;
                to_json(&r)
            }
            Command::Images => to_json(&store.list().map_err(|e| fail(e.code(), chain(&e)))?),
            Command::Remove(c) => to_json(
                &store
                    .remove(&c.image)
                    .map_err(|e| fail(e.code(), chain(&e)))?,
            ),
            Command::Gc => to_json(&store.gc().map_err(|e| fail(e.code(), chain(&e)))?),
            Command::Run(c) => {
                let name = c.name.clone();
                let spec = self.spec(*c)?;
                let r = self
                    .engine
                    .run(spec, &mut NoEvents)
                    .map_err(|e| fail(e.code(), chain(&e)))?;
                let v = to_json(&r)?;
                self.record_job(name, r, v.clone());
                Ok(v)
            }
            Command::Expect(c) => {
                let (job, whole) = match &c.result {
                    Some(n) => {
                        let (j, v) = self.results.get(n).ok_or_else(|| {
                            invalid(format!(
                                "no result named {n:?}: name a run, sandbox_exec or system_query with \"name\""
                            ))
                        })?;
                        (Some(j), Some(v))
                    }
                    None => (self.last.as_ref(), self.last_value.as_ref()),
                };
                let mut failures = Vec::new();
                let mut checked = serde_json::Map::new();
                if c.job_checks || c.json.is_empty() {
                    let target = job.ok_or_else(|| {
                        invalid("no result to check yet: run a job (run, sandbox_exec or system_query) first")
                    })?;
                    failures.extend(c.checks.failures(target));
                    checked.insert("job_id".into(), json!(target.job_id));
                    checked.insert("status".into(), json!(target.status.as_str()));
                }
                if !c.json.is_empty() {
                    let whole = whole.ok_or_else(|| {
                        invalid("no result to check yet: \"json\" checks the last command's result")
                    })?;
                    failures.extend(expect::json_failures(&c.json, whole));
                    checked.insert("json".into(), json!(c.json.len()));
                }
                if failures.is_empty() {
                    Ok(Value::Object(checked))
                } else {
                    Err(fail(ErrorCode::ExpectationFailed, failures.join("; ")))
                }
            }
            Command::ExpectError(c) => {
                let nested = c
                    .command
                    .get("cmd")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned();
                match self.value(c.command) {
                    Ok(_) => Err(fail(
                        ErrorCode::ExpectationFailed,
                        format!("expected {nested} to fail, but it succeeded"),
                    )),
                    Err(e) => {
                        let mut problems = Vec::new();
                        if let Some(code) = &c.code {
                            if e.code.as_str() != code {
                                problems.push(format!(
                                    "expected error code {code:?}, got {:?} ({})",
                                    e.code.as_str(),
                                    e.message
                                ));
                            }
                        }
                        if let Some(m) = &c.message {
                            problems.extend(m.failures("message", &e.message));
                        }
                        if problems.is_empty() {
                            Ok(json!({ "error": e }))
                        } else {
                            Err(fail(ErrorCode::ExpectationFailed, problems.join("; ")))
                        }
                    }
                }
            }
            Command::Set(c) => {
                let value = match (c.value, c.from) {
                    (Some(v), _) => v,
                    (None, Some(ptr)) => {
                        let whole = self.last_value.as_ref().ok_or_else(|| {
                            invalid("\"from\" needs a result: run a command that returns one first")
                        })?;
                        match whole.pointer(&ptr) {
                            Some(Value::String(s)) => s.clone(),
                            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
                            Some(_) => return Err(invalid(format!("{ptr:?} is not a string, number or boolean in the last result"))),
                            None => return Err(invalid(format!("{ptr:?} is not in the last result (a JSON pointer like \"/stdout\")"))),
                        }
                    }
                    (None, None) => unreachable!("checked when parsed"),
                };
                let value = if c.trim {
                    value.trim().to_owned()
                } else {
                    value
                };
                self.vars.insert(c.name.clone(), value.clone());
                Ok(json!({ "name": c.name, "value": value }))
            }
            Command::Repeat(c) => {
                let mut failed = Vec::new();
                for i in 0..c.count {
                    if let Err(e) = self.value(c.command.clone()) {
                        failed.push(format!("run {}: {}", i + 1, e.message));
                    }
                }
                if failed.is_empty() {
                    Ok(json!({ "count": c.count }))
                } else {
                    Err(fail(
                        ErrorCode::ExpectationFailed,
                        format!(
                            "{} of {} failed: {}",
                            failed.len(),
                            c.count,
                            failed.join("; ")
                        ),
                    ))
                }
            }
            Command::Parallel(c) => self.parallel(*c),
            Command::SandboxCreate(c) => {
                let info = self.engine.create_sandbox(&c).map_err(engine_err)?;
                self.sandboxes.push(info.id.clone());
                to_json(&info)
            }
            Command::SandboxExec(c) => {
                let c = *c;
                let (name, id) = (c.name.clone(), c.sandbox.clone());
                let spec = self.exec_spec(c)?;
                let r = self
                    .engine
                    .exec_sandbox(&id, &spec, &mut NoEvents)
                    .map_err(engine_err)?;
                let v = to_json(&r)?;
                self.record_job(name, r, v.clone());
                Ok(v)
            }
            Command::SandboxPut(c) => {
                let file = self.input_file(c.input())?;
                let bytes = file.content.0.len();
                self.engine
                    .put_sandbox_file(&c.sandbox, file, c.user)
                    .map_err(engine_err)?;
                Ok(json!({ "path": c.path, "size": bytes }))
            }
            Command::SandboxGet(c) => {
                let files = self
                    .engine
                    .get_sandbox_file(&c.sandbox, &c.path)
                    .map_err(engine_err)?;
                Ok(json!({ "files": to_json(&files)? }))
            }
            Command::SandboxSnapshot(c) => {
                let made = self
                    .engine
                    .snapshot_sandbox(&c.sandbox, c.name.as_deref())
                    .map_err(engine_err)?;
                // The sandbox ended: its changes live on in the image.
                self.sandboxes.retain(|id| *id != c.sandbox);
                let digest = made.image.manifest_digest.to_string();
                Ok(json!({
                    "image": made.image.names.first().cloned().unwrap_or_else(|| digest.clone()),
                    "digest": digest,
                    "layer_bytes": made.layer_bytes,
                    "files": made.files,
                }))
            }
            Command::SandboxDelete(c) => {
                self.engine.delete_sandbox(&c.sandbox).map_err(engine_err)?;
                self.sandboxes.retain(|id| *id != c.sandbox);
                Ok(json!({ "deleted": c.sandbox }))
            }
            Command::Sandboxes => to_json(&self.engine.list_sandboxes()),
            Command::SystemQuery(c) => {
                let c = *c;
                let query = self.bytes("query", c.query)?;
                let answer = self.engine.query(&c.system, &query).map_err(engine_err)?;
                let v = to_json(&answer)?;
                self.record_job(c.name, answer.result, v.clone());
                Ok(v)
            }
            Command::SystemProvision(c) => {
                let system = self
                    .engine
                    .catalog()
                    .ok_or_else(|| {
                        EngineError::Request(
                            "no catalog is loaded: systems are defined in the catalog".into(),
                        )
                    })
                    .and_then(|cat| Ok(cat.system(&c.system)?.clone()))
                    .map_err(engine_err)?;
                let report = self.engine.consume(&system, c.force).map_err(engine_err)?;
                to_json(&report)
            }
        }
    }

    /// Runs `count` copies of a `run` at once and checks every result.
    fn parallel(&mut self, c: commands::ParallelCmd) -> Outcome {
        let Command::Run(run) =
            Command::from_value(c.command).map_err(|e| invalid(e.to_string()))?
        else {
            return Err(invalid("parallel runs a \"run\" command"));
        };
        if c.count == 0 || c.count > 64 {
            return Err(invalid("parallel: count must be 1 to 64"));
        }
        let spec = self.spec(*run)?;
        let engine = self.engine;
        let results: Vec<Result<JobResult, ErrorBody>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..c.count)
                .map(|_| {
                    let spec = spec.clone();
                    s.spawn(move || {
                        engine
                            .run(spec, &mut NoEvents)
                            .map_err(|e| fail(e.code(), chain(&e)))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(fail(ErrorCode::Internal, "a job thread panicked")))
                })
                .collect()
        });
        let mut problems = Vec::new();
        let mut summaries = Vec::new();
        for (i, r) in results.iter().enumerate() {
            match r {
                Err(e) => problems.push(format!("copy {}: {}", i + 1, e.message)),
                Ok(r) => {
                    summaries.push(json!({ "job_id": r.job_id, "status": r.status.as_str(), "total_ms": r.timings.total_ms }));
                    if let Some(x) = &c.expect {
                        problems.extend(
                            x.failures(r)
                                .into_iter()
                                .map(|f| format!("copy {}: {f}", i + 1)),
                        );
                    }
                }
            }
        }
        if let Some(Ok(r)) = results.into_iter().last() {
            self.last_value = Some(to_json(&r)?);
            self.last = Some(r);
        }
        if problems.is_empty() {
            Ok(json!({ "count": c.count, "results": summaries }))
        } else {
            Err(fail(ErrorCode::ExpectationFailed, problems.join("; ")))
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Reads a file named in the script (relative to it).
    fn read(&self, p: &str) -> Result<Vec<u8>, ErrorBody> {
        let path = self.path(p);
        let mut f = std::fs::File::open(&path).map_err(|e| {
            fail(
                ErrorCode::InputUnreadable,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let mut buf = Vec::new();
        // Bounded by the largest input any policy allows; the job's own input limit
        // is checked when it is planned.
        Read::by_ref(&mut f)
            .take(4 << 30)
            .read_to_end(&mut buf)
            .map_err(|e| {
                fail(
                    ErrorCode::InputUnreadable,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
        Ok(buf)
    }

    fn content(
        &self,
        what: &str,
        text: Option<String>,
        b64: Option<String>,
        from: Option<String>,
    ) -> Result<Vec<u8>, ErrorBody> {
        match (text, b64, from) {
            (Some(t), None, None) => Ok(t.into_bytes()),
            (None, Some(b), None) => base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|e| invalid(format!("{what}: \"base64\" is not valid base64: {e}"))),
            (None, None, Some(f)) => self.read(&f),
            _ => Err(invalid(format!(
                "{what}: give exactly one of \"text\", \"base64\" or \"from\""
            ))),
        }
    }

    /// Bytes given as stdin is: a string, or `text`, `base64` or `from`.
    fn bytes(&self, what: &str, s: commands::Stdin) -> Result<Vec<u8>, ErrorBody> {
        match s {
            commands::Stdin::Text(t) => Ok(t.into_bytes()),
            commands::Stdin::Content(s) => self.content(what, s.text, s.base64, s.from),
        }
    }

    fn stdin(&self, s: Option<commands::Stdin>) -> Result<Option<Data>, ErrorBody> {
        s.map(|s| self.bytes("stdin", s).map(Data)).transpose()
    }

    fn input_file(&self, i: commands::InputCmd) -> Result<InputFile, ErrorBody> {
        let what = format!("input {:?}", i.path);
        let content = self.content(&what, i.text, i.base64, i.from)?;
        Ok(InputFile {
            path: i.path,
            content: Data(content),
            executable: i.executable,
        })
    }

    fn inputs(&self, inputs: Vec<commands::InputCmd>) -> Result<Vec<InputFile>, ErrorBody> {
        inputs.into_iter().map(|i| self.input_file(i)).collect()
    }

    fn exec_spec(&self, c: commands::SandboxExecCmd) -> Result<ExecSpec, ErrorBody> {
        Ok(ExecSpec {
            argv: c.argv,
            env: c.env,
            workdir: c.workdir,
            user: c.user,
            stdin: self.stdin(c.stdin)?,
            inputs: self.inputs(c.inputs)?,
            outputs: c.outputs,
            limits: c.limits,
            keep_running: c.keep_running,
        })
    }

    fn spec(&self, c: commands::RunCmd) -> Result<JobSpec, ErrorBody> {
        let stdin = self.stdin(c.stdin)?;
        let inputs = self.inputs(c.inputs)?;
        Ok(JobSpec {
            image: c.image,
            program: c.program,
            options: c.options,
            argv: c.argv,
            entrypoint: c.entrypoint,
            env: c.env,
            workdir: c.workdir,
            user: c.user,
            stdin,
            inputs,
            outputs: c.outputs,
            limits: c.limits,
            network: c.network,
        })
    }
}

impl Drop for Driver<'_> {
    /// A driver used line by line (not through [`Driver::run_script`]) still
    /// leaves no live sandbox behind.
    fn drop(&mut self) {
        self.cleanup();
    }
}
