//! Parley's chat platforms: inbound webhook verification and parsing, outbound reply
//! sinks.
//!
//! - [`verify`]: pure signature / secret checks over the raw body bytes (Telegram,
//!   Slack, Discord, GitHub, generic). A failed check is HTTP 401 and changes nothing.
//! - [`inbound`]: pure parsers from a verified body to an [`Inbound`], one module per
//!   platform: a message for ingest (conversation external id, sender, text, idempotency key,
//!   reply target), a handshake to answer, or an event to ignore (the bot's own
//!   messages); and Discord's interaction responses ([`inbound::discord`]).
//! - [`allow`]: who may talk to the bot (allow-lists, deny by default), checked by
//!   [`Platforms::admit`] ([`admission`]) before anything is stored.
//! - [`reply`]: the [`ReplySink`] trait and the [`ReplyUpdate`]s a running turn hands
//!   it; [`sink`]: one [`ReplySink`] per platform, posting, editing and splitting replies
//!   through each platform's API with retries.
//! - [`split`]: rendering and splitting long replies (never inside a code fence).
//! - [`config`]: configuration from `PARLEY_*` environment variables; secrets redacted.
//!
//! [`Platforms`] bundles them: `parley serve` builds it from the environment, the
//! orchestrator registers its reply sinks (`parley_orchestrator::Builder::platforms`),
//! and the webhook routes verify, parse and admit with it.
//!
//! This crate uses only the leaf crates' types — `parley_db`'s conversation row and
//! reply mode, `parley_assistant`'s `Secret` — and never the orchestrator or the
//! server: dependencies run `server → orchestrator → {assistant, platforms, db}`.

#![forbid(unsafe_code)]

pub mod admission;
pub mod allow;
pub mod config;
mod http;
pub mod inbound;
mod platform;
pub mod reply;
pub mod sink;
pub mod split;
pub mod verify;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod proptests;

use std::sync::Arc;
use std::time::Duration;

use parley_db::conversation::ReplyMode;
use reqwest::header::HeaderMap;

pub use admission::{Admission, DENIAL_NOTICE_INTERVAL};
pub use allow::{AllowList, Association, Denied, Field, Origin};
pub use config::{AllowListError, ConfigError, PlatformsConfig, Secret, SinkSettings};
pub use http::SinkError;
pub use inbound::{Inbound, InboundMessage, ParseError};
pub use platform::Platform;
pub use reply::{ReplySink, ReplyStatus, ReplyUpdate};
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

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The configured platforms: verification, parsing, allow-lists and reply sinks.
pub struct Platforms {
    config: PlatformsConfig,
    clock: Clock,
    sinks: Vec<(Platform, Arc<dyn ReplySink>)>,
    notices: Vec<(Platform, Arc<dyn Notice>)>,
    denials: admission::Denials,
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
        Self { config, clock, sinks, notices, denials: admission::Denials::default() }
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

    /// The reply mode of new conversations on `platform`.
    #[must_use]
    pub fn reply_mode(&self, platform: Platform) -> ReplyMode {
        let configured = match platform {
            Platform::Telegram => self.config.telegram.as_ref().map(|c| c.reply_mode),
            Platform::Slack => self.config.slack.as_ref().map(|c| c.reply_mode),
            Platform::Discord => self.config.discord.as_ref().map(|c| c.reply_mode),
            Platform::Github => self.config.github.as_ref().map(|c| c.reply_mode),
            Platform::Generic => self.config.generic.as_ref().map(|c| c.reply_mode),
        };
        configured.unwrap_or(ReplyMode::Stream)
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
        let c = &self.config;
        match platform {
            Platform::Telegram => {
                inbound::telegram::parse(body, c.telegram.as_ref().and_then(|c| c.bot_username.as_deref()))
            }
            Platform::Slack => inbound::slack::parse(body, c.slack.as_ref().and_then(|c| c.bot_user_id.as_deref())),
            Platform::Discord => inbound::discord::parse(body, (self.clock)()),
            Platform::Github => {
                inbound::github::parse(headers, body, c.github.as_ref().and_then(|c| c.bot_login.as_deref()))
            }
            Platform::Generic => inbound::generic::parse(headers, body),
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

    /// Every reply sink with its platform, to register on the orchestrator under
    /// [`Platform::as_str`] (`conversation.platform`).
    #[must_use]
    pub fn sinks(&self) -> Vec<(Platform, Arc<dyn ReplySink>)> {
        self.sinks.iter().map(|(p, s)| (*p, Arc::clone(s))).collect()
    }

    /// Logs how the platforms are set up (never their secrets): which webhooks are
    /// enabled, each allow-list (a warning for "everyone"), and platforms that receive
    /// messages but cannot answer (no bot token).
    pub fn log_configuration(&self) {
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
    }
}

/// How long a webhook handler may take before platforms give up (Slack and Discord
/// allow 3 s); the routes log slower acknowledgements.
pub const ACK_DEADLINE: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    /// The crate's normal dependencies, from its manifest.
    fn dependencies() -> Vec<&'static str> {
        let manifest = include_str!("../Cargo.toml");
        let section = manifest.split("\n[dependencies]\n").nth(1).unwrap_or_default();
        let section = section.split("\n[").next().unwrap_or_default();
        section.lines().filter_map(|line| line.split(['.', ' ', '=']).next()).filter(|n| !n.is_empty()).collect()
    }

    #[test]
    fn dependencies_point_one_way() {
        let deps = dependencies();
        assert!(deps.contains(&"parley-db") && deps.contains(&"reqwest"), "the manifest was read: {deps:?}");
        for upstream in ["parley-orchestrator", "parley-server"] {
            assert!(!deps.contains(&upstream), "platforms must not depend on {upstream}: {deps:?}");
        }
    }
}
