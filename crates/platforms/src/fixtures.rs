//! Test helpers over the copied fixtures in `tests/fixtures/` (see the README there).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// Slack's documented sample signing secret; the fixture requests are signed with it.
pub const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
/// The timestamp the Slack fixture requests were signed at.
pub const SLACK_NOW: i64 = 1_767_225_602;
/// GitHub's documented sample webhook secret.
pub const GITHUB_SECRET: &str = "It's a Secret to Everybody";
/// The Discord fixtures' test application public key.
pub const DISCORD_PUBLIC_KEY: &str = "485ce6e837ee5ce618c256f565492c6b64c9366747455791f608c3e7f65195da";
/// The Telegram fixtures' secret token.
pub const TELEGRAM_SECRET: &str = "tg_fixture_secret-0123456789ABCDEF";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A fixture request: its headers and exact body bytes.
pub fn request(platform: &str, name: &str) -> (HeaderMap, Vec<u8>) {
    let body = std::fs::read(dir().join(format!("{platform}/requests/{name}.body"))).unwrap();
    let meta = json_fixture(&format!("{platform}/requests/{name}.headers.json"));
    let mut headers = HeaderMap::new();
    for (k, v) in meta["headers"].as_object().unwrap() {
        headers
            .insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v.as_str().unwrap()).unwrap());
    }
    (headers, body)
}

/// A header's value.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A JSON fixture by its path under `tests/fixtures/`.
pub fn json_fixture(path: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir().join(path)).unwrap()).unwrap()
}
