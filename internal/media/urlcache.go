package media

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// urlCacheFor is how long a fetched preview is served from the cache, as
// Synapse's default when the page says nothing (one hour).
const urlCacheFor = time.Hour

// cachedPreview returns the cached preview of url for the time ts (ms): the
// newest fetch at or before ts, or failing that the oldest after it, as
// Synapse picks; nil when there is none or it had expired by ts.
func (s *metaStore) cachedPreview(ctx context.Context, url string, ts int64) (map[string]any, error) {
	var og string
	var expires int64
	err := s.db.Reader().QueryRowContext(ctx, `SELECT og, expires_ts FROM local_media_repository_url_cache
		WHERE url = $1 AND download_ts <= $2 ORDER BY download_ts DESC LIMIT 1`, url, ts).Scan(&og, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		err = s.db.Reader().QueryRowContext(ctx, `SELECT og, expires_ts FROM local_media_repository_url_cache
			WHERE url = $1 AND download_ts > $2 ORDER BY download_ts ASC LIMIT 1`, url, ts).Scan(&og, &expires)
	}
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read URL preview cache: %w", err)
	}
	if expires <= ts {
		return nil, nil
	}
	out := map[string]any{}
	if err := json.Unmarshal([]byte(og), &out); err != nil {
		return nil, fmt.Errorf("decode cached preview of %s: %w", url, err)
	}
	return out, nil
}

// cachePreview stores a fetched preview.
func (s *metaStore) cachePreview(ctx context.Context, url string, og map[string]any, now, expires int64) error {
	b, err := json.Marshal(og)
	if err != nil {
		return fmt.Errorf("encode preview of %s: %w", url, err)
	}
	if _, err := s.db.Exec(ctx, `INSERT INTO local_media_repository_url_cache (url, download_ts, expires_ts, og)
		VALUES ($1, $2, $3, $4)`, url, now, expires, string(b)); err != nil {
		return fmt.Errorf("cache preview of %s: %w", url, err)
	}
	return nil
}

// ExpireURLCache deletes cached previews past their expiry (a media
// background job).
func (s *Service) ExpireURLCache(ctx context.Context) error {
	res, err := s.meta.db.Exec(ctx, `DELETE FROM local_media_repository_url_cache WHERE expires_ts <= $1`, s.nowMS())
	if err != nil {
		return fmt.Errorf("expire URL preview cache: %w", err)
	}
	if n, _ := res.RowsAffected(); n > 0 {
		s.log.Info("expired cached URL previews", "count", n)
	}
	return nil
}
