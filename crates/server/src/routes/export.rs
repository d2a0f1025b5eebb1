//! `GET /api/conversations/{id}/export`: a conversation with its session chain and
//! messages, as JSON or Markdown, streamed (see `parley_orchestrator::export`).

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use parley_orchestrator::export::{self, Format};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::access::Principal;
use crate::error::AppError;
use crate::extract::{Path, Query, parse_id};
use crate::openapi::{BadRequest, NotFound, Unauthorized, Unavailable};

/// Query of the export.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `json` (default) or `markdown`.
    #[param(inline)]
    pub format: Option<Format>,
}

/// `GET /api/conversations/{id}/export?format=json|markdown` → the conversation, its
/// sessions and its messages (tool calls in each reply's `metadata.tool_calls`), as an
/// attachment named `parley-<id>.json` or `.md`.
///
/// # Errors
/// 400 for a malformed id or format; 404 for an unknown conversation (or another
/// principal's). A database failure after the first bytes ends the download early.
#[utoipa::path(
    get,
    operation_id = "conversations_export",
    path = "/conversations/{id}/export",
    tag = "conversations",
    params(("id" = uuid::Uuid, Path, description = "The conversation's id"), ExportQuery),
    responses(
        (status = 200, description = "The export", content(
            (export::Document = "application/json"),
            (String = "text/markdown"),
        )),
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
    Query(q): Query<ExportQuery>,
) -> Result<Response, AppError> {
    let id = parse_id(&id, "conversation")?;
    let pool = state.orchestrator.pool().clone();
    let conversation = {
        let client = pool.get().await.map_err(parley_db::DbError::from)?;
        principal.conversation(&client, id).await?
    };
    let format = q.format.unwrap_or_default();
    let pieces = export::export(pool, conversation, format, chrono::Utc::now()).map(move |piece| {
        piece.map_err(|e| {
            tracing::warn!(conversation_id = %id, error = %e, "the export stopped midway");
            std::io::Error::other(e.to_string())
        })
    });
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"parley-{id}.{}\"", format.extension())),
        ],
        Body::from_stream(pieces),
    )
        .into_response())
}
