//! Lists a page at a time (`?after=CURSOR&limit=N` → `next`), the admin view of turns by
//! status, and the events stream's bounded replay (`snapshot`) and paged full replay.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parley_server::access::{Access, AccessConfig};
use parley_test_support::{TestDb, sse};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{TestApp, fast_demo};

/// Every item of a list, following `next` from the first page; checks that `next` is
/// null exactly on the last page and that no page is larger than `limit`.
async fn walk(app: &TestApp, path: &str, field: &str, limit: usize) -> Vec<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut url = format!("{path}{sep}limit={limit}");
    let mut all = Vec::new();
    loop {
        let (status, page) = app.get(&url).await;
        assert_eq!(status, 200, "{url}: {page}");
        let items = page[field].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= limit, "{url}: {} items", items.len());
        all.extend(items.iter().cloned());
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(items.len(), limit, "{url}: a page with a next page is full");
                url = format!("{path}{sep}limit={limit}&after={next}");
            }
            None => return all,
        }
    }
}

fn ids(items: &[Value], field: &str) -> Vec<String> {
    items.iter().map(|v| v[field].as_str().expect("id").to_owned()).collect()
}

fn at(v: &Value, field: &str) -> DateTime<Utc> {
    v[field].as_str().expect("timestamp").parse().expect("RFC 3339")
}

#[tokio::test]
async fn conversations_page_by_cursor_most_recently_active_first() {
    let app = TestApp::spawn().await;
    let mut created = Vec::new();
    for _ in 0..7 {
        created.push(app.create_conversation().await.to_string());
    }
    let listed = walk(&app, "/api/conversations", "conversations", 3).await;
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    assert_eq!(ids(&listed, "conversation_id"), newest_first, "each once, most recently created first");
    assert!(listed.iter().all(|c| c["resume_after_seq"].is_i64() && c["running"] == false));

    // A turn ending in the oldest conversation makes it the most recently active.
    let oldest: Uuid = created[0].parse().expect("uuid");
    let turn = app.send(oldest, "hello").await;
    app.wait_turn(turn).await;
    let (_, first) = app.get("/api/conversations?limit=2").await;
    assert_eq!(first["conversations"][0]["conversation_id"], created[0]);
    assert!(at(&first["conversations"][0], "last_activity_at") > at(&first["conversations"][1], "last_activity_at"));
    assert_eq!(first["conversations"][0]["last_turn_status"], "completed");
    // The page after the first two holds the next two, and nothing repeats.
    let after = first["next"].as_str().expect("next");
    let (_, second) = app.get(&format!("/api/conversations?limit=2&after={after}")).await;
    assert_eq!(ids(second["conversations"].as_array().expect("page"), "conversation_id"), newest_first[1..3]);

    // One conversation shows the same turn state as the list.
    let (status, one) = app.get(&format!("/api/conversations/{oldest}")).await;
    assert_eq!(status, 200);
    for field in ["last_activity_at", "last_turn_status", "running", "queued", "resume_after_seq"] {
        assert_eq!(one[field], first["conversations"][0][field], "{field}");
    }

    // `offset` is gone; a cursor must be one of this list's.
    let (status, err) = app.get("/api/conversations?offset=2").await;
    assert_eq!((status, err["error"]["code"].as_str()), (400, Some("invalid_query")), "{err}");
    assert!(err["error"]["message"].as_str().expect("message").contains("after"), "{err}");
    let (_, sessions) = app.get("/api/sessions?limit=1").await;
    let foreign = sessions["next"].as_str().map_or_else(|| "c2Vzc2lvbnM6MDow".to_owned(), str::to_owned);
    for bad in ["nope", "!!", foreign.as_str()] {
        let (status, err) = app.get(&format!("/api/conversations?after={bad}")).await;
        assert_eq!((status, err["error"]["code"].as_str()), (400, Some("invalid_cursor")), "{bad}: {err}");
    }
    app.stop().await;
}

