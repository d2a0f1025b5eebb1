//! Access control of the web API: who a request acts for ([`Principal`]), how much it
//! may do (rate limit, open event streams) and which browser origins may call it (CORS).
//!
//! - **Authentication.** With [`AuthMode::On`] every `/api/*` request carries
//!   `Authorization: Bearer <token>`; the events stream also accepts `?access_token=`,
//!   because a browser's `EventSource` cannot set headers. Tokens are looked up by their
//!   SHA-256 in `api_token` through [`Orchestrator::authenticate_token`] (which marks
//!   a token used); a lookup is cached (a `moka`
//!   cache) for [`AccessConfig::token_cache_ttl`] (5 s by default), so a revoked token
//!   stops working within that time. Missing, unknown and revoked tokens are all `401 unauthorized`
//!   with `WWW-Authenticate: Bearer`. With [`AuthMode::Off`] every request acts as the
//!   admin principal `local` (a single-user server on loopback).
//! - **Ownership.** A conversation belongs to the principal that created it
//!   (`conversation.owner`); platform conversations belong to the platform's name
//!   (`telegram`, …). A conversation the principal may not see answers exactly like a
//!   missing one (`404 not_found`): see [`Principal::conversation`]. Admin tokens see all.
//!   The platform names and `local` are reserved ([`is_reserved_principal`]): no
//!   non-admin token acts as one, so only admins see platform conversations.
//! - **Limits.** Posting messages is rate limited per principal with `governor`'s GCRA
//!   limiter, which behaves as a token bucket ([`AccessConfig::messages_per_minute`],
//!   [`AccessConfig::message_burst`]) kept in this replica's memory (so N replicas allow
//!   up to N times the rate); open event streams
//!   are limited per principal ([`AccessConfig::max_event_streams`]). Both answer `429`
//!   with `Retry-After`. Both apply only with [`AuthMode::On`]: with authentication off
//!   there is one trusted local user, and load tools drive such servers.
//! - **CORS.** Off unless origins are configured ([`AccessConfig::cors_origins`]).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{FromRequestParts, MatchedPath, Query};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, header};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use parley_db::GenericClient;
use parley_db::api_token;
use parley_db::conversation::{self, Conversation};
use parley_orchestrator::Orchestrator;
use tower_http::cors::{AllowOrigin, CorsLayer};
use uuid::Uuid;

use crate::AppState;
use crate::error::AppError;

/// The principal of every request when authentication is off.
pub const LOCAL_PRINCIPAL: &str = "local";

/// Whether `name` is reserved and cannot be a token's principal: [`LOCAL_PRINCIPAL`] and
/// every platform's name (`telegram`, `slack`, `discord`, `github`, `generic`), which own
/// the platform conversations, so that only an admin token sees those. Compared without
/// regard to ASCII case.
#[must_use]
pub fn is_reserved_principal(name: &str) -> bool {
    name.eq_ignore_ascii_case(LOCAL_PRINCIPAL)
        || parley_platforms::Platform::ALL.iter().any(|p| name.eq_ignore_ascii_case(p.as_str()))
}

/// Entries kept in the token cache (the least used go beyond it) and in the rate
/// limiter (refilled buckets are pruned beyond it).
const MAX_ENTRIES: usize = 10_000;

/// Whether the web API requires API tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Every `/api/*` request needs a valid token (the default).
    #[default]
    On,
    /// No tokens: every request acts as the admin principal [`LOCAL_PRINCIPAL`]. Only for
    /// a server bound to loopback (`parley serve` refuses anything else).
    Off,
}

/// Access settings of the web API.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// Whether requests need a token.
    pub auth: AuthMode,
    /// How long a token lookup (valid or not) is reused; also the longest a revoked
    /// token keeps working. Zero disables the cache.
    pub token_cache_ttl: Duration,
    /// Messages a principal may post per minute, on average, on this replica
    /// (0 = no limit; not applied with [`AuthMode::Off`]).
    pub messages_per_minute: u32,
    /// Messages a principal may post at once before the rate applies (bucket size).
    pub message_burst: u32,
    /// Event streams (SSE) a principal may hold open at once on this replica
    /// (0 = no limit; not applied with [`AuthMode::Off`]).
    pub max_event_streams: usize,
    /// Origins (`https://chat.example.com`) whose pages may call the API from a browser;
    /// empty (the default) sends no CORS headers, so browsers allow same-origin only.
    pub cors_origins: Vec<String>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            auth: AuthMode::On,
            token_cache_ttl: Duration::from_secs(5),
            messages_per_minute: 60,
            message_burst: 20,
            max_event_streams: 16,
            cors_origins: Vec::new(),
        }
    }
}

