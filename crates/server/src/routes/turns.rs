//! `GET /api/turns/{id}`: one turn's status.

use axum::extract::State;
use axum::response::IntoResponse;

use crate::AppState;
use crate::error::AppError;
use crate::extract::{Json, Path, parse_id};

/// `GET /api/turns/{id}` → the turn (`status`, `attempt`, `error`, timestamps).
///
/// # Errors
/// 400 for a malformed id, 404 for an unknown one.
pub async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, AppError> {
    let id = parse_id(&id, "turn")?;
    let client = state.orchestrator.pool().get().await.map_err(parley_db::DbError::from)?;
    Ok(Json(parley_db::turn::get(&client, id).await?))
}
