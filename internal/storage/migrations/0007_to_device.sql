-- Send-to-device messages (the to_device stream). A message stays in the
-- recipient device's inbox until that device acknowledges it by syncing
-- with a token past its stream_id: exactly-once delivery survives a client
-- that loses a response and a server restart alike.
--
-- All rows written by one /sendToDevice request share one stream_id; a
-- device receives at most one message per request, so (user_id, device_id,
-- stream_id) is unique and a per-device page boundary is a stream_id.
CREATE TABLE device_inbox (
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    stream_id   BIGINT NOT NULL,
    sender      TEXT NOT NULL,
    type        TEXT NOT NULL,
    content     TEXT NOT NULL,
    -- random per message, for tracing a message through logs (and, later,
    -- federation de-duplication)
    message_id  TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, stream_id)
);
-- Replication catch-up reads the stream by position.
CREATE INDEX device_inbox_stream ON device_inbox (stream_id);

-- Idempotency of /sendToDevice: a transaction id is used once per sending
-- device. created_ts lets old entries be pruned.
CREATE TABLE to_device_txns (
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    txn_id      TEXT NOT NULL,
    created_ts  BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);
CREATE INDEX to_device_txns_created ON to_device_txns (created_ts);
