-- A transaction id is scoped to the device AND the endpoint it was used on
-- (spec: "Transaction identifiers"): PUT /send/m.room.message/1 and
-- PUT /redact/$ev/1 are two requests, not a retry of one. txn_scope is
-- the endpoint without room and txn id ("send/<type>", "redact/<event id>").
ALTER TABLE events ADD COLUMN txn_scope TEXT;

-- Rows from before: the scope their endpoint most likely had, so that a
-- client retrying across the upgrade still gets its event back.
UPDATE events SET txn_scope = CASE
    WHEN type = 'm.room.redaction' AND redacts IS NOT NULL THEN 'redact/' || redacts
    ELSE 'send/' || type END
WHERE txn_id IS NOT NULL;

DROP INDEX events_txn;
CREATE UNIQUE INDEX events_txn ON events (sender, sender_device, room_id, txn_scope, txn_id) WHERE txn_id IS NOT NULL;
