-- The quarantine keeps at most the first 64 KiB of a body, with the whole body's size and SHA-256.
-- Entries kept whole before this migration have NULLs here (their body is complete).
ALTER TABLE quarantine ADD COLUMN body_size BIGINT;
ALTER TABLE quarantine ADD COLUMN body_sha256 TEXT;
CREATE INDEX quarantine_received ON quarantine (received_at);
