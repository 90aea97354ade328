//! What a job asks for ([`JobSpec`]) and what it gets back ([`JobResult`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::data::{to_base64, Data};
use crate::limits::{LimitKind, Limits, LimitsSpec};

/// One request: which image or catalog program, which command, which inputs,
/// which limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Image reference: `name[:tag]`, `name@sha256:...`, `sha256:...` or a digest prefix.
    /// Give this or `program`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// A catalog program id: its manifest supplies the image, the command line, the
    /// default inputs and limits. Give this or `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// Values for the program's options form, by option name (validated against it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Replaces the image's Cmd (the image's Entrypoint, if any, is kept in front).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Replaces the image's Entrypoint (an empty list clears it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Added to (and overriding) the image's Env. The host environment is never passed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox (absolute). Default: the image's, else `/work`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// `uid[:gid]` or a user name from the image. Default: the image's User, else 1000:1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<Data>,
    /// Files placed before the program starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputFile>,
    /// Paths collected after the program ends (relative ones are under the working dir).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    #[serde(default)]
    pub limits: LimitsSpec,
    #[serde(default)]
    pub network: NetworkPolicy,
}

/// A file placed in the sandbox before the program starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// Path inside the sandbox; relative paths are under the working directory.
    pub path: String,
    pub content: Data,
    /// Mode 0755 instead of 0644.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
}

/// Network access of a job. Only an own loopback exists today: no route leaves the
/// sandbox, and the host's loopback services are unreachable.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NetworkPolicy {
    #[default]
    Loopback,
}

/// How a job ended. Each limit has its own value, distinct from a non-zero exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Exited with code 0.
    Ok,
    /// Exited with a non-zero code.
    ExitNonzero,
    /// Killed by a signal that no limit explains.
    Signaled,
    WallTimeLimit,
    CpuTimeLimit,
    MemoryLimit,
    PidsLimit,
    FileSizeLimit,
    /// Stopped on request (e.g. `runbox run` got Ctrl+C) before it ended by itself.
    /// A job cancelled before its program started has no exit code and no signal.
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Ok => "ok",
            JobStatus::ExitNonzero => "exit_nonzero",
            JobStatus::Signaled => "signaled",
            JobStatus::WallTimeLimit => "wall_time_limit",
            JobStatus::CpuTimeLimit => "cpu_time_limit",
            JobStatus::MemoryLimit => "memory_limit",
            JobStatus::PidsLimit => "pids_limit",
            JobStatus::FileSizeLimit => "file_size_limit",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// The limit this status names, if any.
    pub fn limit(self) -> Option<LimitKind> {
        match self {
            JobStatus::WallTimeLimit => Some(LimitKind::WallTime),
            JobStatus::CpuTimeLimit => Some(LimitKind::CpuTime),
            JobStatus::MemoryLimit => Some(LimitKind::Memory),
            JobStatus::PidsLimit => Some(LimitKind::Pids),
            JobStatus::FileSizeLimit => Some(LimitKind::FileSize),
            _ => None,
        }
    }
}

/// The outcome of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobResult {
    pub job_id: String,
    pub status: JobStatus,
    /// Exit code when the program exited; `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// Signal number when a signal ended the program.
    pub signal: Option<i32>,
    /// e.g. `SIGKILL`.
    pub signal_name: Option<String>,
    /// Captured stdout (at most `limits.output_bytes`), lossily decoded as UTF-8.
    pub stdout: String,
    /// The exact captured bytes, present only when they are not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_base64: Option<String>,
    /// Total bytes the program wrote to stdout, including those dropped.
    pub stdout_bytes: u64,
    pub stdout_truncated: bool,
    pub stderr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_base64: Option<String>,
    pub stderr_bytes: u64,
    pub stderr_truncated: bool,
    /// Declared output files, in the order they were requested.
    pub outputs: Vec<OutputFile>,
    /// Every limit the job ran into, whether or not it ended the job.
    pub limits_hit: Vec<LimitKind>,
    pub timings: Timings,
    pub usage: Usage,
    /// The limits the job ran under.
    pub limits: Limits,
}

impl JobResult {
    /// Fills `stdout` / `stdout_base64` from captured bytes.
    pub fn set_stdout(&mut self, bytes: &[u8]) {
        (self.stdout, self.stdout_base64) = text_or_base64(bytes);
    }
    pub fn set_stderr(&mut self, bytes: &[u8]) {
        (self.stderr, self.stderr_base64) = text_or_base64(bytes);
    }
}

