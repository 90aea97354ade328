//! `runbox system ls|provision|query`: systems in this process (the snapshot and
//! datasets persist in the data directory; instances live as long as the command).

use std::io::Read as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use runbox_engine::{Engine, EngineConfig};
use serde::Serialize;

use crate::cli::SystemCommand;
use crate::{print_json, Exit};

fn engine(data_dir: &Path, catalog: Option<&Path>) -> anyhow::Result<Engine> {
    let mut cfg = EngineConfig::new(data_dir);
    cfg.catalog = Some(crate::catalog::load(data_dir, catalog)?);
    // One instance per system is enough for a command line.
    cfg.systems.pool_size = 1;
    Ok(Engine::open(cfg)?)
}

#[derive(Serialize)]
struct SystemRow {
    id: String,
    name: String,
    version: String,
    datasets: Vec<String>,
    fingerprint: Option<String>,
    snapshot: Option<String>,
    snapshot_bytes: Option<u64>,
    error: Option<String>,
}

#[derive(Serialize)]
struct QueryRun {
    system: String,
    /// Every run's answer timing (ms): the first may include starting the instance.
    runs_ms: Vec<f64>,
    start_ms: f64,
    answer: Option<runbox_core::JobResult>,
    error: Option<runbox_core::ErrorBody>,
}

pub fn run(data_dir: &Path, catalog: Option<&Path>, cmd: SystemCommand) -> anyhow::Result<Exit> {
    let engine = engine(data_dir, catalog)?;
    let cat = engine.catalog().expect("loaded").clone();
    match cmd {
        SystemCommand::Ls { json } => {
            let rows: Vec<SystemRow> = cat
                .systems()
                .map(|s| {
                    let fp = engine.fingerprint(s);
                    let rec = fp.as_deref().ok().and_then(|f| engine.snapshot_record(f));
                    SystemRow {
                        id: s.id.clone(),
                        name: s.name.clone(),
                        version: s.version.clone(),
                        datasets: s.datasets.clone(),
                        fingerprint: fp.as_ref().ok().cloned(),
                        snapshot: rec.as_ref().map(|r| r.image.clone()),
                        snapshot_bytes: rec.as_ref().map(|r| r.layer_bytes),
                        error: fp.err().map(|e| e.to_string()),
                    }
                })
                .collect();
            if json {
                print_json(&rows)?;
            } else {
                println!("{:<10} {:<12} {:<18} SNAPSHOT", "ID", "NAME", "FINGERPRINT");
                for r in rows {
                    let fp = r.fingerprint.as_deref().map_or("-", |f| &f[..16]);
                    let snap = match (&r.snapshot, &r.error) {
                        (_, Some(e)) => e.clone(),
                        (Some(s), _) => format!(
                            "{s} ({})",
                            crate::units::human_bytes(r.snapshot_bytes.unwrap_or(0))
                        ),
                        (None, _) => "none (the first query provisions it)".into(),
                    };
                    println!("{:<10} {:<12} {fp:<18} {snap}", r.id, r.name);
                }
            }
            Ok(Exit::Ok)
        }
        SystemCommand::Provision { id, force, json } => {
            let system = cat.system(&id)?.clone();
            let report = engine.consume(&system, force)?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "{}: {} ({}), snapshot {} ({} in {} files), fingerprint {}",
                    report.system,
                    report.path,
                    report.reason.as_deref().unwrap_or("a snapshot matched"),
                    report.snapshot.image,
                    crate::units::human_bytes(report.snapshot.layer_bytes),
                    report.snapshot.files,
                    &report.fingerprint[..16],
                );
                for (step, ms) in &report.snapshot.steps_ms {
                    println!("  {step:<9} {ms:>10.1} ms");
                }
            }
            Ok(Exit::Ok)
        }
        SystemCommand::Query {
            systems,
            query,
            repeat,
            json,
        } => {
            let query = if query == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading the query from stdin")?;
                s
            } else {
                query
            };
            let ids: Vec<String> = systems.split(',').map(|s| s.trim().to_owned()).collect();
            for id in &ids {
                cat.system(id)?;
            }
            let runs: Vec<QueryRun> = std::thread::scope(|s| {
                let hs: Vec<_> = ids
                    .iter()
                    .map(|id| {
                        let (engine, query) = (&engine, &query);
                        s.spawn(move || {
                            let mut run = QueryRun {
                                system: id.clone(),
                                runs_ms: Vec::new(),
                                start_ms: 0.0,
                                answer: None,
                                error: None,
                            };
                            for i in 0..repeat.max(1) {
                                let t = Instant::now();
                                match engine.query(id, query.as_bytes()) {
                                    Ok(a) => {
                                        run.runs_ms.push(t.elapsed().as_secs_f64() * 1e3);
                                        if i == 0 {
                                            run.start_ms = a.start_ms;
                                            run.answer = Some(a.result);
                                        }
                                    }
                                    Err(e) => {
                                        run.error = Some(runbox_core::ErrorBody {
                                            code: e.code(),
                                            message: e.to_string(),
                                        });
                                        break;
                                    }
                                }
                            }
                            run
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("query thread"))
                    .collect()
            });
            let failed = runs.iter().any(|r| {
                r.error.is_some()
                    || r.answer
                        .as_ref()
                        .is_some_and(|a| a.status != runbox_core::JobStatus::Ok)
            });
            if json {
                print_json(&runs)?;
            } else {
                for r in &runs {
                    let times: Vec<String> = r.runs_ms.iter().map(|t| format!("{t:.1}")).collect();
                    println!(
                        "== {} (instance start {:.1} ms; answers in {} ms)",
                        r.system,
                        r.start_ms,
                        times.join(", ")
                    );
                    match (&r.answer, &r.error) {
                        (_, Some(e)) => println!("error: {}", e.message),
                        (Some(a), _) => {
                            print!("{}", a.stdout);
                            if !a.stderr.is_empty() {
                                eprint!("{}", a.stderr);
                            }
                        }
                        _ => {}
                    }
                }
            }
            Ok(if failed { Exit::Code(1) } else { Exit::Ok })
        }
    }
}