impl AccessConfig {
    /// The default limits with authentication off: a local single-user server.
    #[must_use]
    pub fn local() -> Self {
        Self { auth: AuthMode::Off, ..Self::default() }
    }
}

/// A CORS origin that is not `http(s)://host[:port]`.
#[derive(Debug, thiserror::Error)]
#[error("invalid CORS origin {0:?}: give a scheme and host like https://chat.example.com, without a path")]
pub struct InvalidOrigin(pub String);

/// Who a request acts for. Extract it in a handler to require authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The principal's name: the token's `principal`, or [`LOCAL_PRINCIPAL`].
    pub name: String,
    /// Sees and acts on every conversation.
    pub admin: bool,
}

impl Principal {
    /// The owner to filter lists by: `None` (everyone's) for an admin.
    #[must_use]
    pub fn owner_filter(&self) -> Option<&str> {
        if self.admin { None } else { Some(&self.name) }
    }

    /// Whether this principal may see and act on a thing owned by `owner`.
    #[must_use]
    pub fn may_access(&self, owner: &str) -> bool {
        self.admin || self.name == owner
    }

    /// The conversation, when it exists and this principal may see it.
    ///
    /// # Errors
    /// 404 `not_found` when it does not exist or belongs to another principal (the two
    /// are indistinguishable on purpose); 503 when the database is down.
    pub async fn conversation(&self, client: &impl GenericClient, id: Uuid) -> Result<Conversation, AppError> {
        let conv = conversation::get(client, id).await?;
        if self.may_access(&conv.owner) { Ok(conv) } else { Err(AppError::NotFound("conversation")) }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        state.access.authenticate(parts, &state.orchestrator).await
    }
}

/// The token cache: token hash → the principal it authenticated (`None`: not valid),
/// for [`AccessConfig::token_cache_ttl`].
type TokenCache = moka::sync::Cache<[u8; 32], Option<Principal>>;

struct Inner {
    /// Cached token lookups; `None` when the cache is off (a zero TTL).
    tokens: Option<TokenCache>,
    /// Principal → message rate state; `None` without a rate limit.
    messages: Option<DefaultKeyedRateLimiter<String>>,
    /// Principal → open event streams.
    streams: Mutex<HashMap<String, usize>>,
}

impl Inner {
    fn new(config: &AccessConfig) -> Self {
        let tokens = (!config.token_cache_ttl.is_zero()).then(|| {
            moka::sync::Cache::builder().max_capacity(MAX_ENTRIES as u64).time_to_live(config.token_cache_ttl).build()
        });
        let messages = (config.auth == AuthMode::On)
            .then(|| message_quota(config.messages_per_minute, config.message_burst))
            .flatten()
            .map(DefaultKeyedRateLimiter::keyed);
        Self { tokens, messages, streams: Mutex::default() }
    }
}

/// `per_minute` messages a minute on average, `burst` at once (at least 1); `None` for
/// no limit (0).
fn message_quota(per_minute: u32, burst: u32) -> Option<Quota> {
    let per_minute = NonZeroU32::new(per_minute)?;
    let quota = Quota::with_period(Duration::from_secs(60) / per_minute.get())?;
    Some(quota.allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN)))
}