fn text_or_base64(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), None),
        Err(_) => (
            String::from_utf8_lossy(bytes).into_owned(),
            Some(to_base64(bytes)),
        ),
    }
}

/// One collected output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutputFile {
    /// The path as requested.
    pub path: String,
    /// Size of the file in the sandbox.
    pub size: u64,
    /// Fewer bytes than `size` were collected (the output-files limit was reached).
    pub truncated: bool,
    /// The collected bytes (omitted when they were written to a host directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Data>,
    /// Where the CLI wrote the file on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_to: Option<String>,
    /// Why the file was not collected: missing, not a regular file, a symlink, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Time spent in each phase, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timings {
    /// From accepting the job to the program's exec (cgroup, namespaces, mounts, inputs).
    pub setup_ms: f64,
    /// From exec to the exit of the last process.
    pub run_ms: f64,
    /// Collecting outputs, reading usage, removing the sandbox.
    pub teardown_ms: f64,
    pub total_ms: f64,
}

/// Resources the job used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub cpu_time_ms: f64,
    pub cpu_user_ms: f64,
    pub cpu_system_ms: f64,
    pub peak_memory_bytes: u64,
}

/// The conventional name of a Linux signal number (`SIGKILL` for 9).
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        16 => "SIGSTKFLT",
        17 => "SIGCHLD",
        18 => "SIGCONT",
        19 => "SIGSTOP",
        20 => "SIGTSTP",
        21 => "SIGTTIN",
        22 => "SIGTTOU",
        23 => "SIGURG",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        26 => "SIGVTALRM",
        27 => "SIGPROF",
        28 => "SIGWINCH",
        29 => "SIGIO",
        30 => "SIGPWR",
        31 => "SIGSYS",
        n => return format!("SIG{n}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_spec_minimal_json_parses_with_defaults() {
        let spec: JobSpec = serde_json::from_str(r#"{"image":"busybox"}"#).unwrap();
        assert_eq!(spec.image, "busybox");
        assert!(spec.argv.is_none() && spec.inputs.is_empty());
        assert_eq!(spec.network, NetworkPolicy::Loopback);
    }

    #[test]
    fn job_spec_rejects_unknown_fields() {
        let e = serde_json::from_str::<JobSpec>(r#"{"image":"x","argz":[]}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `argz`"), "{e}");
    }

    #[test]
    fn input_file_content_forms() {
        let f: InputFile =
            serde_json::from_str(r#"{"path":"a.sh","content":"echo hi","executable":true}"#)
                .unwrap();
        assert_eq!(f.content.0, b"echo hi");
        assert!(f.executable);
    }

    #[test]
    fn statuses_serialize_as_snake_case() {
        assert_eq!(
            serde_json::to_string(&JobStatus::WallTimeLimit).unwrap(),
            r#""wall_time_limit""#
        );
        assert_eq!(JobStatus::PidsLimit.as_str(), "pids_limit");
        assert_eq!(JobStatus::MemoryLimit.limit(), Some(LimitKind::Memory));
        assert_eq!(
            serde_json::to_string(&JobStatus::Cancelled).unwrap(),
            format!("\"{}\"", JobStatus::Cancelled.as_str())
        );
        assert_eq!(JobStatus::Cancelled.as_str(), "cancelled");
        assert_eq!(
            JobStatus::Cancelled.limit(),
            None,
            "cancelling is not a limit"
        );
    }

    #[test]
    fn binary_stdout_keeps_exact_bytes() {
        let mut r = JobResult {
            job_id: "j".into(),
            status: JobStatus::Ok,
            exit_code: Some(0),
            signal: None,
            signal_name: None,
            stdout: String::new(),
            stdout_base64: None,
            stdout_bytes: 0,
            stdout_truncated: false,
            stderr: String::new(),
            stderr_base64: None,
            stderr_bytes: 0,
            stderr_truncated: false,
            outputs: vec![],
            limits_hit: vec![],
            timings: Timings::default(),
            usage: Usage::default(),
            limits: Limits::default(),
        };
        r.set_stdout(&[0xff, b'a']);
        assert_eq!(r.stdout, "\u{fffd}a");
        assert_eq!(r.stdout_base64.as_deref(), Some("/2E="));
        r.set_stdout(b"ok");
        assert!(r.stdout_base64.is_none());
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(25), "SIGXFSZ");
        assert_eq!(signal_name(40), "SIG40");
    }
}
