-- Database locks (internal/locks): a duty that must not run twice across
-- the fleet holds the row for (lock_name, lock_key). The holder renews
-- last_renewed_ts periodically; a row not renewed for a whole lease is stale
-- and another instance may take it over, so a crashed holder never blocks
-- the duty for longer than the lease. token identifies one acquisition:
-- renewals and releases match on it, so a holder whose lock was taken over
-- can never renew or delete the new holder's row.
CREATE TABLE worker_locks (
    lock_name        TEXT NOT NULL,
    lock_key         TEXT NOT NULL,
    instance_name    TEXT NOT NULL,
    token            TEXT NOT NULL,
    last_renewed_ts  BIGINT NOT NULL,
    PRIMARY KEY (lock_name, lock_key)
);
