//! Opaque cursors of the keyset-paged lists (`GET /api/conversations`, `/api/sessions`,
//! `/api/sessions/{id}/turns`, `/api/turns`): a list answers `next`, and `?after=` that
//! value returns the page that follows.
//!
//! A cursor is the last row's sort key, tagged with its list's name, as unpadded
//! base64url (RFC 4648 §5) of `list:part:part` text. Clients must not build or parse
//! them: the format may change. A cursor of another list, or one that does not decode,
//! is `400 invalid_cursor`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use parley_db::{conversation, session, turn};
use uuid::Uuid;

use crate::error::AppError;

/// A list's sort key, as a cursor carries it.
pub trait Key: Sized {
    /// The list's tag in the cursor.
    const LIST: &'static str;

    /// The key's parts, joined by `:`.
    fn parts(&self) -> String;

    /// The key from its parts; `None` when they do not parse.
    fn from_parts(parts: &str) -> Option<Self>;
}

/// The opaque cursor of `key`.
#[must_use]
pub fn encode<K: Key>(key: &K) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", K::LIST, key.parts()))
}

/// The key a cursor carries.
///
/// # Errors
/// 400 `invalid_cursor` when it is not a cursor of this list.
pub fn decode<K: Key>(cursor: &str) -> Result<K, AppError> {
    URL_SAFE_NO_PAD
        .decode(cursor.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(K::LIST)?.strip_prefix(':').and_then(K::from_parts))
        .ok_or_else(|| {
            AppError::bad_request(
                "invalid_cursor",
                format!("`after` must be the `next` of a previous page of this list ({})", K::LIST),
            )
        })
}

/// A request for one page of a keyset-paged list: where it starts and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest<K> {
    /// The key it starts after (`None`: the first page).
    pub after: Option<K>,
    /// How many rows the page holds.
    pub limit: i64,
}

impl<K: Key> PageRequest<K> {
    /// From `?after=&limit=`: the cursor decoded, the size clamped into `1..=max`
    /// (`default` when absent).
    ///
    /// # Errors
    /// 400 `invalid_cursor` for a cursor that is not one of this list's.
    pub fn parse(after: Option<&str>, limit: Option<i64>, default: i64, max: i64) -> Result<Self, AppError> {
        Ok(Self { after: after.map(decode::<K>).transpose()?, limit: limit.unwrap_or(default).clamp(1, max) })
    }

    /// How many rows to ask the store for: one more than the page, which only says
    /// that more follow, so `next` is null exactly on the last page.
    #[must_use]
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// The page's rows (the first `limit` of `rows`) and the cursor of the next page.
    pub fn finish<T>(&self, rows: Vec<T>, key: impl Fn(&T) -> Option<K>) -> (Vec<T>, Option<String>) {
        page(rows, self.limit, key)
    }
}

/// A page of a keyset-paged list: up to `limit` rows and the cursor of the next page,
/// from the rows of a query for `limit + 1` (see [`PageRequest::fetch`]).
pub fn page<T, K: Key>(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> Option<K>) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() <= limit {
        return (rows, None);
    }
    rows.truncate(limit);
    let next = rows.last().and_then(key).map(|k| encode(&k));
    (rows, next)
}

fn split2(parts: &str) -> Option<(&str, Uuid)> {
    let (first, id) = parts.split_once(':')?;
    Some((first, Uuid::parse_str(id).ok()?))
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(s: &str) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(s.parse().ok()?)
}

impl Key for conversation::ListKey {
    const LIST: &'static str = "conversations";

    fn parts(&self) -> String {
        format!("{}:{}", micros(self.last_activity_at), self.conversation_id)
    }

    fn from_parts(parts: &str) -> Option<Self> {
        let (at, conversation_id) = split2(parts)?;
        Some(Self { last_activity_at: from_micros(at)?, conversation_id })
    }
}

impl Key for session::ListKey {
    const LIST: &'static str = "sessions";

    fn parts(&self) -> String {
        format!("{}:{}", micros(self.started_at), self.session_id)
    }

    fn from_parts(parts: &str) -> Option<Self> {
        let (at, session_id) = split2(parts)?;
        Some(Self { started_at: from_micros(at)?, session_id })
    }
}

impl Key for turn::ListKey {
    const LIST: &'static str = "turns";

    fn parts(&self) -> String {
        format!("{}:{}", self.user_message_id, self.turn_id)
    }

    fn from_parts(parts: &str) -> Option<Self> {
        let (id, turn_id) = split2(parts)?;
        Some(Self { user_message_id: id.parse().ok()?, turn_id })
    }
}

/// The key of a session's turns (`GET /api/sessions/{id}/turns`): a turn's key, in a
/// list of its own (oldest first), so a cursor of `GET /api/turns` is refused there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTurns(pub turn::ListKey);

impl Key for SessionTurns {
    const LIST: &'static str = "session-turns";

    fn parts(&self) -> String {
        self.0.parts()
    }

    fn from_parts(parts: &str) -> Option<Self> {
        turn::ListKey::from_parts(parts).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_belongs_to_its_list() {
        let key = conversation::ListKey {
            last_activity_at: DateTime::from_timestamp_micros(1_712_345_678_901_234).expect("instant"),
            conversation_id: Uuid::new_v4(),
        };
        let cursor = encode(&key);
        assert!(cursor.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{cursor}");
        assert_eq!(decode::<conversation::ListKey>(&cursor).expect("decodes"), key);
        // The same shape of key, but another list's cursor.
        assert!(decode::<session::ListKey>(&cursor).is_err());
        for bad in ["", "!!", "bm9wZQ", &URL_SAFE_NO_PAD.encode("conversations:x:y")] {
            let err = decode::<conversation::ListKey>(bad).expect_err(bad);
            assert!(matches!(err, AppError::BadRequest { code: "invalid_cursor", .. }), "{bad}: {err:?}");
        }
        let turn = turn::ListKey { user_message_id: 42, turn_id: Uuid::new_v4() };
        assert_eq!(decode::<turn::ListKey>(&encode(&turn)).expect("decodes"), turn);
    }

    #[test]
    fn a_page_has_a_next_cursor_only_when_more_rows_follow() {
        let key = |n: &i64| Some(turn::ListKey { user_message_id: *n, turn_id: Uuid::nil() });
        let (rows, next) = page(vec![5, 4, 3], 3, key);
        assert_eq!((rows, next), (vec![5, 4, 3], None));
        let (rows, next) = page(vec![5, 4, 3, 2], 3, key);
        assert_eq!(rows, vec![5, 4, 3]);
        let next = decode::<turn::ListKey>(&next.expect("more follow")).expect("decodes");
        assert_eq!(next.user_message_id, 3);
    }
}
