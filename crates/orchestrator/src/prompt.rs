//! Building the prompt for a fresh assistant session from Parley's own history.

use parley_db::message::{Message, Role};

/// Renders the prompt of a turn in a fresh session: the earlier conversation (oldest
/// first, clearly marked as context) followed by the new message. With no history the
/// prompt is the message itself.
///
/// The shape is plain text with XML-like tags, which Claude, Codex and OpenAI models
/// all read as structure:
///
/// ```text
/// The conversation so far is below, restored from the chat history because this is a
/// new assistant session. Use it as context; do not answer it again.
/// <earlier_conversation>
/// <user>…</user>
/// <assistant>…</assistant>
/// </earlier_conversation>
///
/// The new message to answer:
/// …
/// ```
#[must_use]
pub fn with_history(history: &[Message], message: &str) -> String {
    if history.is_empty() {
        return message.to_owned();
    }
    let mut prompt =
        String::with_capacity(history.iter().map(|m| m.content.len() + 24).sum::<usize>() + message.len() + 256);
    prompt.push_str(
        "The conversation so far is below, restored from the chat history because this is a new \
         assistant session. Use it as context; do not answer it again.\n<earlier_conversation>\n",
    );
    for m in history {
        let tag = if m.role == Role::Assistant { "assistant" } else { "user" };
        prompt.push('<');
        prompt.push_str(tag);
        prompt.push('>');
        prompt.push_str(&m.content);
        if m.metadata.get("incomplete").and_then(serde_json::Value::as_bool) == Some(true) {
            prompt.push_str(" [reply interrupted]");
        }
        prompt.push_str("</");
        prompt.push_str(tag);
        prompt.push_str(">\n");
    }
    prompt.push_str("</earlier_conversation>\n\nThe new message to answer:\n");
    prompt.push_str(message);
    prompt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: i64, role: &str, content: &str) -> Message {
        Message {
            message_id: id,
            conversation_id: uuid::Uuid::nil(),
            turn_id: None,
            role: role.parse().expect("a role"),
            content: content.into(),
            metadata: serde_json::json!({}),
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn no_history_is_the_message_alone() {
        assert_eq!(with_history(&[], "hi"), "hi");
    }

    #[test]
    fn history_comes_first_in_order_and_the_message_last() {
        let p = with_history(&[msg(1, "user", "my name is Ada"), msg(2, "assistant", "Hello Ada")], "what is my name?");
        let a = p.find("my name is Ada").expect("user message");
        let b = p.find("Hello Ada").expect("assistant message");
        assert!(a < b);
        assert!(p.ends_with("what is my name?"));
        assert!(p.contains("<earlier_conversation>"));
    }
}
