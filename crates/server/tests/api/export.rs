//! `GET /api/conversations/{id}/export`: the conversation, its session chain and its
//! messages with their tool calls, as JSON and Markdown, read a page at a time.

use serde_json::{Value, json};

use super::TestApp;

impl TestApp {
    /// GETs the export; returns the status, content type, content disposition and body.
    async fn export(&self, conversation: uuid::Uuid, query: &str) -> (u16, String, String, String) {
        let url = self.url(&format!("/api/conversations/{conversation}/export{query}"));
        let resp = self.http.get(url).send().await.expect("export");
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let (content_type, disposition) = (header("content-type"), header("content-disposition"));
        (resp.status().as_u16(), content_type, disposition, resp.text().await.expect("body"))
    }
}

#[tokio::test]
async fn export_holds_the_messages_the_session_chain_and_the_tool_calls() {
    let app = TestApp::spawn().await;
    let conv = app.create_conversation().await;
    app.wait_turn(app.send(conv, "[demo:tool] list the files").await).await;
    assert_eq!(app.patch(conv, json!({ "model": "opus" })).await.0, 200);
    assert_eq!(app.post(conv, "/status").await.0, 200);
    app.wait_turn(app.send(conv, "and the second question").await).await;

    let (status, content_type, disposition, body) = app.export(conv, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "application/json");
    assert_eq!(disposition, format!("attachment; filename=\"parley-{conv}.json\""));
    let doc: Value = serde_json::from_str(&body).expect("one JSON document");
    assert_eq!(doc["format"], "parley.conversation.v1");
    assert_eq!(doc["conversation"]["conversation_id"], conv.to_string());
    assert_eq!(doc["conversation"]["model"], "opus");
    let sessions = doc["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(sessions[0]["ended_reason"], "model-changed");
    assert_eq!(sessions[1]["transition_reason"], "model-changed");
    assert_eq!(sessions[1]["settings"]["model"], "opus");
    assert!(sessions[0]["usage"]["output_tokens"].as_i64().unwrap_or_default() > 0, "{}", sessions[0]);
    // Every message, exactly as the messages API shows them.
    assert_eq!(doc["messages"], Value::Array(app.messages(conv).await));
    let calls = doc["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find_map(|m| m["metadata"]["tool_calls"].as_array())
        .expect("a reply with tool calls");
    assert_eq!((calls[0]["name"].as_str(), &calls[0]["input"]), (Some("Bash"), &json!({ "command": "echo demo" })));

    let (status, content_type, disposition, md) = app.export(conv, "?format=markdown").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/markdown; charset=utf-8");
    assert!(disposition.ends_with(".md\""), "{disposition}");
    for expected in [
        "# test\n",
        "| Model | opus |",
        "## Sessions",
        "(first-message), ended",
        "(model-changed)",
        "### User · ",
        "[demo:tool] list the files",
        "<details><summary>Tool calls (1)</summary>",
        "**Bash**",
        "\"command\": \"echo demo\"",
        "### Parley · ",
        "Assistant: demo",
        "and the second question",
    ] {
        assert!(md.contains(expected), "{expected:?} missing from:\n{md}");
    }
    let (status, _, _, err) = app.export(conv, "?format=pdf").await;
    assert_eq!(status, 400, "{err}");
    app.stop().await;
}

#[tokio::test]
async fn a_long_conversation_is_exported_whole_a_page_at_a_time() {
    let app = TestApp::spawn().await;
    let conv = app.create_conversation().await;
    {
        let client = app.db.pool.get().await.expect("client");
        client
            .execute(
                "insert into message (conversation_id, role, content) \
                 select $1, 'user', 'message ' || g from generate_series(1, 1234) g",
                &[&conv],
            )
            .await
            .expect("insert");
    }
    let (status, _, _, body) = app.export(conv, "?format=json").await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).expect("JSON");
    let messages = doc["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1234);
    assert_eq!(
        (messages[0]["content"].as_str(), messages[1233]["content"].as_str()),
        (Some("message 1"), Some("message 1234"))
    );
    assert!(
        messages.windows(2).all(|w| w[0]["message_id"].as_i64() < w[1]["message_id"].as_i64()),
        "in order, no repeats"
    );
    let (_, _, _, md) = app.export(conv, "?format=markdown").await;
    assert_eq!(md.matches("### User · ").count(), 1234);
    assert!(md.contains("_No session yet._"));
    app.stop().await;
}
