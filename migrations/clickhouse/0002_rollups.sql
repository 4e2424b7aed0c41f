-- Rollups per hour and per day by platform, queue and agent (src/analytics/rollups.rs).
--
-- No materialized views: on 18.16 a non-replicated table has no insert deduplication, so an MV fed by a
-- re-shipped block would count it twice. Rollups are rebuilt with INSERT ... SELECT from the deduplicated
-- facts instead. Each refresh of a bucket writes every row of that bucket plus one marker row, all with the
-- same built_at; a row is current when it is the latest of its key (FINAL) and its built_at is the latest of
-- its bucket, so a group that disappeared from a bucket disappears from the reports too.

CREATE TABLE IF NOT EXISTS handoff_rollup
(
    grain String,
    bucket DateTime('UTC'),
    platform String,
    queue String,
    agent String,
    marker UInt8,
    offered UInt64,
    answered UInt64,
    answered_within_sla UInt64,
    abandoned UInt64,
    short_abandoned UInt64,
    missed UInt64,
    wait_state AggregateFunction(quantiles(0.5, 0.9), Float64),
    wait_sum Float64,
    wait_count UInt64,
    first_response_sum Float64,
    first_response_count UInt64,
    handle_sum Float64,
    handle_count UInt64,
    completed UInt64,
    disposition_abandoned UInt64,
    disposition_missed UInt64,
    failed UInt64,
    built_at UInt64
)
ENGINE = ReplacingMergeTree(built_at)
PARTITION BY (grain, toYYYYMM(bucket))
ORDER BY (grain, bucket, platform, queue, agent);

CREATE VIEW IF NOT EXISTS handoff_rollup_current AS
SELECT * FROM handoff_rollup FINAL
WHERE marker = 0
  AND (grain, bucket, built_at) IN (SELECT grain, bucket, max(built_at) FROM handoff_rollup GROUP BY grain, bucket);

-- Hours whose rollups must be rebuilt. Written (dirty = 1) before the facts that touch them, cleared
-- (dirty = 0, higher version) after the rebuild, so a crash in between is repaired by the next pass.
CREATE TABLE IF NOT EXISTS rollup_dirty
(
    hour DateTime('UTC'),
    dirty UInt8,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY hour;
