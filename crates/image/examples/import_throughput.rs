//! Measures import throughput: the busybox image, and a synthetic image of many
//! files (default 200 MB in 20,000 files over 4 layers).
//!
//! `cargo run --release -p runbox-image --example import_throughput [MB] [FILES] [LAYERS]`
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::time::Instant;

use runbox_image::{ImportOptions, NoProgress, Store, StoreOptions};

fn import(store_dir: &Path, layout: &Path, label: &str) {
    let store = Store::open(store_dir, StoreOptions::default()).expect("open store");
    let t = Instant::now();
    let r = store
        .import(layout, &ImportOptions::default(), &NoProgress)
        .expect("import");
    let secs = t.elapsed().as_secs_f64();
    let mb = r.image.size_bytes as f64 / 1e6;
    let read = r.bytes_read as f64 / 1e6;
    println!(
        "{label}: {} layers, {mb:.1} MB unpacked, {read:.1} MB read, {:.3} s: {:.0} MB/s unpacked, {:.0} MB/s read",
        r.layers_unpacked,
        secs,
        mb / secs,
        read / secs
    );
    let t = Instant::now();
    let again = store
        .import(layout, &ImportOptions::default(), &NoProgress)
        .expect("import");
    assert!(again.already_present);
    println!(
        "{label}: re-import (already present) {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("number"))
        .collect();
    let mb = args.first().copied().unwrap_or(200);
    let files = args.get(1).copied().unwrap_or(20_000);
    let layers = args.get(2).copied().unwrap_or(4);
    if let Some(dir) = std::env::var_os("BUILD_ONLY") {
        runbox_testkit::oci::synthetic_layout(Path::new(&dir), mb, files, layers);
        return;
    }
    let tmp =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .expect("tempdir");

    let bb = runbox_testkit::oci::busybox_image(&tmp.path().join("in"));
    import(&tmp.path().join("store-bb"), &bb, "busybox");

    // The synthetic layout is built by a child process, so this process's peak
    // memory (printed at the end) is the import's alone.
    let layout = tmp.path().join("in/synthetic");
    let t = Instant::now();
    let status = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([mb.to_string(), files.to_string(), layers.to_string()])
        .env("BUILD_ONLY", &layout)
        .status()
        .expect("building");
    assert!(status.success());
    println!(
        "built synthetic layout ({mb} MB, {files} files, {layers} layers) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    import(&tmp.path().join("store-syn"), &layout, "synthetic");
    let archive = tmp.path().join("in/synthetic.tar");
    runbox_image::writer::write_oci_archive(&layout, &archive, false).expect("archive");
    import(
        &tmp.path().join("store-syn-tar"),
        &archive,
        "synthetic (OCI archive)",
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?");
    println!(
        "peak memory of the importing process: {}",
        hwm.trim_start_matches("VmHWM:").trim()
    );
}
