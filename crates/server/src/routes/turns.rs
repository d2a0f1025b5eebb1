//! `/api/turns`: one turn's status, and the turns of every conversation by status (an
//! admin's view of the queue and of what failed).

use axum::extract::State;
use axum::response::IntoResponse;
use parley_db::turn::{self, Turn, TurnStatus};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::access::Principal;
use crate::cursor::PageRequest;
use crate::error::AppError;
use crate::extract::{Json, Path, Query, parse_id};
use crate::openapi::{BadRequest, Forbidden, NotFound, Unauthorized, Unavailable};

/// Query of `GET /api/turns`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Which turns: `queued`, `running`, `failed` or `interrupted` (required).
    #[param(value_type = ListedTurnStatus, required = true, inline)]
    pub status: Option<String>,
    /// The `next` of the previous page: this page continues just after it (omit it for
    /// the first page).
    pub after: Option<String>,
    /// Page size, 1–200 (default 50; other values are clamped into range).
    pub limit: Option<i64>,
}

/// The `status` of `GET /api/turns` (parsed as a [`TurnStatus`] and checked
/// against [`turn::LISTED_STATUSES`]; this type describes the values in the document).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ListedTurnStatus {
    /// Waiting for a worker.
    Queued,
    /// A worker runs it.
    Running,
    /// The assistant failed (`error` says why).
    Failed,
    /// Stopped by a shutdown or crash and not re-run.
    Interrupted,
}

/// Body of `GET /api/turns`: one page.
#[derive(Debug, Serialize, ToSchema)]
pub struct TurnList {
    /// Newest first (by the user message each answers).
    pub turns: Vec<Turn>,
    /// The `after` of the next page; null on the last page. Opaque: pass it back as is.
    pub next: Option<String>,
}

/// `GET /api/turns?status=…&after=…&limit=…` → `{"turns": [...], "next": CURSOR|null}`:
/// the turns with that status in every conversation, newest first. Admin tokens only.
/// Keyset paged over an index per status: every page costs what the first does.
///
/// # Errors
/// 400 for a missing or unknown status or a malformed cursor; 403 `forbidden` for a
/// token that is not an admin's.
#[utoipa::path(
    get,
    operation_id = "turns_index",
    path = "/turns",
    tag = "turns",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of the turns with that status across every conversation, newest first", body = TurnList),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    )
)]
pub async fn index(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, AppError> {
    if !principal.admin {
        return Err(AppError::Forbidden("listing turns across conversations needs an admin token".into()));
    }
    let status = q
        .status
        .as_deref()
        .and_then(|s| s.parse::<TurnStatus>().ok())
        .filter(|s| turn::LISTED_STATUSES.contains(s))
        .ok_or_else(|| {
            AppError::bad_request("invalid_query", "status must be queued, running, failed or interrupted")
        })?;
    let page = PageRequest::parse(q.after.as_deref(), q.limit, 50, 200)?;
    let client = state.db().await?;
    let rows = turn::list_by_status(&client, status, page.after, page.fetch()).await?;
    let (turns, next) = page.finish(rows, |t| Some(turn::ListKey::of(t)));
    Ok(Json(TurnList { turns, next }))
}

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
    let client = state.db().await?;
    let turn = parley_db::turn::get(&client, id).await?;
    principal.conversation(&client, turn.conversation_id).await.map_err(|e| match e {
        AppError::NotFound(_) => AppError::NotFound("turn"),
        other => other,
    })?;
    Ok(Json(turn))
}
