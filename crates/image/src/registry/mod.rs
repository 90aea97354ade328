//! Talking to an OCI distribution registry for [`crate::Store::pull`], through the
//! `oci-client` crate (the registry protocol, the WWW-Authenticate challenge flow,
//! bearer tokens) on a small tokio runtime behind a synchronous API.
//!
//! The registry is untrusted like any other image source: what it sends is only
//! a stream of bytes that [`crate::blob::copy_verified`] checks against the
//! descriptor (size first, then sha256) before anything parses or decompresses
//! it. This module only fetches, and turns the client's errors into specific
//! [`ImageError`]s (unknown image, credentials, network).

use std::fmt;
use std::io::{self, Read};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::{Client, Reference, RegistryOperation};
use runbox_core::{Digest, ImageRef};

use crate::error::{ImageError, Result};

mod auth;

pub use auth::{auth_from_config_files, auth_from_docker_config, default_auth_files, RegistryAuth};

/// The registry Docker Hub names go to when a reference names no registry.
pub const DOCKER_HUB: &str = "docker.io";

/// Manifest media types a pull accepts (Docker schema 1 is not supported).
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// An image in a registry, normalized the way docker does: a reference without
/// a registry host means Docker Hub (`busybox` is `docker.io/library/busybox`),
/// and one without a tag or digest means the tag `latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    /// `host[:port]`, e.g. `docker.io` or `127.0.0.1:5000`.
    pub registry: String,
    /// The repository in the registry, e.g. `library/busybox`.
    pub repository: String,
    /// The tag; `None` only when a digest is given.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
    /// The name as given, without tag or digest: the pulled image's name.
    pub name: String,
}

impl RemoteRef {
    /// Parses `[host[:port]/]path[:tag][@sha256:...]`. A first path component
    /// is a registry host when it has a `.` or a `:` or is `localhost`.
    pub fn parse(reference: &str) -> Result<RemoteRef> {
        let r = ImageRef::parse(reference).map_err(|e| ImageError::InvalidName {
            name: reference.to_owned(),
            source: e,
        })?;
        let Some(name) = r.name else {
            return Err(ImageError::InvalidNameForm {
                name: reference.to_owned(),
                reason: "a pull needs a repository name, e.g. NAME:TAG or NAME@sha256:...",
            });
        };
        let (registry, mut repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.clone()),
        };
        let hub = matches!(
            registry.as_str(),
            "docker.io" | "index.docker.io" | "registry-1.docker.io"
        );
        if hub && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        let tag = match (&r.tag, &r.digest) {
            (None, None) => Some("latest".to_owned()),
            (t, _) => t.clone(),
        };
        Ok(RemoteRef {
            registry,
            repository,
            tag,
            digest: r.digest,
            name,
        })
    }

    /// `name:tag` as given (tag `latest` when none was given), or `None` for a
    /// reference by digest only: the name the pulled image gets.
    pub fn image_name(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name))
    }

    /// What `/v2/<repository>/manifests/<...>` asks for: the digest if given, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    fn to_oci(&self) -> Reference {
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => Reference::with_tag_and_digest(
                self.registry.clone(),
                self.repository.clone(),
                t.clone(),
                d.to_string(),
            ),
            (_, Some(d)) => Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.to_string(),
            ),
            (t, None) => Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                t.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }
}

impl fmt::Display for RemoteRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// A connection to one repository of a registry: the client, its runtime, and
/// the credentials it authenticated with.
pub(crate) struct RegistrySource {
    runtime: tokio::runtime::Runtime,
    client: Client,
    reference: Reference,
    remote: RemoteRef,
    auth: oci_client::secrets::RegistryAuth,
    has_credentials: bool,
    plain_http: bool,
    /// Largest manifest or index accepted.
    max_document: u64,
}

impl fmt::Debug for RegistrySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySource")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

/// How long to wait for a connection, and for the next bytes of a response.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(120);

impl RegistrySource {
    /// Builds the client and authenticates: anonymous, HTTP basic, or a bearer
    /// token from the registry's token service (the WWW-Authenticate challenge).
    pub(crate) fn connect(
        remote: &RemoteRef,
        auth: &RegistryAuth,
        plain_http: bool,
        max_document: u64,
    ) -> Result<RegistrySource> {
        // rustls needs a process-wide crypto provider; another part of the
        // process may have installed one already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("runbox-pull")
            .enable_all()
            .build()
            .map_err(|e| ImageError::Internal(format!("starting the pull runtime: {e}")))?;
        let config = ClientConfig {
            protocol: if plain_http {
                ClientProtocol::HttpsExcept(vec![remote.registry.clone()])
            } else {
                ClientProtocol::Https
            },
            // Index entries are chosen by runbox (like import does), not by the client.
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: concat!("runbox/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(|e| ImageError::Registry {
            registry: remote.registry.clone(),
            what: "setting up the HTTP client".into(),
            detail: error_chain(&e),
        })?;
        let source = RegistrySource {
            runtime,
            client,
            reference: remote.to_oci(),
            remote: remote.clone(),
            auth: auth.to_oci(),
            has_credentials: !matches!(auth, RegistryAuth::Anonymous),
            plain_http,
            max_document,
        };
        source
            .runtime
            .block_on(
                source
                    .client
                    .auth(&source.reference, &source.auth, RegistryOperation::Pull),
            )
            .map_err(|e| source.error("contacting it (GET /v2/, authentication)", e))?;
        Ok(source)
    }