/// The web API's access state: configuration, token cache, rate buckets and stream
/// counts. Cheap to clone (shared). `Debug` shows the configuration only, never the
/// cached token hashes.
#[derive(Clone)]
pub struct Access {
    config: Arc<AccessConfig>,
    cors: Option<CorsLayer>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Access {
    /// Access state for `config`.
    ///
    /// # Errors
    /// [`InvalidOrigin`] when a CORS origin is not `http(s)://host[:port]`.
    pub fn new(config: AccessConfig) -> Result<Self, InvalidOrigin> {
        let cors = if config.cors_origins.is_empty() {
            None
        } else {
            let origins = config
                .cors_origins
                .iter()
                .map(|o| {
                    let o = o.trim().trim_end_matches('/');
                    let valid = (o.starts_with("https://") || o.starts_with("http://"))
                        && !o.split_once("://").is_some_and(|(_, rest)| rest.is_empty() || rest.contains('/'));
                    HeaderValue::from_str(o).ok().filter(|_| valid).ok_or_else(|| InvalidOrigin(o.to_owned()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(
                CorsLayer::new()
                    .allow_origin(AllowOrigin::list(origins))
                    .allow_methods([Method::GET, Method::POST, Method::DELETE])
                    .allow_headers([
                        header::AUTHORIZATION,
                        header::CONTENT_TYPE,
                        HeaderName::from_static("idempotency-key"),
                        HeaderName::from_static("last-event-id"),
                    ])
                    .expose_headers([header::RETRY_AFTER, header::WWW_AUTHENTICATE])
                    .max_age(Duration::from_secs(600)),
            )
        };
        Ok(Self { inner: Arc::new(Inner::new(&config)), config: Arc::new(config), cors })
    }

    /// Access with authentication off and default limits (tests, local use).
    #[must_use]
    pub fn local() -> Self {
        let config = AccessConfig::local();
        Self { inner: Arc::new(Inner::new(&config)), config: Arc::new(config), cors: None }
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &AccessConfig {
        &self.config
    }

    /// The CORS layer, when origins are configured.
    #[must_use]
    pub fn cors_layer(&self) -> Option<CorsLayer> {
        self.cors.clone()
    }

    /// Authenticates a request (see the module docs for where the token may be).
    ///
    /// # Errors
    /// 401 `unauthorized` for a missing, malformed, unknown or revoked token; 503 when
    /// the database is down.
    pub async fn authenticate(&self, parts: &Parts, orchestrator: &Orchestrator) -> Result<Principal, AppError> {
        if self.config.auth == AuthMode::Off {
            return Ok(Principal { name: LOCAL_PRINCIPAL.to_owned(), admin: true });
        }
        let token = bearer_token(parts)?;
        let hash = api_token::hash(&token);
        if let Some(principal) = self.inner.tokens.as_ref().and_then(|cache| cache.get(&hash)) {
            return principal.ok_or_else(invalid_token);
        }
        // A non-admin token of a reserved name (made before names were reserved) would see
        // a platform's conversations: it is not valid.
        let principal = orchestrator
            .authenticate_token(&hash)
            .await?
            .map(|t| Principal { name: t.principal, admin: t.admin })
            .filter(|p| p.admin || !is_reserved_principal(&p.name));
        if let Some(cache) = &self.inner.tokens {
            cache.insert(hash, principal.clone());
        }
        principal.ok_or_else(invalid_token)
    }

    /// Takes one message from the principal's rate allowance.
    ///
    /// # Errors
    /// 429 `rate_limited` with the seconds until a message is allowed again.
    pub fn check_message_rate(&self, principal: &Principal) -> Result<(), AppError> {
        let Some(limiter) = &self.inner.messages else { return Ok(()) };
        // Principals whose allowance has refilled are the same as unseen ones.
        if limiter.len() >= MAX_ENTRIES {
            limiter.retain_recent();
        }
        let Err(not_until) = limiter.check_key(&principal.name) else { return Ok(()) };
        let wait = not_until.wait_time_from(limiter.clock().now());
        // `wait` is at most one replenish period, 60 s / rate ≤ 60 s: no truncation.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let retry_after_secs = (wait.as_secs_f64().ceil() as u64).max(1);
        Err(AppError::TooManyRequests {
            code: "rate_limited",
            message: format!(
                "too many messages: the limit is {} a minute (bursts of {}); try again in {retry_after_secs} s",
                self.config.messages_per_minute,
                self.config.message_burst.max(1)
            ),
            retry_after_secs,
        })
    }

    /// Counts an event stream opened by the principal until the guard is dropped.
    ///
    /// # Errors
    /// 429 `too_many_streams` when the principal already holds the maximum.
    pub fn open_stream(&self, principal: &Principal) -> Result<StreamGuard, AppError> {
        let max = self.config.max_event_streams;
        let mut streams = self.inner.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let open = streams.entry(principal.name.clone()).or_insert(0);
        if max > 0 && self.config.auth == AuthMode::On && *open >= max {
            return Err(AppError::TooManyRequests {
                code: "too_many_streams",
                message: format!("{open} event streams are already open for this principal; the limit is {max}"),
                retry_after_secs: 5,
            });
        }
        *open += 1;
        Ok(StreamGuard {
            inner: Arc::clone(&self.inner),
            principal: principal.name.clone(),
            _open: parley_orchestrator::metrics::event_stream_opened(),
        })
    }
}

/// One open event stream, counted against its principal until dropped.
pub struct StreamGuard {
    inner: Arc<Inner>,
    principal: String,
    /// Counts the stream in the open event streams metric until dropped.
    _open: parley_orchestrator::metrics::OpenEventStream,
}

impl std::fmt::Debug for StreamGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamGuard").field("principal", &self.principal).finish_non_exhaustive()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut streams = self.inner.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = streams.get_mut(&self.principal) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.principal);
            }
        }
    }
}

fn invalid_token() -> AppError {
    AppError::Unauthorized("the API token is not valid (unknown or revoked)".into())
}

/// The one route that accepts `?access_token=`: a conversation's events stream, which a
/// browser's `EventSource` opens without headers.
pub const QUERY_TOKEN_ROUTE: &str = "/api/conversations/{id}/events";

/// The token of a request: `Authorization: Bearer …`, or `?access_token=` on the events
/// stream ([`QUERY_TOKEN_ROUTE`], matched by route, not by the path's ending).
fn bearer_token(parts: &Parts) -> Result<String, AppError> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let value = value.to_str().unwrap_or_default().trim();
        return match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
                Ok(token.trim().to_owned())
            }
            _ => Err(AppError::Unauthorized("the Authorization header must be `Bearer <token>`".into())),
        };
    }
    let route = parts.extensions.get::<MatchedPath>().map(MatchedPath::as_str);
    if parts.method == Method::GET && route == Some(QUERY_TOKEN_ROUTE) {
        #[derive(serde::Deserialize)]
        struct TokenQuery {
            access_token: Option<String>,
        }
        if let Ok(Query(TokenQuery { access_token: Some(token) })) = Query::<TokenQuery>::try_from_uri(&parts.uri)
            && !token.is_empty()
        {
            return Ok(token);
        }
    }
    Err(AppError::Unauthorized(
        "this API needs a token: send `Authorization: Bearer <token>` (create one with `parley tokens create`)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(name: &str) -> Principal {
        Principal { name: name.into(), admin: false }
    }

    #[test]
    fn the_burst_passes_then_the_rate_applies_per_principal() {
        let access = Access::new(AccessConfig { messages_per_minute: 6, message_burst: 2, ..AccessConfig::default() })
            .unwrap_or_else(|e| panic!("{e}"));
        let alice = principal("alice");
        assert!(access.check_message_rate(&alice).is_ok() && access.check_message_rate(&alice).is_ok());
        match access.check_message_rate(&alice) {
            Err(AppError::TooManyRequests { code: "rate_limited", retry_after_secs, .. }) => {
                assert!((9..=10).contains(&retry_after_secs), "one message per 10 s: {retry_after_secs}");
            }
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(access.check_message_rate(&principal("bob")).is_ok(), "bob has his own allowance");
    }

    #[test]
    fn no_rate_limit_when_it_is_zero_or_authentication_is_off() {
        let off = Access::new(AccessConfig { messages_per_minute: 0, ..AccessConfig::default() })
            .unwrap_or_else(|e| panic!("{e}"));
        let local = Access::local();
        for _ in 0..100 {
            assert!(off.check_message_rate(&principal("alice")).is_ok());
            assert!(local.check_message_rate(&principal(LOCAL_PRINCIPAL)).is_ok());
        }
    }
}
