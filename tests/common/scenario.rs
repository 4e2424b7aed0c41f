//! A deterministic scenario made of what the service really receives: platform webhook bodies (Ultimate
//! converse, Aivo Live, Bright Pattern, VCC Live, in their documented shapes) and the `ledger.queue_accepted`
//! / `ledger.queue_failed` events the service records when a live backend accepts or refuses a hand-over.
//! The analytics tests, the dashboard test and the seeding tool load it through the real parse -> writer ->
//! store path, so both report sources are computed from real projections.
//!
//! Coverage: bot-only conversations (containment); hand-overs to Aivo Live (queues `2179`, with its own SLA
//! target in [`sla`], and `2185`) and Bright Pattern (`support`) after an Ultimate `escalate`; VCC Live chats
//! (queues `Chat`, `Billing`); answered within and after the target, transfers, short and long abandons
//! (Ultimate `widgetEndSession` while queued, Bright Pattern client `chat_session_end`, VCC `lost`), missed
//! (Aivo `close` "queue clean process", Bright Pattern inactivity timeout, VCC `missed`), failed hand-overs,
//! chats still waiting or still attended, second hand-overs, and links delivered after the live room's first
//! events (a merge).
//!
//! Time: Ultimate sends no time, so its events are stamped when they arrive. Every step has an `arrival`;
//! the loaders here stamp Ultimate deliveries with it (what the webhook handler does with its clock), and every
//! instant a report credits (queued, attended, closed, first response) comes from a ledger event or a live
//! platform's own timestamp, never from an Ultimate arrival, except the Ultimate `widgetEndSession` abandons,
//! whose close is the arrival by definition.
//!
//! Test support: included by the ClickHouse and dashboard tests and by `examples/seed_reports.rs` with
//! `#[path]`, so the library carries none of it.
#![allow(dead_code)]

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, FixedOffset, Offset, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use uuid::Uuid;

use handoff_ledger::config::SlaConfig;
use handoff_ledger::model::{event_id_for, NewEvent, Platform, StreamKey};
use handoff_ledger::sources::{self, ledger, Delivery, PayloadError};
use handoff_ledger::store::{Store, StoreError};
use handoff_ledger::writer::{WriteError, Writer};

/// `botId` of the scenario's Ultimate bot.
pub const BOT_ID: &str = "scenario-bot";

/// Aivo Live groups (the first one has its own SLA target in [`sla`]).
pub const AIVO_QUEUES: [&str; 2] = ["2179", "2185"];

/// The Bright Pattern queue.
pub const BP_QUEUE: &str = "support";

/// VCC Live queues.
pub const VCC_QUEUES: [&str; 2] = ["Chat", "Billing"];

/// Aivo Live agents.
pub const AIVO_AGENTS: [&str; 3] = ["Tomas", "Ana", "Lucia"];

/// Bright Pattern agents (display names).
pub const BP_AGENTS: [&str; 2] = ["Marek", "Pavla"];

/// VCC Live agents.
pub const VCC_AGENTS: [&str; 2] = ["Jane Smith", "John Russell"];

/// The SLA settings the scenario is written for: 60 s by default, 30 s for Aivo group 2179.
pub fn sla() -> SlaConfig {
    let mut sla = SlaConfig::default();
    sla.queues.insert(AIVO_QUEUES[0].to_string(), 30);
    sla
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioOptions {
    /// RNG seed: the same options give the same steps.
    pub seed: u64,
    /// Number of conversations.
    pub conversations: u64,
    /// Conversations start within `[start, start + span)`.
    pub start: DateTime<Utc>,
    /// See `start`.
    pub span: Duration,
    /// Share of linked live chats whose link is delivered after the chat's first live events.
    pub late_links: f64,
    /// Most bot messages before an escalation (at least 1).
    pub max_bot_messages: u32,
}

impl ScenarioOptions {
    /// Options with 15 % late links and up to 3 bot messages.
    pub fn new(seed: u64, conversations: u64, start: DateTime<Utc>, span: Duration) -> ScenarioOptions {
        ScenarioOptions {
            seed,
            conversations,
            start,
            span,
            late_links: 0.15,
            max_bot_messages: 3,
        }
    }
}

/// What a step delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// A platform webhook: `body` POSTed to `path`.
    Webhook {
        /// The platform.
        platform: Platform,
        /// Path of the service's webhook endpoint.
        path: String,
        /// Body as sent.
        body: String,
        /// `Idempotency-Key` header (Ultimate events without `messageId`), so re-loads are duplicates.
        idempotency_key: Option<String>,
        /// Bright Pattern chat id (a path parameter).
        chat_id: Option<String>,
    },
    /// An event the service records itself (queue accepted / failed).
    Recorded(NewEvent),
}

