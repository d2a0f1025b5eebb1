//! Inbound webhook verification: pure functions over the **raw body bytes** and header
//! values, run before anything is parsed or stored. A failed check is HTTP 401 and
//! changes nothing.
//!
//! Every comparison of a secret or MAC is constant-time (`subtle` / `Mac::verify_slice`).
//!
//! | Platform | Header(s) | Scheme | Source |
//! |---|---|---|---|
//! | Telegram | `X-Telegram-Bot-Api-Secret-Token` | the `secret_token` given to `setWebhook`, compared as is | core.telegram.org/bots/api#setwebhook |
//! | Slack | `X-Slack-Signature`, `X-Slack-Request-Timestamp` | `v0=` hex HMAC-SHA256 of `v0:{timestamp}:{body}`, 5-minute window | api.slack.com/authentication/verifying-requests-from-slack |
//! | Discord | `X-Signature-Ed25519`, `X-Signature-Timestamp` | Ed25519 over `timestamp ‖ body` with the application's public key | discord.com/developers/docs/interactions/receiving-and-responding#security-and-authorization |
//! | GitHub | `X-Hub-Signature-256` | `sha256=` hex HMAC-SHA256 of the body | docs.github.com/webhooks/using-webhooks/validating-webhook-deliveries |
//! | generic | `X-Parley-Signature` | `sha256=` hex HMAC-SHA256 of the body (Parley's own scheme, same as GitHub's) | docs/platforms.md |

use ed25519_dalek::{Signature, VerifyingKey};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How far a Slack request timestamp may be from now, in seconds (Slack's own advice).
pub const SLACK_MAX_AGE_SECS: i64 = 5 * 60;

/// The header carrying the generic webhook's signature: `sha256=<hex HMAC-SHA256 of the body>`.
pub const GENERIC_SIGNATURE_HEADER: &str = "x-parley-signature";

/// The header carrying the generic webhook's delivery id (its idempotency key).
pub const GENERIC_DELIVERY_HEADER: &str = "x-delivery-id";

/// Why a request was refused. Its text names the check, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A required header is absent (or not visible ASCII).
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is present but malformed (not hex, wrong prefix, wrong length).
    #[error("malformed header {0}")]
    Malformed(&'static str),
    /// The signature or token does not match.
    #[error("signature mismatch")]
    Mismatch,
    /// The request timestamp is outside the replay window.
    #[error("request timestamp is outside the {SLACK_MAX_AGE_SECS} s replay window")]
    Stale,
}

type HmacSha256 = Hmac<Sha256>;

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    for part in parts {
        mac.update(part);
    }
    mac
}

/// Hex HMAC-SHA256 of `body` under `secret` (lowercase), as GitHub and the generic
/// webhook send it after `sha256=`.
#[must_use]
pub fn hmac_sha256_hex(secret: &[u8], body: &[u8]) -> String {
    hex::encode(hmac_sha256(secret, &[body]).finalize().into_bytes())
}

fn verify_prefixed_hmac(
    header: Option<&str>,
    name: &'static str,
    prefix: &str,
    key: &[u8],
    parts: &[&[u8]],
) -> Result<(), VerifyError> {
    let value = header.ok_or(VerifyError::MissingHeader(name))?;
    let hex_sig = value.trim().strip_prefix(prefix).ok_or(VerifyError::Malformed(name))?;
    let sig = hex::decode(hex_sig).map_err(|_| VerifyError::Malformed(name))?;
    hmac_sha256(key, parts).verify_slice(&sig).map_err(|_| VerifyError::Mismatch)
}

