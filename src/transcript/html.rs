//! The printable transcript (`?format=html`): one self-contained page (styles inline, no scripts, no
//! external assets) with the conversation's header and every line. The console's conversation page is
//! built from the same pieces, so a line looks the same on screen and on paper.
//!
//! Every value comes from a platform or a person and is escaped by `maud`; URLs become links only when
//! they are `http(s)`, and images are never fetched (a printed page must not call out).

use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::model::{Agent, Button, Card, Conversation, Disposition, Handoff, Message, MessageKind, SlaStatus};

/// The stylesheet shared by the printable transcript and the console (screen and print rules).
pub(crate) const STYLE: &str = include_str!("transcript.css");

/// The whole printable page.
pub fn page(conversation: &Conversation, messages: &[Message], generated_at: DateTime<Utc>) -> String {
    let title = format!("Transcript {}", conversation.id);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="generator" content="handoff-ledger";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body.transcript-page {
                header {
                    h1 { "Conversation transcript" }
                    p.subtitle { span.mono { (conversation.id) } " · started " (time(conversation.started_at)) }
                }
                (summary(conversation))
                @if conversation.handoffs.len() > 1 {
                    h2.section { "Handoffs" }
                    (handoffs_table(&conversation.handoffs))
                }
                h2.section { "Messages (" (messages.len()) ")" }
                (lines(messages))
                footer.generated {
                    "Generated " (time(generated_at)) " by handoff-ledger from the event log (up to position "
                    (conversation.last_seq) "). Times are UTC."
                }
            }
        }
    }
    .into_string()
}

/// The conversation's header facts: platforms, queue, agents, state, SLA status, disposition and timers.
pub fn summary(c: &Conversation) -> Markup {
    html! {
        dl.facts {
            div { dt { "Platforms" } dd {
                @for (i, s) in c.streams.iter().enumerate() {
                    @if i > 0 { br; }
                    strong { (s.platform) } " " span.mono { (s.external_id) }
                }
            } }
            div { dt { "Queue" } dd { (opt(c.queue.as_deref())) } }
            div { dt { "Agents" } dd { (agents(&c.agents)) } }
            div { dt { "State" } dd { (c.state.as_str()) } }
            div { dt { "SLA status" } dd { (sla_badge(c.sla_status)) } }
            div { dt { "Disposition" } dd {
                (disposition_badge(c.disposition))
                @if let Some(raw) = &c.platform_disposition { " " span.none { "(platform: " (raw) ")" } }
            } }
            @if let Some(reason) = &c.close_reason {
                div { dt { "Close reason" } dd { (reason) } }
            }
            div { dt { "Started" } dd { (time(c.started_at)) } }
            div { dt { "Escalated" } dd { (opt_time(c.escalated_at)) } }
            div { dt { "Queued" } dd { (opt_time(c.queued_at)) } }
            div { dt { "First attended" } dd { (opt_time(c.first_attended_at)) } }
            div { dt { "Closed" } dd { (opt_time(c.closed_at)) } }
            div { dt { "Time with the bot" } dd { (opt_duration(c.bot_seconds)) } }
            div { dt { "Wait" } dd { (opt_duration(c.wait_seconds)) } }
            div { dt { "First response" } dd { (opt_duration(c.first_response_seconds)) } }
            div { dt { "Handle time" } dd { (opt_duration(c.handle_seconds)) } }
            div { dt { "Transfers" } dd { (c.transfers) } }
            div { dt { "Lines" } dd {
                (c.message_counts.visitor) " visitor · " (c.message_counts.bot) " bot · "
                (c.message_counts.agent) " agent · " (c.message_counts.system) " system"
            } }
        }
    }
}

