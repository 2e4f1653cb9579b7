package accounts

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"

	"ganglion/internal/mxhttp"
	"ganglion/internal/ratelimit"
	"ganglion/internal/storage"
)

// Registration tokens (spec: "Token-authenticated registration"; admin
// API: Synapse's /_synapse/admin/v1/registration_tokens). A token's uses
// are counted as in Synapse: pending is the number of registration
// sessions that passed the m.login.registration_token stage and have not
// created their account yet, completed the number that did. A token is
// valid while pending + completed < uses_allowed and it has not expired.

// StageRegistrationToken is the UIA stage of token-authenticated
// registration.
const StageRegistrationToken = "m.login.registration_token"

// tokenChars are the characters a token may have (Synapse's, the spec's
// [A-Za-z0-9._~-]), and maxTokenLen its longest.
const (
	tokenChars  = alnum + "._~-"
	maxTokenLen = 64
)

var validToken = regexp.MustCompile(`^[A-Za-z0-9._~-]{1,64}$`)

// RegistrationToken is a token as the admin API shows it.
type RegistrationToken struct {
	Token       string `json:"token"`
	UsesAllowed *int64 `json:"uses_allowed"`
	Pending     int64  `json:"pending"`
	Completed   int64  `json:"completed"`
	ExpiryTime  *int64 `json:"expiry_time"`
}

// tokenValidSQL is the validity condition on a registration_tokens row,
// with now the placeholder of the current time, shared by every check so
// they agree.
func tokenValidSQL(now string) string {
	return `(uses_allowed IS NULL OR pending + completed < uses_allowed) AND (expiry_time IS NULL OR expiry_time > ` + now + `)`
}

// RegistrationTokenValid reports whether token could be used now.
func (s *Service) RegistrationTokenValid(ctx context.Context, token string) (bool, error) {
	var one int
	err := s.db.Reader().QueryRowContext(ctx, `SELECT 1 FROM registration_tokens WHERE token = $1 AND `+tokenValidSQL("$2"),
		token, s.nowMS()).Scan(&one)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("check registration token: %w", err)
	}
	return true, nil
}

var errInvalidToken = mxhttp.WithCode(http.StatusUnauthorized, "M_UNAUTHORIZED", "Invalid registration token")

