//! Resource limits: the one place that decides defaults, bounds and how partial
//! overrides combine.
//!
//! A request carries a [`LimitsSpec`] (every field optional). [`Limits::resolve`]
//! layers it over a base (the defaults, or a program's defaults) and checks every
//! value against a [`LimitsPolicy`], so an absurd request is rejected with an error
//! naming the field, the value and the allowed range, before anything is created.

use serde::{Deserialize, Serialize};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Fully resolved limits of one job. Every field is enforced, and every cut is
/// reported in the [`crate::JobResult`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock time from exec to exit; the whole sandbox is killed when it runs out.
    pub wall_time_ms: u64,
    /// CPU time (user + system) of all processes of the job together.
    pub cpu_time_ms: u64,
    /// CPU bandwidth in thousandths of a CPU (1000 = one full CPU).
    pub cpu_millis: u32,
    /// Memory (RSS + page cache + tmpfs pages written by the job), no swap.
    pub memory_bytes: u64,
    /// Processes and threads alive at once.
    pub pids: u32,
    /// Open file descriptors per process (RLIMIT_NOFILE).
    pub nofile: u32,
    /// Largest file a process may write (RLIMIT_FSIZE).
    pub file_size_bytes: u64,
    /// Size of the writable layer (a tmpfs) over the read-only image.
    pub tmpfs_bytes: u64,
    /// Inodes of the writable layer.
    pub tmpfs_inodes: u64,
    /// Bytes of stdout and of stderr each kept in the result; more is counted and dropped.
    pub output_bytes: u64,
    /// Bytes of declared output files collected in total.
    pub output_files_bytes: u64,
    /// Bytes of stdin and input files in total.
    pub input_bytes: u64,
}

impl Default for Limits {
    /// The documented defaults (README "Limits"): 1 CPU, 512 MiB, 10 s wall, 64 pids,
    /// 1 MiB per output stream.
    fn default() -> Self {
        Limits {
            wall_time_ms: 10_000,
            cpu_time_ms: 10_000,
            cpu_millis: 1000,
            memory_bytes: 512 * MIB,
            pids: 64,
            nofile: 1024,
            file_size_bytes: 64 * MIB,
            tmpfs_bytes: 256 * MIB,
            tmpfs_inodes: 16 * 1024,
            output_bytes: MIB,
            output_files_bytes: 16 * MIB,
            input_bytes: 16 * MIB,
        }
    }
}

/// A partial set of limits, as a request or a manifest states them.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nofile: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_inodes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_files_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_bytes: Option<u64>,
}

/// The smallest and largest value allowed for each limit. A server narrows these;
/// the CLI uses [`LimitsPolicy::for_host`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsPolicy {
    pub min: Limits,
    pub max: Limits,
}

impl LimitsPolicy {
    /// Bounds for a machine with `host_memory_bytes` of RAM and `host_cpus` CPUs.
    pub fn for_host(host_memory_bytes: u64, host_cpus: u32) -> Self {
        LimitsPolicy {
            min: Limits {
                wall_time_ms: 1,
                cpu_time_ms: 1,
                cpu_millis: 10,
                memory_bytes: 4 * MIB,
                pids: 1,
                nofile: 8,
                file_size_bytes: 0,
                tmpfs_bytes: 64 * KIB,
                tmpfs_inodes: 64,
                output_bytes: 0,
                output_files_bytes: 0,
                input_bytes: 0,
            },
            max: Limits {
                wall_time_ms: 24 * 3600 * 1000,
                cpu_time_ms: 24 * 3600 * 1000,
                cpu_millis: host_cpus.max(1).saturating_mul(1000),
                memory_bytes: host_memory_bytes.max(64 * MIB),
                pids: 32_768,
                nofile: 1 << 20,
                file_size_bytes: 1 << 40,
                tmpfs_bytes: host_memory_bytes.max(64 * MIB),
                tmpfs_inodes: 1 << 24,
                output_bytes: GIB,
                output_files_bytes: 4 * GIB,
                input_bytes: 4 * GIB,
            },
        }
    }
}

