-- Events other servers built (DESIGN §4: still written only by the room's
-- persister).
--
-- Outliers (auth chains and state received in a join or fetched on their
-- own) are rows of events with NEGATIVE stream orderings from this
-- counter: every lookup by id finds them, and no stream window (which
-- starts at 0) ever contains them.
INSERT INTO stream_sequences (name, last_value) VALUES ('outliers', 0);

-- Remote events that failed the auth rules, kept so they are not fetched
-- again and so later events naming them still have a state: rejected
-- (against their auth events or the state before them) or soft-failed
-- (allowed by the state before them but not by the room's current state).
-- Neither is ever shown to clients.
CREATE TABLE event_rejections (
    event_id     TEXT PRIMARY KEY,
    room_id      TEXT NOT NULL,
    reason       TEXT NOT NULL,
    soft_failed  BOOLEAN NOT NULL,
    json         TEXT NOT NULL,
    received_ts  BIGINT NOT NULL
);

-- The state after an event, for the events whose state differs from the
-- room's state log at their stream position (events off the main line of
-- a forked DAG, soft-failed and rejected events). Every other timeline
-- event's state after it is the state log at its position, so the common
-- case costs nothing here.
--
-- A state group is a delta over a base: another group (prev_group), or the
-- room's state log at a position (log_pos), or nothing (a full snapshot).
-- chain counts the groups to walk to reach a log base or a snapshot;
-- writers keep it short by snapshotting.
CREATE TABLE state_groups (
    group_id    TEXT PRIMARY KEY,
    room_id     TEXT NOT NULL,
    prev_group  TEXT,
    log_pos     BIGINT,
    chain       INTEGER NOT NULL
);
CREATE TABLE state_group_entries (
    group_id   TEXT NOT NULL,
    type       TEXT NOT NULL,
    state_key  TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    PRIMARY KEY (group_id, type, state_key)
);
CREATE TABLE event_state (
    event_id  TEXT PRIMARY KEY,
    group_id  TEXT NOT NULL
);

-- The state before an event, for events whose prev events are unknown here
-- (a join through another server): the state that server gave.
CREATE TABLE event_state_before (
    event_id  TEXT PRIMARY KEY,
    group_id  TEXT NOT NULL
);

-- Outliers are not history: /messages pages back over negative positions
-- too (history fetched with /backfill lives there, older the lower), so
-- outliers are marked.
ALTER TABLE events ADD COLUMN outlier BOOLEAN NOT NULL DEFAULT FALSE;
