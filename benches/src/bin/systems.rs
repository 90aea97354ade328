//! The systems path (docs/systems.md) for each catalog system (sqlite, postgres,
//! duckdb, each loading the orders dataset: 1,000,000 rows), side by side in one
//! run with what a system without warm snapshots does. Uses the engine library
//! directly, the way `runbox system` and `runbox serve` do (one `Engine` with the
//! catalog; pools of one instance per system).
//!
//! 1. **Cold provision** (`Engine::consume(system, force = true)`): install,
//!    start, check, load, stop, then freeze and commit the snapshot; the engine's
//!    own per-step times (`SnapshotRecord.steps_ms`) and total. COLD times per
//!    system. The dataset is generated once per data directory (its `datasets`
//!    step, in the first provision only when it was not there yet).
//! 2. **Snapshot size**: the frozen layer's bytes of file content and files (the
//!    record), its blob in the store (size and disk blocks), the unpacked layer's
//!    disk blocks; and the dataset layer it sits on (shared by every system, not
//!    in the snapshot).
//! 3. **Lookup and verify in a new process**: a second `Engine` on the same data
//!    directory (its own process state: nothing verified yet), `consume(system,
//!    false)`: the record found and the layer's tree digest recomputed, which the
//!    first instance of a system pays once per process.
//! 4. **First query from the snapshot**, **warm** and **no snapshot**, in ROUNDS
//!    rounds (in each, the systems in a shuffled order, and for each system the
//!    two contenders in a random order), so drift from a busy machine does not
//!    land on one of them:
//!    - first from the snapshot: `Engine::query` with the system's pool empty: an
//!      instance started from the snapshot (clone, start, check: the answer's
//!      `start_ms`) and the query answered; the total is the call's wall time.
//!    - warm: then one unmeasured query and WARM measured ones on that instance
//!      (each must be answered by it, already running): the call's wall time and
//!      the query job's own `timings.total_ms`. The instance is deleted after
//!      (not timed), so every round starts one.
//!    - no snapshot (cold per query): a fresh live sandbox over the system's image
//!      and the same dataset layer (an image of those layers, made once with
//!      `Store::commit_image`, nothing copied), then the system's install, start,
//!      check (polled as the engine polls it), load and query scripts with the
//!      same user, environment and limits as the engine's; the total is create →
//!      answer. Deleted after (not timed).
//! 5. **Ratios** per system: no-snapshot / first-from-snapshot and no-snapshot /
//!    warm (medians of the totals; p90s are reported too).
//! 6. **Answers**: every answer of a system must be the same (snapshot, no
//!    snapshot, warm); then the three systems' answers are compared: byte for
//!    byte, and cell by cell with numbers compared as numbers (they are
//!    documented to differ in float formatting: docs/catalog.md).
//!
//! The query is each system's catalog example (the same SQL in all three: a
//! GROUP BY over the million rows) unless `--query SQL` gives another.
//!
//! Needs the catalog's images in the data directory (`runbox --data-dir DIR
//! catalog build`). The cold provisions replace the data directory's snapshots
//! of these systems (same fingerprints, fresh layers): do not run it on a data
//! directory whose system instances are in use.
//!
//! Usage: `benches/run systems [--data-dir DIR] [--catalog DIR] [--systems
//! a,b] [--cold N] [--rounds R] [--warm W] [--query SQL] [--json]`. Data
//! directory: `--data-dir`, else `BENCH_DATA_DIR`, else
//! /var/tmp/runbox-bench-systems. Defaults: the repository's catalog/, every
//! catalog system, 3 cold provisions, 7 rounds, 4 warm queries per round and
//! system.
//! Progress on stderr, one line per step; a table on stdout, or the JSON document
//! with `--json`; the JSON is always written to benches/results/systems.json.
//! About 3-4 minutes on a quiet 2-CPU machine (plus the dataset's generation, about
//! 10 s, once per data directory).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use runbox_benches::{loadavg, pct, Rng};
use runbox_catalog::{Catalog, System};
use runbox_core::{CreateSandbox, Data, ExecSpec, JobResult, JobStatus};
use runbox_engine::{Engine, EngineConfig, EngineError};
use runbox_image::{CommitSpec, NoProgress};
use runbox_sandbox::NoEvents;
use serde_json::{json, Value};

