//! Outbound HTTP with retries: 5xx, 429 and network errors are retried with
//! exponential backoff ([`backon`]), honouring the platform's `Retry-After` header or `retry_after`
//! field (Telegram `parameters.retry_after`, Discord `retry_after`, in seconds).
//!
//! Errors never carry a URL (Telegram's URL holds the bot token) nor a request body.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tracing::warn;

use crate::config::SinkSettings;

/// Why a reply could not be sent. The text is safe to log: no token, no URL.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// The request did not complete (connection refused, timeout) after every attempt.
    #[error("{what}: network error: {source}")]
    Network {
        /// The API call, e.g. `telegram sendMessage`.
        what: &'static str,
        /// The HTTP client's error, with the URL removed; shared so the error stays
        /// `Clone`.
        #[source]
        source: Arc<reqwest::Error>,
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
    ///
    /// The delays come from [`backon`]: `backoff`, doubling after each attempt (without a
    /// cap), at most `max_attempts` attempts; a platform's `Retry-After` replaces the
    /// delay, and one longer than `max_retry_after` ends the retries.
    pub(crate) async fn send(
        &self,
        what: &'static str,
        make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Answer, SinkError> {
        let delays = ExponentialBuilder::new()
            .with_min_delay(self.settings.backoff)
            .with_factor(2.0)
            .without_max_delay()
            .with_max_times(usize::try_from(self.settings.max_attempts.max(1) - 1).unwrap_or(0));
        let max_retry_after = self.settings.max_retry_after;
        let mut attempt = 0_u32;
        let outcome = (|| async {
            let response = make(&self.client).send().await.map_err(|e| Failed::Network(e.without_url()))?;
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.bytes().await.map_err(|e| Failed::Unread(e.without_url()))?;
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let answer = Answer { status, body };
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                let retry_after = retry_after(&headers, &answer.body);
                return Err(Failed::Refused { answer, retry_after });
            }
            Ok(answer)
        })
        .retry(delays)
        .when(|failed| !matches!(failed, Failed::Unread(_)))
        .adjust(|failed, next| {
            let next = next?;
            let Failed::Refused { retry_after, .. } = failed else { return Some(next) };
            let wait = retry_after.unwrap_or(next);
            if wait > max_retry_after {
                warn!(
                    call = what,
                    wait_s = wait.as_secs_f64(),
                    "platform asked to wait longer than allowed; giving up"
                );
                return None;
            }
            Some(wait)
        })
        .notify(|failed, wait| {
            attempt += 1;
            match failed {
                Failed::Network(detail) => {
                    warn!(call = what, attempt, error = %detail, "platform call failed; retrying")
                }
                Failed::Refused { answer, .. } => warn!(
                    call = what,
                    attempt,
                    status = answer.status.as_u16(),
                    wait_ms = wait.as_millis() as u64,
                    "platform call refused; retrying"
                ),
                Failed::Unread(_) => {}
            }
        })
        .await;
        match outcome {
            Ok(answer) | Err(Failed::Refused { answer, .. }) => Ok(answer),
            Err(Failed::Network(e) | Failed::Unread(e)) => Err(SinkError::Network { what, source: Arc::new(e) }),
        }
    }
}

/// Why one attempt of [`Http::send`] got no usable answer.
enum Failed {
    /// The request did not complete: retried.
    Network(reqwest::Error),
    /// The answer's body could not be read: not retried.
    Unread(reqwest::Error),
    /// A 429 or 5xx answer, with the wait the platform asked for: retried.
    Refused { answer: Answer, retry_after: Option<Duration> },
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;
    use serde_json::json;
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};

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

    fn http(max_attempts: u32, backoff_ms: u64) -> Http {
        Http::new(SinkSettings {
            max_attempts,
            backoff: Duration::from_millis(backoff_ms),
            max_retry_after: Duration::from_secs(30),
            ..SinkSettings::default()
        })
    }

    async fn post(http: &Http, url: &str) -> Result<Answer, SinkError> {
        http.send("test call", |c| c.post(url).json(&json!({}))).await
    }

    #[tokio::test]
    async fn refusals_are_retried_after_doubling_delays_until_an_answer() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(2)
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
            .mount(&server)
            .await;
        let started = std::time::Instant::now();
        let answer = post(&http(4, 50), &server.uri()).await.expect("an answer");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(server.received_requests().await.map(|r| r.len()), Some(3));
        assert!(started.elapsed() >= Duration::from_millis(150), "waited 50 + 100 ms: {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn the_last_refusal_is_the_answer_after_max_attempts_and_client_errors_are_not_retried() {
        let server = MockServer::start().await;
        Mock::given(method("POST")).respond_with(ResponseTemplate::new(500)).mount(&server).await;
        let answer = post(&http(3, 5), &server.uri()).await.expect("the last answer");
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(server.received_requests().await.map(|r| r.len()), Some(3));

        let server = MockServer::start().await;
        Mock::given(method("POST")).respond_with(ResponseTemplate::new(400)).mount(&server).await;
        let answer = post(&http(3, 5), &server.uri()).await.expect("the answer");
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(server.received_requests().await.map(|r| r.len()), Some(1));
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_allowed_wait_ends_the_retries() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "60"))
            .mount(&server)
            .await;
        let answer = post(&http(4, 5), &server.uri()).await.expect("the answer");
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(server.received_requests().await.map(|r| r.len()), Some(1));
    }

    #[tokio::test]
    async fn network_errors_are_retried_then_reported_without_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/bot-secret-token/send", listener.local_addr().expect("addr"));
        drop(listener);
        let started = std::time::Instant::now();
        let err = post(&http(3, 20), &url).await.expect_err("nothing listens");
        assert!(matches!(err, SinkError::Network { what: "test call", .. }), "{err:?}");
        assert!(!err.to_string().contains("secret"), "{err}");
        // The chain reaches the refused connection beneath the client's error.
        let refused = std::iter::successors(std::error::Error::source(&err), |e| e.source())
            .filter_map(|e| e.downcast_ref::<std::io::Error>())
            .any(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
        assert!(refused, "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(60), "waited 20 + 40 ms: {:?}", started.elapsed());
    }
}
