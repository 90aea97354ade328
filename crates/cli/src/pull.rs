//! `runbox image pull` (credentials, a progress bar per layer download) and
//! `runbox image df`.

use std::collections::HashMap;
use std::io::{IsTerminal, Read};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use runbox_core::{Digest, ErrorCode};
use runbox_image::registry::auth_from_config_files;
use runbox_image::{ImportProgress, PullOptions, RegistryAuth, RemoteRef, Store};

use crate::cli::PullArgs;
use crate::error::CliError;
use crate::units::human_bytes;
use crate::{print_json, Exit};

/// Longest password read from stdin.
const MAX_PASSWORD: u64 = 64 * 1024;

pub fn run(store: &Store, args: PullArgs) -> anyhow::Result<Exit> {
    let remote = RemoteRef::parse(&args.reference)?;
    let auth = match &args.username {
        Some(username) => RegistryAuth::Basic {
            username: username.clone(),
            password: read_password()?,
        },
        None => auth_from_config_files(&remote.registry)
            .context("reading registry credentials")?
            .unwrap_or_default(),
    };
    let opts = PullOptions {
        auth,
        plain_http: args.plain_http,
    };
    let started = Instant::now();
    let bar = PullBar::new(!args.json);
    let result = store.pull(&args.reference, &opts, &bar);
    bar.finish();
    let report = result.with_context(|| format!("pulling {remote}"))?;
    if args.json {
        print_json(&report)?;
        return Ok(Exit::Ok);
    }
    let img = &report.image;
    let name = img.display_name();
    let secs = started.elapsed().as_secs_f64();
    if report.already_present {
        println!(
            "{name}: up to date ({}, {})",
            img.short_id(),
            report.reference
        );
    } else {
        println!(
            "{name}: pulled {} from {} ({} layers: {} downloaded, {} already present; {} in {secs:.1} s)",
            img.short_id(),
            report.reference,
            img.layers.len(),
            report.layers_downloaded,
            report.layers_present,
            human_bytes(report.bytes_downloaded),
        );
    }
    Ok(Exit::Ok)
}

/// The password from stdin: all of it, without the final line break.
fn read_password() -> anyhow::Result<String> {
    let mut buf = String::new();
    std::io::stdin()
        .take(MAX_PASSWORD + 1)
        .read_to_string(&mut buf)
        .context("reading the password from stdin")?;
    if buf.len() as u64 > MAX_PASSWORD {
        return Err(CliError::new(
            ErrorCode::InvalidArgument,
            "the password on stdin is longer than 64 KiB",
        )
        .into());
    }
    let password = buf
        .strip_suffix('\n')
        .map(|p| p.strip_suffix('\r').unwrap_or(p))
        .unwrap_or(&buf);
    if password.is_empty() {
        return Err(CliError::new(
            ErrorCode::InvalidArgument,
            "--password-stdin: stdin is empty; pipe the password in, e.g. `printf %s \"$PASS\" | runbox image pull --username NAME --password-stdin REF`",
        )
        .into());
    }
    Ok(password.to_owned())
}

pub fn df(store: &Store, json: bool) -> anyhow::Result<Exit> {
    let du = store.disk_usage()?;
    if json {
        print_json(&du)?;
    } else {
        println!("{:<12} {:>8} {:>12}", "", "COUNT", "SIZE");
        println!("{:<12} {:>8} {:>12}", "images", du.images, "");
        println!(
            "{:<12} {:>8} {:>12}",
            "layers",
            du.layers,
            human_bytes(du.layers_bytes)
        );
        println!(
            "{:<12} {:>8} {:>12}",
            "blobs",
            du.blobs,
            human_bytes(du.blobs_bytes)
        );
        println!(
            "{:<12} {:>8} {:>12}  (`runbox image gc` frees it)",
            "reclaimable",
            "",
            human_bytes(du.reclaimable_bytes)
        );
    }
    Ok(Exit::Ok)
}

/// An [`ImportProgress`] for pulls: one bar per blob being downloaded, a line
/// per layer already present or unpacked. Drawn on stderr when it is a terminal.
#[derive(Debug)]
struct PullBar {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
    enabled: bool,
}

impl PullBar {
    fn new(enabled: bool) -> PullBar {
        let enabled = enabled && std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        PullBar {
            multi,
            bars: Mutex::new(HashMap::new()),
            enabled,
        }
    }

    fn println(&self, line: String) {
        if self.enabled {
            let _ = self.multi.println(line);
        }
    }

    fn finish(&self) {
        for (_, b) in self.bars.lock().expect("poisoned").drain() {
            b.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

impl ImportProgress for PullBar {
    fn blob_started(&self, digest: Option<&Digest>, size: Option<u64>) {
        let (Some(digest), true) = (digest, self.enabled) else {
            return;
        };
        let bar = self.multi.add(match size {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        });
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_prefix(digest.short().to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        self.bars
            .lock()
            .expect("poisoned")
            .insert(digest.clone(), bar);
    }

    fn blob_bytes(&self, digest: Option<&Digest>, n: u64) {
        if let Some(b) = digest.and_then(|d| self.bars.lock().expect("poisoned").get(d).cloned()) {
            b.inc(n);
        }
    }

    fn blob_finished(&self, digest: &Digest, size: u64) {
        if let Some(b) = self.bars.lock().expect("poisoned").remove(digest) {
            b.finish_and_clear();
            self.multi.remove(&b);
            if size > 64 * 1024 {
                self.println(format!(
                    "  {} downloaded: {}",
                    digest.short(),
                    human_bytes(size)
                ));
            }
        }
    }

    fn blob_present(&self, digest: &Digest, _size: u64) {
        self.println(format!("  {} already present", digest.short()));
    }

    fn layer_unpack_finished(&self, diff_id: &Digest, bytes: u64, entries: u64) {
        self.println(format!(
            "  layer {} unpacked: {} in {entries} entries",
            diff_id.short(),
            human_bytes(bytes)
        ));
    }
}
