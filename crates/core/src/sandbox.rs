//! Live sandboxes as front ends see them: what creates one, what an exec into one
//! asks for, and what is reported about one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Data, InputFile, JobSpec, LimitsSpec};

/// What a live sandbox starts from: exactly one of `image`, `program` or `snapshot`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// An image reference in the store.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// A catalog program (its image) or system (its warm snapshot, provisioned
    /// first if none matches its fingerprint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// A snapshot image made by `snapshot` (`runbox-snapshot/...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The whole sandbox's limits (memory, pids and CPU of what keeps running
    /// between execs; the writable layer's size). Execs have their own.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Seconds without an exec or file operation before the sandbox is deleted
    /// (default and maximum: the server's `--sandbox-idle-timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
}

/// One command run in a live sandbox, with its own limits and result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    /// The command (the image's Entrypoint is not prepended).
    pub argv: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<Data>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Processes the command leaves running (daemons) stay, under the sandbox's
    /// limits. Without it they are killed when the command ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_running: bool,
}

impl ExecSpec {
    /// The job spec this exec is planned as (against the sandbox's image).
    pub fn to_job_spec(&self, image: &str) -> JobSpec {
        JobSpec {
            image: image.to_owned(),
            argv: Some(self.argv.clone()),
            entrypoint: Some(Vec::new()),
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            stdin: self.stdin.clone(),
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
            limits: self.limits,
            ..Default::default()
        }
    }
}

/// What is known about a live sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SandboxInfo {
    pub id: String,
    /// The image it was made from (a name, or the snapshot's).
    pub image: String,
    pub image_digest: String,
    /// The system it is an instance of, when made from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub hostname: String,
    /// Unix seconds.
    pub created_at: u64,
    pub last_used_at: u64,
    /// When it is deleted unless used before (Unix seconds).
    pub expires_at: u64,
    pub execs: u64,
    /// Execs running now.
    pub running: u64,
    pub alive: bool,
    /// An instance of a system's warm pool: it answers that system's queries and
    /// takes no exec, file or delete request from clients of the HTTP API.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pooled: bool,
}
