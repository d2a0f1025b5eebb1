//! Who may talk to the bot: the allow-list of each chat platform, checked on every
//! verified message before anything is stored, and the limit on "not allowed" notices.
//!
//! An allow-list is a set of identifiers per [`Field`] (Telegram user and chat IDs;
//! Slack team, channel and user IDs; Discord guild, channel and user IDs; GitHub
//! repositories and sender logins) plus, for GitHub, a minimum [`Association`]. A message
//! is admitted when it passes **every** restriction that is set: each list that is not
//! empty must contain the message's identifier for that field, and its
//! `author_association` must rank at least the minimum. A list left empty does not
//! restrict, so adding a list only ever narrows who may talk.
//!
//! **Deny by default.** A platform whose allow-list has no restriction admits nobody,
//! and `parley serve` refuses to start with such a platform configured
//! ([`crate::PlatformsConfig::check_allow_lists`]) unless the operator says
//! `--<platform>-allow-everyone` ([`AllowList::everyone`]). The generic webhook has no
//! allow-list: whoever holds its secret is trusted.

use std::collections::{BTreeMap, BTreeSet};
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
    fn normalize(self, value: &str) -> String {
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

/// How the author of a GitHub issue or comment is associated with the repository
/// (`author_association` in GitHub's webhook payloads and REST API, "AuthorAssociation"
/// in GitHub's OpenAPI description), in GitHub's order from most to least trusted.
/// `MANNEQUIN` (a placeholder for an unclaimed user) ranks as `NONE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Association {
    /// `NONE` (and `MANNEQUIN`): no association.
    None,
    /// `FIRST_TIMER`: has not committed to GitHub before.
    FirstTimer,
    /// `FIRST_TIME_CONTRIBUTOR`: has not committed to this repository before.
    FirstTimeContributor,
    /// `CONTRIBUTOR`: has committed to the repository.
    Contributor,
    /// `COLLABORATOR`: invited to collaborate on the repository.
    Collaborator,
    /// `MEMBER`: a member of the organisation that owns the repository.
    Member,
    /// `OWNER`: owns the repository.
    Owner,
}

impl Association {
    /// Every value, most trusted first.
    pub const ALL: [Self; 7] = [
        Self::Owner,
        Self::Member,
        Self::Collaborator,
        Self::Contributor,
        Self::FirstTimeContributor,
        Self::FirstTimer,
        Self::None,
    ];

    /// GitHub's spelling (`FIRST_TIME_CONTRIBUTOR`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "OWNER",
            Self::Member => "MEMBER",
            Self::Collaborator => "COLLABORATOR",
            Self::Contributor => "CONTRIBUTOR",
            Self::FirstTimeContributor => "FIRST_TIME_CONTRIBUTOR",
            Self::FirstTimer => "FIRST_TIMER",
            Self::None => "NONE",
        }
    }

    /// Parses GitHub's spelling, case-insensitively and with `-` for `_`
    /// (`collaborator`, `first-time-contributor`); `MANNEQUIN` is [`Association::None`].
    #[must_use]
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim().to_ascii_uppercase().replace('-', "_");
        if value == "MANNEQUIN" {
            return Some(Self::None);
        }
        Self::ALL.into_iter().find(|a| a.as_str() == value)
    }
}

impl fmt::Display for Association {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who sent a message and where: the identifiers an allow-list checks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// `(field, value)` pairs as the platform sent them; a field may appear several
    /// times (the Slack team IDs of one event) or not at all (a Discord DM's guild).
    pub ids: Vec<(Field, String)>,
    /// GitHub's `author_association` of the issue or comment (absent counts as `NONE`).
    pub association: Option<Association>,
}

impl Origin {
    /// The first value of `field`, if any.
    #[must_use]
    pub fn get(&self, field: Field) -> Option<&str> {
        self.ids.iter().find(|(f, _)| *f == field).map(|(_, v)| v.as_str())
    }

    /// The sender's identifier (user ID, login), which the notice limit is kept by.
    #[must_use]
    pub fn sender(&self) -> Option<&str> {
        [Field::TelegramUser, Field::SlackUser, Field::DiscordUser, Field::GithubSender]
            .into_iter()
            .find_map(|f| self.get(f))
    }
}

/// Why an allow-list refused a message (safe to log and to tell the sender: it names
/// only the sender's own identifiers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The platform has no allow-list and does not admit everyone.
    #[error("no allow-list is configured for this platform")]
    NoAllowList,
    /// An identifier is not on its list (or the message carries none).
    #[error("{field} {} is not on the allow-list", value.as_deref().unwrap_or("(none)"))]
    NotListed {
        /// The field whose list refused.
        field: Field,
        /// The message's value, when it had one.
        value: Option<String>,
    },
    /// GitHub's `author_association` ranks below the minimum.
    #[error("author_association {found} is below the required {min}")]
    Association {
        /// The message's association.
        found: Association,
        /// The minimum required.
        min: Association,
    },
}

/// One platform's allow-list. The default admits nobody.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowList {
    /// Admit every sender (`--<platform>-allow-everyone`). Exclusive with the lists
    /// ([`crate::PlatformsConfig::check_allow_lists`] refuses both).
    pub everyone: bool,
    /// The allowed identifiers per field, normalised; a field absent or empty does not
    /// restrict.
    pub ids: BTreeMap<Field, BTreeSet<String>>,
    /// GitHub: the least trusted `author_association` admitted.
    pub min_association: Option<Association>,
}

impl AllowList {
    /// An allow-list that admits everyone.
    #[must_use]
    pub fn everyone() -> Self {
        Self { everyone: true, ..Self::default() }
    }

