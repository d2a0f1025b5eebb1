//! Property tests: hostile webhook requests — arbitrary bytes, truncated JSON of the
//! fixture requests, invalid UTF-8, NUL, huge strings, values of the wrong type, odd
//! headers — never panic verification or parsing: each is an error with a message, a
//! handshake, an ignored event, or a message that PostgreSQL can store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use proptest::sample::Index;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::fixtures::{SLACK_NOW, request};
use crate::inbound::{self, Inbound, InboundMessage, ParseError};
use crate::verify::{self, VerifyError};

/// Every fixture request: (platform, headers, body).
fn fixtures() -> Vec<(&'static str, HeaderMap, Vec<u8>)> {
    let names: &[(&str, &[&str])] = &[
        ("telegram", &["update_private_text", "update_supergroup_command_reply"]),
        (
            "slack",
            &[
                "app_mention_thread_reply",
                "message_bot_echo",
                "message_im",
                "message_im_retry1_http_timeout",
                "url_verification",
            ],
        ),
        ("discord", &["application_command_ask", "application_command_ask_bad_signature", "ping"]),
        ("github", &["issue_comment_created", "issues_opened", "ping", "pull_request_review_comment_created"]),
    ];
    let mut out: Vec<_> = names
        .iter()
        .flat_map(|(p, ns)| {
            ns.iter().map(move |n| {
                let (h, b) = request(p, n);
                (*p, h, b)
            })
        })
        .collect();
    let mut generic = HeaderMap::new();
    generic.insert("x-delivery-id", HeaderValue::from_static("d-1"));
    let body = json!({"conversation_id": "ticket-42", "text": "hi", "sender": "ops", "title": "t", "callback_url": "https://example.com/cb"});
    out.push(("generic", generic, body.to_string().into_bytes()));
    out
}

/// The outcome every parser must give: a clear error, or an event whose message (if
/// any) can be stored.
fn check(outcome: Result<Inbound, ParseError>) -> Result<(), TestCaseError> {
    match outcome {
        Err(ParseError::Json(m) | ParseError::Invalid(m)) => prop_assert!(!m.is_empty()),
        Ok(Inbound::Handshake(_)) => {}
        Ok(Inbound::Ignored(reason)) => prop_assert!(!reason.is_empty()),
        Ok(Inbound::Message(m)) => check_storable(&m)?,
    }
    Ok(())
}

fn has_nul(v: &Value) -> bool {
    v.to_string().contains("\\u0000")
}

fn check_storable(m: &InboundMessage) -> Result<(), TestCaseError> {
    for (name, field) in [("external_id", &m.external_id), ("idempotency_key", &m.idempotency_key)] {
        prop_assert!(!field.is_empty() && !field.contains('\0'), "{} {:?}", name, field);
    }
    prop_assert!(!m.title.contains('\0') && !m.sender.contains('\0'), "{:?}", m);
    prop_assert!(!has_nul(&m.reply_target) && !has_nul(&m.metadata), "{:?}", m);
    Ok(())
}

/// Runs the parser of `platform` (with and without a configured bot name).
fn parse_all(platform: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), TestCaseError> {
    match platform {
        "telegram" => {
            check(inbound::telegram::parse(body, None))?;
            check(inbound::telegram::parse(body, Some("fixture_bot")))
        }
        "slack" => {
            check(inbound::slack::parse(body, None))?;
            check(inbound::slack::parse(body, Some("U0BOT12345")))
        }
        "discord" => check(inbound::discord::parse(body, SLACK_NOW)),
        "github" => {
            check(inbound::github::parse(headers, body, None))?;
            check(inbound::github::parse(headers, body, Some("Codertocat")))
        }
        _ => check(inbound::generic::parse(headers, body)),
    }
}

/// A hostile JSON value to put in place of a string of a fixture body.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        ".*".prop_map(Value::String),
        "[\\x00\u{FFFD}İẞ@<>&a ]{0,16}".prop_map(Value::String),
        (0usize..3, 0usize..200_000).prop_map(|(nul, n)| Value::String("\0".repeat(nul) + &"z".repeat(n))),
        Just(Value::Null),
        Just(json!(-9_223_372_036_854_775_808_i64)),
        Just(json!(1.5)),
        Just(json!(true)),
        Just(json!([])),
        Just(json!({})),
    ]
}

