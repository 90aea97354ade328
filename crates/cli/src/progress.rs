//! Progress bars for long work (imports), drawn on stderr only when it is a terminal.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use runbox_core::Digest;
use runbox_image::ImportProgress;

use crate::units::human_bytes;

/// An [`ImportProgress`] that shows bytes read and layers unpacked.
#[derive(Debug)]
pub struct ImportBar {
    bar: ProgressBar,
    layers_done: AtomicU64,
}

impl ImportBar {
    pub fn new(enabled: bool) -> ImportBar {
        let bar = if enabled && std::io::stderr().is_terminal() {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed:>3} {msg} {bytes} read ({bytes_per_sec})",
                )
                .expect("static template"),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        } else {
            ProgressBar::hidden()
        };
        bar.set_message("importing:");
        ImportBar {
            bar,
            layers_done: AtomicU64::new(0),
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl ImportProgress for ImportBar {
    fn bytes(&self, n: u64) {
        self.bar.inc(n);
    }
    fn layer_unpack_started(&self, diff_id: &Digest) {
        self.bar
            .set_message(format!("unpacking layer {}:", diff_id.short()));
    }
    fn layer_unpack_finished(&self, diff_id: &Digest, bytes: u64, entries: u64) {
        let n = self.layers_done.fetch_add(1, Ordering::Relaxed) + 1;
        self.bar.println(format!(
            "  layer {} unpacked: {} in {entries} entries",
            diff_id.short(),
            human_bytes(bytes)
        ));
        self.bar.set_message(format!("{n} layer(s) unpacked;"));
    }
    fn layer_reused(&self, diff_id: &Digest) {
        self.bar
            .println(format!("  layer {} already present", diff_id.short()));
    }
}
