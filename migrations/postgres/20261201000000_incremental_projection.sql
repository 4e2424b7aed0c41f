-- Incremental projection. Each conversation keeps its fold state (with its watermark: the last fact
-- applied) so that an event sorting after it is applied without re-reading the conversation; the
-- transcript lines and the handoffs are rows of their own, written as they are made; every list
-- filter has an index to start from.

-- '' = not built by this version: `migrate` rebuilds such conversations from the log.
ALTER TABLE conversations ADD COLUMN fold TEXT NOT NULL DEFAULT '';
ALTER TABLE conversations DROP COLUMN transcript;
ALTER TABLE conversations DROP COLUMN agents;

-- Transcript lines in transcript order: by time, log position, then position among the lines of
-- one event at one time.
CREATE TABLE messages (
    conversation_id TEXT   COLLATE "C" NOT NULL,
    at              BIGINT NOT NULL,
    seq             BIGINT NOT NULL,
    idx             BIGINT NOT NULL,
    party           TEXT   NOT NULL,
    author          TEXT,
    kind            TEXT   NOT NULL,
    text            TEXT,
    buttons         TEXT   NOT NULL DEFAULT '[]',   -- serde_json of Vec<model::Button>
    cards           TEXT   NOT NULL DEFAULT '[]',   -- serde_json of Vec<model::Card>
    url             TEXT,
    platform        TEXT   NOT NULL,
    event_id        TEXT   NOT NULL,
    PRIMARY KEY (conversation_id, at, seq, idx)
);
-- The lines of one event (what a relay of that event reads).
CREATE INDEX messages_event ON messages (conversation_id, seq);

-- One row per hand-over to a live queue, numbered from 0 within its conversation (reports aggregate these).
CREATE TABLE handoffs (
    conversation_id        TEXT    COLLATE "C" NOT NULL,
    ordinal                BIGINT  NOT NULL,
    backend                TEXT    NOT NULL,
    queue                  TEXT,
    requested_at           BIGINT,
    queued_at              BIGINT,
    attended_at            BIGINT,
    closed_at              BIGINT,
    agent                  TEXT,                    -- the first agent who attended
    agents                 TEXT    NOT NULL DEFAULT '[]',
    transfers              BIGINT  NOT NULL DEFAULT 0,
    wait_seconds           DOUBLE PRECISION,
    first_response_seconds DOUBLE PRECISION,
    handle_seconds         DOUBLE PRECISION,
    sla_status             TEXT    NOT NULL,
    sla_deadline           BIGINT,
    disposition            TEXT,
    platform_disposition   TEXT,
    close_reason           TEXT,
    failure                TEXT,
    PRIMARY KEY (conversation_id, ordinal)
);
CREATE INDEX handoffs_queued ON handoffs (queued_at);

-- The agent filter: one row per (lower-cased agent name, conversation), in page order.
CREATE TABLE conversation_agents (
    agent           TEXT   NOT NULL,
    started_at      BIGINT NOT NULL,
    conversation_id TEXT   COLLATE "C" NOT NULL,
    PRIMARY KEY (agent, conversation_id)
);
CREATE INDEX conversation_agents_page ON conversation_agents (agent, started_at DESC, conversation_id DESC);
CREATE INDEX conversation_agents_conversation ON conversation_agents (conversation_id);

-- `external_id=` without `platform`.
CREATE INDEX streams_external_id ON streams (external_id);
