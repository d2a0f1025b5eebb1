//! `parley serve --metrics-bind`: the real binary serves Prometheus metrics on a listener
//! of its own, and its counters, histograms and gauges move with real traffic — turns
//! posted through the API (the demo assistant), webhook deliveries (accepted, duplicate,
//! bad signature, not allowed) and an open event stream.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parley_test_support::TestDb;
use parley_test_support::process::Parley;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_parley");
const GENERIC_SECRET: &str = "metrics-test-generic-secret";
const TELEGRAM_SECRET: &str = "metrics-test-telegram-secret";

/// One scrape: `name{labels}` → value.
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    /// The sample's value; panics (showing the scrape) when it is missing.
    fn get(&self, key: &str) -> f64 {
        *self.samples.get(key).unwrap_or_else(|| panic!("no sample {key} in the scrape:\n{}", self.text))
    }
}

async fn scrape(server: &Parley) -> Scrape {
    let url = server.metrics_url.as_deref().expect("the server printed its metrics address");
    let resp = server.http.get(url).send().await.expect("scrape");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = resp.text().await.expect("body");
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect();
    Scrape { text, samples }
}

/// Posts a signed generic webhook delivery; returns the status and body.
async fn generic(server: &Parley, delivery_id: &str, body: &Value, secret: &str) -> (u16, Value) {
    let raw = body.to_string();
    let resp = server
        .http
        .post(server.url("/webhooks/generic"))
        .header("content-type", "application/json")
        .header("x-parley-signature", parley_platforms::verify::generic_signature(secret, raw.as_bytes()))
        .header("x-delivery-id", delivery_id)
        .body(raw)
        .send()
        .await
        .expect("webhook");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Waits until a scrape satisfies `ok`; returns it.
async fn scrape_until(server: &Parley, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(server).await;
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} never held; last scrape:\n{}", s.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_move_with_turns_webhooks_and_event_streams() {
    let db = TestDb::new().await;
    let server = Parley::start_with_env(
        BIN,
        &db.url(),
        "metrics-test",
        &["--metrics-bind", "127.0.0.1:0", "--assistant", "demo", "--demo-chunk-delay-ms", "0"],
        &[
            ("PARLEY_GENERIC_SECRET", GENERIC_SECRET),
            ("PARLEY_TELEGRAM_SECRET_TOKEN", TELEGRAM_SECRET),
            // Only user 1 may talk to the Telegram bot; the delivery below comes from 42.
            ("PARLEY_TELEGRAM_ALLOWED_USERS", "1"),
        ],
    );

    let before = scrape(&server).await;
    for outcome in ["completed", "failed", "cancelled", "requeued", "lost", "interrupted"] {
        assert_eq!(before.get(&format!("parley_turns_total{{outcome=\"{outcome}\"}}")), 0.0, "{outcome}");
    }
    for result in ["accepted", "duplicate", "bad_signature", "not_allowed"] {
        let key = format!("parley_webhook_deliveries_total{{platform=\"generic\",result=\"{result}\"}}");
        assert_eq!(before.get(&key), 0.0, "{key}");
    }
    assert_eq!(before.get("parley_event_streams_open"), 0.0);
    // Registered before any warm process was reused: 0.
    assert_eq!(before.get("parley_assistant_processes_warm_reuses_total{assistant=\"claude\"}"), 0.0);
    assert_eq!(before.get("parley_stale_recoveries_total{assistant=\"demo\",path=\"restored\"}"), 0.0);
    assert!(!before.text.contains("parley_turn_duration_seconds_count"), "no turn timed yet:\n{}", before.text);

    // Three turns through the API: two answered, one failed by the demo assistant.
    let conv = server.create_conversation().await;
    for text in ["hello", "[demo:tool] again", "[demo:fail] and fail"] {
        let turn = server.send(conv, text).await;
        server.wait_turn(turn, Duration::from_secs(30)).await;
    }

    // Webhooks: one accepted (and answered), its redelivery, a bad signature, a sender
    // not on the allow-list.
    let body = json!({ "conversation_id": "ticket-42", "text": "from the webhook" });
    let (status, answer) = generic(&server, "delivery-1", &body, GENERIC_SECRET).await;
    assert_eq!(status, 202, "{answer}");
    let turn = answer["turn_id"].as_str().expect("turn").parse().expect("uuid");
    server.wait_turn(turn, Duration::from_secs(30)).await;
    let (status, answer) = generic(&server, "delivery-1", &body, GENERIC_SECRET).await;
    assert_eq!((status, answer["duplicate"].as_bool()), (200, Some(true)), "{answer}");
    let (status, _) = generic(&server, "delivery-2", &body, "not-the-secret").await;
    assert_eq!(status, 401);
    let update = json!({
        "update_id": 1,
        "message": {
            "message_id": 7, "date": 1_700_000_000, "text": "hi",
            "from": { "id": 42, "is_bot": false, "first_name": "Stranger" },
            "chat": { "id": 42, "type": "private" },
        },
    });
    let resp = server
        .http
        .post(server.url("/webhooks/telegram"))
        .header("x-telegram-bot-api-secret-token", TELEGRAM_SECRET)
        .json(&update)
        .send()
        .await
        .expect("telegram");
    assert_eq!(resp.status(), 200, "refused senders are acknowledged so that Telegram does not retry");

    // An event stream, open while scraped.
    let stream = server.http.get(server.url(&format!("/api/conversations/{conv}/events"))).send().await.expect("sse");
    assert_eq!(stream.status(), 200);
    let open = scrape_until(&server, "one open event stream", |s| s.get("parley_event_streams_open") == 1.0).await;

    assert_eq!(open.get("parley_turns_total{outcome=\"completed\"}"), 3.0, "two API turns and the webhook's");
    assert_eq!(open.get("parley_turns_total{outcome=\"failed\"}"), 1.0);
    assert_eq!(open.get("parley_turns_total{outcome=\"requeued\"}"), 0.0);
    assert_eq!(open.get("parley_turn_duration_seconds_count{outcome=\"completed\"}"), 3.0);
    assert_eq!(open.get("parley_turn_duration_seconds_bucket{outcome=\"completed\",le=\"+Inf\"}"), 3.0);
    assert!(open.get("parley_turn_duration_seconds_sum{outcome=\"completed\"}") > 0.0);
    // The failed turn streamed no text; the three others did.
    assert_eq!(open.get("parley_turn_first_text_seconds_count{assistant=\"demo\"}"), 3.0);
    let generic_result =
        |r: &str| open.get(&format!("parley_webhook_deliveries_total{{platform=\"generic\",result=\"{r}\"}}"));
    assert_eq!(
        ["accepted", "duplicate", "bad_signature", "not_allowed"].map(generic_result),
        [1.0, 1.0, 1.0, 0.0],
        "generic deliveries by result"
    );
    assert_eq!(open.get("parley_webhook_deliveries_total{platform=\"telegram\",result=\"not_allowed\"}"), 1.0);
    assert_eq!(open.get("parley_turns_queued"), 0.0);
    assert_eq!(open.get("parley_turns_running"), 0.0);
    assert!(open.get("parley_db_pool_max_connections{pool=\"main\"}") >= 1.0);
    assert!(open.get("parley_db_pool_connections{pool=\"main\",state=\"idle\"}") >= 1.0, "connections were used");
    assert_eq!(open.get("parley_stale_recoveries_total{assistant=\"demo\",path=\"rebuilt\"}"), 0.0);
    assert_eq!(open.get("parley_assistant_processes_cold_starts_total{assistant=\"claude\"}"), 0.0, "demo only");

    drop(stream);
    scrape_until(&server, "the closed stream uncounted", |s| s.get("parley_event_streams_open") == 0.0).await;

    // The API listener does not serve the metrics.
    let api = server.http.get(server.url("/metrics")).send().await.expect("get");
    assert!(!api.text().await.expect("body").contains("parley_turns_total"));
}

