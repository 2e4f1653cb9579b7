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

-- One row per stream; last_value is the last id handed out, so the first id
-- is 1 as with a PostgreSQL sequence. Later migrations add the rows of later
-- streams. The counter is updated inside the writer's transaction, so ids of
-- rolled-back transactions are reused and commits are in id order.
CREATE TABLE stream_sequences (
    name TEXT NOT NULL PRIMARY KEY,
    last_value BIGINT NOT NULL
);

INSERT INTO stream_sequences (name, last_value) VALUES ('events', 0);
