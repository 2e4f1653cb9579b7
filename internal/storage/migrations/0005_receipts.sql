-- Receipts: the latest receipt per (room, type, user, thread). A newer
-- receipt for the same key replaces the row and takes a new stream_id, so
-- the table is both the current state and the stream: rows with stream_id
-- in (from, to] are what changed in that window (superseded versions are
-- gone, which readers never need: each row replaces the previous one).
CREATE TABLE receipts (
    room_id                TEXT NOT NULL,
    receipt_type           TEXT NOT NULL,
    user_id                TEXT NOT NULL,
    -- '' for an unthreaded receipt, else "main" or a thread root's event id
    -- (threaded and unthreaded receipts of a user coexist).
    thread_id              TEXT NOT NULL DEFAULT '',
    event_id               TEXT NOT NULL,
    -- The event's position in the events stream when it is known locally:
    -- receipts only move forward, and comparing this in the upsert keeps
    -- that true under concurrent writes without reading events again.
    event_stream_ordering  BIGINT,
    -- The receipt body as JSON text, e.g. {"ts":1700000000000}.
    data                   TEXT NOT NULL,
    stream_id              BIGINT NOT NULL,
    -- The receipts writer that wrote the row (multi-writer stream).
    instance_name          TEXT NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_room_stream ON receipts (room_id, stream_id);
CREATE INDEX receipts_stream ON receipts (stream_id);
