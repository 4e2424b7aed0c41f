-- Content-checked idempotency (issue 7). A delivery that reuses a delivery key with a different body is
-- not a redelivery: it is appended as a new event that revises the first one (`revision_of` = the id of
-- the event first stored under that key; NULL for every other event). The projection takes the latest
-- version of an event; both stay in the log.
ALTER TABLE events ADD COLUMN revision_of TEXT;

-- As before, and `revision_of` never changes either.
CREATE OR REPLACE FUNCTION events_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq = OLD.seq AND NEW.event_id = OLD.event_id AND NEW.platform = OLD.platform
       AND NEW.external_id = OLD.external_id AND NEW.kind = OLD.kind AND NEW.occurred_at = OLD.occurred_at
       AND NEW.platform_at IS NOT DISTINCT FROM OLD.platform_at
       AND NEW.revision_of IS NOT DISTINCT FROM OLD.revision_of
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
