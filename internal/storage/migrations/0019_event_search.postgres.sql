-- Full-text search over message bodies, room names and topics
-- (internal/search), written by the persister in the transaction that
-- stores the event. key is content.body, content.name or content.topic.
CREATE TABLE event_search (
    event_id          TEXT PRIMARY KEY,
    room_id           TEXT NOT NULL,
    sender            TEXT NOT NULL,
    key               TEXT NOT NULL,
    stream_ordering   BIGINT NOT NULL,
    origin_server_ts  BIGINT NOT NULL,
    vector            TSVECTOR NOT NULL
);
CREATE INDEX event_search_fts ON event_search USING GIN (vector);
CREATE INDEX event_search_room_stream ON event_search (room_id, stream_ordering);
