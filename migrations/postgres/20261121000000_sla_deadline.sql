-- While a handoff waits under its answer target: when the target runs out (micros). Lets the API filter
-- 'pending' and 'breached' as of now (the projection itself has no clock).
ALTER TABLE conversations ADD COLUMN sla_deadline BIGINT;
