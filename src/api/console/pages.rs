//! The console's pages, rendered on the server with `maud` (compiled into the binary; no script at all).

use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use uuid::Uuid;

use super::{SearchForm, Viewer};
use crate::model::{Conversation, Disposition, HandoffState, Message, Platform, SlaStatus, StoredEvent};
use crate::quarantine::{QuarantineDetail, QuarantineSummary};
use crate::transcript::html::{agents, disposition_badge, duration, handoffs_table, lines, sla_badge, summary, time};
use crate::transcript::TranscriptFormat;

/// Which section of the console a page belongs to (highlighted in the top bar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Conversation search and conversation pages.
    Conversations,
    /// The quarantine.
    Quarantine,
    /// The sign-in page.
    SignIn,
}

/// Everything a page shows around its content.
pub struct Frame<'a> {
    /// The `<title>`.
    pub title: &'a str,
    /// The highlighted section.
    pub section: Section,
    /// Who is signed in (none on the sign-in page).
    pub viewer: Option<&'a Viewer>,
    /// A one-time message (e.g. a redrive's outcome).
    pub flash: Option<&'a str>,
}

/// The page around every console view: top bar, navigation, who is signed in.
pub(crate) fn layout(frame: &Frame, content: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (frame.title) " · handoff-ledger console" }
                link rel="stylesheet" href="/ui/assets/console.css";
            }
            body.console {
                header.topbar {
                    a.brand href="/ui/" { "handoff-ledger" span { "support console" } }
                    @if let Some(viewer) = frame.viewer {
                        nav {
                            a href="/ui/" class=[(frame.section == Section::Conversations).then_some("active")] { "Conversations" }
                            @if viewer.can_read_events {
                                a href="/ui/quarantine" class=[(frame.section == Section::Quarantine).then_some("active")] { "Quarantine" }
                            }
                        }
                        div.who {
                            span { "Signed in as " strong.viewer-name { (viewer.name) } }
                            @if let Some(csrf) = &viewer.csrf {
                                form method="post" action="/ui/logout" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main {
                    @if let Some(flash) = frame.flash { div.flash role="status" { (flash) } }
                    (content)
                }
            }
        }
    }
    .into_string()
}

/// The sign-in form.
pub fn login(error: Option<&str>, next: &str) -> String {
    let content = html! {
        div.login.panel {
            h1 { "Sign in" }
            p.lead { "Paste an API key with the " code { "conversations:read" } " scope. The console keeps you signed in with a session cookie; the key never reaches your browser's storage." }
            @if let Some(error) = error { div.error-box role="alert" { (error) } }
            form method="post" action="/ui/login" {
                input type="hidden" name="next" value=(next);
                label { "API key" input type="password" name="key" autocomplete="off" required autofocus; }
                button.primary type="submit" { "Sign in" }
            }
        }
    };
    layout(
        &Frame {
            title: "Sign in",
            section: Section::SignIn,
            viewer: None,
            flash: None,
        },
        content,
    )
}

fn options<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str, selected: Option<&str>) -> Markup {
    html! {
        option value="" { "any" }
        @for v in all {
            option value=(name(*v)) selected[selected == Some(name(*v))] { (name(*v).replace('_', " ")) }
        }
    }
}

/// One page of conversation search results, or the reason the filters were refused.
pub struct SearchResults {
    /// The conversations (as of now).
    pub items: Vec<Conversation>,
    /// The next page's link, when there is one.
    pub next: Option<String>,
}