/// A limit value outside the allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limit {field} = {value} is out of range: allowed {min}..={max} ({unit})")]
pub struct LimitError {
    pub field: &'static str,
    pub value: u64,
    pub min: u64,
    pub max: u64,
    pub unit: &'static str,
}

macro_rules! for_each_limit {
    ($m:ident) => {
        $m!(wall_time_ms, "milliseconds");
        $m!(cpu_time_ms, "milliseconds");
        $m!(cpu_millis, "thousandths of a CPU");
        $m!(memory_bytes, "bytes");
        $m!(pids, "processes");
        $m!(nofile, "file descriptors");
        $m!(file_size_bytes, "bytes");
        $m!(tmpfs_bytes, "bytes");
        $m!(tmpfs_inodes, "inodes");
        $m!(output_bytes, "bytes");
        $m!(output_files_bytes, "bytes");
        $m!(input_bytes, "bytes");
    };
}

impl Limits {
    /// `base` overridden by every field `spec` sets, then checked against `policy`.
    pub fn resolve(
        base: &Limits,
        spec: &LimitsSpec,
        policy: &LimitsPolicy,
    ) -> Result<Limits, LimitError> {
        let mut out = *base;
        macro_rules! apply {
            ($f:ident, $unit:expr) => {
                if let Some(v) = spec.$f {
                    out.$f = v;
                }
            };
        }
        for_each_limit!(apply);
        out.check(policy)?;
        Ok(out)
    }

    /// Checks every field against the policy's bounds.
    pub fn check(&self, policy: &LimitsPolicy) -> Result<(), LimitError> {
        macro_rules! check {
            ($f:ident, $unit:expr) => {
                let (v, lo, hi) = (self.$f as u64, policy.min.$f as u64, policy.max.$f as u64);
                if v < lo || v > hi {
                    return Err(LimitError {
                        field: stringify!($f),
                        value: v,
                        min: lo,
                        max: hi,
                        unit: $unit,
                    });
                }
            };
        }
        for_each_limit!(check);
        Ok(())
    }

    /// Layers `spec` over `self` without checking (for combining manifest defaults
    /// before the request's own overrides are checked by [`Limits::resolve`]).
    pub fn overlay(&self, spec: &LimitsSpec) -> Limits {
        let mut out = *self;
        macro_rules! apply {
            ($f:ident, $unit:expr) => {
                if let Some(v) = spec.$f {
                    out.$f = v;
                }
            };
        }
        for_each_limit!(apply);
        out
    }
}

/// Which limit cut a job short, named as in [`crate::JobStatus`].
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    WallTime,
    CpuTime,
    Memory,
    Pids,
    FileSize,
    Output,
    OutputFiles,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LimitsPolicy {
        LimitsPolicy::for_host(8 * GIB, 2)
    }

    #[test]
    fn defaults_are_within_the_host_policy() {
        Limits::default().check(&policy()).unwrap();
    }

    #[test]
    fn resolve_overrides_only_given_fields() {
        let spec = LimitsSpec {
            memory_bytes: Some(64 * MIB),
            pids: Some(8),
            ..Default::default()
        };
        let l = Limits::resolve(&Limits::default(), &spec, &policy()).unwrap();
        assert_eq!(l.memory_bytes, 64 * MIB);
        assert_eq!(l.pids, 8);
        assert_eq!(l.wall_time_ms, Limits::default().wall_time_ms);
    }

    #[test]
    fn resolve_rejects_absurd_values_naming_the_field() {
        let spec = LimitsSpec {
            memory_bytes: Some(1 << 60),
            ..Default::default()
        };
        let err = Limits::resolve(&Limits::default(), &spec, &policy()).unwrap_err();
        assert_eq!(err.field, "memory_bytes");
        assert!(err.to_string().contains("out of range"), "{err}");

        let spec = LimitsSpec {
            pids: Some(0),
            ..Default::default()
        };
        assert_eq!(
            Limits::resolve(&Limits::default(), &spec, &policy())
                .unwrap_err()
                .field,
            "pids"
        );
    }

    #[test]
    fn spec_rejects_unknown_fields() {
        let err = serde_json::from_str::<LimitsSpec>(r#"{"memory": 5}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `memory`"), "{err}");
    }
}
