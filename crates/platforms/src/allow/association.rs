//! GitHub's `author_association`, ranked, for the minimum an allow-list may require.

use std::fmt;

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
