//! Parley's generic signed webhook (docs/platforms.md): a JSON body and an
//! `X-Delivery-Id` header to an [`Inbound`].

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::fields::{header, parse_json, required, required_str};
use super::{Inbound, InboundMessage, ParseError, storable};
use crate::Platform;
use crate::allow::Origin;
use crate::verify::GENERIC_DELIVERY_HEADER;

/// The longest `conversation_id`, in bytes.
const MAX_ID: usize = 200;

/// The longest `X-Delivery-Id`, in bytes.
const MAX_DELIVERY_ID: usize = 255;

/// Parses a generic webhook request:
/// `{"conversation_id": "…", "text": "…", "sender": "…"?, "title": "…"?, "callback_url": "https://…"?}`
/// with the delivery id in `X-Delivery-Id`. The reply target is
/// `{"callback_url", "conversation_id"}`.
///
/// # Errors
/// [`ParseError`] for a missing or over-long `X-Delivery-Id`, a missing or over-long
/// `conversation_id`, a missing `text`, or a `callback_url` that is not http(s).
pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Inbound, ParseError> {
    let delivery = header(headers, GENERIC_DELIVERY_HEADER)
        .ok_or_else(|| ParseError::Invalid("missing header X-Delivery-Id".into()))?;
    if delivery.len() > MAX_DELIVERY_ID {
        return Err(ParseError::Invalid(format!("X-Delivery-Id must be at most {MAX_DELIVERY_ID} bytes")));
    }
    let v = parse_json(body)?;
    let conversation = required(&v, "conversation_id")?
        .as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= MAX_ID)
        .ok_or_else(|| ParseError::Invalid(format!("conversation_id must be a string of 1 to {MAX_ID} bytes")))?;
    let text = required_str(&v, "text")?;
    let callback = match v.get("callback_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) if url.starts_with("https://") || url.starts_with("http://") => Some(url.clone()),
        Some(_) => return Err(ParseError::Invalid("callback_url must be an http:// or https:// URL".into())),
    };
    let sender = v.get("sender").and_then(Value::as_str).unwrap_or("generic").to_owned();
    storable(InboundMessage {
        origin: Origin::default(),
        platform: Platform::Generic,
        external_id: conversation.to_owned(),
        title: v.get("title").and_then(Value::as_str).unwrap_or_default().to_owned(),
        metadata: json!({ "platform": "generic", "sender": sender, "delivery": delivery }),
        sender,
        text: text.to_owned(),
        idempotency_key: delivery.to_owned(),
        reply_target: json!({ "callback_url": callback, "conversation_id": conversation }),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::inbound::tests::message;

    #[test]
    fn generic_body_and_delivery_header() {
        let mut headers = HeaderMap::new();
        headers.insert("x-delivery-id", "d-1".parse().unwrap());
        let body =
            br#"{"conversation_id":"ticket-42","text":"hi","sender":"ops","callback_url":"http://127.0.0.1:9/cb"}"#;
        let m = message(parse(&headers, body).unwrap());
        assert_eq!(m.external_id, "ticket-42");
        assert_eq!(m.idempotency_key, "d-1");
        assert_eq!(m.reply_target["callback_url"], "http://127.0.0.1:9/cb");
        assert!(matches!(
            parse(&headers, br#"{"conversation_id":"x","text":"hi","callback_url":"file:///etc"}"#),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(parse(&HeaderMap::new(), body), Err(ParseError::Invalid(_))));
        assert!(matches!(parse(&headers, br#"{"text":"hi"}"#), Err(ParseError::Invalid(_))));
    }
}
