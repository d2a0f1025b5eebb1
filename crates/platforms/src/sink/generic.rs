//! The generic webhook's replies: the whole reply (and, in stream mode, each progress
//! update, at most one per edit interval) is POSTed as JSON to the `callback_url` the
//! caller gave at ingest, signed like an inbound request (`X-Parley-Signature:
//! sha256=<hex HMAC-SHA256 of the body>`) with a fresh `X-Delivery-Id`:
//!
//! ```json
//! {"conversation_id": "…", "turn_id": "…"|null, "status": "running"|"completed"|"failed"|"cancelled"|"notice",
//!  "final": true, "text": "…", "tools": ["Bash: ls"], "error": "…"?}
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::reply::{ReplySink, ReplyStatus, ReplyUpdate};
use futures::FutureExt;
use futures::future::BoxFuture;
use parley_db::conversation::Conversation;
use serde_json::{Value, json};
use uuid::Uuid;

use super::SinkError;
use crate::config::Secret;
use crate::http::Http;
use crate::verify;

/// The generic webhook's reply sink.
#[derive(Debug, Clone)]
pub struct GenericSink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: Http,
    secret: Secret,
    edit_interval: Duration,
    last_post: Mutex<HashMap<Uuid, Instant>>,
}

impl GenericSink {
    pub(crate) fn new(http: Http, secret: Secret, edit_interval: Duration) -> Self {
        Self { inner: Arc::new(Inner { http, secret, edit_interval, last_post: Mutex::new(HashMap::new()) }) }
    }
}

/// The callback body of an update.
fn payload(conversation: &Conversation, update: &ReplyUpdate) -> Value {
    let (status, error) = match &update.status {
        ReplyStatus::Running => ("running", None),
        ReplyStatus::Completed => ("completed", None),
        ReplyStatus::Failed { error } => ("failed", Some(error.clone())),
        ReplyStatus::Cancelled => ("cancelled", None),
        ReplyStatus::Notice => ("notice", None),
    };
    let mut body = json!({
        "conversation_id": conversation.external_id,
        "turn_id": update.turn_id,
        "status": status,
        "final": update.is_final(),
        "text": update.text,
        "tools": update.tools,
    });
    if let Some(e) = error {
        body["error"] = json!(e);
    }
    body
}

impl Inner {
    async fn send(&self, conversation: Conversation, update: ReplyUpdate) -> Result<(), SinkError> {
        let Some(url) = conversation.reply_target.get("callback_url").and_then(Value::as_str).map(str::to_owned) else {
            return Ok(()); // No callback: the caller follows the conversation through the web API.
        };
        if let Some(turn) = update.turn_id {
            let last = self.last_post.lock().unwrap_or_else(PoisonError::into_inner).get(&turn).copied();
            if let Some(since) = last.map(|t| t.elapsed()).filter(|s| *s < self.edit_interval) {
                tokio::time::sleep(self.edit_interval - since).await;
            }
        }
        let body = serde_json::to_vec(&payload(&conversation, &update))
            .map_err(|e| SinkError::Target(format!("cannot encode the callback: {e}")))?;
        let signature = verify::generic_signature(self.secret.expose(), &body);
        const WHAT: &str = "generic callback";
        // One id for every attempt of this callback, so the receiver can dedupe retries.
        let delivery_id = Uuid::new_v4().to_string();
        let answer = self
            .http
            .send(WHAT, |c| {
                c.post(&url)
                    .header("content-type", "application/json")
                    .header("x-parley-signature", &signature)
                    .header("x-delivery-id", &delivery_id)
                    .body(body.clone())
            })
            .await?;
        if let Some(turn) = update.turn_id {
            let mut last = self.last_post.lock().unwrap_or_else(PoisonError::into_inner);
            if update.is_final() {
                last.remove(&turn);
            } else {
                last.retain(|_, t| t.elapsed() < Duration::from_secs(3600));
                last.insert(turn, Instant::now());
            }
        }
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(SinkError::Api { what: WHAT, status: answer.status.as_u16(), detail: answer.detail() })
        }
    }
}

impl ReplySink for GenericSink {
    fn send(&self, conversation: &Conversation, update: ReplyUpdate) -> BoxFuture<'static, Result<(), String>> {
        let inner = Arc::clone(&self.inner);
        let conversation = conversation.clone();
        async move { inner.send(conversation, update).await.map_err(|e| e.to_string()) }.boxed()
    }
}
