-- The tamper-evident log and erasures (src/chain.rs, src/erasure.rs).
--
-- `hash` = SHA-256 over the previous row's hash and this event's identity, times and payload digest,
-- hex. Rows stored before this migration get theirs from the backfill `migrate` runs right after the
-- SQL migrations (SQLite has no SHA-256 function, and a chain is computed in order: one Rust routine
-- does it for both stores, in batches, resumable). New rows must carry a hash.
ALTER TABLE events ADD COLUMN hash TEXT;

CREATE TRIGGER events_require_hash BEFORE INSERT ON events
WHEN NEW.hash IS NULL
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only and chained: an event must be inserted with its hash');
END;

-- One row per erasure: its certificate (`events` comes from erased_events).
CREATE TABLE erasures (
    id               TEXT   NOT NULL PRIMARY KEY,
    at               BIGINT NOT NULL,           -- micros
    conversation_ids TEXT   NOT NULL,           -- JSON array of ids
    seq              BIGINT NOT NULL,           -- the ledger.erased event recording it
    chain_head       TEXT   NOT NULL            -- that event's hash
);

-- Every event an erasure replaced by a stub, with the digest of its original payload (the facts the
-- projection keeps from it travel in the ledger.erased event, so replay needs the log alone).
CREATE TABLE erased_events (
    seq            BIGINT NOT NULL PRIMARY KEY,
    erasure_id     TEXT   NOT NULL,
    payload_sha256 TEXT   NOT NULL
);
CREATE INDEX erased_events_erasure ON erased_events (erasure_id, seq);

-- Which erasures covered a conversation (retention skips conversations already erased).
CREATE TABLE erased_conversations (
    conversation_id TEXT NOT NULL,
    erasure_id      TEXT NOT NULL,
    PRIMARY KEY (conversation_id, erasure_id)
);

CREATE TRIGGER erasures_refuse_update BEFORE UPDATE ON erasures
BEGIN
    SELECT RAISE(ABORT, 'erasure records are append-only: UPDATE is refused');
END;
CREATE TRIGGER erasures_refuse_delete BEFORE DELETE ON erasures
BEGIN
    SELECT RAISE(ABORT, 'erasure records are append-only: DELETE is refused');
END;
CREATE TRIGGER erased_events_refuse_update BEFORE UPDATE ON erased_events
BEGIN
    SELECT RAISE(ABORT, 'erasure records are append-only: UPDATE is refused');
END;
CREATE TRIGGER erased_events_refuse_delete BEFORE DELETE ON erased_events
BEGIN
    SELECT RAISE(ABORT, 'erasure records are append-only: DELETE is refused');
END;

-- The only changes ever made to a stored event:
-- 1. the chain backfill: a missing hash is set, nothing else changes;
-- 2. an erasure: the payload becomes exactly the stub registered for this seq in erased_events and
--    the kept headers are dropped; identity, times, links and hash stay. (SQLite cannot hash in a
--    trigger: that the stub names the original's digest is proven by the chain, which `verify`
--    checks; PostgreSQL's trigger checks the digest itself.)
DROP TRIGGER events_refuse_update;
CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
WHEN NOT (
    NEW.seq IS OLD.seq AND NEW.event_id IS OLD.event_id AND NEW.platform IS OLD.platform
    AND NEW.external_id IS OLD.external_id AND NEW.kind IS OLD.kind AND NEW.occurred_at IS OLD.occurred_at
    AND NEW.received_at IS OLD.received_at AND NEW.links IS OLD.links
    AND (
        (OLD.hash IS NULL AND NEW.hash IS NOT NULL AND NEW.payload IS OLD.payload AND NEW.headers IS OLD.headers)
        OR (
            OLD.hash IS NOT NULL AND NEW.hash IS OLD.hash AND NEW.headers = '{}' AND NEW.payload <> OLD.payload
            AND EXISTS (
                SELECT 1 FROM erased_events x
                WHERE x.seq = OLD.seq
                  AND NEW.payload = '{"erased":true,"erasure_id":"' || x.erasure_id
                                    || '","payload_sha256":"' || x.payload_sha256 || '"}'
            )
        )
    )
)
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: UPDATE on events is refused');
END;
