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

-- HTTP pushers (POST /pushers/set), written by the main process. The
-- pusher instance that owns the user (pusher_instances, sharded by user
-- id) sends each push actions row after last_stream_ordering to the
-- gateway and then moves last_stream_ordering past it, so a restart
-- resumes where delivery stopped.
CREATE TABLE pushers (
    user_id               TEXT NOT NULL,
    -- the device that set the pusher: deleting the device (logout)
    -- deletes its pushers, as Synapse does
    device_id             TEXT NOT NULL,
    app_id                TEXT NOT NULL,
    pushkey               TEXT NOT NULL,
    kind                  TEXT NOT NULL,
    app_display_name      TEXT NOT NULL,
    device_display_name   TEXT NOT NULL,
    profile_tag           TEXT NOT NULL,
    lang                  TEXT NOT NULL,
    -- the pusher's data object as JSON (url, format, …)
    data                  TEXT NOT NULL,
    -- when the pusher was set, in ms (sent to gateways as pushkey_ts)
    pushkey_ts            BIGINT NOT NULL,
    last_stream_ordering  BIGINT NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX pushers_app_pushkey ON pushers (app_id, pushkey);
