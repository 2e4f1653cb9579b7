// Package openid is Matrix's OpenID token exchange (spec: client-server
// "OpenID", server-server "OpenID"): a local user asks for a token, gives
// it to a third party (an integration manager, a widget), and the third
// party asks this server, over the federation API's userinfo endpoint,
// whose token it is. The token proves nothing else: it is not an access
// token and opens no other endpoint.
package openid

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
)

// DefaultLifetime is how long a token is good for: Synapse's
// openid_token lifetime (an hour).
const DefaultLifetime = time.Hour

// Service issues and checks tokens.
type Service struct {
	db         *storage.DB
	serverName string
	lifetime   time.Duration
	now        func() time.Time
	log        *slog.Logger
}

// Options configure a Service; zero values are the defaults.
type Options struct {
	Lifetime time.Duration
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
}

// New builds the service over the database.
func New(db *storage.DB, serverName string, opts Options, log *slog.Logger) *Service {
	if opts.Lifetime <= 0 {
		opts.Lifetime = DefaultLifetime
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Service{db: db, serverName: serverName, lifetime: opts.Lifetime, now: opts.Now, log: log}
}

func hashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// Issue makes a token for userID, storing only its hash. The user's
// expired tokens are deleted on the way, so the table holds at most the
// tokens of the last lifetime.
func (s *Service) Issue(ctx context.Context, userID string) (token string, lifetime time.Duration, err error) {
	buf := make([]byte, 24)
	if _, err := rand.Read(buf); err != nil {
		return "", 0, fmt.Errorf("make an OpenID token: %w", err)
	}
	token = base64.RawURLEncoding.EncodeToString(buf)
	now := s.now()
	if _, err := s.db.Exec(ctx, `DELETE FROM openid_tokens WHERE user_id = $1 AND expires_ts <= $2`, userID, now.UnixMilli()); err != nil {
		return "", 0, fmt.Errorf("drop expired OpenID tokens of %s: %w", userID, err)
	}
	if _, err := s.db.Exec(ctx, `INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)`,
		hashToken(token), userID, now.Add(s.lifetime).UnixMilli()); err != nil {
		return "", 0, fmt.Errorf("store an OpenID token of %s: %w", userID, err)
	}
	return token, s.lifetime, nil
}

// UserOf returns the user a token was issued to; "" when the token is
// unknown or expired.
func (s *Service) UserOf(ctx context.Context, token string) (string, error) {
	var userID string
	var expires int64
	err := s.db.Reader().QueryRowContext(ctx, `SELECT user_id, expires_ts FROM openid_tokens WHERE token_hash = $1`,
		hashToken(token)).Scan(&userID, &expires)
	if storage.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("look up an OpenID token: %w", err)
	}
	if s.now().UnixMilli() >= expires {
		return "", nil
	}
	return userID, nil
}

// Routes mounts the client endpoint (behind auth, the access token
// check) and the federation userinfo endpoint, which the spec leaves
// without X-Matrix authentication: the third party asking is usually not
// a homeserver.
func (s *Service) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, auth func(accounts.AuthedHandler) mxhttp.HandlerFunc) {
	mux.HandleClient("POST", "/user/{userId}/openid/request_token", srv.Handle(auth(s.requestToken)))
	mux.Handle("GET /_matrix/federation/v1/openid/userinfo", srv.Handle(s.userinfo))
}

// POST /_matrix/client/v3/user/{userId}/openid/request_token
func (s *Service) requestToken(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	userID := r.PathValue("userId")
	if userID != req.UserID {
		return mxhttp.Forbidden("Cannot request OpenID tokens for other users")
	}
	// The body is an empty JSON object; anything but an object is refused
	// as the spec's request body requires one.
	var body map[string]any
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	token, lifetime, err := s.Issue(r.Context(), userID)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{
		"access_token":       token,
		"token_type":         "Bearer",
		"matrix_server_name": s.serverName,
		"expires_in":         int64(lifetime / time.Second),
	})
}

// GET /_matrix/federation/v1/openid/userinfo?access_token=
func (s *Service) userinfo(w http.ResponseWriter, r *http.Request) error {
	token := r.URL.Query().Get("access_token")
	if token == "" {
		return mxhttp.WithCode(http.StatusUnauthorized, "M_MISSING_TOKEN", "Missing access_token")
	}
	userID, err := s.UserOf(r.Context(), token)
	if err != nil {
		return err
	}
	if userID == "" {
		return mxhttp.WithCode(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Access token unknown or expired")
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]string{"sub": userID})
}
