//! Layer jobs: copy and verify each layer blob, unpack the layers the store does
//! not have yet, in parallel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use runbox_core::Digest;

use super::{Ctx, LayerDone, LayerPlan};
use crate::blob::{copy_verified, Expect};
use crate::error::{ImageError, Result};
use crate::fsutil;
use crate::unpack::{sniff_compression, unpack_layer, Compression, LayerJob};

/// Copies and verifies layer blobs and unpacks the layers not yet in the store,
/// in parallel (`ctx.workers` at a time).
pub(super) fn run_layer_jobs(ctx: &Ctx<'_>, layers: &[LayerPlan]) -> Result<Vec<LayerDone>> {
    // The first layer with a given diff_id unpacks it; later ones share it.
    let mut first_of: HashMap<&Digest, usize> = HashMap::new();
    for (i, l) in layers.iter().enumerate() {
        first_of.entry(&l.diff_id).or_insert(i);
    }
    let results: Vec<Mutex<Option<LayerDone>>> = layers.iter().map(|_| Mutex::new(None)).collect();
    let first_error: Mutex<Option<ImageError>> = Mutex::new(None);
    let next = AtomicUsize::new(0);
    let workers = ctx.workers.min(layers.len()).max(1);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= layers.len() || ctx.cancel.load(Ordering::Relaxed) {
                    break;
                }
                let unpack = first_of[&layers[i].diff_id] == i;
                match layer_job(ctx, &layers[i], unpack) {
                    Ok(done) => *results[i].lock().expect("poisoned") = Some(done),
                    Err(e) => {
                        ctx.cancel.store(true, Ordering::Relaxed);
                        let mut slot = first_error.lock().expect("poisoned");
                        // The first real error wins over the cancellations it caused.
                        if slot.is_none() || matches!(*slot, Some(ImageError::Cancelled)) {
                            *slot = Some(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("poisoned") {
        return Err(e);
    }
    let mut out: Vec<LayerDone> = results
        .into_iter()
        .map(|m| m.into_inner().expect("poisoned").expect("every job ran"))
        .collect();
    // Duplicates of an unpacked diff_id report it as reused.
    for (i, l) in layers.iter().enumerate() {
        if first_of[&l.diff_id] != i {
            out[i].unpacked = None;
        }
    }
    Ok(out)
}

fn layer_job(ctx: &Ctx<'_>, plan: &LayerPlan, unpack: bool) -> Result<LayerDone> {
    let store = ctx.store;
    let limits = &store.limits;
    // A blob the store already has was verified when it came in.
    let (blob_digest, blob_size, blob_path, copied) = match &plan.digest {
        Some(d) if store.blob_path(d).is_file() && plan.size.is_some() => {
            let path = store.blob_path(d);
            let size = std::fs::metadata(&path)
                .map_err(|e| ImageError::io("reading", &path, e))?
                .len();
            if Some(size) != plan.size {
                return Err(ImageError::SizeMismatch {
                    what: "layer".into(),
                    digest: d.to_string(),
                    expected: plan.size.unwrap_or(0),
                    actual: size.to_string(),
                });
            }
            ctx.progress.blob_present(d, size);
            (d.clone(), size, path, false)
        }
        _ => {
            let b = copy_verified(
                ctx.source,
                &plan.file,
                plan.links,
                Expect {
                    what: "layer",
                    digest: plan.digest.as_ref(),
                    size: plan.size,
                    max: limits.max_layer_bytes,
                },
                &ctx.staging.blobs(),
                ctx.progress,
                &ctx.cancel,
            )?;
            (b.digest, b.size, b.path, true)
        }
    };
    let media_type = match &plan.media_type {
        Some(m) => m.clone(),
        None => {
            // docker-save layers carry no media type: name what the bytes are.
            let mut head = [0u8; 4];
            let n = std::fs::File::open(&blob_path)
                .and_then(|f| std::os::unix::fs::FileExt::read_at(&f, &mut head, 0))
                .map_err(|e| ImageError::io("reading", &blob_path, e))?;
            match sniff_compression(&head[..n]) {
                Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::None => "application/vnd.oci.image.layer.v1.tar",
            }
            .to_owned()
        }
    };
    if !unpack || store.layer_complete(&plan.diff_id) {
        ctx.progress.layer_reused(&plan.diff_id);
        return Ok(LayerDone {
            blob_digest,
            blob_size,
            media_type,
            unpacked: None,
            copied,
        });
    }
    let dest = ctx.staging.layers().join(plan.diff_id.hex());
    std::fs::create_dir(&dest).map_err(|e| ImageError::io("creating", &dest, e))?;
    ctx.progress.layer_unpack_started(&plan.diff_id);
    let job = LayerJob {
        blob_path: &blob_path,
        blob_digest: &blob_digest,
        diff_id: &plan.diff_id,
        dest: &dest,
        id_map: store.id_map(),
        limits,
        cancel: &ctx.cancel,
    };
    let result = unpack_layer(&job);
    match result {
        Ok(u) => {
            ctx.progress
                .layer_unpack_finished(&plan.diff_id, u.bytes, u.entries);
            Ok(LayerDone {
                blob_digest,
                blob_size,
                media_type,
                unpacked: Some((u.bytes, u.entries)),
                copied,
            })
        }
        Err(e) => {
            // Free the space now; the staging directory goes anyway.
            let _ = fsutil::remove_tree(&dest);
            Err(e)
        }
    }
}
