//! The sandbox engine's cost per job inside a long-lived process, the way
//! `runbox serve` and workers use it: one `NamespaceBackend`, network namespaces
//! kept ready off the job's path, `/bin/true` from a busybox image, full isolation
//! and limits. Interleaved with `bwrap --unshare-all` spawned per job for a
//! side-by-side ratio. Also runs jobs on two threads at once and reports jobs/s.
//!
//! Usage: `benches/run engine [ROUNDS]`.

#![allow(clippy::print_stdout)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Result};
use runbox_core::{JobSpec, Limits, LimitsPolicy};
use runbox_image::{ImportOptions, NoProgress, Store, StoreOptions};
use runbox_sandbox::{
    plan, Backend, ImageDefaults, NamespaceBackend, NamespaceConfig, NetnsPool, NoEvents, RunImage,
};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(300);
    let tmp = tempfile::tempdir()?;
    let layout = runbox_testkit::oci::busybox_image(tmp.path());
    let store = Store::open(tmp.path().join("data"), StoreOptions::default())?;
    let record = store
        .import(
            &layout,
            &ImportOptions {
                name: Some("busybox".into()),
            },
            &NoProgress,
        )?
        .image;
    let image = RunImage {
        layers_dir: store.layers_dir().to_path_buf(),
        layers: record
            .layers
            .iter()
            .map(|l| l.diff_id.hex().to_owned())
            .collect(),
        defaults: ImageDefaults {
            cmd: record.config.cmd.clone(),
            env: record.config.env.clone(),
            ..Default::default()
        },
    };
    let (backend, _) = NamespaceBackend::new(NamespaceConfig::new(
        tmp.path().join("data/sandbox"),
        store.id_map(),
    ))?;
    NetnsPool::global().keep_ready(2);
    let policy = LimitsPolicy::for_host(8 << 30, 2);
    let spec = JobSpec {
        image: "busybox".into(),
        argv: Some(vec!["/bin/true".into()]),
        ..Default::default()
    };
    let mut n = 0u64;
    let mut job = || -> Result<f64> {
        n += 1;
        let t = Instant::now();
        let p = plan(
            format!("{n:016x}"),
            spec.clone(),
            image.clone(),
            &Limits::default(),
            &policy,
        )?;
        let r = backend.run(&p, &mut NoEvents)?;
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
    let bwrap = |root: &Path| -> Result<f64> {
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
    };

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

    // Throughput: two threads running jobs back to back on the same backend.
    let total = rounds.max(100);
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let (backend, image, spec, policy) = (&backend, &image, &spec, &policy);
                s.spawn(move || -> Result<()> {
                    for i in 0..total / 2 {
                        let p = plan(
                            format!("{w}{i:015x}"),
                            spec.clone(),
                            image.clone(),
                            &Limits::default(),
                            policy,
                        )?;
                        backend.run(&p, &mut NoEvents)?;
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
    println!(
        "throughput, 2 threads: {:.0} jobs/s ({total} jobs in {:.2} s)",
        total as f64 / t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
