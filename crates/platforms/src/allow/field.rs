//! The identifiers an allow-list restricts ([`Field`]), and the `parley serve` flags
//! and environment variables that set them.

use std::fmt;

use crate::Platform;

/// One kind of identifier an allow-list can restrict, with its flag and environment
/// variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// Telegram `message.from.id` (a number).
    TelegramUser,
    /// Telegram `message.chat.id` (a number; negative for groups; a private chat's ID is
    /// its user's ID).
    TelegramChat,
    /// Slack team (workspace) ID, `T…`: every team ID the event carries (`team_id`,
    /// `event.team`, `event.user_team`, `event.source_team`) must be listed, so a user
    /// of another workspace in a Slack Connect channel does not pass.
    SlackTeam,
    /// Slack channel ID, `C…`/`G…`/`D…` (`event.channel`).
    SlackChannel,
    /// Slack user ID, `U…`/`W…` (`event.user`).
    SlackUser,
    /// Discord guild (server) ID (`guild_id`); a direct message has none and does not
    /// pass a guild list.
    DiscordGuild,
    /// Discord channel ID (`channel_id`).
    DiscordChannel,
    /// Discord user ID (`member.user.id`, or `user.id` in a direct message).
    DiscordUser,
    /// GitHub repository `owner/name` (`repository.full_name`; case-insensitive).
    GithubRepository,
    /// GitHub login of the sender (`sender.login`; case-insensitive).
    GithubSender,
}

impl Field {
    /// Every field.
    pub const ALL: [Self; 10] = [
        Self::TelegramUser,
        Self::TelegramChat,
        Self::SlackTeam,
        Self::SlackChannel,
        Self::SlackUser,
        Self::DiscordGuild,
        Self::DiscordChannel,
        Self::DiscordUser,
        Self::GithubRepository,
        Self::GithubSender,
    ];

    /// The platform it belongs to.
    #[must_use]
    pub fn platform(self) -> Platform {
        match self {
            Self::TelegramUser | Self::TelegramChat => Platform::Telegram,
            Self::SlackTeam | Self::SlackChannel | Self::SlackUser => Platform::Slack,
            Self::DiscordGuild | Self::DiscordChannel | Self::DiscordUser => Platform::Discord,
            Self::GithubRepository | Self::GithubSender => Platform::Github,
        }
    }

    /// The `parley serve` flag that lists it, without the dashes
    /// (`telegram-allowed-users`).
    #[must_use]
    pub fn flag(self) -> &'static str {
        match self {
            Self::TelegramUser => "telegram-allowed-users",
            Self::TelegramChat => "telegram-allowed-chats",
            Self::SlackTeam => "slack-allowed-teams",
            Self::SlackChannel => "slack-allowed-channels",
            Self::SlackUser => "slack-allowed-users",
            Self::DiscordGuild => "discord-allowed-guilds",
            Self::DiscordChannel => "discord-allowed-channels",
            Self::DiscordUser => "discord-allowed-users",
            Self::GithubRepository => "github-allowed-repos",
            Self::GithubSender => "github-allowed-senders",
        }
    }

    /// The environment variable behind the flag (`PARLEY_TELEGRAM_ALLOWED_USERS`):
    /// comma-separated values.
    #[must_use]
    pub fn env(self) -> &'static str {
        match self {
            Self::TelegramUser => "PARLEY_TELEGRAM_ALLOWED_USERS",
            Self::TelegramChat => "PARLEY_TELEGRAM_ALLOWED_CHATS",
            Self::SlackTeam => "PARLEY_SLACK_ALLOWED_TEAMS",
            Self::SlackChannel => "PARLEY_SLACK_ALLOWED_CHANNELS",
            Self::SlackUser => "PARLEY_SLACK_ALLOWED_USERS",
            Self::DiscordGuild => "PARLEY_DISCORD_ALLOWED_GUILDS",
            Self::DiscordChannel => "PARLEY_DISCORD_ALLOWED_CHANNELS",
            Self::DiscordUser => "PARLEY_DISCORD_ALLOWED_USERS",
            Self::GithubRepository => "PARLEY_GITHUB_ALLOWED_REPOS",
            Self::GithubSender => "PARLEY_GITHUB_ALLOWED_SENDERS",
        }
    }

    /// What it is, for people (`Telegram user ID`).
    #[must_use]
    pub fn what(self) -> &'static str {
        match self {
            Self::TelegramUser => "Telegram user ID",
            Self::TelegramChat => "Telegram chat ID",
            Self::SlackTeam => "Slack team ID",
            Self::SlackChannel => "Slack channel ID",
            Self::SlackUser => "Slack user ID",
            Self::DiscordGuild => "Discord server (guild) ID",
            Self::DiscordChannel => "Discord channel ID",
            Self::DiscordUser => "Discord user ID",
            Self::GithubRepository => "GitHub repository",
            Self::GithubSender => "GitHub login",
        }
    }

    /// The fields of `platform`.
    pub fn of(platform: Platform) -> impl Iterator<Item = Self> {
        Self::ALL.into_iter().filter(move |f| f.platform() == platform)
    }

    /// A value as compared: trimmed; GitHub names are case-insensitive.
    pub(super) fn normalize(self, value: &str) -> String {
        let value = value.trim();
        match self {
            Self::GithubRepository | Self::GithubSender => value.to_ascii_lowercase(),
            _ => value.to_owned(),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what())
    }
}

/// The `parley serve` flag that admits everyone on `platform`, without the dashes
/// (`telegram-allow-everyone`); `None` for the generic webhook.
#[must_use]
pub fn allow_everyone_flag(platform: Platform) -> Option<&'static str> {
    match platform {
        Platform::Telegram => Some("telegram-allow-everyone"),
        Platform::Slack => Some("slack-allow-everyone"),
        Platform::Discord => Some("discord-allow-everyone"),
        Platform::Github => Some("github-allow-everyone"),
        Platform::Generic => None,
    }
}

/// The environment variable behind [`allow_everyone_flag`] (`PARLEY_TELEGRAM_ALLOW_EVERYONE`).
#[must_use]
pub fn allow_everyone_env(platform: Platform) -> Option<&'static str> {
    match platform {
        Platform::Telegram => Some("PARLEY_TELEGRAM_ALLOW_EVERYONE"),
        Platform::Slack => Some("PARLEY_SLACK_ALLOW_EVERYONE"),
        Platform::Discord => Some("PARLEY_DISCORD_ALLOW_EVERYONE"),
        Platform::Github => Some("PARLEY_GITHUB_ALLOW_EVERYONE"),
        Platform::Generic => None,
    }
}

/// The flag of GitHub's minimum `author_association`, without the dashes.
pub const GITHUB_MIN_ASSOCIATION_FLAG: &str = "github-min-association";
/// The environment variable behind [`GITHUB_MIN_ASSOCIATION_FLAG`].
pub const GITHUB_MIN_ASSOCIATION_ENV: &str = "PARLEY_GITHUB_MIN_ASSOCIATION";
