-- Refresh tokens and expiring access tokens (spec v1.3 "Refreshing access
-- tokens"; Synapse's refreshable_access_token_lifetime,
-- refresh_token_lifetime, nonrefreshable_access_token_lifetime and
-- session_lifetime).
--
-- valid_until_ms: when the access token stops working (NULL: never); a
-- request with it afterwards is a soft logout. refresh_token_hash: the
-- refresh token issued together with it, NULL for a non-refreshable token.
ALTER TABLE access_tokens ADD COLUMN valid_until_ms BIGINT;
ALTER TABLE access_tokens ADD COLUMN refresh_token_hash TEXT;
CREATE INDEX access_tokens_refresh ON access_tokens (refresh_token_hash);

-- Refresh tokens, hashed like access tokens. Using one issues a successor
-- (next_token_hash) and leaves the old one valid until the successor or its
-- access token is first used; then the old row is deleted. Until then a
-- second use of the old one replaces the unused successor (a client that
-- lost the refresh response can try again). expiry_ts comes from
-- refresh_token_lifetime, session_expiry_ts from session_lifetime at login
-- and carries over to successors; NULL means no limit.
CREATE TABLE refresh_tokens (
    token_hash         TEXT PRIMARY KEY,
    user_id            TEXT NOT NULL,
    device_id          TEXT NOT NULL,
    created_ts         BIGINT NOT NULL,
    expiry_ts          BIGINT,
    session_expiry_ts  BIGINT,
    next_token_hash    TEXT
);
CREATE INDEX refresh_tokens_user_device ON refresh_tokens (user_id, device_id);
CREATE INDEX refresh_tokens_next ON refresh_tokens (next_token_hash);
