//! Rendering a reply for a chat platform and splitting it at the platform's length
//! limit.
//!
//! [`split_message`] prefers paragraph breaks, then line breaks, then spaces, and never
//! leaves a Markdown code fence unbalanced: a cut outside any fence is preferred even
//! when it makes a shorter piece; when a single code block is longer than the limit it
//! is cut at a line inside the block, closed at the end of the piece and reopened (with
//! its info string, e.g. ```` ```rust ````) at the start of the next.

use crate::reply::{ReplyStatus, ReplyUpdate};

/// How a platform counts a message's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Unicode scalar values (Discord, Slack, GitHub).
    Chars,
    /// UTF-16 code units (Telegram counts text and entity offsets this way).
    Utf16,
}

impl Unit {
    fn of_char(self, c: char) -> usize {
        match self {
            Self::Chars => 1,
            Self::Utf16 => c.len_utf16(),
        }
    }

    /// The length of `s` in this unit.
    #[must_use]
    pub fn len(self, s: &str) -> usize {
        match self {
            Self::Chars => s.chars().count(),
            Self::Utf16 => s.encode_utf16().count(),
        }
    }
}

/// Room kept free in each piece for a closing fence (`\n` plus the fence marker).
const FENCE_RESERVE: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Space,
    Line,
    Paragraph,
}

#[derive(Debug, Clone)]
struct Cut {
    /// Byte offset where the next piece starts.
    at: usize,
    kind: Kind,
    /// The fence open at this point (its opening line), if any.
    fence: Option<String>,
}

/// The fence marker of a line (```` ``` ```` or `~~~`, possibly longer), if it is a fence line.
fn fence_marker(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let first = t.chars().next()?;
    if first != '`' && first != '~' {
        return None;
    }
    let run = t.chars().take_while(|&c| c == first).count();
    (run >= 3).then(|| &t[..run])
}

/// Updates the open fence after `line`.
fn advance_fence(open: &mut Option<String>, line: &str) {
    let Some(marker) = fence_marker(line) else { return };
    match open {
        None => *open = Some(line.trim().to_owned()),
        Some(opener) => {
            let opener_marker = fence_marker(opener).unwrap_or("```");
            let closes =
                line.trim() == marker && marker.starts_with(&opener_marker[..1]) && marker.len() >= opener_marker.len();
            if closes {
                *open = None;
            }
        }
    }
}

/// The largest byte offset `i` such that `unit.len(&s[..i]) <= budget`.
fn window_end(s: &str, budget: usize, unit: Unit) -> usize {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        let w = unit.of_char(c);
        if used + w > budget {
            return i;
        }
        used += w;
    }
    s.len()
}

/// Finds where to cut `rest` so that `rest[..cut]` fits in `end` bytes.
fn choose_cut(rest: &str, end: usize, carry: Option<&String>) -> Cut {
    let mut open = carry.cloned();
    let mut cuts: Vec<Cut> = Vec::new();
    let mut start = 0;
    let mut previous_blank = false;
    let mut crossing_fence = open.clone();
    while start < rest.len() {
        let line_end = rest[start..].find('\n').map_or(rest.len(), |i| start + i);
        if start > end {
            break;
        }
        if start > 0 {
            let kind = if previous_blank { Kind::Paragraph } else { Kind::Line };
            cuts.push(Cut { at: start, kind, fence: open.clone() });
        }
        let line = &rest[start..line_end];
        crossing_fence.clone_from(&open);
        if line_end >= end {
            // The line the window ends in: a space before the window's end is the last resort
            // before a hard cut.
            if let Some(sp) = rest[start..end].rfind(' ') {
                let at = start + sp + 1;
                if at > 0 && fence_marker(line).is_none() {
                    cuts.push(Cut { at, kind: Kind::Space, fence: open.clone() });
                }
            }
            break;
        }
        previous_blank = line.trim().is_empty();
        advance_fence(&mut open, line);
        start = line_end + 1;
    }
    let half = end / 2;
    let pick = |kind: Kind, inside: bool, min: usize| {
        cuts.iter().rev().find(|c| c.kind == kind && c.fence.is_some() == inside && c.at >= min && c.at > 0).cloned()
    };
    pick(Kind::Paragraph, false, half)
        .or_else(|| pick(Kind::Line, false, half))
        .or_else(|| pick(Kind::Paragraph, false, 1))
        .or_else(|| pick(Kind::Line, false, 1))
        .or_else(|| pick(Kind::Paragraph, true, half))
        .or_else(|| pick(Kind::Line, true, half))
        .or_else(|| pick(Kind::Space, false, 1))
        .or_else(|| pick(Kind::Line, true, 1))
        .or_else(|| pick(Kind::Space, true, 1))
        .unwrap_or(Cut {
            at: end.max(rest.chars().next().map_or(1, char::len_utf8)),
            kind: Kind::Space,
            fence: crossing_fence,
        })
}