// holdRegistrationToken is the m.login.registration_token stage: in one
// transaction, the session takes a pending use of the token, which must be
// valid at that moment. The conditional UPDATE is what keeps a token from
// being over-used: on PostgreSQL a second transaction waiting on the row
// re-checks the condition against the first one's committed counts, and
// SQLite has one writer. A session that already holds this token passes
// again without taking a second use.
func (s *Service) holdRegistrationToken(ctx context.Context, sessionID, token string) error {
	if token == "" {
		return mxhttp.MissingParam("Missing token")
	}
	if !validToken.MatchString(token) {
		return errInvalidToken
	}
	return s.db.Tx(ctx, func(tx *sql.Tx) error {
		var held sql.NullString
		err := tx.QueryRowContext(ctx, `SELECT registration_token FROM uia_sessions WHERE session_id = $1`, sessionID).Scan(&held)
		if errors.Is(err, sql.ErrNoRows) {
			return mxhttp.WithCode(http.StatusBadRequest, "M_UNKNOWN", "Unknown or expired UIA session")
		}
		if err != nil {
			return fmt.Errorf("load UIA session: %w", err)
		}
		if held.Valid {
			if held.String == token {
				return nil
			}
			return mxhttp.WithCode(http.StatusUnauthorized, "M_UNAUTHORIZED", "This session already used another registration token")
		}
		res, err := tx.ExecContext(ctx, `UPDATE uia_sessions SET registration_token = $1 WHERE session_id = $2 AND registration_token IS NULL`,
			token, sessionID)
		if err != nil {
			return fmt.Errorf("record registration token: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return mxhttp.WithCode(http.StatusUnauthorized, "M_UNAUTHORIZED", "This session already used another registration token")
		}
		res, err = tx.ExecContext(ctx, `UPDATE registration_tokens SET pending = pending + 1 WHERE token = $1 AND `+tokenValidSQL("$2"),
			token, s.nowMS())
		if err != nil {
			return fmt.Errorf("take registration token use: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return errInvalidToken
		}
		return nil
	})
}

// errSessionUsed answers a second registration with one completed
// session that held a token: its use went to the first.
var errSessionUsed = mxhttp.WithCode(http.StatusUnauthorized, "M_UNAUTHORIZED", "This registration session was already used")

// completeRegistrationTokenTx runs in the transaction that creates the
// account: the session is consumed and its pending use becomes a
// completed one, so an account exists exactly when its use is counted.
func completeRegistrationTokenTx(ctx context.Context, tx *sql.Tx, sessionID string) error {
	var token sql.NullString
	err := tx.QueryRowContext(ctx, `DELETE FROM uia_sessions WHERE session_id = $1 RETURNING registration_token`, sessionID).Scan(&token)
	if errors.Is(err, sql.ErrNoRows) {
		return errSessionUsed
	}
	if err != nil {
		return fmt.Errorf("consume UIA session: %w", err)
	}
	if !token.Valid {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `UPDATE registration_tokens SET pending = pending - 1, completed = completed + 1
		WHERE token = $1 AND pending > 0`, token.String); err != nil {
		return fmt.Errorf("complete registration token use: %w", err)
	}
	return nil
}

// expireUIASessionsTx deletes sessions older than cutoff and gives back
// the pending token uses they held. DELETE … RETURNING makes each
// session's use given back once, by whichever process deleted it.
func expireUIASessionsTx(ctx context.Context, tx *sql.Tx, cutoff int64) error {
	rows, err := tx.QueryContext(ctx, `DELETE FROM uia_sessions WHERE created_ts < $1 RETURNING registration_token`, cutoff)
	if err != nil {
		return err
	}
	var tokens []string
	for rows.Next() {
		var t sql.NullString
		if err := rows.Scan(&t); err != nil {
			rows.Close()
			return err
		}
		if t.Valid {
			tokens = append(tokens, t.String)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, t := range tokens {
		if _, err := tx.ExecContext(ctx, `UPDATE registration_tokens SET pending = pending - 1 WHERE token = $1 AND pending > 0`, t); err != nil {
			return fmt.Errorf("give back registration token use: %w", err)
		}
	}
	return nil
}

// sessionHoldsToken reports whether a UIA session holds a token use.
func (s *Service) sessionHoldsToken(ctx context.Context, sessionID string) (bool, error) {
	var t sql.NullString
	err := s.db.Reader().QueryRowContext(ctx, `SELECT registration_token FROM uia_sessions WHERE session_id = $1`, sessionID).Scan(&t)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("load UIA session: %w", err)
	}
	return t.Valid, nil
}

// validity serves GET /_matrix/client/v1/register/m.login.registration_token/validity.
func (h *handlers) tokenValidity(lim *ratelimit.Limiter) mxhttp.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if lim != nil {
			if err := limit(lim, ClientIP(r)); err != nil {
				return err
			}
		}
		if !h.s.cfg.EnableRegistration {
			return mxhttp.Forbidden("Registration is disabled")
		}
		token, ok := r.URL.Query()["token"]
		if !ok || len(token) == 0 {
			return mxhttp.MissingParam("Missing token")
		}
		valid := false
		if validToken.MatchString(token[0]) {
			var err error
			if valid, err = h.s.RegistrationTokenValid(r.Context(), token[0]); err != nil {
				return err
			}
		}
		return mxhttp.WriteJSON(w, http.StatusOK, map[string]bool{"valid": valid})
	}
}

// The admin API.

func (h *handlers) adminTokenRoutes(mux *mxhttp.Mux, srv *mxhttp.Server) {
	a := func(f AuthedHandler) http.Handler {
		return srv.Handle(h.s.Auth(func(w http.ResponseWriter, r *http.Request, req *Requester) error {
			if !req.Admin {
				return mxhttp.Forbidden("You are not a server admin")
			}
			return f(w, r, req)
		}))
	}
	const p = "/_synapse/admin/v1/registration_tokens"
	mux.Handle("GET "+p, a(h.listTokens))
	mux.Handle("POST "+p+"/new", a(h.newToken))
	mux.Handle("GET "+p+"/{token}", a(h.getToken))
	mux.Handle("PUT "+p+"/{token}", a(h.updateToken))
	mux.Handle("DELETE "+p+"/{token}", a(h.deleteToken))
}

const tokenColumns = `token, uses_allowed, pending, completed, expiry_time`

func scanToken(sc interface{ Scan(...any) error }) (RegistrationToken, error) {
	var t RegistrationToken
	var uses, expiry sql.NullInt64
	if err := sc.Scan(&t.Token, &uses, &t.Pending, &t.Completed, &expiry); err != nil {
		return t, err
	}
	if uses.Valid {
		t.UsesAllowed = &uses.Int64
	}
	if expiry.Valid {
		t.ExpiryTime = &expiry.Int64
	}
	return t, nil
}

func (h *handlers) listTokens(w http.ResponseWriter, r *http.Request, _ *Requester) error {
	q := `SELECT ` + tokenColumns + ` FROM registration_tokens`
	args := []any{}
	switch v := r.URL.Query().Get("valid"); v {
	case "":
	case "true", "false":
		q += ` WHERE `
		if v == "false" {
			q += `NOT `
		}
		q += `(` + tokenValidSQL("$1") + `)`
		args = append(args, h.s.nowMS())
	default:
		return mxhttp.InvalidParam("valid must be true or false")
	}
	rows, err := h.s.db.Reader().QueryContext(r.Context(), q+` ORDER BY token`, args...)
	if err != nil {
		return fmt.Errorf("list registration tokens: %w", err)
	}
	defer rows.Close()
	out := []RegistrationToken{}
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return fmt.Errorf("list registration tokens: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list registration tokens: %w", err)
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"registration_tokens": out})
}

