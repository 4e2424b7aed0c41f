-- The transcript's per-event index (conversation_id, seq) served only `Store::event_lines`, which no request
-- path uses any more (the relay planner takes an event's lines from the batch's own projection). Every
-- transcript line paid for it: one more B-tree leaf written at a random place per line. `event_lines` now
-- reads the conversation's lines through the primary key's prefix and keeps the event's.
DROP INDEX IF EXISTS messages_event;