struct Opts {
    data_dir: PathBuf,
    catalog: PathBuf,
    systems: Option<Vec<String>>,
    cold: usize,
    rounds: usize,
    warm: usize,
    query: Option<String>,
    json: bool,
}

fn opts() -> Result<Opts> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut o = Opts {
        data_dir: std::env::var_os("BENCH_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/var/tmp/runbox-bench-systems".into()),
        catalog: repo.join("catalog"),
        systems: None,
        cold: 3,
        rounds: 7,
        warm: 4,
        query: None,
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next().with_context(|| {
                format!("{a} needs a value (see the top of benches/src/bin/systems.rs)")
            })
        };
        let count = |v: String| -> Result<usize> {
            let n: usize = v
                .parse()
                .with_context(|| format!("{a} {v}: not a number"))?;
            ensure!(n > 0, "{a} must be at least 1");
            Ok(n)
        };
        match a.as_str() {
            "--data-dir" => o.data_dir = val()?.into(),
            "--catalog" => o.catalog = val()?.into(),
            "--systems" => o.systems = Some(val()?.split(',').map(str::to_owned).collect()),
            "--cold" => o.cold = count(val()?)?,
            "--rounds" => o.rounds = count(val()?)?,
            "--warm" => o.warm = count(val()?)?,
            "--query" => o.query = Some(val()?),
            "--json" => o.json = true,
            _ => bail!(
                "unknown argument {a:?}; usage: benches/run systems [--data-dir DIR] [--catalog DIR] \
                 [--systems a,b] [--cold N] [--rounds R] [--warm W] [--query SQL] [--json]"
            ),
        }
    }
    Ok(o)
}

