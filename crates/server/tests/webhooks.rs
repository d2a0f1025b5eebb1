//! End-to-end webhook tests: signed fixture requests against a real Parley (in
//! process, real PostgreSQL), with the platform APIs replaced by a recording wiremock
//! server.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "webhooks/common.rs"]
mod common;

use std::time::Duration;

use common::*;
use futures::future::join_all;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn telegram_fixtures_run_one_turn_with_typing_send_and_edits() {
    let p = Parley::start(Options::default()).await;
    let (status, body) = p.replay("telegram", "update_private_text").await;
    assert_eq!((status, body), (200, json!({ "ok": true, "duplicate": false })));
    let calls = p
        .mock
        .wait_for("the final Telegram edit", LONG, |c| {
            c.iter().any(|c| c.body["text"].as_str().is_some_and(|t| t.contains("fresh demo session")))
        })
        .await;
    let typing = p.mock.calls_to("/sendChatAction").await;
    assert_eq!(typing[0].path, format!("/tg/bot{TELEGRAM_BOT_TOKEN}/sendChatAction"));
    assert_eq!(typing[0].body, json!({ "chat_id": 218_485_655, "action": "typing" }));
    let sends = p.mock.calls_to("/sendMessage").await;
    assert_eq!(sends.len(), 1, "{:#?}", summarize(&calls));
    assert_eq!(sends[0].body["reply_parameters"]["message_id"], 6557);
    assert!(sends[0].body["text"].as_str().unwrap().starts_with("Demo reply"));
    assert!(!p.mock.calls_to("/editMessageText").await.is_empty(), "streaming edits: {:#?}", summarize(&calls));
    p.wait_idle(LONG).await;
    assert_eq!(p.count("select count(*) from turn where status = 'completed'").await, 1);
    assert_eq!(p.count("select count(*) from conversation where platform = 'telegram' and owner = 'telegram' and external_id = '218485655'").await, 1);

    // The supergroup fixture is `/report`, not a Parley command: answered as a notice.
    let (status, _) = p.replay("telegram", "update_supergroup_command_reply").await;
    assert_eq!(status, 200);
    let calls = p
        .mock
        .wait_for("the unknown-command notice", LONG, |c| c.iter().any(|c| c.body["chat_id"] == -1_001_293_752_024_i64))
        .await;
    let notice = calls.iter().find(|c| c.body["chat_id"] == -1_001_293_752_024_i64).unwrap();
    assert!(notice.path.ends_with("/sendMessage"));
    assert!(notice.body["text"].as_str().unwrap().contains("Unknown command /report"), "{}", notice.body);
    assert_eq!(p.count("select count(*) from turn").await, 1, "a command runs no turn");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slack_fixtures_handshake_reply_in_thread_dedupe_retries_and_ignore_the_bot() {
    let p = Parley::start(Options::default()).await;
    let (status, body) = p.replay("slack", "url_verification").await;
    assert_eq!((status, body), (200, json!({ "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P" })));

    let (status, _) = p.replay("slack", "message_im").await;
    assert_eq!(status, 200);
    let (status, body) = p.replay("slack", "message_im_retry1_http_timeout").await;
    assert_eq!((status, body["duplicate"].clone()), (200, json!(true)));
    let (status, body) = p.replay("slack", "message_bot_echo").await;
    assert_eq!(status, 200);
    assert!(body["ignored"].is_string(), "{body}");

    let (status, _) = p.replay("slack", "app_mention_thread_reply").await;
    assert_eq!(status, 200);
    p.wait_idle(LONG).await;
    let calls = p
        .mock
        .wait_for("both final Slack updates", LONG, |c| {
            c.iter().filter(|c| c.body["text"].as_str().is_some_and(|t| t.contains("fresh demo session"))).count() >= 2
        })
        .await;
    let posts = p.mock.calls_to("chat.postMessage").await;
    assert_eq!(posts.len(), 2, "{:#?}", summarize(&calls));
    assert_eq!(posts[0].headers["authorization"], "Bearer xoxb-test");
    let dm = posts.iter().find(|c| c.body["channel"] == "D0DMCHAN12").unwrap();
    assert!(dm.body.get("thread_ts").is_none(), "a DM is answered in the DM");
    let thread = posts.iter().find(|c| c.body["channel"] == "C0CHAN1234").unwrap();
    assert_eq!(thread.body["thread_ts"], "1767225500.000100");
    assert_eq!(thread.body["unfurl_links"], false);
    assert!(!p.mock.calls_to("chat.update").await.is_empty());
    assert_eq!(p.count("select count(*) from turn").await, 2, "retry and bot echo ran no turn");
    assert_eq!(p.count("select count(*) from message where role = 'user'").await, 2);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discord_fixtures_ping_defer_and_edit_the_original_and_refuse_the_probe() {
    let p = Parley::start(Options::default()).await;
    let (status, body) = p.replay("discord", "ping").await;
    assert_eq!((status, body), (200, json!({ "type": 1 })));
    let (status, body) = p.replay("discord", "application_command_ask_bad_signature").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(p.count("select count(*) from conversation").await, 0);
    let (status, body) = p.replay("discord", "application_command_ask").await;
    assert_eq!((status, body), (200, json!({ "type": 5 })));
    let calls = p
        .mock
        .wait_for("the final Discord edit", LONG, |c| {
            c.iter().any(|c| c.body["content"].as_str().is_some_and(|t| t.contains("fresh demo session")))
        })
        .await;
    let original = "/discord/webhooks/1234567890123456789/aW50ZXJhY3Rpb246MTQ1NTAwMDAwMDAwMDAwMDIwMDpGSVhUVVJFX1RPS0VO/messages/@original";
    assert!(calls.iter().all(|c| c.path == original && c.method == "PATCH"), "{:#?}", summarize(&calls));
    assert_eq!(calls[0].body["allowed_mentions"], json!({ "parse": [] }));
    assert!(calls.last().unwrap().body["content"].as_str().unwrap().contains("why did the nightly build fail?"));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn github_fixtures_ping_and_one_batch_comment_per_turn() {
    let p = Parley::start(Options::default()).await;
    let (status, body) = p.replay("github", "ping").await;
    assert_eq!(status, 200);
    assert_eq!(body["ok"], true);
    for name in ["issue_comment_created", "issues_opened", "pull_request_review_comment_created"] {
        let (status, body) = p.replay("github", name).await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    p.wait_idle(LONG).await;
    let calls = p.mock.wait_for("three comments", LONG, |c| c.len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calls = if calls.len() == 3 { p.mock.calls().await } else { calls };
    assert_eq!(calls.len(), 3, "batch: exactly one call per turn: {:#?}", summarize(&calls));
    let issue = p.mock.calls_to("/gh/repos/Codertocat/Hello-World/issues/1/comments").await;
    assert_eq!(issue.len(), 2, "issue comment + issue opened");
    assert_eq!(issue[0].headers["authorization"], "Bearer ghs_test");
    let review = p.mock.calls_to("/gh/repos/Codertocat/Hello-World/pulls/2/comments/284312630/replies").await;
    assert_eq!(review.len(), 1);
    assert!(review[0].body["body"].as_str().unwrap().contains("Maybe you should use more emoji"));
    // Redelivery (same X-GitHub-Delivery) runs nothing.
    let (status, body) = p.replay("github", "issue_comment_created").await;
    assert_eq!((status, body["duplicate"].clone()), (200, json!(true)));
    assert_eq!(p.count("select count(*) from turn").await, 3);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generic_webhook_posts_a_signed_callback() {
    let p = Parley::start(Options::default()).await;
    let callback = p.mock.base("/callback");
    let (headers, body) =
        generic_signed("d-1", &json!({ "conversation_id": "ticket-42", "text": "hi there", "callback_url": callback }));
    let (status, answer) = p.post("/webhooks/generic", &headers, body).await;
    assert_eq!(status, 202, "{answer}");
    assert!(answer["turn_id"].is_string());
    let calls = p.mock.wait_for("the callback", LONG, |c| c.iter().any(|c| c.body["final"] == true)).await;
    let last = calls.iter().find(|c| c.body["final"] == true).unwrap();
    assert_eq!(calls.len(), 1, "batch by default");
    assert_eq!(last.body["conversation_id"], "ticket-42");
    assert_eq!(last.body["status"], "completed");
    let sig = last.headers["x-parley-signature"].to_str().unwrap();
    assert!(parley_platforms::verify::generic(GENERIC_SECRET, Some(sig), &last.raw).is_ok(), "callback signed");
    assert!(last.headers.contains_key("x-delivery-id"));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_signatures_and_stale_slack_timestamps_are_401_and_store_nothing() {
    let p = Parley::start(Options::default()).await;
    for (platform, name) in [
        ("telegram", "update_private_text"),
        ("slack", "message_im"),
        ("discord", "application_command_ask"),
        ("github", "issue_comment_created"),
    ] {
        let (path, headers, mut body) = fixture(platform, name);
        body.insert(1, b' ');
        let headers: Vec<(String, String)> =
            if platform == "telegram" { h(&[("x-telegram-bot-api-secret-token", "wrong")]) } else { headers };
        let (status, answer) = p.post(&path, &headers, body).await;
        assert_eq!(status, 401, "{platform}: {answer}");
        assert_eq!(answer["error"]["code"], "unauthorized");
    }
    let (headers, body) = generic_signed("d-1", &json!({ "conversation_id": "x", "text": "hi" }));
    let (status, _) = p.post("/webhooks/generic", &headers, [body.as_slice(), b" "].concat()).await;
    assert_eq!(status, 401);
    // Missing signature headers are 401 too.
    let (_, _, body) = fixture("github", "issue_comment_created");
    let (status, _) = p.post("/webhooks/github", &h(&[("x-github-event", "issue_comment")]), body).await;
    assert_eq!(status, 401);
    // Slack: a valid signature six minutes old.
    p.clock.store(SLACK_NOW + 360, std::sync::atomic::Ordering::SeqCst);
    let (status, answer) = p.replay("slack", "message_im").await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("replay window"));
    assert_eq!(p.count("select count(*) from conversation").await, 0);
    assert_eq!(p.count("select count(*) from inbound_delivery").await, 0);
    assert!(p.mock.calls().await.is_empty());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unconfigured_platform_is_404_and_bad_payload_400() {
    let p = Parley::start(Options { extra_env: vec![("PARLEY_GENERIC_SECRET", String::new())], ..Options::default() })
        .await;
    let (headers, body) = generic_signed("d-1", &json!({ "conversation_id": "x", "text": "hi" }));
    let (status, answer) = p.post("/webhooks/generic", &headers, body).await;
    assert_eq!(status, 404);
    assert_eq!(answer["error"]["code"], "not_found");
    let (headers, body) = github_signed("issue_comment", "g-1", &json!({ "action": "created" }));
    let (status, answer) = p.post("/webhooks/github", &headers, body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_payload");
    let (status, _) =
        p.post("/webhooks/telegram", &h(&[("x-telegram-bot-api-secret-token", TELEGRAM_SECRET)]), b"{".to_vec()).await;
    assert_eq!(status, 400);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_delivery_five_times_and_concurrently_runs_one_turn_and_one_reply() {
    let p = Parley::start(Options::default()).await;
    // Sequential repeats.
    for _ in 0..5 {
        let (status, _) = p.replay("slack", "message_im").await;
        assert_eq!(status, 200);
    }
    // Concurrent repeats of new deliveries on three platforms.
    let (tg_headers, tg_body) = telegram_update(500, 777, "concurrent hello", false);
    let gh = github_comment("concurrent question", "alice", "User");
    let (gh_headers, gh_body) = github_signed("issue_comment", "gh-delivery-1", &gh);
    let (d_path, d_headers, d_body) = fixture("discord", "application_command_ask");
    let mut requests = Vec::new();
    for _ in 0..5 {
        requests.push(p.post("/webhooks/telegram", &tg_headers, tg_body.clone()));
        requests.push(p.post("/webhooks/github", &gh_headers, gh_body.clone()));
    }
    for _ in 0..5 {
        requests.push(p.post(&d_path, &d_headers, d_body.clone()));
    }
    let answers = join_all(requests).await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    let fresh = answers.iter().filter(|(_, b)| b["duplicate"] == false).count();
    assert_eq!(fresh, 2, "one first delivery each for Telegram and GitHub: {answers:?}");
    p.wait_idle(LONG).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.count("select count(*) from turn").await, 4);
    assert_eq!(p.count("select count(*) from message where role = 'user'").await, 4);
    assert_eq!(p.mock.calls_to("/sendMessage").await.len(), 1, "{:#?}", summarize(&p.mock.calls().await));
    assert_eq!(p.mock.calls_to("chat.postMessage").await.len(), 1);
    assert_eq!(p.mock.calls_to("/gh/").await.len(), 1);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_assistant_is_acknowledged_at_once_and_the_reply_follows() {
    let p = Parley::start(Options::default()).await;
    let slow = "[demo:slow] take your time";
    let (tg_headers, tg_body) = telegram_update(600, 600, slow, false);
    let (sl_headers, sl_body) = slack_signed(&slack_mention("EvSLOW1", "1767225601.000900", slow), SLACK_NOW);
    let (d_headers, d_body) = discord_signed(&discord_command("1455000000000009999", "ask", Some(slow)));
    let (g_headers, g_body) = github_signed("issue_comment", "gh-slow", &github_comment(slow, "alice", "User"));
    let acks = join_all([
        p.post("/webhooks/telegram", &tg_headers, tg_body),
        p.post("/webhooks/slack", &sl_headers, sl_body),
        p.post("/webhooks/discord", &d_headers, d_body),
        p.post("/webhooks/github", &g_headers, g_body),
    ])
    .await;
    assert!(acks.iter().all(|(s, _)| *s == 200), "{acks:?}");
    assert_eq!(acks[2].1, json!({ "type": 5 }));
    // Acknowledged before any reply text existed: the demo's first chunk comes 300 ms later.
    assert_eq!(p.count("select count(*) from turn where status = 'completed'").await, 0);
    assert!(p.mock.calls_to("/sendMessage").await.is_empty() && p.mock.calls_to("chat.postMessage").await.is_empty());
    p.wait_idle(LONG).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(p.mock.calls_to("/editMessageText").await.len() >= 2, "{:#?}", summarize(&p.mock.calls().await));
    assert!(!p.mock.calls_to("chat.update").await.is_empty());
    assert!(p.mock.calls_to("@original").await.len() >= 3, "PATCHed while streaming");
    assert_eq!(p.mock.calls_to("/gh/").await.len(), 1, "GitHub: one comment at the end");
    let comment = &p.mock.calls_to("/gh/").await[0];
    assert!(comment.body["body"].as_str().unwrap().contains("take your time"));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn telegram_429_retry_after_and_message_not_modified_are_handled() {
    let p = Parley::start(Options::default()).await;
    let not_modified: Value =
        serde_json::from_str(include_str!("../../platforms/tests/fixtures/telegram/out.error.400.not_modified.json"))
            .unwrap();
    p.mock
        .script(
            "/sendMessage",
            429,
            json!({ "ok": false, "error_code": 429, "description": "Too Many Requests: retry after 1", "parameters": { "retry_after": 1 } }),
            &[],
        )
        .await;
    for _ in 0..10 {
        p.mock.script("/editMessageText", 400, not_modified.clone(), &[]).await;
    }
    let (headers, body) = telegram_update(700, 700, "hello again", false);
    let started = std::time::Instant::now();
    let (status, _) = p.post("/webhooks/telegram", &headers, body).await;
    assert_eq!(status, 200);
    p.wait_idle(LONG).await;
    let calls = p
        .mock
        .wait_for("the reply after the 429", LONG, |c| {
            c.iter().filter(|c| c.path.ends_with("/sendMessage")).count() == 2
        })
        .await;
    let sends: Vec<_> = calls.iter().filter(|c| c.path.ends_with("/sendMessage")).collect();
    assert_eq!(sends[0].body, sends[1].body, "the same message, sent again after retry_after");
    assert!(started.elapsed() >= Duration::from_secs(1), "waited retry_after");
    // Every edit answered "not modified" and the turn still completed without a new message.
    assert_eq!(p.count("select count(*) from turn where status = 'completed'").await, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.mock.calls_to("/sendMessage").await.len(), 2, "not modified is success: no fallback message");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn telegram_parse_errors_are_sent_again_as_plain_text() {
    let p = Parley::start(Options {
        extra_env: vec![
            ("PARLEY_TELEGRAM_PARSE_MODE", "MarkdownV2".into()),
            ("PARLEY_TELEGRAM_REPLY_MODE", "batch".into()),
        ],
        ..Options::default()
    })
    .await;
    p.mock
        .script(
            "/sendMessage",
            400,
            json!({ "ok": false, "error_code": 400, "description": "Bad Request: can't parse entities: Character '.' is reserved and must be escaped" }),
            &[],
        )
        .await;
    let (headers, body) = telegram_update(800, 800, "format me.", false);
    assert_eq!(p.post("/webhooks/telegram", &headers, body).await.0, 200);
    let calls = p
        .mock
        .wait_for("the plain resend", LONG, |c| c.iter().filter(|c| c.path.ends_with("/sendMessage")).count() == 2)
        .await;
    let sends: Vec<_> = calls.iter().filter(|c| c.path.ends_with("/sendMessage")).collect();
    assert_eq!(sends[0].body["parse_mode"], "MarkdownV2");
    assert!(sends[1].body.get("parse_mode").is_none());
    assert_eq!(sends[0].body["text"], sends[1].body["text"]);
    assert!(p.mock.calls_to("/editMessageText").await.is_empty(), "batch mode: no edits");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ten_thousand_character_reply_is_split_per_platform() {
    let paragraph = format!("{}.", "lorem ipsum dolor sit amet ".repeat(14).trim_end());
    let reply: String = (0..27).map(|i| format!("{i}: {paragraph}")).collect::<Vec<_>>().join("\n\n");
    assert!(reply.chars().count() >= 10_000);
    // Batch reply mode: each platform posts its pieces in order, so they can be joined back.
    let p = Parley::start(Options {
        fixed_reply: Some(reply.clone()),
        extra_env: vec![
            ("PARLEY_TELEGRAM_REPLY_MODE", "batch".into()),
            ("PARLEY_SLACK_REPLY_MODE", "batch".into()),
            ("PARLEY_DISCORD_REPLY_MODE", "batch".into()),
        ],
        ..Options::default()
    })
    .await;
    let (tg_headers, tg_body) = telegram_update(900, 900, "long please", false);
    let (sl_headers, sl_body) = slack_signed(&slack_mention("EvLONG1", "1767225601.000901", "long please"), SLACK_NOW);
    let (d_headers, d_body) = discord_signed(&discord_command("1455000000000008888", "ask", Some("long please")));
    let (g_headers, g_body) =
        github_signed("issue_comment", "gh-long", &github_comment("long please", "alice", "User"));
    for (path, headers, body) in [
        ("/webhooks/telegram", tg_headers, tg_body),
        ("/webhooks/slack", sl_headers, sl_body),
        ("/webhooks/discord", d_headers, d_body),
        ("/webhooks/github", g_headers, g_body),
    ] {
        assert_eq!(p.post(path, &headers, body).await.0, 200, "{path}");
    }
    p.wait_idle(LONG).await;
    p.mock.wait_for("every piece", LONG, |c| c.iter().filter(|c| c.path.starts_with("/gh/")).count() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let calls = p.mock.calls().await;
    let check = |prefix: &str, key: &str, limit: usize, utf16: bool, min_pieces: usize| {
        let pieces: Vec<String> = calls
            .iter()
            .filter(|c| c.path.contains(prefix))
            .filter_map(|c| c.body.get(key).and_then(Value::as_str).map(str::to_owned))
            .collect();
        assert!(pieces.len() >= min_pieces, "{prefix}: {} pieces", pieces.len());
        for piece in &pieces {
            let len = if utf16 { piece.encode_utf16().count() } else { piece.chars().count() };
            assert!(len <= limit, "{prefix}: a piece of {len} > {limit}");
            assert!(piece.starts_with(|c: char| c.is_ascii_digit()), "{prefix}: cut mid-paragraph: {piece:.30}");
        }
        assert_eq!(squash(&pieces.join(" ")), squash(&reply), "{prefix}: the pieces make the reply");
    };
    check("/sendMessage", "text", 4096, true, 3);
    check("chat.postMessage", "text", 4000, false, 3);
    check("/discord/", "content", 2000, false, 6);
    check("/gh/", "body", 65_536, false, 1);
    assert!(p.mock.calls_to("?wait=true").await.len() >= 5, "Discord follow-ups after the original");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bot_echoes_are_ignored_on_every_platform() {
    let p = Parley::start(Options::default()).await;
    let (headers, body) = telegram_update(1000, 1000, "I am a bot", true);
    let (status, answer) = p.post("/webhooks/telegram", &headers, body).await;
    assert_eq!(status, 200);
    assert!(answer["ignored"].is_string());
    assert_eq!(p.replay("slack", "message_bot_echo").await.0, 200);
    let (headers, body) = github_signed("issue_comment", "gh-bot", &github_comment("beep", "parley[bot]", "Bot"));
    let (status, answer) = p.post("/webhooks/github", &headers, body).await;
    assert_eq!(status, 200);
    assert!(answer["ignored"].is_string());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(p.count("select count(*) from message").await, 0);
    assert!(p.mock.calls().await.is_empty());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chat_commands_work_from_every_platform() {
    let p = Parley::start(Options::default()).await;
    // Telegram `/status@fixture_bot`.
    let (headers, body) = telegram_update(1100, 1100, "/status@fixture_bot", false);
    assert_eq!(p.post("/webhooks/telegram", &headers, body).await.0, 200);
    // Slack mention `/help`.
    let (headers, body) = slack_signed(&slack_mention("EvCMD1", "1767225601.000950", "/help"), SLACK_NOW);
    assert_eq!(p.post("/webhooks/slack", &headers, body).await.0, 200);
    // Discord `/sessions` application command: answered in the interaction response.
    let (headers, body) = discord_signed(&discord_command("1455000000000007777", "sessions", None));
    let (status, answer) = p.post("/webhooks/discord", &headers, body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["type"], 4, "{answer}");
    assert!(answer["data"]["content"].is_string());
    // GitHub comment `/reset`.
    let (headers, body) = github_signed("issue_comment", "gh-cmd", &github_comment("/reset", "alice", "User"));
    assert_eq!(p.post("/webhooks/github", &headers, body).await.0, 200);
    // Generic `/help`: the reply is in the answer (and the callback, if any).
    let (headers, body) = generic_signed("g-cmd", &json!({ "conversation_id": "c-cmd", "text": "/help" }));
    let (status, answer) = p.post("/webhooks/generic", &headers, body).await;
    assert_eq!(status, 200);
    assert!(answer["reply"].as_str().unwrap().contains("/status"), "{answer}");

    let calls = p.mock.wait_for("three notices", LONG, |c| c.len() >= 3).await;
    let tg = calls.iter().find(|c| c.path.ends_with("/sendMessage")).expect("telegram notice");
    assert_eq!(tg.body["chat_id"], 1100);
    let slack = calls.iter().find(|c| c.path.ends_with("chat.postMessage")).expect("slack notice");
    assert!(slack.body["text"].as_str().unwrap().contains("/cancel"), "help text: {}", slack.body);
    assert_eq!(slack.body["thread_ts"], "1767225601.000950");
    let gh = calls.iter().find(|c| c.path.starts_with("/gh/")).expect("github notice");
    assert_eq!(gh.path, "/gh/repos/acme/widgets/issues/7/comments");
    assert_eq!(p.count("select count(*) from turn").await, 0, "commands run no turn");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_restart_the_next_telegram_message_is_answered_in_a_fresh_session() {
    let p = Parley::start(Options::default()).await;
    let (headers, body) = telegram_update(1200, 1200, "remember me", false);
    assert_eq!(p.post("/webhooks/telegram", &headers, body).await.0, 200);
    p.wait_idle(LONG).await;
    let (db, mock) = p.stop().await;
    // A new process: a new demo assistant that knows no session, over the same database.
    let p = Parley::start_on(db, mock, Options::default()).await;
    let (headers, body) = telegram_update(1201, 1200, "still there?", false);
    assert_eq!(p.post("/webhooks/telegram", &headers, body).await.0, 200);
    p.wait_idle(LONG).await;
    let calls = p
        .mock
        .wait_for("the answer after the restart", LONG, |c| {
            c.iter().any(|c| {
                c.body["text"].as_str().is_some_and(|t| t.contains("still there?") && t.contains("earlier message"))
            })
        })
        .await;
    assert!(calls.iter().any(|c| c.path.ends_with("/sendMessage") && c.body["chat_id"] == 1200));
    assert_eq!(p.count("select count(*) from turn where status = 'completed'").await, 2);
    assert_eq!(p.count("select count(*) from session where transition_reason = 'stale-session'").await, 1);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discord_falls_back_to_a_channel_message_when_the_interaction_token_expired() {
    let p = Parley::start(Options {
        demo: parley_assistant::DemoConfig { chunk_delay: Duration::from_millis(300), ..Default::default() },
        ..Options::default()
    })
    .await;
    let (headers, body) = discord_signed(&discord_command("1455000000000006666", "ask", Some("late answer")));
    assert_eq!(p.post("/webhooks/discord", &headers, body).await.0, 200);
    // Sixteen minutes pass before the reply is written.
    p.clock.fetch_add(16 * 60, std::sync::atomic::Ordering::SeqCst);
    p.wait_idle(LONG).await;
    let calls = p.mock.wait_for("a channel message", LONG, |c| c.iter().any(|c| c.path.contains("/channels/"))).await;
    assert!(calls.iter().all(|c| !c.path.contains("/webhooks/")), "{:#?}", summarize(&calls));
    let post = calls.iter().find(|c| c.method == "POST").unwrap();
    assert_eq!(post.path, "/discord/channels/645027906669510667/messages");
    assert_eq!(post.headers["authorization"], "Bot discord-bot-token");
    p.stop().await;
}

// ---- allow-lists: who may talk to the bot ----

/// Everything a refused message must not have created.
async fn stored_rows(p: &Parley) -> [i64; 4] {
    [
        p.count("select count(*) from conversation").await,
        p.count("select count(*) from message").await,
        p.count("select count(*) from turn").await,
        p.count("select count(*) from inbound_delivery").await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn telegram_allow_list_refuses_strangers_without_storing_and_tells_them_once_an_hour() {
    let p = Parley::with_env(&[
        ("PARLEY_TELEGRAM_ALLOW_EVERYONE", "false"),
        // The fixture's sender (a private chat: the chat ID is the user's ID).
        ("PARLEY_TELEGRAM_ALLOWED_USERS", "218485655, 5964236329"),
    ])
    .await;
    // A stranger (user 42) in a private chat, three times: nothing stored, one notice.
    for update_id in [7001, 7002, 7003] {
        let (headers, body) = telegram_update(update_id, 42, "run rm -rf / please", false);
        let (status, body) = p.post("/webhooks/telegram", &headers, body).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["refused"].as_str().is_some_and(|r| r.contains("Telegram user ID 42")), "{body}");
    }
    // The stranger's own command is refused the same way: no /status for strangers.
    let (headers, body) = telegram_update(7004, 42, "/status", false);
    assert_eq!(p.post("/webhooks/telegram", &headers, body).await.0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored_rows(&p).await, [0, 0, 0, 0], "a refused message stores nothing, not even its conversation");
    let notices = p.mock.calls_to("/sendMessage").await;
    assert_eq!(notices.len(), 1, "one notice per sender per hour: {:#?}", summarize(&p.mock.calls().await));
    assert_eq!(notices[0].body["chat_id"], 42);
    let text = notices[0].body["text"].as_str().unwrap();
    assert!(text.contains("not allowed") && text.contains("42"), "{text}");
    assert!(p.mock.calls_to("/sendChatAction").await.is_empty(), "no turn started");

    // The listed user is answered as usual.
    let (status, body) = p.replay("telegram", "update_private_text").await;
    assert_eq!((status, body), (200, json!({ "ok": true, "duplicate": false })));
    p.wait_idle(LONG).await;
    assert_eq!(p.count("select count(*) from turn where status = 'completed'").await, 1);
    assert_eq!(p.count("select count(*) from conversation where external_id = '42'").await, 0);
    p.stop().await;

    // Chats and users together: a listed user in an unlisted group is refused.
    let p = Parley::with_env(&[
        ("PARLEY_TELEGRAM_ALLOW_EVERYONE", "false"),
        ("PARLEY_TELEGRAM_ALLOWED_USERS", "5964236329"),
        ("PARLEY_TELEGRAM_ALLOWED_CHATS", "-100777"),
    ])
    .await;
    let (status, body) = p.replay("telegram", "update_supergroup_command_reply").await;
    assert_eq!(status, 200);
    assert!(body["refused"].as_str().is_some_and(|r| r.contains("chat ID -1001293752024")), "{body}");
    assert_eq!(stored_rows(&p).await, [0, 0, 0, 0]);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slack_allow_list_checks_team_channel_and_user_and_answers_strangers_privately() {
    let p = Parley::with_env(&[
        ("PARLEY_SLACK_ALLOW_EVERYONE", "false"),
        ("PARLEY_SLACK_ALLOWED_TEAMS", "T0AB12CD3"),
        ("PARLEY_SLACK_ALLOWED_USERS", "U0USR12345"),
    ])
    .await;
    // The fixtures' user in the listed team: answered.
    let (status, _) = p.replay("slack", "message_im").await;
    assert_eq!(status, 200);
    p.wait_idle(LONG).await;
    assert_eq!(p.count("select count(*) from turn").await, 1);
    let before = stored_rows(&p).await;

    // Another user of the same workspace, twice.
    for (id, ts) in [("EvSTRANGER1", "1767225700.000100"), ("EvSTRANGER2", "1767225701.000100")] {
        let mut event = slack_mention(id, ts, "hello");
        event["event"]["user"] = json!("U0STRANGER");
        let (headers, body) = slack_signed(&event, SLACK_NOW);
        let (status, body) = p.post("/webhooks/slack", &headers, body).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["refused"].as_str().is_some_and(|r| r.contains("U0STRANGER")), "{body}");
    }
    // The listed user, posting from another workspace in a Slack Connect channel.
    let mut event = slack_mention("EvCONNECT1", "1767225702.000100", "hello");
    event["event"]["user_team"] = json!("T0OTHERORG");
    let (headers, body) = slack_signed(&event, SLACK_NOW);
    let (status, body) = p.post("/webhooks/slack", &headers, body).await;
    assert_eq!(status, 200);
    assert!(body["refused"].as_str().is_some_and(|r| r.contains("T0OTHERORG")), "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored_rows(&p).await, before, "refused mentions store nothing");

    let ephemeral = p.mock.calls_to("chat.postEphemeral").await;
    assert_eq!(ephemeral.len(), 2, "one private notice per sender: {:#?}", summarize(&p.mock.calls().await));
    let stranger = ephemeral.iter().find(|c| c.body["user"] == "U0STRANGER").expect("the stranger is told");
    assert_eq!(stranger.body["channel"], "C0CHAN1234");
    assert_eq!(stranger.body["thread_ts"], "1767225700.000100");
    assert!(stranger.body["text"].as_str().unwrap().contains("not allowed"));
    assert_eq!(p.mock.calls_to("chat.postMessage").await.len(), 1, "only the allowed user's reply was posted");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discord_allow_list_answers_a_stranger_with_one_private_interaction_response() {
    let p = Parley::with_env(&[
        ("PARLEY_DISCORD_ALLOW_EVERYONE", "false"),
        ("PARLEY_DISCORD_ALLOWED_GUILDS", "290926798626357999"),
    ])
    .await;
    // The fixture comes from the listed guild.
    let (status, body) = p.replay("discord", "application_command_ask").await;
    assert_eq!((status, body), (200, json!({ "type": 5 })));
    p.wait_idle(LONG).await;
    let before = stored_rows(&p).await;
    // A direct message has no guild: refused, told once privately, then 403.
    let (headers, body) = discord_signed(&discord_command("3001", "ask", Some("hi")));
    let (status, body) = p.post("/webhooks/discord", &headers, body).await;
    assert_eq!(status, 200);
    assert_eq!(body["type"], 4, "{body}");
    assert_eq!(body["data"]["flags"], 64, "ephemeral: only the sender sees it");
    assert!(body["data"]["content"].as_str().unwrap().contains("not allowed"), "{body}");
    let (headers, body) = discord_signed(&discord_command("3002", "status", None));
    let (status, body) = p.post("/webhooks/discord", &headers, body).await;
    assert_eq!(status, 403, "no second notice within the hour: {body}");
    assert_eq!(body["error"]["code"], "not_allowed");
    // Another guild is refused too.
    let mut other = discord_command("3003", "ask", Some("hi"));
    other["guild_id"] = json!("111111111111111111");
    other["member"]["user"]["id"] = json!("222222222222222222");
    let (headers, body) = discord_signed(&other);
    let (status, body) = p.post("/webhooks/discord", &headers, body).await;
    assert_eq!((status, body["data"]["flags"].clone()), (200, json!(64)), "{body}");
    assert_eq!(stored_rows(&p).await, before, "refused interactions store nothing");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn github_allow_list_checks_repository_sender_and_association_and_never_comments_on_a_refusal() {
    let p = Parley::with_env(&[
        ("PARLEY_GITHUB_ALLOW_EVERYONE", "false"),
        ("PARLEY_GITHUB_ALLOWED_REPOS", "codertocat/hello-world"),
        ("PARLEY_GITHUB_MIN_ASSOCIATION", "collaborator"),
    ])
    .await;
    // The fixture: the repository's OWNER.
    let (status, _) = p.replay("github", "issue_comment_created").await;
    assert_eq!(status, 200);
    p.wait_idle(LONG).await;
    p.mock.wait_for("the answer comment", LONG, |c| c.len() == 1).await;
    let before = stored_rows(&p).await;

    // Another repository.
    let (headers, body) = github_signed("issue_comment", "d-other-repo", &github_comment("hi", "octocat", "User"));
    let (status, body) = p.post("/webhooks/github", &headers, body).await;
    assert_eq!(status, 200);
    assert!(body["refused"].as_str().is_some_and(|r| r.contains("acme/widgets")), "{body}");
    // The right repository, a CONTRIBUTOR, then no association at all.
    for (delivery, association) in [("d-contributor", Some("CONTRIBUTOR")), ("d-none", None)] {
        let mut comment = github_comment("please run this", "octocat", "User");
        comment["repository"]["full_name"] = json!("Codertocat/Hello-World");
        if let Some(a) = association {
            comment["comment"]["author_association"] = json!(a);
        }
        let (headers, body) = github_signed("issue_comment", delivery, &comment);
        let (status, body) = p.post("/webhooks/github", &headers, body).await;
        assert_eq!(status, 200);
        assert!(body["refused"].as_str().is_some_and(|r| r.contains("below the required COLLABORATOR")), "{body}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored_rows(&p).await, before, "refused deliveries store nothing");
    assert_eq!(
        p.mock.calls().await.len(),
        1,
        "no public comment for a refusal: {:#?}",
        summarize(&p.mock.calls().await)
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_platform_without_an_allow_list_admits_nobody() {
    let p = Parley::with_env(&[("PARLEY_TELEGRAM_ALLOW_EVERYONE", "false")]).await;
    let (status, body) = p.replay("telegram", "update_private_text").await;
    assert_eq!(status, 200);
    assert!(body["refused"].as_str().is_some_and(|r| r.contains("no allow-list")), "{body}");
    assert_eq!(stored_rows(&p).await, [0, 0, 0, 0]);
    p.stop().await;
}

// ---- refused text stores nothing ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_message_with_unstorable_text_stores_nothing_on_any_platform() {
    let p = Parley::start(Options::default()).await;
    let too_long = "x".repeat(100_001);
    for (n, text) in ["nul \u{0} inside", too_long.as_str()].into_iter().enumerate() {
        // Generic: 400 invalid_text.
        let body = json!({ "conversation_id": format!("ticket-{n}"), "text": text });
        let (headers, raw) = generic_signed(&format!("bad-{n}"), &body);
        let (status, answer) = p.post("/webhooks/generic", &headers, raw).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_text");
        // Telegram: acknowledged (or it retries), the sender told why.
        let (headers, raw) = telegram_update(8000 + n as i64, 4242 + n as i64, text, false);
        let (status, answer) = p.post("/webhooks/telegram", &headers, raw).await;
        assert_eq!(status, 200, "{answer}");
        // Discord: told in the interaction response.
        let (headers, raw) = discord_signed(&discord_command(&format!("400{n}"), "ask", Some(text)));
        let (status, answer) = p.post("/webhooks/discord", &headers, raw).await;
        assert_eq!((status, answer["type"].clone()), (200, json!(4)), "{answer}");
        // GitHub: a comment saying why (as before), nothing stored.
        let (headers, raw) =
            github_signed("issue_comment", &format!("gh-bad-{n}"), &github_comment(text, "octocat", "User"));
        assert_eq!(p.post("/webhooks/github", &headers, raw).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored_rows(&p).await, [0, 0, 0, 0], "no conversation, message, turn or delivery");
    let told = p.mock.calls_to("/sendMessage").await;
    assert_eq!(told.len(), 2, "{:#?}", summarize(&p.mock.calls().await));
    assert!(told[0].body["text"].as_str().unwrap().contains("could not accept"));
    p.stop().await;
}

// ---- a generic delivery id reused for another request ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generic_delivery_id_reused_for_another_message_is_422_and_stores_nothing() {
    let p = Parley::start(Options::default()).await;
    let first = json!({ "conversation_id": "ticket-1", "text": "deploy staging" });
    let (headers, raw) = generic_signed("d-1", &first);
    let (status, answer) = p.post("/webhooks/generic", &headers, raw.clone()).await;
    assert_eq!(status, 202, "{answer}");
    let (status, repeat) = p.post("/webhooks/generic", &headers, raw).await;
    assert_eq!((status, repeat["duplicate"].clone()), (200, json!(true)), "{repeat}");
    assert_eq!(repeat["turn_id"], answer["turn_id"]);
    assert_eq!(repeat["conversation_id"], answer["conversation_id"]);
    assert!(answer["conversation_id"].is_string(), "{answer}");
    let before = stored_rows(&p).await;
    for other in [
        json!({ "conversation_id": "ticket-1", "text": "deploy production" }),
        json!({ "conversation_id": "ticket-2", "text": "deploy staging" }),
    ] {
        let (headers, raw) = generic_signed("d-1", &other);
        let (status, answer) = p.post("/webhooks/generic", &headers, raw).await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["error"]["code"], "idempotency_key_reused");
    }
    assert_eq!(stored_rows(&p).await, before, "nothing stored, not even ticket-2's conversation");
    p.stop().await;
}

// ---- one transaction per delivery ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_id_raced_for_other_conversations_leaves_only_the_winners() {
    let p = Parley::start(Options::default()).await;
    // Eight deliveries under one id, each for a conversation of its own, all at once:
    // the conversation is created in the delivery's ingest transaction, so the losers
    // leave none behind.
    let requests: Vec<_> = (0..8)
        .map(|n| generic_signed("race-1", &json!({ "conversation_id": format!("race-{n}"), "text": "deploy" })))
        .collect();
    let parley = &p;
    let answers = join_all(requests.into_iter().map(|(headers, raw)| async move {
        let (status, answer) = parley.post("/webhooks/generic", &headers, raw).await;
        (status, answer["error"]["code"].clone())
    }))
    .await;
    assert_eq!(answers.iter().filter(|(status, _)| *status == 202).count(), 1, "{answers:?}");
    assert!(
        answers.iter().all(|a| a.0 == 202 || *a == (422, json!("idempotency_key_reused"))),
        "the others were refused: {answers:?}"
    );
    let stored = [
        p.count("select count(*) from conversation").await,
        p.count("select count(*) from message where role = 'user'").await,
        p.count("select count(*) from turn").await,
        p.count("select count(*) from inbound_delivery").await,
    ];
    assert_eq!(stored, [1, 1, 1, 1], "one conversation, user message, turn and delivery");
    p.stop().await;
}