func (h *handlers) loadToken(ctx context.Context, q storage.Querier, token string) (*RegistrationToken, error) {
	t, err := scanToken(q.QueryRowContext(ctx, `SELECT `+tokenColumns+` FROM registration_tokens WHERE token = $1`, token))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, mxhttp.NotFound("No such registration token: %s", token)
	}
	if err != nil {
		return nil, fmt.Errorf("load registration token: %w", err)
	}
	return &t, nil
}

func (h *handlers) getToken(w http.ResponseWriter, r *http.Request, _ *Requester) error {
	t, err := h.loadToken(r.Context(), h.s.db.Reader(), r.PathValue("token"))
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, t)
}

// optionalInt reads an admin API field that may be absent, null or a
// non-negative integer (JSON booleans and fractions are refused, as
// Synapse's isinstance(x, int) checks do).
func optionalInt(body map[string]json.RawMessage, key string) (present bool, v *int64, err error) {
	raw, ok := body[key]
	if !ok {
		return false, nil, nil
	}
	if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return true, nil, nil
	}
	n, perr := strconv.ParseInt(string(bytes.TrimSpace(raw)), 10, 64)
	if perr != nil || n < 0 {
		return true, nil, mxhttp.InvalidParam("%s must be a non-negative integer or null", key)
	}
	return true, &n, nil
}

// tokenLimits reads uses_allowed and expiry_time, shared by new and update.
func (h *handlers) tokenLimits(body map[string]json.RawMessage) (usesSet bool, uses *int64, expirySet bool, expiry *int64, err error) {
	if usesSet, uses, err = optionalInt(body, "uses_allowed"); err != nil {
		return
	}
	if expirySet, expiry, err = optionalInt(body, "expiry_time"); err != nil {
		return
	}
	if expiry != nil && *expiry < h.s.nowMS() {
		err = mxhttp.InvalidParam("expiry_time must not be in the past")
	}
	return
}

