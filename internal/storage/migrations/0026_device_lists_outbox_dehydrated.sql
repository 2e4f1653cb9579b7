-- Device list changes recorded by the transaction that made them (a login,
-- a device renamed or deleted, a deactivation), waiting to be announced on
-- the device_lists stream by the writer that owns the user. The device_lists
-- writer deletes a user's rows in the same transaction as the stream row
-- announcing them, so a change is announced at least once whatever process
-- dies when: the recording process drains after its commit, and every
-- device_lists writer drains its users' rows at start and periodically.
-- device_id '' stands for the user's cross-signing keys. No primary key:
-- the same device may wait twice (announced once, harmlessly).
CREATE TABLE device_lists_outbox (
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    created_ts  BIGINT NOT NULL
);
CREATE INDEX device_lists_outbox_user ON device_lists_outbox (user_id);

-- Dehydrated devices (MSC3814, internal/dehydrated): at most one per user.
-- The device itself is a row of devices (without an access token); this
-- holds the client's opaque device_data.
CREATE TABLE dehydrated_devices (
    user_id      TEXT PRIMARY KEY,
    device_id    TEXT NOT NULL,
    device_data  TEXT NOT NULL
);
