//! The bodies of Parley's fuzz targets (`fuzz_targets/*.rs` call one function each), kept
//! in a library so every target states the same invariants:
//!
//! - the CLI output parsers ([`claude_stream`], [`codex_stream`]) take any bytes as
//!   stdout lines without panicking, their chunks are storable once made NUL-free, and a
//!   stale-session error names the session that was resumed;
//! - each webhook ([`webhook`]) verifies and parses any request without panicking, a
//!   parsed message is storable (no NUL outside its text, no empty identifiers), and the
//!   right signature over any body verifies.

#![forbid(unsafe_code)]

use std::sync::OnceLock;

use ed25519_dalek::{Signer, SigningKey};
use http::{HeaderMap, HeaderName, HeaderValue};
use parley_assistant::claude::ClaudeStream;
use parley_assistant::codex::CodexStream;
use parley_assistant::{AssistantError, Chunk};
use parley_platforms::inbound::{Inbound, ParseError};
use parley_platforms::{Platform, Platforms, PlatformsConfig, verify};

/// The session ID a fuzzed run "resumed", when it resumed one.
const RESUMED: &str = "0f0e7b8c-0000-4000-8000-000000000001";
/// The clock of the fuzzed webhooks (the Slack fixtures' signing time).
pub const NOW: i64 = 1_767_225_602;
/// The fuzzed webhooks' Telegram secret token.
pub const TELEGRAM_SECRET: &str = "tg_fixture_secret-0123456789ABCDEF";
/// The fuzzed webhooks' Slack signing secret.
pub const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
/// The fuzzed webhooks' GitHub webhook secret.
pub const GITHUB_SECRET: &str = "It's a Secret to Everybody";
/// The fuzzed webhooks' generic webhook secret.
pub const GENERIC_SECRET: &str = "generic-fuzz-secret";

/// The key Discord requests are signed with here (its public half is configured).
fn discord_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// Every platform configured, bot names set, on a fixed clock.
fn platforms() -> &'static Platforms {
    static PLATFORMS: OnceLock<Platforms> = OnceLock::new();
    PLATFORMS.get_or_init(|| {
        let discord_public = hex_encode(discord_key().verifying_key().as_bytes());
        let config = PlatformsConfig::from_lookup(|name| {
            let value = match name {
                "PARLEY_TELEGRAM_SECRET_TOKEN" => TELEGRAM_SECRET,
                "PARLEY_TELEGRAM_BOT_USERNAME" => "fixture_bot",
                "PARLEY_SLACK_SIGNING_SECRET" => SLACK_SECRET,
                "PARLEY_SLACK_BOT_USER_ID" => "U0BOT12345",
                "PARLEY_DISCORD_PUBLIC_KEY" => &discord_public,
                "PARLEY_GITHUB_WEBHOOK_SECRET" => GITHUB_SECRET,
                "PARLEY_GITHUB_BOT_LOGIN" => "parley-bot",
                "PARLEY_GENERIC_SECRET" => GENERIC_SECRET,
                _ => return None,
            };
            Some(value.to_owned())
        })
        .unwrap_or_else(|e| panic!("fuzz platform configuration: {e:?}"));
        Platforms::with_clock(config, std::sync::Arc::new(|| NOW))
    })
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits a fuzz input into a request: `Name: value` header lines, a blank line, the
/// body. Without a blank line the whole input is the body. Header lines that are not
/// valid header names or values are dropped, as an HTTP server would refuse them.
#[must_use]
pub fn request(data: &[u8]) -> (HeaderMap, &[u8]) {
    let mut headers = HeaderMap::new();
    let Some(split) = data.windows(2).position(|w| w == b"\n\n") else { return (headers, data) };
    for line in data[..split].split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let value = line[colon + 1..].trim_ascii();
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    (headers, &data[split + 2..])
}

