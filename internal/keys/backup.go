package keys

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
)

// Server-side key backup (/room_keys). Versions are numbered per user and
// never reused: a deleted version keeps its row, marked deleted. Keys are
// written only to the user's current (latest live) version.

// BackupVersion is a backup version as GET /room_keys/version shows it.
type BackupVersion struct {
	Algorithm string          `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Count     int             `json:"count"`
	ETag      string          `json:"etag"`
	Version   string          `json:"version"`
}

// KeyBackupData is one backed-up session.
type KeyBackupData struct {
	FirstMessageIndex int64           `json:"first_message_index"`
	ForwardedCount    int64           `json:"forwarded_count"`
	IsVerified        bool            `json:"is_verified"`
	SessionData       json.RawMessage `json:"session_data"`
}

// check validates a session's fields (all required, session_data an object).
func (k *KeyBackupData) check() error {
	var obj map[string]json.RawMessage
	if json.Unmarshal(k.SessionData, &obj) != nil || obj == nil {
		return mxhttp.BadJSON("session_data must be an object")
	}
	if k.FirstMessageIndex < 0 || k.ForwardedCount < 0 {
		return mxhttp.BadJSON("first_message_index and forwarded_count must not be negative")
	}
	return nil
}

func (k *KeyBackupData) UnmarshalJSON(b []byte) error {
	var v struct {
		FirstMessageIndex *int64          `json:"first_message_index"`
		ForwardedCount    *int64          `json:"forwarded_count"`
		IsVerified        *bool           `json:"is_verified"`
		SessionData       json.RawMessage `json:"session_data"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	if v.FirstMessageIndex == nil || v.ForwardedCount == nil || v.IsVerified == nil || v.SessionData == nil {
		return fmt.Errorf("first_message_index, forwarded_count, is_verified and session_data are required")
	}
	*k = KeyBackupData{FirstMessageIndex: *v.FirstMessageIndex, ForwardedCount: *v.ForwardedCount,
		IsVerified: *v.IsVerified, SessionData: v.SessionData}
	return nil
}

func errNoBackup() error { return mxhttp.NotFound("No backup found") }

// parseVersion reads a version id; anything not a positive integer names
// no version (404, as for an unknown one).
func parseVersion(s string) (int64, bool) {
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil && v > 0
}

// currentVersion is the user's latest live version (0 if none).
func currentVersion(ctx context.Context, q storage.Querier, userID string) (int64, error) {
	var v int64
	err := q.QueryRowContext(ctx, `SELECT version FROM e2e_room_keys_versions WHERE user_id = $1 AND NOT deleted
		ORDER BY version DESC LIMIT 1`, userID).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("current backup version of %s: %w", userID, err)
	}
	return v, nil
}

