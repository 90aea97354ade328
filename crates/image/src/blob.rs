//! Copying a blob out of an untrusted source while verifying it: the size must be
//! exactly the descriptor's (reading stops one byte past it) and the sha256 must
//! match, before anything else (decompression, parsing) looks at the content.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use runbox_core::Digest;
use sha2::{Digest as _, Sha256};

use crate::error::{ImageError, Result};
use crate::progress::ImportProgress;
use crate::source::{Links, Source};

/// What a blob must be.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect<'a> {
    /// For messages: "manifest", "config", "layer".
    pub what: &'a str,
    /// The descriptor's digest; `None` for docker-save files, whose digest is computed.
    pub digest: Option<&'a Digest>,
    /// The descriptor's size; `None` when there is no descriptor.
    pub size: Option<u64>,
    /// Refuse more bytes than this.
    pub max: u64,
}

/// A verified blob in the import's staging directory.
#[derive(Debug, Clone)]
pub(crate) struct StagedBlob {
    pub digest: Digest,
    pub size: u64,
    pub path: PathBuf,
}

const COPY_BUF: usize = 256 * 1024;

/// Copies source file `name` into `dest_dir/<hex>` verifying `expect`.
pub(crate) fn copy_verified(
    source: &Source,
    name: &str,
    links: Links,
    expect: Expect<'_>,
    dest_dir: &Path,
    progress: &dyn ImportProgress,
    cancel: &AtomicBool,
) -> Result<StagedBlob> {
    let what = expect.what;
    let file = source.open_file(name, what, links)?;
    let digest_label = || {
        expect
            .digest
            .map_or_else(|| name.to_owned(), |d| d.to_string())
    };
    // The source knows the size already: reject a mismatch without reading.
    if let (Some(size), Some(actual)) = (expect.size, file.size) {
        if actual != size {
            return Err(ImageError::SizeMismatch {
                what: what.to_owned(),
                digest: digest_label(),
                expected: size,
                actual: actual.to_string(),
            });
        }
    }
    if let Some(actual) = file.size.filter(|s| *s > expect.max) {
        return Err(ImageError::DocumentTooLarge {
            what: format!("{what} {}", digest_label()),
            size: actual,
            limit: expect.max,
        });
    }
    progress.blob_started(expect.digest, expect.size);
    let limit = expect.size.unwrap_or(expect.max);
    let tmp = dest_dir.join(crate::fsutil::unique_name("blob"));
    let mut out = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| ImageError::io("creating", &tmp, e))?;
    let result = (|| {
        let mut reader = file.reader.take(limit + 1);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; COPY_BUF];
        let mut total = 0u64;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(ImageError::Cancelled);
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(source.read_error(name, e)),
            };
            total += n as u64;
            if total > limit {
                return Err(match expect.size {
                    Some(size) => ImageError::SizeMismatch {
                        what: what.to_owned(),
                        digest: digest_label(),
                        expected: size,
                        actual: format!("more than {size}"),
                    },
                    None => ImageError::DocumentTooLarge {
                        what: format!("{what} {}", digest_label()),
                        size: total,
                        limit,
                    },
                });
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| ImageError::io("writing", &tmp, e))?;
            progress.blob_bytes(expect.digest, n as u64);
        }
        if let Some(size) = expect.size {
            if total != size {
                return Err(ImageError::SizeMismatch {
                    what: what.to_owned(),
                    digest: digest_label(),
                    expected: size,
                    actual: total.to_string(),
                });
            }
        }
        let actual = Digest::from_sha256_bytes(&hasher.finalize().into());
        if let Some(d) = expect.digest {
            if *d != actual {
                return Err(ImageError::DigestMismatch {
                    what: what.to_owned(),
                    digest: d.clone(),
                    actual,
                });
            }
        }
        let dest = dest_dir.join(actual.hex());
        std::fs::rename(&tmp, &dest).map_err(|e| ImageError::io("renaming", &dest, e))?;
        progress.blob_finished(&actual, total);
        Ok(StagedBlob {
            digest: actual,
            size: total,
            path: dest,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a staged (verified) small blob into memory.
pub(crate) fn read_staged(blob: &StagedBlob) -> Result<Vec<u8>> {
    std::fs::read(&blob.path).map_err(|e| ImageError::io("reading", &blob.path, e))
}
