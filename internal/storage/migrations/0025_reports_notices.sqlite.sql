-- Content reports (POST /rooms/{roomId}/report/{eventId} and
-- /rooms/{roomId}/report), read by the admin API
-- /_synapse/admin/v1/event_reports; and the server notices room of each
-- user (internal/notices).

CREATE TABLE event_reports (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ts  BIGINT NOT NULL,
    room_id      TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    reason       TEXT,
    score        BIGINT,
    content      TEXT NOT NULL
);
CREATE INDEX event_reports_user ON event_reports (user_id);
CREATE INDEX event_reports_room ON event_reports (room_id);

CREATE TABLE room_reports (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ts  BIGINT NOT NULL,
    room_id      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    reason       TEXT NOT NULL
);

-- One notices room per user, created on the first notice; the system user
-- is its only other member.
CREATE TABLE server_notices_rooms (
    user_id  TEXT PRIMARY KEY,
    room_id  TEXT NOT NULL
);
CREATE INDEX server_notices_rooms_room ON server_notices_rooms (room_id);