/// Telegram: the `X-Telegram-Bot-Api-Secret-Token` header must equal the
/// `secret_token` passed to `setWebhook` (Bot API `setWebhook`). Telegram signs
/// nothing; this shared secret is the only check.
///
/// # Errors
/// [`VerifyError::MissingHeader`] or [`VerifyError::Mismatch`].
pub fn telegram(expected_secret: &str, header: Option<&str>) -> Result<(), VerifyError> {
    let got = header.ok_or(VerifyError::MissingHeader("X-Telegram-Bot-Api-Secret-Token"))?;
    // `ct_eq` on slices of different lengths is false without an early exit on content.
    if bool::from(got.as_bytes().ct_eq(expected_secret.as_bytes())) { Ok(()) } else { Err(VerifyError::Mismatch) }
}

/// Slack: `X-Slack-Signature: v0=<hex>` where hex is HMAC-SHA256 (key: the app's
/// signing secret) of `v0:{X-Slack-Request-Timestamp}:{raw body}`, and the timestamp
/// within [`SLACK_MAX_AGE_SECS`] of `now_unix` ("Verifying requests from Slack").
///
/// # Errors
/// [`VerifyError::MissingHeader`], [`VerifyError::Malformed`] (timestamp not an
/// integer, signature not `v0=` hex), [`VerifyError::Stale`], [`VerifyError::Mismatch`].
pub fn slack(
    signing_secret: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), VerifyError> {
    let ts_str = timestamp.ok_or(VerifyError::MissingHeader("X-Slack-Request-Timestamp"))?.trim();
    let ts: i64 = ts_str.parse().map_err(|_| VerifyError::Malformed("X-Slack-Request-Timestamp"))?;
    // `abs_diff`: a timestamp near `i64::MIN` / `i64::MAX` must not overflow.
    if now_unix.abs_diff(ts) > SLACK_MAX_AGE_SECS.unsigned_abs() {
        return Err(VerifyError::Stale);
    }
    verify_prefixed_hmac(
        signature,
        "X-Slack-Signature",
        "v0=",
        signing_secret.as_bytes(),
        &[b"v0:", ts_str.as_bytes(), b":", body],
    )
}

/// Parses a Discord application public key given as 64 hex characters (the
/// "Public Key" on the Developer Portal's General Information page).
///
/// # Errors
/// A readable message when it is not 32 bytes of hex or not a valid curve point.
pub fn discord_public_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes = hex::decode(hex_key.trim()).map_err(|_| "the Discord public key must be hex".to_owned())?;
    let arr: [u8; 32] = bytes.try_into().map_err(|_| "the Discord public key must be 32 bytes (64 hex)".to_owned())?;
    VerifyingKey::from_bytes(&arr).map_err(|_| "the Discord public key is not a valid Ed25519 key".to_owned())
}

/// Discord: `X-Signature-Ed25519` (hex, 64 bytes) is the application key's Ed25519
/// signature of `X-Signature-Timestamp ‖ raw body` (Discord "Receiving and
/// Responding", Security and Authorization). Verified with `verify_strict`.
///
/// # Errors
/// [`VerifyError::MissingHeader`], [`VerifyError::Malformed`], [`VerifyError::Mismatch`].
pub fn discord(
    public_key: &VerifyingKey,
    signature: Option<&str>,
    timestamp: Option<&str>,
    body: &[u8],
) -> Result<(), VerifyError> {
    let sig_hex = signature.ok_or(VerifyError::MissingHeader("X-Signature-Ed25519"))?;
    let ts = timestamp.ok_or(VerifyError::MissingHeader("X-Signature-Timestamp"))?;
    let sig_bytes = hex::decode(sig_hex.trim()).map_err(|_| VerifyError::Malformed("X-Signature-Ed25519"))?;
    let sig_arr: [u8; 64] = sig_bytes.try_into().map_err(|_| VerifyError::Malformed("X-Signature-Ed25519"))?;
    let sig = Signature::from_bytes(&sig_arr);
    let mut message = Vec::with_capacity(ts.len() + body.len());
    message.extend_from_slice(ts.as_bytes());
    message.extend_from_slice(body);
    public_key.verify_strict(&message, &sig).map_err(|_| VerifyError::Mismatch)
}

/// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>` under the
/// webhook secret ("Validating webhook deliveries").
///
/// # Errors
/// [`VerifyError::MissingHeader`], [`VerifyError::Malformed`], [`VerifyError::Mismatch`].
pub fn github(secret: &str, signature: Option<&str>, body: &[u8]) -> Result<(), VerifyError> {
    verify_prefixed_hmac(signature, "X-Hub-Signature-256", "sha256=", secret.as_bytes(), &[body])
}

/// The generic webhook: `X-Parley-Signature: sha256=<hex HMAC-SHA256 of the raw body>`
/// under `PARLEY_GENERIC_SECRET` — the same scheme as GitHub's, documented in
/// `docs/platforms.md`. Parley signs its callbacks the same way ([`generic_signature`]).
///
/// # Errors
/// [`VerifyError::MissingHeader`], [`VerifyError::Malformed`], [`VerifyError::Mismatch`].
pub fn generic(secret: &str, signature: Option<&str>, body: &[u8]) -> Result<(), VerifyError> {
    verify_prefixed_hmac(signature, "X-Parley-Signature", "sha256=", secret.as_bytes(), &[body])
}

/// The `X-Parley-Signature` value for `body`: `sha256=<hex>`.
#[must_use]
pub fn generic_signature(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hmac_sha256_hex(secret.as_bytes(), body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::*;

    #[test]
    fn telegram_secret_token_must_match_exactly() {
        let (headers, _) = request("telegram", "update_private_text");
        let secret = TELEGRAM_SECRET;
        assert_eq!(telegram(secret, header(&headers, "X-Telegram-Bot-Api-Secret-Token")), Ok(()));
        assert_eq!(telegram("tg_fixture_secret-0123456789ABCDEx", Some(secret)), Err(VerifyError::Mismatch));
        assert_eq!(telegram(secret, Some("tg_fixture_secret")), Err(VerifyError::Mismatch));
        assert_eq!(telegram(secret, Some("")), Err(VerifyError::Mismatch));
        assert!(matches!(telegram(secret, None), Err(VerifyError::MissingHeader(_))));
    }

    #[test]
    fn slack_doc_test_vector_verifies() {
        let v = json_fixture("slack/signature_test_vector.json");
        let ts = v["x_slack_request_timestamp"].as_str().unwrap();
        let now: i64 = ts.parse().unwrap();
        let secret = v["signing_secret"].as_str().unwrap();
        let body = v["body"].as_str().unwrap().as_bytes();
        let sig = v["expected_x_slack_signature"].as_str().unwrap();
        assert_eq!(slack(secret, Some(ts), Some(sig), body, now), Ok(()));
        assert_eq!(slack(secret, Some(ts), Some(sig), b"tampered", now), Err(VerifyError::Mismatch));
    }

    #[test]
    fn slack_fixture_requests_verify_and_stale_timestamps_fail() {
        for name in ["message_im", "app_mention_thread_reply", "message_bot_echo", "url_verification"] {
            let (headers, body) = request("slack", name);
            let ts = header(&headers, "X-Slack-Request-Timestamp");
            let sig = header(&headers, "X-Slack-Signature");
            assert_eq!(slack(SLACK_SECRET, ts, sig, &body, SLACK_NOW), Ok(()), "{name}");
            assert_eq!(slack(SLACK_SECRET, ts, sig, &body, SLACK_NOW + 301), Err(VerifyError::Stale), "{name}");
            assert_eq!(slack(SLACK_SECRET, ts, sig, &body, SLACK_NOW - 301), Err(VerifyError::Stale), "{name}");
            assert_eq!(slack(SLACK_SECRET, ts, sig, &body, SLACK_NOW + 299), Ok(()), "{name}");
            assert_eq!(slack("wrong", ts, sig, &body, SLACK_NOW), Err(VerifyError::Mismatch), "{name}");
        }
    }

    #[test]
    fn slack_rejects_malformed_headers() {
        let (headers, body) = request("slack", "message_im");
        let ts = header(&headers, "X-Slack-Request-Timestamp");
        assert!(matches!(
            slack(SLACK_SECRET, None, Some("v0=00"), &body, SLACK_NOW),
            Err(VerifyError::MissingHeader(_))
        ));
        assert!(matches!(slack(SLACK_SECRET, ts, None, &body, SLACK_NOW), Err(VerifyError::MissingHeader(_))));
        assert!(matches!(
            slack(SLACK_SECRET, Some("soon"), Some("v0=00"), &body, SLACK_NOW),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(slack(SLACK_SECRET, ts, Some("v1=00"), &body, SLACK_NOW), Err(VerifyError::Malformed(_))));
        assert!(matches!(slack(SLACK_SECRET, ts, Some("v0=zz"), &body, SLACK_NOW), Err(VerifyError::Malformed(_))));
        assert_eq!(slack(SLACK_SECRET, ts, Some("v0=00"), &body, SLACK_NOW), Err(VerifyError::Mismatch));
    }

    #[test]
    fn discord_fixture_signatures_verify_and_the_probe_fails() {
        let key = discord_public_key(DISCORD_PUBLIC_KEY).unwrap();
        for name in ["ping", "application_command_ask"] {
            let (headers, body) = request("discord", name);
            let sig = header(&headers, "X-Signature-Ed25519");
            let ts = header(&headers, "X-Signature-Timestamp");
            assert_eq!(discord(&key, sig, ts, &body), Ok(()), "{name}");
            assert_eq!(discord(&key, sig, Some("1767225621"), &body), Err(VerifyError::Mismatch), "{name}");
        }
        let (headers, body) = request("discord", "application_command_ask_bad_signature");
        let sig = header(&headers, "X-Signature-Ed25519");
        let ts = header(&headers, "X-Signature-Timestamp");
        assert_eq!(discord(&key, sig, ts, &body), Err(VerifyError::Mismatch));
        assert!(matches!(discord(&key, Some("abcd"), ts, &body), Err(VerifyError::Malformed(_))));
        assert!(matches!(discord(&key, None, ts, &body), Err(VerifyError::MissingHeader(_))));
        assert!(discord_public_key("00").is_err());
        assert!(discord_public_key("not hex").is_err());
    }

    #[test]
    fn github_doc_test_vector_and_fixture_requests_verify() {
        let v = json_fixture("github/signature_test_vector.json");
        let secret = v["secret"].as_str().unwrap();
        let expected = v["expected_x_hub_signature_256"].as_str().unwrap();
        assert_eq!(github(secret, Some(expected), v["payload"].as_str().unwrap().as_bytes()), Ok(()));
        assert_eq!(generic_signature(secret, v["payload"].as_str().unwrap().as_bytes()), expected);
        for name in ["issue_comment_created", "issues_opened", "ping", "pull_request_review_comment_created"] {
            let (headers, body) = request("github", name);
            let sig = header(&headers, "X-Hub-Signature-256");
            assert_eq!(github(GITHUB_SECRET, sig, &body), Ok(()), "{name}");
            let mut tampered = body.clone();
            tampered.push(b' ');
            assert_eq!(github(GITHUB_SECRET, sig, &tampered), Err(VerifyError::Mismatch), "{name}");
        }
        assert!(matches!(github(GITHUB_SECRET, Some("sha1=abcd"), b"{}"), Err(VerifyError::Malformed(_))));
    }

    #[test]
    fn generic_signature_round_trips() {
        let body = br#"{"conversation_id":"c1","text":"hi"}"#;
        let sig = generic_signature("s3cret", body);
        assert!(sig.starts_with("sha256="));
        assert_eq!(generic("s3cret", Some(&sig), body), Ok(()));
        assert_eq!(generic("other", Some(&sig), body), Err(VerifyError::Mismatch));
        assert!(matches!(generic("s3cret", None, body), Err(VerifyError::MissingHeader(_))));
    }
}
