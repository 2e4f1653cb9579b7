-- Accounts: users, their devices and access tokens, profiles, and the
-- user-interactive-auth sessions that registration and sensitive account
-- changes go through. UIA sessions live in the database (not memory) so a
-- client may continue a session on another worker.
CREATE TABLE users (
    user_id        TEXT PRIMARY KEY,
    password_hash  TEXT,
    created_ts     BIGINT NOT NULL,
    admin          BOOLEAN NOT NULL DEFAULT FALSE,
    deactivated    BOOLEAN NOT NULL DEFAULT FALSE,
    user_type      TEXT
);

CREATE TABLE profiles (
    user_id      TEXT PRIMARY KEY,
    displayname  TEXT,
    avatar_url   TEXT
);

CREATE TABLE devices (
    user_id       TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    display_name  TEXT,
    created_ts    BIGINT NOT NULL,
    last_seen_ts  BIGINT,
    last_seen_ip  TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- Tokens are stored as SHA-256 hashes: a leaked database does not leak
-- usable credentials.
CREATE TABLE access_tokens (
    token_hash  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    created_ts  BIGINT NOT NULL
);
CREATE INDEX access_tokens_user_device ON access_tokens (user_id, device_id);

CREATE TABLE uia_sessions (
    session_id  TEXT PRIMARY KEY,
    created_ts  BIGINT NOT NULL,
    user_id     TEXT,
    completed   TEXT NOT NULL DEFAULT '[]'
);

-- Nonces for the shared-secret admin registration API; single use.
CREATE TABLE registration_nonces (
    nonce       TEXT PRIMARY KEY,
    created_ts  BIGINT NOT NULL
);
