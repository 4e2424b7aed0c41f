-- The store-computed SLA report's exact wait percentiles (issue 7, item 8) read every answered wait of the
-- range. Beside each answered wait, its key (`store::report::wait_key`: the f64's bits as an integer that
-- orders like the waits) lets the report's grouped statement hand them over as exact text, a few rows per
-- report instead of one row per answered handoff.
ALTER TABLE handoffs ADD COLUMN answered_wait_key BIGINT;

-- Rows written before carry none: every conversation is rebuilt from the log at the next start
-- (`rebuild_stale`), which rewrites all its handoff rows.
UPDATE conversations SET fold = '';