/// Splits `text` into pieces of at most `limit` (in `unit`), preferring paragraph
/// breaks, never leaving a code fence unbalanced (see the module doc). Whitespace at
/// the cut points is dropped; nothing else is. Empty text gives no pieces.
///
/// Limits: Telegram 4096 UTF-16 units (Bot API `sendMessage`), Discord 2000 characters
/// (`content`), Slack 4000 characters (advised for `chat.postMessage` `text`), GitHub
/// 65,536 characters (issue comment `body`).
#[must_use]
pub fn split_message(text: &str, limit: usize, unit: Unit) -> Vec<String> {
    let limit = limit.max(1);
    let mut pieces = Vec::new();
    let mut rest = text.trim_end();
    let mut carry: Option<String> = None;
    // Tiny limits cannot hold a fence and its closing marker: cut plainly.
    let fences = limit > 4 * FENCE_RESERVE;
    while !rest.is_empty() {
        let prefix = carry.as_ref().map(|f| format!("{f}\n")).unwrap_or_default();
        let prefix_len = unit.len(&prefix);
        if prefix_len + unit.len(rest) <= limit {
            pieces.push(format!("{prefix}{rest}"));
            break;
        }
        let reserve = if fences { FENCE_RESERVE } else { 0 };
        let budget = limit.saturating_sub(prefix_len + reserve).max(1);
        let end = window_end(rest, budget, unit);
        let cut = if fences {
            choose_cut(rest, end, carry.as_ref())
        } else {
            let at = end.max(rest.chars().next().map_or(1, char::len_utf8));
            Cut { at, kind: Kind::Space, fence: None }
        };
        let head = rest[..cut.at].trim_end();
        let mut piece = format!("{prefix}{head}");
        carry = None;
        if let Some(opener) = cut.fence {
            let marker = fence_marker(&opener).unwrap_or("```").to_owned();
            piece.push('\n');
            piece.push_str(&marker);
            carry = Some(opener);
        }
        if !head.is_empty() || carry.is_none() {
            pieces.push(piece);
        }
        rest = rest[cut.at..].trim_start_matches('\n');
        if cut.kind == Kind::Space {
            rest = rest.trim_start_matches(' ');
        }
    }
    pieces
}

/// How many tool lines a reply shows; older ones are summarised.
const MAX_TOOL_LINES: usize = 8;

