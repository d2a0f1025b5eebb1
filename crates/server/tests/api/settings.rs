//! Per-conversation settings: `PATCH /api/conversations/{id}`, `GET /api/assistants` and
//! the `/model` and `/settings` chat commands — what reaches the assistant, which changes
//! end the session (and with which reason), what a running turn does, and bad input.

use std::time::Duration;

use parley_server::access::Access;
use parley_test_support::TestDb;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Scratch, TestApp, fast_demo};

/// A server with a workspace root in `scratch` (so conversations may name directories).
async fn spawn(scratch: &Scratch) -> TestApp {
    let root = scratch.0.join("workspaces");
    TestApp::spawn_with(TestDb::new().await, fast_demo(), Access::local(), |c| c.workspace_root = Some(root)).await
}

impl TestApp {
    /// `PATCH /api/conversations/{conversation}` with `body`: the status and answer.
    pub(crate) async fn patch(&self, conversation: Uuid, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .patch(self.url(&format!("/api/conversations/{conversation}")))
            .json(&body)
            .send()
            .await
            .expect("patch");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Sends `text` and waits for its turn to complete.
    async fn answer(&self, conversation: Uuid, text: &str) {
        let turn = self.send(conversation, text).await;
        let done = self.wait_turn(turn).await;
        assert_eq!(done["status"], "completed", "{done}");
    }

    /// The conversation's row as the database holds it.
    async fn row(&self, conversation: Uuid) -> String {
        let client = self.db.pool.get().await.expect("client");
        client
            .query_one("select row_to_json(c)::text from conversation c where conversation_id = $1", &[&conversation])
            .await
            .expect("row")
            .get(0)
    }
}

#[tokio::test]
async fn changes_reach_the_assistant_and_end_the_session_with_their_reason() {
    let scratch = Scratch::new();
    let app = spawn(&scratch).await;
    let conv = app.create_conversation().await;
    app.answer(conv, "my name is Ada").await;
    let first = app.sessions(conv).await;
    assert_eq!(first.len(), 1);

    // The title touches no session.
    let (status, changed) = app.patch(conv, json!({ "title": "renamed" })).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!((changed["title"].as_str(), &changed["session_ended"]), (Some("renamed"), &Value::Null));
    assert_eq!(app.sessions(conv).await[0]["active"], true);

    // Each of model, system prompt and working directory ends the session with its
    // reason; the next turn starts a fresh session with the history and the new setting.
    let steps = [
        (json!({ "model": "opus" }), "model-changed"),
        (json!({ "system_prompt": "Answer in French." }), "system-prompt-changed"),
        (json!({ "cwd": "site/docs" }), "cwd-changed"),
        (json!({ "model": null }), "model-changed"),
    ];
    for (n, (body, reason)) in steps.iter().enumerate() {
        let (status, changed) = app.patch(conv, body.clone()).await;
        assert_eq!(status, 200, "{body}: {changed}");
        assert_eq!(changed["session_ended"], *reason, "{body}");
        let sessions = app.sessions(conv).await;
        assert!(sessions.iter().all(|s| s["active"] == false), "ended at once: {sessions:?}");
        assert_eq!(sessions.last().expect("session")["ended_reason"], *reason);

        app.answer(conv, &format!("question {n}")).await;
        let sessions = app.sessions(conv).await;
        assert_eq!(sessions.len(), n + 2, "{sessions:?}");
        let (old, new) = (&sessions[n], &sessions[n + 1]);
        assert_eq!((new["transition_reason"].as_str(), new["active"].as_bool()), (Some(*reason), Some(true)));
        assert_eq!(new["parent_session_id"], old["session_id"]);
        let run = app.demo.requests().pop().expect("a run");
        assert_eq!(run.resume, None, "a fresh session");
        assert!(run.history_messages >= 2 && run.prompt.contains("my name is Ada"), "{}", run.prompt);
    }
    let run = app.demo.requests().pop().expect("a run");
    assert_eq!(run.settings.model, None);
    assert_eq!(run.settings.append_system_prompt.as_deref(), Some("Answer in French."));
    let root = scratch.0.join("workspaces").canonicalize().expect("root");
    assert_eq!(run.cwd, Some(root.join("site/docs")));
    let session = app.sessions(conv).await.pop().expect("session");
    assert_eq!(session["settings"], json!({ "model": null, "system_prompt": "Answer in French.", "cwd": "site/docs" }));

    // The same values again end nothing; the session is resumed.
    let (_, same) = app.patch(conv, json!({ "system_prompt": "Answer in French.", "cwd": "site/docs" })).await;
    assert_eq!(same["session_ended"], Value::Null);
    app.answer(conv, "again").await;
    assert!(app.demo.requests().pop().expect("run").resume.is_some(), "resumed");
    app.stop().await;
}

#[tokio::test]
async fn the_demo_names_the_conversations_model_in_its_reply() {
    let scratch = Scratch::new();
    let app = spawn(&scratch).await;
    let conv = app.create_conversation().await;
    let (status, _) = app.patch(conv, json!({ "model": "sonnet[1m]" })).await;
    assert_eq!(status, 200);
    app.answer(conv, "hello").await;
    let reply = super::contents(&app.messages(conv).await, "assistant").pop().expect("reply");
    assert!(reply.ends_with("Model: sonnet[1m]."), "{reply}");
    assert_eq!(app.demo.requests().pop().expect("run").settings.model.as_deref(), Some("sonnet[1m]"));
    app.stop().await;
}

#[tokio::test]
async fn a_running_turn_finishes_with_the_settings_it_started_with() {
    let scratch = Scratch::new();
    let app = spawn(&scratch).await;
    let conv = app.create_conversation().await;
    let slow = app.send(conv, "take your time [demo:slow]").await;
    app.wait_status(slow, "running").await;
    // A claimed turn starts its first session a moment later; change the settings once
    // that session exists, so the change has a session to end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while app.sessions(conv).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the running turn never started its session");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, changed) = app.patch(conv, json!({ "model": "haiku" })).await;
    assert_eq!((status, changed["session_ended"].as_str()), (200, Some("model-changed")), "{changed}");
    assert_eq!(app.wait_turn(slow).await["status"], "completed");
    let runs = app.demo.requests();
    assert_eq!(runs[0].settings.model, None, "the running turn kept its settings");
    let old = app.sessions(conv).await.pop().expect("session");
    assert!(old["assistant_session_id"].is_string(), "the running turn finished in its session: {old}");

    app.answer(conv, "next").await;
    assert_eq!(app.demo.requests().pop().expect("run").settings.model.as_deref(), Some("haiku"));
    let sessions = app.sessions(conv).await;
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[1]["transition_reason"], "model-changed");
    app.stop().await;
}

