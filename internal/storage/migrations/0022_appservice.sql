-- Application services (internal/appservice). One instance (the one
-- notify_appservices_from_worker names) follows the events stream and
-- writes, in one transaction, the transactions for every service and how
-- far it has read; only then are they sent. A transaction is deleted once
-- its service acknowledged it, so after a crash the same txn id is sent
-- again with the same body.

-- How far the notifier has read each stream it follows ('events', …).
CREATE TABLE appservice_stream_positions (
    stream_name  TEXT PRIMARY KEY,
    stream_id    BIGINT NOT NULL
);

-- Transactions not yet acknowledged, per service, in txn_id order.
CREATE TABLE appservice_txns (
    as_id    TEXT NOT NULL,
    txn_id   BIGINT NOT NULL,
    body     TEXT NOT NULL,
    PRIMARY KEY (as_id, txn_id)
);

-- The last txn_id allocated per service (txn ids are never reused, even
-- after the queue drained).
CREATE TABLE appservice_last_txn (
    as_id    TEXT PRIMARY KEY,
    txn_id   BIGINT NOT NULL
);
