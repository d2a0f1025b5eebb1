//! Outbound HTTP with retries: 5xx, 429 and network errors are retried with
//! exponential backoff, honouring the platform's `Retry-After` header or `retry_after`
//! field (Telegram `parameters.retry_after`, Discord `retry_after`, in seconds).
//!
//! Errors never carry a URL (Telegram's URL holds the bot token) nor a request body.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tracing::warn;

use crate::config::SinkSettings;

/// Why a reply could not be delivered. The text is safe to log: no token, no URL.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// The request did not complete (connection refused, timeout) after every attempt.
    #[error("{what}: network error: {detail}")]
    Network {
        /// The API call, e.g. `telegram sendMessage`.
        what: &'static str,
        /// The cause, without the URL.
        detail: String,
    },
    /// The platform answered with an error.
    #[error("{what}: HTTP {status}: {detail}")]
    Api {
        /// The API call.
        what: &'static str,
        /// The HTTP status.
        status: u16,
        /// The platform's description of the error.
        detail: String,
    },
    /// The conversation's `reply_target` lacks what the platform needs, or the sink is
    /// not configured to reply.
    #[error("{0}")]
    Target(String),
}

impl SinkError {
    /// The HTTP status of an API error.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A platform's answer.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

impl Answer {
    /// The answer as the error of the call `what`: its status and the platform's message.
    pub(crate) fn error(&self, what: &'static str) -> SinkError {
        SinkError::Api { what, status: self.status.as_u16(), detail: self.detail() }
    }

    /// The answer when its status is a success, else [`Answer::error`].
    pub(crate) fn success(self, what: &'static str) -> Result<Self, SinkError> {
        if self.status.is_success() { Ok(self) } else { Err(self.error(what)) }
    }

    /// The error of a successful call `what` whose answer lacks `field`.
    pub(crate) fn lacks(&self, what: &'static str, field: &str) -> SinkError {
        SinkError::Api { what, status: self.status.as_u16(), detail: format!("no {field} in the answer") }
    }

    /// A short description of an error answer: the platform's own message if any.
    pub(crate) fn detail(&self) -> String {
        ["description", "error", "message"]
            .iter()
            .find_map(|k| self.body.get(*k).and_then(Value::as_str))
            .map_or_else(|| self.body.to_string().chars().take(300).collect(), str::to_owned)
    }
}

/// The wait a platform asked for, from the `Retry-After` header or the body.
fn retry_after(headers: &HeaderMap, body: &Value) -> Option<Duration> {
    let header = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok());
    let field = body.pointer("/parameters/retry_after").or_else(|| body.get("retry_after")).and_then(Value::as_f64);
    field.or(header).filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64)
}

/// A reqwest client with the retry policy of [`SinkSettings`].
#[derive(Debug, Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    settings: SinkSettings,
}

impl Http {
    pub(crate) fn new(settings: SinkSettings) -> Self {
        let client = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .user_agent(concat!("parley/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self { client, settings }
    }

    /// Sends the request `make` builds, retrying as the module doc says. Returns the
    /// last answer whatever its status; `Err` only when no answer came.
    pub(crate) async fn send(
        &self,
        what: &'static str,
        make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Answer, SinkError> {
        let attempts = self.settings.max_attempts.max(1);
        let mut backoff = self.settings.backoff;
        for attempt in 1..=attempts {
            let last = attempt == attempts;
            match make(&self.client).send().await {
                Err(e) => {
                    let detail = e.without_url().to_string();
                    if last {
                        return Err(SinkError::Network { what, detail });
                    }
                    warn!(call = what, attempt, error = %detail, "platform call failed; retrying");
                    tokio::time::sleep(backoff).await;
                }
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    let bytes = response
                        .bytes()
                        .await
                        .map_err(|e| SinkError::Network { what, detail: e.without_url().to_string() })?;
                    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    let answer = Answer { status, body };
                    let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    if !retryable || last {
                        return Ok(answer);
                    }
                    let wait = retry_after(&headers, &answer.body).unwrap_or(backoff);
                    if wait > self.settings.max_retry_after {
                        warn!(
                            call = what,
                            wait_s = wait.as_secs_f64(),
                            "platform asked to wait longer than allowed; giving up"
                        );
                        return Ok(answer);
                    }
                    warn!(
                        call = what,
                        attempt,
                        status = status.as_u16(),
                        wait_ms = wait.as_millis() as u64,
                        "platform call refused; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
            backoff = backoff.saturating_mul(2);
        }
        Err(SinkError::Network { what, detail: "no attempt was made".into() })
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;
    use serde_json::json;

    use super::*;

    #[test]
    fn retry_after_reads_telegram_discord_and_the_header() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, &json!({"parameters": {"retry_after": 7}})), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&h, &json!({"retry_after": 0.5})), Some(Duration::from_millis(500)));
        assert_eq!(retry_after(&h, &Value::Null), None);
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h, &Value::Null), Some(Duration::from_secs(3)));
    }
}
