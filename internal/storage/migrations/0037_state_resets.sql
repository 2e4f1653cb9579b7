-- Positions at which a room's current state changed by more than the
-- event there (the state a join through another server brings, a resolved
-- fork). Sync sends those entries with the state before a timeline; this
-- small index lets it know which rooms have any without scanning the
-- state log, at start-up or per request.
CREATE TABLE state_resets (
    room_id          TEXT NOT NULL,
    stream_ordering  BIGINT NOT NULL,
    PRIMARY KEY (room_id, stream_ordering)
);
