//! Webhook acknowledgement latency benchmark (not a test).
//!
//! Starts a real Parley in process (fresh PostgreSQL database from
//! `PARLEY_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`),
//! with the platform APIs on a local stand-in server, and sends rounds of 50
//! concurrent signed deliveries per platform (every one a new message, so each is a
//! full ingest transaction). Prints p50 / p99 / max acknowledgement latency per
//! platform; the target is p99 ≤ 50 ms.
//!
//! ```sh
//! cargo run --release -p parley-server --example ack_bench [-- ROUNDS]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/webhooks/common.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::future::join_all;
use serde_json::json;

const CONCURRENCY: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let parley = Parley::start(Options {
        demo: parley_assistant::DemoConfig { chunk_delay: Duration::ZERO, slow_chunk_delay: Duration::ZERO },
        ..Options::default()
    })
    .await;
    println!("ack_bench: {rounds} rounds x {CONCURRENCY} concurrent deliveries per platform (+1 warm-up round)");
    println!("{:<10} {:>6} {:>9} {:>9} {:>9}", "platform", "n", "p50 ms", "p99 ms", "max ms");
    let mut seq: i64 = 0;
    for platform in ["telegram", "slack", "discord", "github", "generic"] {
        let mut latencies = Vec::new();
        for round in 0..=rounds {
            let mut requests = Vec::new();
            for _ in 0..CONCURRENCY {
                seq += 1;
                // Each delivery is a new message in one of 50 conversations.
                let chat = seq % 50;
                let (path, headers, body) = match platform {
                    "telegram" => {
                        let (h, b) = telegram_update(10_000 + seq, 5000 + chat, "bench", false);
                        ("/webhooks/telegram", h, b)
                    }
                    "slack" => {
                        let mut event =
                            slack_mention(&format!("EvBENCH{seq}"), &format!("1767225601.{chat:06}"), "bench");
                        event["event"]["thread_ts"] = json!(format!("1767225500.{chat:06}"));
                        let (h, b) = slack_signed(&event, SLACK_NOW);
                        ("/webhooks/slack", h, b)
                    }
                    "discord" => {
                        let mut command = discord_command(&format!("{}", 1_000_000 + seq), "ask", Some("bench"));
                        command["channel_id"] = json!(format!("{}", 7_000_000 + chat));
                        let (h, b) = discord_signed(&command);
                        ("/webhooks/discord", h, b)
                    }
                    "github" => {
                        let mut comment = github_comment("bench", "alice", "User");
                        comment["issue"]["number"] = json!(chat);
                        let (h, b) = github_signed("issue_comment", &format!("bench-{seq}"), &comment);
                        ("/webhooks/github", h, b)
                    }
                    _ => {
                        let (h, b) = generic_signed(
                            &format!("bench-{seq}"),
                            &json!({ "conversation_id": format!("bench-{chat}"), "text": "bench" }),
                        );
                        ("/webhooks/generic", h, b)
                    }
                };
                let parley = &parley;
                requests.push(async move {
                    let started = Instant::now();
                    let (status, body) = parley.post(path, &headers, body).await;
                    assert!(status == 200 || status == 202, "{platform}: {status} {body}");
                    started.elapsed()
                });
            }
            let round_latencies = join_all(requests).await;
            if round > 0 {
                latencies.extend(round_latencies);
            }
        }
        latencies.sort();
        println!(
            "{platform:<10} {:>6} {:>9.1} {:>9.1} {:>9.1}",
            latencies.len(),
            percentile(&latencies, 50.0).as_secs_f64() * 1e3,
            percentile(&latencies, 99.0).as_secs_f64() * 1e3,
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
        // Let the queued turns drain so platforms do not measure each other's workers.
        parley.wait_idle(Duration::from_secs(300)).await;
    }
    parley.stop().await;
}
