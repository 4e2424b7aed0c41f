//! Ultimate (Zendesk AI agents) "Custom CRM" webhooks: the converse webhook (`sendMessage`, `escalate`,
//! `isTeamOnline`, `widget*`) and the actions webhook.
//!
//! One decoder per webhook ([`decode_converse`], [`action_request`]) serves both the delivery path and the
//! projection, so a stored payload is read exactly as it was validated.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{
    delivered_event, join_path, opt_str, opt_text, required_str, scalar_text, Delivery, Fact, MessageFact, Parsed,
    PayloadError, TimedFact,
};
use crate::model::{Button, Card, MessageKind, Party, Platform};

/// Kind of the actions webhook event.
pub(crate) const ACTION: &str = "ultimate.action";
/// Kind of `sendMessage`: a bot message.
pub(crate) const SEND_MESSAGE: &str = "ultimate.send_message";
/// Kind of `escalate`: the bot hands over synchronously.
pub(crate) const ESCALATE: &str = "ultimate.escalate";
/// Kind of `isTeamOnline`: the bot asks whether a team takes chats now.
pub(crate) const IS_TEAM_ONLINE: &str = "ultimate.is_team_online";
/// Kind of `widgetMessage`: the visitor wrote while handed off.
pub(crate) const WIDGET_MESSAGE: &str = "ultimate.widget_message";
/// Kind of `widgetEscalate`: the widget asks for a hand-over.
pub(crate) const WIDGET_ESCALATE: &str = "ultimate.widget_escalate";
/// Kind of `widgetEndSession`: the visitor left.
pub(crate) const WIDGET_END_SESSION: &str = "ultimate.widget_end_session";
/// Kind of a converse event whose `eventType` this version does not know.
pub(crate) const UNKNOWN: &str = "ultimate.unknown";
/// Every kind the parsers produce (converse and actions).
pub const KINDS: &[&str] = &[
    SEND_MESSAGE,
    ESCALATE,
    IS_TEAM_ONLINE,
    WIDGET_MESSAGE,
    WIDGET_ESCALATE,
    WIDGET_END_SESSION,
    UNKNOWN,
    ACTION,
];

/// A bot message (`sendMessage`) as the bot states it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BotMessage {
    /// `text` or `carousel`.
    pub message_type: Option<String>,
    /// The text; `None` when absent or empty.
    pub text: Option<String>,
    /// Buttons of the message.
    pub buttons: Vec<Button>,
    /// Carousel cards.
    pub cards: Vec<Card>,
}

impl BotMessage {
    /// What kind of transcript line it is: a carousel wins over buttons, buttons over plain text.
    pub fn kind(&self) -> MessageKind {
        if self.message_type.as_deref() == Some("carousel") || !self.cards.is_empty() {
            MessageKind::Carousel
        } else if !self.buttons.is_empty() {
            MessageKind::Buttons
        } else {
            MessageKind::Text
        }
    }
}

/// The event a converse webhook carries.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ConverseEvent {
    /// `sendMessage`: the bot talks to the visitor.
    SendMessage(BotMessage),
    /// `escalate`: the bot asks for a human.
    Escalate {
        /// `escalateTo`.
        team: Option<String>,
    },
    /// `isTeamOnline`: the bot asks whether a team is available.
    IsTeamOnline {
        /// `teamId`.
        team: Option<String>,
    },
    /// `widgetMessage`: the widget visitor writes to the agent.
    WidgetMessage {
        /// The visitor's text; `None` when absent or empty.
        text: Option<String>,
    },
    /// `widgetEscalate`: escalation from the Ultimate chat widget.
    WidgetEscalate {
        /// `escalateTo`.
        team: Option<String>,
    },
    /// `widgetEndSession`: the widget visitor ended the escalated session.
    WidgetEndSession,
    /// An `eventType` this version does not know.
    Unknown {
        /// The `eventType` as sent.
        event_type: String,
    },
}

impl ConverseEvent {
    /// The event kind stored in the log.
    pub fn kind(&self) -> &'static str {
        match self {
            ConverseEvent::SendMessage(_) => SEND_MESSAGE,
            ConverseEvent::Escalate { .. } => ESCALATE,
            ConverseEvent::IsTeamOnline { .. } => IS_TEAM_ONLINE,
            ConverseEvent::WidgetMessage { .. } => WIDGET_MESSAGE,
            ConverseEvent::WidgetEscalate { .. } => WIDGET_ESCALATE,
            ConverseEvent::WidgetEndSession => WIDGET_END_SESSION,
            ConverseEvent::Unknown { .. } => UNKNOWN,
        }
    }
}