#[tokio::test]
async fn sessions_page_by_cursor_oldest_first_by_status() {
    let app = TestApp::spawn().await;
    let mut conversations = Vec::new();
    for i in 0..5 {
        let conv = app.create_conversation().await;
        let turn = app.send(conv, &format!("hello {i}")).await;
        app.wait_turn(turn).await;
        conversations.push(conv);
    }
    // Two resets: those sessions end and their successors start.
    for conv in &conversations[..2] {
        assert_eq!(app.action(*conv, "reset").await.0, 200);
    }
    let all = walk(&app, "/api/sessions", "sessions", 2).await;
    assert_eq!(all.len(), 7);
    assert_eq!(ids(&all, "session_id").into_iter().collect::<HashSet<_>>().len(), 7, "each once");
    assert!(all.windows(2).all(|w| at(&w[0], "started_at") <= at(&w[1], "started_at")), "oldest first");
    let ended = walk(&app, "/api/sessions?status=ended", "sessions", 1).await;
    assert_eq!(ended.len(), 2);
    assert!(ended.iter().all(|s| s["active"] == false && s["ended_reason"] == "reset-requested"));
    let active = walk(&app, "/api/sessions?status=active", "sessions", 4).await;
    assert_eq!(active.len(), 5);
    let one = walk(&app, &format!("/api/sessions?conversation_id={}", conversations[0]), "sessions", 1).await;
    assert_eq!(one.len(), 2);
    assert_eq!(one[1]["parent_session_id"], one[0]["session_id"], "the chain, oldest first");
    let (status, err) = app.get("/api/sessions?after=bogus").await;
    assert_eq!((status, err["error"]["code"].as_str()), (400, Some("invalid_cursor")), "{err}");
    app.stop().await;
}

#[tokio::test]
async fn a_sessions_turns_page_by_cursor_beyond_the_first_hundred() {
    let app = TestApp::spawn().await;
    let conv = app.create_conversation().await;
    let first = app.send(conv, "hello").await;
    app.wait_turn(first).await;
    let session = app.sessions(conv).await[0]["session_id"].as_str().expect("session").to_owned();
    let (_, detail) = app.get(&format!("/api/sessions/{session}")).await;
    assert_eq!((detail["turns"].as_array().map(Vec::len), &detail["turns_next"]), (Some(1), &Value::Null));
    // 100 more turns of that session, stored directly (as a long-lived session has them).
    let client = app.db.pool.get().await.expect("client");
    let session_id: Uuid = session.parse().expect("uuid");
    client
        .execute(
            "with m as (insert into message (conversation_id, role, content) \
                        select $1, 'user', 'bulk ' || i from generate_series(1, 100) i returning message_id) \
             insert into turn (turn_id, conversation_id, session_id, user_message_id, status, attempt) \
             select gen_random_uuid(), $1, $2, message_id, 'completed', 1 from m",
            &[&conv, &session_id],
        )
        .await
        .expect("insert turns");
    let (_, detail) = app.get(&format!("/api/sessions/{session}")).await;
    let shown = detail["turns"].as_array().cloned().unwrap_or_default();
    assert_eq!(shown.len(), 100, "the detail shows the first hundred");
    assert_eq!(shown[0]["turn_id"], first.to_string(), "oldest first");
    let next = detail["turns_next"].as_str().expect("more follow");
    let (status, rest) = app.get(&format!("/api/sessions/{session}/turns?after={next}")).await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!((rest["turns"].as_array().map(Vec::len), &rest["next"]), (Some(1), &Value::Null));
    let all = walk(&app, &format!("/api/sessions/{session}/turns"), "turns", 7).await;
    assert_eq!(all.len(), 101);
    assert_eq!(ids(&all, "turn_id").into_iter().collect::<HashSet<_>>().len(), 101, "each once");
    assert!(all.windows(2).all(|w| w[0]["user_message_id"].as_i64() < w[1]["user_message_id"].as_i64()));
    let (status, err) = app.get(&format!("/api/sessions/{session}/turns?after=bogus")).await;
    assert_eq!((status, err["error"]["code"].as_str()), (400, Some("invalid_cursor")), "{err}");
    let (status, _) = app.get(&format!("/api/sessions/{}/turns", Uuid::new_v4())).await;
    assert_eq!(status, 404);
    drop(client);
    app.stop().await;
}

