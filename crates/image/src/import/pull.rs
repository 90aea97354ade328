//! [`Store::pull`]: an import whose source is a registry repository. The
//! registry is one more [`Source`]: manifests, config and layers go through the
//! same verification (descriptor size, then sha256, before anything is parsed
//! or decompressed), the same parallel layer jobs and the same commit as an
//! import, so a failed pull leaves the store as it was.

use std::net::IpAddr;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::plan::plan_registry;
use super::{cores, Ctx, Staging};
use crate::error::{ImageError, Result};
use crate::progress::ImportProgress;
use crate::record::ImageRecord;
use crate::registry::{RegistryAuth, RegistrySource, RemoteRef};
use crate::source::Source;
use crate::store::Store;

/// Layer downloads (each followed by its unpack) at once, at least: downloads
/// wait on the network more than on the CPU.
const MIN_DOWNLOAD_WORKERS: usize = 4;

/// Options for [`Store::pull`].
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Credentials; anonymous by default. A registry that asks for a bearer
    /// token gets one from its token service (with these credentials, if any).
    pub auth: RegistryAuth,
    /// Speak plain HTTP to the registry instead of HTTPS (for a test registry on
    /// loopback). Credentials are then only sent to loopback addresses.
    pub plain_http: bool,
}

/// What [`Store::pull`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullReport {
    /// The reference pulled, normalized: `docker.io/library/busybox:latest`.
    pub reference: String,
    pub image: ImageRecord,
    /// The image was already in the store (only names may have been added).
    pub already_present: bool,
    /// Layer blobs downloaded from the registry.
    pub layers_downloaded: usize,
    /// Layer blobs the store already held, so not downloaded.
    pub layers_present: usize,
    /// Layers unpacked by this pull (the others were already unpacked).
    pub layers_unpacked: usize,
    /// Bytes downloaded and verified: manifest, config and layer blobs.
    pub bytes_downloaded: u64,
}

impl Store {
    /// Pulls an image from an OCI distribution registry: `name[:tag]`,
    /// `name@sha256:...` or `host[:port]/path[:tag]`; a name without a registry
    /// host is on Docker Hub (`busybox` is `docker.io/library/busybox:latest`).
    /// An image index gives the manifest for this host's platform. Every blob is
    /// checked against its descriptor's size and digest before it is parsed or
    /// decompressed, layers the store holds are not downloaded, and the others
    /// are downloaded and unpacked in parallel.
    ///
    /// The image is named as given with its tag (`busybox:latest`,
    /// `127.0.0.1:5000/tools/x:1`): the registry host is not added to a name
    /// that has none, so `runbox run busybox` finds what `pull busybox` pulled.
    /// A pull by digest alone gives no name (the image is found by its digest,
    /// or by `name@sha256:...`). On any error the store is unchanged.
    pub fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: &dyn ImportProgress,
    ) -> Result<PullReport> {
        let remote = RemoteRef::parse(reference)?;
        if opts.plain_http
            && !matches!(opts.auth, RegistryAuth::Anonymous)
            && !is_loopback(&remote.registry)
        {
            return Err(ImageError::InvalidNameForm {
                name: reference.to_owned(),
                reason: "credentials are only sent over plain HTTP to a loopback registry \
                         (localhost, 127.0.0.0/8, ::1); use HTTPS",
            });
        }
        let registry = RegistrySource::connect(
            &remote,
            &opts.auth,
            opts.plain_http,
            self.limits.max_document_bytes,
        )?;
        // gc must not remove layers this pull decides to reuse.
        let _lease = self.lock_shared()?;
        let staging = Staging::new(self.tmp_dir())?;
        let source = Source::registry(registry);
        let ctx = Ctx {
            store: self,
            source: &source,
            staging: &staging,
            progress,
            cancel: AtomicBool::new(false),
            wanted: None,
            workers: cores().max(MIN_DOWNLOAD_WORKERS),
        };
        let plan = plan_registry(&ctx, &remote)?;
        let layers = plan.layers.len();
        let (report, downloaded) = self.import_plan(&ctx, plan)?;
        Ok(PullReport {
            reference: remote.to_string(),
            image: report.image,
            already_present: report.already_present,
            layers_downloaded: downloaded,
            layers_present: layers - downloaded,
            layers_unpacked: report.layers_unpacked,
            bytes_downloaded: report.bytes_read,
        })
    }
}

/// Whether `host[:port]` is a loopback name or address.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_registries_count_as_loopback() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("127.1.2.3"));
        assert!(is_loopback("localhost:80"));
        assert!(!is_loopback("10.0.0.1:5000"));
        assert!(!is_loopback("registry.example"));
        assert!(!is_loopback("localhost.evil.example:5000"));
    }
}
