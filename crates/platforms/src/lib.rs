//! Parley's chat platforms: inbound webhook verification and parsing, outbound reply
//! sinks (DESIGN §6, §7).
//!
//! - [`verify`]: pure signature / secret checks over the raw body bytes (Telegram,
//!   Slack, Discord, GitHub, generic). A failed check is HTTP 401 and changes nothing.
//! - [`inbound`]: pure parsers from a verified body to an [`Inbound`], one module per
//!   platform: a message for ingest (conversation external id, sender, text, dedupe key,
//!   reply target), a handshake to answer, or an event to ignore (the bot's own
//!   messages); and Discord's interaction responses ([`inbound::discord`]).
//! - [`sink`]: one [`ReplySink`](parley_orchestrator::ReplySink) per platform, posting,
//!   editing and splitting replies through each platform's API with retries.
//! - [`split`]: rendering and splitting long replies (never inside a code fence).
//! - [`config`]: configuration from `PARLEY_*` environment variables; secrets redacted.
//! - [`allow`]: who may talk to the bot (allow-lists, deny by default), checked by
//!   [`Platforms::admit`] before anything is stored.
//!
//! [`Platforms`] bundles them for the server: `parley serve` builds it from the
//! environment, registers its sinks on the orchestrator and hands it to the webhook
//! routes.

#![forbid(unsafe_code)]

pub mod allow;
pub mod config;
mod http;
pub mod inbound;
pub mod sink;
pub mod split;
pub mod verify;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod proptests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use parley_db::conversation::Delivery;
use parley_orchestrator::ReplySink;
use reqwest::header::HeaderMap;

pub use allow::{AllowList, Association, Denied, Field, Origin};
pub use config::{AllowListError, ConfigError, PlatformsConfig, Secret, SinkSettings};
pub use http::SinkError;
pub use inbound::{Inbound, InboundMessage, ParseError};
pub use verify::VerifyError;

use crate::http::Http;
use crate::sink::{DiscordApi, Driver, GenericSink, GithubApi, Notice, SlackApi, TelegramApi};

/// The current time in unix seconds; injected so tests can replay signed fixtures.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
#[must_use]
pub fn system_clock() -> Clock {
    Arc::new(|| chrono::Utc::now().timestamp())
}

/// A chat platform Parley receives webhooks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// Telegram Bot API webhooks.
    Telegram,
    /// Slack Events API.
    Slack,
    /// Discord interactions endpoint.
    Discord,
    /// GitHub repository / app webhooks.
    Github,
    /// Parley's generic signed webhook.
    Generic,
}

impl Platform {
    /// Every platform.
    pub const ALL: [Self; 5] = [Self::Telegram, Self::Slack, Self::Discord, Self::Github, Self::Generic];

    /// The name used in routes, `conversation.platform`, `conversation.owner` and the
    /// dedupe namespace.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Telegram => "telegram",
            Self::Slack => "slack",
            Self::Discord => "discord",
            Self::Github => "github",
            Self::Generic => "generic",
        }
    }

    /// Parses a platform name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// How often one sender is told they are not allowed (and the refusal logged at
/// `warn`): once per this window, per replica.
pub const DENIAL_NOTICE_INTERVAL: Duration = Duration::from_secs(3600);

/// Senders remembered by the notice limit before expired entries are pruned.
const MAX_DENIAL_ENTRIES: usize = 10_000;

/// What [`Platforms::admit`] decided about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The sender may talk to the bot.
    Allowed,
    /// The sender may not: store nothing, start no turn.
    Denied {
        /// Why (names only the sender's own identifiers).
        reason: Denied,
        /// Tell the sender, with this text: the first refusal of this sender in
        /// [`DENIAL_NOTICE_INTERVAL`] on a platform that can answer privately or in
        /// place (Telegram, Slack, Discord; never a public GitHub comment).
        notice: Option<String>,
    },
}

