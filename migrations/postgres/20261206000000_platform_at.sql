-- Causal time (issue 7). `occurred_at` = the earlier of the platform's own time and `received_at`; the
-- platform's own time is kept as `platform_at` (micros; NULL when the platform sends none).
--
-- Rows stored before: `occurred_at` was the platform's time when it gave one, else `received_at`, so a
-- live platform's row whose two times differ had a time of its own. Those times are covered by the hash
-- chain and stay as they are; the projection applies the causal rule to them when it refolds (below).
ALTER TABLE events ADD COLUMN platform_at BIGINT;

-- The backfill is the one change the guard lets through: the guard and the hash check (rows from before
-- the chain get their hash later, in `migrate`) are lifted for it alone.
ALTER TABLE events DISABLE TRIGGER events_guard_update;
ALTER TABLE events DROP CONSTRAINT events_hash_present;
UPDATE events SET platform_at = occurred_at
WHERE platform IN ('aivo_live', 'vcc', 'bright_pattern') AND occurred_at <> received_at;
ALTER TABLE events ADD CONSTRAINT events_hash_present CHECK (hash IS NOT NULL) NOT VALID;
ALTER TABLE events ENABLE TRIGGER events_guard_update;

-- As before (see 20261203000000_hash_chain.sql), and `platform_at` never changes either.
CREATE OR REPLACE FUNCTION events_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq = OLD.seq AND NEW.event_id = OLD.event_id AND NEW.platform = OLD.platform
       AND NEW.external_id = OLD.external_id AND NEW.kind = OLD.kind AND NEW.occurred_at = OLD.occurred_at
       AND NEW.platform_at IS NOT DISTINCT FROM OLD.platform_at
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

-- Every conversation is refolded under the causal rules at the next start (`rebuild_stale`).
UPDATE conversations SET fold = '';