#[tokio::test]
async fn a_session_that_no_longer_fits_is_ended_before_the_next_turn_resumes_it() {
    // A change that bypassed the eager end (a setting written while a turn was starting
    // its first session, or by hand): the turn compares the session's settings.
    let scratch = Scratch::new();
    let app = spawn(&scratch).await;
    let conv = app.create_conversation().await;
    app.answer(conv, "first").await;
    {
        let client = app.db.pool.get().await.expect("client");
        client
            .execute("update conversation set system_prompt = 'Be brief.' where conversation_id = $1", &[&conv])
            .await
            .expect("update");
    }
    app.answer(conv, "second").await;
    let sessions = app.sessions(conv).await;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(sessions[0]["ended_reason"], "system-prompt-changed");
    assert_eq!(sessions[1]["transition_reason"], "system-prompt-changed");
    let run = app.demo.requests().pop().expect("run");
    assert_eq!((run.resume, run.settings.append_system_prompt.as_deref()), (None, Some("Be brief.")));
    app.stop().await;
}

#[tokio::test]
async fn invalid_settings_answer_400_with_their_code_and_store_nothing() {
    let scratch = Scratch::new();
    let app = spawn(&scratch).await;
    let conv = app.create_conversation().await;
    app.answer(conv, "hello").await;
    let before = app.row(conv).await;
    let long = "x".repeat(10_001);
    for (body, code) in [
        (json!({ "title": "t".repeat(201) }), "invalid_title"),
        (json!({ "title": "a\u{0}b" }), "invalid_title"),
        (json!({ "assistant": "gpt-9" }), "invalid_assistant"),
        (json!({ "model": "--dangerously-skip-permissions" }), "invalid_model"),
        (json!({ "model": "two words" }), "invalid_model"),
        (json!({ "system_prompt": long }), "invalid_system_prompt"),
        (json!({ "system_prompt": "nul \u{0}" }), "invalid_system_prompt"),
        // The demo has no permission modes; claude's `bypassPermissions` is not allowed by default.
        (json!({ "permission_mode": "plan" }), "invalid_permission_mode"),
        (json!({ "assistant": "claude", "permission_mode": "bypassPermissions" }), "invalid_permission_mode"),
        (json!({ "assistant": "claude", "permission_mode": "read-only" }), "invalid_permission_mode"),
        (json!({ "cwd": "../outside" }), "invalid_cwd"),
        (json!({ "cwd": "/etc" }), "invalid_cwd"),
        (json!({ "colour": "blue" }), "invalid_json"),
        (json!({ "model": 5 }), "invalid_json"),
    ] {
        let (status, err) = app.patch(conv, body.clone()).await;
        assert_eq!((status, err["error"]["code"].as_str()), (400, Some(code)), "{body}: {err}");
        assert!(!err["error"]["message"].as_str().unwrap_or_default().is_empty());
    }
    let resp = app
        .http
        .patch(app.url(&format!("/api/conversations/{conv}")))
        .body(r#"{"model":"opus"}"#)
        .send()
        .await
        .expect("patch");
    assert_eq!(resp.status(), 415, "a body not declared as JSON");
    assert_eq!(app.row(conv).await, before, "nothing was stored");
    assert_eq!(app.sessions(conv).await[0]["active"], true, "and the session goes on");
    let (status, _) = app.patch(Uuid::new_v4(), json!({ "model": "opus" })).await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn permission_modes_are_the_assistants_own_within_the_allowed_set() {
    let scratch = Scratch::new();
    let root = scratch.0.join("workspaces");
    let app = TestApp::spawn_with(TestDb::new().await, fast_demo(), Access::local(), |c| {
        c.workspace_root = Some(root);
        c.allowed_permission_modes = vec!["plan".into(), "acceptEdits".into(), "read-only".into()];
    })
    .await;
    let (status, list) = app.get("/api/assistants").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["default"], "demo");
    let modes = |name: &str| {
        list["assistants"].as_array().expect("assistants").iter().find(|a| a["name"] == name).expect(name)
            ["permission_modes"]
            .clone()
    };
    assert_eq!(modes("claude"), json!(["plan", "acceptEdits"]), "the assistant's order, most restrictive first");
    assert_eq!(modes("codex"), json!(["read-only"]));
    assert_eq!(modes("demo"), json!([]));

    let conv = app.create_conversation().await;
    let (status, changed) = app.patch(conv, json!({ "assistant": "claude", "permission_mode": "acceptEdits" })).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (changed["assistant"].as_str(), changed["permission_mode"].as_str()),
        (Some("claude"), Some("acceptEdits"))
    );
    // A mode the next assistant does not know must change with it.
    let (status, err) = app.patch(conv, json!({ "assistant": "codex" })).await;
    assert_eq!((status, err["error"]["code"].as_str()), (400, Some("invalid_permission_mode")), "{err}");
    let (status, changed) = app.patch(conv, json!({ "assistant": "codex", "permission_mode": "read-only" })).await;
    assert_eq!((status, changed["permission_mode"].as_str()), (200, Some("read-only")), "{changed}");
    let (status, changed) = app.patch(conv, json!({ "permission_mode": null })).await;
    assert_eq!((status, &changed["permission_mode"]), (200, &Value::Null));
    app.stop().await;
}

