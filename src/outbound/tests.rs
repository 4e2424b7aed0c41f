use std::collections::BTreeMap;

use chrono::{Duration, TimeZone, Utc};
use serde_json::json;

use serde_json::Value;
use uuid::Uuid;

use super::actions::handoff_status;
use super::clients::{Backends, WidgetUpdate};
use super::commands::{Command, LiveTarget, WidgetCommand};
use super::escalation::escalation_command;
use super::plan::{agent_name, ewt_minutes, live_target, plan_relay, RelayContext, RELAYED_KINDS};
use crate::config::{Config, Route};
use crate::model::{Agent, Disposition, Handoff as HandoffRecord, MessageCounts, MessageKind, SlaStatus};
use crate::model::{Backend, Conversation, HandoffState, Message, Party, Platform, StoredEvent, StreamKey};
use crate::sources::ledger;

fn conversation(state: HandoffState, streams: Vec<StreamKey>) -> Conversation {
    let at = Utc.with_ymd_and_hms(2024, 1, 26, 18, 0, 0).unwrap();
    Conversation {
        id: Uuid::new_v4(),
        state,
        disposition: None,
        platform_disposition: None,
        sla_status: SlaStatus::NotApplicable,
        sla_deadline: None,
        streams,
        queue: None,
        agents: vec![Agent {
            name: "Tomas".into(),
            nickname: None,
            group: None,
        }],
        handoffs: Vec::new(),
        started_at: at,
        escalated_at: None,
        queued_at: None,
        first_attended_at: None,
        closed_at: None,
        wait_seconds: None,
        first_response_seconds: None,
        handle_seconds: None,
        bot_seconds: None,
        transfers: 0,
        message_counts: MessageCounts::default(),
        close_reason: None,
        attributes: BTreeMap::from([("Ticket".to_string(), json!(2024))]),
        last_seq: 1,
        updated_at: at,
    }
}

fn bot_and_room() -> Vec<StreamKey> {
    vec![
        StreamKey::new(Platform::Ultimate, "pc-1"),
        StreamKey::new(Platform::AivoLive, "room-1"),
    ]
}

fn aivo_target() -> LiveTarget {
    LiveTarget {
        backend: Backend::AivoLive,
        live_id: "room-1".into(),
    }
}

fn plan(
    kind: &str,
    payload: Value,
    c: &Conversation,
    line: Option<&Message>,
    target: Option<&LiveTarget>,
) -> Vec<Command> {
    plan_relay(
        kind,
        &payload,
        RelayContext {
            conversation: c,
            line,
            target,
            aivo_close: false,
        },
    )
}

fn widget(update: WidgetUpdate) -> Command {
    Command::Widget {
        platform_conversation_id: "pc-1".into(),
        update: WidgetCommand::from_update(&update),
    }
}

fn line(party: Party, author: Option<&str>, text: &str) -> Message {
    Message {
        seq: 3,
        at: Utc::now(),
        party,
        author: author.map(str::to_string),
        kind: MessageKind::Text,
        text: Some(text.into()),
        buttons: Vec::new(),
        cards: Vec::new(),
        url: None,
        platform: Platform::AivoLive,
        event_id: Uuid::new_v4(),
    }
}

#[test]
fn attends_become_escalation_success_with_the_agent_named_in_the_event() {
    let c = conversation(HandoffState::Attended, bot_and_room());
    let attended = json!({"name": "attended", "data": {"agent": {"name": "Lucia", "nickname": "Lu"}}});
    assert_eq!(
        plan("aivo_live.attended", attended, &c, None, None),
        vec![widget(WidgetUpdate::Success { agent: "Lucia".into() })]
    );
    let joined = json!({"event": "chat_session_party_joined", "party_id": "p1", "first_name": "Ann", "last_name": "L.", "type": "internal"});
    assert_eq!(
        plan("bright_pattern.chat_session_party_joined", joined, &c, None, None),
        vec![widget(WidgetUpdate::Success { agent: "Ann L.".into() })]
    );
    let scenario =
        json!({"event": "chat_session_party_joined", "party_id": "p0", "display_name": "Bot", "type": "scenario"});
    assert!(plan("bright_pattern.chat_session_party_joined", scenario, &c, None, None).is_empty());
    // No Ultimate stream (the race: the room is a conversation of its own): nothing to tell yet.
    let room_only = conversation(
        HandoffState::Attended,
        vec![StreamKey::new(Platform::AivoLive, "room-1")],
    );
    assert!(plan(
        "aivo_live.attended",
        json!({"data": {"agent": {}}}),
        &room_only,
        None,
        None
    )
    .is_empty());
    // An agent without a name falls back to the conversation's latest agent.
    assert_eq!(
        plan("aivo_live.attended", json!({"data": {"agent": {}}}), &c, None, None),
        vec![widget(WidgetUpdate::Success { agent: "Tomas".into() })]
    );
}

