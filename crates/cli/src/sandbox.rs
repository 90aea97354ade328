//! `runbox sandbox`: a client of a running server's live sandboxes
//! (`/api/sandboxes`). The server holds the sandboxes; this command only sends
//! requests, so a sandbox outlives the command that made it (until it is deleted
//! or idle past its timeout).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use runbox_core::{CreateSandbox, ErrorCode, ExecSpec, JobResult, Limits, SandboxInfo};
use runbox_core::{ErrorBody, OutputFile};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::cli::{SandboxArgs, SandboxCommand, SandboxExecArgs};
use crate::error::CliError;
use crate::run::{exit_code, job_parts, limits_spec, report_cuts};
use crate::{hostout, print_json, Exit};

struct Client {
    http: reqwest::blocking::Client,
    base: String,
    token: Option<String>,
    data_dir: std::path::PathBuf,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

impl Client {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.trim_end_matches('/'))
    }

    /// The admin token: --token, else the server's token file in the data dir.
    fn admin_token(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let file = self.data_dir.join("admin-token");
        std::fs::read_to_string(&file)
            .map(|t| t.trim().to_owned())
            .map_err(|e| {
                CliError::new(
                    ErrorCode::Unauthorized,
                    format!("this needs the server's admin token: give --token (RUNBOX_ADMIN_TOKEN), or run where {} is readable ({e})", file.display()),
                )
                .into()
            })
    }

    /// Sends a request; a JSON error answer becomes an error with its code.
    fn send(
        &self,
        req: reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<reqwest::blocking::Response> {
        let resp = req.send().map_err(|e| {
            CliError::new(
                ErrorCode::Io,
                format!("cannot reach the server at {}: {e} (is `runbox serve` running? --server / RUNBOX_SERVER)", self.base),
            )
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp.bytes().unwrap_or_default();
        Err(match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
            Ok(e) => CliError::new(e.error.code, e.error.message).into(),
            Err(_) => CliError::new(
                ErrorCode::Internal,
                format!(
                    "the server answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                ),
            )
            .into(),
        })
    }

    fn json<T: DeserializeOwned>(
        &self,
        req: reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<T> {
        let resp = self.send(req)?;
        resp.json::<T>().context("reading the server's answer")
    }
}

pub fn run(data_dir: &Path, args: SandboxArgs) -> anyhow::Result<Exit> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client {
        // No overall timeout: an exec lasts as long as its own wall-time limit.
        http: reqwest::blocking::Client::builder()
            .timeout(None)
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?,
        base: args.server,
        token: args.token,
        data_dir: data_dir.to_path_buf(),
    };
    let c = &client;
    match args.command {
        SandboxCommand::Create {
            image,
            program,
            snapshot,
            idle_timeout,
            json,
            limits,
        } => {
            let req = CreateSandbox {
                image: image.unwrap_or_default(),
                program,
                snapshot,
                limits: limits_spec(&limits),
                idle_timeout_s: idle_timeout.map(|ms| ms.div_ceil(1000)),
            };
            if req.image.is_empty() && req.program.is_none() && req.snapshot.is_none() {
                return Err(CliError::new(
                    ErrorCode::InvalidArgument,
                    "give what the sandbox starts from: --image, --program or --snapshot",
                )
                .into());
            }
            let info: SandboxInfo = c.json(c.http.post(c.url("/api/sandboxes")).json(&req))?;
            if json {
                print_json(&info)?;
            } else {
                // The id alone on stdout: ID=$(runbox sandbox create ...).
                println!("{}", info.id);
                eprintln!(
                    "sandbox {} from {} (hostname {}); deleted after {} s idle",
                    info.id,
                    info.image,
                    info.hostname,
                    info.expires_at.saturating_sub(info.last_used_at)
                );
            }
            Ok(Exit::Ok)
        }
        SandboxCommand::Exec(a) => exec(c, *a),
        SandboxCommand::Put {
            id,
            file,
            path,
            executable,
            user,
        } => {
            let bytes = crate::run::read_host_file(&file, Limits::default().input_bytes)?;
            let url = files_url(c, &id, &path)?;
            let mut q = vec![];
            if executable {
                q.push(("executable", "true".to_owned()));
            }
            if let Some(u) = user {
                q.push(("user", u));
            }
            c.send(c.http.put(url).query(&q).body(bytes))?;
            Ok(Exit::Ok)
        }
        SandboxCommand::Get {
            id,
            path,
            output_dir,
            json,
        } => {
            let files: FilesAnswer = c.json(c.http.get(files_url(c, &id, &path)?))?;
            let mut files = files.files;
            if let Some(dir) = &output_dir {
                hostout::save_outputs(dir, &mut files)?;
            }
            if json {
                print_json(&serde_json::json!({ "files": files }))?;
                return Ok(Exit::Ok);
            }
            if output_dir.is_none() {
                match files.as_slice() {
                    [one] if one.error.is_none() && one.content.is_some() => {
                        let content = one.content.as_ref().expect("checked");
                        std::io::stdout().lock().write_all(&content.0)?;
                    }
                    [one] if one.error.is_some() => {
                        return Err(CliError::new(
                            ErrorCode::NotFound,
                            format!("{}: {}", one.path, one.error.as_deref().unwrap_or("")),
                        )
                        .into())
                    }
                    _ => {
                        return Err(CliError::new(
                            ErrorCode::InvalidArgument,
                            format!("{path} holds {} files: give --output-dir DIR to write them (or --json)", files.len()),
                        )
                        .into())
                    }
                }
            }
            for f in &files {
                if let Some(e) = &f.error {
                    eprintln!("runbox: {}: {e}", f.path);
                } else if f.truncated {
                    eprintln!("runbox: {} truncated (the output-files limit)", f.path);
                }
            }
            Ok(Exit::Ok)
        }
        SandboxCommand::Ls { json } => {
            let list: SandboxesAnswer = c.json(
                c.http
                    .get(c.url("/api/sandboxes"))
                    .bearer_auth(c.admin_token()?),
            )?;
            if json {
                print_json(&serde_json::json!({ "sandboxes": list.sandboxes }))?;
            } else {
                println!(
                    "{:<34} {:<10} {:>6} {:>8}  IMAGE",
                    "ID", "SYSTEM", "EXECS", "IDLE(s)"
                );
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                for s in list.sandboxes {
                    println!(
                        "{:<34} {:<10} {:>6} {:>8}  {}{}",
                        s.id,
                        s.system.as_deref().unwrap_or("-"),
                        s.execs,
                        now.saturating_sub(s.last_used_at),
                        s.image,
                        if s.pooled { " (warm pool)" } else { "" }
                    );
                }
            }
            Ok(Exit::Ok)
        }
        SandboxCommand::Info { id, json } => {
            let info: SandboxInfo = c.json(c.http.get(c.url(&format!("/api/sandboxes/{id}"))))?;
            if json {
                print_json(&info)?;
            } else {
                println!("id:        {}", info.id);
                println!("image:     {} ({})", info.image, info.image_digest);
                println!("hostname:  {}", info.hostname);
                println!("execs:     {} ({} running)", info.execs, info.running);
                println!("alive:     {}", info.alive);
                println!("expires:   {} (unix time, unless used)", info.expires_at);
            }
            Ok(Exit::Ok)
        }
        SandboxCommand::Rm { id } => {
            c.send(c.http.delete(c.url(&format!("/api/sandboxes/{id}"))))?;
            Ok(Exit::Ok)
        }
        SandboxCommand::Snapshot { id, name, json } => {
            let mut req = c
                .http
                .post(c.url(&format!("/api/sandboxes/{id}/snapshot")))
                .json(&serde_json::json!({ "name": name }));
            if name.is_some() {
                req = req.bearer_auth(c.admin_token()?);
            }
            let made: serde_json::Value = c.json(req)?;
            if json {
                print_json(&made)?;
            } else {
                println!("{}", made["image"].as_str().unwrap_or_default());
                eprintln!(
                    "snapshot {} ({} files, {} bytes in the new layer); the sandbox has ended",
                    made["digest"].as_str().unwrap_or_default(),
                    made["files"],
                    made["layer_bytes"]
                );
            }
            Ok(Exit::Ok)
        }
    }
}

#[derive(Deserialize)]
struct FilesAnswer {
    files: Vec<OutputFile>,
}

#[derive(Deserialize)]
struct SandboxesAnswer {
    sandboxes: Vec<SandboxInfo>,
}

fn files_url(c: &Client, id: &str, path: &str) -> anyhow::Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(&c.url(&format!("/api/sandboxes/{id}/files/")))
        .context("the server URL")?;
    {
        let mut segs = url
            .path_segments_mut()
            .map_err(|_| anyhow::anyhow!("the server URL cannot have a path"))?;
        segs.pop_if_empty();
        if path.starts_with('/') {
            // An absolute path: the route's {*path} then starts with '/'.
            segs.push("");
        }
        segs.extend(path.trim_start_matches('/').split('/'));
    }
    Ok(url)
}

fn exec(c: &Client, a: SandboxExecArgs) -> anyhow::Result<Exit> {
    let p = job_parts(&a.job)?;
    let spec = ExecSpec {
        argv: a.argv.clone(),
        env: p.env,
        workdir: p.workdir,
        user: p.user,
        stdin: p.stdin,
        inputs: p.inputs,
        outputs: p.outputs,
        limits: p.limits,
        keep_running: a.keep_running,
    };
    let mut result: JobResult = c.json(
        c.http
            .post(c.url(&format!("/api/sandboxes/{}/exec", a.id)))
            .json(&spec),
    )?;
    if let Some(dir) = &a.job.output_dir {
        hostout::save_outputs(dir, &mut result.outputs)?;
    }
    if a.job.json {
        print_json(&result)?;
    } else {
        let decode = |text: &str, b64: &Option<String>| -> Vec<u8> {
            use base64::Engine as _;
            b64.as_deref()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .unwrap_or_else(|| text.as_bytes().to_vec())
        };
        std::io::stdout()
            .lock()
            .write_all(&decode(&result.stdout, &result.stdout_base64))?;
        std::io::stderr()
            .lock()
            .write_all(&decode(&result.stderr, &result.stderr_base64))?;
        report_cuts(&result);
    }
    Ok(Exit::Code(exit_code(&result)))
}
