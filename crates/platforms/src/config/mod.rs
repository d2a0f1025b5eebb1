//! Platform configuration from environment variables. A platform whose secret variable
//! is absent is not configured: its webhook answers 404 and it has no reply sink.
//!
//! Secrets are [`Secret`]s: `Debug` prints `[redacted]`, and they are never logged.
//!
//! Each chat platform has an [`AllowList`] (see [`crate::allow`]), read from
//! `PARLEY_<PLATFORM>_ALLOWED_*` and `PARLEY_<PLATFORM>_ALLOW_EVERYONE`; `parley serve`
//! also takes them as flags. [`PlatformsConfig::check_allow_lists`] refuses a configured
//! platform without one.

mod allow_lists;

use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use parley_db::conversation::ReplyMode;

pub use self::allow_lists::AllowListError;
use self::allow_lists::allow_list;
use crate::allow::AllowList;
use crate::{Platform, verify};

/// A secret string (token, signing secret): the same type the assistants use for API
/// keys; `Debug` and `Display` print `[redacted]`.
pub use parley_assistant::Secret;

/// Settings shared by every platform's reply sink.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// Minimum time between two edits of a streamed reply (platform rate limits:
    /// Telegram and Slack allow about one message update per second per chat).
    pub edit_interval: Duration,
    /// Show tool calls as compact lines above the text.
    pub show_tools: bool,
    /// Attempts per outbound API call (the first included) on 5xx, 429 and network
    /// errors.
    pub max_attempts: u32,
    /// First backoff between attempts; doubled each time. A platform's `retry_after`
    /// overrides it.
    pub backoff: Duration,
    /// The longest `retry_after` honoured; longer waits give up on that call.
    pub max_retry_after: Duration,
    /// Timeout of one outbound HTTP request.
    pub request_timeout: Duration,
}

impl Default for SinkSettings {
    fn default() -> Self {
        Self {
            edit_interval: Duration::from_secs(1),
            show_tools: true,
            max_attempts: 4,
            backoff: Duration::from_millis(250),
            max_retry_after: Duration::from_secs(30),
            request_timeout: Duration::from_secs(15),
        }
    }
}

/// Telegram Bot API settings.
#[derive(Debug, Clone)]
pub struct TelegramConfig {
    /// `PARLEY_TELEGRAM_SECRET_TOKEN`: the `secret_token` given to `setWebhook`.
    pub secret_token: Secret,
    /// `PARLEY_TELEGRAM_BOT_TOKEN`: the bot token from @BotFather (needed to reply).
    pub bot_token: Option<Secret>,
    /// `PARLEY_TELEGRAM_API_BASE` (default `https://api.telegram.org`).
    pub api_base: String,
    /// `PARLEY_TELEGRAM_BOT_USERNAME` (without `@`): stripped from mentions and commands.
    pub bot_username: Option<String>,
    /// `PARLEY_TELEGRAM_PARSE_MODE`: `MarkdownV2`, `HTML` or `Markdown`; default none
    /// (plain text). On a parse error the message is sent again as plain text.
    pub parse_mode: Option<String>,
    /// `PARLEY_TELEGRAM_REPLY_MODE`: `stream` (default) or `batch`.
    pub reply_mode: ReplyMode,
    /// Who may talk to the bot (`PARLEY_TELEGRAM_ALLOWED_*`, `PARLEY_TELEGRAM_ALLOW_EVERYONE`); the
    /// default admits nobody.
    pub allow: AllowList,
}

/// Slack Events API settings.
#[derive(Debug, Clone)]
pub struct SlackConfig {
    /// `PARLEY_SLACK_SIGNING_SECRET`: the app's signing secret.
    pub signing_secret: Secret,
    /// `PARLEY_SLACK_BOT_TOKEN`: the `xoxb-` bot token (needed to reply).
    pub bot_token: Option<Secret>,
    /// `PARLEY_SLACK_API_BASE` (default `https://slack.com/api`).
    pub api_base: String,
    /// `PARLEY_SLACK_BOT_USER_ID`: the bot's user id (`U…`); messages from it are
    /// ignored and its mention is stripped. Defaults to the event's bot authorization.
    pub bot_user_id: Option<String>,
    /// `PARLEY_SLACK_REPLY_MODE`: `stream` (default) or `batch`.
    pub reply_mode: ReplyMode,
    /// Who may talk to the bot (`PARLEY_SLACK_ALLOWED_*`, `PARLEY_SLACK_ALLOW_EVERYONE`); the
    /// default admits nobody.
    pub allow: AllowList,
}

