//! The allow-list settings: read from `PARLEY_<PLATFORM>_ALLOWED_*`,
//! `PARLEY_<PLATFORM>_ALLOW_EVERYONE` and `PARLEY_GITHUB_MIN_ASSOCIATION` (or set from
//! `parley serve`'s flags), and checked before the server starts: a configured chat
//! platform must say who may talk to it.

use super::{ConfigError, PlatformsConfig, flag, opt};
use crate::Platform;
use crate::allow::{self, AllowList, Association, Field};

/// Configured chat platforms that do not say who may talk to them
/// ([`PlatformsConfig::check_allow_lists`]). Its `Display` is the message `parley serve`
/// prints before it exits: each platform with the flags and variables that fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowListError {
    /// Platforms with neither an allow-list nor `--<platform>-allow-everyone`.
    pub missing: Vec<Platform>,
    /// Platforms with both.
    pub contradictory: Vec<Platform>,
}

impl std::error::Error for AllowListError {}

impl std::fmt::Display for AllowListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.missing.is_empty() {
            let names: Vec<&str> = self.missing.iter().map(|p| p.as_str()).collect();
            let (names, verb) = match names.split_last() {
                Some((last, rest)) if !rest.is_empty() => (format!("{} and {last}", rest.join(", ")), "are"),
                _ => (names.concat(), "is"),
            };
            writeln!(
                f,
                "refusing to start: {names} {verb} configured without an allow-list, so anyone who can message \
                 the bot would drive an assistant that runs tools on this host. Say who may talk to it:"
            )?;
            for p in &self.missing {
                let fields: Vec<String> =
                    Field::of(*p).map(|field| format!("--{} ({})", field.flag(), field.env())).collect();
                let mut how = fields.join(", ");
                if *p == Platform::Github {
                    how.push_str(&format!(
                        ", --{} ({})",
                        allow::GITHUB_MIN_ASSOCIATION_FLAG,
                        allow::GITHUB_MIN_ASSOCIATION_ENV
                    ));
                }
                if let (Some(flag), Some(env)) = (allow::allow_everyone_flag(*p), allow::allow_everyone_env(*p)) {
                    writeln!(f, "  {p}: {how}; or --{flag} ({env}=true) to let anyone in")?;
                }
            }
        }
        for p in &self.contradictory {
            if let Some(flag) = allow::allow_everyone_flag(*p) {
                writeln!(f, "refusing to start: {p} has both an allow-list and --{flag}; keep one")?;
            }
        }
        f.write_str("See docs/platforms.md, \"Who may talk to the bot\".")
    }
}

/// The allow-list of `platform` from its variables: comma-separated values per field.
pub(super) fn allow_list(
    lookup: &impl Fn(&str) -> Option<String>,
    platform: Platform,
) -> Result<AllowList, ConfigError> {
    let mut list = AllowList::default();
    for field in Field::of(platform) {
        if let Some(values) = opt(lookup, field.env()) {
            list = list.allow(field, values.split(','));
        }
    }
    if let Some(var) = allow::allow_everyone_env(platform) {
        list.everyone = flag(lookup, var)?;
    }
    if platform == Platform::Github
        && let Some(v) = opt(lookup, allow::GITHUB_MIN_ASSOCIATION_ENV)
    {
        let min = Association::parse(&v).ok_or_else(|| ConfigError {
            var: allow::GITHUB_MIN_ASSOCIATION_ENV,
            message: format!("must be one of {}, not {v:?}", Association::ALL.map(Association::as_str).join(", ")),
        })?;
        list = list.min_association(Some(min));
    }
    Ok(list)
}

impl PlatformsConfig {
    /// The allow-list of `platform` when it is configured (`None` for the generic
    /// webhook, which trusts its secret).
    #[must_use]
    pub fn allow_list(&self, platform: Platform) -> Option<&AllowList> {
        match platform {
            Platform::Telegram => self.telegram.as_ref().map(|c| &c.allow),
            Platform::Slack => self.slack.as_ref().map(|c| &c.allow),
            Platform::Discord => self.discord.as_ref().map(|c| &c.allow),
            Platform::Github => self.github.as_ref().map(|c| &c.allow),
            Platform::Generic => None,
        }
    }

    /// Replaces the allow-list of `platform` (what `parley serve`'s flags say); nothing
    /// happens when the platform is not configured or is the generic webhook.
    pub fn set_allow_list(&mut self, platform: Platform, list: AllowList) {
        let slot = match platform {
            Platform::Telegram => self.telegram.as_mut().map(|c| &mut c.allow),
            Platform::Slack => self.slack.as_mut().map(|c| &mut c.allow),
            Platform::Discord => self.discord.as_mut().map(|c| &mut c.allow),
            Platform::Github => self.github.as_mut().map(|c| &mut c.allow),
            Platform::Generic => None,
        };
        if let Some(slot) = slot {
            *slot = list;
        }
    }

    /// Checks that every configured chat platform says who may talk to it: an
    /// allow-list, or `--<platform>-allow-everyone` — not both.
    ///
    /// # Errors
    /// [`AllowListError`] naming each platform at fault and the flags that fix it.
    pub fn check_allow_lists(&self) -> Result<(), AllowListError> {
        let mut missing = Vec::new();
        let mut contradictory = Vec::new();
        for platform in Platform::ALL {
            match self.allow_list(platform) {
                Some(list) if list.everyone && list.has_restrictions() => contradictory.push(platform),
                Some(list) if !list.everyone && !list.has_restrictions() => missing.push(platform),
                _ => {}
            }
        }
        if missing.is_empty() && contradictory.is_empty() {
            Ok(())
        } else {
            Err(AllowListError { missing, contradictory })
        }
    }
}