#[tokio::test]
async fn model_and_settings_commands_show_and_change_the_settings() {
    let scratch = Scratch::new();
    let app = spawn(&scratch).await;
    let conv = app.create_conversation().await;
    app.answer(conv, "hello").await;
    let command = |text: &'static str| {
        let app = &app;
        async move {
            let (status, body) = app.post(conv, text).await;
            assert_eq!(status, 200, "{text}: {body}");
            (body["ok"].as_bool().unwrap_or_default(), body["reply"].as_str().unwrap_or_default().to_owned())
        }
    };
    let (ok, text) = command("/model").await;
    assert!(ok && text.contains("the assistant's default"), "{text}");
    let (ok, text) = command("/model opus").await;
    assert!(ok && text.contains("Model set to opus") && text.contains("model-changed"), "{text}");
    assert_eq!(app.sessions(conv).await[0]["ended_reason"], "model-changed");
    let (ok, text) = command("/settings").await;
    assert!(ok && text.contains("model: opus") && text.contains("assistant: demo"), "{text}");
    let (ok, text) = command("/settings system_prompt Always answer in haiku.").await;
    assert!(ok && text.contains("System prompt set"), "{text}");
    let (ok, text) = command("/settings cwd ../etc").await;
    assert!(!ok && text.contains(".."), "refused: {text}");
    let (ok, text) = command("/settings permission_mode bypassPermissions").await;
    assert!(!ok && text.contains("not allowed"), "refused: {text}");
    let (ok, text) = command("/settings colour blue").await;
    assert!(!ok && text.contains("Unknown setting"), "{text}");
    let (ok, _) = command("/settings title A better title").await;
    assert!(ok);
    let (ok, text) = command("/model default").await;
    assert!(ok && text.contains("Model set to the default"), "{text}");

    let (_, shown) = app.get(&format!("/api/conversations/{conv}")).await;
    assert_eq!(shown["title"], "A better title");
    assert_eq!(shown["model"], Value::Null);
    assert_eq!(shown["system_prompt"], "Always answer in haiku.");
    assert_eq!(shown["cwd"], Value::Null);
    app.answer(conv, "next").await;
    let run = app.demo.requests().pop().expect("run");
    assert_eq!(run.settings.append_system_prompt.as_deref(), Some("Always answer in haiku."));
    app.stop().await;
}
