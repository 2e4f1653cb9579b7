-- Push rules (the push_rules stream): one row per user who changed their
-- rules, holding the whole document (their own rules per kind in priority
-- order, and their changes to the server-default rules). The single
-- push_rules writer rewrites the row with a new stream_id on every change,
-- so the rows with stream_id in (from, to] are the users whose rules
-- changed in that window.
CREATE TABLE push_rules_users (
    user_id    TEXT PRIMARY KEY,
    rules      TEXT NOT NULL,
    stream_id  BIGINT NOT NULL
);
CREATE INDEX push_rules_users_stream ON push_rules_users (stream_id);

-- What the push rules said about an event for each local user (Synapse's
-- event_push_actions), written by the event's persister in the event's own
-- transaction. Only events that notify get a row; counts are the rows after
-- the user's read receipt.
CREATE TABLE event_push_actions (
    user_id          TEXT NOT NULL,
    room_id          TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    stream_ordering  BIGINT NOT NULL,
    -- 'main' for events outside threads, else the thread root's event id.
    thread_id        TEXT NOT NULL,
    highlight        SMALLINT NOT NULL,
    actions          TEXT NOT NULL,
    PRIMARY KEY (user_id, event_id)
);
CREATE INDEX event_push_actions_user_room ON event_push_actions (user_id, room_id, stream_ordering);
CREATE INDEX event_push_actions_user_stream ON event_push_actions (user_id, stream_ordering);
