//! The history a rebuilt prompt reads: outlines (lengths and tool-call previews, never
//! the text) of the newest user and assistant messages, then only the excerpts the
//! budget gives each, cut by PostgreSQL.

use parley_db::message::{self, ExcerptRequest, Role, TOOL_CALLS_PER_MESSAGE};
use parley_test_support::TestDb;
use serde_json::{Value, json};

use super::web_conversation;

#[tokio::test]
async fn the_outline_reads_lengths_and_tool_previews_of_the_newest_messages_only() {
    let db = TestDb::new().await;
    let client = db.pool.get().await.expect("client");
    let conversation = web_conversation(&client, "history").await;
    let other = web_conversation(&client, "other").await;
    let insert = async |conversation, role, content: &str, metadata: Value| {
        message::insert(&client, conversation, None, role, content, &metadata).await.expect("insert").message_id
    };
    let before_cut = insert(conversation, Role::User, "before the /reset cut", json!({})).await;
    let first = insert(conversation, Role::User, "héllo wörld", json!({})).await;
    insert(conversation, Role::User, "/status", json!({ "command": "status" })).await;
    insert(conversation, Role::System, "a notice", json!({})).await;
    insert(other, Role::User, "another conversation", json!({})).await;
    let calls: Vec<Value> = (0..10)
        .map(|i| json!({ "id": format!("c{i}"), "name": "Bash", "input": { "command": format!("echo {i}") } }))
        .collect();
    let many = insert(conversation, Role::Assistant, "ran ten", json!({ "tool_calls": calls })).await;
    let mixed = insert(
        conversation,
        Role::Assistant,
        "partial",
        json!({
            "incomplete": true,
            "tool_calls": [
                { "id": "a", "name": "Write", "input": { "file_path": "/f", "content": "x".repeat(10_000) },
                  "is_error": false, "output": "written" },
                { "id": "b", "name": "Custom", "input": { "n": 1, "text": "y".repeat(500) }, "is_error": true,
                  "output": "z".repeat(500) },
            ],
        }),
    )
    .await;
    let odd = insert(conversation, Role::Assistant, "", json!({ "tool_calls": "not a list" })).await;
    let next = insert(conversation, Role::User, "the new message", json!({})).await;

    let outline = message::history_outline(&client, conversation, first, next, 10).await.expect("outline");
    let ids: Vec<i64> = outline.iter().map(|o| o.message_id).collect();
    assert_eq!(ids, [odd, mixed, many, first], "newest first, no command, no system message, from the cut on");
    assert!(!ids.contains(&before_cut));
    assert_eq!(outline[3].chars, 11, "characters, not bytes");
    assert_eq!(outline[3].role, Role::User);
    assert_eq!((outline[0].tool_calls.len(), outline[0].tool_call_count), (0, 0), "a malformed list is ignored");
    assert!(outline[1].incomplete && !outline[2].incomplete);
    assert_eq!(outline[2].tool_call_count, 10);
    assert_eq!(outline[2].tool_calls.len(), usize::try_from(TOOL_CALLS_PER_MESSAGE).expect("a count"));
    assert_eq!(outline[2].tool_calls[7]["input"], "echo 7");
    assert_eq!(outline[2].tool_calls[0]["is_error"], Value::Null, "no outcome stored");
    let write = &outline[1].tool_calls[0];
    assert_eq!(
        (&write["name"], &write["input"], &write["is_error"], &write["output"]),
        (&json!("Write"), &json!("/f"), &json!(false), &json!("written"))
    );
    let custom = &outline[1].tool_calls[1];
    let input = custom["input"].as_str().expect("the input's JSON text");
    assert!(input.starts_with('{') && input.chars().count() == 160, "{input}");
    assert_eq!(custom["output"].as_str().map(|o| o.chars().count()), Some(160));
    assert_eq!(custom["is_error"], true);

    let newest_two = message::history_outline(&client, conversation, 0, next, 2).await.expect("outline");
    assert_eq!(newest_two.iter().map(|o| o.message_id).collect::<Vec<_>>(), [odd, mixed]);
}

#[tokio::test]
async fn excerpts_are_cut_by_the_database_to_their_head_and_tail() {
    let db = TestDb::new().await;
    let client = db.pool.get().await.expect("client");
    let conversation = web_conversation(&client, "excerpts").await;
    let long = format!("ÄÄÄ{}ééé", "·".repeat(1_000));
    let a = message::insert(&client, conversation, None, Role::User, &long, &json!({})).await.expect("a").message_id;
    let b = message::insert(&client, conversation, None, Role::User, "short", &json!({})).await.expect("b").message_id;
    let requests = [
        ExcerptRequest { message_id: b, head: 5, tail: 0 },
        ExcerptRequest { message_id: a, head: 3, tail: 3 },
        ExcerptRequest { message_id: i64::MAX, head: 3, tail: 3 },
    ];
    let got = message::history_excerpts(&client, &requests).await.expect("excerpts");
    assert_eq!(got.len(), 2, "a missing message is left out");
    assert_eq!((got[0].message_id, got[0].head.as_str(), got[0].tail.as_str()), (a, "ÄÄÄ", "ééé"));
    assert_eq!((got[1].message_id, got[1].head.as_str(), got[1].tail.as_str()), (b, "short", ""));
    let whole = message::history_excerpts(&client, &[ExcerptRequest { message_id: a, head: 900, tail: 106 }])
        .await
        .expect("excerpts");
    assert_eq!((whole[0].head.as_str(), whole[0].tail.as_str()), (long.as_str(), ""), "no cut when it all fits");
    let head_only = message::history_excerpts(&client, &[ExcerptRequest { message_id: a, head: 2, tail: 0 }])
        .await
        .expect("excerpts");
    assert_eq!((head_only[0].head.as_str(), head_only[0].tail.as_str()), ("ÄÄ", ""));
    assert!(message::history_excerpts(&client, &[]).await.expect("none").is_empty());
}
