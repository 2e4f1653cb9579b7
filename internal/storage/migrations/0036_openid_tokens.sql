-- OpenID tokens (internal/openid): issued to a local user by
-- POST /_matrix/client/v3/user/{userId}/openid/request_token and answered
-- for by GET /_matrix/federation/v1/openid/userinfo until they expire.
-- Only the SHA-256 of a token is kept, like access tokens: a database
-- leak gives nobody a token to present.
CREATE TABLE openid_tokens (
    token_hash  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    expires_ts  BIGINT NOT NULL
);
CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);