/// Renders a reply update as plain text for a chat platform: the tools used so far
/// (compact lines such as `› Bash: ls -la`, when `show_tools`), then the text, then a
/// status note for failed or cancelled turns. A running turn with nothing to show yet
/// renders as `…`.
#[must_use]
pub fn render(update: &ReplyUpdate, show_tools: bool) -> String {
    let mut out = String::new();
    if show_tools && !update.tools.is_empty() && update.status != ReplyStatus::Notice {
        let skipped = update.tools.len().saturating_sub(MAX_TOOL_LINES);
        if skipped > 0 {
            out.push_str(&format!("› … {skipped} earlier tool call(s)\n"));
        }
        for line in &update.tools[skipped..] {
            out.push_str("› ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out.push_str(update.text.trim_end());
    match &update.status {
        ReplyStatus::Failed { error } => {
            out.push_str(&format!("\n\n⚠️ The assistant failed: {error}"));
        }
        ReplyStatus::Cancelled => out.push_str("\n\n(cancelled)"),
        ReplyStatus::Completed if out.trim().is_empty() => out.push_str("(the assistant sent no text)"),
        ReplyStatus::Running if out.trim().is_empty() => out.push('…'),
        _ => {}
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pieces: &[String], limit: usize, unit: Unit) {
        for p in pieces {
            assert!(unit.len(p) <= limit, "piece of {} > {limit}: {p:?}", unit.len(p));
            assert!(!p.trim().is_empty(), "empty piece");
            let fences = p.lines().filter(|l| fence_marker(l).is_some()).count();
            assert_eq!(fences % 2, 0, "unbalanced fence in {p:?}");
        }
    }

    fn squash(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn short_text_is_one_piece_and_empty_text_none() {
        assert_eq!(split_message("hello", 4096, Unit::Utf16), vec!["hello"]);
        assert!(split_message("", 4096, Unit::Chars).is_empty());
        assert!(split_message("  \n", 4096, Unit::Chars).is_empty());
    }

    #[test]
    fn ten_thousand_characters_split_within_each_platform_limit_keeping_every_word() {
        let para = "word ".repeat(90).trim_end().to_owned();
        let text: String = (0..23).map(|i| format!("{i} {para}")).collect::<Vec<_>>().join("\n\n");
        assert!(text.chars().count() >= 10_000, "{}", text.len());
        for (limit, unit) in [(4096, Unit::Utf16), (2000, Unit::Chars), (4000, Unit::Chars), (65_536, Unit::Chars)] {
            let pieces = split_message(&text, limit, unit);
            check(&pieces, limit, unit);
            assert!(pieces.len() >= text.chars().count().div_ceil(limit));
            assert_eq!(squash(&pieces.join(" ")), squash(&text), "limit {limit}");
            // Every cut is at a paragraph break: each piece starts with a paragraph number.
            for p in &pieces {
                assert!(p.chars().next().is_some_and(|c| c.is_ascii_digit()), "piece starts mid-paragraph: {p:.20}");
            }
        }
        assert_eq!(split_message(&text, 65_536, Unit::Chars).len(), 1);
    }

    #[test]
    fn prefers_paragraph_breaks_over_line_breaks() {
        let text = format!("{}\n\n{}\n{}", "a".repeat(60), "b".repeat(30), "c".repeat(30));
        let pieces = split_message(&text, 100, Unit::Chars);
        assert_eq!(pieces, vec!["a".repeat(60), format!("{}\n{}", "b".repeat(30), "c".repeat(30))]);
    }

    #[test]
    fn never_cuts_inside_a_code_block_that_fits_in_a_piece() {
        let code = format!("```rust\n{}```", "let x = 1;\n".repeat(20));
        let text = format!("{}\n\n{code}\n\nafter", "intro ".repeat(20));
        let pieces = split_message(&text, 300, Unit::Chars);
        check(&pieces, 300, Unit::Chars);
        assert!(pieces.iter().any(|p| p.contains(&code)), "code block was split: {pieces:#?}");
    }

    #[test]
    fn a_code_block_longer_than_the_limit_is_closed_and_reopened_with_its_language() {
        let body: String = (0..200).map(|i| format!("    line {i} = compute({i});\n")).collect();
        let text = format!("Here:\n\n```python\n{body}```\n\nDone.");
        let pieces = split_message(&text, 500, Unit::Chars);
        check(&pieces, 500, Unit::Chars);
        assert!(pieces.len() > 5);
        for p in &pieces[1..pieces.len() - 1] {
            assert!(p.starts_with("```python\n"), "not reopened: {p:.40}");
            assert!(p.ends_with("\n```"), "not closed: {p:?}");
        }
        // Indentation inside the code survives the cuts.
        let lines: Vec<&str> = pieces.iter().flat_map(|p| p.lines()).filter(|l| l.contains("line ")).collect();
        assert_eq!(lines.len(), 200);
        assert!(lines.iter().all(|l| l.starts_with("    line ")));
    }

    #[test]
    fn a_long_word_is_cut_hard_at_a_character_boundary() {
        let text = "é".repeat(5000);
        let pieces = split_message(&text, 2000, Unit::Chars);
        assert_eq!(pieces.iter().map(|p| p.chars().count()).collect::<Vec<_>>(), vec![2000 - 12, 2000 - 12, 1024]);
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn telegram_counts_utf16_units() {
        let text = "😀 ".repeat(3000); // 3 UTF-16 units per repetition
        let pieces = split_message(&text, 4096, Unit::Utf16);
        check(&pieces, 4096, Unit::Utf16);
        assert!(pieces.len() >= 3);
        assert_eq!(squash(&pieces.join(" ")), squash(&text));
    }

    #[test]
    fn tiny_limits_still_make_progress() {
        let pieces = split_message("abcdefghij", 3, Unit::Chars);
        assert_eq!(pieces, vec!["abc", "def", "ghi", "j"]);
    }

    fn update(text: &str, tools: &[&str], status: ReplyStatus) -> ReplyUpdate {
        ReplyUpdate { turn_id: None, text: text.into(), tools: tools.iter().map(|s| (*s).to_owned()).collect(), status }
    }

    #[test]
    fn render_shows_tools_compactly_and_status_notes() {
        let u = update("Done.", &["Bash: ls -la", "Read: src/main.rs"], ReplyStatus::Completed);
        assert_eq!(render(&u, true), "› Bash: ls -la\n› Read: src/main.rs\n\nDone.");
        assert_eq!(render(&u, false), "Done.");
        assert_eq!(render(&update("", &[], ReplyStatus::Running), true), "…");
        let failed = update("partial", &[], ReplyStatus::Failed { error: "boom".into() });
        assert_eq!(render(&failed, true), "partial\n\n⚠️ The assistant failed: boom");
        assert_eq!(render(&update("half", &[], ReplyStatus::Cancelled), true), "half\n\n(cancelled)");
        let many: Vec<String> = (0..12).map(|i| format!("T{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let r = render(&update("x", &refs, ReplyStatus::Running), true);
        assert!(r.starts_with("› … 4 earlier tool call(s)\n› T4\n"), "{r}");
    }
}