// CreateBackupVersion makes a new current version.
func (s *Service) CreateBackupVersion(ctx context.Context, userID, algorithm string, authData json.RawMessage) (int64, error) {
	var v int64
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		err = s.db.Tx(ctx, func(tx *sql.Tx) error {
			if err := tx.QueryRowContext(ctx, `SELECT COALESCE(max(version), 0) + 1 FROM e2e_room_keys_versions WHERE user_id = $1`,
				userID).Scan(&v); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO e2e_room_keys_versions (user_id, version, algorithm, auth_data, etag, deleted)
				VALUES ($1, $2, $3, $4, 0, FALSE)`, userID, v, algorithm, string(authData))
			return err
		})
		// Two creations at once pick the same number; the loser retries.
		if err == nil || !storage.IsUniqueViolation(err) {
			break
		}
	}
	if err != nil {
		return 0, fmt.Errorf("create backup version for %s: %w", userID, err)
	}
	return v, nil
}

// BackupVersionInfo returns a live version (0: the current one), or nil.
func (s *Service) BackupVersionInfo(ctx context.Context, userID string, version int64) (*BackupVersion, error) {
	q := s.db.Reader()
	if version == 0 {
		var err error
		if version, err = currentVersion(ctx, q, userID); err != nil || version == 0 {
			return nil, err
		}
	}
	var b BackupVersion
	var auth string
	var etag int64
	err := q.QueryRowContext(ctx, `SELECT algorithm, auth_data, etag FROM e2e_room_keys_versions
		WHERE user_id = $1 AND version = $2 AND NOT deleted`, userID, version).Scan(&b.Algorithm, &auth, &etag)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("backup version %d of %s: %w", version, userID, err)
	}
	if err := q.QueryRowContext(ctx, `SELECT count(*) FROM e2e_room_keys WHERE user_id = $1 AND version = $2`,
		userID, version).Scan(&b.Count); err != nil {
		return nil, fmt.Errorf("count backed-up keys of %s: %w", userID, err)
	}
	b.AuthData, b.ETag, b.Version = json.RawMessage(auth), strconv.FormatInt(etag, 10), strconv.FormatInt(version, 10)
	return &b, nil
}

// UpdateBackupVersion replaces a live version's auth_data; the algorithm
// cannot change.
func (s *Service) UpdateBackupVersion(ctx context.Context, userID string, version int64, algorithm string, authData json.RawMessage) error {
	return s.db.Tx(ctx, func(tx *sql.Tx) error {
		var alg string
		err := tx.QueryRowContext(ctx, `SELECT algorithm FROM e2e_room_keys_versions WHERE user_id = $1 AND version = $2 AND NOT deleted`,
			userID, version).Scan(&alg)
		if errors.Is(err, sql.ErrNoRows) {
			return errNoBackup()
		}
		if err != nil {
			return fmt.Errorf("backup version %d of %s: %w", version, userID, err)
		}
		if alg != algorithm {
			return mxhttp.InvalidParam("algorithm does not match the backup's (%s)", alg)
		}
		_, err = tx.ExecContext(ctx, `UPDATE e2e_room_keys_versions SET auth_data = $3 WHERE user_id = $1 AND version = $2`,
			userID, version, string(authData))
		return err
	})
}

// DeleteBackupVersion deletes a live version and its keys.
func (s *Service) DeleteBackupVersion(ctx context.Context, userID string, version int64) error {
	return s.db.Tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE e2e_room_keys_versions SET deleted = TRUE WHERE user_id = $1 AND version = $2 AND NOT deleted`,
			userID, version)
		if err != nil {
			return fmt.Errorf("delete backup version %d of %s: %w", version, userID, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return errNoBackup()
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2`, userID, version)
		return err
	})
}

// writableVersion checks, inside tx, that version is the user's current one:
// 404 when the user has no backup, 403 M_WRONG_ROOM_KEYS_VERSION otherwise.
func writableVersion(ctx context.Context, tx *sql.Tx, userID string, version int64) error {
	cur, err := currentVersion(ctx, tx, userID)
	if err != nil {
		return err
	}
	if cur == 0 {
		return errNoBackup()
	}
	if cur != version {
		return &mxhttp.Error{Status: http.StatusForbidden, Code: "M_WRONG_ROOM_KEYS_VERSION",
			Message: "Wrong backup version", Extra: map[string]any{"current_version": strconv.FormatInt(cur, 10)}}
	}
	return nil
}

// BackupResult is the answer to a key upload or deletion.
type BackupResult struct {
	ETag  string `json:"etag"`
	Count int    `json:"count"`
}

// PutBackupKeys stores sessions (room → session → data) in the current
// version. An existing session is replaced only by a better one: verified
// beats unverified, then a lower first_message_index, then (equal index) a
// lower forwarded_count. The etag changes when anything was stored.
func (s *Service) PutBackupKeys(ctx context.Context, userID string, version int64, keys map[string]map[string]KeyBackupData) (*BackupResult, error) {
	for _, sessions := range keys {
		for _, k := range sessions {
			if err := k.check(); err != nil {
				return nil, err
			}
		}
	}
	var res BackupResult
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		if err := writableVersion(ctx, tx, userID, version); err != nil {
			return err
		}
		changed := false
		for roomID, sessions := range keys {
			for sessionID, k := range sessions {
				r, err := tx.ExecContext(ctx, `INSERT INTO e2e_room_keys (user_id, version, room_id, session_id,
					first_message_index, forwarded_count, is_verified, session_data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
					ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET
						first_message_index = excluded.first_message_index, forwarded_count = excluded.forwarded_count,
						is_verified = excluded.is_verified, session_data = excluded.session_data
					WHERE (excluded.is_verified AND NOT e2e_room_keys.is_verified)
						OR (excluded.is_verified = e2e_room_keys.is_verified AND (
							excluded.first_message_index < e2e_room_keys.first_message_index
							OR (excluded.first_message_index = e2e_room_keys.first_message_index
								AND excluded.forwarded_count < e2e_room_keys.forwarded_count)))`,
					userID, version, roomID, sessionID, k.FirstMessageIndex, k.ForwardedCount, k.IsVerified, string(k.SessionData))
				if err != nil {
					return fmt.Errorf("store backed-up session %s: %w", sessionID, err)
				}
				if n, _ := r.RowsAffected(); n > 0 {
					changed = true
				}
			}
		}
		return finishBackupWrite(ctx, tx, userID, version, changed, &res)
	})
	if err != nil {
		return nil, err
	}
	return &res, nil
}

// finishBackupWrite bumps the etag if anything changed and reads the
// version's etag and count.
func finishBackupWrite(ctx context.Context, tx *sql.Tx, userID string, version int64, changed bool, res *BackupResult) error {
	if changed {
		if _, err := tx.ExecContext(ctx, `UPDATE e2e_room_keys_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2`,
			userID, version); err != nil {
			return fmt.Errorf("bump backup etag: %w", err)
		}
	}
	var etag int64
	if err := tx.QueryRowContext(ctx, `SELECT etag FROM e2e_room_keys_versions WHERE user_id = $1 AND version = $2`,
		userID, version).Scan(&etag); err != nil {
		return fmt.Errorf("read backup etag: %w", err)
	}
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM e2e_room_keys WHERE user_id = $1 AND version = $2`,
		userID, version).Scan(&res.Count); err != nil {
		return fmt.Errorf("count backed-up keys: %w", err)
	}
	res.ETag = strconv.FormatInt(etag, 10)
	return nil
}

// existingVersion checks that version is a live version of the user (404
// otherwise); reads and deletions may address older live versions.
func existingVersion(ctx context.Context, q storage.Querier, userID string, version int64) error {
	var one int
	err := q.QueryRowContext(ctx, `SELECT 1 FROM e2e_room_keys_versions WHERE user_id = $1 AND version = $2 AND NOT deleted`,
		userID, version).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return errNoBackup()
	}
	return err
}

// GetBackupKeys reads a version's sessions, narrowed to a room and a
// session when given.
func (s *Service) GetBackupKeys(ctx context.Context, userID string, version int64, roomID, sessionID string) (map[string]map[string]KeyBackupData, error) {
	q := s.db.Reader()
	if err := existingVersion(ctx, q, userID, version); err != nil {
		return nil, err
	}
	query := `SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data FROM e2e_room_keys
		WHERE user_id = $1 AND version = $2`
	args := []any{userID, version}
	if roomID != "" {
		query += ` AND room_id = $3`
		args = append(args, roomID)
		if sessionID != "" {
			query += ` AND session_id = $4`
			args = append(args, sessionID)
		}
	}
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("read backed-up keys of %s: %w", userID, err)
	}
	defer rows.Close()
	out := map[string]map[string]KeyBackupData{}
	for rows.Next() {
		var room, session, data string
		var k KeyBackupData
		if err := rows.Scan(&room, &session, &k.FirstMessageIndex, &k.ForwardedCount, &k.IsVerified, &data); err != nil {
			return nil, fmt.Errorf("read backed-up keys of %s: %w", userID, err)
		}
		k.SessionData = json.RawMessage(data)
		if out[room] == nil {
			out[room] = map[string]KeyBackupData{}
		}
		out[room][session] = k
	}
	return out, rows.Err()
}

// DeleteBackupKeys deletes a version's sessions, narrowed to a room and a
// session when given.
func (s *Service) DeleteBackupKeys(ctx context.Context, userID string, version int64, roomID, sessionID string) (*BackupResult, error) {
	var res BackupResult
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		if err := existingVersion(ctx, tx, userID, version); err != nil {
			return err
		}
		query := `DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2`
		args := []any{userID, version}
		if roomID != "" {
			query += ` AND room_id = $3`
			args = append(args, roomID)
			if sessionID != "" {
				query += ` AND session_id = $4`
				args = append(args, sessionID)
			}
		}
		r, err := tx.ExecContext(ctx, query, args...)
		if err != nil {
			return fmt.Errorf("delete backed-up keys of %s: %w", userID, err)
		}
		n, _ := r.RowsAffected()
		return finishBackupWrite(ctx, tx, userID, version, n > 0, &res)
	})
	if err != nil {
		return nil, err
	}
	return &res, nil
}

