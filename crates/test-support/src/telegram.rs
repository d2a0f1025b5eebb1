//! Telegram Bot API requests as Telegram sends them to a webhook, for the platform tests
//! and the benchmark.

use serde_json::{Value, json};

/// A Telegram Bot API `Update` (core.telegram.org/bots/api#update) carrying a private
/// text `message` from user 42 (`@tester`) in chat `chat_id`; its `message_id` is
/// `update_id` modulo 100,000.
#[must_use]
pub fn update(update_id: i64, chat_id: i64, text: &str, is_bot: bool) -> Value {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id % 100_000,
            "from": { "id": 42, "is_bot": is_bot, "first_name": "Test", "username": "tester" },
            "chat": { "id": chat_id, "type": "private", "username": "tester" },
            "date": 1_767_225_600,
            "text": text,
        }
    })
}
