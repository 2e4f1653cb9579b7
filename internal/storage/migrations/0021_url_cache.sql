-- URL preview cache (internal/media), as Synapse's
-- local_media_repository_url_cache: one row per fetch of a URL, kept until
-- expires_ts, when the media background job deletes it. A preview request's
-- ts picks the newest row downloaded at or before it.
CREATE TABLE local_media_repository_url_cache (
    url          TEXT NOT NULL,
    download_ts  BIGINT NOT NULL,
    expires_ts   BIGINT NOT NULL,
    og           TEXT NOT NULL
);
CREATE INDEX local_media_repository_url_cache_by_url ON local_media_repository_url_cache (url, download_ts);
CREATE INDEX local_media_repository_url_cache_expires ON local_media_repository_url_cache (expires_ts);
