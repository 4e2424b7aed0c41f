-- The tamper-evident log and erasures (src/chain.rs, src/erasure.rs).
--
-- `hash` = SHA-256 over the previous row's hash and this event's identity, times and payload digest,
-- hex. Rows stored before this migration get theirs from the backfill `migrate` runs right after the
-- SQL migrations (one Rust routine for both stores, in batches, resumable). New rows must carry a hash.
ALTER TABLE events ADD COLUMN hash TEXT;
ALTER TABLE events ADD CONSTRAINT events_hash_present CHECK (hash IS NOT NULL) NOT VALID;

-- One row per erasure: its certificate (`events` comes from erased_events).
CREATE TABLE erasures (
    id               TEXT   COLLATE "C" NOT NULL PRIMARY KEY,
    at               BIGINT NOT NULL,           -- micros
    conversation_ids TEXT   NOT NULL,           -- JSON array of ids
    seq              BIGINT NOT NULL,           -- the ledger.erased event recording it
    chain_head       TEXT   NOT NULL            -- that event's hash
);

-- Every event an erasure replaced by a stub, with the digest of its original payload (the facts the
-- projection keeps from it travel in the ledger.erased event, so replay needs the log alone).
CREATE TABLE erased_events (
    seq            BIGINT NOT NULL PRIMARY KEY,
    erasure_id     TEXT   COLLATE "C" NOT NULL,
    payload_sha256 TEXT   NOT NULL
);
CREATE INDEX erased_events_erasure ON erased_events (erasure_id, seq);

-- Which erasures covered a conversation (retention skips conversations already erased).
CREATE TABLE erased_conversations (
    conversation_id TEXT COLLATE "C" NOT NULL,
    erasure_id      TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (conversation_id, erasure_id)
);

CREATE FUNCTION erasure_records_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'erasure records are append-only: % is refused', TG_OP;
END
$$;
CREATE TRIGGER erasures_refuse_change BEFORE UPDATE OR DELETE ON erasures
    FOR EACH ROW EXECUTE FUNCTION erasure_records_refuse_change();
CREATE TRIGGER erasures_refuse_truncate BEFORE TRUNCATE ON erasures
    FOR EACH STATEMENT EXECUTE FUNCTION erasure_records_refuse_change();
CREATE TRIGGER erased_events_refuse_change BEFORE UPDATE OR DELETE ON erased_events
    FOR EACH ROW EXECUTE FUNCTION erasure_records_refuse_change();
CREATE TRIGGER erased_events_refuse_truncate BEFORE TRUNCATE ON erased_events
    FOR EACH STATEMENT EXECUTE FUNCTION erasure_records_refuse_change();

-- The only changes ever made to a stored event:
-- 1. the chain backfill: a missing hash is set, nothing else changes;
-- 2. an erasure: the payload becomes exactly the stub registered for this seq in erased_events, whose
--    digest must be the SHA-256 of the payload it replaces, and the kept headers are dropped;
--    identity, times, links and hash stay.
CREATE FUNCTION events_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq = OLD.seq AND NEW.event_id = OLD.event_id AND NEW.platform = OLD.platform
       AND NEW.external_id = OLD.external_id AND NEW.kind = OLD.kind AND NEW.occurred_at = OLD.occurred_at
       AND NEW.received_at = OLD.received_at AND NEW.links = OLD.links THEN
        IF OLD.hash IS NULL AND NEW.hash IS NOT NULL AND NEW.payload = OLD.payload
           AND NEW.headers = OLD.headers THEN
            RETURN NEW;
        END IF;
        IF OLD.hash IS NOT NULL AND NEW.hash = OLD.hash AND NEW.headers = '{}' AND EXISTS (
            SELECT 1 FROM erased_events x
            WHERE x.seq = OLD.seq
              AND x.payload_sha256 = encode(sha256(convert_to(OLD.payload, 'UTF8')), 'hex')
              AND NEW.payload = '{"erased":true,"erasure_id":"' || x.erasure_id
                                || '","payload_sha256":"' || x.payload_sha256 || '"}'
        ) THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'the event log is append-only: % on events is refused', TG_OP;
END
$$;
DROP TRIGGER events_refuse_update_delete ON events;
CREATE TRIGGER events_guard_update BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION events_guard_update();
CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();
