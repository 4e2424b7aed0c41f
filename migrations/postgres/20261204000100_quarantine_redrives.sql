-- Every run of a quarantined delivery through the parsers again (POST /v1/quarantine/{id}/redrive) and
-- what it got. Kept beside the quarantine row, which itself is never changed.
CREATE TABLE quarantine_redrives (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    quarantine_id   BIGINT NOT NULL,
    at              BIGINT NOT NULL,
    status          BIGINT NOT NULL,
    outcome         TEXT   NOT NULL,
    error_code      TEXT,
    event_id        TEXT,
    seq             BIGINT,
    conversation_id TEXT,
    key_name        TEXT
);
CREATE INDEX quarantine_redrives_by_entry ON quarantine_redrives (quarantine_id, id);
