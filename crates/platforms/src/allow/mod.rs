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

mod association;
mod field;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use association::Association;
pub use field::{
    Field, GITHUB_MIN_ASSOCIATION_ENV, GITHUB_MIN_ASSOCIATION_FLAG, allow_everyone_env, allow_everyone_flag,
};

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
