//! `parley turns list [--status S] [--limit N] [--json]`: the real binary lists the turns
//! a real server left failed, running and queued, across conversations, newest first,
//! as a table or as JSON.

use std::process::{Command, Output};
use std::time::Duration;

use parley_test_support::TestDb;
use parley_test_support::process::Parley;
use serde_json::Value;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_parley");

fn turns(db: &TestDb, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["turns", "list"])
        .args(args)
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run parley turns list")
}

/// The turn ids of a `--json` listing, in order.
fn json_ids(out: &Output) -> Vec<Uuid> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    doc["turns"]
        .as_array()
        .expect("turns")
        .iter()
        .map(|t| t["turn_id"].as_str().expect("id").parse().expect("uuid"))
        .collect()
}

#[tokio::test]
async fn turns_list_shows_failed_running_and_queued_turns_newest_first() {
    let db = TestDb::new().await;
    let server =
        Parley::start(BIN, &db.url(), "turns-cli-test", &["--assistant", "demo", "--demo-chunk-delay-ms", "0"]);
    let first = server.create_conversation().await;
    let failed = server.send(first, "[demo:fail] please").await;
    server.wait_status(failed, "failed", Duration::from_secs(30)).await;
    // A slow turn (a second a chunk) keeps running while the next message waits behind it.
    let second = server.create_conversation().await;
    let running = server.send(second, "[demo:slow] take your time, there is no hurry at all").await;
    server.wait_status(running, "running", Duration::from_secs(30)).await;
    let queued = server.send(second, "and then this").await;

    assert_eq!(json_ids(&turns(&db, &["--status", "failed", "--json"])), vec![failed]);
    assert_eq!(json_ids(&turns(&db, &["--status", "running", "--json"])), vec![running]);
    assert_eq!(json_ids(&turns(&db, &["--status", "queued", "--json"])), vec![queued]);
    assert_eq!(json_ids(&turns(&db, &["--json"])), vec![queued, running, failed], "every status, newest first");
    assert_eq!(json_ids(&turns(&db, &["--json", "--limit", "2"])), vec![queued, running]);

    let out = turns(&db, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("TURN") && lines[0].contains("STATUS") && lines[0].ends_with("ERROR"), "{table}");
    assert_eq!(lines.len(), 4, "a header and three turns:\n{table}");
    let failed_line = lines.iter().find(|l| l.starts_with(&failed.to_string())).expect("the failed turn's line");
    assert!(failed_line.contains(&first.to_string()) && failed_line.contains("failed"), "{failed_line}");
    assert!(failed_line.contains("the demo assistant failed"), "the error is shown: {failed_line}");

    let out = turns(&db, &["--status", "interrupted"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "only the header");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no interrupted turns"));

    let out = turns(&db, &["--status", "completed"]);
    assert_eq!(out.status.code(), Some(2), "a status the listing has no index for is a usage error");
    let out = turns(&db, &["--limit", "0"]);
    assert_eq!(out.status.code(), Some(2));
}
