//! `/healthz` (the process is up) and `/readyz` (the database answers).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use crate::AppState;
use crate::extract::Json;

/// `GET /healthz` → `200 {"status":"ok"}` while the process serves requests.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz` → `200 {"status":"ready"}` when the database answers, else
/// `503 {"status":"unready","error":…}`.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match parley_db::check(state.orchestrator.pool()).await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unready", "error": e.to_string() }))),
    }
}
