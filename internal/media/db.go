package media

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"ganglion/internal/storage"
)

// Media is one row of the media table.
type Media struct {
	ServerName  string
	MediaID     string
	UserID      string
	CreatedTS   int64
	ContentType string
	UploadName  string
	// Uploaded is false for an id reserved by /create whose content has not
	// arrived; Length and SHA256 are then unset.
	Uploaded        bool
	Length          int64
	SHA256          string
	UnusedExpiresAt int64 // ms; 0 when not a pending reservation
	QuarantinedBy   string
	Protected       bool // safe_from_quarantine
	Authenticated   bool
	// LastAccessTS (ms) is when cached remote media was last served; 0
	// for local media.
	LastAccessTS int64
}

// Thumbnail is one row of media_thumbnails.
type Thumbnail struct {
	Width, Height int
	Method        string
	ContentType   string
	Animated      bool
	Length        int64
	SHA256        string
}

// metaStore is the SQL side of the repository.
type metaStore struct {
	db *storage.DB
}

const mediaColumns = `server_name, media_id, COALESCE(user_id, ''), created_ts, COALESCE(content_type, ''),
	COALESCE(upload_name, ''), media_length, COALESCE(sha256, ''), COALESCE(unused_expires_at, 0),
	COALESCE(quarantined_by, ''), safe_from_quarantine, authenticated, COALESCE(last_access_ts, 0)`

