//! Reading webhook bodies and headers: JSON parsing, required fields by dotted path, ids
//! that platforms send as numbers or strings. Every failure is a [`ParseError`] naming
//! the field.

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::ParseError;

/// The body as JSON.
pub(super) fn parse_json(body: &[u8]) -> Result<Value, ParseError> {
    serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))
}

/// A header's trimmed value; `None` when missing, empty or not visible ASCII.
pub(super) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

/// A JSON id that platforms send as a number or a string.
pub(super) fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The value at a dotted `path` (`chat.id`), not null.
pub(super) fn required<'a>(v: &'a Value, path: &str) -> Result<&'a Value, ParseError> {
    let found = path.split('.').try_fold(v, |acc, key| acc.get(key));
    found.filter(|x| !x.is_null()).ok_or_else(|| ParseError::Invalid(format!("missing field {path}")))
}

/// The string at a dotted `path`.
pub(super) fn required_str<'a>(v: &'a Value, path: &str) -> Result<&'a str, ParseError> {
    required(v, path)?.as_str().ok_or_else(|| ParseError::Invalid(format!("{path} must be a string")))
}

/// The integer at a dotted `path`.
pub(super) fn required_i64(v: &Value, path: &str) -> Result<i64, ParseError> {
    required(v, path)?.as_i64().ok_or_else(|| ParseError::Invalid(format!("{path} must be an integer")))
}

/// The id (number or string) at a dotted `path`.
pub(super) fn required_id(v: &Value, path: &str) -> Result<String, ParseError> {
    id_string(required(v, path)?).ok_or_else(|| ParseError::Invalid(format!("{path} must be a string")))
}

/// The string at a JSON `pointer` (`/comment/body`), or empty.
pub(super) fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// A user's display name: their `username`, else their `id`, else `unknown` (Telegram
/// `User`, Discord `User`).
pub(super) fn user_name(user: &Value) -> String {
    user.get("username")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| user.get("id").and_then(id_string))
        .unwrap_or_else(|| "unknown".into())
}
