//! Shared HTTP plumbing of the API adapters ([`crate::openai`], [`crate::openai_chat`]):
//! sending a streaming request and reading its server-sent events under cancellation,
//! an idle timeout and a total timeout.

use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{AssistantError, human_duration};

/// Time limits of one HTTP run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpLimits {
    pub(crate) idle: Duration,
    pub(crate) total: Duration,
}

/// A response's event stream with its limits.
pub(crate) struct Events {
    inner: BoxStream<'static, Result<Event, String>>,
    limits: HttpLimits,
    deadline: Instant,
}

impl Events {
    /// The next event, `None` at the end of the stream.
    pub(crate) async fn next(&mut self, cancel: &CancellationToken) -> Result<Option<Event>, AssistantError> {
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(AssistantError::Cancelled),
            () = tokio::time::sleep_until(self.deadline) => Err(AssistantError::Timeout(format!(
                "the response did not finish within {}", human_duration(self.limits.total)
            ))),
            () = tokio::time::sleep(self.limits.idle) => Err(AssistantError::Timeout(format!(
                "the API sent nothing for {}", human_duration(self.limits.idle)
            ))),
            next = self.inner.next() => match next {
                None => Ok(None),
                Some(Ok(event)) => Ok(Some(event)),
                Some(Err(e)) => Err(AssistantError::Api { message: format!("the event stream broke: {e}"), status: None }),
            },
        }
    }
}

/// Sends `request`; a non-2xx answer is returned as `Err((status, body))` for the
/// adapter to classify.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    url: &str,
    limits: HttpLimits,
    cancel: &CancellationToken,
) -> Result<Result<Events, (u16, String)>, AssistantError> {
    let deadline = Instant::now() + limits.total;
    let response = tokio::select! {
        biased;
        () = cancel.cancelled() => return Err(AssistantError::Cancelled),
        () = tokio::time::sleep_until(deadline) => {
            return Err(AssistantError::Timeout(format!("{url} did not answer within {}", human_duration(limits.total))));
        }
        r = request.send() => r.map_err(|e| AssistantError::Api {
            message: format!("cannot reach {url}: {}", error_chain(&e)),
            status: None,
        })?,
    };
    let status = response.status();
    if !status.is_success() {
        let body = tokio::select! {
            () = cancel.cancelled() => return Err(AssistantError::Cancelled),
            b = response.text() => b.unwrap_or_default(),
        };
        return Ok(Err((status.as_u16(), body)));
    }
    let inner = response.bytes_stream().eventsource().map(|r| r.map_err(|e| e.to_string())).boxed();
    Ok(Ok(Events { inner, limits, deadline }))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The `{"error": {"message", "code", "param", "type"}}` body of an OpenAI-style error,
/// as (message, code, param); the raw body (shortened) when it is not one.
pub(crate) fn error_parts(body: &str) -> (String, Option<String>, Option<String>) {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |k: &str| err.and_then(|e| e.get(k)).and_then(Value::as_str).map(str::to_owned);
    let message = field("message")
        .or_else(|| err.and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(500).collect::<String>().trim().to_owned());
    (message, field("code"), field("param"))
}
