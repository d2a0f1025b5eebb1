//! A turn's events: numbering (blocks reserved from the database), live publication
//! here and to the other replicas, and batched writes.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use parley_db::event::{self, Event, EventKind};
use parley_db::{DbError, DbResult};
use serde_json::{Value, json};
use tracing::warn;
use uuid::Uuid;

use crate::notify::Signal;

use super::run::TurnRun;

/// Longest tool output kept in an event, in characters.
pub(super) const TOOL_OUTPUT_CHARS: usize = 1_000;
/// Longest text in one `text` or `thinking` event, in characters: longer chunks become
/// several events. Together with [`TOOL_OUTPUT_CHARS`] and [`TOOL_INPUT_BYTES`] this keeps
/// every event small enough to relay live to other replicas in one notification (even
/// at six bytes a character once JSON-escaped).
pub(super) const EVENT_TEXT_CHARS: usize = 1_000;
/// Largest tool input shown whole in a `tool_use` event, in bytes of JSON; a larger one
/// is shown as a preview (the full input is kept in the reply's metadata).
pub(super) const TOOL_INPUT_BYTES: usize = 3_000;

/// Allocates event numbers for one turn, publishes events live at once and writes them
/// to the database in batches.
pub(super) struct Emitter {
    pub(super) conversation_id: Uuid,
    pub(super) turn_id: Uuid,
    pub(super) next_seq: i64,
    /// One past the last number of the reserved block.
    pub(super) block_end: i64,
    pub(super) unflushed: Vec<Event>,
    pub(super) last_flush: Instant,
}

impl Emitter {
    pub(super) fn event(&mut self, kind: EventKind, mut data: Value) -> Event {
        let now = Utc::now();
        if let Some(obj) = data.as_object_mut() {
            obj.insert("turn_id".into(), json!(self.turn_id));
            // When it was produced, in Unix microseconds: clients measure relay latency with it.
            obj.insert("ts".into(), json!(now.timestamp_micros()));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Event { conversation_id: self.conversation_id, seq, turn_id: Some(self.turn_id), kind, data, created_at: now }
    }
}

/// Splits text into pieces of at most `max` characters (one piece when it is shorter).
pub(super) fn pieces(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

/// A tool input as a `tool_use` event shows it: whole when small, else a preview.
pub(super) fn shown_input(input: &Value) -> Value {
    let encoded = input.to_string();
    if encoded.len() <= TOOL_INPUT_BYTES {
        return input.clone();
    }
    json!({ "truncated": true, "preview": truncate(&encoded, EVENT_TEXT_CHARS) })
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}… [{} more characters]", &s[..i], s[i..].chars().count()),
        None => s.to_owned(),
    }
}

impl TurnRun<'_> {
    /// Makes sure the event-number block has room for `n` more events.
    pub(super) async fn reserve(&mut self, n: i64) -> DbResult<()> {
        if self.emitter.next_seq + n > self.emitter.block_end {
            let client = self.orch.pool().get().await?;
            let first = event::reserve_block(&client).await?;
            self.emitter.next_seq = first;
            self.emitter.block_end = first + event::BLOCK_SIZE;
        }
        Ok(())
    }

    /// Creates an event and publishes it.
    pub(super) async fn emit(&mut self, kind: EventKind, data: Value) {
        if let Err(e) = self.reserve(1).await {
            warn!(error = %e, "cannot reserve event numbers; event dropped");
            return;
        }
        let event = self.emitter.event(kind, data);
        self.publish(event).await;
    }

    /// Publishes an event live (here and to the other replicas) and writes the
    /// unflushed batch when the flush interval has passed. A failed write keeps the
    /// events for the next try.
    pub(super) async fn publish(&mut self, event: Event) {
        let shared = Arc::new(event.clone());
        self.orch.hub().publish(Arc::clone(&shared), false, false);
        self.orch.signal(Signal::Event { event, persisted: false });
        let event = Arc::unwrap_or_clone(shared);
        self.emitter.unflushed.push(event);
        if self.emitter.last_flush.elapsed() >= self.orch.config().event_flush_interval {
            self.flush().await;
        }
    }

    pub(super) async fn flush(&mut self) {
        if self.emitter.unflushed.is_empty() {
            return;
        }
        let written = match self.orch.pool().get().await {
            Ok(client) => event::insert_batch(&client, &self.emitter.unflushed).await,
            Err(e) => Err(DbError::from(e)),
        };
        match written {
            Ok(()) => {
                let last = self.emitter.unflushed.last().map_or(0, |e| e.seq);
                self.emitter.unflushed.clear();
                self.orch.hub().persisted(self.conversation.conversation_id, last);
                self.orch.signal(Signal::Persisted { conversation_id: self.conversation.conversation_id, seq: last });
            }
            Err(e) => warn!(error = %e, "writing events failed; will retry"),
        }
        self.emitter.last_flush = Instant::now();
    }

    pub(super) fn after_commit(&mut self, final_event: Event) {
        self.emitter.unflushed.clear();
        let hub = self.orch.hub();
        let conversation_id = self.conversation.conversation_id;
        hub.persisted(conversation_id, final_event.seq);
        hub.publish(Arc::new(final_event.clone()), true, false);
        self.orch.signal(Signal::Persisted { conversation_id, seq: final_event.seq });
        self.orch.signal(Signal::Event { event: final_event, persisted: true });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_split_into_event_sized_pieces_keeping_every_character() {
        let text = "é".repeat(2_500);
        let parts: Vec<&str> = pieces(&text, EVENT_TEXT_CHARS).collect();
        assert_eq!(parts.iter().map(|p| p.chars().count()).collect::<Vec<_>>(), vec![1_000, 1_000, 500]);
        assert_eq!(parts.concat(), text);
        assert_eq!(pieces("short", EVENT_TEXT_CHARS).collect::<Vec<_>>(), vec!["short"]);
        assert_eq!(pieces("", EVENT_TEXT_CHARS).count(), 0);
    }

    #[test]
    fn large_tool_inputs_are_previewed_and_small_ones_kept() {
        let small = json!({ "command": "ls" });
        assert_eq!(shown_input(&small), small);
        let large = json!({ "content": "\u{1}".repeat(5_000) });
        let shown = shown_input(&large);
        assert_eq!(shown["truncated"], true);
        assert!(shown.to_string().len() < 7_000, "{} bytes", shown.to_string().len());
    }
}