/// A decoded converse webhook body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Converse {
    /// `botId` (string or number, as text).
    pub bot_id: String,
    /// `data.platformConversationId`; `""` for an `isTeamOnline` that names no conversation.
    pub platform_conversation_id: String,
    /// `data.messageId`, the delivery key when present.
    pub message_id: Option<String>,
    /// The event.
    pub event: ConverseEvent,
}

/// Decodes a converse webhook body, naming the offending field on error.
pub(crate) fn decode_converse(value: &Value) -> Result<Converse, PayloadError> {
    if !value.is_object() {
        return Err(PayloadError::field("", "the body must be a JSON object"));
    }
    let bot_id = required_id(value, "botId", "botId")?;
    let data = match value.get("data") {
        Some(d @ Value::Object(_)) => d,
        None | Some(Value::Null) => return Err(PayloadError::field("data", "`data` is required")),
        Some(_) => return Err(PayloadError::field("data", "`data` must be an object")),
    };
    let event_type = required_str(data, "eventType", "data.eventType")?;
    let conversation = match data.get("platformConversationId") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        None | Some(Value::Null) => None,
        Some(Value::String(_)) => {
            return Err(PayloadError::field(
                "data.platformConversationId",
                "`data.platformConversationId` must not be empty",
            ))
        }
        Some(_) => {
            return Err(PayloadError::field(
                "data.platformConversationId",
                "`data.platformConversationId` must be a string",
            ))
        }
    };
    let event = match event_type.as_str() {
        "sendMessage" => ConverseEvent::SendMessage(bot_message(data)),
        "escalate" => ConverseEvent::Escalate {
            team: opt_text(data, "escalateTo"),
        },
        "isTeamOnline" => ConverseEvent::IsTeamOnline {
            team: opt_text(data, "teamId"),
        },
        "widgetMessage" => ConverseEvent::WidgetMessage {
            text: opt_str(data, "text").filter(|t| !t.is_empty()),
        },
        "widgetEscalate" => ConverseEvent::WidgetEscalate {
            team: opt_text(data, "escalateTo"),
        },
        "widgetEndSession" => ConverseEvent::WidgetEndSession,
        _ => ConverseEvent::Unknown { event_type },
    };
    // The documented isTeamOnline example names no conversation: it is filed under none.
    let platform_conversation_id = match (conversation, &event) {
        (Some(id), _) => id,
        (None, ConverseEvent::IsTeamOnline { .. }) => String::new(),
        (None, _) => {
            return Err(PayloadError::field(
                "data.platformConversationId",
                "`data.platformConversationId` is required",
            ))
        }
    };
    Ok(Converse {
        bot_id,
        platform_conversation_id,
        message_id: opt_text(data, "messageId"),
        event,
    })
}

/// Parses one delivery into events to append.
pub fn parse(raw: &str, value: &Value, d: &Delivery) -> Result<Parsed, PayloadError> {
    let c = decode_converse(value)?;
    // Ultimate sends no time and may legitimately repeat a text: without a key every delivery is distinct.
    let key = c.message_id.as_deref().or(d.idempotency_key);
    let unknown = matches!(c.event, ConverseEvent::Unknown { .. });
    let event = delivered_event(
        Platform::Ultimate,
        c.platform_conversation_id,
        c.event.kind(),
        key,
        None,
        raw,
        d,
    );
    Ok(Parsed {
        events: vec![event],
        unknown,
    })
}

/// One parameter of an action request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ActionParam {
    /// Parameter name.
    pub key: String,
    /// Its value as sent (the bot sends arrays of strings).
    pub value: Value,
    /// Name to store it under, when given.
    pub save_as: Option<String>,
}

/// A decoded actions webhook body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ActionRequest {
    /// `botId` (string or number, as text).
    pub bot_id: String,
    /// `platformConversationId`.
    pub platform_conversation_id: String,
    /// The action's name (e.g. `setAttributes`).
    pub name: String,
    /// Its parameters.
    pub data: Vec<ActionParam>,
}

