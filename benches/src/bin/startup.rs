//! One-shot start-to-exit of `/bin/true` from a busybox root, side by side in one
//! run: bare exec, `bwrap --unshare-all`, `runc run`, and `runbox run` with all its
//! isolation and limits on.
//!
//! The contenders are interleaved: each round runs every command once, in a
//! shuffled order, so background kernel work (network namespaces are torn down
//! asynchronously, after the process that used them is gone) and machine noise land
//! on all of them alike instead of on whichever batch ran last. Reports medians,
//! percentiles and ratios, and writes them as JSON to benches/results/startup.json.
//!
//! Usage: `benches/run startup [ROUNDS]` (builds runbox in release first).

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use runbox_benches::Rng;

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn need(tool: &str) -> Result<()> {
    if Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()?
        .status
        .success()
    {
        Ok(())
    } else {
        bail!("{tool} is not installed (apt-get install bubblewrap runc busybox-static)")
    }
}

/// Writes the busybox tree as a plain directory (for bare exec, bwrap and runc).
fn rootfs(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "tmp", "sys"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/true"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    Ok(root)
}

fn runc_bundle(dir: &Path) -> Result<PathBuf> {
    let bundle = dir.to_path_buf();
    sh(Command::new("runc").args(["spec", "--bundle"]).arg(&bundle))?;
    let path = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(["/bin/true"]);
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    Ok(bundle)
}

struct Contender {
    name: &'static str,
    argv: Vec<String>,
    ms: Vec<f64>,
}

impl Contender {
    fn new(name: &'static str, cmdline: String) -> Contender {
        Contender {
            name,
            argv: cmdline.split_whitespace().map(str::to_owned).collect(),
            ms: Vec::new(),
        }
    }

    /// Spawns, waits, returns the wall time in ms; fails on a non-zero exit.
    fn once(&self) -> Result<f64> {
        let t = Instant::now();
        let status = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if !status.success() {
            bail!("{} exited with {status}", self.name);
        }
        Ok(ms)
    }

    fn pct(&self, p: f64) -> f64 {
        runbox_benches::pct(&mut self.ms.clone(), p)
    }
}

fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(300);
    for t in ["bwrap", "runc"] {
        need(t)?;
    }
    let runbox = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/runbox");
    if !runbox.exists() {
        bail!(
            "{} is missing: run scripts/build (benches/run does)",
            runbox.display()
        );
    }
    let tmp = tempfile::tempdir()?;
    let root = rootfs(tmp.path())?;
    let bundle = runc_bundle(tmp.path())?;
    let data = tmp.path().join("runbox-data");
    let layout = runbox_testkit::oci::busybox_image(tmp.path());
    sh(Command::new(&runbox)
        .args(["image", "import", "--name", "busybox"])
        .arg(&layout)
        .env("RUNBOX_DATA_DIR", &data))?;

    let r = root.display();
    let mut all = vec![
        Contender::new("bare exec", format!("{r}/bin/true")),
        Contender::new(
            "bwrap --unshare-all",
            format!("bwrap --unshare-all --die-with-parent --ro-bind {r} / --proc /proc --dev /dev /bin/true"),
        ),
        Contender::new("runc run", format!("runc run --bundle {} bench-{}", bundle.display(), std::process::id())),
        Contender::new(
            "runbox run",
            format!("{} --data-dir {} run --no-stdin busybox -- /bin/true", runbox.display(), data.display()),
        ),
    ];
    let warmup = (rounds / 10).clamp(5, 30);
    let mut rng = Rng::seeded(0x2545_f491_4f6c_dd1d);
    let mut order: Vec<usize> = (0..all.len()).collect();
    for round in 0..warmup + rounds {
        rng.shuffle(&mut order);
        for &i in &order {
            let ms = all[i].once()?;
            if round >= warmup {
                all[i].ms.push(ms);
            }
        }
    }

    let (bare, bwrap) = (all[0].pct(0.5), all[1].pct(0.5));
    println!("startup of /bin/true, {rounds} interleaved rounds (ms)");
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "", "median", "p10", "p90", "mean", "x bare", "x bwrap"
    );
    let mut json = Vec::new();
    for c in &all {
        let (med, mean) = (c.pct(0.5), c.ms.iter().sum::<f64>() / c.ms.len() as f64);
        println!(
            "{:<22} {med:>8.2} {:>8.2} {:>8.2} {mean:>8.2} {:>9.2} {:>9.2}",
            c.name,
            c.pct(0.1),
            c.pct(0.9),
            med / bare,
            med / bwrap
        );
        json.push(serde_json::json!({
            "name": c.name, "command": c.argv.join(" "), "median_ms": med, "p10_ms": c.pct(0.1),
            "p90_ms": c.pct(0.9), "mean_ms": mean, "ratio_to_bare": med / bare, "ratio_to_bwrap": med / bwrap,
        }));
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/startup.json");
    std::fs::create_dir_all(out.parent().unwrap())?;
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&serde_json::json!({ "rounds": rounds, "results": json }))?,
    )?;
    println!("\n(JSON: {})", out.display());
    Ok(())
}
