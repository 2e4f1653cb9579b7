-- Rooms and their events. A room's events are written only by its
-- persister (DESIGN §4), so within one room stream_ordering follows the DAG
-- for locally created events.
CREATE TABLE rooms (
    room_id       TEXT PRIMARY KEY,
    room_version  TEXT NOT NULL,
    creator       TEXT NOT NULL,
    is_public     BOOLEAN NOT NULL DEFAULT FALSE,
    created_ts    BIGINT NOT NULL
);

-- Every persisted PDU. stream_ordering comes from the events stream's
-- sequence; instance_name is the persister that wrote it (multi-writer
-- positions are per instance).
CREATE TABLE events (
    stream_ordering   BIGINT PRIMARY KEY,
    event_id          TEXT NOT NULL UNIQUE,
    room_id           TEXT NOT NULL,
    instance_name     TEXT NOT NULL,
    type              TEXT NOT NULL,
    state_key         TEXT,
    sender            TEXT NOT NULL,
    depth             BIGINT NOT NULL,
    origin_server_ts  BIGINT NOT NULL,
    membership        TEXT,
    redacts           TEXT,
    -- the state event this one replaced (for unsigned.prev_content)
    replaces_state    TEXT,
    sender_device     TEXT,
    txn_id            TEXT,
    json              TEXT NOT NULL
);
CREATE INDEX events_room_stream ON events (room_id, stream_ordering);
-- Idempotent sends: one event per (user, device, room, txn id).
CREATE UNIQUE INDEX events_txn ON events (sender, sender_device, room_id, txn_id) WHERE txn_id IS NOT NULL;

-- Accepted redactions: redacts → the redaction event.
CREATE TABLE redactions (
    event_id     TEXT PRIMARY KEY,
    redacts      TEXT NOT NULL
);
CREATE INDEX redactions_redacts ON redactions (redacts);

-- The room's current state.
CREATE TABLE current_state (
    room_id          TEXT NOT NULL,
    type             TEXT NOT NULL,
    state_key        TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    stream_ordering  BIGINT NOT NULL,
    membership       TEXT,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX current_state_user_membership ON current_state (state_key, membership) WHERE type = 'm.room.member';

-- Every state change, keyed by the stream position at which it happened.
-- The state at position P is, per (type, state_key), the latest row at or
-- before P. This is a delta log: a room with 50,000 members costs one row
-- per membership change, not a copy of the state per event.
CREATE TABLE state_log (
    room_id          TEXT NOT NULL,
    type             TEXT NOT NULL,
    state_key        TEXT NOT NULL,
    stream_ordering  BIGINT NOT NULL,
    event_id         TEXT NOT NULL,
    membership       TEXT,
    PRIMARY KEY (room_id, type, state_key, stream_ordering)
);
CREATE INDEX state_log_room_stream ON state_log (room_id, stream_ordering);
CREATE INDEX state_log_member ON state_log (state_key, stream_ordering) WHERE type = 'm.room.member';

CREATE TABLE forward_extremities (
    room_id   TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

CREATE TABLE room_aliases (
    alias       TEXT PRIMARY KEY,
    room_id     TEXT NOT NULL,
    creator     TEXT NOT NULL,
    created_ts  BIGINT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

CREATE TABLE forgotten_rooms (
    user_id  TEXT NOT NULL,
    room_id  TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