func decodeObject(r *http.Request) (map[string]json.RawMessage, error) {
	raw, err := mxhttp.ReadBody(r, mxhttp.DefaultMaxBody)
	if err != nil {
		return nil, err
	}
	body := map[string]json.RawMessage{}
	if len(bytes.TrimSpace(raw)) == 0 {
		return body, nil
	}
	if err := mxhttp.DecodeJSONBytes(r, raw, &body); err != nil {
		return nil, err
	}
	return body, nil
}

func (h *handlers) newToken(w http.ResponseWriter, r *http.Request, _ *Requester) error {
	body, err := decodeObject(r)
	if err != nil {
		return err
	}
	_, uses, _, expiry, err := h.tokenLimits(body)
	if err != nil {
		return err
	}
	var token string
	if raw, ok := body["token"]; ok {
		if err := json.Unmarshal(raw, &token); err != nil || !validToken.MatchString(token) {
			return mxhttp.InvalidParam("token must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '~' and '-'")
		}
	}
	// length only matters for a generated token; with token it is
	// ignored, as Synapse does.
	length := int64(16)
	if token == "" {
		if _, l, err := optionalInt(body, "length"); err != nil {
			return mxhttp.InvalidParam("length must be an integer between 1 and %d", maxTokenLen)
		} else if l != nil {
			if *l < 1 || *l > maxTokenLen {
				return mxhttp.InvalidParam("length must be an integer between 1 and %d", maxTokenLen)
			}
			length = *l
		}
	}
	generated := token == ""
	for attempt := 0; ; attempt++ {
		if generated {
			token = randomString(int(length), tokenChars)
		}
		_, err := h.s.db.Exec(r.Context(), `INSERT INTO registration_tokens (token, uses_allowed, pending, completed, expiry_time)
			VALUES ($1, $2, 0, 0, $3)`, token, uses, expiry)
		if err == nil {
			break
		}
		if !storage.IsUniqueViolation(err) {
			return fmt.Errorf("create registration token: %w", err)
		}
		if !generated {
			return mxhttp.InvalidParam("Token already in use")
		}
		if attempt == 5 {
			// Short generated tokens can run out; say so rather than loop.
			return mxhttp.InvalidParam("Could not generate an unused token of length %d", length)
		}
	}
	return mxhttp.WriteJSON(w, http.StatusOK, RegistrationToken{Token: token, UsesAllowed: uses, ExpiryTime: expiry})
}

func (h *handlers) updateToken(w http.ResponseWriter, r *http.Request, _ *Requester) error {
	body, err := decodeObject(r)
	if err != nil {
		return err
	}
	usesSet, uses, expirySet, expiry, err := h.tokenLimits(body)
	if err != nil {
		return err
	}
	token := r.PathValue("token")
	var out *RegistrationToken
	err = h.s.db.Tx(r.Context(), func(tx *sql.Tx) error {
		if usesSet {
			if _, err := tx.ExecContext(r.Context(), `UPDATE registration_tokens SET uses_allowed = $1 WHERE token = $2`, uses, token); err != nil {
				return fmt.Errorf("update registration token: %w", err)
			}
		}
		if expirySet {
			if _, err := tx.ExecContext(r.Context(), `UPDATE registration_tokens SET expiry_time = $1 WHERE token = $2`, expiry, token); err != nil {
				return fmt.Errorf("update registration token: %w", err)
			}
		}
		var err error
		out, err = h.loadToken(r.Context(), tx, token)
		return err
	})
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, out)
}

func (h *handlers) deleteToken(w http.ResponseWriter, r *http.Request, _ *Requester) error {
	token := r.PathValue("token")
	res, err := h.s.db.Exec(r.Context(), `DELETE FROM registration_tokens WHERE token = $1`, token)
	if err != nil {
		return fmt.Errorf("delete registration token: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return mxhttp.NotFound("No such registration token: %s", token)
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}
