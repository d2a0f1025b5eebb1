//! Webhook acknowledgement latency, after `crates/server/examples/ack_bench.rs`:
//! rounds of concurrent Telegram updates, each a new message (so a full ingest
//! transaction), timed from send to the `200`.

use std::time::Instant;

use anyhow::{Result, bail};
use futures::future::join_all;

use crate::server::Target;
use crate::stats::Samples;

/// Deliveries per round, all sent at once (as ack_bench does).
pub const CONCURRENCY: usize = 50;

/// Sends `rounds` rounds (after one warm-up round) of [`CONCURRENCY`] updates spread
/// over 50 chats, signed with `secret`; returns the acknowledgement latencies.
///
/// # Errors
/// When a delivery is not acknowledged with 200/202.
pub async fn telegram(target: &Target, secret: &str, rounds: usize) -> Result<Samples> {
    let mut samples = Samples::default();
    // Update ids unique per run, so a re-run against the same database is not deduplicated.
    let base = i64::from(std::process::id()) * 1_000_000;
    let mut seq = 0i64;
    for round in 0..=rounds {
        let mut requests = Vec::new();
        for _ in 0..CONCURRENCY {
            seq += 1;
            let body = serde_json::to_vec(&parley_test_support::telegram::update(
                base + seq,
                900_000 + seq % 50,
                "bench",
                false,
            ))?;
            requests.push(async move {
                let started = Instant::now();
                let resp = target
                    .http
                    .post(target.url("/webhooks/telegram"))
                    .header("content-type", "application/json")
                    .header("x-telegram-bot-api-secret-token", secret)
                    .body(body)
                    .send()
                    .await?;
                let elapsed = started.elapsed();
                let status = resp.status().as_u16();
                if status != 200 && status != 202 {
                    bail!("telegram webhook answered {status}: {}", resp.text().await.unwrap_or_default());
                }
                Ok(elapsed)
            });
        }
        for latency in join_all(requests).await {
            let latency = latency?;
            if round > 0 {
                samples.push(latency);
            }
        }
    }
    Ok(samples)
}
