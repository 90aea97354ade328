//! The API's request and response bodies (their OpenAPI schemas are derived from
//! these types).

use runbox_catalog::Program;
use runbox_core::{ErrorBody, JobResult, JobSpec};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;

/// A job to run: a `JobSpec` (its fields at the top level) plus `cache` and
/// `requires`.
#[derive(Debug, Clone, Serialize)]
pub struct RunRequest {
    #[serde(flatten)]
    pub spec: JobSpec,
    /// Answer from the result cache when the same job ran before (default true).
    /// `false` always runs, and stores the new result.
    pub cache: bool,
    /// What a worker must have to be given the job (docs/workers.md).
    #[serde(skip_serializing_if = "JobRequires::is_empty")]
    pub requires: JobRequires,
}

/// Worker requirements of a job: labels the worker must all have, and its CPU
/// architecture. (The image and the backend are required by the server itself.)
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequires {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// `x86_64`, `aarch64`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

impl JobRequires {
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.arch.is_none()
    }
}

/// The schema: JobSpec's object with `cache` and `requires` added (a derived
/// `allOf` would inherit JobSpec's `additionalProperties: false` and match no
/// request with either field).
impl utoipa::PartialSchema for RunRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
        use utoipa::openapi::RefOr;
        let mut schema = <JobSpec as utoipa::PartialSchema>::schema();
        if let RefOr::T(Schema::Object(obj)) = &mut schema {
            obj.properties.insert(
                "cache".into(),
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .description(Some(
                        "Answer from the result cache when the same job ran before (default true)",
                    ))
                    .into(),
            );
            obj.properties.insert(
                "requires".into(),
                <JobRequires as utoipa::PartialSchema>::schema(),
            );
            obj.description = Some("A JobSpec plus `cache` and `requires`".into());
        }
        schema
    }
}

impl ToSchema for RunRequest {}

impl RunRequest {
    /// Parses a JSON body. Unknown fields, wrong types and bad payloads are
    /// refused naming the field (`inputs[0].content: ...`).
    pub fn from_json(bytes: &[u8]) -> Result<RunRequest, ApiError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
        let serde_json::Value::Object(mut map) = value else {
            return Err(ApiError::bad_request(
                "the body must be a JSON object (a RunRequest)",
            ));
        };
        let cache = match map.remove("cache") {
            None => true,
            Some(serde_json::Value::Bool(b)) => b,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "cache: expected true or false, got {other}"
                )))
            }
        };
        let requires = match map.remove("requires") {
            None => JobRequires::default(),
            Some(v) => serde_path_to_error::deserialize(v).map_err(|e| {
                ApiError::bad_request(format!("requires.{}: {}", e.path(), e.inner()))
            })?,
        };
        if let Some(bad) = requires.labels.iter().find(|l| {
            l.is_empty()
                || l.len() > 64
                || !l
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        }) {
            return Err(ApiError::bad_request(format!(
                "requires.labels: {bad:?} is not a label (1-64 letters, digits, '-', '_', '.', ':')"
            )));
        }
        let spec: JobSpec = serde_path_to_error::deserialize(serde_json::Value::Object(map))
            .map_err(|e| {
                let path = e.path().to_string();
                if path == "." {
                    ApiError::bad_request(format!("invalid request: {}", e.inner()))
                } else {
                    ApiError::bad_request(format!("{path}: {}", e.inner()))
                }
            })?;
        Ok(RunRequest {
            spec,
            cache,
            requires,
        })
    }
}

/// The answer to a job: its result, whether it came from the cache, and the
/// permalink that shows it again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunResponse {
    /// The result-cache key and permalink id: a hash of everything that decides
    /// the job's output.
    pub key: String,
    pub cached: bool,
    /// `/r/{key}`: the playground opened on this result.
    pub permalink: String,
    pub result: JobResult,
}

/// `POST /api/jobs` accepted the job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobAccepted {
    pub id: String,
    pub status: JobPhase,
    /// `/api/jobs/{id}`.
    pub url: String,
    /// `/api/jobs/{id}/events` (Server-Sent Events).
    pub events_url: String,
}

/// Where an asynchronous job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

/// `GET /api/jobs/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobInfo {
    pub id: String,
    pub status: JobPhase,
    /// Jobs ahead of this one while it is queued.
    pub position: Option<u64>,
    /// When `done`.
    pub response: Option<RunResponse>,
    /// When `failed`: why the job could not run.
    pub error: Option<ErrorBody>,
}

