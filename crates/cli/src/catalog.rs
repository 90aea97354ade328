//! `runbox programs` and `runbox catalog build|test`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use runbox_catalog::{Catalog, Program, Query};
use runbox_core::JobSpec;
use runbox_engine::{Engine, EngineConfig};
use runbox_sandbox::NoEvents;

use crate::cli::{CatalogCommand, ProgramsArgs};
use crate::{print_json, Exit};

/// The catalog: `--catalog DIR`, else the built-in one, written out under the data
/// directory.
pub fn load(data_dir: &Path, dir: Option<&Path>) -> anyhow::Result<Arc<Catalog>> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => runbox_catalog::extract_default(&data_dir.join("catalog"))?,
    };
    Ok(Arc::new(Catalog::load(dir)?))
}

fn list(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

pub fn programs(catalog: &Catalog, args: ProgramsArgs) -> anyhow::Result<Exit> {
    if let Some(id) = &args.id {
        let p = catalog.get(id)?;
        if args.json {
            print_json(p)?;
        } else {
            show(catalog, p);
        }
        return Ok(Exit::Ok);
    }
    let q = Query {
        category: args.category,
        accepts: args.accepts,
        produces: args.produces,
    };
    let found = catalog.query(&q);
    if args.json {
        print_json(&found)?;
        return Ok(Exit::Ok);
    }
    println!(
        "{:<10} {:<18} {:<10} {:<44} PRODUCES",
        "ID", "NAME", "CATEGORY", "ACCEPTS"
    );
    for p in found {
        let accepts = list(
            p.inputs
                .iter()
                .map(|i| i.mime.clone())
                .chain(p.stdin.mime.clone()),
        );
        let produces = list(
            p.outputs
                .iter()
                .map(|o| o.mime.clone())
                .chain(p.stdout_mime.clone()),
        );
        println!(
            "{:<10} {:<18} {:<10} {accepts:<44} {produces}",
            p.id, p.name, p.category
        );
    }
    Ok(Exit::Ok)
}

fn show(catalog: &Catalog, p: &Program) {
    println!("{} ({}) {}: {}", p.name, p.id, p.version, p.description);
    println!("image:   {}", catalog.image_name(p));
    println!("command: {}", p.argv.join(" "));
    for i in &p.inputs {
        println!(
            "input:   {} ({}{})",
            i.path,
            i.mime,
            if i.required { ", required" } else { "" }
        );
    }
    if p.stdin.accepted {
        println!(
            "stdin:   yes{}",
            p.stdin
                .mime
                .as_ref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        );
    }
    for o in &p.outputs {
        println!("output:  {} ({})", o.path, o.mime);
    }
    for o in &p.options {
        let v = serde_json::to_value(&o.kind).unwrap_or_default();
        println!(
            "option:  {} = {} ({}, default {})",
            o.name,
            o.label,
            v["type"].as_str().unwrap_or("?"),
            v["default"]
        );
    }
}

pub fn run(data_dir: &Path, catalog: Arc<Catalog>, cmd: CatalogCommand) -> anyhow::Result<Exit> {
    match cmd {
        CatalogCommand::Build {
            force,
            scratch_dir,
            json,
        } => {
            let opts = runbox_image::build::BuildOptions {
                force,
                scratch_dir,
                ..Default::default()
            };
            build(data_dir, &catalog, &opts, json)
        }
        CatalogCommand::Test { ids, json } => test(data_dir, catalog, &ids, json),
    }
}

fn build(
    data_dir: &Path,
    catalog: &Catalog,
    opts: &runbox_image::build::BuildOptions,
    json: bool,
) -> anyhow::Result<Exit> {
    let store = runbox_image::Store::open(data_dir, runbox_image::StoreOptions::default())?;
    let mut reports = Vec::new();
    let recipes = catalog.all_recipes();
    for (i, (name, path)) in recipes.iter().enumerate() {
        let recipe =
            runbox_image::build::Recipe::load(path).with_context(|| format!("recipe {name}"))?;
        if !json {
            eprintln!("[{}/{}] {name}: {}", i + 1, recipes.len(), path.display());
        }
        let bar = crate::progress::BuildBar::new(!json, name);
        let report = store.build(&recipe, opts, &bar);
        bar.finish();
        let report = report.with_context(|| format!("building {name}"))?;
        if !json {
            println!(
                "{name}: {} {} ({}){}",
                report.image.display_name(),
                report.image.short_id(),
                crate::units::human_bytes(report.image.size_bytes),
                if report.cached {
                    ", up to date".to_string()
                } else {
                    format!(", built in {:.1} s", report.seconds)
                },
            );
        }
        reports.push(report);
    }
    if json {
        print_json(&reports)?;
    }
    Ok(Exit::Ok)
}

/// The outcome of one program's smoke test.
#[derive(Debug, serde::Serialize)]
struct TestOutcome {
    program: String,
    ok: bool,
    status: Option<String>,
    total_ms: Option<f64>,
    problems: Vec<String>,
}

fn test(
    data_dir: &Path,
    catalog: Arc<Catalog>,
    ids: &[String],
    json: bool,
) -> anyhow::Result<Exit> {
    for id in ids {
        catalog.get(id)?;
    }
    let mut cfg = EngineConfig::new(data_dir);
    cfg.catalog = Some(catalog.clone());
    cfg.netns_ready = 1;
    let engine = Engine::open(cfg)?;
    let mut outcomes = Vec::new();
    for p in catalog.programs() {
        if !ids.is_empty() && !ids.contains(&p.id) {
            continue;
        }
        let Some(t) = &p.test else { continue };
        let spec = JobSpec {
            program: Some(p.id.clone()),
            options: t.options.clone(),
            ..Default::default()
        };
        let mut o = TestOutcome {
            program: p.id.clone(),
            ok: false,
            status: None,
            total_ms: None,
            problems: Vec::new(),
        };
        match engine.run(spec, &mut NoEvents) {
            Err(e) => o
                .problems
                .push(crate::error::message(&anyhow::Error::new(e))),
            Ok(r) => {
                o.status = Some(r.status.as_str().to_owned());
                o.total_ms = Some(r.timings.total_ms);
                if r.status != runbox_core::JobStatus::Ok {
                    o.problems.push(format!(
                        "status {} (exit {:?}); stderr: {}",
                        r.status.as_str(),
                        r.exit_code,
                        r.stderr.trim()
                    ));
                }
                if let Some(want) = &t.stdout_contains {
                    if !r.stdout.contains(want.as_str()) {
                        o.problems
                            .push(format!("stdout lacks {want:?}; got {:?}", r.stdout));
                    }
                }
                for path in &t.outputs {
                    match r.outputs.iter().find(|f| &f.path == path) {
                        Some(f) if f.error.is_none() && f.size > 0 => {}
                        Some(f) => o.problems.push(format!(
                            "output {path}: {}",
                            f.error.as_deref().unwrap_or("empty")
                        )),
                        None => o.problems.push(format!("output {path} missing")),
                    }
                }
            }
        }
        o.ok = o.problems.is_empty();
        if !json {
            let t = o.total_ms.map(|t| format!("{t:.0} ms")).unwrap_or_default();
            println!(
                "{:<10} {:<4} {t:>8}  {}",
                o.program,
                if o.ok { "ok" } else { "FAIL" },
                o.problems.join("; ")
            );
        }
        outcomes.push(o);
    }
    if json {
        print_json(&outcomes)?;
    }
    Ok(if outcomes.iter().all(|o| o.ok) {
        Exit::Ok
    } else {
        Exit::Code(1)
    })
}
