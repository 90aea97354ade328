//! The engine's cost per job inside a long-lived process, the way `runbox serve`
//! and workers use it: one `Engine` (store + namespace backend), network namespaces
//! kept ready off the job's path, `/bin/true` from a busybox image, full isolation
//! and limits. Interleaved with `bwrap --unshare-all` spawned per job for a
//! side-by-side ratio. Then two threads run jobs back to back: jobs/s.
//!
//! Usage: `benches/run engine [ROUNDS]`.

#![allow(clippy::print_stdout)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Result};
use runbox_benches::pct;
use runbox_core::JobSpec;
use runbox_engine::{Engine, EngineConfig};
use runbox_image::{ImportOptions, NoProgress};
use runbox_sandbox::NoEvents;

fn bwrap(root: &Path) -> Result<f64> {
    let t = Instant::now();
    let st = Command::new("bwrap")
        .args(["--unshare-all", "--die-with-parent", "--ro-bind"])
        .arg(root)
        .args(["/", "--proc", "/proc", "--dev", "/dev", "/bin/true"])
        .stdin(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("bwrap failed");
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(300);
    let tmp = tempfile::tempdir()?;
    let layout = runbox_testkit::oci::busybox_image(tmp.path());
    let mut cfg = EngineConfig::new(tmp.path().join("data"));
    cfg.netns_ready = 2;
    let engine = Engine::open(cfg)?;
    engine.store().import(
        &layout,
        &ImportOptions {
            name: Some("busybox".into()),
        },
        &NoProgress,
    )?;
    let spec = JobSpec {
        image: "busybox".into(),
        argv: Some(vec!["/bin/true".into()]),
        ..Default::default()
    };
    let job = || -> Result<f64> {
        let t = Instant::now();
        let r = engine.run(spec.clone(), &mut NoEvents)?;
        if r.exit_code != Some(0) {
            bail!("job failed: {r:?}");
        }
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };

    // A bwrap root from the same busybox.
    let root = tmp.path().join("rootfs");
    for d in ["bin", "proc", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/true"))?;

    for _ in 0..20 {
        job()?;
        bwrap(&root)?;
    }
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        if i % 2 == 0 {
            ours.push(job()?);
            theirs.push(bwrap(&root)?);
        } else {
            theirs.push(bwrap(&root)?);
            ours.push(job()?);
        }
    }
    let (o50, b50) = (pct(&mut ours, 0.5), pct(&mut theirs, 0.5));
    println!("one job at a time, {rounds} interleaved rounds (ms)");
    println!("{:<34} {:>8} {:>8} {:>8}", "", "p50", "p90", "p99");
    println!(
        "{:<34} {o50:>8.2} {:>8.2} {:>8.2}",
        "runbox engine (in-process)",
        pct(&mut ours, 0.9),
        pct(&mut ours, 0.99)
    );
    println!(
        "{:<34} {b50:>8.2} {:>8.2} {:>8.2}",
        "bwrap --unshare-all (spawned)",
        pct(&mut theirs, 0.9),
        pct(&mut theirs, 0.99)
    );
    println!("ratio runbox/bwrap at p50: {:.2}", o50 / b50);

    let total = rounds.max(100);
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    for _ in 0..total / 2 {
                        engine.run(spec.clone(), &mut NoEvents)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker panicked")?;
        }
        Ok(())
    })?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "throughput, 2 threads: {:.0} jobs/s ({total} jobs in {secs:.2} s)",
        total as f64 / secs
    );
    Ok(())
}
