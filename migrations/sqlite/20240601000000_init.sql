-- The immutable event log and the projections built from it (SQLite).
-- Column types are kept portable (ids TEXT, times BIGINT microseconds since the epoch, JSON as TEXT)
-- so that both backends run the very same SQL text.

CREATE TABLE events (
    seq          INTEGER PRIMARY KEY,          -- assigned by the single writer: gap-free, strictly increasing
    event_id     TEXT    NOT NULL UNIQUE,
    platform     TEXT    NOT NULL,
    external_id  TEXT    NOT NULL,             -- '' for an event filed under no stream
    kind         TEXT    NOT NULL,
    occurred_at  BIGINT  NOT NULL,
    received_at  BIGINT  NOT NULL,
    payload      TEXT    NOT NULL,             -- the body exactly as received
    headers      TEXT    NOT NULL DEFAULT '{}',
    links        TEXT    NOT NULL DEFAULT '[]' -- streams the event joins to its own: replay re-links from these
);
CREATE INDEX events_stream ON events (platform, external_id, seq);

-- The log is append-only: corrections are new events.
CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: UPDATE on events is refused');
END;
CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: DELETE on events is refused');
END;

-- The mutable map stream -> conversation (re-pointed when conversations merge).
CREATE TABLE streams (
    platform        TEXT   NOT NULL,
    external_id     TEXT   NOT NULL,
    conversation_id TEXT   NOT NULL,
    first_seq       BIGINT NOT NULL,           -- the event that filed or linked it first: keeps stream order stable
    PRIMARY KEY (platform, external_id)
);
CREATE INDEX streams_conversation ON streams (conversation_id);

CREATE TABLE conversations (
    id          TEXT   NOT NULL PRIMARY KEY,
    state       TEXT   NOT NULL,
    disposition TEXT,
    sla_status  TEXT   NOT NULL,
    queue       TEXT,
    agents      TEXT   NOT NULL DEFAULT '',    -- lower-cased agent names, each wrapped in newlines, for the agent filter
    started_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    last_seq    BIGINT NOT NULL,
    doc         TEXT   NOT NULL,               -- serde_json of model::Conversation
    transcript  TEXT   NOT NULL                -- serde_json of Vec<model::Message>
);
CREATE INDEX conversations_newest ON conversations (started_at DESC, id DESC);
CREATE INDEX conversations_state ON conversations (state, started_at DESC, id DESC);
CREATE INDEX conversations_disposition ON conversations (disposition, started_at DESC, id DESC);
CREATE INDEX conversations_sla_status ON conversations (sla_status, started_at DESC, id DESC);
CREATE INDEX conversations_queue ON conversations (queue, started_at DESC, id DESC);

-- Ids absorbed by a merge keep resolving to the survivor (always one hop: re-pointed on every merge).
CREATE TABLE aliases (
    absorbed_id TEXT NOT NULL PRIMARY KEY,
    survivor_id TEXT NOT NULL
);
CREATE INDEX aliases_survivor ON aliases (survivor_id);

-- Refused deliveries, kept byte-exact.
CREATE TABLE quarantine (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at   BIGINT  NOT NULL,
    path          TEXT    NOT NULL,
    platform      TEXT,
    error_code    TEXT    NOT NULL,
    error_message TEXT    NOT NULL,
    status        BIGINT  NOT NULL,
    headers       TEXT    NOT NULL DEFAULT '{}',
    body          BLOB    NOT NULL
);

CREATE TABLE checkpoints (
    name  TEXT   NOT NULL PRIMARY KEY,
    value BIGINT NOT NULL
);
