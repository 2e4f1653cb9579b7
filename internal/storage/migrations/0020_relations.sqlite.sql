-- Relations between events (spec: "Forming relationships between events"):
-- one row per event whose content has an m.relates_to with an event_id and
-- a rel_type, written by the persister in the event's own transaction.
-- /relations, /threads and the bundled aggregations of served events read
-- it; a redaction deletes its target's row (a redacted event relates to
-- nothing).
CREATE TABLE event_relations (
    event_id          TEXT PRIMARY KEY,
    relates_to_id     TEXT NOT NULL,
    rel_type          TEXT NOT NULL,
    aggregation_key   TEXT,
    type              TEXT NOT NULL,
    sender            TEXT NOT NULL,
    room_id           TEXT NOT NULL,
    stream_ordering   BIGINT NOT NULL,
    origin_server_ts  BIGINT NOT NULL
);
-- Children of one event, by position: /relations pages and aggregations.
CREATE INDEX event_relations_parent ON event_relations (relates_to_id, rel_type, stream_ordering);
-- A room's threads by their latest reply (/threads).
CREATE INDEX event_relations_room ON event_relations (room_id, rel_type, stream_ordering);

-- Events stored before this table existed.
INSERT INTO event_relations (event_id, relates_to_id, rel_type, aggregation_key, type, sender, room_id, stream_ordering, origin_server_ts)
SELECT e.event_id,
       json_extract(e.json, '$.content."m.relates_to".event_id'),
       json_extract(e.json, '$.content."m.relates_to".rel_type'),
       CASE WHEN json_type(e.json, '$.content."m.relates_to".key') = 'text'
            THEN json_extract(e.json, '$.content."m.relates_to".key') END,
       e.type, e.sender, e.room_id, e.stream_ordering, e.origin_server_ts
FROM events e
WHERE e.json LIKE '%m.relates_to%'
  AND json_type(e.json, '$.content."m.relates_to".event_id') = 'text'
  AND json_type(e.json, '$.content."m.relates_to".rel_type') = 'text'
  AND NOT EXISTS (SELECT 1 FROM redactions r WHERE r.redacts = e.event_id);