/// One delivery of the scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// When it reaches the service.
    pub arrival: DateTime<Utc>,
    /// Number of the conversation it belongs to.
    pub conversation: u64,
    /// What it is.
    pub kind: StepKind,
}

impl Step {
    /// True for deliveries whose only time is their arrival (Ultimate).
    pub fn stamped_at_arrival(&self) -> bool {
        matches!(
            self.kind,
            StepKind::Webhook {
                platform: Platform::Ultimate,
                ..
            }
        )
    }

    /// The events the service makes of this delivery: the platform's real parser, with `arrival` as the
    /// received time.
    pub fn events(&self) -> Result<Vec<NewEvent>, PayloadError> {
        match &self.kind {
            StepKind::Recorded(event) => Ok(vec![event.clone()]),
            StepKind::Webhook {
                platform,
                body,
                idempotency_key,
                chat_id,
                ..
            } => {
                let value = sources::parse_json(body.as_bytes())?;
                let mut headers = BTreeMap::new();
                headers.insert("content-type".to_string(), "application/json".to_string());
                if let Some(key) = idempotency_key {
                    headers.insert("idempotency-key".to_string(), key.clone());
                }
                let d = Delivery {
                    received_at: sources::truncate_to_micros(self.arrival),
                    headers,
                    idempotency_key: idempotency_key.as_deref(),
                    path_id: chat_id.as_deref(),
                };
                let parsed = match platform {
                    Platform::Ultimate => sources::ultimate::parse(body, &value, &d),
                    Platform::AivoLive => sources::aivo_live::parse(body, &value, &d),
                    Platform::BrightPattern => sources::bright_pattern::parse(body, &value, &d),
                    Platform::Vcc => sources::vcc::parse(body, &value, &d),
                    Platform::Api | Platform::Ledger => {
                        return Err(PayloadError::field("", "not a webhook platform"));
                    }
                }?;
                Ok(parsed.events)
            }
        }
    }
}

/// The outcomes the scenario was written to produce, for checking reports against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// Conversations (bot and VCC).
    pub conversations: u64,
    /// Ultimate conversations that never escalated.
    pub bot_only: u64,
    /// Ultimate conversations (escalated or not).
    pub bot_conversations: u64,
    /// Hand-overs, failed ones included.
    pub handoffs: u64,
    /// Queued hand-overs.
    pub offered: u64,
    /// Attended.
    pub answered: u64,
    /// Attended within the queue's target.
    pub answered_within_sla: u64,
    /// The visitor left before an agent attended.
    pub abandoned: u64,
    /// Abandoned within `short_abandon_seconds`.
    pub short_abandoned: u64,
    /// Closed by the platform before an agent attended.
    pub missed: u64,
    /// Closed after an agent attended.
    pub completed: u64,
    /// The hand-over failed.
    pub failed: u64,
    /// Still waiting or still attended.
    pub open: u64,
    /// Transfers.
    pub transfers: u64,
    /// Links delivered after the live chat's first events.
    pub late_links: u64,
    /// Offered per live backend (`aivo_live`, `bright_pattern`, `vcc`).
    pub offered_by_platform: BTreeMap<String, u64>,
}

impl Expected {
    /// Adds another conversation's expectations.
    pub fn add(&mut self, other: &Expected) {
        self.conversations += other.conversations;
        self.bot_only += other.bot_only;
        self.bot_conversations += other.bot_conversations;
        self.handoffs += other.handoffs;
        self.offered += other.offered;
        self.answered += other.answered;
        self.answered_within_sla += other.answered_within_sla;
        self.abandoned += other.abandoned;
        self.short_abandoned += other.short_abandoned;
        self.missed += other.missed;
        self.completed += other.completed;
        self.failed += other.failed;
        self.open += other.open;
        self.transfers += other.transfers;
        self.late_links += other.late_links;
        for (k, v) in &other.offered_by_platform {
            *self.offered_by_platform.entry(k.clone()).or_default() += v;
        }
    }
}

/// One conversation's deliveries and expectations.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationPlan {
    /// Deliveries in arrival order.
    pub steps: Vec<Step>,
    /// What they should produce.
    pub expected: Expected,
}

/// A whole scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Every delivery, in arrival order.
    pub steps: Vec<Step>,
    /// What they should produce.
    pub expected: Expected,
}

/// Generates the scenario of `opts` (deterministic).
pub fn generate(opts: &ScenarioOptions, sla: &SlaConfig) -> Scenario {
    let mut steps = Vec::new();
    let mut expected = Expected::default();
    for n in 0..opts.conversations {
        let plan = conversation(opts, sla, n);
        steps.extend(plan.steps);
        expected.add(&plan.expected);
    }
    // Stable: equal arrivals keep the conversation's own order.
    steps.sort_by_key(|s| s.arrival);
    Scenario { steps, expected }
}

