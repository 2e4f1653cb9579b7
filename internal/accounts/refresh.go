package accounts

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/crc32"
	"net/http"
	"time"

	"ganglion/internal/mxhttp"
)

// Lifetimes are the session and token lifetimes (Synapse's keys); zero
// means unlimited, except Refreshable, where zero turns refresh tokens off
// (a login asking for one gets a non-refreshable token, as from a server
// without the feature).
type Lifetimes struct {
	// Session is session_lifetime: no token of a login outlives it.
	Session time.Duration
	// Refreshable is refreshable_access_token_lifetime: how long an access
	// token issued with a refresh token works.
	Refreshable time.Duration
	// RefreshToken is refresh_token_lifetime: how long a refresh token
	// may be used.
	RefreshToken time.Duration
	// NonRefreshable is nonrefreshable_access_token_lifetime.
	NonRefreshable time.Duration
}

// NewRefreshToken returns "syr_<b64 localpart>_<random>_<crc>", shaped like
// access tokens (Synapse's prefix) but never accepted as one: the lookup
// tables differ.
func NewRefreshToken(localpart string) string {
	body := "syr_" + base64.RawURLEncoding.EncodeToString([]byte(localpart)) + "_" + randomString(20, alnum)
	return body + "_" + base62(crc32.ChecksumIEEE([]byte(body)), 6)
}

// issued is what one login or refresh hands out.
type issued struct {
	access, refresh string
	expiresInMS     int64 // 0: the access token does not expire
}

// issueTokensTx stores a new access token for the device and, when
// refreshable (and refresh tokens are on), a refresh token with it.
// sessionEnd (ms, 0 = none) caps every lifetime: it is session_lifetime
// counted from the login, carried over by refreshes.
func (s *Service) issueTokensTx(ctx context.Context, tx *sql.Tx, userID, deviceID string, refreshable bool, sessionEnd int64) (issued, error) {
	local, _, _ := SplitUserID(userID)
	now := s.nowMS()
	capAt := func(ms int64) sql.NullInt64 {
		if sessionEnd > 0 && (ms == 0 || ms > sessionEnd) {
			ms = sessionEnd
		}
		return sql.NullInt64{Int64: ms, Valid: ms > 0}
	}
	after := func(d time.Duration) int64 {
		if d <= 0 {
			return 0
		}
		return now + d.Milliseconds()
	}
	refreshable = refreshable && s.cfg.Lifetimes.Refreshable > 0
	var out issued
	var refreshHash sql.NullString
	var validUntil sql.NullInt64
	if refreshable {
		out.refresh = NewRefreshToken(local)
		refreshHash = sql.NullString{String: HashToken(out.refresh), Valid: true}
		validUntil = capAt(after(s.cfg.Lifetimes.Refreshable))
		_, err := tx.ExecContext(ctx, `INSERT INTO refresh_tokens (token_hash, user_id, device_id, created_ts, expiry_ts, session_expiry_ts)
			VALUES ($1, $2, $3, $4, $5, $6)`, refreshHash.String, userID, deviceID, now,
			capAt(after(s.cfg.Lifetimes.RefreshToken)), sql.NullInt64{Int64: sessionEnd, Valid: sessionEnd > 0})
		if err != nil {
			return issued{}, fmt.Errorf("store refresh token: %w", err)
		}
	} else {
		validUntil = capAt(after(s.cfg.Lifetimes.NonRefreshable))
	}
	out.access = NewAccessToken(local)
	_, err := tx.ExecContext(ctx, `INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts, valid_until_ms, refresh_token_hash)
		VALUES ($1, $2, $3, $4, $5, $6)`, HashToken(out.access), userID, deviceID, now, validUntil, refreshHash)
	if err != nil {
		return issued{}, fmt.Errorf("store access token: %w", err)
	}
	if validUntil.Valid {
		out.expiresInMS = max(validUntil.Int64-now, 0)
	}
	return out, nil
}

// sessionEnd is when a session started now must end (0: never).
func (s *Service) sessionEnd() int64 {
	if s.cfg.Lifetimes.Session <= 0 {
		return 0
	}
	return s.nowMS() + s.cfg.Lifetimes.Session.Milliseconds()
}

// RefreshEnabled reports whether POST /refresh is served.
func (s *Service) RefreshEnabled() bool { return s.cfg.Lifetimes.Refreshable > 0 }

// errRefreshRaced means another refresh of the same token committed first.
var errRefreshRaced = errors.New("refresh token changed concurrently")

// errUnknownRefresh is the spec's answer for a refresh token that is
// unknown, already superseded, or past its lifetime.
func errUnknownRefresh() error {
	e := mxhttp.UnknownToken(false)
	e.Message = "Unknown, used or expired refresh token"
	return e
}