/// Conversation search: the list filters, the results, paging.
pub fn search(frame: &Frame, form: &SearchForm, results: Result<SearchResults, String>, first_page: &str) -> String {
    let f = |v: &Option<String>| v.clone().unwrap_or_default();
    let content = html! {
        h1 { "Conversations" }
        p.lead { "Newest first. Every filter of " code { "GET /v1/conversations" } "; times are UTC." }
        div.panel {
            form.filters method="get" action="/ui/" {
                label { "Platform" select name="platform" { (options(&Platform::ALL, Platform::as_str, form.platform.as_deref())) } }
                label { "State" select name="state" { (options(&HANDOFF_STATES, HandoffState::as_str, form.state.as_deref())) } }
                label { "Disposition" select name="disposition" { (options(&DISPOSITIONS, Disposition::as_str, form.disposition.as_deref())) } }
                label { "SLA status" select name="sla_status" { (options(&SLA_STATUSES, SlaStatus::as_str, form.sla_status.as_deref())) } }
                label { "Queue" input type="text" name="queue" value=(f(&form.queue)); }
                label { "Agent" input type="text" name="agent" value=(f(&form.agent)); }
                label { "External id" input type="text" name="external_id" value=(f(&form.external_id)); }
                label { "Started from" input type="datetime-local" step="1" name="since" value=(f(&form.since)); }
                label { "Started before" input type="datetime-local" step="1" name="until" value=(f(&form.until)); }
                label { "Per page"
                    select name="limit" {
                        @for n in ["25", "50", "100", "200"] {
                            option value=(n) selected[form.limit.as_deref().unwrap_or("50") == n] { (n) }
                        }
                    }
                }
                div.actions {
                    button.primary type="submit" { "Search" }
                    a.button.secondary href="/ui/" { "Reset" }
                }
            }
        }
        @match results {
            Err(error) => div.error-box role="alert" { (error) },
            Ok(results) => {
                div.panel {
                    @if results.items.is_empty() {
                        p.muted.no-results { "No conversation matches these filters." }
                    } @else {
                        table.results {
                            thead { tr {
                                th { "Started" } th { "Platforms" } th { "State" } th { "Queue" } th { "Agents" }
                                th { "Wait" } th { "SLA" } th { "Disposition" } th { "Lines" }
                            } }
                            tbody {
                                @for c in &results.items {
                                    tr.conversation-row {
                                        td { a href={ "/ui/conversations/" (c.id) } { (time(c.started_at)) } }
                                        td { @for (i, s) in c.streams.iter().enumerate() { @if i > 0 { ", " } (s.platform) } }
                                        td { (c.state.as_str().replace('_', " ")) }
                                        td { (c.queue.clone().unwrap_or_default()) }
                                        td { (agents(&c.agents)) }
                                        td { (c.wait_seconds.map(duration).unwrap_or_default()) }
                                        td { (sla_badge(c.sla_status)) }
                                        td { (disposition_badge(c.disposition)) }
                                        td { (c.message_counts.visitor + c.message_counts.bot + c.message_counts.agent + c.message_counts.system) }
                                    }
                                }
                            }
                        }
                    }
                    div.pager {
                        span { (results.items.len()) " shown" }
                        span.actions {
                            @if form.cursor.is_some() { a.button.secondary href=(first_page) { "← First page" } }
                            @if let Some(next) = &results.next { a.button.secondary.next-page href=(next) { "Next page →" } }
                        }
                    }
                }
            }
        }
    };
    layout(frame, content)
}

const HANDOFF_STATES: [HandoffState; 6] = [
    HandoffState::Bot,
    HandoffState::EscalationRequested,
    HandoffState::Queued,
    HandoffState::Attended,
    HandoffState::Closed,
    HandoffState::Failed,
];
const DISPOSITIONS: [Disposition; 4] = [
    Disposition::Completed,
    Disposition::Abandoned,
    Disposition::Missed,
    Disposition::Failed,
];
const SLA_STATUSES: [SlaStatus; 4] = [
    SlaStatus::Met,
    SlaStatus::Breached,
    SlaStatus::Pending,
    SlaStatus::NotApplicable,
];

/// A moment of the handoff timeline.
struct Moment {
    at: DateTime<Utc>,
    what: String,
    tone: &'static str,
}

fn timeline(c: &Conversation) -> Vec<Moment> {
    let mut moments = vec![Moment {
        at: c.started_at,
        what: "Conversation started".into(),
        tone: "",
    }];
    for (i, h) in c.handoffs.iter().enumerate() {
        let n = if c.handoffs.len() > 1 {
            format!(" #{}", i + 1)
        } else {
            String::new()
        };
        let queue = h.queue.as_deref().map(|q| format!(" (queue {q})")).unwrap_or_default();
        let mut push = |at: Option<DateTime<Utc>>, what: String, tone| {
            if let Some(at) = at {
                moments.push(Moment { at, what, tone });
            }
        };
        push(h.requested_at, format!("Handoff{n} requested from the bot"), "");
        push(h.queued_at, format!("Queued on {}{queue}", h.backend), "");
        let agent = h.agents.first().map(|a| format!(" by {}", a.name)).unwrap_or_default();
        let wait = h
            .wait_seconds
            .map(|w| format!(" after {}", duration(w)))
            .unwrap_or_default();
        push(h.attended_at, format!("Attended{agent}{wait}"), "good");
        let how = h.disposition.map(|d| format!(": {}", d.as_str())).unwrap_or_default();
        let reason = h.close_reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        let tone = match h.disposition {
            Some(Disposition::Completed) | None => "",
            Some(_) => "bad",
        };
        push(h.closed_at, format!("Closed{how}{reason}"), tone);
        if h.transfers > 0 {
            push(
                h.attended_at.or(h.queued_at),
                format!("{} transfer(s) within this handoff", h.transfers),
                "",
            );
        }
    }
    if c.handoffs.is_empty() {
        if let Some(closed) = c.closed_at {
            moments.push(Moment {
                at: closed,
                what: "Closed".into(),
                tone: "",
            });
        }
    }
    moments.sort_by_key(|m| m.at);
    moments
}

