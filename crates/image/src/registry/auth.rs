//! Registry credentials: given directly, or read from a docker/podman auth file
//! (`REGISTRY_AUTH_FILE`, `$DOCKER_CONFIG/config.json`, `~/.docker/config.json`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{ImageError, Result};

/// Largest auth file read (they hold a few entries).
const MAX_AUTH_FILE: u64 = 1 << 20;

/// Credentials for a registry. With [`RegistryAuth::Basic`], a registry that
/// answers with a bearer challenge gets them at its token service; one that asks
/// for HTTP basic auth gets them with each request.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum RegistryAuth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

impl RegistryAuth {
    pub(crate) fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        match self {
            RegistryAuth::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            RegistryAuth::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Debug, Deserialize)]
struct AuthEntry {
    /// base64 of `user:password`.
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The host an `auths` key names: keys may be `host`, `https://host` or
/// `https://host/v1/` (Docker Hub's historical key).
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

fn same_registry(key: &str, registry: &str) -> bool {
    const HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    let host = key_host(key);
    host == registry || (HUB.contains(&host) && HUB.contains(&registry))
}

/// Reads the entry for `registry` (`host[:port]`) from a docker `config.json`
/// or podman `auth.json`. `Ok(None)` when the file or the entry is missing.
/// Credential helpers (`credsStore`, `credHelpers`) are not run.
pub fn auth_from_docker_config(path: &Path, registry: &str) -> Result<Option<RegistryAuth>> {
    let unreadable = |e| ImageError::InputUnreadable {
        path: path.to_owned(),
        source: e,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e)),
    };
    if meta.len() > MAX_AUTH_FILE {
        return Err(ImageError::DocumentTooLarge {
            what: format!("the registry auth file {}", path.display()),
            size: meta.len(),
            limit: MAX_AUTH_FILE,
        });
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    let invalid = |reason: String| ImageError::InvalidDocument {
        what: format!("the registry auth file {}", path.display()),
        reason,
    };
    let file: AuthFile = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    let mut keys: Vec<&String> = file.auths.keys().collect();
    keys.sort(); // deterministic when several keys name the same registry
    let Some(entry) = keys
        .into_iter()
        .find(|k| same_registry(k, registry))
        .map(|k| &file.auths[k])
    else {
        return Ok(None);
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| invalid(format!("the auth of {registry} is not base64: {e}")))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| invalid(format!("the auth of {registry} is not UTF-8")))?;
        let Some((username, password)) = decoded.split_once(':') else {
            return Err(invalid(format!(
                "the auth of {registry} is not user:password"
            )));
        };
        return Ok(Some(RegistryAuth::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Some(RegistryAuth::Basic {
            username: u.clone(),
            password: p.clone(),
        })),
        _ => Ok(None),
    }
}

/// The auth files consulted, in order: `$REGISTRY_AUTH_FILE`, then
/// `$DOCKER_CONFIG/config.json` or `$HOME/.docker/config.json`.
pub fn default_auth_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(d).join("config.json"));
    } else if let Some(h) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(h).join(".docker/config.json"));
    }
    out
}

/// The first entry for `registry` in [`default_auth_files`].
pub fn auth_from_config_files(registry: &str) -> Result<Option<RegistryAuth>> {
    for path in default_auth_files() {
        if let Some(a) = auth_from_docker_config(&path, registry)? {
            return Ok(Some(a));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, json: &str) -> PathBuf {
        let p = dir.join("config.json");
        std::fs::write(&p, json).unwrap();
        p
    }

    #[test]
    fn reads_basic_credentials_for_the_registry_from_an_auth_file() {
        let dir = tempfile::tempdir().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        let p = write(
            dir.path(),
            &format!(
                r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{b64}"}},
                    "https://index.docker.io/v1/": {{"username": "bob", "password": "pw"}}}}}}"#
            ),
        );
        assert_eq!(
            auth_from_docker_config(&p, "127.0.0.1:5000").unwrap(),
            Some(RegistryAuth::Basic {
                username: "alice".into(),
                password: "s3cr:et".into()
            })
        );
        assert_eq!(
            auth_from_docker_config(&p, "docker.io").unwrap(),
            Some(RegistryAuth::Basic {
                username: "bob".into(),
                password: "pw".into()
            })
        );
        assert_eq!(auth_from_docker_config(&p, "other:1").unwrap(), None);
        assert_eq!(
            auth_from_docker_config(&dir.path().join("missing.json"), "x").unwrap(),
            None
        );
    }

    #[test]
    fn rejects_a_malformed_auth_file_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), r#"{"auths": {"h:1": {"auth": "%%%"}}}"#);
        let e = auth_from_docker_config(&p, "h:1").unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
    }

    #[test]
    fn debug_output_hides_the_password() {
        let a = RegistryAuth::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{a:?}").contains("hunter2"));
    }
}