// Refresh exchanges a refresh token for a new access token and a new
// refresh token. The old refresh token stays usable until the new pair is
// first used (so a client that lost this response can retry); using it
// again meanwhile replaces the unused pair.
func (s *Service) Refresh(ctx context.Context, token string) (Session, error) {
	h := HashToken(token)
	for attempt := 0; ; attempt++ {
		sess, replaced, err := s.refreshOnce(ctx, h)
		if errors.Is(err, errRefreshRaced) && attempt < 3 {
			continue
		}
		if err != nil {
			var me *mxhttp.Error
			if errors.As(err, &me) {
				return Session{}, err
			}
			return Session{}, fmt.Errorf("refresh access token: %w", err)
		}
		if replaced {
			// The superseded pair's access token was deleted: drop it from
			// every process's cache.
			s.tokensChanged(ctx, sess.UserID)
		}
		return sess, nil
	}
}

func (s *Service) refreshOnce(ctx context.Context, h string) (Session, bool, error) {
	var sess Session
	replaced := false
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		replaced = false
		var userID, deviceID string
		var expiry, sessionEnd sql.NullInt64
		var next sql.NullString
		var deactivated bool
		err := tx.QueryRowContext(ctx, `SELECT r.user_id, r.device_id, r.expiry_ts, r.session_expiry_ts, r.next_token_hash, u.deactivated
			FROM refresh_tokens r JOIN users u ON u.user_id = r.user_id WHERE r.token_hash = $1`, h).
			Scan(&userID, &deviceID, &expiry, &sessionEnd, &next, &deactivated)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && deactivated) {
			return errUnknownRefresh()
		}
		if err != nil {
			return err
		}
		now := s.nowMS()
		if (expiry.Valid && now >= expiry.Int64) || (sessionEnd.Valid && now >= sessionEnd.Int64) {
			return errUnknownRefresh()
		}
		tokens, err := s.issueTokensTx(ctx, tx, userID, deviceID, true, sessionEnd.Int64)
		if err != nil {
			return err
		}
		// Compare-and-set on the successor: of two concurrent refreshes
		// with one token, exactly one links its pair; the other retries
		// and replaces it.
		res, err := tx.ExecContext(ctx, `UPDATE refresh_tokens SET next_token_hash = $1
			WHERE token_hash = $2 AND COALESCE(next_token_hash, '') = $3`, HashToken(tokens.refresh), h, next.String)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n != 1 {
			return errRefreshRaced
		}
		if next.Valid {
			// The previous successor was never used (using it would have
			// deleted this row): replace it.
			if _, err := tx.ExecContext(ctx, `DELETE FROM access_tokens WHERE refresh_token_hash = $1`, next.String); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM refresh_tokens WHERE token_hash = $1`, next.String); err != nil {
				return err
			}
			replaced = true
		}
		// This token's own predecessor is superseded by its use.
		revoked, err := s.revokePredecessorTx(ctx, tx, h)
		if err != nil {
			return err
		}
		replaced = replaced || revoked
		sess = Session{UserID: userID, DeviceID: deviceID, AccessToken: tokens.access, RefreshToken: tokens.refresh,
			ExpiresInMS: tokens.expiresInMS}
		return nil
	})
	return sess, replaced, err
}

// revokePredecessorTx deletes the refresh token that refreshHash succeeded,
// and the access tokens issued with it: the client has moved on to the
// new pair. It reports whether anything was deleted.
func (s *Service) revokePredecessorTx(ctx context.Context, tx *sql.Tx, refreshHash string) (bool, error) {
	n := int64(0)
	for _, q := range []string{
		`DELETE FROM access_tokens WHERE refresh_token_hash IN
			(SELECT token_hash FROM refresh_tokens WHERE next_token_hash = $1)`,
		`DELETE FROM refresh_tokens WHERE next_token_hash = $1`,
	} {
		res, err := tx.ExecContext(ctx, q, refreshHash)
		if err != nil {
			return false, fmt.Errorf("revoke superseded refresh token: %w", err)
		}
		m, err := res.RowsAffected()
		if err != nil {
			return false, fmt.Errorf("revoke superseded refresh token: %w", err)
		}
		n += m
	}
	return n > 0, nil
}

// firstUse is called when an access token issued with refreshHash is read
// from the database while a predecessor refresh token still exists: the
// first use of the new pair revokes the old one.
func (s *Service) firstUse(ctx context.Context, userID, refreshHash string) error {
	revoked := false
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		var err error
		revoked, err = s.revokePredecessorTx(ctx, tx, refreshHash)
		return err
	})
	if err != nil {
		return err
	}
	if revoked {
		s.tokensChanged(ctx, userID)
	}
	return nil
}

func (h *handlers) refresh(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.RefreshToken == "" {
		return mxhttp.MissingParam("Missing refresh_token")
	}
	sess, err := h.s.Refresh(r.Context(), body.RefreshToken)
	if err != nil {
		return err
	}
	out := map[string]any{"access_token": sess.AccessToken, "refresh_token": sess.RefreshToken}
	if sess.ExpiresInMS > 0 {
		out["expires_in_ms"] = sess.ExpiresInMS
	}
	return mxhttp.WriteJSON(w, 200, out)
}
