//! Turning any error into a stable code, an exit status and a message with a hint.

use runbox_core::{ErrorBody, ErrorCode, LimitError};
use runbox_image::ImageError;
use runbox_sandbox::{PlanError, SandboxError};

/// A usage error found by the CLI itself, with its code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub code: ErrorCode,
    pub message: String,
}

impl CliError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
        }
    }
}

/// The code of the first error in the chain that has one.
pub fn code_of(err: &anyhow::Error) -> ErrorCode {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<CliError>() {
            return e.code;
        }
        if let Some(e) = cause.downcast_ref::<runbox_engine::EngineError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<runbox_catalog::CatalogError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<ImageError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<PlanError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<SandboxError>() {
            return e.code();
        }
        if cause.downcast_ref::<LimitError>().is_some() {
            return ErrorCode::InvalidLimit;
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return ErrorCode::Io;
        }
    }
    ErrorCode::Internal
}

/// What to try next, by error code.
pub fn hint(code: ErrorCode) -> Option<&'static str> {
    Some(match code {
        ErrorCode::ImageNotFound => {
            "list images with `runbox image ls`; add one with `runbox image import PATH` or `runbox image pull REF`"
        }
        ErrorCode::ProgramNotFound => "list the catalog's programs with `runbox programs`",
        ErrorCode::CommandNotFound => {
            "check the command name and the image's PATH; give the command after `--`"
        }
        ErrorCode::InvalidLimit => "see `runbox run --help` for the limits and their ranges",
        ErrorCode::StoreBusy => {
            "another runbox process is using the store; try again when its jobs finish"
        }
        ErrorCode::SandboxSetup => {
            "runbox needs root and a kernel with user namespaces, overlayfs and cgroups"
        }
        ErrorCode::BuildFailed => {
            "check the recipe's package names and that the Debian mirror is reachable; `--log debug` shows all of mmdebstrap's output"
        }
        _ => return None,
    })
}

/// The whole chain, `outer: inner: innermost`, without repeating messages that
/// already contain their cause.
pub fn message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let s = cause.to_string();
        if !out.contains(&s) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&s);
        }
    }
    out
}

pub fn body(err: &anyhow::Error) -> ErrorBody {
    ErrorBody {
        code: code_of(err),
        message: message(err),
    }
}