/// One webhook request of `platform`: verification and parsing must answer, never
/// panic; a message must be storable; the right signature must verify.
///
/// # Panics
/// When an invariant breaks: that is the finding.
pub fn webhook(platform: Platform, data: &[u8]) {
    let platforms = platforms();
    let (headers, body) = request(data);
    let _ = platforms.verify(platform, &headers, body);
    match platforms.parse(platform, &headers, body) {
        Err(ParseError::Json(m) | ParseError::Invalid(m)) => assert!(!m.is_empty()),
        Ok(Inbound::Handshake(_)) => {}
        Ok(Inbound::Ignored(reason)) => assert!(!reason.is_empty()),
        Ok(Inbound::Message(m)) => {
            for id in [&m.external_id, &m.idempotency_key] {
                assert!(!id.is_empty() && !id.contains('\0'), "unstorable identifier {id:?}");
            }
            assert!(!m.title.contains('\0') && !m.sender.contains('\0'), "NUL in {m:?}");
            for v in [&m.reply_target, &m.metadata] {
                assert!(!v.to_string().contains("\\u0000"), "NUL in {v}");
            }
        }
    }
    let mut signed = headers.clone();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            signed.insert(name, value);
        }
    };
    match platform {
        Platform::Telegram => set("x-telegram-bot-api-secret-token", TELEGRAM_SECRET.to_owned()),
        Platform::Slack => {
            let base = [format!("v0:{NOW}:").as_bytes(), body].concat();
            set("x-slack-request-timestamp", NOW.to_string());
            set("x-slack-signature", format!("v0={}", verify::hmac_sha256_hex(SLACK_SECRET.as_bytes(), &base)));
        }
        Platform::Discord => {
            let sig = discord_key().sign(&[NOW.to_string().as_bytes(), body].concat());
            set("x-signature-timestamp", NOW.to_string());
            set("x-signature-ed25519", hex_encode(&sig.to_bytes()));
        }
        Platform::Github => set("x-hub-signature-256", verify::generic_signature(GITHUB_SECRET, body)),
        Platform::Generic => set(verify::GENERIC_SIGNATURE_HEADER, verify::generic_signature(GENERIC_SECRET, body)),
    }
    assert_eq!(platforms.verify(platform, &signed, body), Ok(()), "a correctly signed request was refused");
}

/// Stdout lines as the line reader hands them over (lossy UTF-8, no `\r\n`), the run's
/// resumed session, exit code and stderr, all taken from the input.
fn run(data: &[u8]) -> (Vec<String>, Option<String>, Option<i32>, String) {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned()).collect();
    let resumed = (data.len() % 2 == 1).then(|| RESUMED.to_owned());
    let exit = match data.len() % 3 {
        0 => Some(0),
        1 => Some(1),
        _ => None,
    };
    let stderr = lines.last().cloned().unwrap_or_default();
    (lines, resumed, exit, stderr)
}

fn check_chunk(chunk: Chunk) {
    let json = serde_json::to_string(&chunk.without_nul()).unwrap_or_default();
    assert!(!json.contains("\\u0000"), "NUL left in {json}");
}

fn check_outcome(outcome: Result<Chunk, AssistantError>, resumed: Option<&str>) {
    match outcome {
        Ok(chunk) => check_chunk(chunk),
        Err(AssistantError::StaleSession { session_id, .. }) => {
            assert_eq!(Some(session_id.as_str()), resumed, "a stale session that was not resumed");
        }
        Err(e) => assert!(!e.without_nul().to_string().contains('\0')),
    }
}

/// Claude Code stream-json output: every line through [`ClaudeStream::line`], then
/// [`ClaudeStream::finish`].
///
/// # Panics
/// When an invariant breaks: that is the finding.
pub fn claude_stream(data: &[u8]) {
    let (lines, resumed, exit, stderr) = run(data);
    let mut parser = ClaudeStream::new(resumed.clone());
    for line in &lines {
        parser.line(line).into_iter().for_each(check_chunk);
    }
    check_outcome(parser.finish(exit, &stderr), resumed.as_deref());
}

/// Codex `exec --json` output: every line through [`CodexStream::line`] (stopping at an
/// error, as the adapter does), then [`CodexStream::finish`].
///
/// # Panics
/// When an invariant breaks: that is the finding.
pub fn codex_stream(data: &[u8]) {
    let (lines, resumed, exit, stderr) = run(data);
    let mut parser = CodexStream::new(resumed.clone());
    for line in &lines {
        match parser.line(line) {
            Ok(chunks) => chunks.into_iter().for_each(check_chunk),
            Err(e) => return check_outcome(Err(e), resumed.as_deref()),
        }
    }
    check_outcome(parser.finish(exit, &stderr), resumed.as_deref());
}
