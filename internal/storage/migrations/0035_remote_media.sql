-- Remote media cache (internal/media). Media of other servers is cached in
-- the media and media_thumbnails tables, under the remote server name,
-- with its content in the media store like local media.
--
-- last_access_ts (ms) is when cached remote media was last served; the
-- media_retention.remote_media_lifetime job purges what was not served
-- for that long. It stays NULL for local media.
ALTER TABLE media ADD COLUMN last_access_ts BIGINT;
CREATE INDEX media_last_access ON media (last_access_ts) WHERE last_access_ts IS NOT NULL;
