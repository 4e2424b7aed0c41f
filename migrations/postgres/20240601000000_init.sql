-- The immutable event log and the projections built from it (PostgreSQL).
-- Column types are kept portable (ids TEXT, times BIGINT microseconds since the epoch, JSON as TEXT)
-- so that both backends run the very same SQL text. Ids compare bytewise (COLLATE "C") so that the
-- keyset order on (started_at, id) is the same as SQLite's.

CREATE TABLE events (
    seq          BIGINT  PRIMARY KEY,          -- assigned by the single writer: gap-free, strictly increasing
    event_id     TEXT    COLLATE "C" NOT NULL UNIQUE,
    platform     TEXT    NOT NULL,
    external_id  TEXT    COLLATE "C" NOT NULL, -- '' for an event filed under no stream
    kind         TEXT    NOT NULL,
    occurred_at  BIGINT  NOT NULL,
    received_at  BIGINT  NOT NULL,
    payload      TEXT    NOT NULL,             -- the body exactly as received
    headers      TEXT    NOT NULL DEFAULT '{}',
    links        TEXT    NOT NULL DEFAULT '[]' -- streams the event joins to its own: replay re-links from these
);
CREATE INDEX events_stream ON events (platform, external_id, seq);

-- The log is append-only: corrections are new events.
CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % on events is refused', TG_OP;
END
$$;
CREATE TRIGGER events_refuse_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();
CREATE TRIGGER events_refuse_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- The mutable map stream -> conversation (re-pointed when conversations merge).
CREATE TABLE streams (
    platform        TEXT   NOT NULL,
    external_id     TEXT   COLLATE "C" NOT NULL,
    conversation_id TEXT   COLLATE "C" NOT NULL,
    first_seq       BIGINT NOT NULL,           -- the event that filed or linked it first: keeps stream order stable
    PRIMARY KEY (platform, external_id)
);
CREATE INDEX streams_conversation ON streams (conversation_id);

CREATE TABLE conversations (
    id          TEXT   COLLATE "C" NOT NULL PRIMARY KEY,
    state       TEXT   NOT NULL,
    disposition TEXT,
    sla_status  TEXT   NOT NULL,
    queue       TEXT   COLLATE "C",
    agents      TEXT   COLLATE "C" NOT NULL DEFAULT '', -- lower-cased agent names, each wrapped in newlines
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
    absorbed_id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    survivor_id TEXT COLLATE "C" NOT NULL
);
CREATE INDEX aliases_survivor ON aliases (survivor_id);

-- Refused deliveries, kept byte-exact.
CREATE TABLE quarantine (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at   BIGINT NOT NULL,
    path          TEXT   NOT NULL,
    platform      TEXT,
    error_code    TEXT   NOT NULL,
    error_message TEXT   NOT NULL,
    status        BIGINT NOT NULL,
    headers       TEXT   NOT NULL DEFAULT '{}',
    body          BYTEA  NOT NULL
);

CREATE TABLE checkpoints (
    name  TEXT   NOT NULL PRIMARY KEY,
    value BIGINT NOT NULL
);
