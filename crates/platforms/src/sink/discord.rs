//! Discord replies (discord.com/developers/docs/interactions/receiving-and-responding):
//! the webhook answered the interaction with a deferred response (type 5); the reply
//! edits the original response (`PATCH /webhooks/{application}/{token}/messages/@original`),
//! continues in follow-up messages (`POST /webhooks/{application}/{token}?wait=true`)
//! past 2,000 characters, and — once the 15-minute interaction token has expired, or
//! the webhook is gone — posts channel messages with the bot token
//! (`POST /channels/{channel}/messages`). Mentions are never pinged
//! (`allowed_mentions.parse = []`).

use serde_json::{Value, json};

use super::{MessageApi, SinkError};
use crate::Clock;
use crate::config::{DiscordConfig, Secret};
use crate::http::{Answer, Http};
use crate::split::Unit;

/// Discord's message `content` limit, in characters.
pub const DISCORD_LIMIT: usize = 2000;

/// How long an interaction token is used: 15 minutes less a margin.
const TOKEN_LIFETIME_SECS: i64 = 15 * 60 - 30;

/// The prefix of ids of channel messages (posted with the bot token).
const CHANNEL_PREFIX: &str = "channel:";

/// The API client of the Discord sink.
#[derive(Clone)]
pub struct DiscordApi {
    http: Http,
    api_base: String,
    bot_token: Option<Secret>,
    clock: Clock,
}

impl std::fmt::Debug for DiscordApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordApi").field("api_base", &self.api_base).finish_non_exhaustive()
    }
}

/// Where a Discord reply goes.
#[derive(Debug, Clone)]
pub struct DiscordTarget {
    application_id: String,
    token: String,
    channel_id: String,
    received_at: i64,
}

impl DiscordApi {
    pub(crate) fn new(http: Http, config: &DiscordConfig, clock: Clock) -> Self {
        Self { http, api_base: config.api_base.clone(), bot_token: config.bot_token.clone(), clock }
    }

    fn token_fresh(&self, target: &DiscordTarget) -> bool {
        (self.clock)() - target.received_at < TOKEN_LIFETIME_SECS
    }

    fn body(text: &str) -> Value {
        json!({ "content": text, "allowed_mentions": { "parse": [] } })
    }

    /// Sends a message body with `text` to `path`: an interaction webhook (its token is
    /// in the path), or with `bot` a channel endpoint, which needs the bot token.
    async fn call(
        &self,
        what: &'static str,
        method: reqwest::Method,
        path: &str,
        text: &str,
        bot: bool,
    ) -> Result<Answer, SinkError> {
        let auth = match (bot, &self.bot_token) {
            (false, _) => None,
            (true, Some(token)) => Some(format!("Bot {}", token.expose())),
            (true, None) => {
                return Err(SinkError::Target(
                    "the Discord interaction token expired and PARLEY_DISCORD_BOT_TOKEN is not set".into(),
                ));
            }
        };
        let url = format!("{}{path}", self.api_base);
        let body = Self::body(text);
        self.http
            .send(what, |c| {
                let request = c.request(method.clone(), &url).json(&body);
                match &auth {
                    Some(auth) => request.header("authorization", auth),
                    None => request,
                }
            })
            .await
    }

    fn id_of(what: &'static str, answer: &Answer) -> Result<String, SinkError> {
        answer.body.get("id").and_then(Value::as_str).map(str::to_owned).ok_or_else(|| answer.lacks(what, "message id"))
    }

    async fn post_channel(&self, target: &DiscordTarget, text: &str) -> Result<String, SinkError> {
        const WHAT: &str = "discord create message";
        let path = format!("/channels/{}/messages", target.channel_id);
        let answer = self.call(WHAT, reqwest::Method::POST, &path, text, true).await?.success(WHAT)?;
        Ok(format!("{CHANNEL_PREFIX}{}", Self::id_of(WHAT, &answer)?))
    }

    /// True when the interaction webhook is gone (unknown webhook / invalid token).
    fn webhook_gone(answer: &Answer) -> bool {
        matches!(answer.status.as_u16(), 401 | 404)
    }
}

impl MessageApi for DiscordApi {
    type Target = DiscordTarget;

    const NAME: &'static str = "discord";
    const LIMIT: (usize, Unit) = (DISCORD_LIMIT, Unit::Chars);

    fn target(&self, rt: &Value) -> Result<DiscordTarget, SinkError> {
        let s = |k: &str| rt.get(k).and_then(Value::as_str).map(str::to_owned);
        match (s("application_id"), s("token"), s("channel_id")) {
            (Some(application_id), Some(token), Some(channel_id)) => Ok(DiscordTarget {
                application_id,
                token,
                channel_id,
                received_at: rt.get("received_at").and_then(Value::as_i64).unwrap_or(0),
            }),
            _ => Err(SinkError::Target("the Discord reply target lacks application_id, token or channel_id".into())),
        }
    }

    async fn post(&self, target: &DiscordTarget, index: usize, text: &str) -> Result<String, SinkError> {
        if !self.token_fresh(target) {
            return self.post_channel(target, text).await;
        }
        let base = format!("/webhooks/{}/{}", target.application_id, target.token);
        let answer = if index == 0 {
            const WHAT: &str = "discord edit original response";
            let answer =
                self.call(WHAT, reqwest::Method::PATCH, &format!("{base}/messages/@original"), text, false).await?;
            if answer.status.is_success() {
                return Ok("@original".into());
            }
            answer
        } else {
            const WHAT: &str = "discord create follow-up";
            let answer = self.call(WHAT, reqwest::Method::POST, &format!("{base}?wait=true"), text, false).await?;
            if answer.status.is_success() {
                return Self::id_of(WHAT, &answer);
            }
            answer
        };
        if Self::webhook_gone(&answer) && self.bot_token.is_some() {
            return self.post_channel(target, text).await;
        }
        Err(answer.error("discord interaction reply"))
    }

    async fn edit(&self, target: &DiscordTarget, id: &str, text: &str) -> Result<(), SinkError> {
        if let Some(message) = id.strip_prefix(CHANNEL_PREFIX) {
            const WHAT: &str = "discord edit message";
            let path = format!("/channels/{}/messages/{message}", target.channel_id);
            return self.call(WHAT, reqwest::Method::PATCH, &path, text, true).await?.success(WHAT).map(|_| ());
        }
        if !self.token_fresh(target) {
            return Err(SinkError::Target(
                "the Discord interaction token expired; the reply continues in a new message".into(),
            ));
        }
        const WHAT: &str = "discord edit interaction message";
        let path = format!("/webhooks/{}/{}/messages/{id}", target.application_id, target.token);
        self.call(WHAT, reqwest::Method::PATCH, &path, text, false).await?.success(WHAT).map(|_| ())
    }
}