/// Decodes an actions webhook body, naming the offending field on error.
pub(crate) fn action_request(value: &Value) -> Result<ActionRequest, PayloadError> {
    if !value.is_object() {
        return Err(PayloadError::field("", "the body must be a JSON object"));
    }
    let bot_id = required_id(value, "botId", "botId")?;
    let platform_conversation_id = required_str(value, "platformConversationId", "platformConversationId")?;
    if platform_conversation_id.is_empty() {
        return Err(PayloadError::field(
            "platformConversationId",
            "`platformConversationId` must not be empty",
        ));
    }
    let name = required_str(value, "name", "name")?;
    let items = match value.get("data") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(items)) => items.as_slice(),
        Some(_) => return Err(PayloadError::field("data", "`data` must be an array")),
    };
    let data = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let path = format!("data[{i}]");
            if !item.is_object() {
                return Err(PayloadError::field(path.clone(), format!("`{path}` must be an object")));
            }
            // The documented example literally spells the optional key `saveAs?`.
            let save_as = opt_str(item, "saveAs").or_else(|| opt_str(item, "saveAs?"));
            Ok(ActionParam {
                key: required_str(item, "key", &join_path(&path, "key"))?,
                value: item.get("value").cloned().unwrap_or(Value::Null),
                save_as,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ActionRequest {
        bot_id,
        platform_conversation_id,
        name,
        data,
    })
}

/// Parses an actions webhook delivery (`POST /webhooks/ultimate/actions`) into one `ultimate.action` event.
pub(crate) fn parse_action(raw: &str, value: &Value, d: &Delivery) -> Result<Parsed, PayloadError> {
    let a = action_request(value)?;
    let event = delivered_event(
        Platform::Ultimate,
        a.platform_conversation_id,
        ACTION,
        d.idempotency_key,
        None,
        raw,
        d,
    );
    Ok(Parsed {
        events: vec![event],
        unknown: false,
    })
}

/// The team a converse body names: `data.escalateTo` (escalations) or `data.teamId` (`isTeamOnline`).
pub(crate) fn team_of(value: &Value) -> Option<String> {
    let data = value.get("data")?;
    opt_text(data, "escalateTo").or_else(|| opt_text(data, "teamId"))
}

/// The attributes a `setAttributes` action sets: one-element arrays are unwrapped, `saveAs` renames.
pub(crate) fn action_attributes(request: &ActionRequest) -> BTreeMap<String, Value> {
    request
        .data
        .iter()
        .map(|p| {
            let key = p
                .save_as
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| p.key.clone());
            let value = match &p.value {
                Value::Array(items) if items.len() == 1 => items[0].clone(),
                other => other.clone(),
            };
            (key, value)
        })
        .collect()
}

/// The facts of one stored event of this platform.
pub fn facts(kind: &str, payload: &Value, at: DateTime<Utc>) -> Vec<TimedFact> {
    if kind == ACTION {
        return match action_request(payload) {
            Ok(a) if a.name == "setAttributes" => vec![(at, Fact::Attributes(action_attributes(&a)))],
            _ => Vec::new(),
        };
    }
    let Ok(c) = decode_converse(payload) else {
        return Vec::new();
    };
    // A payload that now decodes to another kind than the one stored is not re-interpreted.
    if c.event.kind() != kind {
        return Vec::new();
    }
    let fact = match c.event {
        ConverseEvent::SendMessage(m) => Some(Fact::Message(MessageFact {
            party: Party::Bot,
            author: Some(c.bot_id),
            party_id: None,
            kind: m.kind(),
            text: m.text,
            buttons: m.buttons,
            cards: m.cards,
            url: None,
            automatic: false,
        })),
        ConverseEvent::Escalate { team } | ConverseEvent::WidgetEscalate { team } => {
            Some(Fact::EscalationRequested { team })
        }
        ConverseEvent::WidgetMessage { text } => Some(Fact::Message(MessageFact {
            party: Party::Visitor,
            author: None,
            party_id: None,
            kind: MessageKind::Text,
            text,
            buttons: Vec::new(),
            cards: Vec::new(),
            url: None,
            automatic: false,
        })),
        ConverseEvent::WidgetEndSession => Some(Fact::VisitorLeft),
        ConverseEvent::IsTeamOnline { .. } | ConverseEvent::Unknown { .. } => None,
    };
    fact.into_iter().map(|f| (at, f)).collect()
}

