//! `GET /api/conversations/{id}/events`: the conversation's events over Server-Sent
//! Events.
//!
//! Each SSE message has `event:` = the event's kind (`turn_started`, `text`, `thinking`,
//! `tool_use`, `tool_result`, `session_reset`, `turn_completed`, `turn_failed`,
//! `turn_cancelled`, `turn_interrupted`), `id:` = its `seq`, and `data:` = its JSON
//! payload (which always includes `turn_id`). A client resumes with the standard
//! `Last-Event-ID` header or `?after=SEQ`: missed events are replayed from the database,
//! then live ones follow, with no gap and no duplicate; `?after=0` replays the whole log,
//! read a page at a time (the server never holds it in memory). A client that gives no
//! position gets a `snapshot` event first (where the conversation stands, see
//! [`parley_db::conversation::Snapshot`]), then the events of the running or most recent
//! turn, then live ones: what it receives is bounded by one turn, not by the log.
//! Comments keep the connection alive every 15 s. The stream ends when the server shuts
//! down.
//!
//! Besides `Authorization: Bearer`, this endpoint accepts the token as
//! `?access_token=` (a browser `EventSource` cannot send headers). Each open stream
//! counts against its principal's `--max-event-streams` until it closes.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::AppState;
use crate::access::Principal;
use crate::error::AppError;
use crate::extract::{Path, Query, parse_id};
use crate::openapi::{BadRequest, NotFound, TooManyRequests, Unauthorized, Unavailable};

/// Query of the events stream.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Replay events with `seq` greater than this (`0`: the whole log); `Last-Event-ID`
    /// wins when both are given. Without either, the stream starts with a `snapshot`
    /// event and the running or most recent turn's events.
    pub after: Option<i64>,
}

/// Opens the stream.
///
/// # Errors
/// 400 for a malformed id or `Last-Event-ID`, 404 for an unknown conversation (or
/// another principal's), 429 `too_many_streams`.
#[utoipa::path(
    get,
    operation_id = "events_stream",
    path = "/conversations/{id}/events",
    tag = "messages",
    params(
        ("id" = uuid::Uuid, Path, description = "The conversation's id"),
        EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header,
            description = "Resume after this event seq (sent by `EventSource` on reconnect); wins over `after`"),
    ),
    security(("bearer" = []), ("access_token" = [])),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
            description = "Server-Sent Events that never end on their own: `event:` the kind (`turn_started`, `text`, \
                           `thinking`, `tool_use`, `tool_result`, `session_reset`, `turn_completed`, `turn_failed`, \
                           `turn_cancelled`, `turn_interrupted`), `id:` its seq, `data:` its JSON payload (with \
                           `turn_id`); `: keep-alive` comments every 15 s. Without `Last-Event-ID` or `after`, the \
                           first event is a `snapshot` (data: the `Snapshot` schema; `id:` its `replay_after_seq`), \
                           followed by the running or most recent turn's events, not the whole log"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
pub async fn stream(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, AppError> {
    let id = parse_id(&id, "conversation")?;
    let position = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok()).ok_or_else(|| {
            AppError::bad_request("invalid_header", "Last-Event-ID must be an event seq (an integer)")
        })?),
        None => q.after,
    };
    let snapshot = {
        let client = state.db().await?;
        principal.conversation(&client, id).await?;
        match position {
            Some(_) => None,
            None => Some(parley_db::conversation::snapshot(&client, id).await?),
        }
    };
    let guard = state.access.open_stream(&principal)?;
    // Its next message is likely near: start its assistant's process now.
    state.orchestrator.warm_up(id);
    let after = position.or(snapshot.as_ref().map(|s| s.replay_after_seq)).unwrap_or(0);
    let first = snapshot.map(|s| {
        let sse = SseEvent::default().event("snapshot").id(s.replay_after_seq.to_string());
        Ok::<_, Infallible>(
            sse.json_data(&s).unwrap_or_else(|_| SseEvent::default().comment("unserialisable snapshot")),
        )
    });
    let follow = state.orchestrator.follow(id, after, state.shutdown.clone()).filter_map(move |item| {
        // The guard lives as long as the stream: dropping the connection releases it.
        let _open = &guard;
        async move {
            match item {
                Ok(event) => {
                    let sse = SseEvent::default()
                        .event(event.kind)
                        .id(event.seq.to_string())
                        .json_data(&event.data)
                        .unwrap_or_else(|_| SseEvent::default().comment("unserialisable event"));
                    Some(Ok::<_, Infallible>(sse))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event stream ended by a database error");
                    None
                }
            }
        }
    });
    let events = futures::stream::iter(first).chain(follow);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive")))
}