/// Progress on stderr.
macro_rules! progress {
    ($($t:tt)*) => { eprintln!("[systems] {}", format!($($t)*)) };
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// p50, p90, min, max and every value of a series (ms).
fn stats(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    json!({"p50_ms": pct(&mut s, 0.5), "p90_ms": pct(&mut s, 0.9),
        "min_ms": s[0], "max_ms": s[s.len() - 1], "n": s.len(), "runs_ms": v})
}

fn median(v: &[f64]) -> f64 {
    pct(&mut v.to_vec(), 0.5)
}

/// The job exited 0, or an error with its output.
fn ok(what: &str, r: &JobResult) -> Result<()> {
    if r.status != JobStatus::Ok || r.exit_code != Some(0) {
        bail!(
            "{what} ended {} (exit code {:?})\nstdout: {}\nstderr: {}",
            r.status.as_str(),
            r.exit_code,
            r.stdout.trim_end(),
            r.stderr.trim_end()
        );
    }
    Ok(())
}

/// Bytes of disk blocks under `path` (hard links once), without following links.
fn disk_blocks(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m =
            std::fs::symlink_metadata(&p).with_context(|| format!("reading {}", p.display()))?;
        if seen.insert((m.dev(), m.ino())) {
            total += m.blocks() * 512;
        }
        if m.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(total)
}

/// One CSV line's fields (quotes as psql and Python's csv module write them).
fn csv_fields(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut chars) =
        (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// One system's ExecSpec for a lifecycle script: what the engine runs (sh -c,
/// the system's user, environment and limits).
fn script(system: &System, text: &str, stdin: Option<&[u8]>, keep: bool) -> ExecSpec {
    ExecSpec {
        argv: vec!["sh".into(), "-c".into(), text.to_owned()],
        env: system.env.clone(),
        user: system.user.clone(),
        stdin: stdin.map(|s| Data(s.to_vec())),
        limits: system.limits,
        keep_running: keep,
        ..Default::default()
    }
}

/// The alternative without snapshots: a fresh sandbox over the system's image and
/// its dataset layers, the lifecycle scripts, then the query. Per-step times
/// (ms), the total and the answer; the sandbox is deleted after (not timed).
fn no_snapshot(
    engine: &Engine,
    system: &System,
    image: &str,
    query: &[u8],
) -> Result<(BTreeMap<String, f64>, f64, JobResult)> {
    let mut steps = BTreeMap::new();
    let t0 = Instant::now();
    let info = engine.create_sandbox(&CreateSandbox {
        image: image.to_owned(),
        limits: system.limits,
        ..Default::default()
    })?;
    steps.insert("create".to_owned(), ms(t0.elapsed()));
    let id = info.id;
    let run = (|| -> Result<JobResult> {
        let s = &system.scripts;
        let exec =
            |step: &str, text: &str, stdin: Option<&[u8]>, keep: bool| -> Result<JobResult> {
                let r =
                    engine.exec_sandbox(&id, &script(system, text, stdin, keep), &mut NoEvents)?;
                ok(&format!("{}'s {step} script (no snapshot)", system.id), &r)?;
                Ok(r)
            };
        for (step, text, keep) in [("install", &s.install, false), ("start", &s.start, true)] {
            if let Some(text) = text {
                let t = Instant::now();
                exec(step, text, None, keep)?;
                steps.insert(step.to_owned(), ms(t.elapsed()));
            }
        }
        if let Some(check) = &s.check {
            // The engine's readiness polling: the daemon gives no other signal.
            let t = Instant::now();
            let mut pause = Duration::from_millis(20);
            loop {
                let r =
                    engine.exec_sandbox(&id, &script(system, check, None, false), &mut NoEvents)?;
                if r.status == JobStatus::Ok {
                    break;
                }
                ensure!(
                    t.elapsed() < Duration::from_secs(60),
                    "{}'s check script did not pass within 60 s (no snapshot): {}",
                    system.id,
                    r.stderr.trim_end()
                );
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            steps.insert("check".to_owned(), ms(t.elapsed()));
        }
        if let Some(load) = &s.load {
            let t = Instant::now();
            exec("load", load, None, false)?;
            steps.insert("load".to_owned(), ms(t.elapsed()));
        }
        let t = Instant::now();
        let r = exec("query", &s.query, Some(query), false)?;
        steps.insert("query".to_owned(), ms(t.elapsed()));
        Ok(r)
    })();
    let total = ms(t0.elapsed());
    engine
        .delete_sandbox(&id)
        .with_context(|| format!("deleting the no-snapshot sandbox {id}"))?;
    Ok((steps, total, run?))
}

/// What is measured for one system.
#[derive(Default)]
struct Measured {
    fingerprint: String,
    cold_total: Vec<f64>,
    cold_steps: BTreeMap<String, Vec<f64>>,
    snapshot: Value,
    verify_ms: f64,
    first_start: Vec<f64>,
    first_total: Vec<f64>,
    nosnap_total: Vec<f64>,
    nosnap_steps: BTreeMap<String, Vec<f64>>,
    warm_total: Vec<f64>,
    warm_job: Vec<f64>,
    /// Every answer's stdout, in the order they came.
    answers: Vec<(String, String)>,
}

fn main() -> Result<()> {
    let o = opts()?;
    let catalog = Arc::new(
        Catalog::load(&o.catalog)
            .with_context(|| format!("loading the catalog {}", o.catalog.display()))?,
    );
    let ids: Vec<String> = match &o.systems {
        Some(s) => s.clone(),
        None => catalog.systems().map(|s| s.id.clone()).collect(),
    };
    let systems: Vec<System> = ids
        .iter()
        .map(|id| catalog.system(id).cloned())
        .collect::<Result<_, _>>()?;
    let mut cfg = EngineConfig::new(&o.data_dir);
    cfg.catalog = Some(catalog.clone());
    cfg.systems.pool_size = 1;
    let engine = Engine::open(cfg.clone())
        .with_context(|| format!("opening the data directory {}", o.data_dir.display()))?;
    for s in &systems {
        match engine.fingerprint(s) {
            Err(e @ EngineError::ProgramImageMissing { .. }) => bail!(
                "{e}\nhere: `target/release/runbox --data-dir {} catalog build` (or give \
                 --data-dir or BENCH_DATA_DIR of a data directory that has them)",
                o.data_dir.display()
            ),
            r => {
                r?;
            }
        }
    }
    let query_of = |s: &System| -> Result<String> {
        match (&o.query, &s.example) {
            (Some(q), _) => Ok(q.clone()),
            (None, Some(e)) => Ok(e.query.clone()),
            (None, None) => bail!("system {} has no example query: give --query SQL", s.id),
        }
    };
    let queries: Vec<String> = systems.iter().map(query_of).collect::<Result<_>>()?;
    let load_before = loadavg();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rng = Rng::seeded(0x5157_454d);
    let mut m: Vec<Measured> = systems.iter().map(|_| Measured::default()).collect();
    let mut order: Vec<usize> = (0..systems.len()).collect();
    progress!(
        "data dir {}, systems {}, {} cold provisions, {} rounds, {} warm queries per round; load {load_before}",
        o.data_dir.display(),
        ids.join(","),
        o.cold,
        o.rounds,
        o.warm
    );

    // 1. Cold provisions.
    let mut dataset_generated_ms = None;
    for rep in 0..o.cold {
        rng.shuffle(&mut order);
        for &i in &order {
            let s = &systems[i];
            let t = Instant::now();
            let r = engine.consume(s, true)?;
            let wall = ms(t.elapsed());
            ensure!(
                r.path == "cold",
                "{}: consume(force) was {}, not cold",
                s.id,
                r.path
            );
            let steps = &r.snapshot.steps_ms;
            // The dataset's generation happens once per data directory: kept out
            // of the provision's figures, reported on its own.
            let datasets = steps.get("datasets").copied().unwrap_or(0.0);
            let total = if datasets > 1000.0 {
                dataset_generated_ms = Some(datasets);
                r.total_ms - datasets
            } else {
                r.total_ms
            };
            let line: Vec<String> = steps.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
            progress!(
                "{} cold provision {}/{}: {total:.0} ms (wall {wall:.0}; {} ms)",
                s.id,
                rep + 1,
                o.cold,
                line.join(", ")
            );
            for (k, v) in steps {
                if k == "datasets" && *v > 1000.0 {
                    continue;
                }
                m[i].cold_steps.entry(k.clone()).or_default().push(*v);
            }
            m[i].cold_total.push(total);
            m[i].fingerprint = r.fingerprint.clone();
            // 2. The snapshot's size (the last provision's: they are the same bytes).
            let rec = &r.snapshot;
            let store = engine.store();
            let image = store.resolve(&rec.image)?;
            let layer = image
                .layers
                .last()
                .context("the snapshot image has no layer")?;
            let base = store.resolve(&catalog.source_image_name(&s.image))?;
            ensure!(
                image.layers.len() > base.layers.len()
                    && image.layers[..base.layers.len()] == base.layers[..],
                "{}: the snapshot image does not start with its system image's layers",
                s.id
            );
            let dataset_layers = &image.layers[base.layers.len()..image.layers.len() - 1];
            m[i].snapshot = json!({
                "image": rec.image,
                "layer": rec.layer,
                "layer_bytes": rec.layer_bytes,
                "files": rec.files,
                "blob_bytes": layer.compressed_size,
                "blob_disk_bytes": disk_blocks(&store.blob_path(&layer.blob_digest))?,
                "unpacked_disk_bytes": disk_blocks(&store.layer_dir(&layer.diff_id))?,
                "dataset_layers_bytes_shared": dataset_layers.iter().map(|l| l.unpacked_size).sum::<u64>(),
            });
        }
    }

    // 3. Lookup and verify in a fresh engine (nothing verified in its process state).
    {
        let fresh = Engine::open(cfg.clone())?;
        for (i, s) in systems.iter().enumerate() {
            let r = fresh.consume(s, false)?;
            ensure!(
                r.path == "warm",
                "{}: a fresh engine did not find the snapshot: {:?}",
                s.id,
                r.reason
            );
            m[i].verify_ms = r.total_ms;
            progress!(
                "{} snapshot lookup + verify in a new engine: {:.0} ms",
                s.id,
                r.total_ms
            );
        }
    }

    // The no-snapshot images: the system's image and its dataset layers (the
    // snapshot image's layers without its last), committed once; nothing copied.
    let mut plain = Vec::new();
    for (i, s) in systems.iter().enumerate() {
        let store = engine.store();
        let base = store.resolve(&catalog.source_image_name(&s.image))?;
        let snap = store.resolve(m[i].snapshot["image"].as_str().expect("set"))?;
        let name = format!("runbox-bench/nosnapshot-{}:latest", s.id);
        let extra = snap.layers[base.layers.len()..snap.layers.len() - 1].to_vec();
        store.commit_image(
            &CommitSpec {
                name: name.clone(),
                config: base.config.clone(),
                base,
                extra_layers: extra,
                new_layer_tar: None,
            },
            &NoProgress,
        )?;
        plain.push(name);
    }

    // 4 and 5. Per round and system (both shuffled): no snapshot, and the first
    // query from the snapshot followed by warm queries on that instance, in a
    // random order of the two.
    for round in 0..o.rounds {
        rng.shuffle(&mut order);
        for &i in &order {
            let s = &systems[i];
            let q = queries[i].as_bytes();
            let snapshot_first = rng.next_u64() % 2 == 0;
            for from_snapshot in [snapshot_first, !snapshot_first] {
                if from_snapshot {
                    let t = Instant::now();
                    let a = engine.query(&s.id, q)?;
                    let total = ms(t.elapsed());
                    ensure!(!a.warm, "{}: the pool was not empty", s.id);
                    ok(&format!("{}'s first query", s.id), &a.result)?;
                    m[i].first_start.push(a.start_ms);
                    m[i].first_total.push(total);
                    m[i].answers
                        .push(("first from snapshot".into(), a.result.stdout));
                    let mut warm = Vec::new();
                    // One unmeasured query: the instance's first reads are done.
                    for n in 0..=o.warm {
                        let t = Instant::now();
                        let w = engine.query(&s.id, q)?;
                        let ms = ms(t.elapsed());
                        ensure!(
                            w.warm && w.instance == a.instance,
                            "{}: a warm query did not go to the running instance",
                            s.id
                        );
                        ok(&format!("{}'s warm query", s.id), &w.result)?;
                        if n > 0 {
                            warm.push(ms);
                            m[i].warm_total.push(ms);
                            m[i].warm_job.push(w.result.timings.total_ms);
                        }
                        m[i].answers.push(("warm".into(), w.result.stdout));
                    }
                    engine.delete_sandbox(&a.instance)?;
                    progress!(
                        "{} round {}/{}: first query from the snapshot {total:.0} ms (instance start {:.0}); \
                         then warm {} ms",
                        s.id,
                        round + 1,
                        o.rounds,
                        a.start_ms,
                        warm.iter().map(|w| format!("{w:.0}")).collect::<Vec<_>>().join(", ")
                    );
                } else {
                    let (steps, total, r) = no_snapshot(&engine, s, &plain[i], q)?;
                    let line: Vec<String> =
                        steps.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
                    progress!(
                        "{} round {}/{}: no snapshot (fresh sandbox, load, query) {total:.0} ms ({} ms)",
                        s.id,
                        round + 1,
                        o.rounds,
                        line.join(", ")
                    );
                    for (k, v) in steps {
                        m[i].nosnap_steps.entry(k).or_default().push(v);
                    }
                    m[i].nosnap_total.push(total);
                    m[i].answers.push(("no snapshot".into(), r.stdout));
                }
            }
        }
    }
    for sb in engine.list_sandboxes() {
        engine.delete_sandbox(&sb.id)?;
    }
    for name in &plain {
        engine.store().remove(name)?;
    }
    let load_after = loadavg();

    // 6. Answers.
    let mut consistent = true;
    for (i, s) in systems.iter().enumerate() {
        let first = &m[i].answers[0].1;
        for (how, a) in &m[i].answers {
            if a != first {
                consistent = false;
                progress!(
                    "WARNING {}: the {how} answer differs from the first:\n{a}\n---\n{first}",
                    s.id
                );
            }
        }
    }
    let answer = |i: usize| m[i].answers[0].1.clone();
    let identical = (1..systems.len()).all(|i| answer(i) == answer(0));
    let mut differences = Vec::new();
    let tables: Vec<Vec<Vec<String>>> = (0..systems.len())
        .map(|i| answer(i).lines().map(csv_fields).collect())
        .collect();
    let mut same_shape = true;
    for (i, t) in tables.iter().enumerate().skip(1) {
        if t.len() != tables[0].len() || t.iter().zip(&tables[0]).any(|(a, b)| a.len() != b.len()) {
            same_shape = false;
            differences
                .push(json!({"system": systems[i].id, "difference": "rows or columns differ"}));
        }
    }
    // Lines that differ as text (CSV quoting, number formatting).
    let texts: Vec<String> = (0..systems.len()).map(answer).collect();
    let mut line_differences = Vec::new();
    for (r, first) in texts[0].lines().enumerate() {
        let lines: Vec<&str> = texts
            .iter()
            .map(|t| t.lines().nth(r).unwrap_or(""))
            .collect();
        if lines.iter().any(|l| l != &first) && line_differences.len() < 20 {
            line_differences.push(
                systems
                    .iter()
                    .zip(&lines)
                    .map(|(s, l)| (s.id.clone(), json!(l)))
                    .collect::<serde_json::Map<_, _>>(),
            );
        }
    }
    let unquoted_identical = same_shape && tables.iter().all(|t| *t == tables[0]);
    let mut numerically = same_shape;
    if same_shape {
        for (r, row) in tables[0].iter().enumerate() {
            for c in 0..row.len() {
                let cells: Vec<&str> = tables.iter().map(|t| t[r][c].as_str()).collect();
                if cells.iter().all(|x| *x == cells[0]) {
                    continue;
                }
                let nums: Vec<Option<f64>> = cells.iter().map(|x| x.parse().ok()).collect();
                let equal = nums.iter().all(|n| n.is_some() && *n == nums[0]);
                if !equal {
                    numerically = false;
                }
                if differences.len() < 20 {
                    differences.push(json!({
                        "row": r, "column": tables[0][0].get(c),
                        "values": systems.iter().zip(&cells).map(|(s, v)| (s.id.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                        "equal_as_numbers": equal,
                    }));
                }
            }
        }
    }

    // Results.
    let mut out_systems = Vec::new();
    for (i, s) in systems.iter().enumerate() {
        let x = &m[i];
        let steps = |v: &BTreeMap<String, Vec<f64>>| -> Value {
            v.iter()
                .map(|(k, v)| (k.clone(), json!(median(v))))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let (nosnap, first, warm) = (
            median(&x.nosnap_total),
            median(&x.first_total),
            median(&x.warm_total),
        );
        out_systems.push(json!({
            "system": s.id,
            "version": s.version,
            "fingerprint": x.fingerprint,
            "query": queries[i],
            "cold_provision": {"total": stats(&x.cold_total), "steps_median_ms": steps(&x.cold_steps)},
            "snapshot": x.snapshot,
            "lookup_and_verify_new_process_ms": x.verify_ms,
            "first_query_from_snapshot": {"instance_start": stats(&x.first_start), "total": stats(&x.first_total)},
            "warm_query": {"total": stats(&x.warm_total), "query_job": stats(&x.warm_job)},
            "no_snapshot_per_query": {"total": stats(&x.nosnap_total), "steps_median_ms": steps(&x.nosnap_steps)},
            "ratios": {
                "no_snapshot_over_first_from_snapshot": nosnap / first,
                "no_snapshot_over_warm": nosnap / warm,
            },
            "answers_consistent": x.answers.iter().all(|a| a.1 == x.answers[0].1),
            "answer": answer(i),
        }));
    }
    let doc = json!({
        "dataset": catalog.datasets().map(|d| json!({"name": d.name, "rows": d.rows, "bytes": d.size})).collect::<Vec<_>>(),
        "dataset_generated_ms": dataset_generated_ms,
        "data_dir": o.data_dir,
        "cpus": cpus,
        "cold_provisions": o.cold, "rounds": o.rounds, "warm_queries_per_round": o.warm,
        "loadavg_before": load_before, "loadavg_after": load_after,
        "systems": out_systems,
        "answers": {
            "consistent_within_each_system": consistent,
            "identical_across_systems": identical,
            "agree_with_numbers_compared_as_numbers": numerically,
            "identical_after_csv_unquoting": unquoted_identical,
            "line_differences": line_differences,
            "cell_differences": differences,
        },
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/systems.json");
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)?;
    if o.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }

    let mib = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1048576.0;
    let step = |v: &BTreeMap<String, Vec<f64>>, k: &str| v.get(k).map(|v| median(v));
    let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    println!("medians (ms); load average before {load_before}, after {load_after}");
    println!(
        "{:<9} {:>9} {:>29} {:>8} {:>12} {:>14} {:>12} {:>21} {:>14}",
        "system",
        "provision",
        "install/start+check/load/stop",
        "snapshot",
        "verify (new)",
        "1st: start/all",
        "warm p50/p90",
        "no snapshot: load/all",
        "ratio 1st/warm"
    );
    for (i, s) in systems.iter().enumerate() {
        let x = &m[i];
        let c = &x.cold_steps;
        let nosnap = median(&x.nosnap_total);
        println!(
            "{:<9} {:>9.0} {:>29} {:>8.0} {:>12.0} {:>14} {:>12} {:>21} {:>14}",
            s.id,
            median(&x.cold_total),
            format!(
                "{}/{}/{}/{}",
                show(step(c, "install")),
                show(step(c, "start").map(|v| v + step(c, "check").unwrap_or(0.0))),
                show(step(c, "load")),
                show(step(c, "stop"))
            ),
            step(c, "snapshot").unwrap_or(0.0),
            x.verify_ms,
            format!(
                "{:.0}/{:.0}",
                median(&x.first_start),
                median(&x.first_total)
            ),
            format!(
                "{:.0}/{:.0}",
                median(&x.warm_total),
                pct(&mut x.warm_total.clone(), 0.9)
            ),
            format!("{}/{nosnap:.0}", show(step(&x.nosnap_steps, "load"))),
            format!(
                "x{:.1}/x{:.1}",
                nosnap / median(&x.first_total),
                nosnap / median(&x.warm_total)
            ),
        );
    }
    println!("(ratio: the no-snapshot total over the first query from the snapshot, and over a warm query)");
    println!(
        "\n{:<9} {:>12} {:>8} {:>12} {:>16} {:>18}",
        "snapshot", "layer", "files", "blob", "unpacked (disk)", "dataset (shared)"
    );
    for (i, s) in systems.iter().enumerate() {
        let sn = &m[i].snapshot;
        println!(
            "{:<9} {:>8.1} MiB {:>8} {:>8.1} MiB {:>12.1} MiB {:>14.1} MiB",
            s.id,
            mib(&sn["layer_bytes"]),
            sn["files"].as_u64().unwrap_or(0),
            mib(&sn["blob_disk_bytes"]),
            mib(&sn["unpacked_disk_bytes"]),
            mib(&sn["dataset_layers_bytes_shared"]),
        );
    }
    println!(
        "\nanswers: consistent within each system {consistent}; identical across systems {identical}; \
         equal with numbers compared as numbers {numerically}"
    );
    println!("lines that differ as text:");
    for d in &line_differences {
        println!("  {}", Value::from(d.clone()));
    }
    println!("cells that differ after CSV unquoting:");
    for d in &differences {
        println!("  {d}");
    }
    println!("\n(JSON: {})", path.display());
    Ok(())
}