/// How a hand-over to a live queue ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// An agent attends after `wait`; closed when `closes`, maybe transferred.
    Answered {
        wait: Duration,
        closes: bool,
        transfer: bool,
    },
    /// The visitor leaves after `after`.
    Abandoned { after: Duration },
    /// The platform closes it after `after`.
    Missed { after: Duration },
    /// Nothing happens after the queue.
    Waiting,
}

fn ms(rng: &mut StdRng, lo_secs: f64, hi_secs: f64) -> Duration {
    let lo = (lo_secs * 1000.0) as i64;
    let hi = (hi_secs * 1000.0) as i64;
    Duration::milliseconds(rng.gen_range(lo..=hi.max(lo)))
}

fn whole_secs(rng: &mut StdRng, lo: i64, hi: i64) -> Duration {
    Duration::seconds(rng.gen_range(lo..=hi.max(lo)))
}

fn secs(d: Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros() * 1000
}

fn outcome(rng: &mut StdRng, target: u64) -> Outcome {
    let roll = rng.gen_range(0..100);
    let target = target as f64;
    if roll < 60 {
        let wait = if rng.gen_bool(0.6) {
            ms(rng, 1.0, target * 0.95)
        } else {
            ms(rng, target + 1.0, 300.0)
        };
        Outcome::Answered {
            wait,
            closes: rng.gen_bool(0.88),
            transfer: rng.gen_bool(0.12),
        }
    } else if roll < 80 {
        let after = if rng.gen_bool(0.4) {
            ms(rng, 1.0, 19.5)
        } else {
            ms(rng, 21.0, 400.0)
        };
        Outcome::Abandoned { after }
    } else if roll < 92 {
        Outcome::Missed {
            after: ms(rng, 300.0, 3600.0),
        }
    } else {
        Outcome::Waiting
    }
}

struct Gen<'a> {
    rng: StdRng,
    seed: u64,
    n: u64,
    sla: &'a SlaConfig,
    steps: Vec<Step>,
    expected: Expected,
    pcid: String,
    counter: u32,
}