/// JSON pointers to every leaf of `v`.
fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Array(items) => items.iter().enumerate().for_each(|(i, x)| leaves(x, format!("{at}/{i}"), out)),
        Value::Object(map) => {
            map.iter().for_each(|(k, x)| leaves(x, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out));
        }
        _ => out.push(at),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bodies_never_panic_the_parsers(fixture in any::<Index>(), body in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let all = fixtures();
        let (platform, headers, _) = fixture.get(&all);
        parse_all(platform, headers, &body)?;
    }

    #[test]
    fn truncated_fixture_bodies_are_json_errors(fixture in any::<Index>(), cut in any::<Index>()) {
        let all = fixtures();
        let (platform, headers, body) = fixture.get(&all);
        let body = body.trim_ascii_end();
        let cut = cut.index(body.len());
        let outcome = match *platform {
            "telegram" => inbound::telegram::parse(&body[..cut], None),
            "slack" => inbound::slack::parse(&body[..cut], None),
            "discord" => inbound::discord::parse(&body[..cut], 0),
            "github" => inbound::github::parse(headers, &body[..cut], None),
            _ => inbound::generic::parse(headers, &body[..cut]),
        };
        prop_assert!(matches!(outcome, Err(ParseError::Json(_))), "{:?}", outcome);
    }

    /// A fixture body with a raw byte (NUL, invalid UTF-8, a quote) spliced in.
    #[test]
    fn fixture_bodies_with_a_stray_byte_never_panic(
        fixture in any::<Index>(),
        at in any::<Index>(),
        byte in prop_oneof![Just(0u8), Just(0xff), Just(0xc3), Just(b'"'), Just(b'\\'), any::<u8>()],
    ) {
        let all = fixtures();
        let (platform, headers, body) = fixture.get(&all);
        let mut body = body.clone();
        body.insert(at.index(body.len() + 1), byte);
        parse_all(platform, headers, &body)?;
    }

    /// A fixture body with one value replaced by a hostile one: NUL (as `\u0000`), huge
    /// strings, odd Unicode around the bot mention, or another type.
    #[test]
    fn fixture_bodies_with_a_hostile_value_never_panic(
        fixture in any::<Index>(),
        leaf in any::<Index>(),
        value in hostile_value(),
    ) {
        let all = fixtures();
        let (platform, headers, body) = fixture.get(&all);
        let mut v: Value = serde_json::from_slice(body).unwrap();
        let mut pointers = Vec::new();
        leaves(&v, String::new(), &mut pointers);
        *v.pointer_mut(leaf.get(&pointers).as_str()).unwrap() = value;
        parse_all(platform, headers, v.to_string().as_bytes())?;
    }

    /// Any header values: verification answers, never panics; the right signature over
    /// any body verifies, and any other body does not.
    #[test]
    fn verification_never_panics_and_accepts_exactly_the_signed_body(
        secret in ".{0,40}",
        header in ".{0,100}",
        timestamp in prop_oneof![any::<i64>().prop_map(|t| t.to_string()), ".{0,24}"],
        now in any::<i64>(),
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let other = [body.as_slice(), b"x"].concat();
        let _ = verify::telegram(&secret, Some(&header));
        prop_assert_eq!(verify::telegram(&secret, Some(&secret)), Ok(()));
        let _ = verify::slack(&secret, Some(&timestamp), Some(&header), &body, now);
        let _ = verify::github(&secret, Some(&header), &body);
        let _ = verify::generic(&secret, Some(&header), &body);
        let key = verify::discord_public_key("485ce6e837ee5ce618c256f565492c6b64c9366747455791f608c3e7f65195da").unwrap();
        let _ = verify::discord(&key, Some(&header), Some(&timestamp), &body);

        let signed = verify::generic_signature(&secret, &body);
        prop_assert_eq!(verify::generic(&secret, Some(&signed), &body), Ok(()));
        prop_assert_eq!(verify::github(&secret, Some(&signed), &body), Ok(()));
        prop_assert_eq!(verify::github(&secret, Some(&signed), &other), Err(VerifyError::Mismatch));

        let base = [b"v0:", timestamp.trim().as_bytes(), b":", body.as_slice()].concat();
        let slack_sig = format!("v0={}", verify::hmac_sha256_hex(secret.as_bytes(), &base));
        if let Ok(ts) = timestamp.trim().parse::<i64>() {
            prop_assert_eq!(verify::slack(&secret, Some(&timestamp), Some(&slack_sig), &body, ts), Ok(()));
            prop_assert_eq!(verify::slack(&secret, Some(&timestamp), Some(&slack_sig), &other, ts), Err(VerifyError::Mismatch));
        }

        let signing = SigningKey::from_bytes(&[7; 32]);
        let message = [timestamp.as_bytes(), body.as_slice()].concat();
        let sig = hex::encode(signing.sign(&message).to_bytes());
        let public = signing.verifying_key();
        prop_assert_eq!(verify::discord(&public, Some(&sig), Some(&timestamp), &body), Ok(()));
        prop_assert_eq!(verify::discord(&public, Some(&sig), Some(&timestamp), &other), Err(VerifyError::Mismatch));
    }

    /// Any header values for the parsers that read headers (GitHub, generic).
    #[test]
    fn arbitrary_headers_never_panic_the_parsers(
        names in proptest::collection::vec(prop_oneof![
            Just("x-github-event"), Just("x-github-delivery"), Just("x-delivery-id"), Just("x-other")
        ], 0..4),
        values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 4),
        fixture in any::<Index>(),
    ) {
        let all = fixtures();
        let (_, _, body) = fixture.get(&all);
        let mut headers = HeaderMap::new();
        for (name, value) in names.iter().zip(&values) {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.append(HeaderName::from_static(name), value);
            }
        }
        check(inbound::github::parse(&headers, body, None))?;
        check(inbound::generic::parse(&headers, body))?;
    }
}

