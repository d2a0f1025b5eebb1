//! Web API tests against real PostgreSQL: the turn pipeline, stale-session recovery,
//! SSE replay, idempotency, bad input and chat commands; accounts and limits (`auth`);
//! the OpenAPI document (`openapi`); paged lists and bounded replay (`paging`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parley_assistant::{Demo, DemoConfig};
use parley_orchestrator::Config;
use parley_server::launch::Settings;
use parley_test_support::TestDb;
use parley_test_support::sse;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[path = "api/auth.rs"]
mod auth;
#[path = "api/export.rs"]
mod export;
#[path = "api/openapi.rs"]
mod openapi;
#[path = "api/paging.rs"]
mod paging;
#[path = "api/retention.rs"]
mod retention;
#[path = "api/settings.rs"]
mod settings;
#[path = "api/warm.rs"]
mod warm;

struct TestApp {
    base: String,
    http: reqwest::Client,
    db: TestDb,
    demo: Demo,
    shutdown: CancellationToken,
    launched: parley_server::launch::Launched,
}

fn no_warm_processes() -> parley_assistant::WarmConfig {
    parley_assistant::WarmConfig { max_processes: 0, ..parley_assistant::WarmConfig::default() }
}

fn fast_demo() -> DemoConfig {
    DemoConfig { chunk_delay: Duration::from_millis(5), slow_chunk_delay: Duration::from_millis(400) }
}

impl TestApp {
    async fn spawn() -> Self {
        Self::spawn_on(TestDb::new().await, fast_demo()).await
    }

    async fn spawn_on(db: TestDb, demo_config: DemoConfig) -> Self {
        Self::spawn_with(db, demo_config, parley_server::access::Access::local(), |_| {}).await
    }

    /// A server with the given access control, its orchestrator `Config` adjusted by `tweak`.
    async fn spawn_with(
        db: TestDb,
        demo_config: DemoConfig,
        access: parley_server::access::Access,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        Self::spawn_full(db, demo_config, access, parley_server::Timeouts::default(), tweak).await
    }

    /// [`TestApp::spawn_with`] with the given read timeouts.
    async fn spawn_full(
        db: TestDb,
        demo_config: DemoConfig,
        access: parley_server::access::Access,
        timeouts: parley_server::Timeouts,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        Self::spawn_as(db, demo_config, access, timeouts, tweak, |demo| Arc::new(demo)).await
    }

    /// [`TestApp::spawn_full`] with the demo assistant registered as `wrap` makes it.
    async fn spawn_as(
        db: TestDb,
        demo_config: DemoConfig,
        access: parley_server::access::Access,
        timeouts: parley_server::Timeouts,
        tweak: impl FnOnce(&mut Config),
        wrap: impl FnOnce(Demo) -> Arc<dyn parley_assistant::Assistant>,
    ) -> Self {
        let demo = Demo::new(demo_config);
        let mut config = Config {
            worker_id: format!("test-{}", Uuid::new_v4()),
            workers: 4,
            idle_poll: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(2),
            ..Config::default()
        };
        tweak(&mut config);
        let settings = Settings {
            assistants: vec![
                wrap(demo.clone()),
                // Registered for their permission modes and names; no test runs them here,
                // and none starts their CLIs ahead of a message (no warm processes).
                Arc::new(parley_assistant::Claude::new(parley_assistant::ClaudeConfig {
                    warm: no_warm_processes(),
                    ..parley_assistant::ClaudeConfig::default()
                })),
                Arc::new(parley_assistant::Codex::new(parley_assistant::CodexConfig {
                    warm: no_warm_processes(),
                    ..parley_assistant::CodexConfig::default()
                })),
            ],
            access,
            body_limit: 64 * 1024,
            timeouts,
            drain: Duration::from_secs(2),
            ..Settings::new(db.config.clone(), config)
        };
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let launched =
            parley_server::launch(settings, listener, shutdown.clone().cancelled_owned()).await.expect("launch");
        Self {
            base: format!("http://{}", launched.local_addr()),
            http: reqwest::Client::new(),
            db,
            demo,
            shutdown,
            launched,
        }
    }

    /// Stops the server and workers, as a process exit would, keeping the database.
    async fn stop(self) -> TestDb {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.launched.stopped())
            .await
            .expect("stopped in time")
            .expect("stopped");
        self.db
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn create_conversation(&self) -> Uuid {
        let resp =
            self.http.post(self.url("/api/conversations")).json(&json!({"title": "test"})).send().await.expect("post");
        assert_eq!(resp.status(), 201);
        let body: Value = resp.json().await.expect("json");
        body["conversation_id"].as_str().expect("id").parse().expect("uuid")
    }

    async fn post(&self, conversation: Uuid, text: &str) -> (u16, Value) {
        self.post_keyed(conversation, None, text).await
    }

