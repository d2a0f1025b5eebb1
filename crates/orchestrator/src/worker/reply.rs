//! The reply: what the assistant produced so far in a turn, and how it is sent to the
//! conversation's platform sink (streamed progress, then the final state).

use std::sync::Arc;
use std::time::Duration;

use parley_assistant::Usage;
use parley_db::conversation::{Conversation, ReplyMode};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{Instrument, warn};
use uuid::Uuid;

use crate::sink::{ReplySink, ReplyStatus, ReplyUpdate};

use super::run::TurnRun;

/// How long a finished turn waits for its platform reply to be sent.
const SINK_FINAL_TIMEOUT: Duration = Duration::from_secs(60);

/// What the assistant produced so far in this turn.
#[derive(Debug, Default)]
pub(super) struct Reply {
    pub(super) text: String,
    pub(super) tools: Vec<String>,
    pub(super) tool_calls: Vec<Value>,
    pub(super) usage: Option<Usage>,
    pub(super) cost_usd: Option<f64>,
    pub(super) duration_ms: Option<u64>,
    pub(super) completed_session_id: Option<String>,
}

impl Reply {
    pub(super) fn update(&self, turn_id: Uuid, status: ReplyStatus) -> ReplyUpdate {
        ReplyUpdate { turn_id: Some(turn_id), text: self.text.clone(), tools: self.tools.clone(), status }
    }

    pub(super) fn metadata(&self) -> Value {
        let mut meta = json!({});
        if let Some(u) = self.usage {
            meta["usage"] = json!(u);
        }
        if let Some(c) = self.cost_usd {
            meta["cost_usd"] = json!(c);
        }
        if let Some(d) = self.duration_ms {
            meta["duration_ms"] = json!(d);
        }
        if !self.tool_calls.is_empty() {
            meta["tool_calls"] = Value::Array(self.tool_calls.clone());
        }
        meta
    }

    /// Records a tool call's outcome on its entry in `tool_calls` (matched by id):
    /// `is_error` and the first [`TOOL_OUTPUT_STORED_CHARS`] characters of its output, so
    /// a rebuilt prompt can say how the call ended (docs/architecture.md#history-rebuild).
    /// A result whose call is unknown is ignored.
    pub(super) fn tool_result(&mut self, id: &str, is_error: bool, output: &str) {
        if let Some(call) = self.tool_calls.iter_mut().rev().find(|c| c["id"] == id) {
            call["is_error"] = Value::Bool(is_error);
            call["output"] = Value::String(output.chars().take(TOOL_OUTPUT_STORED_CHARS).collect());
        }
    }
}

/// How much of a tool call's output the reply's metadata keeps, in characters: enough
/// for the one-line outcome of a rebuilt prompt, not the output itself.
const TOOL_OUTPUT_STORED_CHARS: usize = 400;

/// A compact one-line view of a tool call, e.g. `Bash: ls -la`.
pub(super) fn tool_line(name: &str, input: &Value) -> String {
    let detail = parley_db::message::TOOL_INPUT_PREVIEW_KEYS
        .iter()
        .find_map(|k| input.get(*k).and_then(Value::as_str))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let s = input.to_string();
            if s == "{}" || s == "null" { String::new() } else { s }
        });
    let detail: String = detail.chars().take(80).collect();
    if detail.is_empty() { name.to_owned() } else { format!("{name}: {detail}") }
}

/// Sends a turn's reply to a platform sink through a latest-wins channel.
pub(super) struct SinkHandle {
    tx: watch::Sender<Option<ReplyUpdate>>,
    stream: bool,
    task: tokio::task::JoinHandle<()>,
}

impl SinkHandle {
    pub(super) fn start(sink: Arc<dyn ReplySink>, conversation: Conversation) -> Self {
        let (tx, mut rx) = watch::channel::<Option<ReplyUpdate>>(None);
        let stream = conversation.reply_mode == ReplyMode::Stream;
        let task = tokio::spawn(
            async move {
                while rx.changed().await.is_ok() {
                    let update = rx.borrow_and_update().clone();
                    let Some(update) = update else { continue };
                    let last = update.is_final();
                    if let Err(e) = sink.send(&conversation, update).await {
                        warn!(error = %e, "sending the reply failed");
                    }
                    if last {
                        break;
                    }
                }
            }
            .in_current_span(),
        );
        Self { tx, stream, task }
    }

    pub(super) fn progress(&self, update: ReplyUpdate) {
        if self.stream {
            let _ = self.tx.send(Some(update));
        }
    }

    pub(super) async fn finish(self, update: ReplyUpdate) {
        let _ = self.tx.send(Some(update));
        if tokio::time::timeout(SINK_FINAL_TIMEOUT, self.task).await.is_err() {
            warn!("sending the reply did not finish in time; it goes on in the background");
        }
    }
}

impl TurnRun<'_> {
    pub(super) fn progress(&self) {
        if let Some(sink) = &self.sink {
            sink.progress(self.reply.update(self.turn.turn_id, ReplyStatus::Running));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_result_is_stored_on_its_call_and_cut_short() {
        let mut reply = Reply::default();
        reply.tool_calls.push(json!({ "id": "a", "name": "Bash", "input": { "command": "ls" } }));
        reply.tool_calls.push(json!({ "id": "b", "name": "Read", "input": { "file_path": "/x" } }));
        reply.tool_result("b", true, &"e".repeat(1_000));
        reply.tool_result("unknown", false, "ignored");
        let meta = reply.metadata();
        let calls = meta["tool_calls"].as_array().expect("tool_calls");
        assert_eq!(calls.len(), 2);
        assert!(calls[0].get("is_error").is_none(), "{meta}");
        assert_eq!(calls[1]["is_error"], true);
        assert_eq!(calls[1]["output"].as_str().map(str::len), Some(TOOL_OUTPUT_STORED_CHARS));
    }
}