/// The configured platforms: verification, parsing, allow-lists and reply sinks.
pub struct Platforms {
    config: PlatformsConfig,
    clock: Clock,
    sinks: Vec<(Platform, Arc<dyn ReplySink>)>,
    notices: Vec<(Platform, Arc<dyn Notice>)>,
    /// `(platform, sender)` → when they were last told they are not allowed.
    denied_senders: Mutex<HashMap<(Platform, String), Instant>>,
    /// Refused messages per platform since start ([`Platform::ALL`] order).
    denied_count: [AtomicU64; 5],
}

impl std::fmt::Debug for Platforms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platforms").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Platforms {
    /// The platforms of `config`, on the system clock.
    #[must_use]
    pub fn new(config: PlatformsConfig) -> Self {
        Self::with_clock(config, system_clock())
    }

    /// The platforms of `config` on `clock` (Slack's replay window, Discord token age).
    #[must_use]
    pub fn with_clock(config: PlatformsConfig, clock: Clock) -> Self {
        let http = Http::new(config.sink.clone());
        let interval = config.sink.edit_interval;
        let tools = config.sink.show_tools;
        let mut sinks: Vec<(Platform, Arc<dyn ReplySink>)> = Vec::new();
        let mut notices: Vec<(Platform, Arc<dyn Notice>)> = Vec::new();
        let mut add = |platform, (sink, notice): (Arc<dyn ReplySink>, Arc<dyn Notice>)| {
            sinks.push((platform, sink));
            notices.push((platform, notice));
        };
        if let Some(api) = config.telegram.as_ref().and_then(|c| TelegramApi::new(http.clone(), c)) {
            add(Platform::Telegram, sink::shared(Driver::new(api, interval, tools)));
        }
        if let Some(api) = config.slack.as_ref().and_then(|c| SlackApi::new(http.clone(), c)) {
            add(Platform::Slack, sink::shared(Driver::new(api, interval, tools)));
        }
        if let Some(c) = &config.discord {
            let api = DiscordApi::new(http.clone(), c, Arc::clone(&clock));
            add(Platform::Discord, sink::shared(Driver::new(api, interval, tools)));
        }
        if let Some(api) = config.github.as_ref().and_then(|c| GithubApi::new(http.clone(), c)) {
            add(Platform::Github, sink::shared(Driver::new(api, interval, tools)));
        }
        if let Some(c) = &config.generic {
            sinks.push((Platform::Generic, Arc::new(GenericSink::new(http.clone(), c.secret.clone(), interval))));
        }
        Self {
            config,
            clock,
            sinks,
            notices,
            denied_senders: Mutex::new(HashMap::new()),
            denied_count: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &PlatformsConfig {
        &self.config
    }

    /// True when `platform`'s webhook secret is configured.
    #[must_use]
    pub fn is_configured(&self, platform: Platform) -> bool {
        match platform {
            Platform::Telegram => self.config.telegram.is_some(),
            Platform::Slack => self.config.slack.is_some(),
            Platform::Discord => self.config.discord.is_some(),
            Platform::Github => self.config.github.is_some(),
            Platform::Generic => self.config.generic.is_some(),
        }
    }

    /// Platforms whose webhook is configured but which cannot reply (no bot token).
    #[must_use]
    pub fn without_sink(&self) -> Vec<Platform> {
        Platform::ALL.into_iter().filter(|p| self.is_configured(*p) && self.sink(*p).is_none()).collect()
    }

    /// The delivery mode of new conversations on `platform`.
    #[must_use]
    pub fn delivery(&self, platform: Platform) -> Delivery {
        let configured = match platform {
            Platform::Telegram => self.config.telegram.as_ref().map(|c| c.delivery),
            Platform::Slack => self.config.slack.as_ref().map(|c| c.delivery),
            Platform::Discord => self.config.discord.as_ref().map(|c| c.delivery),
            Platform::Github => self.config.github.as_ref().map(|c| c.delivery),
            Platform::Generic => self.config.generic.as_ref().map(|c| c.delivery),
        };
        configured.unwrap_or(Delivery::Stream)
    }

    /// Verifies a webhook request on its raw body bytes (see [`verify`]).
    ///
    /// # Errors
    /// [`VerifyError`] when the check fails; also [`VerifyError::Mismatch`] when the
    /// platform is not configured (callers answer 404 before asking).
    pub fn verify(&self, platform: Platform, headers: &HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
        match platform {
            Platform::Telegram => {
                let c = self.config.telegram.as_ref().ok_or(VerifyError::Mismatch)?;
                verify::telegram(c.secret_token.expose(), header(headers, "x-telegram-bot-api-secret-token"))
            }
            Platform::Slack => {
                let c = self.config.slack.as_ref().ok_or(VerifyError::Mismatch)?;
                verify::slack(
                    c.signing_secret.expose(),
                    header(headers, "x-slack-request-timestamp"),
                    header(headers, "x-slack-signature"),
                    body,
                    (self.clock)(),
                )
            }
            Platform::Discord => {
                let c = self.config.discord.as_ref().ok_or(VerifyError::Mismatch)?;
                verify::discord(
                    &c.public_key,
                    header(headers, "x-signature-ed25519"),
                    header(headers, "x-signature-timestamp"),
                    body,
                )
            }
            Platform::Github => {
                let c = self.config.github.as_ref().ok_or(VerifyError::Mismatch)?;
                verify::github(c.webhook_secret.expose(), header(headers, "x-hub-signature-256"), body)
            }
            Platform::Generic => {
                let c = self.config.generic.as_ref().ok_or(VerifyError::Mismatch)?;
                verify::generic(c.secret.expose(), header(headers, verify::GENERIC_SIGNATURE_HEADER), body)
            }
        }
    }

    /// Parses a verified webhook request (see [`inbound`]).
    ///
    /// # Errors
    /// [`ParseError`] when the body or a required header cannot be understood.
    pub fn parse(&self, platform: Platform, headers: &HeaderMap, body: &[u8]) -> Result<Inbound, ParseError> {
        match platform {
            Platform::Telegram => {
                inbound::telegram::parse(body, self.config.telegram.as_ref().and_then(|c| c.bot_username.as_deref()))
            }
            Platform::Slack => {
                inbound::slack::parse(body, self.config.slack.as_ref().and_then(|c| c.bot_user_id.as_deref()))
            }
            Platform::Discord => inbound::discord::parse(body, (self.clock)()),
            Platform::Github => {
                inbound::github::parse(headers, body, self.config.github.as_ref().and_then(|c| c.bot_login.as_deref()))
            }
            Platform::Generic => inbound::generic::parse(headers, body),
        }
    }

    /// Checks a parsed message against its platform's allow-list (the generic webhook has
    /// none: its secret is the check). A refusal is counted and logged — at `warn` the
    /// first time a sender is refused in [`DENIAL_NOTICE_INTERVAL`], at `debug` after
    /// that — with the running count of refusals on the platform (`denied_total`).
    #[must_use]
    pub fn admit(&self, message: &InboundMessage) -> Admission {
        let platform = message.platform;
        let Some(list) = self.config.allow_list(platform) else { return Admission::Allowed };
        let reason = match list.check(&message.origin) {
            Ok(()) => return Admission::Allowed,
            Err(reason) => reason,
        };
        let index = Platform::ALL.iter().position(|p| *p == platform).unwrap_or(0);
        let denied_total = self.denied_count[index].fetch_add(1, Ordering::Relaxed) + 1;
        let sender = message.origin.sender().unwrap_or(&message.sender).to_owned();
        let first = self.first_denial_in_interval(platform, &sender);
        if first {
            tracing::warn!(%platform, %sender, %reason, denied_total, "message refused: the sender is not on the allow-list; nothing stored");
        } else {
            tracing::debug!(%platform, %sender, %reason, denied_total, "message refused: the sender is not on the allow-list; nothing stored");
        }
        let can_answer = matches!(platform, Platform::Telegram | Platform::Slack | Platform::Discord);
        let notice = (first && can_answer).then(|| denial_notice(&reason));
        Admission::Denied { reason, notice }
    }

    /// Messages refused by `platform`'s allow-list since this process started.
    #[must_use]
    pub fn denied_count(&self, platform: Platform) -> u64 {
        let index = Platform::ALL.iter().position(|p| *p == platform).unwrap_or(0);
        self.denied_count[index].load(Ordering::Relaxed)
    }

    /// True when `sender` was not refused on `platform` within
    /// [`DENIAL_NOTICE_INTERVAL`]; remembers this refusal.
    fn first_denial_in_interval(&self, platform: Platform, sender: &str) -> bool {
        let now = Instant::now();
        let mut senders = self.denied_senders.lock().unwrap_or_else(PoisonError::into_inner);
        if senders.len() >= MAX_DENIAL_ENTRIES {
            senders.retain(|_, at| now.duration_since(*at) < DENIAL_NOTICE_INTERVAL);
            if senders.len() >= MAX_DENIAL_ENTRIES {
                senders.clear();
            }
        }
        match senders.get(&(platform, sender.to_owned())) {
            Some(at) if now.duration_since(*at) < DENIAL_NOTICE_INTERVAL => false,
            _ => {
                senders.insert((platform, sender.to_owned()), now);
                true
            }
        }
    }

    /// Sends `text` as a reply to a message that was not stored, in the background:
    /// Slack as an ephemeral message only the sender sees, Telegram as a reply, GitHub as
    /// a comment. Logged when the platform cannot reply (no bot token) or the call fails.
    pub fn notice(&self, message: &InboundMessage, text: String) {
        let platform = message.platform;
        let Some(notice) = self.notices.iter().find(|(p, _)| *p == platform).map(|(_, n)| Arc::clone(n)) else {
            tracing::warn!(%platform, "no bot token for this platform; the notice is not sent");
            return;
        };
        let user = message.origin.sender().unwrap_or(&message.sender).to_owned();
        let sent = notice.notice(&message.reply_target, &user, &text);
        tokio::spawn(async move {
            if let Err(e) = sent.await {
                tracing::warn!(%platform, error = %e, "sending a notice failed");
            }
        });
    }

    /// The reply sink of `platform`, when it is configured to reply.
    #[must_use]
    pub fn sink(&self, platform: Platform) -> Option<Arc<dyn ReplySink>> {
        self.sinks.iter().find(|(p, _)| *p == platform).map(|(_, s)| Arc::clone(s))
    }

    /// Registers every reply sink on an orchestrator being built, and logs which
    /// platforms are served (never their secrets).
    #[must_use]
    pub fn register(&self, mut builder: parley_orchestrator::Builder) -> parley_orchestrator::Builder {
        for (name, sink) in self.sinks() {
            builder = builder.sink(name, sink);
        }
        let configured = self.config.configured();
        if !configured.is_empty() {
            tracing::info!(platforms = ?configured, "platform webhooks enabled");
        }
        for platform in Platform::ALL {
            match self.config.allow_list(platform) {
                Some(list) if list.everyone => tracing::warn!(
                    %platform,
                    "allow-list: everyone (--{}): anyone who can message the bot drives the assistant",
                    allow::allow_everyone_flag(platform).unwrap_or_default()
                ),
                Some(list) => tracing::info!(%platform, allowed = %list, "allow-list"),
                None => {}
            }
        }
        for p in self.without_sink() {
            tracing::warn!(platform = %p, "webhook configured without a bot token: messages are received but not answered");
        }
        builder
    }

    /// Every reply sink with its platform name, to register on the orchestrator
    /// (`Orchestrator::builder(..).sink(name, sink)`).
    #[must_use]
    pub fn sinks(&self) -> Vec<(&'static str, Arc<dyn ReplySink>)> {
        self.sinks.iter().map(|(p, s)| (p.as_str(), Arc::clone(s))).collect()
    }
}

/// The text telling a refused sender why: short, with the identifier the operator
/// would add.
fn denial_notice(reason: &Denied) -> String {
    let how = match reason {
        Denied::NotListed { field, value: Some(value) } => format!(" Its operator can allow {field} {value}."),
        Denied::Association { min, .. } => format!(" Only authors with the association {min} or higher may use it."),
        Denied::NotListed { value: None, .. } | Denied::NoAllowList => String::new(),
    };
    format!("Sorry, you are not allowed to use this bot here.{how}")
}

/// How long a webhook handler may take before platforms give up (Slack and Discord
/// allow 3 s); the routes log slower acknowledgements.
pub const ACK_DEADLINE: Duration = Duration::from_secs(3);
