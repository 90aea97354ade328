//! `runbox workers create | list | revoke`: worker tokens, in the server's
//! database directly (the same operations as the admin endpoints
//! `/api/admin/workers`).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use runbox_core::ErrorCode;
use runbox_queue::{Queue, QueueError};
use runbox_server::workers::{CreatedWorker, WorkerInfo, WorkerList};
use runbox_server::ServerConfig;

use crate::cli::{WorkersArgs, WorkersCommand};
use crate::error::CliError;
use crate::{print_json, Exit};

pub fn run(data_dir: &Path, args: WorkersArgs) -> anyhow::Result<Exit> {
    let creating = matches!(args.command, WorkersCommand::Create { .. });
    let url = match args.database {
        Some(url) => url,
        None => {
            let file = data_dir.join("runbox.db");
            if creating {
                // Tokens may be made before the server's first start.
                std::fs::create_dir_all(data_dir).with_context(|| {
                    format!("creating the data directory {}", data_dir.display())
                })?;
            } else if !file.exists() {
                return Err(CliError::new(
                    ErrorCode::NotFound,
                    format!(
                        "no server database at {}: give the server's --data-dir, or its \
                         --database (RUNBOX_DATABASE) when it uses PostgreSQL",
                        file.display()
                    ),
                )
                .into());
            }
            ServerConfig::new(data_dir).database_url()
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let queue = Queue::open(&url)
            .await
            .with_context(|| format!("opening the database {}", redact(&url)))?;
        match args.command {
            WorkersCommand::Create { name, json } => create(&queue, &name, json).await,
            WorkersCommand::List { json } => list(&queue, json).await,
            WorkersCommand::Revoke { name, json } => revoke(&queue, &name, json).await,
        }
    })
}

fn queue_error(e: QueueError) -> anyhow::Error {
    match e {
        QueueError::Invalid(m) => CliError::new(ErrorCode::InvalidArgument, m).into(),
        other => CliError::new(ErrorCode::Io, other.to_string()).into(),
    }
}

async fn create(queue: &Queue, name: &str, json: bool) -> anyhow::Result<Exit> {
    let (w, token) = queue.create_worker(name).await.map_err(queue_error)?;
    if json {
        print_json(&CreatedWorker {
            id: w.id,
            name: w.name,
            token,
        })?;
        return Ok(Exit::Ok);
    }
    // The token alone on stdout (TOKEN=$(runbox workers create NAME)); the rest
    // on stderr.
    println!("{token}");
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "Created worker {} (id {}). Its token is above: it is shown only this once \
         (the server keeps a hash of it) and will not be shown again.\n\
         Start the worker with:\n  \
         RUNBOX_WORKER_TOKEN=<the token> runbox worker --server URL",
        w.name, w.id
    )?;
    Ok(Exit::Ok)
}

async fn list(queue: &Queue, json: bool) -> anyhow::Result<Exit> {
    let workers: Vec<WorkerInfo> = queue
        .workers()
        .await
        .map_err(queue_error)?
        .into_iter()
        .map(Into::into)
        .collect();
    if json {
        print_json(&WorkerList { workers })?;
        return Ok(Exit::Ok);
    }
    if workers.is_empty() {
        eprintln!("No workers. Create one with `runbox workers create NAME`.");
        return Ok(Exit::Ok);
    }
    let now = runbox_queue::now_ms();
    let ago = |ms: i64| {
        let d = std::time::Duration::from_secs(((now - ms).max(0) / 1000) as u64);
        if d.is_zero() {
            "just now".to_owned()
        } else {
            format!("{} ago", humantime::format_duration(d))
        }
    };
    let rows: Vec<[String; 6]> = workers
        .iter()
        .map(|w| {
            let caps = w.capabilities.as_ref();
            [
                w.name.clone(),
                w.id.clone(),
                if w.revoked_ms.is_some() {
                    "revoked"
                } else {
                    "active"
                }
                .to_owned(),
                w.last_seen_ms.map_or_else(|| "never".to_owned(), ago),
                caps.map_or_else(
                    || "-".to_owned(),
                    |c| {
                        format!(
                            "{} {}, {} CPUs, {} images",
                            c.backend,
                            c.arch,
                            c.cpus,
                            c.images.len()
                        )
                    },
                ),
                caps.filter(|c| !c.labels.is_empty())
                    .map_or_else(|| "-".to_owned(), |c| c.labels.join(",")),
            ]
        })
        .collect();
    let header = ["NAME", "ID", "STATE", "LAST SEEN", "CAPABILITIES", "LABELS"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s
    };
    writeln!(out, "{}", line(&header.map(str::to_owned)))?;
    for r in &rows {
        writeln!(out, "{}", line(r))?;
    }
    Ok(Exit::Ok)
}

async fn revoke(queue: &Queue, name: &str, json: bool) -> anyhow::Result<Exit> {
    if !queue.revoke_worker(name).await.map_err(queue_error)? {
        return Err(CliError::new(
            ErrorCode::NotFound,
            format!("no worker {name:?} with a live token (see `runbox workers list`)"),
        )
        .into());
    }
    if json {
        print_json(&serde_json::json!({ "revoked": name }))?;
    } else {
        eprintln!(
            "Revoked worker {name}: its next call is refused, and the jobs it holds go back \
             to the queue when their leases expire."
        );
    }
    Ok(Exit::Ok)
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
