-- Fact tables shipped by the sink (src/analytics/sink.rs). Runs on ClickHouse 18.16 and current releases.
--
-- Mutable facts (conversations, handoffs, message metadata) are ReplacingMergeTree(version) where
-- version = 2 * conversation.last_seq + 1 for a live row and 2 * last_seq for a tombstone (deleted = 1):
-- re-shipping the same state inserts an identical row that merges away, so nothing is ever counted twice.
-- All three are sorted by the conversation's started_at first (recent conversations share granules, so the
-- sink's lookups and the rollup refreshes read little) and partitioned by its month. started_at is part of a
-- row's identity: when it moves (an earlier event arrived late), the sink writes a tombstone under the old
-- key, so `FINAL ... WHERE deleted = 0` stays exact. Times are DateTime('UTC'), 0 (1970-01-01) = "not happened".

CREATE TABLE IF NOT EXISTS events
(
    seq UInt64,
    event_id String,
    platform String,
    external_id String,
    kind String,
    occurred_at DateTime('UTC'),
    received_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(received_at)
ORDER BY seq;

CREATE TABLE IF NOT EXISTS conversations
(
    conversation_id String,
    started_at DateTime('UTC'),
    version UInt64,
    deleted UInt8,
    updated_at DateTime('UTC'),
    state String,
    disposition String,
    platform_disposition String,
    sla_status String,
    platforms Array(String),
    external_ids Array(String),
    queue String,
    agents Array(String),
    handoff_count UInt32,
    escalated_at DateTime('UTC'),
    queued_at DateTime('UTC'),
    first_attended_at DateTime('UTC'),
    closed_at DateTime('UTC'),
    wait_seconds Nullable(Float64),
    first_response_seconds Nullable(Float64),
    handle_seconds Nullable(Float64),
    bot_seconds Nullable(Float64),
    transfers UInt32,
    visitor_messages UInt32,
    bot_messages UInt32,
    agent_messages UInt32,
    system_messages UInt32,
    close_reason String,
    last_seq UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(started_at)
ORDER BY (started_at, conversation_id);

CREATE TABLE IF NOT EXISTS handoffs
(
    conversation_id String,
    idx UInt32,
    started_at DateTime('UTC'),
    version UInt64,
    deleted UInt8,
    platform String,
    queue String,
    agent String,
    requested_at DateTime('UTC'),
    offered_at DateTime('UTC'),
    answered_at DateTime('UTC'),
    closed_at DateTime('UTC'),
    first_response_at DateTime('UTC'),
    disposition_at DateTime('UTC'),
    answered UInt8,
    answered_within_sla UInt8,
    abandoned UInt8,
    short_abandoned UInt8,
    missed UInt8,
    has_wait UInt8,
    wait_seconds Float64,
    has_first_response UInt8,
    first_response_seconds Float64,
    has_handle UInt8,
    handle_seconds Float64,
    sla_target_seconds UInt32,
    sla_status String,
    disposition String,
    platform_disposition String,
    close_reason String,
    transfers UInt32,
    agent_count UInt32
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(started_at)
ORDER BY (started_at, conversation_id, idx);

CREATE TABLE IF NOT EXISTS messages
(
    conversation_id String,
    seq UInt64,
    ordinal UInt32,
    started_at DateTime('UTC'),
    version UInt64,
    deleted UInt8,
    at DateTime('UTC'),
    party String,
    kind String,
    platform String,
    length UInt32
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(started_at)
ORDER BY (started_at, conversation_id, seq, ordinal);

CREATE VIEW IF NOT EXISTS conversations_current AS
SELECT * FROM conversations FINAL WHERE deleted = 0;

CREATE VIEW IF NOT EXISTS handoffs_current AS
SELECT * FROM handoffs FINAL WHERE deleted = 0;

CREATE VIEW IF NOT EXISTS messages_current AS
SELECT * FROM messages FINAL WHERE deleted = 0;