/// A required id that may be a string or a number.
fn required_id(parent: &Value, key: &str, path: &str) -> Result<String, PayloadError> {
    match parent.get(key) {
        None | Some(Value::Null) => Err(PayloadError::field(path, format!("`{path}` is required"))),
        Some(v @ (Value::String(_) | Value::Number(_))) => {
            scalar_text(v).ok_or_else(|| PayloadError::field(path, format!("`{path}` must be a string or a number")))
        }
        Some(_) => Err(PayloadError::field(
            path,
            format!("`{path}` must be a string or a number"),
        )),
    }
}

fn bot_message(data: &Value) -> BotMessage {
    BotMessage {
        message_type: opt_str(data, "type"),
        text: opt_str(data, "text").filter(|t| !t.is_empty()),
        buttons: buttons(data.get("buttons")),
        cards: data
            .get("carouselCards")
            .and_then(Value::as_array)
            .map(|cards| {
                cards
                    .iter()
                    .filter(|c| c.is_object())
                    .map(|c| Card {
                        title: opt_str(c, "title"),
                        description: opt_str(c, "description"),
                        image_url: opt_str(c, "imageUrl"),
                        buttons: buttons(c.get("buttons")),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Buttons are optional decoration: malformed entries are skipped rather than refusing the message.
fn buttons(value: Option<&Value>) -> Vec<Button> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter(|b| b.is_object())
                .map(|b| Button {
                    kind: opt_str(b, "type").unwrap_or_else(|| "button".into()),
                    text: opt_text(b, "text").unwrap_or_default(),
                    url: opt_str(b, "url").or_else(|| opt_str(b, "link")),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{event_id_for, StreamKey};
    use crate::sources::parse_json;
    use crate::sources::testing::{self, field_of};
    use chrono::TimeZone;
    use serde_json::json;

    const CONV: &str = "13427e90-f76a-47c2-a26d-ea0b4f1836c5";

    const TEXT_EXAMPLE: &str = r#"{
"botId": "BOT_ID",
"data": {
"eventType": "sendMessage",
"platformConversationId": "13427e90-f76a-47c2-a26d-ea0b4f1836c5",
"conversationId": "CONVERSATION_ID",
"type": "text",
"replyId": "REPLY_ID",
"buttons": [],
"text": "Hello, this is a bot text message",
"carouselCards": [],
"predictedIntents": [{"value": "1234", "name": "intent name", "confidence": 1}]
}
}"#;

    const BUTTONS_EXAMPLE: &str = r#"{
"botId": "BOT_ID",
"data": {
"eventType": "sendMessage",
"platformConversationId": "13427e90-f76a-47c2-a26d-ea0b4f1836c5",
"conversationId": "CONVERSATION_ID",
"type": "text",
"replyId": "REPLY_ID",
"buttons": [
{
"type": "button",
"text": "YES"
},
{
"type": "button",
"text": "NO"
}
],
"text": "its a bot text message with 2 buttons",
"carouselCards": [],
"predictedIntents": [{"value": "1234", "name": "intent name", "confidence": 1}]
}
}"#;

    const CAROUSEL_EXAMPLE: &str = r#"{
"botId": "BOT_ID",
"data": {
"eventType": "sendMessage",
"platformConversationId": "13427e90-f76a-47c2-a26d-ea0b4f1836c5",
"conversationId": "CONVERSATION_ID",
"type": "carousel",
"replyId": "REPLY_ID",
"buttons": [],
"text": "",
"carouselCards": [
{
"title": "card 1",
"description": "card 1 description",
"imageUrl": "URL",
"buttons": [
{
"text": "button 1",
"type": "button"
},
{
"text": "button 2",
"type": "button"
}
]
},
{
"title": "card 2",
"description": "card 2 description",
"imageUrl": "URL",
"buttons": [
{
"text": "button 1",
"type": "button"
},
{
"text": "button 2",
"type": "button"
}
]
}
],
"predictedIntents": [{"value": "1234", "name": "intent name", "confidence": 1}]
}
}"#;

    const ESCALATE_EXAMPLE: &str = r#"{
"botId": "BOT_ID",
"data": {
"eventType": "escalate",
"platformConversationId": "13427e90-f76a-47c2-a26d-ea0b4f1836c5",
"escalateTo": "string"
}
}"#;

    const IS_TEAM_ONLINE_EXAMPLE: &str = r#"{
"botId": "BOT_ID",
"data": {
"eventType": "isTeamOnline",
"teamId": "string"
}
}"#;

    const WIDGET_ESCALATE_EXAMPLE: &str = r#"{
"botId": "BOT_ID",
"data": {
"eventType": "widgetEscalate",
"platformConversationId": "13427e90-f76a-47c2-a26d-ea0b4f1836c5",
"escalateTo": "string"
}
}"#;

    const WIDGET_MESSAGE_EXAMPLE: &str = r#"{
"botId": "BOT_ID",
"data": {
"eventType": "widgetMessage",
"platformConversationId": "13427e90-f76a-47c2-a26d-ea0b4f1836c5",
"conversationId": "CONVERSATION_ID",
"type": "text",
"buttons": [],
"text": "Hello, this is a customer message in an escalated conversation",
"carouselCards": [],
"predictedIntents": []
}
}"#;

    const WIDGET_END_SESSION_EXAMPLE: &str = r#"{
"botId": "BOT_ID",
"data": {
"eventType": "widgetEndSession",
"platformConversationId": "13427e90-f76a-47c2-a26d-ea0b4f1836c5"
}
}"#;

    /// The action example exactly as documented: a comma is missing after `platformConversationId`.
    const ACTION_EXAMPLE_AS_DOCUMENTED: &str = r#"{
