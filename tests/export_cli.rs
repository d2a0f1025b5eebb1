//! `parley export CONVERSATION_ID [--format json|markdown]`: the real binary writes the
//! same document as the web API's export to stdout, and refuses an unknown conversation
//! with exit code 3.

use std::process::Command;
use std::time::Duration;

use parley_test_support::TestDb;
use parley_test_support::process::Parley;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_parley");

fn export(db: &TestDb, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("export")
        .args(args)
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run")
}

#[tokio::test]
async fn the_cli_exports_what_the_api_exports() {
    let db = TestDb::new().await;
    let server = Parley::start(BIN, &db.url(), "export-test", &["--demo-chunk-delay-ms", "0"]);
    let conv = server.create_conversation().await;
    server.wait_turn(server.send(conv, "[demo:tool] hello").await, Duration::from_secs(30)).await;
    let api: Value = server
        .http
        .get(server.url(&format!("/api/conversations/{conv}/export")))
        .send()
        .await
        .expect("export")
        .json()
        .await
        .expect("json");

    let out = export(&db, &[&conv.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut cli: Value = serde_json::from_slice(&out.stdout).expect("one JSON document on stdout");
    let mut api = api;
    for doc in [&mut cli, &mut api] {
        doc["exported_at"] = Value::Null;
    }
    assert_eq!(cli, api, "the same document");
    assert_eq!(cli["messages"].as_array().map(Vec::len), Some(2));

    let out = export(&db, &[&conv.to_string(), "--format", "markdown"]);
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && md.starts_with("# ") && md.contains("**Bash**"), "{md}");

    let out = export(&db, &[&uuid::Uuid::new_v4().to_string()]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("conversation not found"));
    let out = export(&db, &["not-an-id"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
}
