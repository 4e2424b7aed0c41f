-- Content-checked idempotency (issue 7). A delivery that reuses a delivery key with a different body is
-- not a redelivery: it is appended as a new event that revises the first one (`revision_of` = the id of
-- the event first stored under that key; NULL for every other event). The projection takes the latest
-- version of an event; both stay in the log.
ALTER TABLE events ADD COLUMN revision_of TEXT;

-- As before, and `revision_of` never changes either.
DROP TRIGGER events_refuse_update;
CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
WHEN NOT (
    NEW.seq IS OLD.seq AND NEW.event_id IS OLD.event_id AND NEW.platform IS OLD.platform
    AND NEW.external_id IS OLD.external_id AND NEW.kind IS OLD.kind AND NEW.occurred_at IS OLD.occurred_at
    AND NEW.platform_at IS OLD.platform_at AND NEW.received_at IS OLD.received_at AND NEW.links IS OLD.links
    AND NEW.revision_of IS OLD.revision_of
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