"botId" : "BOT_ID",
"conversationId": "CONVERSATION_ID",
"platformConversationId": "13427e90-f76a-47c2-a26d-ea0b4f1836c5"
"name": "updateCustomerBalance",
"data": [
{
"key": "userId",
"value": [ "123345" ],
"saveAs?": "customerId"
},
{
"key": "balance",
"value": [ "100" ]
}
]
}"#;

    fn received() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, 26, 18, 0, 0).unwrap()
    }

    fn delivery() -> Delivery<'static> {
        testing::delivery(received(), ("content-type", "application/json"), None)
    }

    fn run(raw: &str, d: &Delivery) -> Result<Parsed, PayloadError> {
        testing::run(parse, raw, d)
    }

    fn facts_of_raw(raw: &str) -> Vec<Fact> {
        testing::first_facts(&run(raw, &delivery()).unwrap(), facts)
            .into_iter()
            .map(|(_, f)| f)
            .collect()
    }

    fn button(text: &str) -> Button {
        Button {
            kind: "button".into(),
            text: text.into(),
            url: None,
        }
    }

    #[test]
    fn text_example_is_one_bot_text_line() {
        let parsed = run(TEXT_EXAMPLE, &delivery()).unwrap();
        assert!(!parsed.unknown);
        assert_eq!(parsed.events.len(), 1);
        let e = &parsed.events[0];
        assert_eq!(e.kind, "ultimate.send_message");
        assert_eq!(e.stream, StreamKey::new(Platform::Ultimate, CONV));
        assert_eq!(e.occurred_at, received());
        assert_eq!(e.received_at, received());
        assert_eq!(e.payload, TEXT_EXAMPLE);
        assert_eq!(
            e.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        assert!(e.links.is_empty());
        assert_eq!(
            facts_of_raw(TEXT_EXAMPLE),
            vec![Fact::Message(MessageFact::text(
                Party::Bot,
                Some("BOT_ID".into()),
                "Hello, this is a bot text message"
            ))]
        );
    }

    #[test]
    fn buttons_example_is_a_buttons_line() {
        let facts = facts_of_raw(BUTTONS_EXAMPLE);
        let Fact::Message(m) = &facts[0] else {
            panic!("{facts:?}")
        };
        assert_eq!(facts.len(), 1);
        assert_eq!(m.kind, MessageKind::Buttons);
        assert_eq!(m.party, Party::Bot);
        assert_eq!(m.text.as_deref(), Some("its a bot text message with 2 buttons"));
        assert_eq!(m.buttons, vec![button("YES"), button("NO")]);
        assert!(m.cards.is_empty());
    }

    #[test]
    fn carousel_example_is_a_carousel_without_text() {
        let facts = facts_of_raw(CAROUSEL_EXAMPLE);
        let Fact::Message(m) = &facts[0] else {
            panic!("{facts:?}")
        };
        assert_eq!(m.kind, MessageKind::Carousel);
        assert_eq!(m.text, None);
        assert_eq!(m.author.as_deref(), Some("BOT_ID"));
        let card = |n: u8| Card {
            title: Some(format!("card {n}")),
            description: Some(format!("card {n} description")),
            image_url: Some("URL".into()),
            buttons: vec![button("button 1"), button("button 2")],
        };
        assert_eq!(m.cards, vec![card(1), card(2)]);
    }

    #[test]
    fn link_buttons_keep_their_url() {
        let raw = json!({"botId": "b", "data": {"eventType": "sendMessage", "platformConversationId": "c",
            "text": "see", "buttons": [{"type": "link", "text": "Docs", "url": "https://example.com"}]}})
        .to_string();
        let facts = facts_of_raw(&raw);
        let Fact::Message(m) = &facts[0] else {
            panic!("{facts:?}")
        };
        assert_eq!(
            m.buttons,
            vec![Button {
                kind: "link".into(),
                text: "Docs".into(),
                url: Some("https://example.com".into())
            }]
        );
    }

    #[test]
    fn escalate_and_widget_escalate_request_a_team() {
        for (raw, kind) in [
            (ESCALATE_EXAMPLE, "ultimate.escalate"),
            (WIDGET_ESCALATE_EXAMPLE, "ultimate.widget_escalate"),
        ] {
            let parsed = run(raw, &delivery()).unwrap();
            assert_eq!(parsed.events[0].kind, kind);
            assert_eq!(parsed.events[0].stream.external_id, CONV);
            assert_eq!(
                facts_of_raw(raw),
                vec![Fact::EscalationRequested {
                    team: Some("string".into())
                }]
            );
            assert_eq!(team_of(&parse_json(raw.as_bytes()).unwrap()), Some("string".into()));
        }
    }

    #[test]
    fn is_team_online_example_is_filed_under_no_conversation() {
        let parsed = run(IS_TEAM_ONLINE_EXAMPLE, &delivery()).unwrap();
        let e = &parsed.events[0];
        assert_eq!(e.kind, "ultimate.is_team_online");
        assert_eq!(e.stream, StreamKey::new(Platform::Ultimate, ""));
        assert!(facts_of_raw(IS_TEAM_ONLINE_EXAMPLE).is_empty());
        assert_eq!(
            team_of(&parse_json(IS_TEAM_ONLINE_EXAMPLE.as_bytes()).unwrap()),
            Some("string".into())
        );
        let with_conv = json!({"botId": 7, "data": {"eventType": "isTeamOnline", "platformConversationId": "c1"}});
        let parsed = parse(&with_conv.to_string(), &with_conv, &delivery()).unwrap();
        assert_eq!(parsed.events[0].stream.external_id, "c1");
    }

    #[test]
    fn widget_message_is_a_visitor_line_and_end_session_a_visitor_leaving() {
        assert_eq!(
            run(WIDGET_MESSAGE_EXAMPLE, &delivery()).unwrap().events[0].kind,
            "ultimate.widget_message"
        );
        assert_eq!(
            facts_of_raw(WIDGET_MESSAGE_EXAMPLE),
            vec![Fact::Message(MessageFact::text(
                Party::Visitor,
                None,
                "Hello, this is a customer message in an escalated conversation"
            ))]
        );
        let parsed = run(WIDGET_END_SESSION_EXAMPLE, &delivery()).unwrap();
        assert_eq!(parsed.events[0].kind, "ultimate.widget_end_session");
        assert_eq!(facts_of_raw(WIDGET_END_SESSION_EXAMPLE), vec![Fact::VisitorLeft]);
    }

    #[test]
    fn message_id_is_the_delivery_key_and_redelivery_keeps_the_id() {
        let raw = json!({"botId": "b", "data": {"eventType": "sendMessage", "platformConversationId": "c",
            "messageId": "m-1", "text": "hi"}})
        .to_string();
        let a = run(&raw, &delivery()).unwrap();
        let b = run(&raw, &delivery()).unwrap();
        assert_eq!(a.events[0].event_id, b.events[0].event_id);
        assert_eq!(a.events[0].event_id, event_id_for(Platform::Ultimate, Some("m-1")));
        // A numeric messageId is the same key as its text.
        let numeric = json!({"botId": "b", "data": {"eventType": "sendMessage", "platformConversationId": "c",
            "messageId": 42}})
        .to_string();
        assert_eq!(
            run(&numeric, &delivery()).unwrap().events[0].event_id,
            event_id_for(Platform::Ultimate, Some("42"))
        );
    }

    #[test]
    fn idempotency_key_is_used_when_there_is_no_message_id() {
        let d = Delivery {
            idempotency_key: Some("idem-9"),
            ..delivery()
        };
        let a = run(TEXT_EXAMPLE, &d).unwrap();
        let b = run(TEXT_EXAMPLE, &d).unwrap();
        assert_eq!(a.events[0].event_id, b.events[0].event_id);
        assert_eq!(a.events[0].event_id, event_id_for(Platform::Ultimate, Some("idem-9")));
    }

    #[test]
    fn without_any_key_two_identical_deliveries_are_distinct() {
        let a = run(TEXT_EXAMPLE, &delivery()).unwrap();
        let b = run(TEXT_EXAMPLE, &delivery()).unwrap();
        assert_ne!(a.events[0].event_id, b.events[0].event_id);
    }

    #[test]
    fn unknown_event_type_is_kept_as_unknown() {
        let raw =
            json!({"botId": "b", "data": {"eventType": "somethingNew", "platformConversationId": "c"}}).to_string();
        let parsed = run(&raw, &delivery()).unwrap();
        assert!(parsed.unknown);
        assert_eq!(parsed.events.len(), 1);
        assert_eq!(parsed.events[0].kind, "ultimate.unknown");
        assert_eq!(parsed.events[0].stream.external_id, "c");
        assert!(facts_of_raw(&raw).is_empty());
        // Without a stream key even an unknown event cannot be filed.
        let raw = json!({"botId": "b", "data": {"eventType": "somethingNew"}}).to_string();
        assert_eq!(
            field_of(run(&raw, &delivery()).unwrap_err()),
            "data.platformConversationId"
        );
    }

    #[test]
    fn required_fields_are_named_in_errors() {
        let cases = [
            (json!([1, 2]), ""),
            (json!("text"), ""),
            (
                json!({"data": {"eventType": "escalate", "platformConversationId": "c"}}),
                "botId",
            ),
            (
                json!({"botId": true, "data": {"eventType": "escalate", "platformConversationId": "c"}}),
                "botId",
            ),
            (json!({"botId": "b"}), "data"),
            (json!({"botId": "b", "data": "x"}), "data"),
            (
                json!({"botId": "b", "data": {"platformConversationId": "c"}}),
                "data.eventType",
            ),
            (
                json!({"botId": "b", "data": {"eventType": 3, "platformConversationId": "c"}}),
                "data.eventType",
            ),
            (
                json!({"botId": "b", "data": {"eventType": "escalate"}}),
                "data.platformConversationId",
            ),
            (
                json!({"botId": "b", "data": {"eventType": "escalate", "platformConversationId": ""}}),
                "data.platformConversationId",
            ),
            (
                json!({"botId": "b", "data": {"eventType": "escalate", "platformConversationId": 12}}),
                "data.platformConversationId",
            ),
        ];
        for (value, field) in cases {
            let err = parse(&value.to_string(), &value, &delivery()).unwrap_err();
            assert_eq!(field_of(err), field, "{value}");
        }
    }

    #[test]
    fn numeric_bot_id_and_team_are_accepted() {
        let value = json!({"botId": 1000, "data": {"eventType": "escalate", "platformConversationId": "c",
            "escalateTo": 2179}});
        let raw = value.to_string();
        assert_eq!(team_of(&value), Some("2179".into()));
        assert_eq!(
            facts_of_raw(&raw),
            vec![Fact::EscalationRequested {
                team: Some("2179".into())
            }]
        );
        let value = json!({"botId": 1000, "data": {"eventType": "sendMessage", "platformConversationId": "c",
            "text": "hey", "buttons": null, "carouselCards": null}});
        let facts = facts_of_raw(&value.to_string());
        assert_eq!(
            facts,
            vec![Fact::Message(MessageFact::text(Party::Bot, Some("1000".into()), "hey"))]
        );
    }

    #[test]
    fn facts_of_a_payload_that_no_longer_parses_are_empty() {
        let at = received();
        assert!(facts("ultimate.send_message", &json!({"nope": 1}), at).is_empty());
        assert!(facts("ultimate.send_message", &Value::Null, at).is_empty());
        assert!(facts(ACTION, &json!({"botId": "b"}), at).is_empty());
        // A stored kind that does not match the payload is not re-read as something else.
        let v = parse_json(TEXT_EXAMPLE.as_bytes()).unwrap();
        assert!(facts("ultimate.escalate", &v, at).is_empty());
    }

    #[test]
    fn documented_action_example_is_refused_as_json_and_fixed_one_parses() {
        assert!(matches!(
            parse_json(ACTION_EXAMPLE_AS_DOCUMENTED.as_bytes()),
            Err(PayloadError::InvalidJson(_))
        ));
        let fixed = ACTION_EXAMPLE_AS_DOCUMENTED.replace(
            "\"13427e90-f76a-47c2-a26d-ea0b4f1836c5\"\n",
            "\"13427e90-f76a-47c2-a26d-ea0b4f1836c5\",\n",
        );
        let value = parse_json(fixed.as_bytes()).unwrap();
        let request = action_request(&value).unwrap();
        assert_eq!(
            request,
            ActionRequest {
                bot_id: "BOT_ID".into(),
                platform_conversation_id: CONV.into(),
                name: "updateCustomerBalance".into(),
                data: vec![
                    ActionParam {
                        key: "userId".into(),
                        value: json!(["123345"]),
                        save_as: Some("customerId".into())
                    },
                    ActionParam {
                        key: "balance".into(),
                        value: json!(["100"]),
                        save_as: None
                    },
                ],
            }
        );
        let d = Delivery {
            idempotency_key: Some("k1"),
            ..delivery()
        };
        let parsed = parse_action(&fixed, &value, &d).unwrap();
        let e = &parsed.events[0];
        assert!(!parsed.unknown);
        assert_eq!(e.kind, "ultimate.action");
        assert_eq!(e.stream, StreamKey::new(Platform::Ultimate, CONV));
        assert_eq!(e.event_id, event_id_for(Platform::Ultimate, Some("k1")));
        assert_eq!(e.payload, fixed);
        // Only setAttributes sets attributes.
        assert!(facts(ACTION, &value, received()).is_empty());
    }

    #[test]
    fn set_attributes_unwraps_single_values_and_honours_save_as() {
        let value = json!({"botId": "b", "platformConversationId": "c", "name": "setAttributes", "data": [
            {"key": "Ticket", "value": ["2024"]},
            {"key": "userId", "value": ["1"], "saveAs": "customerId"},
            {"key": "tags", "value": ["a", "b"], "saveAs?": "labels"},
            {"key": "plain", "value": 5}
        ]});
        let parsed = parse_action(&value.to_string(), &value, &delivery()).unwrap();
        let e = &parsed.events[0];
        let stored: Value = serde_json::from_str(&e.payload).unwrap();
        let facts = facts(&e.kind, &stored, e.occurred_at);
        let expected = BTreeMap::from([
            ("Ticket".to_string(), json!("2024")),
            ("customerId".to_string(), json!("1")),
            ("labels".to_string(), json!(["a", "b"])),
            ("plain".to_string(), json!(5)),
        ]);
        assert_eq!(facts, vec![(received(), Fact::Attributes(expected))]);
    }

    #[test]
    fn action_without_key_gets_distinct_ids_and_data_defaults_to_empty() {
        let value = json!({"botId": 5, "platformConversationId": "c", "name": "ping"});
        let a = parse_action(&value.to_string(), &value, &delivery()).unwrap();
        let b = parse_action(&value.to_string(), &value, &delivery()).unwrap();
        assert_ne!(a.events[0].event_id, b.events[0].event_id);
        assert_eq!(action_request(&value).unwrap().data, vec![]);
        assert_eq!(action_request(&value).unwrap().bot_id, "5");
    }

    #[test]
    fn action_required_fields_are_named_in_errors() {
        let cases = [
            (json!(3), ""),
            (json!({"platformConversationId": "c", "name": "n"}), "botId"),
            (json!({"botId": "b", "name": "n"}), "platformConversationId"),
            (
                json!({"botId": "b", "platformConversationId": "", "name": "n"}),
                "platformConversationId",
            ),
            (json!({"botId": "b", "platformConversationId": "c"}), "name"),
            (json!({"botId": "b", "platformConversationId": "c", "name": 1}), "name"),
            (
                json!({"botId": "b", "platformConversationId": "c", "name": "n", "data": {}}),
                "data",
            ),
            (
                json!({"botId": "b", "platformConversationId": "c", "name": "n", "data": [{"key": "a"}, 2]}),
                "data[1]",
            ),
            (
                json!({"botId": "b", "platformConversationId": "c", "name": "n", "data": [{"key": "a"}, {"value": 1}]}),
                "data[1].key",
            ),
        ];
        for (value, field) in cases {
            let err = parse_action(&value.to_string(), &value, &delivery()).unwrap_err();
            assert_eq!(field_of(err), field, "{value}");
        }
    }
}