/// Every hand-over with its own timers, SLA status and disposition (the handoff timeline).
pub(crate) fn handoffs_table(handoffs: &[Handoff]) -> Markup {
    html! {
        @if handoffs.is_empty() {
            p.none { "No handoff: the bot handled this conversation alone." }
        } @else {
            table.grid.handoffs {
                thead { tr {
                    th { "#" } th { "Backend" } th { "Queue" } th { "Requested" } th { "Queued" }
                    th { "Attended" } th { "Closed" } th { "Wait" } th { "Agents" } th { "SLA" } th { "Disposition" }
                } }
                tbody {
                    @for (i, h) in handoffs.iter().enumerate() {
                        tr {
                            td { (i + 1) }
                            td { (h.backend) }
                            td { (opt(h.queue.as_deref())) }
                            td { (opt_time(h.requested_at)) }
                            td { (opt_time(h.queued_at)) }
                            td { (opt_time(h.attended_at)) }
                            td { (opt_time(h.closed_at)) }
                            td { (opt_duration(h.wait_seconds)) }
                            td { (agents(&h.agents)) }
                            td { (sla_badge(h.sla_status)) }
                            td {
                                (disposition_badge(h.disposition))
                                @if let Some(reason) = &h.close_reason { br; span.none { (reason) } }
                                @if let Some(failure) = &h.failure { br; span.sla-breached { (failure) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The transcript lines as a table (time, party, author, content), a day row whenever the date changes.
pub fn lines(messages: &[Message]) -> Markup {
    let new_day = |i: usize| i == 0 || messages[i - 1].at.date_naive() != messages[i].at.date_naive();
    html! {
        @if messages.is_empty() {
            p.none { "No messages." }
        } @else {
            table.lines {
                tbody {
                    @for (i, m) in messages.iter().enumerate() {
                        @if new_day(i) {
                            tr.day { td colspan="4" { (m.at.format("%A %e %B %Y")) } }
                        }
                        (line(m))
                    }
                }
            }
        }
    }
}

/// One transcript line.
pub fn line(m: &Message) -> Markup {
    let party = m.party.as_str();
    html! {
        tr class={ "line party-" (party) " kind-" (kind_name(m.kind)) } data-seq=(m.seq) {
            td.time { time datetime=(m.at.to_rfc3339()) title=(time(m.at)) { (m.at.format("%H:%M:%S")) } }
            td.party { span.party-tag { (party) } }
            td.author { (opt(m.author.as_deref())) }
            td.body {
                @if let Some(text) = &m.text { div.text { (text) } }
                @if !m.buttons.is_empty() { (buttons(&m.buttons)) }
                @if !m.cards.is_empty() {
                    div.carousel aria-label="carousel" {
                        @for card in &m.cards { (card_box(card)) }
                    }
                }
                @if let Some(url) = &m.url {
                    span.attachment {
                        span.label { (if m.kind == MessageKind::Image { "Image:" } else { "File:" }) }
                        (link(url))
                    }
                }
            }
        }
    }
}

fn buttons(buttons: &[Button]) -> Markup {
    html! {
        ul.buttons aria-label="buttons" {
            @for b in buttons {
                li.button data-type=(b.kind) {
                    (b.text)
                    @if let Some(url) = &b.url { span.url { "→ " (link(url)) } }
                }
            }
        }
    }
}

fn card_box(card: &Card) -> Markup {
    html! {
        div.card {
            @if let Some(title) = &card.title { div.card-title { (title) } }
            @if let Some(description) = &card.description { div.card-description { (description) } }
            @if let Some(image) = &card.image_url { div.card-image { "Image: " (link(image)) } }
            @if !card.buttons.is_empty() { (buttons(&card.buttons)) }
        }
    }
}

/// A URL as a link when it is http(s), else as plain text (never `javascript:` or `data:` hrefs).
pub fn link(url: &str) -> Markup {
    let lower = url.trim_start().to_ascii_lowercase();
    html! {
        @if lower.starts_with("https://") || lower.starts_with("http://") {
            a href=(url) rel="noopener noreferrer nofollow" { (url) }
        } @else {
            span.mono { (url) }
        }
    }
}

/// Agents as `name (nickname, group …)`, one per line.
pub fn agents(agents: &[Agent]) -> Markup {
    html! {
        @if agents.is_empty() { span.none { "none" } }
        @for (i, a) in agents.iter().enumerate() {
            @if i > 0 { br; }
            (a.name)
            @if let Some(nick) = a.nickname.as_deref().filter(|n| *n != a.name) { " “" (nick) "”" }
            @if let Some(group) = &a.group { span.none { " · group " (group) } }
        }
    }
}

/// The SLA status as a coloured badge.
pub(crate) fn sla_badge(s: SlaStatus) -> Markup {
    let label = match s {
        SlaStatus::Met => "met",
        SlaStatus::Breached => "breached",
        SlaStatus::Pending => "pending",
        SlaStatus::NotApplicable => "not applicable",
    };
    html! { span class={ "badge sla-" (s.as_str()) } { (label) } }
}

/// The disposition as a coloured badge (`none` while open).
pub(crate) fn disposition_badge(d: Option<Disposition>) -> Markup {
    html! {
        @match d {
            Some(d) => span class={ "badge disp-" (d.as_str()) } { (d.as_str()) },
            None => span.none { "none yet" },
        }
    }
}

fn kind_name(k: MessageKind) -> &'static str {
    match k {
        MessageKind::Text => "text",
        MessageKind::Buttons => "buttons",
        MessageKind::Carousel => "carousel",
        MessageKind::Image => "image",
        MessageKind::File => "file",
        MessageKind::Event => "event",
    }
}

fn opt(v: Option<&str>) -> Markup {
    html! {
        @match v {
            Some(v) if !v.is_empty() => (v),
            _ => span.none { "—" },
        }
    }
}

/// A time as `2024-05-03 10:15:02 UTC`.
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn opt_time(t: Option<DateTime<Utc>>) -> Markup {
    html! {
        @match t {
            Some(t) => time datetime=(t.to_rfc3339()) { (time(t)) },
            None => span.none { "—" },
        }
    }
}

/// A duration in seconds as `1 h 02 min 03 s`, `2 min 05 s` or `12.5 s`.
pub(crate) fn duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "—".into();
    }
    if seconds < 60.0 {
        let rounded = (seconds * 10.0).round() / 10.0;
        return format!("{rounded} s");
    }
    let total = seconds.round() as u64;
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    if h > 0 {
        format!("{h} h {m:02} min {s:02} s")
    } else {
        format!("{m} min {s:02} s")
    }
}

fn opt_duration(seconds: Option<f64>) -> Markup {
    html! {
        @match seconds {
            Some(s) => (duration(s)),
            None => span.none { "—" },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Party, Platform};
    use uuid::Uuid;

    fn message(party: Party, text: &str) -> Message {
        Message {
            seq: 7,
            at: DateTime::parse_from_rfc3339("2024-05-03T10:15:02Z")
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default(),
            party,
            author: Some("Tomas <b>".into()),
            kind: MessageKind::Text,
            text: Some(text.into()),
            buttons: vec![],
            cards: vec![],
            url: None,
            platform: Platform::AivoLive,
            event_id: Uuid::nil(),
        }
    }

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(duration(12.46), "12.5 s");
        assert_eq!(duration(125.0), "2 min 05 s");
        assert_eq!(duration(3723.0), "1 h 02 min 03 s");
        assert_eq!(duration(f64::NAN), "—");
    }

    #[test]
    fn a_line_escapes_what_the_platforms_sent() {
        let m = message(Party::Agent, "<script>alert(1)</script> & \"quotes\"");
        let out = line(&m).into_string();
        assert!(!out.contains("<script>"), "{out}");
        assert!(
            out.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot;"),
            "{out}"
        );
        assert!(out.contains("Tomas &lt;b&gt;"), "{out}");
        assert!(out.contains("party-agent"), "{out}");
        assert!(out.contains(">10:15:02<"), "{out}");
    }

    #[test]
    fn only_http_urls_become_links() {
        assert!(link("https://example.com/a?b=1&c=2")
            .into_string()
            .contains("href=\"https://example.com/a?b=1&amp;c=2\""));
        let js = link("javascript:alert(1)").into_string();
        assert!(!js.contains("href"), "{js}");
        let data = link(" DATA:text/html,<b>").into_string();
        assert!(!data.contains("href") && data.contains("&lt;b&gt;"), "{data}");
    }

    #[test]
    fn buttons_and_cards_are_shown_as_such() {
        let mut m = message(Party::Bot, "Pick one");
        m.kind = MessageKind::Carousel;
        m.buttons = vec![Button {
            kind: "button".into(),
            text: "Talk to a human".into(),
            url: None,
        }];
        m.cards = vec![Card {
            title: Some("Plan A".into()),
            description: Some("Cheap".into()),
            image_url: Some("https://img.example/a.png".into()),
            buttons: vec![Button {
                kind: "link".into(),
                text: "Buy".into(),
                url: Some("https://shop.example/a".into()),
            }],
        }];
        let out = line(&m).into_string();
        assert!(out.contains("<ul class=\"buttons\""), "{out}");
        assert!(
            out.contains("<li class=\"button\" data-type=\"button\">Talk to a human"),
            "{out}"
        );
        assert!(out.contains("<div class=\"carousel\""), "{out}");
        assert!(out.contains("<div class=\"card-title\">Plan A</div>"), "{out}");
        // The image is named, not loaded: the page stays self-contained.
        assert!(!out.contains("<img"), "{out}");
    }
}
