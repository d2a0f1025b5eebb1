//! The `api_token` table: bearer tokens of the web API, each mapped to a principal.
//!
//! A token is `parley_` followed by 32 random bytes in unpadded base64url (50
//! characters). It is returned once, by [`create`]; the table keeps only its SHA-256
//! ([`hash`]), so a database dump does not reveal usable tokens. A revoked token stays in
//! the table (for `parley tokens list`) but no longer authenticates.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{DbError, DbResult};

/// Every token starts with this, so a leaked one is easy to recognise (secret scanners).
pub const TOKEN_PREFIX: &str = "parley_";

/// The longest principal name, in characters (`api_token_principal_check`).
pub const MAX_PRINCIPAL_CHARS: usize = 200;

/// A token's plaintext: shown once, never logged (its `Debug` is secrecy's
/// `[REDACTED]`), zeroed in memory when dropped ([`secrecy::SecretString`]).
#[derive(Clone, Debug)]
pub struct TokenSecret(secrecy::SecretString);

impl TokenSecret {
    /// Wraps a token as received (an operator's bootstrap token).
    #[must_use]
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into().into())
    }

    /// The plaintext, for printing it once or sending it.
    #[must_use]
    pub fn expose(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(&self.0)
    }
}

/// A token row, without its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiToken {
    /// Primary key; what `parley tokens revoke` takes.
    pub api_token_id: Uuid,
    /// The principal a request with this token acts as (owner of the conversations it
    /// creates).
    pub principal: String,
    /// An admin token sees and acts on every conversation.
    pub admin: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked; a revoked token no longer authenticates.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it last authenticated a request (updated at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
}

from_row!(row => ApiToken {
    api_token_id, principal, admin, created_at, revoked_at, last_used_at,
});

const COLUMNS: &str = "api_token_id, principal, admin, created_at, revoked_at, last_used_at";

/// The SHA-256 of a token's plaintext: what the table stores and looks up.
#[must_use]
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token: [`TOKEN_PREFIX`] + 32 bytes from the operating system's random
/// source, unpadded base64url.
///
/// # Errors
/// [`DbError::Other`] when the operating system gives no random bytes.
pub fn generate() -> DbResult<TokenSecret> {
    use base64::Engine;
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| DbError::Other(crate::Cause::new("no random bytes for a token", e)))?;
    let token = format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    Ok(TokenSecret(token.into()))
}

/// Creates a token for `principal` and returns its row and plaintext (the only time the
/// plaintext exists outside the client).
///
/// # Errors
/// [`DbError::Conflict`] on `api_token_principal_check` for an empty or over-long
/// principal; [`DbError::Unavailable`] / [`DbError::Other`] otherwise.
pub async fn create(client: &impl GenericClient, principal: &str, admin: bool) -> DbResult<(ApiToken, TokenSecret)> {
    let token = generate()?;
    let row = client
        .query_one(
            &format!(
                "insert into api_token (api_token_id, principal, token_hash, admin) values ($1, $2, $3, $4) \
                 returning {COLUMNS}"
            ),
            &[&Uuid::new_v4(), &principal, &hash(token.expose()).as_slice(), &admin],
        )
        .await?;
    Ok((ApiToken::try_from(&row)?, token))
}

/// Every token, oldest first, revoked ones included.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn list(client: &impl GenericClient) -> DbResult<Vec<ApiToken>> {
    let rows = client.query(&format!("select {COLUMNS} from api_token order by created_at, api_token_id"), &[]).await?;
    rows.iter().map(ApiToken::try_from).collect()
}

/// Revokes a token; revoking a revoked token keeps its first `revoked_at`.
///
/// # Errors
/// [`DbError::NotFound`] when there is no token with that id.
pub async fn revoke(client: &impl GenericClient, api_token_id: Uuid) -> DbResult<ApiToken> {
    let row = client
        .query_opt(
            &format!(
                "update api_token set revoked_at = coalesce(revoked_at, now()) where api_token_id = $1 \
                 returning {COLUMNS}"
            ),
            &[&api_token_id],
        )
        .await?
        .ok_or(DbError::not_found("api token"))?;
    ApiToken::try_from(&row)
}

