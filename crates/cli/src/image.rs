//! `runbox image ...`: import, pull, list, remove, gc, df.

use std::path::Path;

use anyhow::Context;
use runbox_image::{ImportOptions, Store};

use crate::cli::ImageCommand;
use crate::progress::ImportBar;
use crate::units::human_bytes;
use crate::{print_json, Exit};

pub fn run(store: &Store, cmd: ImageCommand) -> anyhow::Result<Exit> {
    match cmd {
        ImageCommand::Import { path, name, json } => import(store, &path, name, json),
        ImageCommand::Ls { json } => {
            let images = store.list()?;
            if json {
                print_json(&images)?;
            } else {
                println!(
                    "{:<40} {:<14} {:>10} {:>6}  PLATFORM",
                    "NAME", "IMAGE ID", "SIZE", "LAYERS"
                );
                for img in &images {
                    let names = if img.names.is_empty() {
                        vec!["<none>".to_string()]
                    } else {
                        img.names.clone()
                    };
                    for n in names {
                        println!(
                            "{n:<40} {:<14} {:>10} {:>6}  {}",
                            img.short_id(),
                            human_bytes(img.size_bytes),
                            img.layers.len(),
                            img.platform
                        );
                    }
                }
            }
            Ok(Exit::Ok)
        }
        ImageCommand::Rm { images, json } => {
            let mut reports = Vec::new();
            for i in &images {
                let r = store.remove(i).with_context(|| format!("removing {i}"))?;
                if !json {
                    if !r.untagged.is_empty() {
                        println!("untagged: {}", r.untagged.join(", "));
                    }
                    if let Some(rec) = &r.removed {
                        println!("deleted: {}", rec.manifest_digest);
                    }
                    if let Some(gc) = &r.gc {
                        println!(
                            "freed {} ({} layers, {} blobs)",
                            human_bytes(gc.bytes_freed),
                            gc.layers_removed,
                            gc.blobs_removed
                        );
                    }
                    if r.gc_deferred {
                        println!("the store is in use: unused layers are freed by the next `runbox image gc`");
                    }
                }
                reports.push(r);
            }
            if json {
                print_json(&reports)?;
            }
            Ok(Exit::Ok)
        }
        ImageCommand::Pull(args) => crate::pull::run(store, args),
        ImageCommand::Build(args) => crate::build::run(store, args),
        ImageCommand::Df { json } => crate::pull::df(store, json),
        ImageCommand::Gc { json } => {
            let r = store.gc()?;
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "freed {} ({} layers, {} blobs)",
                    human_bytes(r.bytes_freed),
                    r.layers_removed,
                    r.blobs_removed
                );
            }
            Ok(Exit::Ok)
        }
    }
}

fn import(store: &Store, path: &Path, name: Option<String>, json: bool) -> anyhow::Result<Exit> {
    let bar = ImportBar::new(!json);
    let result = store.import(path, &ImportOptions { name }, &bar);
    bar.finish();
    let report = result.with_context(|| format!("importing {}", path.display()))?;
    if json {
        print_json(&report)?;
    } else {
        let img = &report.image;
        let name = img.display_name();
        if report.already_present {
            println!("{name}: already present ({})", img.short_id());
        } else {
            println!(
                "{name}: imported {} ({} layers: {} unpacked, {} reused; {})",
                img.short_id(),
                img.layers.len(),
                report.layers_unpacked,
                report.layers_reused,
                human_bytes(img.size_bytes)
            );
        }
    }
    Ok(Exit::Ok)
}
