-- Store-computed reports (issue 7, item 8) aggregate the handoff rows in SQL. Each row carries, besides the
-- handoff's own fields, the per-handoff values the reports credit, decided in Rust by their one definition in
-- `projection::metrics` when the row is written (`codec::handoff_rows`); only what depends on the SLA
-- configuration at report time (answered within target, short abandon) is decided by the report's SQL, from
-- these values and `sla_status`.
ALTER TABLE handoffs ADD COLUMN answered BIGINT NOT NULL DEFAULT 0;                 -- metrics::is_answered
ALTER TABLE handoffs ADD COLUMN abandoned BIGINT NOT NULL DEFAULT 0;                -- metrics::is_abandoned
ALTER TABLE handoffs ADD COLUMN missed BIGINT NOT NULL DEFAULT 0;                   -- metrics::is_missed
ALTER TABLE handoffs ADD COLUMN answered_wait_seconds REAL;            -- metrics::wait_seconds, answered only
ALTER TABLE handoffs ADD COLUMN unanswered_wait_seconds REAL;          -- metrics::unanswered_wait_seconds
ALTER TABLE handoffs ADD COLUMN report_first_response_seconds REAL;    -- metrics::first_response_seconds
ALTER TABLE handoffs ADD COLUMN report_handle_seconds REAL;            -- metrics::handle_seconds
ALTER TABLE handoffs ADD COLUMN first_response_at BIGINT;            -- micros: first attended + first response

-- Rows written before carry none of these: every conversation is rebuilt from the log at the next start
-- (`rebuild_stale`), which rewrites all its handoff rows.
UPDATE conversations SET fold = '';
