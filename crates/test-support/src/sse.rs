//! A small SSE client for tests, over reqwest and eventsource-stream.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};

/// One received SSE message.
#[derive(Debug, Clone, PartialEq)]
pub struct SseMessage {
    /// `event:`, the event kind.
    pub event: String,
    /// `id:`, the event seq.
    pub id: i64,
    /// `data:` parsed as JSON.
    pub data: serde_json::Value,
}

/// Opens an SSE stream at `url`, with `Last-Event-ID` when given.
///
/// # Panics
/// When the request fails or the answer is not `200 text/event-stream`.
pub async fn connect(url: &str, last_event_id: Option<i64>) -> impl Stream<Item = SseMessage> + Unpin + use<> {
    let client = reqwest::Client::new();
    let mut req = client.get(url);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id.to_string());
    }
    let resp = req.send().await.expect("SSE request");
    assert_eq!(resp.status(), 200, "SSE status for {url}");
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(ct.starts_with("text/event-stream"), "content type {ct}");
    resp.bytes_stream()
        .eventsource()
        .filter_map(|e| async move {
            let e = e.ok()?;
            Some(SseMessage {
                event: e.event,
                id: e.id.parse().ok()?,
                data: serde_json::from_str(&e.data).unwrap_or(serde_json::Value::Null),
            })
        })
        .boxed()
}

/// Reads messages until one satisfies `until` (included) or `timeout` passes.
///
/// # Panics
/// On timeout, listing what was received.
pub async fn read_until(
    stream: &mut (impl Stream<Item = SseMessage> + Unpin),
    timeout: Duration,
    mut until: impl FnMut(&SseMessage) -> bool,
) -> Vec<SseMessage> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(m)) => {
                let done = until(&m);
                got.push(m);
                if done {
                    return got;
                }
            }
            Ok(None) => panic!("SSE stream ended early after {got:?}"),
            Err(_) => panic!("timed out waiting for SSE event; got {got:?}"),
        }
    }
}
