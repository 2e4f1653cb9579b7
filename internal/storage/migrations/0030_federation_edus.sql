-- EDUs in outbound federation (internal/federation/sender). The durable
-- ones (receipts, device list updates, to-device messages) wait here per
-- destination until the destination acknowledged a transaction carrying
-- them, like the PDUs of federation_outbox. Receipts and device list
-- updates are queued by the sender together with its position on their
-- stream; to-device messages to remote users are queued by the to_device
-- writer in the transaction of the client's send. Typing and presence are
-- volatile and never stored.
--
-- An EDU is keyed by the stream row it came from (stream_id) and its
-- place among that row's EDUs for the destination (seq).
CREATE TABLE federation_edu_outbox (
    destination  TEXT NOT NULL,
    stream_name  TEXT NOT NULL,
    stream_id    BIGINT NOT NULL,
    seq          INTEGER NOT NULL,
    edu_type     TEXT NOT NULL,
    content      TEXT NOT NULL,
    PRIMARY KEY (destination, stream_name, stream_id, seq)
);
-- The sender finds the destinations of new to-device messages by stream id.
CREATE INDEX federation_edu_outbox_stream ON federation_edu_outbox (stream_name, stream_id);

-- How far each sender instance has read each EDU stream it queues from.
CREATE TABLE federation_sender_stream_positions (
    instance_name  TEXT NOT NULL,
    stream_name    TEXT NOT NULL,
    stream_id      BIGINT NOT NULL,
    PRIMARY KEY (instance_name, stream_name)
);

-- The last device list update id sent to each destination for each local
-- user: the prev_id of the next one.
CREATE TABLE federation_device_list_sent (
    destination  TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    stream_id    BIGINT NOT NULL,
    PRIMARY KEY (destination, user_id)
);
