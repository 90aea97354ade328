//! Writes an OCI image layout of a busybox image (from the host's busybox-static)
//! into DIR/busybox, for trying runbox without a registry:
//!
//!     cargo run -p runbox-testkit --example busybox-layout -- /tmp/img
//!     runbox image import /tmp/img/busybox --name busybox

#![allow(clippy::print_stdout)]

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: busybox-layout DIR");
        std::process::exit(2)
    });
    std::fs::create_dir_all(&dir).expect("creating DIR");
    let layout = runbox_testkit::oci::busybox_image(std::path::Path::new(&dir));
    println!("{}", layout.display());
}