/// `GET /api/results/{key}`: a stored result and the request that made it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StoredResult {
    pub key: String,
    pub request: serde_json::Value,
    pub result: JobResult,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// Times it was served from the cache.
    pub hits: i64,
}

/// A catalog program and whether it can run now.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProgramInfo {
    #[serde(flatten)]
    pub program: Program,
    /// The name of the image the program runs in (the manifest's `image` says
    /// where it comes from: a recipe or a reference).
    pub image_name: String,
    /// Whether that image is in the store (false while it is being built).
    pub ready: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProgramList {
    pub programs: Vec<ProgramInfo>,
}

/// Filters for `GET /api/programs`, combined with AND.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ProgramFilter {
    /// Only this category.
    pub category: Option<String>,
    /// Only programs reading a file (or stdin) of this MIME type.
    pub accepts: Option<String>,
    /// Only programs writing a file (or stdout) of this MIME type.
    pub produces: Option<String>,
}

/// One image of the catalog, and what its build is doing.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImageBuild {
    pub name: String,
    pub recipe: String,
    pub state: BuildState,
    /// While building: resolving, downloading, installing, packing, importing.
    pub phase: Option<String>,
    /// Seconds since its build started (while building, or how long it took).
    pub elapsed_s: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    Ready,
    Queued,
    Building,
    Failed,
}

/// `GET /api/catalog`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CatalogStatus {
    pub images: Vec<ImageBuild>,
}

/// `POST /api/admin/catalog/build`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildRequest {
    /// Rebuild images whose recipe is unchanged too.
    #[serde(default)]
    pub force: bool,
}

/// `POST /api/admin/gc`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GcSummary {
    pub blobs_removed: u64,
    pub layers_removed: u64,
    pub bytes_freed: u64,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub workers: usize,
    pub queued: u64,
    pub running: u64,
    pub uptime_s: f64,
}

/// A dataset a system holds, for people choosing one.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DatasetInfo {
    pub name: String,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Bytes of the dataset file.
    pub size: u64,
}

/// A catalog system and the state of its warm snapshot.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SystemInfo {
    pub id: String,
    pub name: String,
    pub version: String,
    pub description: String,
    pub category: String,
    pub query_mime: String,
    pub answer_mime: String,
    pub datasets: Vec<DatasetInfo>,
    pub example: Option<runbox_catalog::SystemExample>,
    /// The store name of the image it runs in.
    pub image_name: String,
    /// Whether that image is in the store (false while it is being built).
    pub ready: bool,
    /// What its snapshot is keyed by now (null while its image is missing).
    pub fingerprint: Option<String>,
    /// The snapshot matching the fingerprint, when one was made (the first query
    /// provisions it otherwise).
    pub snapshot: Option<runbox_engine::SnapshotRecord>,
    /// Warm instances alive now.
    pub instances: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SystemList {
    pub systems: Vec<SystemInfo>,
}

/// One query for several systems at once.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FanOutRequest {
    /// System ids, each once (1 to 16).
    pub systems: Vec<String>,
    /// The query text (at most 128 KiB).
    pub query: String,
}

/// One system's answer (or why it has none).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SystemAnswer {
    pub system: String,
    /// The system answered (a query the engine rejects is still an answer: its
    /// result has a non-zero exit code and the message on stderr).
    pub ok: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub answer: Option<runbox_engine::QueryAnswer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FanOutResponse {
    pub query_bytes: usize,
    /// Wall time of the whole request, in ms (the slowest system's).
    pub total_ms: f64,
    /// In the order the systems were asked for.
    pub answers: Vec<SystemAnswer>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<runbox_core::SandboxInfo>,
}

/// Where `snapshot` writes the new image.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// The image name (admin only; default `runbox-snapshot/<sandbox id>:latest`).
    #[serde(default)]
    pub name: Option<String>,
}

/// The image a snapshot made.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SnapshotResponse {
    pub image: String,
    /// Its manifest digest.
    pub digest: String,
    /// Bytes of file content and files in the new layer.
    pub layer_bytes: u64,
    pub files: u64,
}

/// Files read from a sandbox.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FilesResponse {
    pub files: Vec<runbox_core::OutputFile>,
}

/// How a file is written into a sandbox (query parameters of `PUT .../files/...`).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PutFileParams {
    /// Mode 0755 instead of 0644.
    #[serde(default)]
    pub executable: bool,
    /// Owner: a user name of the image or uid[:gid] (default: the image's user).
    #[serde(default)]
    pub user: Option<String>,
}