#[test]
fn agent_and_trigger_messages_reach_the_widget_only_once_attended() {
    let attended = conversation(HandoffState::Attended, bot_and_room());
    let agent = line(Party::Agent, Some("Tomas"), "Hi, Tomas here");
    assert_eq!(
        plan("aivo_live.message_to_client", json!({}), &attended, Some(&agent), None),
        vec![widget(WidgetUpdate::Message {
            agent: Some("Tomas".into()),
            text: "Hi, Tomas here".into()
        })]
    );
    let trigger = line(Party::System, None, "Anything else?");
    assert_eq!(
        plan(
            "aivo_live.message_to_client",
            json!({}),
            &attended,
            Some(&trigger),
            None
        ),
        vec![widget(WidgetUpdate::Message {
            agent: None,
            text: "Anything else?".into()
        })]
    );
    let queued = conversation(HandoffState::Queued, bot_and_room());
    assert!(plan("aivo_live.message_to_client", json!({}), &queued, Some(&trigger), None).is_empty());
    // Bright Pattern: agent lines only (the visitor's echo and scenario bot lines are not relayed).
    let visitor = line(Party::Visitor, None, "echo");
    let bot = line(Party::Bot, Some("Scenario"), "Please wait");
    assert!(plan(
        "bright_pattern.chat_session_message",
        json!({}),
        &attended,
        Some(&visitor),
        None
    )
    .is_empty());
    assert!(plan(
        "bright_pattern.chat_session_message",
        json!({}),
        &attended,
        Some(&bot),
        None
    )
    .is_empty());
    let mut image = line(Party::Agent, Some("Ann"), "");
    image.text = None;
    image.url = Some("https://files/x.png".into());
    assert_eq!(
        plan(
            "bright_pattern.chat_session_file",
            json!({}),
            &attended,
            Some(&image),
            None
        ),
        vec![widget(WidgetUpdate::Message {
            agent: Some("Ann".into()),
            text: "https://files/x.png".into()
        })]
    );
}

#[test]
fn transfers_statuses_and_closes_update_the_widget() {
    let c = conversation(HandoffState::Queued, bot_and_room());
    let queue_update = |minutes| {
        widget(WidgetUpdate::QueueUpdate {
            queue_position: None,
            waiting_minutes: minutes,
        })
    };
    assert_eq!(
        plan("aivo_live.transfer", json!({}), &c, None, None),
        vec![queue_update(None)]
    );
    assert_eq!(
        plan(
            "bright_pattern.chat_session_status",
            json!({"state": "queued", "ewt": "61"}),
            &c,
            None,
            None
        ),
        vec![queue_update(Some(2))]
    );
    assert_eq!(
        plan(
            "bright_pattern.chat_session_status",
            json!({"state": "failed"}),
            &c,
            None,
            None
        ),
        vec![widget(WidgetUpdate::Failed { text: None })]
    );
    assert!(plan(
        "bright_pattern.chat_session_status",
        json!({"state": "connected"}),
        &c,
        None,
        None
    )
    .is_empty());
    let closed = conversation(HandoffState::Closed, bot_and_room());
    for kind in [
        "aivo_live.close",
        "bright_pattern.chat_session_ended",
        "bright_pattern.chat_session_inactivity_timeout",
    ] {
        assert_eq!(
            plan(kind, json!({}), &closed, None, None),
            vec![widget(WidgetUpdate::AgentDisconnect {
                agent: Some("Tomas".into())
            })],
            "{kind}"
        );
    }
}

#[test]
fn visitor_messages_go_to_the_live_chat_while_handed_off() {
    let target = aivo_target();
    let widget_message = json!({"data": {"eventType": "widgetMessage", "text": "my balance?"}});
    for state in [
        HandoffState::EscalationRequested,
        HandoffState::Queued,
        HandoffState::Attended,
    ] {
        let c = conversation(state, bot_and_room());
        assert_eq!(
            plan(
                "ultimate.widget_message",
                widget_message.clone(),
                &c,
                None,
                Some(&target)
            ),
            vec![Command::VisitorMessage {
                text: "my balance?".into(),
                target: Some(target.clone())
            }]
        );
    }
    for state in [HandoffState::Bot, HandoffState::Closed, HandoffState::Failed] {
        let c = conversation(state, bot_and_room());
        assert!(plan(
            "ultimate.widget_message",
            widget_message.clone(),
            &c,
            None,
            Some(&target)
        )
        .is_empty());
    }
    let c = conversation(HandoffState::Queued, bot_and_room());
    assert_eq!(
        plan(
            ledger::API_MESSAGE,
            json!({"party": "visitor", "text": "Account 42"}),
            &c,
            None,
            None
        ),
        vec![Command::VisitorMessage {
            text: "Account 42".into(),
            target: None
        }]
    );
    assert!(plan(
        ledger::API_MESSAGE,
        json!({"party": "agent", "text": "note"}),
        &c,
        None,
        None
    )
    .is_empty());
}

