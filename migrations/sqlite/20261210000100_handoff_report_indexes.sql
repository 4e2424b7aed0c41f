-- The store-computed reports (issue 7, item 8) read each instant's handoffs from an index led by the hour of
-- that instant (`instant / 3600000000`, micros) and holding every column the report's statement reads, so
-- SQLite groups the rows by hour (and the dimensions after it) as it reads them, without sorting a million
-- rows per instant (`store::report`). Partial: a handoff enters an instant's index once it has that instant.
--
-- Two kinds of values join the rows, written by `codec::handoff_rows`:
-- - `disposition_at`: the instant a disposition is credited at when the handoff has one of its own (closed,
--   else attended, queued, requested); a disposition without any (none today) is credited at the
--   conversation's latest event, read at report time;
-- - the summed times as exact integer parts (`store::report::ExactTime`: whole seconds and the fraction times
--   2^62 in two halves), so hours and groups add up exactly, in any order, to what one `SUM` of the floats
--   gives.
ALTER TABLE handoffs ADD COLUMN disposition_at BIGINT;
ALTER TABLE handoffs ADD COLUMN report_first_response_whole BIGINT;
ALTER TABLE handoffs ADD COLUMN report_first_response_frac_hi BIGINT;
ALTER TABLE handoffs ADD COLUMN report_first_response_frac_lo BIGINT;
ALTER TABLE handoffs ADD COLUMN report_handle_whole BIGINT;
ALTER TABLE handoffs ADD COLUMN report_handle_frac_hi BIGINT;
ALTER TABLE handoffs ADD COLUMN report_handle_frac_lo BIGINT;

-- The offered statement's range now reads `handoffs_report_offered`.
DROP INDEX handoffs_queued;

CREATE INDEX handoffs_report_offered ON handoffs (queued_at / 3600000000, backend, queue, answered, agent)
    WHERE queued_at IS NOT NULL;
CREATE INDEX handoffs_report_answered ON handoffs (attended_at / 3600000000, backend, queue, answered, agent,
    sla_status, answered_wait_seconds, answered_wait_key)
    WHERE attended_at IS NOT NULL;
CREATE INDEX handoffs_report_closed ON handoffs (closed_at / 3600000000, backend, queue, answered, agent,
    abandoned, missed, unanswered_wait_seconds, report_handle_seconds,
    report_handle_whole, report_handle_frac_hi, report_handle_frac_lo)
    WHERE closed_at IS NOT NULL;
CREATE INDEX handoffs_report_first_response ON handoffs (first_response_at / 3600000000, backend, queue, answered,
    agent, report_first_response_seconds,
    report_first_response_whole, report_first_response_frac_hi, report_first_response_frac_lo)
    WHERE first_response_at IS NOT NULL;
CREATE INDEX handoffs_report_disposition ON handoffs (disposition_at / 3600000000, backend, queue, answered, agent,
    disposition)
    WHERE disposition_at IS NOT NULL;
-- Dispositions without an instant of their own (credited at the conversation's latest event).
CREATE INDEX handoffs_report_unplaced ON handoffs (conversation_id)
    WHERE disposition IS NOT NULL AND disposition_at IS NULL;

-- Rows written before carry none of the new values: every conversation is rebuilt from the log at the next
-- start (`rebuild_stale`), which rewrites all its handoff rows.
UPDATE conversations SET fold = '';
