//! Admission of a parsed message: its platform's allow-list ([`crate::allow`]) decides,
//! refusals are counted and logged, and a refused sender is told at most once per
//! [`DENIAL_NOTICE_INTERVAL`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::allow::Denied;
use crate::{InboundMessage, Platform, Platforms};

/// How often one sender is told they are not allowed (and the refusal logged at
/// `warn`): once per this window, per replica.
pub const DENIAL_NOTICE_INTERVAL: Duration = Duration::from_secs(3600);

/// Senders remembered by the notice limit; beyond it the least used are forgotten
/// (and may be told again within the interval).
const MAX_DENIAL_ENTRIES: u64 = 10_000;

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

/// Refusals per platform and when each sender was last told.
pub(crate) struct Denials {
    /// `(platform, sender)` → told within [`DENIAL_NOTICE_INTERVAL`] (entries expire then).
    told: moka::sync::Cache<(Platform, String), ()>,
    /// Refused messages per platform since start ([`Platform::index`] order).
    count: [AtomicU64; Platform::ALL.len()],
}

impl Default for Denials {
    fn default() -> Self {
        Self {
            told: moka::sync::Cache::builder()
                .max_capacity(MAX_DENIAL_ENTRIES)
                .time_to_live(DENIAL_NOTICE_INTERVAL)
                .build(),
            count: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Denials {
    /// Counts a refusal on `platform`; returns the running count.
    fn count(&self, platform: Platform) -> u64 {
        self.count[platform.index()].fetch_add(1, Ordering::Relaxed) + 1
    }

    /// True when `sender` was not refused on `platform` within
    /// [`DENIAL_NOTICE_INTERVAL`]; remembers this refusal.
    fn first_in_interval(&self, platform: Platform, sender: &str) -> bool {
        self.told.entry((platform, sender.to_owned())).or_insert(()).is_fresh()
    }
}

impl Platforms {
    /// Checks a parsed message against its platform's allow-list (the generic webhook has
    /// none: its secret is the check). A refusal is counted and logged — at `warn` the
    /// first time a sender is refused in [`DENIAL_NOTICE_INTERVAL`], at `debug` after
    /// that — with the running count of refusals on the platform (`denied_total`).
    #[must_use]
    pub fn admit(&self, message: &InboundMessage) -> Admission {
        let platform = message.platform;
        let Some(list) = self.config().allow_list(platform) else { return Admission::Allowed };
        let reason = match list.check(&message.origin) {
            Ok(()) => return Admission::Allowed,
            Err(reason) => reason,
        };
        let denied_total = self.denials.count(platform);
        let sender = message.origin.sender().unwrap_or(&message.sender).to_owned();
        let first = self.denials.first_in_interval(platform, &sender);
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
        self.denials.count[platform.index()].load(Ordering::Relaxed)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_is_told_once_per_interval_per_platform() {
        let denials = Denials::default();
        assert!(denials.first_in_interval(Platform::Telegram, "42"));
        assert!(!denials.first_in_interval(Platform::Telegram, "42"));
        assert!(denials.first_in_interval(Platform::Slack, "42"), "kept per platform");
        assert!(denials.first_in_interval(Platform::Telegram, "43"));
        assert_eq!((denials.count(Platform::Github), denials.count(Platform::Github)), (1, 2));
    }
}
