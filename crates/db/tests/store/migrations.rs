//! Migrations against data written in the schema before them: every row is kept.

use parley_test_support::TestDb;
use tokio_postgres::NoTls;

/// The renames of V10 (the conversation's reply mode, the delivery's idempotency key)
/// keep the values written under the old names, and the renamed check still holds.
#[tokio::test]
async fn v10_renames_keep_the_values_written_under_the_old_names() {
    let db = TestDb::empty().await;
    parley_db::migrate::run_to(&db.config, 9).await.expect("migrate to V9");
    let (client, connection) = tokio_postgres::connect(&db.url(), NoTls).await.expect("connect");
    let connection = tokio::spawn(connection);
    let conversation = uuid::Uuid::new_v4();
    client
        .execute(
            "insert into conversation (conversation_id, platform, external_id, owner, assistant, delivery) \
             values ($1, 'github', 'o/r#1', 'github', 'demo', 'batch')",
            &[&conversation],
        )
        .await
        .expect("a conversation in the old schema");
    client
        .execute(
            "insert into inbound_delivery (platform, delivery_id, conversation_id) values ('github', 'gh-1', $1)",
            &[&conversation],
        )
        .await
        .expect("a delivery in the old schema");

    parley_db::migrate::run(&db.config).await.expect("migrate to the latest schema");

    let row = client
        .query_one("select reply_mode from conversation where conversation_id = $1", &[&conversation])
        .await
        .expect("the renamed column");
    assert_eq!(row.get::<_, String>(0), "batch");
    let pooled = db.pool.get().await.expect("a pooled client");
    let stored = parley_db::conversation::get(&pooled, conversation).await.expect("the conversation");
    assert_eq!(stored.reply_mode, parley_db::conversation::ReplyMode::Batch);
    let key: String = client
        .query_one("select idempotency_key from inbound_delivery where conversation_id = $1", &[&conversation])
        .await
        .expect("the renamed column")
        .get(0);
    assert_eq!(key, "gh-1");
    let refused = client
        .execute("update conversation set reply_mode = 'often' where conversation_id = $1", &[&conversation])
        .await
        .expect_err("a reply mode other than stream or batch");
    assert_eq!(refused.as_db_error().and_then(|e| e.constraint()), Some("conversation_reply_mode_check"), "{refused}");
    drop(client);
    let _ = connection.await;
}