impl Gen<'_> {
    fn push(&mut self, arrival: DateTime<Utc>, kind: StepKind) {
        self.steps.push(Step {
            arrival: sources::truncate_to_micros(arrival),
            conversation: self.n,
            kind,
        });
    }

    fn conversation_id(&self) -> Uuid {
        StreamKey::new(Platform::Ultimate, self.pcid.clone()).conversation_id()
    }

    fn next_key(&mut self) -> String {
        self.counter += 1;
        format!("s{}-c{}-u{}", self.seed, self.n, self.counter)
    }

    fn ultimate(&mut self, at: DateTime<Utc>, mut data: Value) {
        if let Some(d) = data.as_object_mut() {
            d.insert("platformConversationId".into(), json!(self.pcid));
        }
        let key = self.next_key();
        let body = json!({"botId": BOT_ID, "channel": "chat", "data": data});
        self.push(
            at,
            StepKind::Webhook {
                platform: Platform::Ultimate,
                path: "/webhooks/ultimate/converse".into(),
                body: body.to_string(),
                idempotency_key: Some(key),
                chat_id: None,
            },
        );
    }

    fn bot_message(&mut self, at: DateTime<Utc>, text: &str) {
        let id = self.next_key();
        self.ultimate(
            at,
            json!({"eventType": "sendMessage", "conversationId": format!("uc-{}", self.pcid), "messageId": id,
                   "type": "text", "replyId": format!("r-{id}"), "buttons": [], "text": text, "carouselCards": [],
                   "predictedIntents": [{"value": "1234", "name": "balance", "confidence": 0.93}]}),
        );
    }

    fn aivo(&mut self, room: &str, at: DateTime<Utc>, name: &str, data: Value) {
        let body = json!({"name": name, "roomId": room, "timestamp": nanos(at), "botId": 1000,
                          "eventTime": at.timestamp(), "data": data});
        self.push(
            at,
            StepKind::Webhook {
                platform: Platform::AivoLive,
                path: "/webhooks/aivo-live".into(),
                body: body.to_string(),
                idempotency_key: None,
                chat_id: None,
            },
        );
    }

    fn bright_pattern(&mut self, chat: &str, at: DateTime<Utc>, mut event: Value) {
        if let Some(e) = event.as_object_mut() {
            e.insert("timestamp".into(), json!(at.timestamp_millis().to_string()));
        }
        let body = json!({"events": [event]});
        self.push(
            at,
            StepKind::Webhook {
                platform: Platform::BrightPattern,
                path: format!("/webhooks/bright-pattern/{chat}"),
                body: body.to_string(),
                idempotency_key: None,
                chat_id: Some(chat.to_string()),
            },
        );
    }

    fn recorded(&mut self, arrival: DateTime<Utc>, event: NewEvent) {
        self.push(arrival, StepKind::Recorded(event));
    }

    fn count_outcome(&mut self, backend: &str, queue: &str, outcome: Outcome) {
        let e = &mut self.expected;
        e.handoffs += 1;
        e.offered += 1;
        *e.offered_by_platform.entry(backend.to_string()).or_default() += 1;
        match outcome {
            Outcome::Answered { wait, closes, transfer } => {
                e.answered += 1;
                e.answered_within_sla += u64::from(secs(wait) <= self.sla.target_for(Some(queue)) as f64);
                e.transfers += u64::from(transfer);
                if closes {
                    e.completed += 1;
                } else {
                    e.open += 1;
                }
            }
            Outcome::Abandoned { after } => {
                e.abandoned += 1;
                e.short_abandoned += u64::from(secs(after) < self.sla.short_abandon_seconds as f64);
            }
            Outcome::Missed { .. } => e.missed += 1,
            Outcome::Waiting => e.open += 1,
        }
    }

    /// The Ultimate side of a hand-over: the bot asks for a human; returns when it did.
    fn escalate(&mut self, at: DateTime<Utc>, team: &str) {
        self.ultimate(at, json!({"eventType": "escalate", "escalateTo": team}));
    }

    /// A hand-over to Aivo Live queued at `queued`; returns when it ended (or the last thing that happened).
    fn aivo_handoff(&mut self, idx: u32, queued: DateTime<Utc>, outcome: Outcome, late_link: bool) -> DateTime<Utc> {
        let room = format!("room-s{}-c{}-h{idx}", self.seed, self.n);
        let queue = AIVO_QUEUES[self.rng.gen_range(0..AIVO_QUEUES.len())];
        let other_queue = AIVO_QUEUES.iter().copied().find(|q| *q != queue).unwrap_or(queue);
        self.count_outcome("aivo_live", queue, outcome);
        let link = ledger::queue_accepted(
            self.conversation_id(),
            &ledger::QueueAccepted {
                backend: "aivo_live".into(),
                queue: Some(queue.to_string()),
                live_id: room.clone(),
                team: Some("sales".into()),
            },
            StreamKey::new(Platform::AivoLive, room.clone()),
            queued,
        );
        let first_step = self.steps.len();
        let mut last = queued;
        let mut has_live_events = false;
        match outcome {
            Outcome::Answered { wait, closes, transfer } => {
                has_live_events = true;
                let agent = AIVO_AGENTS[self.rng.gen_range(0..AIVO_AGENTS.len())];
                let attended = queued + wait;
                let who = json!({"name": agent, "nickname": format!("{agent} NICK"), "groupId": queue.parse::<i64>().unwrap_or(0)});
                self.aivo(&room, attended, "attended", json!({"agent": who}));
                last = attended;
                if self.rng.gen_bool(0.3) {
                    last = attended + Duration::milliseconds(300);
                    self.aivo(
                        &room,
                        last,
                        "messageToClient",
                        json!({"action": "text", "value": "Welcome, an agent will be with you", "source": "trigger", "agent": {}}),
                    );
                }
                if self.rng.gen_bool(0.9) {
                    last = attended + ms(&mut self.rng, 1.0, 90.0);
                    self.aivo(
                        &room,
                        last,
                        "messageToClient",
                        json!({"action": "text", "value": format!("Hi, {agent} here"), "source": "agent", "agent": who}),
                    );
                }
                if self.rng.gen_bool(0.5) {
                    last += ms(&mut self.rng, 5.0, 30.0);
                    self.ultimate(
                        last,
                        json!({"eventType": "widgetMessage", "conversationId": format!("uc-{}", self.pcid), "type": "text",
                               "buttons": [], "text": "I need my balance", "carouselCards": [], "predictedIntents": []}),
                    );
                }
                if transfer {
                    last += ms(&mut self.rng, 20.0, 120.0);
                    self.aivo(
                        &room,
                        last,
                        "transfer",
                        json!({"value": "Transfer to group", "originGroup": queue.parse::<i64>().unwrap_or(0),
                               "target": other_queue.parse::<i64>().unwrap_or(0), "agent": {}}),
                    );
                    let second = AIVO_AGENTS[self.rng.gen_range(0..AIVO_AGENTS.len())];
                    last += ms(&mut self.rng, 5.0, 90.0);
                    self.aivo(
                        &room,
                        last,
                        "attended",
                        json!({"agent": {"name": second, "nickname": second, "groupId": other_queue.parse::<i64>().unwrap_or(0)}}),
                    );
                }
                if closes {
                    last += ms(&mut self.rng, 30.0, 1200.0);
                    self.aivo(
                        &room,
                        last,
                        "close",
                        json!({"hash": format!("h{}_{}", self.n, idx), "reason": "agent", "agent": {}}),
                    );
                }
            }
            Outcome::Abandoned { after } => {
                last = queued + after;
                self.ultimate(last, json!({"eventType": "widgetEndSession"}));
            }
            Outcome::Missed { after } => {
                has_live_events = true;
                last = queued + after;
                self.aivo(
                    &room,
                    last,
                    "close",
                    json!({"hash": format!("h{}_{}", self.n, idx), "reason": "queue clean process", "agent": {}}),
                );
            }
            Outcome::Waiting => {}
        }
        self.link(link, queued, first_step, late_link && has_live_events);
        last
    }

    /// Records the link: at `queued`, or after the live chat's first events (a merge).
    fn link(&mut self, link: NewEvent, queued: DateTime<Utc>, first_step: usize, late: bool) {
        if late {
            let after = self.steps[first_step..]
                .iter()
                .filter(|s| !s.stamped_at_arrival())
                .map(|s| s.arrival)
                .max()
                .unwrap_or(queued);
            let arrival = after + ms(&mut self.rng, 1.0, 30.0);
            self.expected.late_links += 1;
            self.recorded(arrival, link);
        } else {
            self.recorded(queued, link);
        }
    }

    /// A hand-over to Bright Pattern queued at `queued`.
    fn bp_handoff(&mut self, idx: u32, queued: DateTime<Utc>, outcome: Outcome, late_link: bool) -> DateTime<Utc> {
        let chat = format!("bp-s{}-c{}-h{idx}", self.seed, self.n);
        // Bright Pattern hands a chat to another agent without a transfer event: none here.
        let outcome = match outcome {
            Outcome::Answered { wait, closes, .. } => Outcome::Answered {
                wait,
                closes,
                transfer: false,
            },
            other => other,
        };
        self.count_outcome("bright_pattern", BP_QUEUE, outcome);
        let link = ledger::queue_accepted(
            self.conversation_id(),
            &ledger::QueueAccepted {
                backend: "bright_pattern".into(),
                queue: Some(BP_QUEUE.to_string()),
                live_id: chat.clone(),
                team: Some("support".into()),
            },
            StreamKey::new(Platform::BrightPattern, chat.clone()),
            queued,
        );
        let first_step = self.steps.len();
        let status_at = queued + Duration::milliseconds(100);
        self.bright_pattern(
            &chat,
            status_at,
            json!({"event": "chat_session_status", "state": "queued", "ewt": "30"}),
        );
        let mut last = status_at;
        match outcome {
            Outcome::Answered { wait, closes, .. } => {
                let agent = BP_AGENTS[self.rng.gen_range(0..BP_AGENTS.len())];
                let party = format!("p-{}-{idx}", self.n);
                let attended = queued + wait;
                self.bright_pattern(
                    &chat,
                    attended,
                    json!({"event": "chat_session_party_joined", "party_id": party, "first_name": agent,
                           "last_name": "Agent", "display_name": agent, "type": "external"}),
                );
                last = attended;
                if self.rng.gen_bool(0.9) {
                    last = attended + ms(&mut self.rng, 1.0, 90.0);
                    self.bright_pattern(
                        &chat,
                        last,
                        json!({"event": "chat_session_message", "party_id": party, "msg_id": format!("m-{chat}-1"),
                               "msg": format!("Hello, {agent} speaking")}),
                    );
                }
                if closes {
                    last += ms(&mut self.rng, 30.0, 1200.0);
                    self.bright_pattern(&chat, last, json!({"event": "chat_session_ended"}));
                }
            }
            Outcome::Abandoned { after } => {
                last = queued + after;
                if self.rng.gen_bool(0.5) {
                    self.bright_pattern(&chat, last, json!({"event": "chat_session_end"}));
                } else {
                    self.ultimate(last, json!({"eventType": "widgetEndSession"}));
                }
            }
            Outcome::Missed { after } => {
                last = queued + after;
                self.bright_pattern(
                    &chat,
                    last,
                    json!({"event": "chat_session_inactvity_timeout", "msg": "The chat was closed for inactivity"}),
                );
            }
            Outcome::Waiting => {}
        }
        self.link(link, queued, first_step, late_link);
        last
    }

    /// A VCC Live chat: one webhook when it is closed, with the whole transcript.
    fn vcc_chat(&mut self, started: DateTime<Utc>) {
        // VCC dates have whole seconds.
        let started = DateTime::<Utc>::from_timestamp(started.timestamp(), 0).unwrap_or(started);
        let queue = VCC_QUEUES[self.rng.gen_range(0..VCC_QUEUES.len())];
        let other_queue = VCC_QUEUES.iter().copied().find(|q| *q != queue).unwrap_or(queue);
        let target = self.sla.target_for(Some(queue));
        let outcome = match outcome(&mut self.rng, target) {
            // A VCC chat is sent when closed: no chat still waiting or attended.
            Outcome::Waiting => Outcome::Missed {
                after: whole_secs(&mut self.rng, 300, 3600),
            },
            Outcome::Answered { wait, transfer, .. } => Outcome::Answered {
                wait: Duration::seconds(wait.num_seconds().max(1)),
                closes: true,
                transfer,
            },
            Outcome::Abandoned { after } => Outcome::Abandoned {
                after: Duration::seconds(after.num_seconds().max(1)),
            },
            Outcome::Missed { after } => Outcome::Missed {
                after: Duration::seconds(after.num_seconds()),
            },
        };
        self.count_outcome("vcc", queue, outcome);
        let offset = FixedOffset::east_opt(3600).unwrap_or_else(|| Utc.fix());
        let line = |from: &str, at: DateTime<Utc>, text: &str| json!({"from": from, "date": at.with_timezone(&offset).to_rfc3339_opts(SecondsFormat::Secs, false), "message": text});
        let mut lines = vec![line("Visitor", started, "hi")];
        let first_agent = VCC_AGENTS[self.rng.gen_range(0..VCC_AGENTS.len())];
        let mut last_agent = first_agent;
        let mut last_queue = queue;
        let (disposition, sla_status, mut last) = match outcome {
            Outcome::Answered { wait, transfer, .. } => {
                let attended = started + wait;
                lines.push(line(first_agent, attended, "hello, how can I help?"));
                let mut last = attended + whole_secs(&mut self.rng, 5, 60);
                lines.push(line("Visitor", last, "Could you help me?"));
                if transfer {
                    last_agent = VCC_AGENTS
                        .iter()
                        .copied()
                        .find(|a| *a != first_agent)
                        .unwrap_or(first_agent);
                    last_queue = other_queue;
                    last += whole_secs(&mut self.rng, 20, 120);
                    lines.push(line(last_agent, last, "I took over your chat"));
                }
                last += whole_secs(&mut self.rng, 30, 1200);
                lines.push(line(last_agent, last, "Yes, done. Bye"));
                let sla_status = if secs(wait) <= target as f64 {
                    "answeredBeforeSLA"
                } else {
                    "answeredAfterSLA"
                };
                ("completed", sla_status, last)
            }
            Outcome::Abandoned { after } => {
                lines.push(line("Visitor", started + after, "anyone?"));
                ("lost", "notAnswered", started + after)
            }
            Outcome::Missed { after } => {
                lines.push(line("Visitor", started + after, "hello?"));
                ("missed", "notAnswered", started + after)
            }
            Outcome::Waiting => ("missed", "notAnswered", started),
        };
        last += whole_secs(&mut self.rng, 1, 5);
        let body = json!({
            "chatId": self.n as i64 + 1,
            "projectId": 100 + (self.seed % 1000) as i64,
            "firstAgentName": if disposition == "completed" { first_agent } else { "" },
            "lastAgentName": if disposition == "completed" { last_agent } else { "" },
            "firstQueueName": queue,
            "lastQueueName": last_queue,
            "ticketId": 35,
            "contactId": 1220,
            "entityId": 1814,
            "disposition": disposition,
            "platform": "webchat",
            "conversation": lines,
            "ipAddress": "10.80.2.13",
            "isSpam": 0,
            "slaStatus": sla_status,
            "clientData": {"name": "John Russell", "phone1": "123456789", "customerid": format!("c{}", self.n)}
        });
        self.push(
            last,
            StepKind::Webhook {
                platform: Platform::Vcc,
                path: "/webhooks/vcc/chat".into(),
                body: body.to_string(),
                idempotency_key: None,
                chat_id: None,
            },
        );
    }
}

