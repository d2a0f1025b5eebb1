//! The `inbound_delivery` table: the idempotency keys of webhook deliveries and web
//! `Idempotency-Key`s, with the response first given so a repeat can return it, and a
//! hash of the request the key was first used for ([`request_hash`]) so a key reused
//! for another request can be refused.

use deadpool_postgres::GenericClient;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::DbResult;

/// The SHA-256 of a request's parts (each prefixed by its length in bytes, so
/// `["ab", "c"]` and `["a", "bc"]` differ): what `inbound_delivery.request_hash` holds.
#[must_use]
pub fn request_hash(parts: &[&str]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// A recorded delivery: the response first given (`None` until its transaction stored
/// one) and the hash of the request it was for (`None` for rows written before hashes
/// were kept).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The conversation it went to.
    pub conversation_id: Option<Uuid>,
    /// The response first given.
    pub response: Option<serde_json::Value>,
    /// [`request_hash`] of the first request.
    pub request_hash: Option<Vec<u8>>,
}

impl Stored {
    /// True when this delivery was recorded for another request than `hash`. A row
    /// without a hash matches any request.
    #[must_use]
    pub fn is_for_another_request(&self, hash: &[u8; 32]) -> bool {
        self.request_hash.as_deref().is_some_and(|stored| stored != hash.as_slice())
    }
}

/// Records a delivery with the hash of its request. Returns `true` when it is new,
/// `false` when `(platform, idempotency_key)` was seen before. Run it in the ingest
/// transaction: a concurrent duplicate waits for that transaction and then sees the row.
///
/// # Errors
/// [`crate::DbError::Unavailable`] / [`crate::DbError::Other`] only.
pub async fn record(
    client: &impl GenericClient,
    platform: &str,
    idempotency_key: &str,
    conversation_id: Option<Uuid>,
    request_hash: Option<&[u8; 32]>,
) -> DbResult<bool> {
    let stmt = client
        .prepare_cached(
            "insert into inbound_delivery (platform, idempotency_key, conversation_id, request_hash) \
             values ($1, $2, $3, $4) on conflict do nothing",
        )
        .await?;
    let hash = request_hash.map(<[u8; 32]>::as_slice);
    Ok(client.execute(&stmt, &[&platform, &idempotency_key, &conversation_id, &hash]).await? == 1)
}

/// Stores the response given to a delivery.
///
/// # Errors
/// [`crate::DbError::Unavailable`] / [`crate::DbError::Other`] only.
pub async fn set_response(
    client: &impl GenericClient,
    platform: &str,
    idempotency_key: &str,
    response: &serde_json::Value,
) -> DbResult<()> {
    let stmt = client
        .prepare_cached("update inbound_delivery set response = $3 where platform = $1 and idempotency_key = $2")
        .await?;
    client.execute(&stmt, &[&platform, &idempotency_key, response]).await?;
    Ok(())
}

/// The recorded delivery `(platform, idempotency_key)`, if it was seen.
///
/// # Errors
/// [`crate::DbError::Unavailable`] / [`crate::DbError::Other`] only.
pub async fn stored(client: &impl GenericClient, platform: &str, idempotency_key: &str) -> DbResult<Option<Stored>> {
    let stmt = client
        .prepare_cached(
            "select conversation_id, response, request_hash from inbound_delivery \
             where platform = $1 and idempotency_key = $2",
        )
        .await?;
    let row = client.query_opt(&stmt, &[&platform, &idempotency_key]).await?;
    Ok(row.map(|r| Stored { conversation_id: r.get(0), response: r.get(1), request_hash: r.get(2) }))
}