/// Discord interactions settings.
#[derive(Debug, Clone)]
pub struct DiscordConfig {
    /// `PARLEY_DISCORD_PUBLIC_KEY`: the application's Ed25519 public key (hex).
    pub public_key: VerifyingKey,
    /// `PARLEY_DISCORD_BOT_TOKEN`: posts channel messages once an interaction token
    /// expired (15 minutes); optional.
    pub bot_token: Option<Secret>,
    /// `PARLEY_DISCORD_API_BASE` (default `https://discord.com/api/v10`).
    pub api_base: String,
    /// `PARLEY_DISCORD_REPLY_MODE`: `stream` (default) or `batch`.
    pub reply_mode: ReplyMode,
    /// Who may talk to the bot (`PARLEY_DISCORD_ALLOWED_*`, `PARLEY_DISCORD_ALLOW_EVERYONE`); the
    /// default admits nobody.
    pub allow: AllowList,
}

/// GitHub webhook settings.
#[derive(Debug, Clone)]
pub struct GithubConfig {
    /// `PARLEY_GITHUB_WEBHOOK_SECRET`: the webhook's secret.
    pub webhook_secret: Secret,
    /// `PARLEY_GITHUB_TOKEN`: a token allowed to write issue and pull request comments.
    pub token: Option<Secret>,
    /// `PARLEY_GITHUB_API_BASE` (default `https://api.github.com`).
    pub api_base: String,
    /// `PARLEY_GITHUB_BOT_LOGIN`: the bot account's login; its own comments are
    /// ignored and `@login` is stripped.
    pub bot_login: Option<String>,
    /// `PARLEY_GITHUB_REPLY_MODE`: `batch` (default) or `stream`.
    pub reply_mode: ReplyMode,
    /// Who may talk to the bot (`PARLEY_GITHUB_ALLOWED_*`, `PARLEY_GITHUB_ALLOW_EVERYONE`); the
    /// default admits nobody.
    pub allow: AllowList,
}

/// Parley's generic signed webhook settings.
#[derive(Debug, Clone)]
pub struct GenericConfig {
    /// `PARLEY_GENERIC_SECRET`: the HMAC key of `X-Parley-Signature`, both ways.
    pub secret: Secret,
    /// `PARLEY_GENERIC_REPLY_MODE`: `batch` (default) or `stream`.
    pub reply_mode: ReplyMode,
}

/// Every platform's settings; `None` = not configured.
#[derive(Debug, Clone, Default)]
pub struct PlatformsConfig {
    /// Telegram.
    pub telegram: Option<TelegramConfig>,
    /// Slack.
    pub slack: Option<SlackConfig>,
    /// Discord.
    pub discord: Option<DiscordConfig>,
    /// GitHub.
    pub github: Option<GithubConfig>,
    /// The generic webhook.
    pub generic: Option<GenericConfig>,
    /// Reply sink behaviour.
    pub sink: SinkSettings,
}

/// A configuration variable with a bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    /// The variable's name.
    pub var: &'static str,
    /// What is wrong (never the value of a secret).
    pub message: String,
}

/// A reply mode variable (`stream` or `batch`), `default` when unset. `deprecated` is the
/// variable's name from before the mode was called the reply mode
/// (`PARLEY_<PLATFORM>_DELIVERY`): still read, with a warning, when `var` is unset.
fn reply_mode(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    deprecated: &'static str,
    default: ReplyMode,
) -> Result<ReplyMode, ConfigError> {
    let set = |name: &'static str| lookup(name).filter(|v| !v.trim().is_empty()).map(|v| (name, v));
    let found = set(var).or_else(|| {
        let old = set(deprecated);
        if old.is_some() {
            tracing::warn!("{deprecated} is deprecated: set {var} instead");
        }
        old
    });
    match found {
        None => Ok(default),
        Some((var, v)) => v
            .trim()
            .parse::<ReplyMode>()
            .map_err(|_| ConfigError { var, message: format!("must be stream or batch, not {v:?}") }),
    }
}

/// A platform API's base URL (`default` when unset), without a trailing `/`.
fn base(lookup: &impl Fn(&str) -> Option<String>, var: &'static str, default: &str) -> Result<String, ConfigError> {
    let value = lookup(var).filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_owned());
    let value = value.trim().trim_end_matches('/').to_owned();
    if !(value.starts_with("http://") || value.starts_with("https://")) {
        return Err(ConfigError { var, message: "must be an http:// or https:// URL".into() });
    }
    Ok(value)
}