/// Conversation number `n` of a scenario: deterministic for `(opts.seed, n)`.
pub fn conversation(opts: &ScenarioOptions, sla: &SlaConfig, n: u64) -> ConversationPlan {
    let mut rng = StdRng::seed_from_u64(opts.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n);
    let started = opts.start + Duration::milliseconds(rng.gen_range(0..opts.span.num_milliseconds().max(1)));
    let mut g = Gen {
        pcid: format!("pc-s{}-c{n}", opts.seed),
        rng,
        seed: opts.seed,
        n,
        sla,
        steps: Vec::new(),
        expected: Expected {
            conversations: 1,
            ..Expected::default()
        },
        counter: 0,
    };
    let kind = g.rng.gen_range(0..100);
    if kind < 15 {
        g.vcc_chat(started);
    } else {
        g.expected.bot_conversations = 1;
        let mut at = started;
        let messages = g.rng.gen_range(1..=opts.max_bot_messages.max(1));
        for i in 0..messages {
            if i > 0 {
                at += ms(&mut g.rng, 2.0, 20.0);
            }
            g.bot_message(
                at,
                if i == 0 {
                    "Hi! How can I help?"
                } else {
                    "Let me check that"
                },
            );
        }
        if kind < 35 {
            g.expected.bot_only = 1;
        } else {
            let mut idx = 0;
            loop {
                at += ms(&mut g.rng, 2.0, 30.0);
                let to_aivo = g.rng.gen_bool(0.6);
                g.escalate(at, if to_aivo { "sales" } else { "support" });
                if g.rng.gen_bool(0.05) {
                    // The live backend refused the queue call: the outbox records it.
                    let failed_at = at + ms(&mut g.rng, 0.5, 5.0);
                    let backend = if to_aivo { "aivo_live" } else { "bright_pattern" };
                    let mut event =
                        ledger::queue_failed(g.conversation_id(), backend, "queue call refused (503)", failed_at);
                    // Keyed like the outbox's command ids, so a re-load is a duplicate.
                    event.event_id = event_id_for(Platform::Ledger, Some(&format!("queue_failed:{}:{idx}", g.pcid)));
                    g.recorded(failed_at, event);
                    g.expected.handoffs += 1;
                    g.expected.failed += 1;
                    break;
                }
                let queued = at + ms(&mut g.rng, 0.2, 3.0);
                let late = g.rng.gen_bool(opts.late_links.clamp(0.0, 1.0));
                let target = sla.target_for(Some(if to_aivo { AIVO_QUEUES[0] } else { BP_QUEUE }));
                let out = outcome(&mut g.rng, target);
                let ended = if to_aivo {
                    g.aivo_handoff(idx, queued, out, late)
                } else {
                    g.bp_handoff(idx, queued, out, late)
                };
                let closed = match out {
                    Outcome::Answered { closes, .. } => closes,
                    Outcome::Waiting => false,
                    _ => true,
                };
                idx += 1;
                if idx >= 2 || !closed || !g.rng.gen_bool(0.1) {
                    break;
                }
                at = ended + ms(&mut g.rng, 60.0, 600.0);
                g.bot_message(at, "Anything else?");
            }
        }
    }
    g.steps.sort_by_key(|s| s.arrival);
    ConversationPlan {
        steps: g.steps,
        expected: g.expected,
    }
}

