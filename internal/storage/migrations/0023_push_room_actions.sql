-- Push actions shared by a room's members. For a notifying event in a big
-- room nearly every member gets the same outcome, so the persister writes
-- one room-wide row with that outcome and per-user rows in
-- event_push_actions only for the users whose outcome differs. The
-- room-wide row applies to every local member joined to the room since
-- before the event (current membership's stream ordering below the
-- event's), except the sender and the users with their own row for the
-- event. Rooms where that would not save rows keep per-user rows only.
CREATE TABLE event_push_actions_room (
    event_id         TEXT PRIMARY KEY,
    room_id          TEXT NOT NULL,
    stream_ordering  BIGINT NOT NULL,
    -- 'main' for events outside threads, else the thread root's event id.
    thread_id        TEXT NOT NULL,
    -- the event's sender, who is never notified of their own event
    sender           TEXT NOT NULL,
    highlight        SMALLINT NOT NULL,
    actions          TEXT NOT NULL
);
-- A room's rows after a user's receipt (counts, /notifications, pushers).
CREATE INDEX event_push_actions_room_room ON event_push_actions_room (room_id, stream_ordering);
-- Pruning by age.
CREATE INDEX event_push_actions_room_stream ON event_push_actions_room (stream_ordering);

-- A per-user row now also overrides its event's room-wide row: notify 0
-- says the room-wide outcome does not apply to the user (their rules say
-- dont_notify, or they ignore the sender). Existing rows all notify.
ALTER TABLE event_push_actions ADD COLUMN notify SMALLINT NOT NULL DEFAULT 1;
-- Pruning by age.
CREATE INDEX event_push_actions_stream ON event_push_actions (stream_ordering);
-- A redaction deletes its target's rows.
CREATE INDEX event_push_actions_event ON event_push_actions (event_id);