/// The live (not revoked) token whose hash is `token_hash`, if any; marks it used
/// (`last_used_at`, written at most once a minute per token).
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn authenticate(client: &impl GenericClient, token_hash: &[u8; 32]) -> DbResult<Option<ApiToken>> {
    let stmt = client
        .prepare_cached(&format!("select {COLUMNS} from api_token where token_hash = $1 and revoked_at is null"))
        .await?;
    let Some(row) = client.query_opt(&stmt, &[&token_hash.as_slice()]).await? else {
        return Ok(None);
    };
    let token = ApiToken::try_from(&row)?;
    if token.last_used_at.is_none_or(|t| Utc::now() - t > chrono::TimeDelta::minutes(1)) {
        let stmt = client.prepare_cached("update api_token set last_used_at = now() where api_token_id = $1").await?;
        client.execute(&stmt, &[&token.api_token_id]).await?;
    }
    Ok(Some(token))
}

/// How many live (not revoked) tokens exist; `parley serve` warns when there are none.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn live_count(client: &impl GenericClient) -> DbResult<i64> {
    let row = client.query_one("select count(*) from api_token where revoked_at is null", &[]).await?;
    Ok(row.try_get(0)?)
}

/// What [`bootstrap_admin`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// The token was stored as a new admin token.
    Created(ApiToken),
    /// A live admin token exists already: nothing was stored.
    AdminExists,
    /// This token was stored before (it may have been revoked since): nothing was stored,
    /// so a revoked bootstrap token never comes back.
    AlreadyStored,
}

/// Advisory-lock key serialising [`bootstrap_admin`] across replicas starting together.
const BOOTSTRAP_LOCK_KEY: i64 = 0x7061_726c_6579_6164;

/// Stores `token` (its hash, like every token) as an admin token of `principal`, only
/// when no live admin token exists and this token was never stored. Idempotent: replicas
/// starting together, and every restart after the first, store nothing. `client` must
/// not be in a transaction; this runs one of its own under an advisory lock.
///
/// # Errors
/// [`DbError::Conflict`] on `api_token_principal_check` for an empty or over-long
/// principal; [`DbError::Unavailable`] / [`DbError::Other`] otherwise.
pub async fn bootstrap_admin(
    client: &mut deadpool_postgres::Object,
    principal: &str,
    token: &TokenSecret,
) -> DbResult<Bootstrap> {
    let tx = client.transaction().await?;
    tx.execute("select pg_advisory_xact_lock($1)", &[&BOOTSTRAP_LOCK_KEY]).await?;
    let admins: i64 =
        tx.query_one("select count(*) from api_token where admin and revoked_at is null", &[]).await?.try_get(0)?;
    if admins > 0 {
        return Ok(Bootstrap::AdminExists);
    }
    let row = tx
        .query_opt(
            &format!(
                "insert into api_token (api_token_id, principal, token_hash, admin) values ($1, $2, $3, true) \
                 on conflict (token_hash) do nothing returning {COLUMNS}"
            ),
            &[&Uuid::new_v4(), &principal, &hash(token.expose()).as_slice()],
        )
        .await?;
    let outcome = match row {
        Some(row) => Bootstrap::Created(ApiToken::try_from(&row)?),
        None => Bootstrap::AlreadyStored,
    };
    tx.commit().await?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_redacted_in_debug_and_readable_through_expose() {
        let token = TokenSecret::new("pt_very-secret-value");
        let shown = format!("{token:?}");
        assert!(!shown.contains("very-secret-value") && shown.contains("REDACTED"), "{shown}");
        assert_eq!(token.expose(), "pt_very-secret-value");
    }
}
