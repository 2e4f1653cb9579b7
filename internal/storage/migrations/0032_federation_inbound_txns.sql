-- Inbound federation transactions (internal/federation/inbound, PUT
-- /_matrix/federation/v1/send/{txnId}). A server retries a transaction
-- until it gets a 200, under the same txn id; the answer of the first
-- attempt is kept here so a retry is answered without processing the
-- PDUs and EDUs again, whichever worker it reaches. A row with a NULL
-- response is a claim: a worker is processing the transaction since
-- claimed_ts (a claim older than the processing deadline was abandoned
-- and may be taken over). Rows older than a day are pruned: a sender
-- does not retry a transaction that long.
CREATE TABLE federation_inbound_txns (
    origin      TEXT NOT NULL,
    txn_id      TEXT NOT NULL,
    claimed_ts  BIGINT NOT NULL,
    response    TEXT,
    PRIMARY KEY (origin, txn_id)
);

CREATE INDEX federation_inbound_txns_claimed ON federation_inbound_txns (claimed_ts);
