//! Following a conversation's event stream: replay from the database after a given
//! `seq`, then live events, with no gap and no duplicate (see [`crate::hub`]).

use std::sync::Arc;

use futures::Stream;
use futures::future::BoxFuture;
use parley_db::event::{self, Event, EventKind};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Orchestrator, OrchestratorError};

/// Events read from the database per query while catching up.
const PAGE: i64 = 500;

impl Orchestrator {
    /// The conversation's events with `seq > after`, oldest first: first those already
    /// stored or pending, then live ones as they are produced. Ends when `stop` fires.
    /// A follower that falls behind the live channel catches up from the database.
    ///
    /// # Errors
    /// The stream yields [`OrchestratorError::Db`] and ends when the store fails.
    pub fn follow(
        &self,
        conversation_id: Uuid,
        after: i64,
        stop: CancellationToken,
    ) -> impl Stream<Item = Result<Arc<Event>, OrchestratorError>> + Send + 'static + use<> {
        let orch = self.clone();
        async_stream::try_stream! {
            let mut subscription = orch.hub().subscribe(conversation_id);
            let mut last = after;
            // True while the last event yielded ended a turn: then a new turn's start
            // cannot have earlier events still on their way from another replica.
            let mut settled = after == 0;
            'catch_up: loop {
                subscription.generation.borrow_and_update();
                let pending = subscription.pending();
                loop {
                    let page = read_after(&orch, conversation_id, last).await?;
                    let full = page.len() as i64 == PAGE;
                    for e in page {
                        last = e.seq;
                        settled = e.kind.ends_turn();
                        yield Arc::new(e);
                    }
                    if !full {
                        break;
                    }
                }
                for e in pending {
                    if e.seq > last {
                        last = e.seq;
                        settled = e.kind.ends_turn();
                        yield e;
                    }
                }
                loop {
                    let received = tokio::select! {
                        () = stop.cancelled() => break 'catch_up,
                        r = subscription.receiver.recv() => r,
                        changed = subscription.generation.changed() => {
                            if changed.is_ok() {
                                continue 'catch_up;
                            }
                            continue;
                        }
                    };
                    match received {
                        Ok(e) if e.seq > last => {
                            if e.kind == EventKind::TurnStarted && !settled {
                                // Every event of earlier turns was committed before this
                                // turn could be claimed, but another replica's may still
                                // be on its way here: read them from the database first.
                                let earlier = read_after(&orch, conversation_id, last).await?;
                                for before in earlier.into_iter().filter(|b| b.seq < e.seq) {
                                    yield Arc::new(before);
                                }
                            }
                            last = e.seq;
                            settled = e.kind.ends_turn();
                            yield e;
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => continue 'catch_up,
                        Err(RecvError::Closed) => break 'catch_up,
                    }
                }
            }
        }
    }
}

/// Up to [`PAGE`] stored events of the conversation with `seq > after`, oldest first.
///
/// Boxed: a follower spends its life waiting for live events, and its stream's state is
/// as large as the largest future it awaits; the pool checkout and the query are only
/// allocated while they run (see `docs/architecture.md#idle-event-streams`).
fn read_after(
    orch: &Orchestrator,
    conversation_id: Uuid,
    after: i64,
) -> BoxFuture<'_, Result<Vec<Event>, OrchestratorError>> {
    Box::pin(async move {
        let client = orch.pool().get().await.map_err(parley_db::DbError::from)?;
        Ok(event::list_after(&client, conversation_id, after, PAGE).await?)
    })
}