/// A conversation: header facts, merged transcript, handoff timeline, exports and raw events.
pub fn conversation(frame: &Frame, c: &Conversation, messages: &[Message]) -> String {
    let base = format!("/ui/conversations/{}", c.id);
    let content = html! {
        p.muted { a href="/ui/" { "← Conversations" } }
        h1 { "Conversation " span.mono { (c.id) } }
        p.lead { "Started " (time(c.started_at)) " · " (c.state.as_str().replace('_', " ")) }
        div.panel.facts-panel { (summary(c)) }
        div.grid2 {
            div {
                div.panel {
                    h2 { "Transcript" }
                    div.legend { span.visitor { "visitor" } span.bot { "bot" } span.agent { "agent" } span.system { "system" } }
                    div.transcript { (lines(messages)) }
                }
            }
            div {
                div.panel {
                    h2 { "Handoff timeline" }
                    ol.timeline {
                        @for m in timeline(c) {
                            li class=[(!m.tone.is_empty()).then_some(m.tone)] {
                                span.when { (time(m.at)) } (m.what)
                            }
                        }
                    }
                }
                div.panel {
                    h2 { "Exports" }
                    div.exports {
                        @for f in TranscriptFormat::ALL {
                            a href={ (base) "/transcript." (f.as_str()) } { (export_label(f)) }
                        }
                        a href={ (base) "/conversation.json" } { "Conversation (JSON)" }
                        @if frame.viewer.is_some_and(|v| v.can_read_events) {
                            a href={ (base) "/events" } { "Raw events" }
                            a href={ (base) "/events.json" } { "Raw events (JSON)" }
                        }
                    }
                }
            }
        }
        @if !c.handoffs.is_empty() {
            div.panel {
                h2 { "Handoffs" }
                (handoffs_table(&c.handoffs))
            }
        }
    };
    layout(frame, content)
}

fn export_label(f: TranscriptFormat) -> &'static str {
    match f {
        TranscriptFormat::Json => "Transcript (JSON)",
        TranscriptFormat::Text => "Transcript (text)",
        TranscriptFormat::Csv => "Transcript (CSV)",
        TranscriptFormat::Jsonl => "Transcript (JSON lines)",
        TranscriptFormat::Html => "Printable transcript",
    }
}

/// The raw events of a conversation, payloads as received.
pub fn events(frame: &Frame, conversation_id: Uuid, items: &[StoredEvent]) -> String {
    let content = html! {
        p.muted { a href={ "/ui/conversations/" (conversation_id) } { "← Conversation" } }
        h1 { "Raw events" }
        p.lead { (items.len()) " events of conversation " span.mono { (conversation_id) } ", in log order, payloads exactly as received." }
        div.panel {
            table.results {
                thead { tr { th { "Seq" } th { "Kind" } th { "Stream" } th { "Occurred" } th { "Received" } th { "Payload" } } }
                tbody {
                    @for e in items {
                        tr.event-row {
                            td { (e.seq) }
                            td.mono { (e.kind) }
                            td { (e.platform) br; span.mono { (e.external_id) } }
                            td { (time(e.occurred_at)) }
                            td { (time(e.received_at)) }
                            td { pre.payload { (serde_json::to_string_pretty(&e.payload).unwrap_or_default()) } }
                        }
                    }
                }
            }
        }
    };
    layout(frame, content)
}

