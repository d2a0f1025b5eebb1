//! Accounts and limits of the web API: API tokens, ownership of conversations, admin
//! tokens, the message rate limit, the queued-turns limit, the event-stream limit, the
//! message length limit and CORS.

use std::time::Duration;

use parley_server::access::{Access, AccessConfig};
use parley_test_support::TestDb;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{TestApp, fast_demo};

async fn spawn(access: AccessConfig, tweak: impl FnOnce(&mut parley_orchestrator::Config)) -> TestApp {
    TestApp::spawn_with(TestDb::new().await, fast_demo(), Access::new(access).expect("access"), tweak).await
}

async fn spawn_auth() -> TestApp {
    spawn(AccessConfig::default(), |_| {}).await
}

async fn token(app: &TestApp, principal: &str, admin: bool) -> String {
    let client = app.db.pool.get().await.expect("client");
    let (_, token) = parley_db::api_token::create(&client, principal, admin).await.expect("create token");
    token.expose().to_owned()
}

/// One request; the body is read as JSON (only for answers that end: never a live stream).
async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value, HeaderMap) {
    let mut req = app.http.request(method, app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.json().await.unwrap_or(Value::Null), headers)
}

/// A conversation of `token`'s principal with one answered message: it has a session
/// and a turn. Returns (conversation, session, turn).
async fn answered_conversation(app: &TestApp, token: &str) -> (Uuid, Uuid, Uuid) {
    let (status, conv, _) = call(app, Method::POST, "/api/conversations", Some(token), Some(json!({}))).await;
    assert_eq!(status, 201, "{conv}");
    let conv: Uuid = conv["conversation_id"].as_str().expect("id").parse().expect("uuid");
    let path = format!("/api/conversations/{conv}/messages");
    let (status, posted, _) = call(app, Method::POST, &path, Some(token), Some(json!({"text": "hello"}))).await;
    assert_eq!(status, 202, "{posted}");
    let turn: Uuid = posted["turn_id"].as_str().expect("turn").parse().expect("uuid");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, t, _) = call(app, Method::GET, &format!("/api/turns/{turn}"), Some(token), None).await;
        if t["status"] == "completed" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "turn never completed: {t}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, sessions, _) =
        call(app, Method::GET, &format!("/api/sessions?conversation_id={conv}"), Some(token), None).await;
    let session = sessions["sessions"][0]["session_id"].as_str().expect("session").parse().expect("uuid");
    (conv, session, turn)
}

/// Every conversation-scoped endpoint, with a JSON body where it takes one.
fn scoped_endpoints(conv: Uuid, session: Uuid, turn: Uuid) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, format!("/api/conversations/{conv}"), None),
        (Method::GET, format!("/api/conversations/{conv}/messages"), None),
        (Method::POST, format!("/api/conversations/{conv}/messages"), Some(json!({"text": "intruder"}))),
        (Method::POST, format!("/api/conversations/{conv}/messages"), Some(json!({"text": "/reset"}))),
        (Method::GET, format!("/api/conversations/{conv}/events"), None),
        (Method::POST, format!("/api/conversations/{conv}/cancel"), None),
        (Method::POST, format!("/api/conversations/{conv}/reset"), None),
        (Method::POST, format!("/api/conversations/{conv}/pause"), None),
        (Method::POST, format!("/api/conversations/{conv}/resume"), None),
        (Method::GET, format!("/api/sessions/{session}"), None),
        (Method::DELETE, format!("/api/sessions/{session}"), None),
        (Method::GET, format!("/api/turns/{turn}"), None),
        (Method::PATCH, format!("/api/conversations/{conv}"), Some(json!({"model": "opus", "title": "mine now"}))),
        (Method::GET, format!("/api/conversations/{conv}/export"), None),
        (Method::DELETE, format!("/api/conversations/{conv}"), None),
    ]
}

/// Everything of a conversation a request could change, as one JSON text.
async fn snapshot(app: &TestApp, conv: Uuid) -> String {
    let client = app.db.pool.get().await.expect("client");
    let row = client
        .query_one(
            "select json_build_object( \
               'conversation', (select row_to_json(c) from conversation c where conversation_id = $1), \
               'messages', (select count(*) from message where conversation_id = $1), \
               'turns', (select json_agg(json_build_object('id', turn_id, 'status', status) order by turn_id) \
                         from turn where conversation_id = $1), \
               'sessions', (select json_agg(json_build_object('id', session_id, 'active', active) order by session_id) \
                            from session where conversation_id = $1), \
               'events', (select count(*) from event where conversation_id = $1), \
               'deliveries', (select count(*) from inbound_delivery))::text",
            &[&conv],
        )
        .await
        .expect("snapshot");
    row.get(0)
}

