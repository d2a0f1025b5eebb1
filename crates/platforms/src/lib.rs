//! Parley's chat platforms: inbound webhook verification and parsing, outbound reply
//! sinks (DESIGN §6, §7).
//!
//! - [`verify`]: pure signature / secret checks over the raw body bytes (Telegram,
//!   Slack, Discord, GitHub, generic). A failed check is HTTP 401 and changes nothing.
//! - [`inbound`]: pure parsers from a verified body to an [`Inbound`]: a message for
//!   ingest (conversation external id, sender, text, dedupe key, reply target), a
//!   handshake to answer, or an event to ignore (the bot's own messages).
//! - [`sink`]: one [`ReplySink`](parley_orchestrator::ReplySink) per platform, posting,
//!   editing and splitting replies through each platform's API with retries.
//! - [`split`]: rendering and splitting long replies (never inside a code fence).
//! - [`config`]: configuration from `PARLEY_*` environment variables; secrets redacted.
//!
//! [`Platforms`] bundles them for the server: `parley serve` builds it from the
//! environment, registers its sinks on the orchestrator and hands it to the webhook
//! routes.

#![forbid(unsafe_code)]

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

use std::sync::Arc;
use std::time::Duration;

use parley_db::conversation::Delivery;
use parley_orchestrator::ReplySink;
use reqwest::header::HeaderMap;

pub use config::{ConfigError, PlatformsConfig, Secret, SinkSettings};
pub use http::SinkError;
pub use inbound::{Inbound, InboundMessage, ParseError};
pub use verify::VerifyError;

use crate::http::Http;
use crate::sink::{DiscordApi, Driver, GenericSink, GithubApi, SlackApi, TelegramApi};

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

/// The configured platforms: verification, parsing and reply sinks.
pub struct Platforms {
    config: PlatformsConfig,
    clock: Clock,
    sinks: Vec<(Platform, Arc<dyn ReplySink>)>,
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
        if let Some(api) = config.telegram.as_ref().and_then(|c| TelegramApi::new(http.clone(), c)) {
            sinks.push((Platform::Telegram, Arc::new(Driver::new(api, interval, tools))));
        }
        if let Some(api) = config.slack.as_ref().and_then(|c| SlackApi::new(http.clone(), c)) {
            sinks.push((Platform::Slack, Arc::new(Driver::new(api, interval, tools))));
        }
        if let Some(c) = &config.discord {
            let api = DiscordApi::new(http.clone(), c, Arc::clone(&clock));
            sinks.push((Platform::Discord, Arc::new(Driver::new(api, interval, tools))));
        }
        if let Some(api) = config.github.as_ref().and_then(|c| GithubApi::new(http.clone(), c)) {
            sinks.push((Platform::Github, Arc::new(Driver::new(api, interval, tools))));
        }
        if let Some(c) = &config.generic {
            sinks.push((Platform::Generic, Arc::new(GenericSink::new(http.clone(), c.secret.clone(), interval))));
        }
        Self { config, clock, sinks }
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
                inbound::telegram(body, self.config.telegram.as_ref().and_then(|c| c.bot_username.as_deref()))
            }
            Platform::Slack => inbound::slack(body, self.config.slack.as_ref().and_then(|c| c.bot_user_id.as_deref())),
            Platform::Discord => inbound::discord(body, (self.clock)()),
            Platform::Github => {
                inbound::github(headers, body, self.config.github.as_ref().and_then(|c| c.bot_login.as_deref()))
            }
            Platform::Generic => inbound::generic(headers, body),
        }
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

/// How long a webhook handler may take before platforms give up (Slack and Discord
/// allow 3 s); the routes log slower acknowledgements.
pub const ACK_DEADLINE: Duration = Duration::from_secs(3);
