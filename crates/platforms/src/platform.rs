//! The chat platforms Parley receives webhooks from, by name.

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
    /// idempotency key namespace.
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

    /// Its position in [`Platform::ALL`], for per-platform tables.
    #[must_use]
    pub fn index(self) -> usize {
        self as usize
    }

    /// True when the platform shows the webhook's HTTP answer to the sender, so a chat
    /// command's reply goes there rather than through the reply sink (a Discord
    /// interaction response).
    #[must_use]
    pub fn replies_in_response(self) -> bool {
        self == Self::Discord
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_index_the_table() {
        for (i, p) in Platform::ALL.into_iter().enumerate() {
            assert_eq!(Platform::parse(p.as_str()), Some(p));
            assert_eq!(p.index(), i);
        }
        assert_eq!(Platform::parse("irc"), None);
    }
}