#[tokio::test]
async fn every_api_endpoint_needs_a_valid_token_and_the_public_ones_do_not() {
    let app = spawn_auth().await;
    let alice = token(&app, "alice", false).await;
    let (conv, session, turn) = answered_conversation(&app, &alice).await;
    let before = snapshot(&app, conv).await;
    let mut endpoints = scoped_endpoints(conv, session, turn);
    endpoints.push((Method::GET, "/api/conversations".into(), None));
    endpoints.push((Method::POST, "/api/conversations".into(), Some(json!({}))));
    endpoints.push((Method::GET, "/api/sessions".into(), None));
    for (method, path, body) in &endpoints {
        for bad in [None, Some("parley_not-a-token"), Some("")] {
            let (status, err, headers) = call(&app, method.clone(), path, bad, body.clone()).await;
            assert_eq!(status, 401, "{method} {path} with {bad:?}: {err}");
            assert_eq!(err["error"]["code"], "unauthorized", "{method} {path}");
            let challenge = headers.get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default();
            assert!(challenge.starts_with("Bearer"), "{method} {path}: WWW-Authenticate {challenge:?}");
        }
    }
    // Another scheme is refused too, and the token is not accepted as a query parameter
    // anywhere but the events stream.
    let resp = app
        .http
        .get(app.url("/api/conversations"))
        .header("authorization", format!("Basic {alice}"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    let (status, _, _) =
        call(&app, Method::GET, &format!("/api/conversations/{conv}?access_token={alice}"), None, None).await;
    assert_eq!(status, 401);
    assert_eq!(snapshot(&app, conv).await, before, "refused requests changed nothing");
    // Public: probes, the UI and webhooks (they verify their own signatures).
    for path in ["/healthz", "/readyz", "/", "/assets/app.js"] {
        let resp = app.http.get(app.url(path)).send().await.expect("send");
        assert_eq!(resp.status(), 200, "{path}");
    }
    let resp = app.http.post(app.url("/webhooks/generic")).body("{}").send().await.expect("send");
    assert_ne!(resp.status(), 401, "webhooks do not use API tokens");
    // The events stream takes the token as ?access_token= (EventSource cannot set headers).
    let resp = app
        .http
        .get(app.url(&format!("/api/conversations/{conv}/events?after=0&access_token={alice}")))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    app.stop().await;
}

#[tokio::test]
async fn access_token_query_is_accepted_on_the_events_stream_only() {
    let app = spawn_auth().await;
    let alice = token(&app, "alice", false).await;
    let (conv, session, turn) = answered_conversation(&app, &alice).await;
    // Paths that end in `/events` but are not a conversation's stream: the `{id}` of a
    // session, a turn or a conversation. A valid token in the query must not pass there
    // (it used to: they answered 400 invalid_id or 404 instead of 401).
    for path in [
        "/api/sessions/events".to_owned(),
        "/api/turns/events".to_owned(),
        "/api/conversations/events".to_owned(),
        format!("/api/sessions/{session}?x=/events"),
        format!("/api/turns/{turn}"),
        format!("/api/conversations/{conv}/messages"),
    ] {
        let (status, err, _) = call(&app, Method::GET, &format!("{path}?access_token={alice}"), None, None).await;
        assert_eq!(status, 401, "GET {path}?access_token=<valid>: {err}");
        assert_eq!(err["error"]["code"], "unauthorized");
    }
    // A POST to the stream's path is not the stream either.
    let (status, _, _) =
        call(&app, Method::POST, &format!("/api/conversations/{conv}/events?access_token={alice}"), None, None).await;
    assert_ne!(status, 200);
    // The stream itself takes it, and a bogus one is refused there.
    let url = |t: &str| app.url(&format!("/api/conversations/{conv}/events?after=0&access_token={t}"));
    let resp = app.http.get(url(&alice)).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    drop(resp);
    let resp = app.http.get(url("parley_bogus")).send().await.expect("send");
    assert_eq!(resp.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn a_non_admin_token_of_a_reserved_name_does_not_authenticate() {
    let app = spawn_auth().await;
    // Made directly in the database, as an older `parley tokens create` could.
    for name in ["telegram", "slack", "discord", "github", "generic", "local", "Telegram"] {
        let t = token(&app, name, false).await;
        let (status, err, _) = call(&app, Method::GET, "/api/conversations", Some(&t), None).await;
        assert_eq!(status, 401, "{name}: {err}");
    }
    // An admin token may carry any name: it sees everything anyway.
    let admin = token(&app, "local", true).await;
    assert_eq!(call(&app, Method::GET, "/api/conversations", Some(&admin), None).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn another_principals_conversation_answers_404_like_a_missing_one_and_nothing_changes() {
    let app = spawn_auth().await;
    let alice = token(&app, "alice", false).await;
    let bob = token(&app, "bob", false).await;
    let (conv, session, turn) = answered_conversation(&app, &alice).await;
    let (bobs_conv, _, _) = answered_conversation(&app, &bob).await;
    let before = snapshot(&app, conv).await;
    let missing = scoped_endpoints(Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for ((method, path, body), (_, missing_path, _)) in scoped_endpoints(conv, session, turn).into_iter().zip(missing) {
        let (status, err, _) = call(&app, method.clone(), &path, Some(&bob), body.clone()).await;
        assert_eq!(status, 404, "{method} {path} as bob: {err}");
        let (missing_status, missing_err, _) = call(&app, method.clone(), &missing_path, Some(&bob), body).await;
        assert_eq!((status, &err), (missing_status, &missing_err), "{method} {path}: same answer as a missing one");
    }
    assert_eq!(snapshot(&app, conv).await, before, "bob's requests changed nothing of alice's conversation");

    // Lists hold only bob's own.
    let (_, list, _) = call(&app, Method::GET, "/api/conversations", Some(&bob), None).await;
    let ids: Vec<&str> =
        list["conversations"].as_array().expect("list").iter().filter_map(|c| c["conversation_id"].as_str()).collect();
    assert_eq!(ids, vec![bobs_conv.to_string().as_str()]);
    let (_, sessions, _) = call(&app, Method::GET, "/api/sessions", Some(&bob), None).await;
    let sessions = sessions["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["conversation_id"], bobs_conv.to_string());
    let (status, filtered, _) =
        call(&app, Method::GET, &format!("/api/sessions?conversation_id={conv}"), Some(&bob), None).await;
    assert_eq!((status, filtered["sessions"].as_array().map(Vec::len)), (200, Some(0)));

    // A conversation belongs to the principal that created it.
    let (_, shown, _) = call(&app, Method::GET, &format!("/api/conversations/{conv}"), Some(&alice), None).await;
    assert_eq!(shown["owner"], "alice");
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_token_is_refused_within_the_cache_time() {
    let ttl = Duration::from_millis(300);
    let app = spawn(AccessConfig { token_cache_ttl: ttl, ..AccessConfig::default() }, |_| {}).await;
    let client = app.db.pool.get().await.expect("client");
    let (row, secret) = parley_db::api_token::create(&client, "alice", false).await.expect("create");
    let alice = secret.expose();
    assert_eq!(call(&app, Method::GET, "/api/conversations", Some(alice), None).await.0, 200);
    let used = parley_db::api_token::list(&client).await.expect("list");
    assert!(used[0].last_used_at.is_some(), "a use is recorded");
    parley_db::api_token::revoke(&client, row.api_token_id).await.expect("revoke");
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let (status, err, _) = call(&app, Method::GET, "/api/conversations", Some(alice), None).await;
    assert_eq!(status, 401, "{err}");
    assert_eq!(err["error"]["code"], "unauthorized");
    // Revoking again keeps the first revocation time; an unknown id is not found.
    let again = parley_db::api_token::revoke(&client, row.api_token_id).await.expect("revoke again");
    assert_eq!(again.revoked_at, parley_db::api_token::list(&client).await.expect("list")[0].revoked_at);
    assert!(matches!(
        parley_db::api_token::revoke(&client, Uuid::new_v4()).await,
        Err(parley_db::DbError::NotFound { .. })
    ));
    app.stop().await;
}

#[tokio::test]
async fn an_admin_token_sees_and_acts_on_every_conversation() {
    let app = spawn_auth().await;
    let alice = token(&app, "alice", false).await;
    let root = token(&app, "root", true).await;
    let (conv, session, turn) = answered_conversation(&app, &alice).await;
    let (_, list, _) = call(&app, Method::GET, "/api/conversations", Some(&root), None).await;
    assert!(list["conversations"].as_array().expect("list").iter().any(|c| c["conversation_id"] == conv.to_string()));
    let (_, sessions, _) = call(&app, Method::GET, "/api/sessions", Some(&root), None).await;
    assert!(sessions["sessions"].as_array().expect("sessions").iter().any(|s| s["session_id"] == session.to_string()));
    for path in [format!("/api/conversations/{conv}"), format!("/api/sessions/{session}"), format!("/api/turns/{turn}")]
    {
        assert_eq!(call(&app, Method::GET, &path, Some(&root), None).await.0, 200, "{path}");
    }
    let (status, reply, _) =
        call(&app, Method::POST, &format!("/api/conversations/{conv}/pause"), Some(&root), None).await;
    assert_eq!(status, 200, "{reply}");
    let (_, shown, _) = call(&app, Method::GET, &format!("/api/conversations/{conv}"), Some(&alice), None).await;
    assert_eq!(shown["paused"], true, "the admin's pause applies to alice's conversation");
    let (status, _, _) = call(&app, Method::DELETE, &format!("/api/conversations/{conv}"), Some(&root), None).await;
    assert_eq!(status, 204);
    app.stop().await;
}

#[tokio::test]
async fn posting_too_fast_answers_429_with_retry_after_and_stores_nothing() {
    let access = AccessConfig { messages_per_minute: 6, message_burst: 3, ..AccessConfig::default() };
    let app = spawn(access, |c| c.max_queued_turns = 0).await;
    let alice = token(&app, "alice", false).await;
    let bob = token(&app, "bob", false).await;
    let (_, conv, _) = call(&app, Method::POST, "/api/conversations", Some(&alice), None).await;
    let conv: Uuid = conv["conversation_id"].as_str().expect("id").parse().expect("uuid");
    // Paused, so the stored turns stay queued and the snapshot stays still.
    let (status, _, _) =
        call(&app, Method::POST, &format!("/api/conversations/{conv}/pause"), Some(&alice), None).await;
    assert_eq!(status, 200);
    let path = format!("/api/conversations/{conv}/messages");
    for i in 0..3 {
        let (status, body, _) =
            call(&app, Method::POST, &path, Some(&alice), Some(json!({"text": format!("m{i}")}))).await;
        assert_eq!(status, 202, "message {i} is within the burst: {body}");
    }
    let before = snapshot(&app, conv).await;
    let (status, err, headers) =
        call(&app, Method::POST, &path, Some(&alice), Some(json!({"text": "one too many"}))).await;
    assert_eq!(status, 429, "{err}");
    assert_eq!(err["error"]["code"], "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=10).contains(&retry), "one message per 10 s: Retry-After {retry}");
    assert_eq!(snapshot(&app, conv).await, before, "the refused message was not stored");
    // The limit is per principal.
    let (_, bobs, _) = call(&app, Method::POST, "/api/conversations", Some(&bob), None).await;
    let bobs = bobs["conversation_id"].as_str().expect("id").to_owned();
    let (status, _, _) = call(
        &app,
        Method::POST,
        &format!("/api/conversations/{bobs}/messages"),
        Some(&bob),
        Some(json!({"text": "hi"})),
    )
    .await;
    assert_eq!(status, 202);
    app.stop().await;
}

#[tokio::test]
async fn a_full_queue_answers_429_and_the_message_is_not_stored() {
    let app = spawn(AccessConfig::local(), |c| c.max_queued_turns = 2).await;
    let conv = app.create_conversation().await;
    let (status, _) = app.action(conv, "pause").await;
    assert_eq!(status, 200);
    app.send(conv, "first").await;
    app.send(conv, "second").await;
    let before = snapshot(&app, conv).await;
    let resp = app
        .http
        .post(app.url(&format!("/api/conversations/{conv}/messages")))
        .header("idempotency-key", "third-try")
        .json(&json!({"text": "third"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let err: Value = resp.json().await.expect("json");
    assert_eq!(err["error"]["code"], "too_many_queued", "{err}");
    assert_eq!(snapshot(&app, conv).await, before, "nothing stored, not even the idempotency key");
    let users = super::contents(&app.messages(conv).await, "user");
    assert_eq!(users, vec!["first", "second"]);
    // Commands still work with a full queue, and once it drains the message is accepted.
    let (status, body) = app.post(conv, "/resume").await;
    assert_eq!(status, 200, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = app.post(conv, "third").await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 429, "{body}");
        assert!(tokio::time::Instant::now() < deadline, "the queue never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn too_many_open_event_streams_answer_429_until_one_closes() {
    let app = spawn(AccessConfig { max_event_streams: 2, ..AccessConfig::default() }, |_| {}).await;
    let alice = token(&app, "alice", false).await;
    let bob = token(&app, "bob", false).await;
    let (_, conv, _) = call(&app, Method::POST, "/api/conversations", Some(&alice), None).await;
    let conv = conv["conversation_id"].as_str().expect("id").to_owned();
    let (_, bobs, _) = call(&app, Method::POST, "/api/conversations", Some(&bob), None).await;
    let bobs = bobs["conversation_id"].as_str().expect("id").to_owned();
    let open = |conv: &str, token: &str| {
        app.http.get(app.url(&format!("/api/conversations/{conv}/events"))).bearer_auth(token.to_owned()).send()
    };
    let first = open(&conv, &alice).await.expect("first");
    let second = open(&conv, &alice).await.expect("second");
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    let third = open(&conv, &alice).await.expect("third");
    assert_eq!(third.status(), 429);
    assert!(third.headers().contains_key("retry-after"));
    let err: Value = third.json().await.expect("json");
    assert_eq!(err["error"]["code"], "too_many_streams");
    // Another principal has its own allowance.
    let bobs_stream = open(&bobs, &bob).await.expect("bob");
    assert_eq!(bobs_stream.status(), 200);
    // Closing a stream frees its place.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let again = open(&conv, &alice).await.expect("again");
        if again.status() == 200 {
            break;
        }
        assert_eq!(again.status(), 429);
        assert!(tokio::time::Instant::now() < deadline, "a closed stream was never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((second, bobs_stream));
    app.stop().await;
}

#[tokio::test]
async fn the_message_length_limit_is_configurable() {
    let app = spawn(AccessConfig::local(), |c| c.max_message_chars = 10).await;
    let conv = app.create_conversation().await;
    let (status, err) = app.post(conv, "eleven char").await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "invalid_text");
    assert!(err["error"]["message"].as_str().unwrap_or_default().contains("the limit is 10"), "{err}");
    assert!(app.messages(conv).await.is_empty());
    assert_eq!(app.post(conv, "ten chars!").await.0, 202);
    app.stop().await;
}

#[tokio::test]
async fn cors_headers_are_absent_by_default_and_present_for_a_configured_origin() {
    let origin = "https://chat.example.com";
    let preflight = |app: &TestApp, origin: &str| {
        app.http
            .request(Method::OPTIONS, app.url("/api/conversations"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let plain = TestApp::spawn().await;
    let resp = plain.http.get(plain.url("/api/conversations")).header("origin", origin).send().await.expect("get");
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("access-control-allow-origin"), "{:?}", resp.headers());
    let resp = preflight(&plain, origin).await.expect("preflight");
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
    plain.stop().await;

    let app = spawn(AccessConfig { cors_origins: vec![origin.into()], ..AccessConfig::local() }, |_| {}).await;
    let resp = preflight(&app, origin).await.expect("preflight");
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(resp.headers()["access-control-allow-origin"], origin);
    let allowed = resp.headers()["access-control-allow-headers"].to_str().expect("ascii").to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{allowed}");
    let resp = app.http.get(app.url("/api/conversations")).header("origin", origin).send().await.expect("get");
    assert_eq!(resp.headers()["access-control-allow-origin"], origin);
    let resp =
        app.http.get(app.url("/api/conversations")).header("origin", "https://evil.example").send().await.expect("get");
    assert!(!resp.headers().contains_key("access-control-allow-origin"), "an unlisted origin gets no CORS headers");
    app.stop().await;

    assert!(
        Access::new(AccessConfig { cors_origins: vec!["chat.example.com/x".into()], ..AccessConfig::default() })
            .is_err()
    );
}