#[test]
fn slack_timestamps_at_the_ends_of_i64_are_stale_not_a_panic() {
    for (ts, now) in [(i64::MIN, i64::MAX), (i64::MAX, i64::MIN), (i64::MIN, 0), (0, i64::MIN)] {
        assert_eq!(verify::slack("s", Some(&ts.to_string()), Some("v0=00"), b"{}", now), Err(VerifyError::Stale));
    }
}

#[test]
fn a_mention_after_letters_that_change_length_when_lowercased_is_stripped() {
    // `İ` is 2 bytes and lowercases to 3, `ẞ` is 3 and lowercases to 2: the text keeps
    // its byte length, but not its char boundaries.
    let body = |text: &str| {
        json!({"update_id": 1, "message": {"message_id": 2, "from": {"id": 3}, "chat": {"id": 4}, "text": text}})
            .to_string()
    };
    let Inbound::Message(m) =
        inbound::telegram::parse(body("İx@Fixture_Botẞ").as_bytes(), Some("fixture_bot")).unwrap()
    else {
        panic!("not a message")
    };
    assert_eq!(m.text, "İxẞ");
}

#[test]
fn nul_in_identifiers_is_refused_and_in_descriptions_replaced() {
    let mut headers = HeaderMap::new();
    headers.insert("x-delivery-id", HeaderValue::from_static("d-1"));
    let body = json!({"conversation_id": "a\0b", "text": "hi"}).to_string();
    assert!(
        matches!(inbound::generic::parse(&headers, body.as_bytes()), Err(ParseError::Invalid(m)) if m.contains("NUL"))
    );
    let body = json!({"conversation_id": "ab", "text": "hi\0", "sender": "s\0", "title": "t\0"}).to_string();
    let Inbound::Message(m) = inbound::generic::parse(&headers, body.as_bytes()).unwrap() else {
        panic!("not a message")
    };
    assert_eq!((m.sender.as_str(), m.title.as_str()), ("s\u{FFFD}", "t\u{FFFD}"));
    assert_eq!(m.metadata["sender"], "s\u{FFFD}");
    assert_eq!(m.text, "hi\0", "the text is kept: ingest refuses it and tells the user");
    let (_, body) = request("slack", "message_im");
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    v["event"]["channel"] = json!("D0\0");
    assert!(matches!(inbound::slack::parse(v.to_string().as_bytes(), None), Err(ParseError::Invalid(_))));
}