#[tokio::test]
async fn turns_across_conversations_are_listed_by_status_for_admins_only() {
    let app = TestApp::spawn_with(
        TestDb::new().await,
        fast_demo(),
        Access::new(AccessConfig::default()).expect("access"),
        |_| {},
    )
    .await;
    let client = app.db.pool.get().await.expect("client");
    let (_, alice) = parley_db::api_token::create(&client, "alice", false).await.expect("token");
    let (_, root) = parley_db::api_token::create(&client, "root", true).await.expect("token");
    let (alice, root) = (alice.expose().to_owned(), root.expose().to_owned());
    let get = async |path: &str, token: &str| {
        let resp = app.http.get(app.url(path)).bearer_auth(token).send().await.expect("get");
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
    };
    let post = async |path: &str, body: Value| {
        let resp = app.http.post(app.url(path)).bearer_auth(&alice).json(&body).send().await.expect("post");
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
    };
    // Three failed turns in three conversations, and one queued turn in a paused one.
    let mut failed = Vec::new();
    for _ in 0..4 {
        let (status, conv) = post("/api/conversations", json!({})).await;
        assert_eq!(status, 201);
        let conv = conv["conversation_id"].as_str().expect("id").to_owned();
        if failed.len() == 3 {
            post(&format!("/api/conversations/{conv}/pause"), json!({})).await;
            let (status, queued) = post(&format!("/api/conversations/{conv}/messages"), json!({"text": "later"})).await;
            assert_eq!(status, 202, "{queued}");
            break;
        }
        let (_, turn) = post(&format!("/api/conversations/{conv}/messages"), json!({"text": "[demo:fail]"})).await;
        let turn: Uuid = turn["turn_id"].as_str().expect("turn").parse().expect("uuid");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while get(&format!("/api/turns/{turn}"), &alice).await.1["status"] != "failed" {
            assert!(tokio::time::Instant::now() < deadline, "the turn never failed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        failed.push(turn.to_string());
    }

    // Not an admin: 403 with the API's error body, for any status.
    for status in ["failed", "queued", "bogus"] {
        let (code, err) = get(&format!("/api/turns?status={status}"), &alice).await;
        assert_eq!((code, err["error"]["code"].as_str()), (403, Some("forbidden")), "{err}");
    }
    // An admin pages through them, newest first.
    let (code, page) = get("/api/turns?status=failed&limit=2", &root).await;
    assert_eq!(code, 200, "{page}");
    let next = page["next"].as_str().expect("a second page");
    let (_, rest) = get(&format!("/api/turns?status=failed&limit=2&after={next}"), &root).await;
    assert_eq!(rest["next"], Value::Null);
    let listed: Vec<Value> =
        [&page, &rest].iter().flat_map(|p| p["turns"].as_array().cloned().unwrap_or_default()).collect();
    let newest_first: Vec<String> = failed.iter().rev().cloned().collect();
    assert_eq!(ids(&listed, "turn_id"), newest_first);
    assert!(listed.iter().all(|t| t["status"] == "failed" && t["error"].is_string()));
    let (_, queued) = get("/api/turns?status=queued", &root).await;
    assert_eq!(queued["turns"].as_array().map(Vec::len), Some(1), "{queued}");
    // A session's turns are its owner's (and admins'): another principal gets 404.
    let (_, bob) = parley_db::api_token::create(&client, "bob", false).await.expect("token");
    let (_, sessions) = get("/api/sessions?status=failed", &alice).await;
    let session = sessions["sessions"][0]["session_id"].as_str().expect("session").to_owned();
    let path = format!("/api/sessions/{session}/turns");
    assert_eq!(get(&path, &alice).await.0, 200);
    assert_eq!(get(&path, &root).await.0, 200);
    let (code, err) = get(&path, bob.expose()).await;
    assert_eq!((code, err["error"]["code"].as_str()), (404, Some("not_found")), "{err}");
    let (_, running) = get("/api/turns?status=running", &root).await;
    assert_eq!(running["turns"], json!([]));
    for bad in ["/api/turns", "/api/turns?status=completed", "/api/turns?status=failed&after=xyz"] {
        let (code, err) = get(bad, &root).await;
        assert_eq!(code, 400, "{bad}: {err}");
    }
    drop(client);
    app.stop().await;
}

#[tokio::test]
async fn a_stream_without_a_position_starts_with_a_snapshot_and_the_latest_turn() {
    let app = TestApp::spawn().await;
    let conv = app.create_conversation().await;
    let url = app.url(&format!("/api/conversations/{conv}/events"));

    // No turn yet: a snapshot of an empty conversation, then live events.
    let mut empty = sse::connect(&url, None).await;
    let got = sse::read_until(&mut empty, Duration::from_secs(10), |_| true).await;
    assert_eq!(got[0].event, "snapshot");
    assert_eq!((got[0].id, &got[0].data["turn_id"], &got[0].data["last_message_id"]), (0, &Value::Null, &Value::Null));
    let mut turns = Vec::new();
    for i in 0..3 {
        let turn = app.send(conv, &format!("message {i}")).await;
        app.wait_turn(turn).await;
        turns.push(turn.to_string());
    }
    let live = sse::read_until(&mut empty, Duration::from_secs(10), |m| {
        m.event == "turn_completed" && m.data["turn_id"] == turns[2]
    })
    .await;
    assert_eq!(live.iter().filter(|m| m.event == "turn_started").count(), 3, "the live events of every turn");
    drop(empty);

    // Three turns later: the snapshot, then only the last turn's events.
    let mut fresh = sse::connect(&url, None).await;
    let got = sse::read_until(&mut fresh, Duration::from_secs(10), |m| m.event == "turn_completed").await;
    let snapshot = &got[0];
    assert_eq!(snapshot.event, "snapshot");
    let d = &snapshot.data;
    assert_eq!((d["conversation_id"].as_str(), d["turn_id"].as_str()), (Some(&*conv.to_string()), Some(&*turns[2])));
    assert_eq!(
        (d["last_turn_status"].as_str(), &d["running"], &d["queued"]),
        (Some("completed"), &json!(false), &json!(0))
    );
    let messages = app.messages(conv).await;
    assert_eq!(d["last_message_id"], messages.last().expect("messages")["message_id"]);
    assert_eq!(d["replay_after_seq"].as_i64(), Some(snapshot.id), "the snapshot's id is where the replay starts");
    assert!(d["ts"].is_i64());
    let replayed = &got[1..];
    assert_eq!(replayed[0].event, "turn_started");
    assert!(replayed.iter().all(|m| m.data["turn_id"] == turns[2] && m.id > snapshot.id), "{replayed:?}");
    // A reconnect from the snapshot's id gets the same events, without a new snapshot.
    let mut again = sse::connect(&url, Some(snapshot.id)).await;
    let same = sse::read_until(&mut again, Duration::from_secs(10), |m| m.event == "turn_completed").await;
    assert_eq!(same.iter().map(|m| m.id).collect::<Vec<_>>(), replayed.iter().map(|m| m.id).collect::<Vec<_>>());
    // `?after=0` replays the whole log.
    let mut full = sse::connect(&format!("{url}?after=0"), None).await;
    let all = sse::read_until(&mut full, Duration::from_secs(10), |m| {
        m.event == "turn_completed" && m.data["turn_id"] == turns[2]
    })
    .await;
    assert_eq!(all.iter().filter(|m| m.event == "turn_started").count(), 3);
    assert!(all.iter().all(|m| m.event != "snapshot"));

    // Mid-turn, the snapshot says it runs, and the replay starts at its `turn_started`.
    let slow = app.send(conv, "take your time [demo:slow]").await;
    app.wait_status(slow, "running").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut mid = sse::connect(&url, None).await;
    let got = sse::read_until(&mut mid, Duration::from_secs(30), |m| m.event == "turn_completed").await;
    assert_eq!((got[0].event.as_str(), &got[0].data["running"]), ("snapshot", &json!(true)));
    assert_eq!(got[0].data["turn_id"], slow.to_string());
    assert_eq!(got[1].event, "turn_started");
    assert!(got[1..].iter().all(|m| m.data["turn_id"] == slow.to_string()));
    let text: String = got.iter().filter(|m| m.event == "text").filter_map(|m| m.data["text"].as_str()).collect();
    let stored = super::contents(&app.messages(conv).await, "assistant");
    assert_eq!(stored.last(), Some(&text), "the whole reply, once");
    app.stop().await;
}

#[tokio::test]
async fn a_full_replay_is_sent_in_pages_in_order() {
    let app = TestApp::spawn().await;
    let conv = app.create_conversation().await;
    let turn = Uuid::new_v4();
    let events: Vec<parley_db::event::Event> = (1..=1_234)
        .map(|seq| parley_db::event::Event {
            conversation_id: conv,
            seq,
            turn_id: Some(turn),
            kind: parley_db::event::EventKind::Text,
            data: json!({ "turn_id": turn, "text": format!("part {seq} ") }),
            created_at: Utc::now(),
        })
        .collect();
    let client = app.db.pool.get().await.expect("client");
    parley_db::event::insert_batch(&client, &events).await.expect("insert");
    let url = app.url(&format!("/api/conversations/{conv}/events"));
    let mut full = sse::connect(&format!("{url}?after=0"), None).await;
    let got = sse::read_until(&mut full, Duration::from_secs(20), |m| m.id == 1_234).await;
    assert_eq!(
        got.iter().map(|m| m.id).collect::<Vec<_>>(),
        (1..=1_234).collect::<Vec<_>>(),
        "every page, in order, once"
    );
    let mut tail = sse::connect(&format!("{url}?after=1000"), None).await;
    let got = sse::read_until(&mut tail, Duration::from_secs(20), |m| m.id == 1_234).await;
    assert_eq!(got.first().map(|m| m.id), Some(1_001));
    assert_eq!(got.len(), 234);
    drop(client);
    app.stop().await;
}
