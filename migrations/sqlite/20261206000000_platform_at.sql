-- Causal time (issue 7). `occurred_at` = the earlier of the platform's own time and `received_at`; the
-- platform's own time is kept as `platform_at` (micros; NULL when the platform sends none).
--
-- Rows stored before: `occurred_at` was the platform's time when it gave one, else `received_at`, so a
-- live platform's row whose two times differ had a time of its own. Those times are covered by the hash
-- chain and stay as they are; the projection applies the causal rule to them when it refolds (below).
ALTER TABLE events ADD COLUMN platform_at BIGINT;

DROP TRIGGER events_refuse_update;
UPDATE events SET platform_at = occurred_at
WHERE platform IN ('aivo_live', 'vcc', 'bright_pattern') AND occurred_at <> received_at;

-- As before (see 20261203000000_hash_chain.sql), and `platform_at` never changes either.
CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
WHEN NOT (
    NEW.seq IS OLD.seq AND NEW.event_id IS OLD.event_id AND NEW.platform IS OLD.platform
    AND NEW.external_id IS OLD.external_id AND NEW.kind IS OLD.kind AND NEW.occurred_at IS OLD.occurred_at
    AND NEW.platform_at IS OLD.platform_at AND NEW.received_at IS OLD.received_at AND NEW.links IS OLD.links
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

-- Every conversation is refolded under the causal rules at the next start (`rebuild_stale`).
UPDATE conversations SET fold = '';
