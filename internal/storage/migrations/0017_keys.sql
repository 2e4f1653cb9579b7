-- End-to-end encryption keys (internal/keys) and the device_lists stream.

-- Device keys as uploaded (canonical JSON of the device_keys object), one
-- row per device that uploaded them. Written only by the device_lists
-- writer, in the same transaction as the stream row announcing the change,
-- so a change is never stored without its announcement.
CREATE TABLE e2e_device_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    ts_added   BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- One-time keys waiting to be claimed. A claim deletes its key; ts_added
-- and key_id order the claims (oldest upload first).
CREATE TABLE e2e_one_time_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    algorithm  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    ts_added   BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);
CREATE INDEX e2e_one_time_keys_claim ON e2e_one_time_keys (user_id, device_id, algorithm, ts_added, key_id);

-- The one fallback key per device and algorithm, handed out (and marked
-- used, not deleted) when no one-time key is left.
CREATE TABLE e2e_fallback_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    algorithm  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    used       BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- The device_lists stream: one stream id per change of one user's device
-- list; one row per device the change concerns (device_id '' for changes
-- of the user's cross-signing keys). Several writers, sharded by user.
CREATE TABLE device_lists_stream (
    stream_id      BIGINT NOT NULL,
    instance_name  TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    PRIMARY KEY (stream_id, user_id, device_id)
);
CREATE INDEX device_lists_stream_user ON device_lists_stream (user_id, stream_id);
CREATE INDEX device_lists_stream_instance ON device_lists_stream (instance_name, stream_id);
CREATE INDEX device_lists_stream_pos ON device_lists_stream (stream_id);

-- Cross-signing keys (key_type master, self_signing or user_signing), one
-- of each per user, written by the device_lists writer with the stream row
-- (device_id '') announcing the change.
CREATE TABLE e2e_cross_signing_keys (
    user_id    TEXT NOT NULL,
    key_type   TEXT NOT NULL,
    key_json   TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded with /keys/signatures/upload: target_key_id is a
-- device id or a cross-signing public key of target_user_id. A signature
-- whose signer is not the target's owner (a user-signing key's signature of
-- another user's master key) is shown only to the signer.
CREATE TABLE e2e_cross_signing_signatures (
    target_user_id  TEXT NOT NULL,
    target_key_id   TEXT NOT NULL,
    signer_user_id  TEXT NOT NULL,
    signer_key_id   TEXT NOT NULL,
    signature       TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
);

-- Server-side key backup (/room_keys): versions per user, and the backed-up
-- session keys of each version. etag changes with every change of a
-- version's keys.
CREATE TABLE e2e_room_keys_versions (
    user_id    TEXT NOT NULL,
    version    BIGINT NOT NULL,
    algorithm  TEXT NOT NULL,
    auth_data  TEXT NOT NULL,
    etag       BIGINT NOT NULL DEFAULT 0,
    deleted    BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE e2e_room_keys (
    user_id              TEXT NOT NULL,
    version              BIGINT NOT NULL,
    room_id              TEXT NOT NULL,
    session_id           TEXT NOT NULL,
    first_message_index  BIGINT NOT NULL,
    forwarded_count      BIGINT NOT NULL,
    is_verified          BOOLEAN NOT NULL,
    session_data         TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
