//! Errors as HTTP responses: a status chosen by the stable error code, and the
//! same `{"error": {"code", "message"}}` body the CLI prints with `--json`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use runbox_core::{ErrorBody, ErrorCode};
use serde::Serialize;

/// The error body of every 4xx/5xx answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

/// An error on its way to becoming a response.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds, sent as `Retry-After` (429, 503, 409).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::NotFound, message)
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        ApiError::new(ErrorCode::Internal, err.to_string())
    }

    pub fn status(&self) -> StatusCode {
        status_of(self.code)
    }
}

/// The HTTP status for an error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        InvalidArgument | InvalidLimit | InvalidPath | InputUnreadable | ScriptInvalid
        | ImageInvalid | ExpectationFailed => StatusCode::BAD_REQUEST,
        Unauthorized | RegistryAuth => StatusCode::UNAUTHORIZED,
        ImageNotFound | ProgramNotFound | NotFound => StatusCode::NOT_FOUND,
        ImageNotReady | StoreBusy | LeaseLost | Cancelled | SandboxBusy => StatusCode::CONFLICT,
        PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        CommandNotFound | CommandNotExecutable => StatusCode::UNPROCESSABLE_ENTITY,
        RateLimited | TooManySandboxes => StatusCode::TOO_MANY_REQUESTS,
        SandboxEnded => StatusCode::GONE,
        ProvisionFailed => StatusCode::UNPROCESSABLE_ENTITY,
        QueueFull | SandboxSetup => StatusCode::SERVICE_UNAVAILABLE,
        BuildFailed | Io | Internal | WorkerLost => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(code = %self.code, message = %self.message, "request failed");
        }
        let body = ErrorResponse {
            error: ErrorBody {
                code: self.code,
                message: self.message,
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<runbox_engine::EngineError> for ApiError {
    fn from(e: runbox_engine::EngineError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

impl From<runbox_catalog::CatalogError> for ApiError {
    fn from(e: runbox_catalog::CatalogError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

impl From<runbox_image::ImageError> for ApiError {
    fn from(e: runbox_image::ImageError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::new(ErrorCode::Io, format!("database: {e}"))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Gives every error the JSON error body. The handlers' own errors have it
/// already; this catches what axum's extractors answer by themselves in plain
/// text (a malformed query string, an undecodable path segment), so a client
/// never has to parse two error formats.
pub async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::REQUEST_TIMEOUT => ErrorCode::RequestTimeout,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::InvalidArgument,
    };
    // Rejection texts are one line; anything longer is not worth echoing.
    let text = axum::body::to_bytes(resp.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut out = ApiError::new(code, message).into_response();
    // Keep the status axum chose when the code's own differs (e.g. 422).
    *out.status_mut() = status;
    out
}
