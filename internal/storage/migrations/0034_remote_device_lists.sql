-- Other servers' users' device lists (internal/keys, fed by the
-- m.device_list_update EDUs of internal/federation/edus and by answers of
-- user/devices and user/keys/query).
--
-- remote_device_lists says how far we follow a remote user's list:
-- stream_id is the last of the user's stream ids (on their server) we
-- applied, the prev_id the next update must name to be applied without a
-- resync; stale marks a list whose gap could not be filled (the server
-- was unreachable) and that is resynced before it is trusted again. A user
-- without a row is not followed: /keys/query asks their server.
-- Written by the device_lists writer owning the user, in the transaction
-- of the stream row announcing the change to local users.
CREATE TABLE remote_device_lists (
    user_id     TEXT PRIMARY KEY,
    stream_id   BIGINT NOT NULL,
    stale       BOOLEAN NOT NULL DEFAULT FALSE,
    updated_ts  BIGINT NOT NULL
);

-- The cached devices of remote users: display name and signed device keys
-- (NULL for a device that uploaded none). Cross-signing keys of remote
-- users live in e2e_cross_signing_keys, as local users' do.
CREATE TABLE remote_devices (
    user_id       TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    display_name  TEXT,
    key_json      TEXT,
    PRIMARY KEY (user_id, device_id)
);
