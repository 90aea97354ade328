//! Which user a job runs as: parsing `uid[:gid]` / `name[:group]` the way `docker run
//! --user` does, and resolving names against the image's /etc/passwd and /etc/group.
//!
//! Image files are untrusted: lines that do not parse are skipped, ids outside the
//! sandbox's mapped range are refused, and the number of supplementary groups is
//! capped.

use runbox_core::IdMap;

/// The default user when neither the request nor the image names one: an
/// unprivileged uid/gid inside the sandbox.
pub const DEFAULT_UID: u32 = 1000;
pub const DEFAULT_GID: u32 = 1000;

/// At most this many supplementary groups are applied.
pub const MAX_GROUPS: usize = 32;

/// A user or group, by number or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdOrName {
    Id(u32),
    Name(String),
}

/// A parsed `user[:group]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub user: IdOrName,
    pub group: Option<IdOrName>,
}

/// Errors parsing or resolving a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} is not valid: expected uid[:gid] or name[:group] (names: letters, digits, _ . -, at most 32)")]
    Syntax(String),
    #[error("id {0} is outside the sandbox's id range 0..{max}", max = IdMap::SIZE)]
    OutOfRange(u64),
    #[error("user {0:?} is not in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} is not in the image's /etc/group")]
    UnknownGroup(String),
}

impl UserSpec {
    pub fn parse(s: &str) -> Result<UserSpec, UserError> {
        let (u, g) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let part = |p: &str| -> Result<IdOrName, UserError> {
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                let n: u64 = p.parse().map_err(|_| UserError::OutOfRange(u64::MAX))?;
                if n >= u64::from(IdMap::SIZE) {
                    return Err(UserError::OutOfRange(n));
                }
                Ok(IdOrName::Id(n as u32))
            } else if valid_name(p) {
                Ok(IdOrName::Name(p.to_owned()))
            } else {
                Err(UserError::Syntax(s.to_owned()))
            }
        };
        Ok(UserSpec {
            user: part(u)?,
            group: g.map(part).transpose()?,
        })
    }
}

fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// The ids a job runs as, plus the home directory from /etc/passwd if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: Option<String>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some(GroupEntry {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3],
        })
    })
}

fn in_range(id: u32) -> Result<u32, UserError> {
    if id < IdMap::SIZE {
        Ok(id)
    } else {
        Err(UserError::OutOfRange(id.into()))
    }
}

/// Resolves `spec` (or the default user when `None`) against the image's passwd and
/// group files (empty strings when the image has none).
pub fn resolve(
    spec: Option<&UserSpec>,
    passwd: &str,
    group: &str,
) -> Result<ResolvedUser, UserError> {
    let (uid, mut gid, name, home) = match spec.map(|s| &s.user) {
        None => {
            let e = passwd_entries(passwd).find(|e| e.uid == DEFAULT_UID);
            (
                DEFAULT_UID,
                DEFAULT_GID,
                e.as_ref().map(|e| e.name.to_owned()),
                e.map(|e| e.home.to_owned()),
            )
        }
        Some(IdOrName::Id(uid)) => match passwd_entries(passwd).find(|e| e.uid == *uid) {
            Some(e) => (
                *uid,
                in_range(e.gid)?,
                Some(e.name.to_owned()),
                Some(e.home.to_owned()),
            ),
            // docker: an unknown uid runs with gid 0.
            None => (*uid, 0, None, None),
        },
        Some(IdOrName::Name(n)) => {
            let e = passwd_entries(passwd)
                .find(|e| e.name == n)
                .ok_or_else(|| UserError::UnknownUser(n.clone()))?;
            (
                in_range(e.uid)?,
                in_range(e.gid)?,
                Some(e.name.to_owned()),
                Some(e.home.to_owned()),
            )
        }
    };
    if let Some(g) = spec.and_then(|s| s.group.as_ref()) {
        gid = match g {
            IdOrName::Id(g) => *g,
            IdOrName::Name(n) => {
                let e = group_entries(group)
                    .find(|e| e.name == n)
                    .ok_or_else(|| UserError::UnknownGroup(n.clone()))?;
                in_range(e.gid)?
            }
        };
    }
    let mut groups = vec![gid];
    if let Some(name) = &name {
        for e in group_entries(group) {
            if groups.len() >= MAX_GROUPS {
                break;
            }
            if e.members.split(',').any(|m| m == name)
                && e.gid < IdMap::SIZE
                && !groups.contains(&e.gid)
            {
                groups.push(e.gid);
            }
        }
    }
    let home = home.filter(|h| h.starts_with('/') && !h.contains('\0'));
    Ok(ResolvedUser {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nrunner:x:1000:1000::/home/runner:/bin/sh\nbroken line\nbig:x:70000:70000::/:/bin/sh\npg:x:70:71::/var/lib/pg:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nrunner:x:1000:\naudio:x:29:runner,pg\npg:x:71:\nwheel:x:10:pg\n";

    #[test]
    fn parses_docker_user_syntax() {
        assert_eq!(UserSpec::parse("0").unwrap().user, IdOrName::Id(0));
        let s = UserSpec::parse("pg:wheel").unwrap();
        assert_eq!(s.user, IdOrName::Name("pg".into()));
        assert_eq!(s.group, Some(IdOrName::Name("wheel".into())));
        assert_eq!(UserSpec::parse("1:2").unwrap().group, Some(IdOrName::Id(2)));
    }

    #[test]
    fn rejects_hostile_user_strings() {
        for bad in [
            "",
            ":",
            "a b",
            "../etc",
            "-1",
            "root\n",
            "x:",
            "4294967296",
            &"a".repeat(40),
        ] {
            assert!(UserSpec::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            UserSpec::parse("65536").unwrap_err(),
            UserError::OutOfRange(65536)
        );
        assert_eq!(
            UserSpec::parse("99999999999999999999999").unwrap_err(),
            UserError::OutOfRange(u64::MAX)
        );
    }

    #[test]
    fn default_user_is_unprivileged_with_passwd_home() {
        let r = resolve(None, PASSWD, GROUP).unwrap();
        assert_eq!((r.uid, r.gid), (1000, 1000));
        assert_eq!(r.home.as_deref(), Some("/home/runner"));
        assert_eq!(r.groups, [1000, 29]);
        let r = resolve(None, "", "").unwrap();
        assert_eq!((r.uid, r.gid, r.home), (1000, 1000, None));
    }

    #[test]
    fn names_resolve_with_supplementary_groups() {
        let r = resolve(Some(&UserSpec::parse("pg").unwrap()), PASSWD, GROUP).unwrap();
        assert_eq!((r.uid, r.gid), (70, 71));
        assert_eq!(r.groups, [71, 29, 10]);
        let r = resolve(Some(&UserSpec::parse("pg:wheel").unwrap()), PASSWD, GROUP).unwrap();
        assert_eq!(r.gid, 10);
    }

    #[test]
    fn unknown_uid_runs_with_gid_0_like_docker() {
        let r = resolve(Some(&UserSpec::parse("4242").unwrap()), PASSWD, GROUP).unwrap();
        assert_eq!((r.uid, r.gid, r.home), (4242, 0, None));
    }

    #[test]
    fn out_of_range_ids_in_image_files_are_refused() {
        let e = resolve(Some(&UserSpec::parse("big").unwrap()), PASSWD, GROUP).unwrap_err();
        assert_eq!(e, UserError::OutOfRange(70000));
        assert_eq!(
            resolve(Some(&UserSpec::parse("nobody").unwrap()), PASSWD, GROUP).unwrap_err(),
            UserError::UnknownUser("nobody".into())
        );
    }
}
