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

/// Aivo Live configured (never called here: nothing is sent), Bright Pattern not; team `support`
/// routes to Bright Pattern, everything else to Aivo group 2179.
fn routed_config() -> Config {
    let mut config = Config::default();
    config.aivo_live.base_url = "http://127.0.0.1:9/aivo".into();
    config.aivo_live.bot_token = "token".into();
    config.bright_pattern.base_url = String::new();
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
    config
}

#[test]
fn escalations_resolve_through_routing_to_a_configured_backend() {
    let mut config = routed_config();
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

// ---------------------------------------------------------------------------------------------
// The relay rules as the write path runs them: planned in the transaction that appends their trigger
// ---------------------------------------------------------------------------------------------

mod planned {
    use std::sync::Arc;

    use chrono::{DateTime, Utc};
    use serde_json::{json, Value};

    use crate::config::SlaConfig;
    use crate::ingest::REDRIVE_HEADER;
    use crate::model::{AppendOutcome, Backend, HandoffState, NewEvent, Platform, StoredEvent, StreamKey};
    use crate::outbound::clients::WidgetUpdate;
    use crate::outbound::commands::{command_id, Command, WidgetCommand};
    use crate::outbound::relay::RelayRules;
    use crate::sources::ledger::{self, CommandRecord, QueueAccepted};
    use crate::sources::{self, Delivery};
    use crate::store::Store;

    async fn store() -> Arc<dyn Store> {
        let store = crate::store::open("sqlite::memory:", 1).await.unwrap();
        store.migrate().await.unwrap();
        store
    }

    fn parsed(parse: crate::ingest::ParseFn, body: &Value, headers: &[(&str, &str)]) -> Vec<NewEvent> {
        let delivery = Delivery {
            received_at: sources::truncate_to_micros(Utc::now()),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            idempotency_key: None,
            path_id: None,
        };
        parse(&body.to_string(), body, &delivery).unwrap().events
    }

    fn ultimate(event_type: &str, pcid: &str, extra: Value) -> Vec<NewEvent> {
        let mut data = json!({"eventType": event_type, "platformConversationId": pcid});
        if let (Some(d), Some(e)) = (data.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        parsed(
            sources::ultimate::parse,
            &json!({"botId": "BOT", "channel": "chat", "data": data}),
            &[],
        )
    }

    fn attended(room: &str, agent: &str, at: DateTime<Utc>) -> Vec<NewEvent> {
        let nanos = at.timestamp_nanos_opt().unwrap();
        let body = json!({"name": "attended", "roomId": room, "timestamp": nanos, "botId": 1000,
            "eventTime": at.timestamp(), "data": {"agent": {"name": agent, "groupId": 2179}}});
        parsed(sources::aivo_live::parse, &body, &[])
    }

    fn accepted(conversation: uuid::Uuid, room: &str) -> NewEvent {
        let accepted = QueueAccepted {
            backend: "aivo_live".into(),
            queue: Some("2179".into()),
            live_id: room.into(),
            team: None,
        };
        ledger::queue_accepted(
            conversation,
            &accepted,
            StreamKey::new(Platform::AivoLive, room),
            Utc::now(),
        )
    }

    /// Appends `events` as one delivery through the write path with the relay rules.
    async fn append(store: &Arc<dyn Store>, rules: &RelayRules, events: Vec<NewEvent>) -> Vec<AppendOutcome> {
        store
            .append_batch_planned(&[events], &SlaConfig::default(), rules)
            .await
            .unwrap()
            .remove(0)
    }

    /// The events committed for an outcome: exactly the seqs right after the batch, in the log.
    async fn relayed(store: &Arc<dyn Store>, outcome: &AppendOutcome) -> Vec<StoredEvent> {
        let mut events = Vec::new();
        for seq in &outcome.relays {
            events.extend(store.events_after(seq - 1, 1).await.unwrap());
        }
        events
    }

    fn command(event: &StoredEvent) -> (String, Command) {
        assert_eq!(event.kind, ledger::COMMAND, "{event:?}");
        let record: CommandRecord = serde_json::from_value(event.payload.clone()).unwrap();
        (record.command_id.clone(), Command::from_record(&record).unwrap())
    }

    /// The bot's `escalate` and the API's handoff: the synchronous queue command (or, with no route, the
    /// failure note) commits with the trigger, under an id derived from it; a redelivery plans nothing.
    #[tokio::test]
    async fn a_synchronous_escalation_commits_with_its_trigger_and_a_redelivery_plans_nothing() {
        let store = store().await;
        let rules = RelayRules::new(Arc::new(super::routed_config())).unwrap();
        append(
            &store,
            &rules,
            ultimate("sendMessage", "pc-sync", json!({"type": "text", "text": "Hi"})),
        )
        .await;
        let escalate = ultimate(
            "escalate",
            "pc-sync",
            json!({"escalateTo": "sales", "messageId": "esc-1"}),
        );
        let out = append(&store, &rules, escalate.clone()).await;
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].relays,
            vec![out[0].seq + 1],
            "committed right after its trigger: {out:?}"
        );
        let conversation = out[0].conversation_id.unwrap();
        let committed = relayed(&store, &out[0]).await;
        let (id, queue) = command(&committed[0]);
        assert_eq!(id, command_id(&out[0].event_id.to_string(), "aivo_live_queue"));
        assert_eq!(
            queue,
            Command::Queue {
                backend: Backend::AivoLive,
                team: Some("sales".into()),
                groups: vec![2179],
                visitor_id: "pc-sync".into(),
                attributes: Default::default(),
                notify_widget: None,
                synchronous: true,
            }
        );
        assert_eq!(committed[0].conversation_id, Some(conversation));
        let last = store.last_seq().await.unwrap();
        assert_eq!(last, out[0].seq + 1);

        // The bot sends the same escalate again: a duplicate, nothing planned, nothing appended.
        let again = append(&store, &rules, escalate).await;
        assert!(again[0].duplicate && again[0].relays.is_empty(), "{again:?}");
        assert_eq!(store.last_seq().await.unwrap(), last);

        // The API's handoff to a team whose backend is not configured: the failure note commits with it.
        let handoff = ledger::api_handoff(conversation, Some("support"), Some("k-1"), Utc::now());
        let out = append(&store, &rules, vec![handoff.clone()]).await;
        assert_eq!(out[0].relays, vec![out[0].seq + 1], "{out:?}");
        let note = &relayed(&store, &out[0]).await[0];
        assert_eq!(note.kind, ledger::QUEUE_FAILED);
        assert_eq!(note.payload["backend"], json!("bright_pattern"));
        assert!(
            note.payload["reason"].as_str().unwrap().contains("not configured"),
            "{note:?}"
        );
        let c = store.get_conversation(conversation).await.unwrap().unwrap();
        assert_eq!(c.state, HandoffState::Failed, "the note is folded in the same commit");
        // Retried with the same idempotency key: nothing more.
        let last = store.last_seq().await.unwrap();
        let again = append(&store, &rules, vec![handoff]).await;
        assert!(again[0].duplicate && again[0].relays.is_empty(), "{again:?}");
        assert_eq!(store.last_seq().await.unwrap(), last);

        // A redriven escalate is recorded but queues nothing (nobody waits for it).
        let redriven = parsed(
            sources::ultimate::parse,
            &json!({"botId": "BOT", "data": {"eventType": "escalate", "platformConversationId": "pc-late"}}),
            &[(REDRIVE_HEADER, "quarantine-7")],
        );
        let out = append(&store, &rules, redriven).await;
        assert!(!out[0].duplicate && out[0].relays.is_empty(), "{out:?}");
    }

    /// The race: an agent attends before the queue call returned, in a conversation of its own (no widget
    /// to tell). The accepted call's link merges it in, and the widget's `escalationSuccess` commits with
    /// the link, under the attend's own command id; a redelivery of either relays nothing more.
    #[tokio::test]
    async fn an_attend_the_link_merges_in_is_relayed_in_the_links_transaction() {
        let store = store().await;
        let rules = RelayRules::new(Arc::new(super::routed_config())).unwrap();
        let escalate = append(&store, &rules, ultimate("escalate", "pc-race", json!({}))).await;
        let bot = escalate[0].conversation_id.unwrap();
        let attend = attended("room-race", "Tomas", Utc::now());
        let early = append(&store, &rules, attend.clone()).await;
        assert_ne!(early[0].conversation_id, Some(bot), "a conversation of its own");
        assert!(early[0].relays.is_empty(), "no widget to tell yet: {early:?}");

        let link = append(&store, &rules, vec![accepted(bot, "room-race")]).await;
        assert_eq!(link[0].relays, vec![link[0].seq + 1], "{link:?}");
        let merged = link[0].conversation_id.unwrap();
        let c = store.get_conversation(merged).await.unwrap().unwrap();
        assert_eq!(c.state, HandoffState::Attended);
        let committed = relayed(&store, &link[0]).await;
        let (id, success) = command(&committed[0]);
        assert_eq!(
            id,
            command_id(&early[0].event_id.to_string(), "widget_escalation_success"),
            "the attend's own command id"
        );
        assert_eq!(
            success,
            Command::Widget {
                platform_conversation_id: "pc-race".into(),
                update: WidgetCommand::from_update(&WidgetUpdate::Success { agent: "Tomas".into() }),
            }
        );
        assert_eq!(committed[0].conversation_id, Some(merged));

        // Redeliveries: the attend, the link. Nothing planned, nothing appended.
        let last = store.last_seq().await.unwrap();
        let again = append(&store, &rules, attend).await;
        assert!(again[0].duplicate && again[0].relays.is_empty(), "{again:?}");
        let again = append(&store, &rules, vec![accepted(bot, "room-race")]).await;
        assert!(again[0].duplicate && again[0].relays.is_empty(), "{again:?}");
        assert_eq!(store.last_seq().await.unwrap(), last);
        let successes = store
            .conversation_events(merged)
            .await
            .unwrap()
            .unwrap()
            .iter()
            .filter(|e| e.kind == ledger::COMMAND && e.payload["action"] == json!("widget_escalation_success"))
            .count();
        assert_eq!(successes, 1);
    }

    /// The link and the attend in one batch (the link first): both plan the same `escalationSuccess`, which
    /// is recorded once; a link that leaves the conversation queued plans nothing.
    #[tokio::test]
    async fn a_link_and_an_attend_in_one_batch_tell_the_widget_once() {
        let store = store().await;
        let rules = RelayRules::new(Arc::new(super::routed_config())).unwrap();
        let escalate = append(&store, &rules, ultimate("escalate", "pc-batch", json!({}))).await;
        let bot = escalate[0].conversation_id.unwrap();
        let mut batch = vec![accepted(bot, "room-batch")];
        batch.extend(attended("room-batch", "Ana", Utc::now() + chrono::Duration::seconds(1)));
        let out = store
            .append_batch_planned(
                &[vec![batch[0].clone()], vec![batch[1].clone()]],
                &SlaConfig::default(),
                &rules,
            )
            .await
            .unwrap();
        let relays: Vec<i64> = out.iter().flatten().flat_map(|o| o.relays.clone()).collect();
        assert_eq!(relays.len(), 1, "{out:?}");
        let events = store.conversation_events(bot).await.unwrap().unwrap();
        let successes: Vec<&StoredEvent> = events
            .iter()
            .filter(|e| e.kind == ledger::COMMAND && e.payload["action"] == json!("widget_escalation_success"))
            .collect();
        assert_eq!(successes.len(), 1);
        assert_eq!(successes[0].seq, relays[0]);

        // Queued, not attended: the link alone calls for nothing.
        let escalate = append(&store, &rules, ultimate("escalate", "pc-queued", json!({}))).await;
        let bot = escalate[0].conversation_id.unwrap();
        let link = append(&store, &rules, vec![accepted(bot, "room-queued")]).await;
        assert!(link[0].relays.is_empty(), "{link:?}");
        assert_eq!(
            store.get_conversation(bot).await.unwrap().unwrap().state,
            HandoffState::Queued
        );
    }
}