/// The quarantine: refused deliveries with their error; admins can redrive them.
pub fn quarantine(frame: &Frame, items: &[QuarantineSummary], next: Option<String>) -> String {
    let can_redrive = frame.viewer.is_some_and(|v| v.can_redrive);
    let content = html! {
        h1 { "Quarantine" }
        p.lead { "Deliveries answered 400 or 422, kept with their bytes and headers, newest first. "
            @if can_redrive { "Redrive runs one through today's parsers and appends it when it is accepted now." }
            @else { "Fix the sender, or the parser, then have the delivery sent again." } }
        div.panel {
            @if items.is_empty() {
                p.muted.no-results { "The quarantine is empty." }
            } @else {
                table.results {
                    thead { tr { th { "#" } th { "Received" } th { "Endpoint" } th { "Refused with" } th { "Body" } th { "Redriven" } @if can_redrive { th {} } } }
                    tbody {
                        @for q in items {
                            tr.quarantine-row data-id=(q.id) {
                                td { a href={ "/ui/quarantine/" (q.id) } { (q.id) } }
                                td { (time(q.received_at)) }
                                td { span.mono { (q.path) } br; span.muted { (q.platform.clone().unwrap_or_default()) } }
                                td { strong { (q.status) " " (q.error_code) } br; span.muted { (q.error_message) } }
                                td {
                                    a href={ "/ui/quarantine/" (q.id) } { (q.body_size) " bytes" }
                                    @if q.body_truncated { br; span.muted { "kept truncated" } }
                                }
                                td.redrives { (last_redrive(q)) }
                                @if can_redrive { td { (redrive_form(frame, q)) } }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = next {
                div.pager { span {} a.button.secondary href=(next) { "Older →" } }
            }
        }
    };
    layout(frame, content)
}

fn last_redrive(q: &QuarantineSummary) -> Markup {
    html! {
        @match q.redrives.last() {
            None => span.muted { "never" },
            Some(r) => {
                span class=[(r.status < 300).then_some("sla-met")] { (r.status) " " (r.outcome) }
                br;
                span.muted { (time(r.at)) @if let Some(key) = &r.key { " by " (key) } }
                @if q.redrives.len() > 1 { br; span.muted { (q.redrives.len()) " times" } }
            }
        }
    }
}

/// The redrive button of one entry (a form with the session's CSRF token).
fn redrive_form(frame: &Frame, q: &QuarantineSummary) -> Markup {
    let csrf = frame.viewer.and_then(|v| v.csrf.clone());
    html! {
        @if q.body_truncated {
            span.muted { "cannot be redriven (body truncated)" }
        } @else {
            form method="post" action={ "/ui/quarantine/" (q.id) "/redrive" } {
                @if let Some(csrf) = &csrf { input type="hidden" name="csrf" value=(csrf); }
                button.danger type="submit" { "Redrive" }
            }
        }
    }
}

/// One quarantined delivery: its error, headers and body as kept.
pub(crate) fn quarantine_entry(frame: &Frame, q: &QuarantineDetail) -> String {
    let s = &q.summary;
    let can_redrive = frame.viewer.is_some_and(|v| v.can_redrive);
    let content = html! {
        p.muted { a href="/ui/quarantine" { "← Quarantine" } }
        h1 { "Refused delivery " (s.id) }
        p.lead { (time(s.received_at)) " · " span.mono { (s.path) } " · " strong { (s.status) " " (s.error_code) } }
        div.panel {
            h2 { "Why it was refused" }
            p.error-message { (s.error_message) }
            @if can_redrive { (redrive_form(frame, s)) }
        }
        @if !s.redrives.is_empty() {
            div.panel {
                h2 { "Redrives" }
                table.grid.redrives {
                    thead { tr { th { "When" } th { "By" } th { "Answer" } th { "Event" } th { "Conversation" } } }
                    tbody {
                        @for r in &s.redrives {
                            tr {
                                td { (time(r.at)) }
                                td { (r.key.clone().unwrap_or_default()) }
                                td { (r.status) " " (r.outcome) @if let Some(code) = &r.error_code { " (" (code) ")" } }
                                td { @if let Some(seq) = r.seq { "position " (seq) } }
                                td {
                                    @if let Some(c) = r.conversation_id {
                                        a.mono href={ "/ui/conversations/" (c) } { (c) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        div.panel {
            h2 { "Headers" }
            @if s.headers.is_empty() { p.muted { "None kept." } }
            @else {
                table.grid { tbody { @for (k, v) in &s.headers { tr { td.mono { (k) } td.mono { (v) } } } } }
            }
        }
        div.panel {
            h2 { "Body (" (s.body_size) " bytes" @if q.body_encoding != "utf8" { ", base64" } @if s.body_truncated { ", kept truncated" } ")" }
            pre.payload.body { (q.body) }
        }
    };
    layout(frame, content)
}

/// A console error page (not found, forbidden, refused).
pub fn error(frame: &Frame, heading: &str, message: &str) -> String {
    let content = html! {
        div.panel {
            h1 { (heading) }
            p { (message) }
            p { a href="/ui/" { "Back to conversations" } }
        }
    };
    layout(frame, content)
}
