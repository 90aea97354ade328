//! Image references: `name[:tag]`, `name[:tag]@sha256:...`, or `sha256:...`.
//!
//! Names follow the OCI distribution grammar (lowercase path components separated
//! by `/`, an optional `host[:port]/` in front); tags are `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.

use std::fmt;

use crate::digest::Digest;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Repository name, e.g. `busybox` or `localhost:5000/team/tool`. `None` for a bare digest.
    pub name: Option<String>,
    /// Tag; `None` means `latest` when a name is given without a digest.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("image reference {0:?} is longer than 255 characters")]
    TooLong(String),
    #[error("image name {name:?} is invalid: {why}")]
    Name { name: String, why: &'static str },
    #[error("image tag {tag:?} is invalid: tags are 1-128 characters of [A-Za-z0-9_.-] and do not start with '.' or '-'")]
    Tag { tag: String },
    #[error(transparent)]
    Digest(#[from] crate::digest::DigestError),
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.len() > 255 {
            return Err(ReferenceError::TooLong(s.to_owned()));
        }
        if s.starts_with("sha256:") {
            return Ok(ImageRef {
                name: None,
                tag: None,
                digest: Some(s.parse()?),
            });
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (rest, Some(d.parse::<Digest>()?)),
            None => (s, None),
        };
        // A ':' after the last '/' starts the tag; one before it belongs to host:port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        validate_name(name)?;
        if let Some(tag) = tag {
            validate_tag(tag)?;
        }
        Ok(ImageRef {
            name: Some(name.to_owned()),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// `name:tag`, with `latest` for a missing tag; `None` for a bare digest.
    pub fn name_with_tag(&self) -> Option<String> {
        self.name
            .as_ref()
            .map(|n| format!("{n}:{}", self.tag.as_deref().unwrap_or("latest")))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = &self.name {
            f.write_str(n)?;
            if let Some(t) = &self.tag {
                write!(f, ":{t}")?;
            }
            if self.digest.is_some() {
                f.write_str("@")?;
            }
        }
        if let Some(d) = &self.digest {
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

fn validate_name(name: &str) -> Result<(), ReferenceError> {
    let err = |why| {
        Err(ReferenceError::Name {
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() {
        return err("it is empty");
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // The first component is a registry host when it has a '.' or ':' or is localhost.
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            let (host, port) = match first.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (first, None),
            };
            let host_ok = !host.is_empty()
                && host.split('.').all(|l| {
                    !l.is_empty()
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                });
            if !host_ok {
                return err("the registry host is not a valid host name");
            }
            if let Some(p) = port {
                if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return err("the registry port is not a number");
                }
            }
            parts.remove(0);
        }
    }
    for part in parts {
        if part.is_empty() {
            return err("it has an empty path component");
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return err("path components may only hold lowercase letters, digits and . _ -");
        }
        let first = part.as_bytes()[0];
        let last = part.as_bytes()[part.len() - 1];
        if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
            return err("path components must start and end with a letter or digit");
        }
        if part.contains("..") || part.contains("___") {
            return err("path components may not contain '..' or '___'");
        }
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<(), ReferenceError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !tag.starts_with('.')
        && !tag.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::Tag {
            tag: tag.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.name_with_tag().unwrap(), "busybox:latest");
        let r = ImageRef::parse("localhost:5000/team/tool:v1.2").unwrap();
        assert_eq!(r.name.as_deref(), Some("localhost:5000/team/tool"));
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        let d = format!("sha256:{}", "0".repeat(64));
        let r = ImageRef::parse(&format!("x/y@{d}")).unwrap();
        assert_eq!(r.digest.unwrap().to_string(), d);
        assert!(ImageRef::parse(&d).unwrap().name.is_none());
    }

    #[test]
    fn rejects_hostile_names() {
        for bad in [
            "", "../etc", "a//b", "UPPER", "a:", "a:-x", "-a", "a/..", "a b", "a\nb",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(matches!(
            ImageRef::parse(&"a".repeat(300)),
            Err(ReferenceError::TooLong(_))
        ));
    }

    #[test]
    fn display_round_trips() {
        for s in ["busybox:1.36", "reg.example:443/a/b:t", "a/b"] {
            assert_eq!(ImageRef::parse(s).unwrap().to_string(), s);
        }
    }
}
