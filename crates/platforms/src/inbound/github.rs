//! GitHub: a webhook delivery (docs.github.com "Webhook events and payloads") to an
//! [`Inbound`].

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::fields::{header, parse_json, required, required_str, str_at};
use super::{Inbound, InboundMessage, ParseError, storable, without_mention};
use crate::Platform;
use crate::allow::{Association, Field, Origin};

/// What a handled event says: the issue or pull request, the text, and where to reply.
struct Subject<'a> {
    /// The issue or pull request number (`None` when not an integer).
    number: Option<i64>,
    /// The text as written.
    raw: String,
    /// The issue or pull request title.
    title: &'a str,
    /// `issue` (comment on the issue) or `review_comment` (reply in a review thread).
    kind: &'static str,
    /// The review thread's top-level comment, for `review_comment`.
    comment_id: Option<i64>,
}

/// The subject of a handled `(event, action)`, `None` for any other.
fn subject<'a>(v: &'a Value, event: &str, action: &str) -> Result<Option<Subject<'a>>, ParseError> {
    Ok(Some(match (event, action) {
        ("issue_comment", "created") => Subject {
            number: required(v, "issue.number")?.as_i64(),
            raw: str_at(v, "/comment/body").to_owned(),
            title: str_at(v, "/issue/title"),
            kind: "issue",
            comment_id: None,
        },
        ("issues", "opened") => {
            let title = str_at(v, "/issue/title");
            let body = str_at(v, "/issue/body");
            Subject {
                number: required(v, "issue.number")?.as_i64(),
                raw: format!("{title}\n\n{body}"),
                title,
                kind: "issue",
                comment_id: None,
            }
        }
        // Replies go to the thread's top-level comment (the replies endpoint does not
        // take a reply's id).
        ("pull_request_review_comment", "created") => Subject {
            number: required(v, "pull_request.number")?.as_i64(),
            raw: str_at(v, "/comment/body").to_owned(),
            title: str_at(v, "/pull_request/title"),
            kind: "review_comment",
            comment_id: v
                .pointer("/comment/in_reply_to_id")
                .and_then(Value::as_i64)
                .or_else(|| v.pointer("/comment/id").and_then(Value::as_i64)),
        },
        _ => return Ok(None),
    }))
}

/// Parses a GitHub webhook delivery by `X-GitHub-Event`: `ping` is a handshake;
/// `issue_comment` (created), `issues` (opened) and `pull_request_review_comment`
/// (created) are messages on `owner/repo#number`, deduplicated by `X-GitHub-Delivery`.
/// Senders of type `Bot` and the configured `bot_login` are ignored. The reply target
/// is `{"repo", "number", "kind", "comment_id"}`.
///
/// # Errors
/// [`ParseError`] when `X-GitHub-Event` / `X-GitHub-Delivery` are missing or the body
/// is not a webhook payload.
pub fn parse(headers: &HeaderMap, body: &[u8], bot_login: Option<&str>) -> Result<Inbound, ParseError> {
    let event =
        header(headers, "x-github-event").ok_or_else(|| ParseError::Invalid("missing header X-GitHub-Event".into()))?;
    let delivery = header(headers, "x-github-delivery")
        .ok_or_else(|| ParseError::Invalid("missing header X-GitHub-Delivery".into()))?;
    let v = parse_json(body)?;
    if event == "ping" {
        return Ok(Inbound::Handshake(json!({ "ok": true, "zen": v.get("zen") })));
    }
    let action = str_at(&v, "/action");
    let sender_login = v.pointer("/sender/login").and_then(Value::as_str).unwrap_or("unknown");
    let sender_is_bot = v.pointer("/sender/type").and_then(Value::as_str) == Some("Bot");
    let is_me = bot_login.is_some_and(|me| me.eq_ignore_ascii_case(sender_login));
    let Some(subject) = subject(&v, event, action)? else {
        return Ok(Inbound::Ignored(format!("GitHub event {event}.{action}")));
    };
    if sender_is_bot || is_me {
        return Ok(Inbound::Ignored("event from a bot".into()));
    }
    let number = subject.number.ok_or_else(|| ParseError::Invalid("the issue number must be an integer".into()))?;
    let repo = required_str(&v, "repository.full_name")?;
    let text = without_mention(&subject.raw, bot_login.map(|me| format!("@{me}")));
    if text.is_empty() {
        return Ok(Inbound::Ignored("empty message".into()));
    }
    // The association of whoever wrote the text: the comment's, or the issue's when it
    // was opened.
    let author = if event == "issues" {
        v.pointer("/issue/author_association")
    } else {
        v.pointer("/comment/author_association")
    };
    let association = author.and_then(Value::as_str).map(|a| Association::parse(a).unwrap_or(Association::None));
    let ids = vec![(Field::GithubRepository, repo.to_owned()), (Field::GithubSender, sender_login.to_owned())];
    storable(InboundMessage {
        origin: Origin { ids, association },
        platform: Platform::Github,
        external_id: format!("{repo}#{number}"),
        title: subject.title.to_owned(),
        sender: sender_login.to_owned(),
        text,
        idempotency_key: delivery.to_owned(),
        reply_target: json!({ "repo": repo, "number": number, "kind": subject.kind, "comment_id": subject.comment_id }),
        metadata: json!({ "platform": "github", "sender": sender_login, "event": event, "delivery": delivery }),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::request;
    use crate::inbound::tests::{message, names};

    /// The message of the GitHub fixture request `name`.
    fn fixture(name: &str) -> InboundMessage {
        let (headers, body) = request("github", name);
        message(parse(&headers, &body, None).unwrap())
    }

    #[test]
    fn github_issue_comment_is_a_message_on_the_issue() {
        let m = fixture("issue_comment_created");
        assert_eq!(
            names(&m),
            (
                "Codertocat/Hello-World#1",
                "You are totally right! I'll get this fixed right away.",
                "72d3162e-cc78-11e3-81ab-4c9367dc0958"
            )
        );
        assert_eq!(m.sender, "Codertocat");
        assert_eq!(m.reply_target["kind"], "issue");
        assert_eq!(m.reply_target["number"], 1);
    }

    #[test]
    fn github_issue_opened_and_review_comment() {
        let m = fixture("issues_opened");
        assert!(m.text.starts_with("Spelling error in the README file"), "{}", m.text);
        let m = fixture("pull_request_review_comment_created");
        assert_eq!(m.external_id, "Codertocat/Hello-World#2");
        assert_eq!(m.reply_target["kind"], "review_comment");
        assert_eq!(m.reply_target["comment_id"], 284_312_630);
    }

    #[test]
    fn github_ping_is_a_handshake_and_bots_are_ignored() {
        let (headers, body) = request("github", "ping");
        assert!(matches!(parse(&headers, &body, None).unwrap(), Inbound::Handshake(_)));
        let (headers, body) = request("github", "issue_comment_created");
        assert!(matches!(parse(&headers, &body, Some("codertocat")).unwrap(), Inbound::Ignored(_)));
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        v["sender"]["type"] = json!("Bot");
        assert!(matches!(parse(&headers, v.to_string().as_bytes(), None).unwrap(), Inbound::Ignored(_)));
        let mut no_event = headers.clone();
        no_event.remove("x-github-event");
        assert!(matches!(parse(&no_event, &body, None), Err(ParseError::Invalid(_))));
    }
}
