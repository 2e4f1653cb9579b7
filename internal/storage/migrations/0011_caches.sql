-- The caches stream: every process that changes data other processes may
-- hold in memory writes a row here naming the cache and keys to drop
-- (keys NULL = the whole cache). Rows are pruned after a week by the
-- background tasks instance.
CREATE TABLE cache_invalidations (
    stream_id        BIGINT NOT NULL,
    instance_name    TEXT NOT NULL,
    cache_func       TEXT NOT NULL,
    keys             TEXT,
    invalidation_ts  BIGINT NOT NULL,
    PRIMARY KEY (instance_name, stream_id)
);
CREATE INDEX cache_invalidations_ts ON cache_invalidations (invalidation_ts);
