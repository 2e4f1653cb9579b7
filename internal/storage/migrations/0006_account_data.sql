-- Account data (the account_data stream, tags included as room account data
-- of type m.tag, as Synapse merges them). One row per (user, room, type)
-- holding the latest content; room_id is '' for global account data.
-- stream_id is the account_data stream position of the latest write, so an
-- incremental sync reads the rows with stream_id in (since, now].
-- Deleted entries keep their row with content '{}' so that incremental
-- syncs learn of the deletion; initial syncs and GET skip them.
CREATE TABLE account_data (
    user_id    TEXT NOT NULL,
    room_id    TEXT NOT NULL,
    type       TEXT NOT NULL,
    content    TEXT NOT NULL,
    stream_id  BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_user_stream ON account_data (user_id, stream_id);
-- Replication catch-up reads the stream by position.
CREATE INDEX account_data_stream ON account_data (stream_id);