/// Loading failures.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// A body the parser refused (a bug in the scenario).
    #[error("payload refused: {0}")]
    Payload(#[from] PayloadError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The writer failed.
    #[error("writer: {0}")]
    Write(#[from] WriteError),
    /// The service answered a webhook with an error.
    #[error("{path} answered {status}: {body}")]
    Rejected {
        /// Path posted to.
        path: String,
        /// HTTP status.
        status: u16,
        /// Answer body.
        body: String,
    },
    /// The request did not complete.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
}

/// Appends `steps` in order with `store.append_batch`, `batch` deliveries (one group each) per transaction.
/// Returns the number of events appended (duplicates included).
pub async fn append_steps(
    store: &dyn Store,
    steps: &[Step],
    sla: &SlaConfig,
    batch: usize,
) -> Result<u64, ScenarioError> {
    let mut appended = 0u64;
    for chunk in steps.chunks(batch.max(1)) {
        let groups = chunk.iter().map(Step::events).collect::<Result<Vec<_>, _>>()?;
        appended += groups.iter().map(|g| g.len() as u64).sum::<u64>();
        store.append_batch(&groups, sla).await?;
    }
    Ok(appended)
}

/// Delivers `steps` in order to a running service at `base_url`: every webhook whose body carries its own
/// time is POSTed to its endpoint (the answer must be 2xx); Ultimate deliveries, whose only time is their
/// arrival, are parsed with the scenario's arrival and appended with the service's `writer`, as are the
/// ledger events (the outbox records those after its queue calls, which the test does not make).
pub async fn deliver(
    client: &reqwest::Client,
    base_url: &str,
    writer: &Writer,
    steps: &[Step],
) -> Result<DeliveryCounts, ScenarioError> {
    let mut counts = DeliveryCounts::default();
    for step in steps {
        match &step.kind {
            StepKind::Webhook { path, body, .. } if !step.stamped_at_arrival() => {
                let res = client
                    .post(format!("{base_url}{path}"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                let status = res.status().as_u16();
                if !res.status().is_success() {
                    let body = res.text().await.unwrap_or_default();
                    return Err(ScenarioError::Rejected {
                        path: path.clone(),
                        status,
                        body,
                    });
                }
                counts.posted += 1;
            }
            _ => {
                writer.append(step.events()?).await?;
                counts.appended += 1;
            }
        }
    }
    Ok(counts)
}

/// How [`deliver`] delivered the steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    /// Webhooks POSTed over HTTP.
    pub posted: u64,
    /// Deliveries appended with the writer.
    pub appended: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(seed: u64, n: u64) -> ScenarioOptions {
        let start = DateTime::parse_from_rfc3339("2024-05-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        ScenarioOptions::new(seed, n, start, Duration::days(2))
    }

    #[test]
    fn scenarios_are_deterministic_and_cover_every_outcome() {
        let sla = sla();
        let a = generate(&opts(7, 600), &sla);
        let b = generate(&opts(7, 600), &sla);
        assert_eq!(a, b);
        let e = &a.expected;
        assert_eq!(e.conversations, 600);
        for (what, n) in [
            ("bot only", e.bot_only),
            ("answered", e.answered),
            ("within", e.answered_within_sla),
            ("abandoned", e.abandoned),
            ("short", e.short_abandoned),
            ("missed", e.missed),
            ("completed", e.completed),
            ("failed", e.failed),
            ("open", e.open),
            ("transfers", e.transfers),
            ("late links", e.late_links),
        ] {
            assert!(n > 0, "{what}");
        }
        assert!(e.answered > e.answered_within_sla, "some answers breach the target");
        assert!(e.abandoned > e.short_abandoned, "some abandons are long");
        assert_eq!(e.offered_by_platform.len(), 3, "{:?}", e.offered_by_platform);
        assert_eq!(e.offered_by_platform.values().sum::<u64>(), e.offered);
        assert_eq!(
            e.offered,
            e.answered + e.abandoned + e.missed + (e.open - (e.answered - e.completed))
        );
        assert!(a.steps.windows(2).all(|w| w[0].arrival <= w[1].arrival));
        assert!(e.handoffs > e.offered, "failed hand-overs are never offered");
        assert!(a
            .steps
            .iter()
            .any(|s| matches!(&s.kind, StepKind::Webhook { body, .. } if body.contains("widgetEndSession"))));
        assert!(a
            .steps
            .iter()
            .any(|s| matches!(&s.kind, StepKind::Webhook { body, .. } if body.contains("\"chat_session_end\""))));
        assert!(a
            .steps
            .iter()
            .any(|s| matches!(&s.kind, StepKind::Webhook { body, .. } if body.contains("queue clean process"))));
        assert!(a
            .steps
            .iter()
            .any(|s| matches!(&s.kind, StepKind::Webhook { body, .. } if body.contains("\"lost\""))));
    }

    #[test]
    fn every_step_parses_with_the_real_parsers_and_keeps_platform_times() {
        let sla = sla();
        let s = generate(&opts(3, 200), &sla);
        let mut kinds = std::collections::BTreeSet::new();
        for step in &s.steps {
            let events = step.events().unwrap_or_else(|e| panic!("{step:?}: {e}"));
            assert!(!events.is_empty());
            for e in events {
                kinds.insert(e.kind.clone());
                assert_ne!(e.kind.rsplit('.').next(), Some("unknown"), "{step:?}");
                if step.stamped_at_arrival() {
                    assert_eq!(e.occurred_at, step.arrival);
                } else if let StepKind::Webhook { platform, .. } = &step.kind {
                    // The live platforms' own times: VCC sends the chat after its last line.
                    if *platform == Platform::Vcc {
                        assert!(e.occurred_at < step.arrival);
                    } else {
                        assert_eq!(e.occurred_at, step.arrival, "{step:?}");
                    }
                }
            }
        }
        for kind in [
            "ultimate.send_message",
            "ultimate.escalate",
            "ultimate.widget_message",
            "ultimate.widget_end_session",
            "aivo_live.attended",
            "aivo_live.message_to_client",
            "aivo_live.transfer",
            "aivo_live.close",
            "bright_pattern.chat_session_status",
            "bright_pattern.chat_session_party_joined",
            "bright_pattern.chat_session_message",
            "bright_pattern.chat_session_ended",
            "bright_pattern.chat_session_end",
            "bright_pattern.chat_session_inactivity_timeout",
            "vcc.chat_closed",
            "ledger.queue_accepted",
            "ledger.queue_failed",
        ] {
            assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
        }
    }
}
