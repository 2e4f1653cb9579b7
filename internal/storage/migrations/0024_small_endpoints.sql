-- Registration tokens (Synapse's registration_tokens table and admin API).
-- A token may be used while pending + completed < uses_allowed (NULL: no
-- limit) and expiry_time (ms since the epoch, NULL: never) is in the
-- future. pending counts UIA sessions that passed the
-- m.login.registration_token stage and have not registered yet; it is
-- raised by a single conditional UPDATE, so two workers registering at
-- once can never take the last use twice.
CREATE TABLE registration_tokens (
    token         TEXT PRIMARY KEY,
    uses_allowed  BIGINT,
    pending       BIGINT NOT NULL DEFAULT 0,
    completed     BIGINT NOT NULL DEFAULT 0,
    expiry_time   BIGINT
);

-- The token a registration session holds a pending use of, so the use is
-- completed when the account is created, or given back when the session
-- expires unused.
ALTER TABLE uia_sessions ADD COLUMN registration_token TEXT;

-- Third-party identifiers bound to accounts (Synapse's user_threepids).
-- Ganglion cannot validate new ones (no email sending for 3PIDs, no
-- identity server), so only rows written by other tools appear here;
-- GET /account/3pid lists them and /account/3pid/delete removes them.
CREATE TABLE user_threepids (
    user_id       TEXT NOT NULL,
    medium        TEXT NOT NULL,
    address       TEXT NOT NULL,
    validated_at  BIGINT NOT NULL,
    added_at      BIGINT NOT NULL,
    PRIMARY KEY (medium, address)
);
CREATE INDEX user_threepids_user ON user_threepids (user_id);

-- /timestamp_to_event finds a room's events by origin_server_ts.
CREATE INDEX events_room_ts ON events (room_id, origin_server_ts);
