-- Full-text search over message bodies, room names and topics
-- (internal/search), written by the persister in the transaction that
-- stores the event. key is content.body, content.name or content.topic.
-- The FTS5 table holds the text; its rowid is the event's stream_ordering,
-- which joins it to event_search.
CREATE TABLE event_search (
    stream_ordering   INTEGER PRIMARY KEY,
    event_id          TEXT NOT NULL UNIQUE,
    room_id           TEXT NOT NULL,
    sender            TEXT NOT NULL,
    key               TEXT NOT NULL,
    origin_server_ts  BIGINT NOT NULL
);
CREATE INDEX event_search_room_stream ON event_search (room_id, stream_ordering);
CREATE VIRTUAL TABLE event_search_fts USING fts5(value, tokenize = 'porter unicode61');
