//! The OpenAPI document (`GET /api/openapi.json`), generated from the handler
//! annotations and the request/response types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;
use crate::error::ErrorResponse;
use crate::live;
use crate::types::*;
use crate::workers::{self, *};

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "runbox", description = "Run untrusted programs in sandboxes: the HTTP API of `runbox serve`. Guide: docs/api.md."),
    paths(
        api::programs, api::program, api::catalog, api::run, api::create_job, api::job,
        api::job_events, api::cancel_job, api::result, api::delete_result, api::build_catalog, api::gc,
        api::healthz, api::metrics,
        live::create_sandbox, live::list_sandboxes, live::sandbox, live::delete_sandbox,
        live::exec, live::put_file, live::get_file, live::snapshot,
        live::systems, live::system, live::query_many, live::query_one, live::provision,
        workers::me, workers::claim, workers::start, workers::heartbeat, workers::result,
        workers::create_worker, workers::list_workers, workers::revoke_worker,
    ),
    components(schemas(ErrorResponse, RunRequest, RunResponse, JobAccepted, JobInfo, JobPhase,
        StoredResult, ProgramInfo, ProgramList, CatalogStatus, ImageBuild, BuildState,
        BuildRequest, GcSummary, Health,
        WorkerCapabilities, ClaimRequest, JobRequirements, WorkerClaim, LeaseRequest,
        HeartbeatResponse, WorkerOutcome, ResultRequest, ResultAnswer, ResultResponse,
        WorkerIdentity, NewWorker, CreatedWorker, WorkerInfo, WorkerList,
        SystemInfo, SystemList, DatasetInfo, FanOutRequest, FanOutResponse, SystemAnswer,
        SandboxList, SnapshotRequest, SnapshotResponse, FilesResponse,
        runbox_core::CreateSandbox, runbox_core::ExecSpec, runbox_core::SandboxInfo,
        runbox_engine::QueryAnswer, runbox_engine::ProvisionReport, runbox_engine::SnapshotRecord)),
    modifiers(&AdminAuth),
)]
pub struct ApiDoc;

struct AdminAuth;

impl Modify for AdminAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("the server's admin token (DATA_DIR/admin-token)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "worker",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "a worker token, rbw_... (`runbox workers create NAME`; docs/workers.md)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as JSON.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes")
}