func scanMedia(row interface{ Scan(...any) error }) (*Media, error) {
	var m Media
	var length sql.NullInt64
	if err := row.Scan(&m.ServerName, &m.MediaID, &m.UserID, &m.CreatedTS, &m.ContentType, &m.UploadName,
		&length, &m.SHA256, &m.UnusedExpiresAt, &m.QuarantinedBy, &m.Protected, &m.Authenticated, &m.LastAccessTS); err != nil {
		return nil, err
	}
	m.Uploaded, m.Length = length.Valid, length.Int64
	return &m, nil
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// get returns the media row, or nil if there is none.
func (s *metaStore) get(ctx context.Context, server, id string) (*Media, error) {
	m, err := scanMedia(s.db.Reader().QueryRowContext(ctx,
		`SELECT `+mediaColumns+` FROM media WHERE server_name = $1 AND media_id = $2`, server, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load media %s/%s: %w", server, id, err)
	}
	return m, nil
}

// insert stores a complete upload.
func (s *metaStore) insert(ctx context.Context, m *Media) error {
	_, err := s.db.Exec(ctx, `INSERT INTO media (server_name, media_id, user_id, created_ts, content_type, upload_name,
		media_length, sha256, authenticated) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		m.ServerName, m.MediaID, nullable(m.UserID), m.CreatedTS, nullable(m.ContentType), nullable(m.UploadName),
		m.Length, m.SHA256, m.Authenticated)
	if err != nil {
		return fmt.Errorf("insert media %s: %w", m.MediaID, err)
	}
	return nil
}

// errTooManyPending: the user holds max_pending_media_uploads reserved ids.
var errTooManyPending = errors.New("too many pending media uploads")

// reserve records an id handed out by /create, unless the user already
// holds max pending ones that have not expired.
func (s *metaStore) reserve(ctx context.Context, m *Media, max int, now int64) error {
	return s.db.Tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM media WHERE user_id = $1 AND media_length IS NULL
			AND unused_expires_at > $2`, m.UserID, now).Scan(&n); err != nil {
			return fmt.Errorf("count pending media of %s: %w", m.UserID, err)
		}
		if n >= max {
			return errTooManyPending
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO media (server_name, media_id, user_id, created_ts, unused_expires_at,
			authenticated) VALUES ($1, $2, $3, $4, $5, $6)`,
			m.ServerName, m.MediaID, m.UserID, m.CreatedTS, m.UnusedExpiresAt, m.Authenticated)
		if err != nil {
			return fmt.Errorf("reserve media id %s: %w", m.MediaID, err)
		}
		return nil
	})
}

// complete fills in the content of a reserved id; it reports false when the
// id was no longer waiting for content (uploaded meanwhile, or expired and
// pruned).
func (s *metaStore) complete(ctx context.Context, m *Media, now int64) (bool, error) {
	res, err := s.db.Exec(ctx, `UPDATE media SET content_type = $1, upload_name = $2, media_length = $3, sha256 = $4,
		unused_expires_at = NULL
		WHERE server_name = $5 AND media_id = $6 AND user_id = $7 AND media_length IS NULL AND unused_expires_at > $8`,
		nullable(m.ContentType), nullable(m.UploadName), m.Length, m.SHA256, m.ServerName, m.MediaID, m.UserID, now)
	if err != nil {
		return false, fmt.Errorf("complete media %s: %w", m.MediaID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("complete media %s: %w", m.MediaID, err)
	}
	return n == 1, nil
}

func (s *metaStore) thumbnails(ctx context.Context, server, id string) ([]Thumbnail, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT width, height, method, content_type, animated, media_length, sha256
		FROM media_thumbnails WHERE server_name = $1 AND media_id = $2`, server, id)
	if err != nil {
		return nil, fmt.Errorf("load thumbnails of %s/%s: %w", server, id, err)
	}
	defer rows.Close()
	var out []Thumbnail
	for rows.Next() {
		var t Thumbnail
		if err := rows.Scan(&t.Width, &t.Height, &t.Method, &t.ContentType, &t.Animated, &t.Length, &t.SHA256); err != nil {
			return nil, fmt.Errorf("load thumbnails of %s/%s: %w", server, id, err)
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// addThumbnail records a thumbnail; a concurrent generation of the same one
// is not an error (both produced the same content).
func (s *metaStore) addThumbnail(ctx context.Context, server, id string, t Thumbnail) error {
	_, err := s.db.Exec(ctx, `INSERT INTO media_thumbnails (server_name, media_id, width, height, method, content_type,
		animated, media_length, sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		server, id, t.Width, t.Height, t.Method, t.ContentType, t.Animated, t.Length, t.SHA256)
	if err != nil && !storage.IsUniqueViolation(err) {
		return fmt.Errorf("record thumbnail of %s/%s: %w", server, id, err)
	}
	return nil
}

// referenced reports whether any media or thumbnail row names the hash.
func (s *metaStore) referenced(ctx context.Context, sha string) (bool, error) {
	var n int
	err := s.db.Reader().QueryRowContext(ctx, `SELECT
		(SELECT count(*) FROM media WHERE sha256 = $1) + (SELECT count(*) FROM media_thumbnails WHERE sha256 = $1)`,
		sha).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("count references to media %s: %w", sha, err)
	}
	return n > 0, nil
}

// deleteMedia removes the rows of one media item and returns the hashes
// they named (the item's and its thumbnails'), for the store to remove.
func (s *metaStore) deleteMedia(ctx context.Context, server, id string) (hashes []string, found bool, err error) {
	err = s.db.Tx(ctx, func(tx *sql.Tx) error {
		hashes, found = nil, false
		var sha sql.NullString
		err := tx.QueryRowContext(ctx, `SELECT sha256 FROM media WHERE server_name = $1 AND media_id = $2`, server, id).Scan(&sha)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		if sha.Valid {
			hashes = append(hashes, sha.String)
		}
		rows, err := tx.QueryContext(ctx, `SELECT sha256 FROM media_thumbnails WHERE server_name = $1 AND media_id = $2`, server, id)
		if err != nil {
			return err
		}
		for rows.Next() {
			var h string
			if err := rows.Scan(&h); err != nil {
				rows.Close()
				return err
			}
			hashes = append(hashes, h)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM media_thumbnails WHERE server_name = $1 AND media_id = $2`, server, id); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM media WHERE server_name = $1 AND media_id = $2`, server, id)
		return err
	})
	if err != nil {
		return nil, false, fmt.Errorf("delete media %s/%s: %w", server, id, err)
	}
	return hashes, found, nil
}

// expireUnused deletes reservations whose unused_expires_at has passed.
func (s *metaStore) expireUnused(ctx context.Context, now int64) (int64, error) {
	res, err := s.db.Exec(ctx, `DELETE FROM media WHERE media_length IS NULL AND unused_expires_at IS NOT NULL
		AND unused_expires_at <= $1`, now)
	if err != nil {
		return 0, fmt.Errorf("expire unused media ids: %w", err)
	}
	return res.RowsAffected()
}

// listIDs runs a query returning media ids.
func (s *metaStore) listIDs(ctx context.Context, query string, args ...any) ([]string, error) {
	rows, err := s.db.Reader().QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// insertRemote records fetched remote media; it reports false when the
// item was cached meanwhile (by another process).
func (s *metaStore) insertRemote(ctx context.Context, m *Media) (bool, error) {
	res, err := s.db.Exec(ctx, `INSERT INTO media (server_name, media_id, created_ts, content_type, upload_name,
		media_length, sha256, authenticated, last_access_ts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (server_name, media_id) DO NOTHING`,
		m.ServerName, m.MediaID, m.CreatedTS, nullable(m.ContentType), nullable(m.UploadName), m.Length, m.SHA256,
		m.Authenticated, m.LastAccessTS)
	if err != nil {
		return false, fmt.Errorf("insert remote media %s/%s: %w", m.ServerName, m.MediaID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("insert remote media %s/%s: %w", m.ServerName, m.MediaID, err)
	}
	return n == 1, nil
}

// touch records an access to cached remote media.
func (s *metaStore) touch(ctx context.Context, server, id string, now int64) error {
	if _, err := s.db.Exec(ctx, `UPDATE media SET last_access_ts = $1 WHERE server_name = $2 AND media_id = $3`,
		now, server, id); err != nil {
		return fmt.Errorf("record access to media %s/%s: %w", server, id, err)
	}
	return nil
}

// staleRemote lists up to limit cached remote items (server, id) last
// served before beforeMS that the purge may delete.
func (s *metaStore) staleRemote(ctx context.Context, local string, beforeMS int64, limit int) ([][2]string, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT server_name, media_id FROM media
		WHERE last_access_ts IS NOT NULL AND last_access_ts < $1 AND server_name <> $2
		AND quarantined_by IS NULL AND NOT safe_from_quarantine
		ORDER BY last_access_ts LIMIT $3`, beforeMS, local, limit)
	if err != nil {
		return nil, fmt.Errorf("list stale remote media: %w", err)
	}
	defer rows.Close()
	var out [][2]string
	for rows.Next() {
		var k [2]string
		if err := rows.Scan(&k[0], &k[1]); err != nil {
			return nil, fmt.Errorf("list stale remote media: %w", err)
		}
		out = append(out, k)
	}
	return out, rows.Err()
}