#[test]
fn the_visitor_leaving_ends_the_live_chat_when_the_platform_can_be_told() {
    let mut c = conversation(HandoffState::Closed, bot_and_room());
    c.handoffs.push(HandoffRecord {
        backend: "bright_pattern".into(),
        queue: None,
        requested_at: None,
        queued_at: None,
        attended_at: None,
        closed_at: None,
        agents: Vec::new(),
        transfers: 0,
        wait_seconds: None,
        first_response_seconds: None,
        handle_seconds: None,
        sla_status: SlaStatus::NotApplicable,
        sla_deadline: None,
        disposition: Some(Disposition::Abandoned),
        platform_disposition: None,
        close_reason: Some("visitor_left".into()),
        failure: None,
    });
    let bp = LiveTarget {
        backend: Backend::BrightPattern,
        live_id: "chat-1".into(),
    };
    assert_eq!(
        plan("ultimate.widget_end_session", json!({}), &c, None, Some(&bp)),
        vec![Command::EndChat { target: Some(bp) }]
    );
    // Aivo has no documented close call: only with `close_path`.
    assert!(plan("ultimate.widget_end_session", json!({}), &c, None, Some(&aivo_target())).is_empty());
    let with_close = plan_relay(
        "ultimate.widget_end_session",
        &json!({}),
        RelayContext {
            conversation: &c,
            line: None,
            target: Some(&aivo_target()),
            aivo_close: true,
        },
    );
    assert_eq!(
        with_close,
        vec![Command::EndChat {
            target: Some(aivo_target())
        }]
    );
    // The platform had closed it already: nothing to end.
    c.handoffs[0].close_reason = Some("agent".into());
    assert!(plan("ultimate.widget_end_session", json!({}), &c, None, Some(&aivo_target())).is_empty());
}

fn stored(seq: i64, kind: &str, payload: Value) -> StoredEvent {
    StoredEvent {
        seq,
        event_id: Uuid::new_v4(),
        platform: Platform::Ledger,
        external_id: "c".into(),
        kind: kind.into(),
        occurred_at: Utc::now(),
        platform_at: None,
        received_at: Utc::now(),
        conversation_id: None,
        headers: BTreeMap::new(),
        payload,
        hash: None,
        revision_of: None,
    }
}

#[test]
fn the_live_target_is_the_latest_accepted_queue_call() {
    let accepted = |id: &str| json!({"backend": "aivo_live", "queue": "2179", "live_id": id, "team": null});
    let events = vec![
        stored(2, ledger::QUEUE_ACCEPTED, accepted("room-2")),
        stored(1, ledger::QUEUE_ACCEPTED, accepted("room-1")),
        stored(3, "aivo_live.attended", json!({})),
    ];
    assert_eq!(
        live_target(&events, &[]),
        Some(LiveTarget {
            backend: Backend::AivoLive,
            live_id: "room-2".into()
        })
    );
    let streams = vec![
        StreamKey::new(Platform::Ultimate, "pc"),
        StreamKey::new(Platform::BrightPattern, "chat-9"),
    ];
    assert_eq!(
        live_target(&[], &streams),
        Some(LiveTarget {
            backend: Backend::BrightPattern,
            live_id: "chat-9".into()
        })
    );
    assert_eq!(live_target(&[], &streams[..1]), None);
}

#[test]
fn escalations_resolve_through_routing_to_a_configured_backend() {
    let mut config = Config::default();
    config.bright_pattern.base_url = String::new();
    config.aivo_live.bot_token = "token".into();
    config.routing.default = Some(Route {
        backend: Backend::AivoLive,
        groups: vec![2179],
        hours: None,
    });
    config.routing.teams.insert(
        "support".into(),
        Route {
            backend: Backend::BrightPattern,
            groups: Vec::new(),
            hours: None,
        },
    );
    let backends = Backends::from_config(&config).unwrap();
    let c = conversation(HandoffState::EscalationRequested, bot_and_room());
    let command = escalation_command(&config.routing, &backends, Some("sales"), &c, true, false).unwrap();
    assert_eq!(
        command,
        Command::Queue {
            backend: Backend::AivoLive,
            team: Some("sales".into()),
            groups: vec![2179],
            visitor_id: "pc-1".into(),
            attributes: c.attributes.clone(),
            notify_widget: Some("pc-1".into()),
            synchronous: false,
        }
    );
    let err = escalation_command(&config.routing, &backends, Some("support"), &c, false, true).unwrap_err();
    assert!(err.0.contains("not configured"), "{err:?}");
    config.routing.default = None;
    let err = escalation_command(&config.routing, &backends, None, &c, false, true).unwrap_err();
    assert!(err.0.contains("no route"), "{err:?}");
}

