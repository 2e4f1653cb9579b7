-- Outbound federation (internal/federation/sender). Each federation sender
-- follows the events stream and, in one transaction, queues the local
-- events for the destinations of its shard and records how far it read;
-- a destination's queue is emptied only when the destination acknowledged
-- a transaction, so an event acknowledged to a client reaches every server
-- in its room even if the sender is killed (Synapse loses these: #14924).

-- How far each sender instance has read the events stream.
CREATE TABLE federation_sender_positions (
    instance_name  TEXT PRIMARY KEY,
    stream_id      BIGINT NOT NULL
);

-- Events waiting for a destination, oldest first.
CREATE TABLE federation_outbox (
    destination      TEXT NOT NULL,
    stream_ordering  BIGINT NOT NULL,
    event_id         TEXT NOT NULL,
    PRIMARY KEY (destination, stream_ordering)
);

-- Retry state per destination (absent: healthy). retry_interval_ms is the
-- current backoff; the next attempt is due at retry_last_ts + interval.
CREATE TABLE federation_destinations (
    destination        TEXT PRIMARY KEY,
    failure_ts         BIGINT,
    retry_last_ts      BIGINT NOT NULL,
    retry_interval_ms  BIGINT NOT NULL
);
