//! Stable, machine-readable error codes shared by the CLI (`--json`), the script
//! driver and the HTTP API. Each layer keeps its own error enum with context; this is
//! the one vocabulary they all map to.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A malformed option, field or value in the request.
    InvalidArgument,
    /// A limit outside the allowed range.
    InvalidLimit,
    /// A host file named in the request could not be read.
    InputUnreadable,
    /// An input or output path that is not allowed (outside the sandbox, into /proc, ...).
    InvalidPath,
    /// No image with that name or digest is in the store.
    ImageNotFound,
    /// No program with that id is in the catalog.
    ProgramNotFound,
    /// The image file or layout is malformed, hostile, or fails verification.
    ImageInvalid,
    /// The image store is being changed by another process.
    StoreBusy,
    /// The command does not exist in the image.
    CommandNotFound,
    /// The command exists but cannot be executed.
    CommandNotExecutable,
    /// The sandbox could not be created (kernel feature missing, not root, ...).
    SandboxSetup,
    /// A host I/O error, or a registry that could not be reached or failed.
    Io,
    /// A registry refused the request for lack of (valid) credentials.
    RegistryAuth,
    /// An image build failed: its tool (mmdebstrap) is missing, failed (unknown
    /// package, mirror unreachable) or ran past a build limit.
    BuildFailed,
    /// A line of a `runbox script` file is malformed (bad JSON, unknown command,
    /// missing or mistyped field, unknown variable).
    ScriptInvalid,
    /// A script's `expect` (or `expect_error`) did not hold.
    ExpectationFailed,
    /// The HTTP API: an admin endpoint was called without a valid token.
    Unauthorized,
    /// The HTTP API: no such job or stored result.
    NotFound,
    /// The HTTP API: the program's image is still being built.
    ImageNotReady,
    /// The HTTP API: the request body is over the size limit.
    PayloadTooLarge,
    /// The HTTP API: the endpoint does not take this method.
    MethodNotAllowed,
    /// The HTTP API: the request did not arrive in time.
    RequestTimeout,
    /// The HTTP API: a body that is not JSON (or multipart where allowed).
    UnsupportedMediaType,
    /// The HTTP API: too many requests from this address; retry later.
    RateLimited,
    /// The HTTP API: the job queue is full; retry later.
    QueueFull,
    /// The job was cancelled (before it ran, or while it ran).
    Cancelled,
    /// Every worker given the job stopped renewing its lease before reporting,
    /// and it has no attempts left.
    WorkerLost,
    /// A worker acted on a job it no longer holds (its lease expired, or the job
    /// is another worker's).
    LeaseLost,
    /// A live sandbox has ended (deleted, expired, or its init was killed): create
    /// a new one.
    SandboxEnded,
    /// A system could not be provisioned (a lifecycle script failed or a dataset
    /// did not match its digest); the message has the script's output.
    ProvisionFailed,
    /// Too many live sandboxes; delete one or retry later.
    TooManySandboxes,
    /// The live sandbox has execs running (for an operation that needs it idle).
    SandboxBusy,
    /// A bug in runbox.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::InvalidLimit => "invalid_limit",
            ErrorCode::InputUnreadable => "input_unreadable",
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::ImageNotFound => "image_not_found",
            ErrorCode::ProgramNotFound => "program_not_found",
            ErrorCode::ImageInvalid => "image_invalid",
            ErrorCode::StoreBusy => "store_busy",
            ErrorCode::CommandNotFound => "command_not_found",
            ErrorCode::CommandNotExecutable => "command_not_executable",
            ErrorCode::SandboxSetup => "sandbox_setup",
            ErrorCode::Io => "io",
            ErrorCode::RegistryAuth => "registry_auth",
            ErrorCode::BuildFailed => "build_failed",
            ErrorCode::ScriptInvalid => "script_invalid",
            ErrorCode::ExpectationFailed => "expectation_failed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::ImageNotReady => "image_not_ready",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::WorkerLost => "worker_lost",
            ErrorCode::LeaseLost => "lease_lost",
            ErrorCode::SandboxEnded => "sandbox_ended",
            ErrorCode::ProvisionFailed => "provision_failed",
            ErrorCode::TooManySandboxes => "too_many_sandboxes",
            ErrorCode::SandboxBusy => "sandbox_busy",
            ErrorCode::Internal => "internal",
        }
    }

    /// The exit code `runbox` uses for this error. Codes 125-127 are reserved the way
    /// `docker run` reserves them, so they cannot be confused with a program's own
    /// exit codes: 126 command not executable, 127 command not found, 125 any other
    /// runbox error.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorCode::CommandNotFound => 127,
            ErrorCode::CommandNotExecutable => 126,
            _ => 125,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error object printed by `--json` and returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}
