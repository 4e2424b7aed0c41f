//! Transcript renderings for support tooling: plain text, CSV, JSON lines and a printable HTML page. What a
//! visitor typed cannot become a formula in a spreadsheet (CSV cells are neutralised) nor a forged line of the
//! text transcript (line breaks inside a field are escaped); the HTML page escapes everything.

pub mod html;

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{Message, MessageKind};

/// The renderings of a transcript (`?format=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TranscriptFormat {
    /// `{"conversation_id", "messages": [Message]}`.
    #[default]
    Json,
    /// One line per message: `[time] party (author): text`.
    Text,
    /// CSV with a header row.
    Csv,
    /// One JSON Message per line.
    Jsonl,
    /// A self-contained printable HTML page with the conversation's header.
    Html,
}

impl TranscriptFormat {
    /// Every format, in the documented order.
    pub const ALL: [TranscriptFormat; 5] = [
        TranscriptFormat::Json,
        TranscriptFormat::Text,
        TranscriptFormat::Csv,
        TranscriptFormat::Jsonl,
        TranscriptFormat::Html,
    ];

    /// The `?format=` value.
    pub fn as_str(self) -> &'static str {
        match self {
            TranscriptFormat::Json => "json",
            TranscriptFormat::Text => "text",
            TranscriptFormat::Csv => "csv",
            TranscriptFormat::Jsonl => "jsonl",
            TranscriptFormat::Html => "html",
        }
    }
}

impl std::str::FromStr for TranscriptFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TranscriptFormat::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown transcript format `{s}`"))
    }
}

/// Buttons and cards flattened to one line of text.
fn extras(m: &Message) -> String {
    let mut parts: Vec<String> = m.buttons.iter().map(|b| format!("[{}]", b.text)).collect();
    for card in &m.cards {
        let buttons: Vec<String> = card.buttons.iter().map(|b| format!("[{}]", b.text)).collect();
        parts.push(format!(
            "{{{}{}{}}}",
            card.title.as_deref().unwrap_or(""),
            card.description
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default(),
            if buttons.is_empty() {
                String::new()
            } else {
                format!(" {}", buttons.join(" "))
            }
        ));
    }
    parts.join(" ")
}

/// A CSV cell a spreadsheet will not run: one starting with `=`, `+`, `-`, `@`, tab or carriage return
/// (a formula, e.g. `=HYPERLINK(...)`) gets a leading `'`, which spreadsheets show as text.
pub(crate) fn neutralise_csv_cell(cell: String) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell
    }
}

/// A field on one line of the text transcript: a backslash becomes `\\` and every line break
/// (`\r\n`, `\n`, `\r`, vertical tab, form feed, NEL, U+2028, U+2029) becomes `\n`, so nothing a
/// visitor types can start a line of its own (e.g. a forged `[...] agent (Ana): ...`).
pub(crate) fn escape_line(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("\\n");
            }
            '\n' | '\u{0b}' | '\u{0c}' | '\u{85}' | '\u{2028}' | '\u{2029}' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `[time] party (author): text [buttons] {cards} <url>` per line; fields escaped by [`escape_line`].
pub(crate) fn to_text(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        let author = m.author.as_deref().map(|a| format!(" ({a})")).unwrap_or_default();
        let mut line = m.text.clone().unwrap_or_default();
        let extra = extras(m);
        if !extra.is_empty() {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&extra);
        }
        if let Some(url) = &m.url {
            let label = if m.kind == MessageKind::Image { "image" } else { "file" };
            if !line.is_empty() {
                line.push(' ');
            }
            let _ = write!(line, "<{label}: {url}>");
        }
        let _ = writeln!(
            out,
            "[{}] {}{}: {}",
            m.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            m.party.as_str(),
            escape_line(&author),
            escape_line(&line)
        );
    }
    out
}

/// CSV with a header row: seq, at, party, author, kind, text, buttons, url, platform, event_id; every
/// cell neutralised by [`neutralise_csv_cell`].
pub(crate) fn to_csv(messages: &[Message]) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "seq", "at", "party", "author", "kind", "text", "buttons", "url", "platform", "event_id",
    ])?;
    for m in messages {
        let kind = serde_json::to_value(m.kind)?;
        w.write_record(
            [
                m.seq.to_string(),
                m.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                m.party.as_str().to_string(),
                m.author.clone().unwrap_or_default(),
                kind.as_str().unwrap_or_default().to_string(),
                m.text.clone().unwrap_or_default(),
                extras(m),
                m.url.clone().unwrap_or_default(),
                m.platform.as_str().to_string(),
                m.event_id.to_string(),
            ]
            .map(neutralise_csv_cell),
        )?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

/// One JSON Message per line.
pub(crate) fn to_jsonl(messages: &[Message]) -> anyhow::Result<String> {
    let mut out = String::new();
    for m in messages {
        out.push_str(&serde_json::to_string(m)?);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_neutralised_and_plain_text_is_not() {
        for formula in ["=HYPERLINK(\"http://x\")", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(neutralise_csv_cell(formula.to_string()), format!("'{formula}"));
        }
        for plain in ["hello", "", "1-2", "a=b", "'quoted"] {
            assert_eq!(neutralise_csv_cell(plain.to_string()), plain);
        }
    }

    #[test]
    fn line_breaks_and_backslashes_are_escaped() {
        assert_eq!(escape_line("a\nb\r\nc\rd"), "a\\nb\\nc\\nd");
        assert_eq!(escape_line("x\u{2028}y\u{85}z"), "x\\ny\\nz");
        // A literal backslash-n typed by someone stays distinguishable from an escaped break.
        assert_eq!(escape_line("a\\nb"), "a\\\\nb");
        assert_eq!(escape_line("plain"), "plain");
    }
}
