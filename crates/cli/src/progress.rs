//! Progress bars for long work (imports, builds), drawn on stderr only when it is a terminal.

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

/// A [`BuildProgress`](runbox_image::BuildProgress) spinner: the recipe, the
/// build phase and the elapsed time; during the import, the layer being unpacked.
#[derive(Debug)]
pub struct BuildBar {
    bar: ProgressBar,
}

impl BuildBar {
    /// `label` names what is built (the recipe or image name). Drawn only when
    /// `enabled` and stderr is a terminal.
    pub fn new(enabled: bool, label: &str) -> BuildBar {
        let bar = if enabled && std::io::stderr().is_terminal() {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {prefix}: {msg}")
                    .expect("static template"),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        } else {
            ProgressBar::hidden()
        };
        bar.set_prefix(label.to_owned());
        bar.set_message("starting");
        BuildBar { bar }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for BuildBar {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

impl runbox_image::BuildProgress for BuildBar {
    fn phase(&self, phase: runbox_image::BuildPhase, _elapsed: Duration) {
        let what = match phase {
            runbox_image::BuildPhase::Resolving => "resolving packages (mmdebstrap)",
            runbox_image::BuildPhase::Downloading => "downloading packages",
            runbox_image::BuildPhase::Installing => "installing packages",
            runbox_image::BuildPhase::Packing => "packing the layers",
            runbox_image::BuildPhase::Importing => "importing into the store",
        };
        self.bar.set_message(what);
    }
    fn import_progress(&self) -> &dyn ImportProgress {
        self
    }
}

impl ImportProgress for BuildBar {
    fn layer_unpack_started(&self, diff_id: &Digest) {
        self.bar
            .set_message(format!("importing: unpacking layer {}", diff_id.short()));
    }
}
