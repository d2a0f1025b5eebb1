//! `GET /api/turns/{id}`: one turn's status.

use axum::extract::State;
use axum::response::IntoResponse;

use crate::AppState;
use crate::access::Principal;
use crate::error::AppError;
use crate::extract::{Json, Path, parse_id};
use crate::openapi::{BadRequest, NotFound, Unauthorized, Unavailable};

/// `GET /api/turns/{id}` → the turn (`status`, `attempt`, `error`, timestamps).
///
/// # Errors
/// 400 for a malformed id, 404 for an unknown one (or one of another principal's
/// conversations).
#[utoipa::path(
    get,
    operation_id = "turns_show",
    path = "/turns/{id}",
    tag = "turns",
    params(("id" = uuid::Uuid, Path, description = "The turn's id")),
    responses(
        (status = 200, description = "The turn", body = parley_db::turn::Turn),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    let id = parse_id(&id, "turn")?;
    let client = state.orchestrator.pool().get().await.map_err(parley_db::DbError::from)?;
    let turn = parley_db::turn::get(&client, id).await?;
    principal.conversation(&client, turn.conversation_id).await.map_err(|e| match e {
        AppError::NotFound(_) => AppError::NotFound("turn"),
        other => other,
    })?;
    Ok(Json(turn))
}