    /// `registry/repository`, for messages.
    pub(crate) fn describe(&self) -> String {
        format!("{}/{}", self.remote.registry, self.remote.repository)
    }

    pub(crate) fn remote(&self) -> &RemoteRef {
        &self.remote
    }

    /// Fetches a manifest or index by tag or digest. The client verifies the body
    /// against the digest asked for and the registry's Docker-Content-Digest
    /// header; callers verify it again against their descriptor.
    ///
    /// The client reads the whole body before returning (oci-client has no size
    /// limit for manifests, upstream issue #206), so the document limit is
    /// enforced on what it returns.
    ///
    /// `digest` names a manifest an index lists; `None` is the reference pulled.
    pub(crate) fn fetch_manifest(&self, digest: Option<&Digest>, what: &str) -> Result<Vec<u8>> {
        let max = self.max_document;
        let (r, reference) = match digest {
            Some(d) => (
                self.reference.clone_with_digest(d.to_string()),
                d.to_string(),
            ),
            None => (self.reference.clone(), self.remote.manifest_reference()),
        };
        let (body, _) = self
            .runtime
            .block_on(
                self.client
                    .pull_manifest_raw(&r, &self.auth, MANIFEST_TYPES),
            )
            .map_err(|e| self.error(&format!("fetching the {what} {reference}"), e))?;
        if body.len() as u64 > max {
            return Err(ImageError::DocumentTooLarge {
                what: format!("{what} {reference} from {}", self.describe()),
                size: body.len() as u64,
                limit: max,
            });
        }
        Ok(body.to_vec())
    }

    /// Starts downloading a blob: a reader over its bytes and the length the
    /// registry announced (Content-Length), if any. The reader ends where the
    /// registry's stream ends; the caller bounds and verifies what it reads.
    pub(crate) fn open_blob(
        &self,
        digest: &Digest,
        what: &str,
    ) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
        let desc = OciDescriptor {
            digest: digest.to_string(),
            ..OciDescriptor::default()
        };
        let sized = self
            .runtime
            .block_on(self.client.pull_blob_stream(&self.reference, &desc))
            .map_err(|e| self.error(&format!("fetching the {what} {digest}"), e))?;
        let reader = BlobReader {
            handle: self.runtime.handle().clone(),
            stream: sized.stream,
            chunk: Bytes::new(),
            done: false,
            registry: self.describe(),
        };
        Ok((Box::new(reader), sized.content_length))
    }

    /// Turns a client error into a specific store error.
    pub(crate) fn error(&self, what: &str, e: OciDistributionError) -> ImageError {
        let registry = self.remote.registry.clone();
        let reference = self.remote.to_string();
        let auth_error = |problem: String| ImageError::RegistryAuth {
            registry: registry.clone(),
            reference: reference.clone(),
            problem,
            advice: if self.has_credentials {
                "check the user name and password (--username with --password-stdin, or the \
                 entry for this registry in REGISTRY_AUTH_FILE or ~/.docker/config.json)"
                    .into()
            } else {
                "give credentials with --username NAME --password-stdin, or put an entry for \
                 this registry in REGISTRY_AUTH_FILE or ~/.docker/config.json"
                    .into()
            },
        };
        let denied = if self.has_credentials {
            "refused the credentials given"
        } else {
            "requires credentials"
        };
        match e {
            OciDistributionError::UnauthorizedError { .. } => auth_error(denied.into()),
            OciDistributionError::AuthenticationFailure(reason) => auth_error(format!(
                "{denied}: its token service said {:?}",
                truncate(reason.trim(), 200)
            )),
            OciDistributionError::RegistryError { envelope, url } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let detail = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    auth_error(format!("{denied} ({detail})"))
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    ImageError::RemoteNotFound {
                        registry,
                        reference,
                        detail,
                    }
                } else if codes.contains(&&OciErrorCode::BlobUnknown) {
                    ImageError::MissingFile {
                        what: what.trim_start_matches("fetching the ").to_owned(),
                        file: format!("the registry has no such blob in {}", self.describe()),
                    }
                } else {
                    ImageError::Registry {
                        registry,
                        what: what.to_owned(),
                        detail: format!("{detail} ({url})"),
                    }
                }
            }
            OciDistributionError::ServerError { code, url, message } => match code {
                401 | 403 => auth_error(format!("{denied} (HTTP {code})")),
                404 => ImageError::RemoteNotFound {
                    registry,
                    reference,
                    detail: format!("HTTP 404 for {url}"),
                },
                _ => ImageError::Registry {
                    registry,
                    what: what.to_owned(),
                    detail: format!("HTTP {code} for {url}: {}", truncate(message.trim(), 200)),
                },
            },
            OciDistributionError::DigestError(DigestError::VerificationError {
                expected,
                actual,
            }) => match (expected.parse::<Digest>(), actual.parse::<Digest>()) {
                (Ok(digest), Ok(actual)) => ImageError::DigestMismatch {
                    what: what.trim_start_matches("fetching the ").to_owned(),
                    digest,
                    actual,
                },
                _ => ImageError::InvalidDocument {
                    what: what.trim_start_matches("fetching the ").to_owned(),
                    reason: format!("digest {expected} expected, {actual} found"),
                },
            },
            OciDistributionError::UnsupportedMediaTypeError(_)
            | OciDistributionError::UnsupportedSchemaVersionError(_)
            | OciDistributionError::VersionedParsingError(_)
            | OciDistributionError::ManifestParsingError(_)
            | OciDistributionError::ManifestEncodingError(_) => ImageError::InvalidDocument {
                what: format!(
                    "{} from {}",
                    what.trim_start_matches("fetching the "),
                    self.describe()
                ),
                reason: format!(
                    "{} (runbox pulls OCI and Docker schema 2 images)",
                    error_chain(&e)
                ),
            },
            e => {
                let mut detail = error_chain(&e);
                // rustls's words for an HTTP answer to a TLS handshake.
                if !self.plain_http && detail.contains("InvalidContentType") {
                    detail.push_str(
                        " (the registry does not speak HTTPS; for a plain-HTTP registry \
                         on loopback, use --plain-http)",
                    );
                }
                ImageError::Registry {
                    registry,
                    what: what.to_owned(),
                    detail,
                }
            }
        }
    }
}

