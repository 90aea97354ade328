//! Measures pull throughput from a loopback registry (Debian's docker-registry,
//! pushed with skopeo): a synthetic image (default 200 MB in 20,000 files over 4
//! layers, half of each file compressible), pulled cold, then a second image
//! with the same layers (only its manifest and config are downloaded), then the
//! first again (already present); and an import of the same layout beside it.
//! The peer, in the same run: `skopeo copy` (download and verify into an OCI
//! layout) followed by `umoci unpack` (into a rootfs), the usual tool pair for a
//! pull without a container engine.
//!
//! `cargo run --release -p runbox-image --example pull_throughput [MB] [FILES] [LAYERS]`
#![allow(clippy::print_stdout)]

use std::time::Instant;

use runbox_image::writer::{ImageSpec, LayoutWriter};
use runbox_image::{
    ImageConfig, ImportOptions, NoProgress, PullOptions, PullReport, Store, StoreOptions,
};
use runbox_testkit::oci::synthetic_layout;
use runbox_testkit::registry::TestRegistry;

fn pull(store: &Store, reference: &str, label: &str) -> PullReport {
    let opts = PullOptions {
        plain_http: true,
        ..PullOptions::default()
    };
    let t = Instant::now();
    let r = store.pull(reference, &opts, &NoProgress).expect("pull");
    let secs = t.elapsed().as_secs_f64();
    let down = r.bytes_downloaded as f64 / 1e6;
    let unpacked = r.image.size_bytes as f64 / 1e6;
    println!(
        "{label}: {:.3} s; {} layers downloaded, {} present, {} unpacked; {down:.1} MB downloaded ({:.0} MB/s); {unpacked:.1} MB image ({:.0} MB/s)",
        secs,
        r.layers_downloaded,
        r.layers_present,
        r.layers_unpacked,
        down / secs,
        unpacked / secs,
    );
    r
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("number"))
        .collect();
    let mb = args.first().copied().unwrap_or(200);
    let files = args.get(1).copied().unwrap_or(20_000);
    let layers = args.get(2).copied().unwrap_or(4);
    let tmp =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .expect("tempdir");
    let layout = tmp.path().join("layout");

    let t = Instant::now();
    let first = synthetic_layout(&layout, mb, files, layers);
    let compressed: u64 = first.layers.iter().map(|l| l.size).sum();
    println!(
        "built the synthetic layout ({mb} MB in {files} files, {layers} layers, {:.1} MB compressed) in {:.1} s",
        compressed as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let reg = TestRegistry::start();
    let t = Instant::now();
    reg.push(&layout, None, "bench/app:v1");
    // The same layers under another config: a new image whose layers a store
    // that pulled v1 holds.
    let mut w = LayoutWriter::create(&layout).expect("layout");
    for l in &first.layers {
        w.push_layer(l.clone());
    }
    w.finish(&ImageSpec {
        config: ImageConfig {
            cmd: Some(vec!["v2".into()]),
            ..ImageConfig::default()
        },
        ..ImageSpec::default()
    })
    .expect("finish v2");
    reg.push(&layout, None, "bench/app:v2");
    println!(
        "pushed both with skopeo in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let store = Store::open(tmp.path().join("store"), StoreOptions::default()).expect("store");
    let v1 = format!("{}/bench/app:v1", reg.host());
    let v2 = format!("{}/bench/app:v2", reg.host());
    // Each timed step starts with no dirty pages, so none pays for the writeback
    // of the one before (building the layout and pushing it write ~400 MB).
    flush();
    let cold = Instant::now();
    pull(&store, &v1, "cold pull (nothing held)");
    let cold = cold.elapsed().as_secs_f64();
    pull(
        &store,
        &v2,
        "pull, all layers held (new manifest and config)",
    );
    pull(&store, &v1, "pull again (image present)");

    // The peer: skopeo copy + umoci unpack of the same image.
    let peer = tmp.path().join("peer");
    std::fs::create_dir_all(&peer).expect("peer dir");
    flush();
    let t = Instant::now();
    let copied = std::process::Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{v1}"))
        .arg(format!("oci:{}:v1", peer.join("layout").display()))
        .status()
        .expect("skopeo");
    assert!(copied.success(), "skopeo copy failed");
    let copy_secs = t.elapsed().as_secs_f64();
    let unpacked = std::process::Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", peer.join("layout").display()))
        .arg(peer.join("bundle"))
        .status();
    let total = t.elapsed().as_secs_f64();
    match unpacked {
        Ok(s) if s.success() => println!(
            "peer: skopeo copy {copy_secs:.3} s + umoci unpack {:.3} s = {total:.3} s; runbox cold pull / peer = {:.2}x",
            total - copy_secs,
            cold / total
        ),
        _ => println!(
            "peer: skopeo copy {copy_secs:.3} s (umoci missing: apt-get install umoci); runbox cold pull / skopeo copy alone = {:.2}x",
            cold / copy_secs
        ),
    }

    let store2 =
        Store::open(tmp.path().join("store-import"), StoreOptions::default()).expect("store");
    flush();
    let t = Instant::now();
    let r = store2
        .import(&layout, &ImportOptions::default(), &NoProgress)
        .expect("import");
    let secs = t.elapsed().as_secs_f64();
    println!(
        "import of the same layout, for comparison: {secs:.3} s ({:.0} MB/s read, {:.0} MB/s unpacked)",
        r.bytes_read as f64 / 1e6 / secs,
        r.image.size_bytes as f64 / 1e6 / secs
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?");
    println!(
        "peak memory of this process (includes building the layout): {}",
        hwm.trim_start_matches("VmHWM:").trim()
    );
}

fn flush() {
    let ok = std::process::Command::new("sync")
        .status()
        .map(|s| s.success());
    assert!(matches!(ok, Ok(true)), "sync failed");
}