#[tokio::test]
async fn without_metrics_bind_no_metrics_listener_starts() {
    let db = TestDb::new().await;
    let server = Parley::start(BIN, &db.url(), "no-metrics-test", &[]);
    assert_eq!(server.metrics_url, None);
}

/// The demo assistant's sessions live in its process: after a restart, the next turn
/// of a conversation finds its session stale and recovers by rebuilding the prompt from
/// history, which the new process counts.
#[tokio::test]
async fn a_stale_session_recovered_after_a_restart_is_counted_as_rebuilt() {
    let db = TestDb::new().await;
    let args = ["--metrics-bind", "127.0.0.1:0", "--assistant", "demo", "--demo-chunk-delay-ms", "0"];
    let server = Parley::start(BIN, &db.url(), "stale-metrics-test", &args);
    let conv = server.create_conversation().await;
    server.wait_turn(server.send(conv, "remember: blue").await, Duration::from_secs(30)).await;
    assert_eq!(scrape(&server).await.get("parley_stale_recoveries_total{assistant=\"demo\",path=\"rebuilt\"}"), 0.0);
    drop(server);

    let server = Parley::start(BIN, &db.url(), "stale-metrics-test", &args);
    let turn = server.wait_turn(server.send(conv, "what colour?").await, Duration::from_secs(30)).await;
    assert_eq!(turn["status"], "completed", "{turn}");
    let after = scrape(&server).await;
    assert_eq!(after.get("parley_stale_recoveries_total{assistant=\"demo\",path=\"rebuilt\"}"), 1.0);
    assert_eq!(after.get("parley_stale_recoveries_total{assistant=\"demo\",path=\"restored\"}"), 0.0);
    assert_eq!(after.get("parley_turns_total{outcome=\"completed\"}"), 1.0, "counted per process");
}