/// A blocking reader over a blob's byte stream, for the layer worker threads
/// (plain threads: `Handle::block_on` drives the stream on the runtime).
struct BlobReader {
    handle: tokio::runtime::Handle,
    stream: BoxStream<'static, std::result::Result<Bytes, io::Error>>,
    chunk: Bytes,
    done: bool,
    registry: String,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            match self.handle.block_on(self.stream.next()) {
                Some(Ok(b)) => self.chunk = b,
                // The client checks the digest itself once the body has ended and
                // reports a mismatch instead of the end. Every byte has been
                // delivered by then: end here, so the store's own check names the
                // blob and the digest actually received.
                Some(Err(e)) if e.get_ref().is_some_and(|i| i.is::<DigestError>()) => {
                    self.done = true
                }
                Some(Err(e)) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("downloading from {}: {}", self.registry, error_chain(&e)),
                    ))
                }
                None => self.done = true,
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

/// An error and its sources, `a: b: c` (reqwest's own message leaves out the
/// cause, e.g. "connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    out
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> RemoteRef {
        RemoteRef::parse(s).unwrap()
    }

    #[test]
    fn references_without_a_host_mean_docker_hub_library() {
        let r = parse("busybox");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/busybox")
        );
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.image_name().as_deref(), Some("busybox:latest"));
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let r = parse("someone/tool:1.2");
        assert_eq!(r.repository, "someone/tool");
        assert_eq!(r.image_name().as_deref(), Some("someone/tool:1.2"));
        let r = parse("docker.io/busybox:1");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.image_name().as_deref(), Some("docker.io/busybox:1"));
    }

    #[test]
    fn references_with_a_host_keep_it_and_the_path() {
        let r = parse("127.0.0.1:5000/team/tool:v1");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/tool");
        assert_eq!(r.manifest_reference(), "v1");
        let r = parse("localhost/x");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost", "x")
        );
        let r = parse("registry.example/x:1");
        assert_eq!(r.registry, "registry.example");
    }

    #[test]
    fn references_by_digest_have_no_image_name_unless_tagged() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("127.0.0.1:5000/bb@{d}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.image_name(), None);
        assert_eq!(r.manifest_reference(), d);
        let r = parse(&format!("127.0.0.1:5000/bb:1@{d}"));
        assert_eq!(r.image_name().as_deref(), Some("127.0.0.1:5000/bb:1"));
        assert_eq!(r.manifest_reference(), d);
    }

    #[test]
    fn rejects_references_that_are_not_pullable() {
        assert!(matches!(
            RemoteRef::parse(&format!("sha256:{}", "a".repeat(64))),
            Err(ImageError::InvalidNameForm { .. })
        ));
        assert!(matches!(
            RemoteRef::parse("Upper/case"),
            Err(ImageError::InvalidName { .. })
        ));
        assert!(RemoteRef::parse("").is_err());
    }
}
