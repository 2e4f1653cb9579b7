-- Other servers' signing keys (internal/federation/serverkeys), the cache
-- every worker shares: one row per (server, key id), from the latest
-- answer that listed the key, fetched from the server itself or through a
-- notary. Any process may write (whoever fetched last wins; every answer
-- stored was verified first).
--
-- valid_until_ts is how long the key may verify signatures: for a key of
-- verify_keys the answer's valid_until_ts, capped at seven days after the
-- fetch as the spec asks; for one of old_verify_keys its expired_ts.
-- response_valid_until_ts is the answer's own valid_until_ts, which decides
-- when our notary refetches. key_json is the answer as received (signed by
-- its server, and by the notary that relayed it), served again by our
-- notary with our signature added.
CREATE TABLE server_keys (
    server_name             TEXT NOT NULL,
    key_id                  TEXT NOT NULL,
    verify_key              TEXT NOT NULL,
    valid_until_ts          BIGINT NOT NULL,
    response_valid_until_ts BIGINT NOT NULL,
    added_ts                BIGINT NOT NULL,
    from_server             TEXT NOT NULL,
    key_json                TEXT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);
