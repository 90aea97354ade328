//! One-shot start-to-exit of `/bin/true` from a busybox root, side by side in one
//! run: bare exec, `bwrap --unshare-all`, `runc run`, and `runbox run` with all its
//! isolation and limits on. Prints medians and ratios; writes hyperfine's JSON.
//!
//! Usage: `benches/run startup [RUNS]` (builds runbox in release first).

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

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
        bail!("{tool} is not installed (apt-get install hyperfine bubblewrap runc busybox-static)")
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

fn main() -> Result<()> {
    let runs: u32 = std::env::args()
        .nth(1)
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(300);
    for t in ["hyperfine", "bwrap", "runc"] {
        need(t)?;
    }
    let runbox = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/runbox");
    if !runbox.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p runbox-cli` (benches/run does)",
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
    let cmds = [
        ("bare exec", format!("{r}/bin/true")),
        ("bwrap --unshare-all", format!("bwrap --unshare-all --die-with-parent --ro-bind {r} / --proc /proc --dev /dev /bin/true")),
        ("runc run", format!("runc run --bundle {} bench-{}", bundle.display(), std::process::id())),
        ("runbox run", format!("{} --data-dir {} run --no-stdin busybox -- /bin/true", runbox.display(), data.display())),
    ];
    let export = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/startup.json");
    std::fs::create_dir_all(export.parent().unwrap())?;
    let mut hf = Command::new("hyperfine");
    hf.args([
        "-N",
        "--warmup",
        "30",
        "--runs",
        &runs.to_string(),
        "--export-json",
    ])
    .arg(&export);
    for (name, cmd) in &cmds {
        hf.args(["-n", name, cmd]);
    }
    let status = hf.status()?;
    if !status.success() {
        bail!("hyperfine failed");
    }
    let res: serde_json::Value = serde_json::from_slice(&std::fs::read(&export)?)?;
    let median = |i: usize| res["results"][i]["median"].as_f64().unwrap_or(f64::NAN) * 1000.0;
    let (bare, bwrap) = (median(0), median(1));
    println!(
        "\n{:<22} {:>10} {:>10} {:>10}",
        "startup of /bin/true", "median ms", "x bare", "x bwrap"
    );
    for (i, (name, _)) in cmds.iter().enumerate() {
        let m = median(i);
        println!(
            "{name:<22} {m:>10.2} {:>10.2} {:>10.2}",
            m / bare,
            m / bwrap
        );
    }
    println!("\n(hyperfine JSON: {})", export.display());
    Ok(())
}