/// A variable's trimmed value; `None` when unset or blank.
pub(super) fn opt(lookup: &impl Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    lookup(var).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Parses a boolean variable: `true`/`1`/`yes`/`on` or `false`/`0`/`no`/`off`.
pub(super) fn flag(lookup: &impl Fn(&str) -> Option<String>, var: &'static str) -> Result<bool, ConfigError> {
    match opt(lookup, var).map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("0" | "false" | "no" | "off") => Ok(false),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some(other) => Err(ConfigError { var, message: format!("must be true or false, not {other:?}") }),
    }
}

impl PlatformsConfig {
    /// Reads the configuration from the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable with a bad value.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `lookup` (a variable name → its value), so tests
    /// need not touch the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable with a bad value.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let telegram = match opt(&lookup, "PARLEY_TELEGRAM_SECRET_TOKEN") {
            None => None,
            Some(secret) => Some(TelegramConfig {
                secret_token: Secret::new(secret),
                bot_token: opt(&lookup, "PARLEY_TELEGRAM_BOT_TOKEN").map(Secret::new),
                api_base: base(&lookup, "PARLEY_TELEGRAM_API_BASE", "https://api.telegram.org")?,
                bot_username: opt(&lookup, "PARLEY_TELEGRAM_BOT_USERNAME")
                    .map(|u| u.trim_start_matches('@').to_owned()),
                parse_mode: opt(&lookup, "PARLEY_TELEGRAM_PARSE_MODE"),
                reply_mode: reply_mode(
                    &lookup,
                    "PARLEY_TELEGRAM_REPLY_MODE",
                    "PARLEY_TELEGRAM_DELIVERY",
                    ReplyMode::Stream,
                )?,
                allow: allow_list(&lookup, Platform::Telegram)?,
            }),
        };
        let slack = match opt(&lookup, "PARLEY_SLACK_SIGNING_SECRET") {
            None => None,
            Some(secret) => Some(SlackConfig {
                signing_secret: Secret::new(secret),
                bot_token: opt(&lookup, "PARLEY_SLACK_BOT_TOKEN").map(Secret::new),
                api_base: base(&lookup, "PARLEY_SLACK_API_BASE", "https://slack.com/api")?,
                bot_user_id: opt(&lookup, "PARLEY_SLACK_BOT_USER_ID"),
                reply_mode: reply_mode(&lookup, "PARLEY_SLACK_REPLY_MODE", "PARLEY_SLACK_DELIVERY", ReplyMode::Stream)?,
                allow: allow_list(&lookup, Platform::Slack)?,
            }),
        };
        let discord = match opt(&lookup, "PARLEY_DISCORD_PUBLIC_KEY") {
            None => None,
            Some(key) => Some(DiscordConfig {
                public_key: verify::discord_public_key(&key)
                    .map_err(|message| ConfigError { var: "PARLEY_DISCORD_PUBLIC_KEY", message })?,
                bot_token: opt(&lookup, "PARLEY_DISCORD_BOT_TOKEN").map(Secret::new),
                api_base: base(&lookup, "PARLEY_DISCORD_API_BASE", "https://discord.com/api/v10")?,
                reply_mode: reply_mode(
                    &lookup,
                    "PARLEY_DISCORD_REPLY_MODE",
                    "PARLEY_DISCORD_DELIVERY",
                    ReplyMode::Stream,
                )?,
                allow: allow_list(&lookup, Platform::Discord)?,
            }),
        };
        let github = match opt(&lookup, "PARLEY_GITHUB_WEBHOOK_SECRET") {
            None => None,
            Some(secret) => Some(GithubConfig {
                webhook_secret: Secret::new(secret),
                token: opt(&lookup, "PARLEY_GITHUB_TOKEN").map(Secret::new),
                api_base: base(&lookup, "PARLEY_GITHUB_API_BASE", "https://api.github.com")?,
                bot_login: opt(&lookup, "PARLEY_GITHUB_BOT_LOGIN").map(|u| u.trim_start_matches('@').to_owned()),
                reply_mode: reply_mode(
                    &lookup,
                    "PARLEY_GITHUB_REPLY_MODE",
                    "PARLEY_GITHUB_DELIVERY",
                    ReplyMode::Batch,
                )?,
                allow: allow_list(&lookup, Platform::Github)?,
            }),
        };
        let generic = match opt(&lookup, "PARLEY_GENERIC_SECRET") {
            None => None,
            Some(secret) => Some(GenericConfig {
                secret: Secret::new(secret),
                reply_mode: reply_mode(
                    &lookup,
                    "PARLEY_GENERIC_REPLY_MODE",
                    "PARLEY_GENERIC_DELIVERY",
                    ReplyMode::Batch,
                )?,
            }),
        };
        let mut sink = SinkSettings::default();
        if let Some(ms) = opt(&lookup, "PARLEY_PLATFORM_EDIT_INTERVAL_MS") {
            let ms: u64 = ms.parse().map_err(|_| ConfigError {
                var: "PARLEY_PLATFORM_EDIT_INTERVAL_MS",
                message: "must be a whole number of milliseconds".into(),
            })?;
            sink.edit_interval = Duration::from_millis(ms);
        }
        if let Some(v) = opt(&lookup, "PARLEY_PLATFORM_SHOW_TOOLS") {
            sink.show_tools = !matches!(v.to_ascii_lowercase().as_str(), "0" | "false" | "no" | "off");
        }
        Ok(Self { telegram, slack, discord, github, generic, sink })
    }

    /// The names of the configured platforms.
    #[must_use]
    pub fn configured(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.telegram.is_some() {
            names.push("telegram");
        }
        if self.slack.is_some() {
            names.push("slack");
        }
        if self.discord.is_some() {
            names.push("discord");
        }
        if self.github.is_some() {
            names.push("github");
        }
        if self.generic.is_some() {
            names.push("generic");
        }
        names
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<PlatformsConfig, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        PlatformsConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn absent_secrets_leave_platforms_unconfigured() {
        let c = config(&[]).unwrap();
        assert!(c.configured().is_empty());
        let c = config(&[("PARLEY_TELEGRAM_SECRET_TOKEN", "s"), ("PARLEY_GITHUB_WEBHOOK_SECRET", "g")]).unwrap();
        assert_eq!(c.configured(), vec!["telegram", "github"]);
        assert_eq!(c.telegram.as_ref().unwrap().api_base, "https://api.telegram.org");
        assert_eq!(c.telegram.as_ref().unwrap().reply_mode, ReplyMode::Stream);
        assert_eq!(c.github.as_ref().unwrap().reply_mode, ReplyMode::Batch);
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = config(&[
            ("PARLEY_TELEGRAM_SECRET_TOKEN", "tg-very-secret"),
            ("PARLEY_TELEGRAM_BOT_TOKEN", "123:bot-token-value"),
            ("PARLEY_SLACK_SIGNING_SECRET", "slack-signing-value"),
            ("PARLEY_SLACK_BOT_TOKEN", "xoxb-value"),
            ("PARLEY_GENERIC_SECRET", "generic-value"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        for secret in ["tg-very-secret", "bot-token-value", "slack-signing-value", "xoxb-value", "generic-value"] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
        assert!(shown.contains("[redacted]"));
    }

    #[test]
    fn the_deprecated_delivery_variable_still_sets_the_reply_mode() {
        let secret = ("PARLEY_SLACK_SIGNING_SECRET", "s");
        let c = config(&[secret, ("PARLEY_SLACK_DELIVERY", "batch")]).unwrap();
        assert_eq!(c.slack.as_ref().unwrap().reply_mode, ReplyMode::Batch);
        let c = config(&[secret, ("PARLEY_SLACK_DELIVERY", "batch"), ("PARLEY_SLACK_REPLY_MODE", "stream")]).unwrap();
        assert_eq!(c.slack.as_ref().unwrap().reply_mode, ReplyMode::Stream, "the new name wins");
        let e = config(&[secret, ("PARLEY_SLACK_DELIVERY", "often")]).unwrap_err();
        assert_eq!(e.var, "PARLEY_SLACK_DELIVERY", "the error names the variable that was set");
    }

    #[test]
    fn bad_values_name_their_variable() {
        let e = config(&[("PARLEY_SLACK_SIGNING_SECRET", "s"), ("PARLEY_SLACK_REPLY_MODE", "often")]).unwrap_err();
        assert_eq!(e.var, "PARLEY_SLACK_REPLY_MODE");
        let e = config(&[("PARLEY_DISCORD_PUBLIC_KEY", "abc")]).unwrap_err();
        assert_eq!(e.var, "PARLEY_DISCORD_PUBLIC_KEY");
        let e = config(&[("PARLEY_TELEGRAM_SECRET_TOKEN", "s"), ("PARLEY_TELEGRAM_API_BASE", "ftp://x")]).unwrap_err();
        assert_eq!(e.var, "PARLEY_TELEGRAM_API_BASE");
    }
}
