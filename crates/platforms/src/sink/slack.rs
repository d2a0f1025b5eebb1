//! Slack Web API replies (api.slack.com/methods): `chat.postMessage` in the thread,
//! then `chat.update` while streaming. Slack answers HTTP 200 with `"ok": false` and an
//! `error` code on failure, and 429 with `Retry-After` when rate limited.

use serde_json::{Value, json};

use super::{MessageApi, SinkError};
use crate::config::{Secret, SlackConfig};
use crate::http::{Answer, Http};
use crate::split::Unit;

/// The length Parley keeps Slack messages under: Slack advises at most 4,000
/// characters of `text` (`chat.postMessage`, "Truncating content").
pub const SLACK_LIMIT: usize = 4000;

/// The Web API client of the Slack sink.
#[derive(Debug, Clone)]
pub struct SlackApi {
    http: Http,
    api_base: String,
    token: Secret,
}

/// Where a Slack reply goes.
#[derive(Debug, Clone)]
pub struct SlackTarget {
    channel: String,
    thread_ts: Option<String>,
}

impl SlackApi {
    /// A client for `config`; `None` without a bot token.
    #[must_use]
    pub(crate) fn new(http: Http, config: &SlackConfig) -> Option<Self> {
        Some(Self { http, api_base: config.api_base.clone(), token: config.bot_token.clone()? })
    }

    async fn call(&self, what: &'static str, method: &str, body: &Value) -> Result<Answer, SinkError> {
        let url = format!("{}/{method}", self.api_base);
        let answer: Answer = self.http.send(what, |c| c.post(&url).bearer_auth(self.token.expose()).json(body)).await?;
        if answer.status.is_success() && answer.body.get("ok").and_then(Value::as_bool) == Some(true) {
            Ok(answer)
        } else {
            Err(answer.error(what))
        }
    }
}

impl MessageApi for SlackApi {
    type Target = SlackTarget;

    const NAME: &'static str = "slack";
    const LIMIT: (usize, Unit) = (SLACK_LIMIT, Unit::Chars);

    fn target(&self, rt: &Value) -> Result<SlackTarget, SinkError> {
        let channel = super::required(rt, "channel", Value::as_str, "Slack")?.to_owned();
        Ok(SlackTarget { channel, thread_ts: rt.get("thread_ts").and_then(Value::as_str).map(str::to_owned) })
    }

    async fn post(&self, target: &SlackTarget, _index: usize, text: &str) -> Result<String, SinkError> {
        const WHAT: &str = "slack chat.postMessage";
        let mut body = json!({ "channel": target.channel, "text": text, "unfurl_links": false, "unfurl_media": false });
        if let Some(ts) = &target.thread_ts {
            body["thread_ts"] = json!(ts);
        }
        let answer = self.call(WHAT, "chat.postMessage", &body).await?;
        answer.body.get("ts").and_then(Value::as_str).map(str::to_owned).ok_or_else(|| answer.lacks(WHAT, "ts"))
    }

    /// `chat.postEphemeral`: only `user` sees it, in the thread when there is one.
    async fn post_private(&self, target: &SlackTarget, user: &str, text: &str) -> Result<(), SinkError> {
        let mut body = json!({ "channel": target.channel, "user": user, "text": text });
        if let Some(ts) = &target.thread_ts {
            body["thread_ts"] = json!(ts);
        }
        self.call("slack chat.postEphemeral", "chat.postEphemeral", &body).await.map(|_| ())
    }

    async fn edit(&self, target: &SlackTarget, id: &str, text: &str) -> Result<(), SinkError> {
        let body = json!({ "channel": target.channel, "ts": id, "text": text });
        self.call("slack chat.update", "chat.update", &body).await.map(|_| ())
    }
}
