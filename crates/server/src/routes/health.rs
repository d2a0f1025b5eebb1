//! `/healthz` (the process is up) and `/readyz` (the database answers).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::extract::Json;

/// Body of the probes.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` (`/healthz`), `ready` or `unready` (`/readyz`).
    pub status: &'static str,
    /// Why the server is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /healthz` → `200 {"status":"ok"}` while the process serves requests.
#[utoipa::path(
    get,
    operation_id = "healthz",
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The process serves requests", body = Health))
)]
pub async fn healthz() -> impl IntoResponse {
    Json(Health { status: "ok", error: None })
}

/// `GET /readyz` → `200 {"status":"ready"}` when the database answers, else
/// `503 {"status":"unready","error":…}`.
#[utoipa::path(
    get,
    operation_id = "readyz",
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "The database answers", body = Health),
        (status = 503, description = "The database does not answer", body = Health),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match parley_db::check(state.orchestrator.pool()).await {
        Ok(()) => (StatusCode::OK, Json(Health { status: "ready", error: None })),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status: "unready", error: Some(e.to_string()) })),
    }
}
