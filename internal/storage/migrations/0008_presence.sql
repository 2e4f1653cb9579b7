-- Presence of local users (the presence stream): one row per user with the
-- latest state. stream_id is the position of the last change worth telling
-- other users about; the presence writer also refreshes last_active_ts and
-- last_user_sync_ts in place (without a new stream_id) so that a restarted
-- writer can time out users who stopped syncing while it was down.
CREATE TABLE presence (
    user_id            TEXT PRIMARY KEY,
    state              TEXT NOT NULL,
    status_msg         TEXT,
    last_active_ts     BIGINT NOT NULL,
    last_user_sync_ts  BIGINT NOT NULL,
    currently_active   BOOLEAN NOT NULL,
    stream_id          BIGINT NOT NULL
);
CREATE INDEX presence_stream ON presence (stream_id);
