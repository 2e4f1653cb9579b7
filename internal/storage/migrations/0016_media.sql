-- Media repository (internal/media). File contents live in the media store,
-- addressed by their SHA-256; these tables hold what the store cannot: who
-- uploaded what under which id, and the moderation flags.
--
-- A row with media_length NULL is an id reserved by POST /create (MSC2246)
-- whose content has not been uploaded; unused_expires_at (ms) is when the
-- reservation lapses. server_name is ours for local media; the column is
-- there so cached remote media can share the table once federation exists.
CREATE TABLE media (
    server_name           TEXT NOT NULL,
    media_id              TEXT NOT NULL,
    user_id               TEXT,
    created_ts            BIGINT NOT NULL,
    content_type          TEXT,
    upload_name           TEXT,
    media_length          BIGINT,
    sha256                TEXT,
    unused_expires_at     BIGINT,
    quarantined_by        TEXT,
    safe_from_quarantine  BOOLEAN NOT NULL DEFAULT FALSE,
    -- uploaded while enable_authenticated_media was on: never served by the
    -- legacy unauthenticated download and thumbnail endpoints.
    authenticated         BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (server_name, media_id)
);
CREATE INDEX media_user ON media (user_id, created_ts);
CREATE INDEX media_sha256 ON media (sha256);
CREATE INDEX media_created ON media (created_ts);
CREATE INDEX media_unused ON media (unused_expires_at) WHERE unused_expires_at IS NOT NULL;

-- Thumbnails of a media item; their content is in the store by sha256 too.
CREATE TABLE media_thumbnails (
    server_name   TEXT NOT NULL,
    media_id      TEXT NOT NULL,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    method        TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    animated      BOOLEAN NOT NULL DEFAULT FALSE,
    media_length  BIGINT NOT NULL,
    sha256        TEXT NOT NULL,
    PRIMARY KEY (server_name, media_id, width, height, method, content_type, animated)
);
CREATE INDEX media_thumbnails_sha256 ON media_thumbnails (sha256);