#[test]
fn handoff_status_reports_the_wait_so_far() {
    let now = Utc::now();
    let mut c = conversation(HandoffState::Queued, bot_and_room());
    c.queue = Some("2179".into());
    c.queued_at = Some(now - Duration::seconds(42));
    let results = handoff_status(&c, now);
    let pairs: Vec<(String, Value)> = results.into_iter().map(|r| (r.key, r.value)).collect();
    assert_eq!(
        pairs,
        vec![
            ("handoffState".to_string(), json!("queued")),
            ("handoffQueue".to_string(), json!("2179")),
            ("agentName".to_string(), json!("Tomas")),
            ("waitSeconds".to_string(), json!(42)),
        ]
    );
    c.first_attended_at = Some(now);
    c.wait_seconds = Some(12.4);
    assert_eq!(handoff_status(&c, now)[3].value, json!(12));
}

#[test]
fn agent_names_and_waits_are_read_from_payloads() {
    assert_eq!(
        agent_name(&json!({"data": {"agent": {"nickname": "Lu"}}})).as_deref(),
        Some("Lu")
    );
    assert_eq!(
        agent_name(&json!({"display_name": "Ann L."})).as_deref(),
        Some("Ann L.")
    );
    assert_eq!(agent_name(&json!({"first_name": "Ann"})).as_deref(), Some("Ann"));
    assert_eq!(agent_name(&json!({"data": {"agent": {}}})), None);
    assert_eq!(ewt_minutes(Some(&json!(0))), Some(0));
    assert_eq!(ewt_minutes(Some(&json!("120"))), Some(2));
    assert_eq!(ewt_minutes(Some(&json!(121))), Some(3));
    assert_eq!(ewt_minutes(Some(&json!("soon"))), None);
    assert_eq!(ewt_minutes(None), None);
}

#[test]
fn kinds_outside_the_relayed_list_never_plan_a_command() {
    let kinds = [
        "ultimate.send_message",
        "ultimate.escalate",
        "ultimate.is_team_online",
        "ultimate.action",
        "ultimate.unknown",
        "aivo_live.unknown",
        "vcc.chat_closed",
        "bright_pattern.chat_session_typing",
        "bright_pattern.chat_session_not_typing",
        "bright_pattern.chat_session_signaling",
        "bright_pattern.chat_session_form_show",
        "bright_pattern.chat_session_timeout_warning",
        "bright_pattern.unknown",
        "ledger.linked",
        "ledger.command",
        "ledger.command_result",
        "api.handoff_requested",
    ];
    let payload = json!({"party": "visitor", "text": "hi", "state": "queued", "msg": "x", "party_id": "p-1",
        "data": {"action": "text", "value": "x", "source": "agent", "agent": {"name": "A"}}});
    let target = LiveTarget {
        backend: Backend::AivoLive,
        live_id: "room-1".into(),
    };
    let agent_line = line(Party::Agent, Some("A"), "x");
    for state in [HandoffState::Queued, HandoffState::Attended] {
        let c = conversation(state, bot_and_room());
        for kind in kinds {
            assert!(!RELAYED_KINDS.contains(&kind), "{kind}");
            assert!(
                plan(kind, payload.clone(), &c, Some(&agent_line), Some(&target)).is_empty(),
                "{kind} in {state:?}"
            );
        }
        // The relayed kinds do plan commands for the same conversation (so the list is not simply empty).
        assert!(!plan("aivo_live.close", payload.clone(), &c, None, Some(&target)).is_empty());
    }
}

#[test]
fn every_relayed_kind_is_one_a_parser_produces() {
    let produced: Vec<&str> = [
        crate::sources::ultimate::KINDS,
        crate::sources::aivo_live::KINDS,
        crate::sources::bright_pattern::KINDS,
        &[ledger::API_MESSAGE],
    ]
    .concat();
    for kind in RELAYED_KINDS {
        assert!(produced.contains(kind), "{kind} is relayed but no parser produces it");
    }
}
