-- Stream positions and id allocation. The engines differ only in how ids
-- are allocated: PostgreSQL has sequences, SQLite a counter table updated by
-- its single writer.

-- How far each writer instance has persisted each stream: every id up to
-- stream_id that this instance allocated is committed.
CREATE TABLE stream_positions (
    stream_name TEXT NOT NULL,
    instance_name TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (stream_name, instance_name)
);

-- One sequence per stream, named <stream>_stream_seq; later migrations add
-- the sequences of later streams. nextval is not transactional, so ids from
-- rolled-back transactions leave gaps and commits may land out of id order.
CREATE SEQUENCE events_stream_seq;
