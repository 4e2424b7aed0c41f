-- The relay planner reads a conversation's attend events when a queue call's link leaves it attended (the
-- agent attended before the queue call returned: the widget is told then). This partial index holds only
-- the attends, by stream, so that read is the conversation's streams and their attends, whatever the log's size.
CREATE INDEX events_attends ON events (platform, external_id, seq)
    WHERE kind IN ('aivo_live.attended', 'bright_pattern.chat_session_party_joined');
