//! The `inbound_delivery` table: dedupe of webhook deliveries and web
//! `Idempotency-Key`s, with the response first given so a repeat can return it.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::DbResult;

/// Records a delivery. Returns `true` when it is new, `false` when `(platform,
/// delivery_id)` was seen before. Run it in the ingest transaction: a concurrent
/// duplicate waits for that transaction and then sees the row.
///
/// # Errors
/// [`crate::DbError::Unavailable`] / [`crate::DbError::Other`] only.
pub async fn record(
    client: &impl GenericClient,
    platform: &str,
    delivery_id: &str,
    conversation_id: Option<Uuid>,
) -> DbResult<bool> {
    let stmt = client
        .prepare_cached(
            "insert into inbound_delivery (platform, delivery_id, conversation_id) values ($1, $2, $3) \
             on conflict do nothing",
        )
        .await?;
    Ok(client.execute(&stmt, &[&platform, &delivery_id, &conversation_id]).await? == 1)
}

/// Stores the response given to a delivery.
///
/// # Errors
/// [`crate::DbError::Unavailable`] / [`crate::DbError::Other`] only.
pub async fn set_response(
    client: &impl GenericClient,
    platform: &str,
    delivery_id: &str,
    response: &serde_json::Value,
) -> DbResult<()> {
    let stmt = client
        .prepare_cached("update inbound_delivery set response = $3 where platform = $1 and delivery_id = $2")
        .await?;
    client.execute(&stmt, &[&platform, &delivery_id, response]).await?;
    Ok(())
}

/// The response stored for a delivery, if any.
///
/// # Errors
/// [`crate::DbError::Unavailable`] / [`crate::DbError::Other`] only.
pub async fn response(
    client: &impl GenericClient,
    platform: &str,
    delivery_id: &str,
) -> DbResult<Option<serde_json::Value>> {
    let stmt =
        client.prepare_cached("select response from inbound_delivery where platform = $1 and delivery_id = $2").await?;
    Ok(client.query_opt(&stmt, &[&platform, &delivery_id]).await?.and_then(|r| r.get(0)))
}

/// Deletes deliveries older than `retention`. Returns how many.
///
/// # Errors
/// [`crate::DbError::Unavailable`] / [`crate::DbError::Other`] only.
pub async fn prune(client: &impl GenericClient, retention: Duration) -> DbResult<u64> {
    Ok(client
        .execute(
            "delete from inbound_delivery where received_at < now() - make_interval(secs => $1)",
            &[&retention.as_secs_f64()],
        )
        .await?)
}