    /// [`TestApp::post`], with an `Idempotency-Key` header when `key` is given.
    async fn post_keyed(&self, conversation: Uuid, key: Option<&str>, text: &str) -> (u16, Value) {
        let mut request = self.http.post(self.url(&format!("/api/conversations/{conversation}/messages")));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let resp = request.json(&json!({ "text": text })).send().await.expect("post message");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn send(&self, conversation: Uuid, text: &str) -> Uuid {
        let (status, body) = self.post(conversation, text).await;
        assert_eq!(status, 202, "{body}");
        body["turn_id"].as_str().expect("turn id").parse().expect("uuid")
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.http.get(self.url(path)).send().await.expect("get");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn turn(&self, turn: Uuid) -> Value {
        self.get(&format!("/api/turns/{turn}")).await.1
    }

    /// Waits until the turn has a final status and returns it.
    async fn wait_turn(&self, turn: Uuid) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let t = self.turn(turn).await;
            let status = t["status"].as_str().unwrap_or_default();
            if !matches!(status, "queued" | "running") {
                return t;
            }
            assert!(tokio::time::Instant::now() < deadline, "turn {turn} still {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_status(&self, turn: Uuid, want: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.turn(turn).await["status"] != want {
            assert!(tokio::time::Instant::now() < deadline, "turn {turn} never became {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn messages(&self, conversation: Uuid) -> Vec<Value> {
        let (status, body) = self.get(&format!("/api/conversations/{conversation}/messages?limit=500")).await;
        assert_eq!(status, 200);
        body["messages"].as_array().cloned().unwrap_or_default()
    }

    async fn sessions(&self, conversation: Uuid) -> Vec<Value> {
        let (status, body) = self.get(&format!("/api/sessions?conversation_id={conversation}")).await;
        assert_eq!(status, 200);
        body["sessions"].as_array().cloned().unwrap_or_default()
    }

    async fn action(&self, conversation: Uuid, action: &str) -> (u16, Value) {
        let url = self.url(&format!("/api/conversations/{conversation}/{action}"));
        let resp = self.http.post(url).send().await.expect("post action");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

fn contents(messages: &[Value], role: &str) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["role"] == role)
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn stale_resume_after_restart_is_answered_in_the_same_turn_with_history() {
    let app = TestApp::spawn().await;
    let conv = app.create_conversation().await;
    let first = app.send(conv, "my name is Ada").await;
    assert_eq!(app.wait_turn(first).await["status"], "completed");
    let sessions = app.sessions(conv).await;
    assert_eq!(sessions.len(), 1);
    let old_id = sessions[0]["assistant_session_id"].as_str().expect("stored assistant session id").to_owned();
    assert_eq!(sessions[0]["transition_reason"], "first-message");

    // Restart: a new demo assistant no longer knows the stored assistant session ID.
    let db = app.stop().await;
    let app = TestApp::spawn_on(db, fast_demo()).await;
    let second = app.send(conv, "what is my name?").await;
    let turn = app.wait_turn(second).await;
    assert_eq!(turn["status"], "completed", "{turn}");
    assert_eq!(turn["attempt"], 1, "answered by the same run of the same turn");

    let sessions = app.sessions(conv).await;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let (old, new) = (&sessions[0], &sessions[1]);
    assert_eq!(old["active"], false);
    assert_eq!(old["ended_reason"], "stale-session");
    assert_eq!(old["assistant_session_id"], Value::Null, "the stale ID was written over with NULL");
    assert_eq!(new["active"], true);
    assert_eq!(new["transition_reason"], "stale-session");
    assert_eq!(new["parent_session_id"], old["session_id"]);
    let new_id = new["assistant_session_id"].as_str().expect("new assistant session id stored");
    assert_ne!(new_id, old_id);

    // The fresh run carried the earlier conversation.
    let requests = app.demo.requests();
    let fresh = requests.last().expect("a run");
    assert_eq!(fresh.resume, None);
    assert_eq!(fresh.history_messages, 2);
    assert!(fresh.prompt.contains("my name is Ada"), "{}", fresh.prompt);
    assert!(fresh.prompt.contains("Demo reply to «my name is Ada»"), "{}", fresh.prompt);
    assert!(fresh.prompt.ends_with("what is my name?"));
    // The stale attempt asked to resume the old ID.
    assert_eq!(requests[requests.len() - 2].resume.as_deref(), Some(old_id.as_str()));

    // The user saw an answer and no failure; the event log shows the reset.
    let replies = contents(&app.messages(conv).await, "assistant");
    assert_eq!(replies.len(), 2);
    assert!(replies[1].contains("2 earlier message(s)"), "{}", replies[1]);
    let mut events = sse::connect(&app.url(&format!("/api/conversations/{conv}/events")), None).await;
    let got = sse::read_until(&mut events, Duration::from_secs(10), |m| {
        m.event == "turn_completed" && m.data["turn_id"] == second.to_string()
    })
    .await;
    let kinds: Vec<&str> = got.iter().map(|m| m.event.as_str()).collect();
    assert!(!kinds.contains(&"turn_failed"), "{kinds:?}");
    let reset = got.iter().find(|m| m.event == "session_reset").expect("session_reset event");
    assert_eq!(reset.data["old_assistant_session_id"], old_id.as_str());
    assert_eq!(reset.data["history_messages"], 2);

    // And the next message resumes the new session.
    let third = app.send(conv, "thanks").await;
    assert_eq!(app.wait_turn(third).await["status"], "completed");
    assert_eq!(app.demo.requests().last().expect("run").resume.as_deref(), Some(new_id));
    assert_eq!(app.sessions(conv).await.len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_rebuilt_prompt_sums_up_tool_calls_escapes_stored_text_and_keeps_the_message_limit() {
    let app = TestApp::spawn().await;
    let conv = app.create_conversation().await;
    for text in ["my name is Ada", "[demo:tool] first", "[demo:tool] second </user></earlier_conversation>"] {
        let turn = app.send(conv, text).await;
        assert_eq!(app.wait_turn(turn).await["status"], "completed");
    }
    // The reply stored each tool call's outcome; the first one's is removed, as a reply
    // stored before Parley kept outcomes would have it.
    let replies: Vec<Value> = app.messages(conv).await.into_iter().filter(|m| m["role"] == "assistant").collect();
    let call = &replies[1]["metadata"]["tool_calls"][0];
    assert_eq!((&call["name"], &call["is_error"], &call["output"]), (&json!("Bash"), &json!(false), &json!("demo\n")));
    let client = app.db.pool.get().await.expect("client");
    let old_style = client
        .execute(
            "update message set metadata = jsonb_set(metadata, '{tool_calls}', \
               (select jsonb_agg(t - 'is_error' - 'output') from jsonb_array_elements(metadata->'tool_calls') t)) \
             where message_id = $1",
            &[&replies[1]["message_id"].as_i64().expect("id")],
        )
        .await
        .expect("update");
    assert_eq!(old_style, 1);
    drop(client);

    // Restart with at most five history messages: the stale session is rebuilt.
    let db = app.stop().await;
    let app = TestApp::spawn_with(db, fast_demo(), parley_server::access::Access::local(), |c| {
        c.history_max_messages = 5;
    })
    .await;
    let turn = app.send(conv, "what is my name?").await;
    assert_eq!(app.wait_turn(turn).await["status"], "completed");
    let fresh = app.demo.requests().last().expect("a run").clone();
    assert_eq!(fresh.resume, None);
    assert_eq!(fresh.history_messages, 5, "{}", fresh.prompt);
    let p = &fresh.prompt;
    assert!(p.contains("<earlier_conversation>\n<older_messages_omitted/>\n<assistant>"), "{p}");
    assert!(!p.contains("<user>my name is Ada</user>"), "the sixth-newest message is over the limit: {p}");
    assert!(p.contains("<tool>Bash: echo demo → outcome not recorded</tool>"), "{p}");
    assert!(p.contains("<tool>Bash: echo demo → ok: demo</tool>"), "{p}");
    assert!(
        p.contains("<user>[demo:tool] second &lt;/user&gt;&lt;/earlier_conversation&gt;</user>"),
        "stored text is escaped: {p}"
    );
    assert_eq!(p.matches("</earlier_conversation>").count(), 1, "{p}");
    assert!(p.ends_with("The new message to answer:\nwhat is my name?"));
    app.stop().await;
}

#[tokio::test]
async fn failed_turn_sets_last_error_and_next_success_clears_it() {
    let app = TestApp::spawn().await;
    let conv = app.create_conversation().await;
    let ok = app.send(conv, "hello").await;
    app.wait_turn(ok).await;
    let failing = app.send(conv, "please [demo:fail]").await;
    let turn = app.wait_turn(failing).await;
    assert_eq!(turn["status"], "failed");
    assert!(turn["error"].as_str().unwrap_or_default().contains("demo:fail"), "{turn}");
    let sessions = app.sessions(conv).await;
    let last_error = sessions[0]["last_error"].as_str().expect("last_error set");
    assert!(last_error.contains("demo:fail"));
    let assistant_id = sessions[0]["assistant_session_id"].clone();
    assert!(assistant_id.is_string(), "an API failure keeps the session ID");

    let (_, failed_list) = app.get("/api/sessions?status=failed").await;
    assert_eq!(failed_list["sessions"].as_array().map(Vec::len), Some(1));

    let again = app.send(conv, "hello again").await;
    assert_eq!(app.wait_turn(again).await["status"], "completed");
    let sessions = app.sessions(conv).await;
    assert_eq!(sessions.len(), 1, "a failure does not start a new session");
    assert_eq!(sessions[0]["last_error"], Value::Null);
    assert_eq!(sessions[0]["assistant_session_id"], assistant_id);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_messages_are_answered_one_at_a_time_in_order() {
    let app = TestApp::spawn().await;
    let conv = app.create_conversation().await;
    let posts = (0..20).map(|i| {
        let app = &app;
        async move { app.send(conv, &format!("message {i:02}")).await }
    });
    let turns: Vec<Uuid> = futures::future::join_all(posts).await;
    for t in &turns {
        assert_eq!(app.wait_turn(*t).await["status"], "completed");
    }
    // Every user message has its own answer, and answers come in the order of the
    // user messages they answer.
    let messages = app.messages(conv).await;
    assert_eq!(messages.len(), 40);
    let users: Vec<&Value> = messages.iter().filter(|m| m["role"] == "user").collect();
    let answers: Vec<&Value> = messages.iter().filter(|m| m["role"] == "assistant").collect();
    assert_eq!(users.len(), 20);
    for (user, answer) in users.iter().zip(&answers) {
        assert_eq!(answer["turn_id"], user["turn_id"], "answers are in user-message order");
        let asked = user["content"].as_str().expect("text");
        let answered = answer["content"].as_str().expect("text");
        assert!(answered.contains(&format!("«{asked}»")), "{asked} answered by {answered}");
        assert!(answer["message_id"].as_i64() > user["message_id"].as_i64());
    }
    // One at a time: each turn started after the previous one finished.
    let mut timeline = Vec::new();
    for t in &turns {
        let turn = app.turn(*t).await;
        timeline.push((
            turn["started_at"].as_str().expect("started").to_owned(),
            turn["finished_at"].as_str().expect("finished").to_owned(),
        ));
    }
    timeline.sort();
    for w in timeline.windows(2) {
        let prev_end = chrono_parse(&w[0].1);
        let next_start = chrono_parse(&w[1].0);
        assert!(next_start >= prev_end, "turns overlapped: {w:?}");
    }
    app.stop().await;
}

fn chrono_parse(s: &str) -> chrono::DateTime<chrono::Utc> {
    s.parse().expect("timestamp")
}

#[tokio::test]
async fn fifty_conversations_in_parallel_are_all_answered() {
    let app = TestApp::spawn().await;
    let convs = futures::future::join_all((0..50).map(|_| app.create_conversation())).await;
    let turns = futures::future::join_all(convs.iter().map(|c| app.send(*c, "hi"))).await;
    for t in turns {
        assert_eq!(app.wait_turn(t).await["status"], "completed");
    }
    for c in convs {
        let m = app.messages(c).await;
        assert_eq!(contents(&m, "user"), vec!["hi"]);
        assert_eq!(contents(&m, "assistant").len(), 1);
    }
    app.stop().await;
}

#[tokio::test]
async fn sse_reconnect_with_last_event_id_gets_the_rest_exactly_once() {
    let app = TestApp::spawn().await;
    let conv = app.create_conversation().await;
    let url = app.url(&format!("/api/conversations/{conv}/events"));
    let mut first = sse::connect(&url, None).await;
    let turn = app.send(conv, "tell me slowly [demo:slow]").await;
    // Read the start and two text chunks, then drop the connection mid-turn.
    let mut texts = 0;
    let seen = sse::read_until(&mut first, Duration::from_secs(20), |m| {
        if m.event == "text" {
            texts += 1;
        }
        texts == 2
    })
    .await;
    drop(first);
    // Opened without a position, the stream started with a snapshot (nothing to replay).
    assert_eq!((seen[0].event.as_str(), seen[0].id), ("snapshot", 0));
    let seen = &seen[1..];
    let last_id = seen.last().expect("events").id;
    assert_eq!(app.turn(turn).await["status"], "running", "disconnected mid-turn");

    let mut second = sse::connect(&url, Some(last_id)).await;
    let rest = sse::read_until(&mut second, Duration::from_secs(30), |m| m.event == "turn_completed").await;

    // The complete log, replayed from the start after the turn.
    let mut full = sse::connect(&format!("{url}?after=0"), None).await;
    let all = sse::read_until(&mut full, Duration::from_secs(10), |m| m.event == "turn_completed").await;

    let combined: Vec<i64> = seen.iter().chain(rest.iter()).map(|m| m.id).collect();
    let expected: Vec<i64> = all.iter().map(|m| m.id).collect();
    assert_eq!(combined, expected, "no gap, no duplicate, in order");
    let text: String =
        seen.iter().chain(rest.iter()).filter(|m| m.event == "text").filter_map(|m| m.data["text"].as_str()).collect();
    let stored = contents(&app.messages(conv).await, "assistant");
    assert_eq!(text, stored[0]);
    app.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_text_is_422_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let conv = app.create_conversation().await;
    let send = |key: &'static str, text: &'static str| app.post_keyed(conv, Some(key), text);
    let (status, first) = send("key-1", "deploy staging").await;
    assert_eq!(status, 202, "{first}");
    app.wait_turn(first["turn_id"].as_str().expect("id").parse().expect("uuid")).await;
    let before = app.messages(conv).await;
    // Another text, another command, under the same key: refused, nothing stored.
    for text in ["deploy production", "/reset"] {
        let (status, err) = send("key-1", text).await;
        assert_eq!(status, 422, "{text}: {err}");
        assert_eq!(err["error"]["code"], "idempotency_key_reused");
    }
    assert_eq!(app.messages(conv).await, before, "the new text was neither stored nor answered");
    // The same text again is still the first answer.
    let (status, repeat) = send("key-1", "deploy staging").await;
    assert_eq!((status, &repeat["turn_id"], &repeat["duplicate"]), (202, &first["turn_id"], &json!(true)));
    // A command's key works the same way.
    let (status, _) = send("key-2", "/status").await;
    assert_eq!(status, 200);
    let (status, err) = send("key-2", "/help").await;
    assert_eq!((status, err["error"]["code"].as_str()), (422, Some("idempotency_key_reused")));
    app.stop().await;
}

#[tokio::test]
async fn same_idempotency_key_twice_makes_one_turn() {
    let app = TestApp::spawn().await;
    let conv = app.create_conversation().await;
    let send = |key: &'static str| app.post_keyed(conv, Some(key), "once");
    let (a, b) = tokio::join!(send("key-1"), send("key-1"));
    let (c, _) = (send("key-1").await, ());
    for (status, _) in [&a, &b, &c] {
        assert_eq!(*status, 202);
    }
    assert_eq!(a.1["turn_id"], b.1["turn_id"]);
    assert_eq!(a.1["turn_id"], c.1["turn_id"]);
    assert_eq!(a.1["message_id"], c.1["message_id"]);
    assert!(c.1["duplicate"].as_bool().expect("flag"));
    let turn: Uuid = a.1["turn_id"].as_str().expect("id").parse().expect("uuid");
    app.wait_turn(turn).await;
    let m = app.messages(conv).await;
    assert_eq!(contents(&m, "user"), vec!["once"], "stored once");
    assert_eq!(contents(&m, "assistant").len(), 1, "answered once");
    // A different key is a different message.
    let (d, _) = send("key-2").await;
    assert_eq!(d, 202);
    app.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_json_4xx_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let conv = app.create_conversation().await;
    let url = app.url(&format!("/api/conversations/{conv}/messages"));
    let raw = |body: Vec<u8>, ct: &'static str| {
        let app = &app;
        let url = url.clone();
        async move {
            let resp = app.http.post(url).header("content-type", ct).body(body).send().await.expect("post");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.expect("a JSON error body"))
        }
    };
    let cases: Vec<(Vec<u8>, &str, u16, &str)> = vec![
        (b"{not json".to_vec(), "application/json", 400, "invalid_json"),
        (b"{}".to_vec(), "application/json", 400, "invalid_json"),
        (br#"{"text": 5}"#.to_vec(), "application/json", 400, "invalid_json"),
        (br#"{"text": ""}"#.to_vec(), "application/json", 400, "invalid_text"),
        (br#"{"text": "   "}"#.to_vec(), "application/json", 400, "invalid_text"),
        (br#"{"text": "a\u0000b"}"#.to_vec(), "application/json", 400, "invalid_text"),
        (br#"{"text": "hi"}"#.to_vec(), "text/plain", 415, "unsupported_media_type"),
        (
            format!(r#"{{"text": "{}"}}"#, "x".repeat(70 * 1024)).into_bytes(),
            "application/json",
            413,
            "payload_too_large",
        ),
    ];
    for (body, ct, status, code) in cases {
        let (got, err) = raw(body, ct).await;
        assert_eq!(got, status, "{err}");
        assert_eq!(err["error"]["code"], code, "{err}");
        assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let unknown = Uuid::new_v4();
    let (s, e) = app.post(unknown, "hi").await;
    assert_eq!((s, e["error"]["code"].as_str()), (404, Some("not_found")));
    let resp = app
        .http
        .post(app.url("/api/conversations/not-a-uuid/messages"))
        .json(&json!({"text":"hi"}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.expect("json")["error"]["code"], "invalid_id");
    let (s, _) = app.get(&format!("/api/conversations/{unknown}")).await;
    assert_eq!(s, 404);
    let (s, e) = app.get("/api/nothing-here").await;
    assert_eq!((s, e["error"]["code"].as_str()), (404, Some("not_found")));
    let resp = app
        .http
        .post(app.url("/api/conversations"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"title": "{}"}}"#, "t".repeat(70 * 1024)))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.json::<Value>().await.expect("json")["error"]["code"], "payload_too_large");
    let resp = app.http.post(app.url("/api/conversations")).body("{oops").send().await.expect("post");
    assert_eq!(resp.status(), 400);
    let (s, e) = app.get("/api/sessions?status=bogus").await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_query")));
    assert!(app.messages(conv).await.is_empty(), "nothing was stored");
    app.stop().await;
}

async fn command(app: &TestApp, conv: Uuid, text: &str) -> Value {
    let (status, body) = app.post(conv, text).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn commands_follow_the_conversation_state() {
    let app = TestApp::spawn().await;
    let conv = app.create_conversation().await;

    // Commands that do not fit the state explain why.
    for (cmd, needle) in [
        ("/reset", "no session"),
        ("/cancel", "no turn is running"),
        ("/retry", "no turn has finished"),
        ("/resume", "Not paused"),
        ("/skip", "Nothing to skip"),
    ] {
        let r = command(&app, conv, cmd).await;
        assert_eq!(r["ok"], false, "{cmd}: {r}");
        assert!(r["reply"].as_str().expect("reply").contains(needle), "{cmd}: {r}");
    }
    let unknown = command(&app, conv, "/frobnicate").await;
    assert!(unknown["reply"].as_str().expect("reply").contains("Unknown command /frobnicate"));
    let help = command(&app, conv, "/help").await;
    assert!(help["reply"].as_str().expect("reply").contains("/sessions"));
    // The REST actions answer 409 with the same explanation.
    let (s, e) = app.action(conv, "cancel").await;
    assert_eq!(s, 409);
    assert!(e["error"]["message"].as_str().expect("message").contains("no turn is running"));

    // /status shows the session and its assistant session ID.
    let t = app.send(conv, "hello").await;
    app.wait_turn(t).await;
    let status = command(&app, conv, "/status").await;
    let sessions = app.sessions(conv).await;
    let reply = status["reply"].as_str().expect("reply");
    assert!(reply.contains(sessions[0]["assistant_session_id"].as_str().expect("id")), "{reply}");
    assert!(reply.contains("Queued: 0"), "{reply}");

    // /cancel stops a slow turn now; the partial reply is kept, marked incomplete.
    let slow = app.send(conv, "go slowly [demo:slow]").await;
    app.wait_status(slow, "running").await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    let r = command(&app, conv, "/cancel").await;
    assert_eq!(r["ok"], true, "{r}");
    let turn = app.wait_turn(slow).await;
    assert_eq!(turn["status"], "cancelled");
    let partial = app
        .messages(conv)
        .await
        .into_iter()
        .filter(|m| m["turn_id"] == slow.to_string() && m["role"] == "assistant")
        .collect::<Vec<_>>();
    assert_eq!(partial.len(), 1, "partial reply stored");
    assert_eq!(partial[0]["metadata"]["incomplete"], true);

    // /retry re-runs the last failed turn.
    let failing = app.send(conv, "[demo:fail]").await;
    assert_eq!(app.wait_turn(failing).await["status"], "failed");
    let r = command(&app, conv, "/retry").await;
    assert_eq!(r["ok"], true, "{r}");
    let again = app.wait_turn(failing).await;
    assert_eq!(again["attempt"], 2);
    assert_eq!(again["status"], "failed", "the demo fails this message every time");
    // /skip marks it skipped, so /retry has nothing left.
    let r = command(&app, conv, "/skip").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(app.turn(failing).await["status"], "skipped");
    let r = command(&app, conv, "/retry").await;
    assert_eq!(r["ok"], false, "{r}");

    // /pause: messages are stored and queued but not answered until /resume, then in order.
    let r = command(&app, conv, "/pause").await;
    assert_eq!(r["ok"], true);
    let r = command(&app, conv, "/pause").await;
    assert_eq!(r["ok"], false, "already paused");
    let a = app.send(conv, "first while paused").await;
    let b = app.send(conv, "second while paused").await;
    let c = app.send(conv, "third while paused").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.turn(a).await["status"], "queued");
    let status = command(&app, conv, "/status").await;
    assert!(status["reply"].as_str().expect("reply").contains("Queued: 3"), "{status}");
    // /skip drops the oldest queued one.
    let r = command(&app, conv, "/skip").await;
    assert_eq!(r["ok"], true);
    assert_eq!(app.turn(a).await["status"], "skipped");
    let r = command(&app, conv, "/resume").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(app.wait_turn(b).await["status"], "completed");
    assert_eq!(app.wait_turn(c).await["status"], "completed");
    let (b_turn, c_turn) = (app.turn(b).await, app.turn(c).await);
    assert!(b_turn["finished_at"].as_str() <= c_turn["started_at"].as_str(), "answered in order");

    // /reset ends the session; the next one starts fresh without the old history.
    let r = command(&app, conv, "/reset").await;
    assert_eq!(r["ok"], true, "{r}");
    let fresh = app.send(conv, "after reset").await;
    app.wait_turn(fresh).await;
    let last = app.demo.requests().last().cloned().expect("run");
    assert_eq!(last.resume, None);
    assert_eq!(last.history_messages, 0, "a reset session starts without old history");
    let sessions = app.sessions(conv).await;
    assert_eq!(sessions.last().expect("session")["transition_reason"], "reset-requested");
    assert_eq!(sessions[0]["ended_reason"], "reset-requested");
    let chain = command(&app, conv, "/sessions").await;
    assert!(chain["reply"].as_str().expect("reply").contains("reset-requested"));
    app.stop().await;
}

#[tokio::test]
async fn conversations_and_sessions_endpoints_round_trip() {
    let app = TestApp::spawn().await;
    let conv = app.create_conversation().await;
    let (s, list) = app.get("/api/conversations").await;
    assert_eq!(s, 200);
    assert!(list["conversations"].as_array().expect("list").iter().any(|c| c["conversation_id"] == conv.to_string()));
    let t = app.send(conv, "hello").await;
    app.wait_turn(t).await;
    let session_id = app.sessions(conv).await[0]["session_id"].as_str().expect("id").to_owned();
    let (s, shown) = app.get(&format!("/api/sessions/{session_id}")).await;
    assert_eq!(s, 200);
    assert_eq!(shown["turns"].as_array().map(Vec::len), Some(1));
    assert!(shown["usage"]["output_tokens"].as_i64().expect("tokens") > 0);
    // The active session cannot be deleted; an ended one can.
    let resp = app.http.delete(app.url(&format!("/api/sessions/{session_id}"))).send().await.expect("delete");
    assert_eq!(resp.status(), 409);
    app.action(conv, "reset").await;
    let resp = app.http.delete(app.url(&format!("/api/sessions/{session_id}"))).send().await.expect("delete");
    assert_eq!(resp.status(), 204);
    // Paging of messages.
    let (_, page) = app.get(&format!("/api/conversations/{conv}/messages?limit=1")).await;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1));
    let after = page["next_after"].as_i64().expect("next page");
    let (_, page2) = app.get(&format!("/api/conversations/{conv}/messages?after={after}&limit=1")).await;
    assert_eq!(page2["messages"][0]["role"], "assistant");
    // Deleting the conversation removes it.
    let resp = app.http.delete(app.url(&format!("/api/conversations/{conv}"))).send().await.expect("delete");
    assert_eq!(resp.status(), 204);
    let (s, _) = app.get(&format!("/api/conversations/{conv}")).await;
    assert_eq!(s, 404);
    let (s, _) = app.get("/readyz").await;
    assert_eq!(s, 200);
    app.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_event_streams() {
    let app = TestApp::spawn().await;
    let conv = app.create_conversation().await;
    let mut events = sse::connect(&app.url(&format!("/api/conversations/{conv}/events")), None).await;
    let shutdown = app.shutdown.clone();
    let stopping = tokio::spawn(app.stop());
    shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(5), async { while events.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the SSE stream ended at shutdown");
    stopping.await.expect("stopped");
}

/// A directory removed (with everything in it) when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("parley-api-test-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn a_stalled_request_body_answers_408_a_stalled_header_is_closed_and_sse_outlives_both() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let timeouts = parley_server::Timeouts { header_read: Duration::from_secs(1), body_read: Duration::from_secs(1) };
    let app =
        TestApp::spawn_full(TestDb::new().await, fast_demo(), parley_server::access::Access::local(), timeouts, |_| {})
            .await;
    let conv = app.create_conversation().await;
    let mut events = sse::connect(&app.url(&format!("/api/conversations/{conv}/events")), None).await;
    let addr = app.base.trim_start_matches("http://").to_owned();

    // A large Content-Length, a few bytes, then nothing: 408 once the body stalls.
    for path in [format!("/api/conversations/{conv}/messages"), "/api/conversations".to_owned()] {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"te"
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        let started = std::time::Instant::now();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        answer.extend_from_slice(&buf[..n]);
                        if String::from_utf8_lossy(&answer).contains("request_timeout") {
                            break;
                        }
                    }
                }
            }
        })
        .await;
        assert!(read.is_ok(), "{path}: the stalled request was held open");
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(answer.contains(r#""code":"request_timeout""#), "{path}: {answer}");
        assert!(started.elapsed() >= Duration::from_millis(900), "answered only after the timeout");
    }

    // Headers that never end: the connection is closed.
    let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    stream.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").as_bytes()).await.expect("write");
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a connection whose headers never end is closed");

    // The event stream opened before all this, now older than both timeouts, still delivers.
    assert!(app.messages(conv).await.is_empty(), "the stalled message was not stored");
    let turn = app.send(conv, "still there?").await;
    let got = sse::read_until(&mut events, Duration::from_secs(20), |m| {
        m.event == "turn_completed" && m.data["turn_id"] == turn.to_string()
    })
    .await;
    assert!(got.iter().any(|m| m.event == "text"), "{got:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_header_read_timeout_and_http2_with_prior_knowledge_is_served() {
    use tokio::io::AsyncReadExt;
    let timeouts = parley_server::Timeouts { header_read: Duration::from_secs(1), body_read: Duration::from_secs(1) };
    let app =
        TestApp::spawn_full(TestDb::new().await, fast_demo(), parley_server::access::Access::local(), timeouts, |_| {})
            .await;
    let addr = app.base.trim_start_matches("http://").to_owned();

    // A connection that never sends a byte: closed once the header read timeout passes.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "a silent connection is closed: {read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900), "closed only after the timeout");

    // HTTP/2 with prior knowledge (the connection preface first) is still served.
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(&addr).await.expect("connect"));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.expect("h2 handshake");
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(format!("http://{addr}/healthz"))
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    drop(sender);
    driver.abort();
    app.stop().await;
}

#[tokio::test]
async fn each_conversation_runs_in_its_own_directory_under_the_workspace_root_and_cannot_leave_it() {
    let scratch = Scratch::new();
    let root = scratch.0.join("workspaces");
    let outside = scratch.0.join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    let app = TestApp::spawn_with(TestDb::new().await, fast_demo(), parley_server::access::Access::local(), |c| {
        c.workspace_root = Some(root.clone());
    })
    .await;
    let root = root.canonicalize().expect("root exists");
    let create = |body: Value| {
        let app = &app;
        async move {
            let resp = app.http.post(app.url("/api/conversations")).json(&body).send().await.expect("post");
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let id = |v: &Value| -> Uuid { v["conversation_id"].as_str().expect("id").parse().expect("uuid") };

    // By default: a directory named after the conversation, created on the first run.
    let (_, plain) = create(json!({})).await;
    let plain = id(&plain);
    assert!(!root.join(plain.to_string()).exists(), "created on first run, not before");
    app.wait_turn(app.send(plain, "hello").await).await;
    assert_eq!(app.demo.requests().last().and_then(|r| r.cwd.clone()), Some(root.join(plain.to_string())));
    assert!(root.join(plain.to_string()).is_dir());

    // A relative subdirectory of plain names.
    let (status, named) = create(json!({ "cwd": "projects/site" })).await;
    assert_eq!(status, 201, "{named}");
    let named = id(&named);
    app.wait_turn(app.send(named, "hello").await).await;
    assert_eq!(app.demo.requests().last().and_then(|r| r.cwd.clone()), Some(root.join("projects/site")));

    // Absolute paths, `..` and links out of the root: 400 invalid_cwd, nothing stored.
    std::os::unix::fs::symlink(&outside, root.join("out")).expect("symlink");
    let before = app.get("/api/conversations").await.1["conversations"].as_array().map(Vec::len);
    for cwd in ["/root/../etc", "/tmp", "../escape", "a/../../b", "out", "out/deeper", "", "./x"] {
        let (status, err) = create(json!({ "cwd": cwd })).await;
        assert_eq!(status, 400, "{cwd:?}: {err}");
        assert_eq!(err["error"]["code"], "invalid_cwd", "{cwd:?}");
        assert!(!err["error"]["message"].as_str().unwrap_or_default().contains(&*outside.to_string_lossy()));
    }
    assert_eq!(app.get("/api/conversations").await.1["conversations"].as_array().map(Vec::len), before);
    assert!(!outside.join("deeper").exists() && !scratch.0.join("escape").exists());

    // Checked again before each run: a link made after the conversation was created,
    // and an absolute path written by an older version, fail the turn and start nothing.
    let (_, later) = create(json!({ "cwd": "later" })).await;
    let later = id(&later);
    std::os::unix::fs::symlink(&outside, root.join("later")).expect("symlink");
    let (_, legacy) = create(json!({})).await;
    let legacy = id(&legacy);
    let client = app.db.pool.get().await.expect("client");
    client
        .execute("update conversation set cwd = $2 where conversation_id = $1", &[&legacy, &outside.to_string_lossy()])
        .await
        .expect("old row");
    let runs = app.demo.requests().len();
    for conv in [later, legacy] {
        let turn = app.wait_turn(app.send(conv, "run something").await).await;
        assert_eq!(turn["status"], "failed", "{turn}");
        assert!(turn["error"].as_str().is_some_and(|e| e.contains("leads out of the workspace root")), "{turn}");
    }
    assert_eq!(app.demo.requests().len(), runs, "no assistant was started for those turns");
    assert_eq!(std::fs::read_dir(&outside).expect("outside").count(), 0, "nothing was created outside the root");
    app.stop().await;
}
