-- The relay planner looks up a conversation's latest accepted queue call (the live chat its relays go to)
-- in the append transaction, once per relayed delivery. Without an index of its own the lookup walked the
-- log backwards from its newest event (O(log size) per delivery on PostgreSQL); this partial index holds
-- only the queue calls, by stream, so the lookup reads the conversation's streams and their queue calls.
CREATE INDEX events_queue_calls ON events (platform, external_id, seq) WHERE kind = 'ledger.queue_accepted';