    /// This list with `values` allowed for `field` (empty values are skipped).
    #[must_use]
    pub fn allow<S: AsRef<str>>(mut self, field: Field, values: impl IntoIterator<Item = S>) -> Self {
        let values: BTreeSet<String> =
            values.into_iter().map(|v| field.normalize(v.as_ref())).filter(|v| !v.is_empty()).collect();
        if !values.is_empty() {
            self.ids.entry(field).or_default().extend(values);
        }
        self
    }

    /// This list with a minimum GitHub `author_association`.
    #[must_use]
    pub fn min_association(mut self, min: Option<Association>) -> Self {
        self.min_association = min;
        self
    }

    /// True when it restricts anything (a list or a minimum association is set).
    #[must_use]
    pub fn has_restrictions(&self) -> bool {
        self.ids.values().any(|v| !v.is_empty()) || self.min_association.is_some()
    }

    /// Checks a message's origin.
    ///
    /// # Errors
    /// [`Denied`] naming the first restriction it fails.
    pub fn check(&self, origin: &Origin) -> Result<(), Denied> {
        if self.everyone {
            return Ok(());
        }
        if !self.has_restrictions() {
            return Err(Denied::NoAllowList);
        }
        for (field, allowed) in self.ids.iter().filter(|(_, v)| !v.is_empty()) {
            let mut values = origin.ids.iter().filter(|(f, _)| f == field).map(|(_, v)| v).peekable();
            if values.peek().is_none() {
                return Err(Denied::NotListed { field: *field, value: None });
            }
            if let Some(value) = values.find(|v| !allowed.contains(&field.normalize(v))) {
                return Err(Denied::NotListed { field: *field, value: Some(value.clone()) });
            }
        }
        if let Some(min) = self.min_association {
            let found = origin.association.unwrap_or(Association::None);
            if found < min {
                return Err(Denied::Association { found, min });
            }
        }
        Ok(())
    }
}

impl fmt::Display for AllowList {
    /// A one-line summary for the start-up log: `everyone`, `nobody`, or the lists.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.everyone {
            return f.write_str("everyone");
        }
        if !self.has_restrictions() {
            return f.write_str("nobody");
        }
        let mut parts: Vec<String> = self
            .ids
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(field, values)| {
                format!("{}: {}", field.flag(), values.iter().cloned().collect::<Vec<_>>().join(","))
            })
            .collect();
        if let Some(min) = self.min_association {
            parts.push(format!("{GITHUB_MIN_ASSOCIATION_FLAG}: {min}"));
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn origin(ids: &[(Field, &str)]) -> Origin {
        Origin { ids: ids.iter().map(|(f, v)| (*f, (*v).to_owned())).collect(), association: None }
    }

    #[test]
    fn every_set_list_must_match_and_an_empty_one_does_not_restrict() {
        let list = AllowList::default().allow(Field::TelegramUser, ["42", " 7 "]);
        assert_eq!(list.check(&origin(&[(Field::TelegramUser, "7"), (Field::TelegramChat, "-100")])), Ok(()));
        assert!(matches!(
            list.check(&origin(&[(Field::TelegramUser, "8")])),
            Err(Denied::NotListed { field: Field::TelegramUser, .. })
        ));
        let both = list.allow(Field::TelegramChat, ["-100"]);
        assert_eq!(both.check(&origin(&[(Field::TelegramUser, "42"), (Field::TelegramChat, "-100")])), Ok(()));
        assert!(both.check(&origin(&[(Field::TelegramUser, "42"), (Field::TelegramChat, "42")])).is_err());
        assert_eq!(
            both.check(&origin(&[(Field::TelegramChat, "-100")])),
            Err(Denied::NotListed { field: Field::TelegramUser, value: None })
        );
    }

    #[test]
    fn nobody_by_default_everyone_only_when_said() {
        assert_eq!(AllowList::default().check(&Origin::default()), Err(Denied::NoAllowList));
        assert_eq!(AllowList::everyone().check(&Origin::default()), Ok(()));
        assert_eq!(AllowList::default().allow(Field::SlackUser, [" ", ""]), AllowList::default());
    }

    #[test]
    fn every_slack_team_of_an_event_must_be_listed() {
        let list = AllowList::default().allow(Field::SlackTeam, ["T1"]);
        assert_eq!(list.check(&origin(&[(Field::SlackTeam, "T1"), (Field::SlackTeam, "T1")])), Ok(()));
        assert!(list.check(&origin(&[(Field::SlackTeam, "T1"), (Field::SlackTeam, "T2")])).is_err());
    }

    #[test]
    fn github_names_ignore_case_and_association_follows_githubs_order() {
        let list = AllowList::default()
            .allow(Field::GithubRepository, ["Acme/Widgets"])
            .min_association(Some(Association::Collaborator));
        let mut o = origin(&[(Field::GithubRepository, "acme/widgets")]);
        for (a, ok) in [
            (Association::Owner, true),
            (Association::Member, true),
            (Association::Collaborator, true),
            (Association::Contributor, false),
            (Association::FirstTimeContributor, false),
            (Association::FirstTimer, false),
            (Association::None, false),
        ] {
            o.association = Some(a);
            assert_eq!(list.check(&o).is_ok(), ok, "{a}");
        }
        o.association = None;
        assert_eq!(
            list.check(&o),
            Err(Denied::Association { found: Association::None, min: Association::Collaborator })
        );
        assert_eq!(Association::parse("first-time-contributor"), Some(Association::FirstTimeContributor));
        assert_eq!(Association::parse("MANNEQUIN"), Some(Association::None));
        assert_eq!(Association::parse("maintainer"), None);
    }
}