// backupRoutes registers /room_keys.
func (s *Service) backupRoutes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	mux.HandleClient("POST", "/room_keys/version", srv.Handle(acc.Auth(s.createVersion)))
	mux.HandleClient("GET", "/room_keys/version", srv.Handle(acc.Auth(s.getVersion)))
	mux.HandleClient("GET", "/room_keys/version/{version}", srv.Handle(acc.Auth(s.getVersion)))
	mux.HandleClient("PUT", "/room_keys/version/{version}", srv.Handle(acc.Auth(s.updateVersion)))
	mux.HandleClient("DELETE", "/room_keys/version/{version}", srv.Handle(acc.Auth(s.deleteVersion)))
	for _, p := range []string{"/room_keys/keys", "/room_keys/keys/{roomId}", "/room_keys/keys/{roomId}/{sessionId}"} {
		mux.HandleClient("GET", p, srv.Handle(acc.Auth(s.getKeys)))
		mux.HandleClient("PUT", p, srv.Handle(acc.Auth(s.putKeys)))
		mux.HandleClient("DELETE", p, srv.Handle(acc.Auth(s.deleteKeys)))
	}
}

type versionBody struct {
	Algorithm string          `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Version   *string         `json:"version"`
}

func (b *versionBody) check() error {
	if b.Algorithm == "" {
		return mxhttp.MissingParam("Missing algorithm")
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(b.AuthData, &obj) != nil || obj == nil {
		return mxhttp.BadJSON("auth_data must be an object")
	}
	return nil
}

func (s *Service) createVersion(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body versionBody
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if err := body.check(); err != nil {
		return err
	}
	v, err := s.CreateBackupVersion(r.Context(), req.UserID, body.Algorithm, body.AuthData)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]string{"version": strconv.FormatInt(v, 10)})
}

// pathVersion reads {version} from the path; 0 when absent (the current
// version). An invalid one names no backup.
func pathVersion(r *http.Request) (int64, error) {
	s := r.PathValue("version")
	if s == "" {
		return 0, nil
	}
	v, ok := parseVersion(s)
	if !ok {
		return 0, errNoBackup()
	}
	return v, nil
}

func (s *Service) getVersion(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	v, err := pathVersion(r)
	if err != nil {
		return err
	}
	b, err := s.BackupVersionInfo(r.Context(), req.UserID, v)
	if err != nil {
		return err
	}
	if b == nil {
		return errNoBackup()
	}
	return mxhttp.WriteJSON(w, http.StatusOK, b)
}

func (s *Service) updateVersion(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	v, err := pathVersion(r)
	if err != nil {
		return err
	}
	var body versionBody
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if err := body.check(); err != nil {
		return err
	}
	if body.Version != nil && *body.Version != r.PathValue("version") {
		return mxhttp.InvalidParam("version in the body does not match the path")
	}
	if err := s.UpdateBackupVersion(r.Context(), req.UserID, v, body.Algorithm, body.AuthData); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}

func (s *Service) deleteVersion(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	v, err := pathVersion(r)
	if err != nil {
		return err
	}
	if err := s.DeleteBackupVersion(r.Context(), req.UserID, v); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}

// queryVersion reads the required ?version= of the keys endpoints.
func queryVersion(r *http.Request) (int64, error) {
	s := r.URL.Query().Get("version")
	if s == "" {
		return 0, mxhttp.MissingParam("Missing version")
	}
	v, ok := parseVersion(s)
	if !ok {
		return 0, errNoBackup()
	}
	return v, nil
}

func (s *Service) getKeys(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	v, err := queryVersion(r)
	if err != nil {
		return err
	}
	roomID, sessionID := r.PathValue("roomId"), r.PathValue("sessionId")
	keys, err := s.GetBackupKeys(r.Context(), req.UserID, v, roomID, sessionID)
	if err != nil {
		return err
	}
	switch {
	case sessionID != "":
		k, ok := keys[roomID][sessionID]
		if !ok {
			return mxhttp.NotFound("No room_keys found")
		}
		return mxhttp.WriteJSON(w, http.StatusOK, k)
	case roomID != "":
		sessions := keys[roomID]
		if sessions == nil {
			sessions = map[string]KeyBackupData{}
		}
		return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"sessions": sessions})
	}
	out := map[string]any{}
	for room, sessions := range keys {
		out[room] = map[string]any{"sessions": sessions}
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"rooms": out})
}

func (s *Service) putKeys(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	v, err := queryVersion(r)
	if err != nil {
		return err
	}
	roomID, sessionID := r.PathValue("roomId"), r.PathValue("sessionId")
	keys := map[string]map[string]KeyBackupData{}
	switch {
	case sessionID != "":
		var k KeyBackupData
		if err := mxhttp.DecodeJSON(r, &k); err != nil {
			return err
		}
		keys[roomID] = map[string]KeyBackupData{sessionID: k}
	case roomID != "":
		var body struct {
			Sessions map[string]KeyBackupData `json:"sessions"`
		}
		if err := mxhttp.DecodeJSON(r, &body); err != nil {
			return err
		}
		if body.Sessions == nil {
			return mxhttp.BadJSON("sessions must be an object")
		}
		keys[roomID] = body.Sessions
	default:
		var body struct {
			Rooms map[string]*struct {
				Sessions map[string]KeyBackupData `json:"sessions"`
			} `json:"rooms"`
		}
		if err := mxhttp.DecodeJSON(r, &body); err != nil {
			return err
		}
		if body.Rooms == nil {
			return mxhttp.BadJSON("rooms must be an object")
		}
		for room, rb := range body.Rooms {
			if rb == nil || rb.Sessions == nil {
				return mxhttp.BadJSON("rooms.%s.sessions must be an object", room)
			}
			keys[room] = rb.Sessions
		}
	}
	res, err := s.PutBackupKeys(r.Context(), req.UserID, v, keys)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, res)
}

func (s *Service) deleteKeys(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	v, err := queryVersion(r)
	if err != nil {
		return err
	}
	res, err := s.DeleteBackupKeys(r.Context(), req.UserID, v, r.PathValue("roomId"), r.PathValue("sessionId"))
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, res)
}
