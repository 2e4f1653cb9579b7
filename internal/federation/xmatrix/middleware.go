package xmatrix

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"time"
	"unicode/utf8"

	"ganglion/internal/federation/servername"
	"ganglion/internal/mxhttp"
)

// DefaultMaxBody bounds an inbound federation request body when the
// Authenticator sets none: the router's default max_federation_request_size.
const DefaultMaxBody = 10 << 20

// Authenticator authenticates inbound federation requests.
type Authenticator struct {
	// ServerName is ours: a destination naming another server is refused.
	ServerName string
	// Keys finds the origin's verify keys (the keyring).
	Keys VerifyKeyFinder
	// DomainWhitelist is federation_domain_whitelist: when non-nil, only
	// the servers it holds may federate with us.
	DomainWhitelist map[string]bool
	// MaxBody bounds request bodies; 0 means DefaultMaxBody.
	MaxBody int64
	// Now is the clock the keys must be valid at; nil means time.Now.
	Now func() time.Time
	Log *slog.Logger
}

type originKey struct{}

// Origin returns the authenticated origin server of the request whose
// context ctx is, and false for a request that did not pass an
// Authenticator.
func Origin(ctx context.Context) (string, bool) {
	o, ok := ctx.Value(originKey{}).(string)
	return o, ok
}

// WithOrigin returns ctx marked as coming from origin (for tests of
// handlers behind the middleware).
func WithOrigin(ctx context.Context, origin string) context.Context {
	return context.WithValue(ctx, originKey{}, origin)
}

func unauthorized(format string, args ...any) *mxhttp.Error {
	return mxhttp.WithCode(http.StatusUnauthorized, "M_UNAUTHORIZED", format, args...)
}

// Authenticate checks r's X-Matrix authorization and returns the origin.
// It reads the body (PUT and POST must carry a JSON object, which the
// signature covers) and puts it back on r for the handler. Errors are
// *mxhttp.Error with the spec's codes.
func (a *Authenticator) Authenticate(r *http.Request) (string, error) {
	var content json.RawMessage
	if r.Method == http.MethodPut || r.Method == http.MethodPost {
		limit := a.MaxBody
		if limit <= 0 {
			limit = DefaultMaxBody
		}
		body, err := mxhttp.ReadBody(r, limit)
		if err != nil {
			return "", err
		}
		trimmed := bytes.TrimSpace(body)
		if !utf8.Valid(trimmed) || !json.Valid(trimmed) {
			return "", mxhttp.NotJSON("Content not JSON")
		}
		if trimmed[0] != '{' {
			return "", mxhttp.NotJSON("Content must be a JSON object")
		}
		content = trimmed
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
	}

	var p Params
	found := false
	for _, h := range r.Header.Values("Authorization") {
		var err error
		p, err = ParseHeader(h)
		if errors.Is(err, ErrNotXMatrix) {
			continue
		}
		if err != nil {
			return "", unauthorized("Malformed X-Matrix Authorization header: %v", err)
		}
		// The first X-Matrix header is the one checked; a sender has one
		// key per request.
		found = true
		break
	}
	if !found {
		return "", unauthorized("Missing X-Matrix Authorization header")
	}
	if _, err := servername.Parse(p.Origin); err != nil {
		return "", unauthorized("Invalid origin in X-Matrix Authorization header: %v", err)
	}
	if p.Destination != "" && p.Destination != a.ServerName {
		return "", unauthorized("Destination mismatch in X-Matrix Authorization header: this server is %s, not %s",
			a.ServerName, p.Destination)
	}
	// Before any key is fetched: a server we do not federate with should
	// not make us contact it.
	if a.DomainWhitelist != nil && !a.DomainWhitelist[p.Origin] {
		return "", mxhttp.Forbidden("Federation denied with %s", p.Origin)
	}
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	uri := r.RequestURI
	if uri == "" {
		uri = r.URL.RequestURI()
	}
	req := Request{Method: r.Method, URI: uri, Destination: a.ServerName, Content: content}
	if err := Verify(r.Context(), a.Keys, p, req, now().UnixMilli()); err != nil {
		if ctxErr := r.Context().Err(); ctxErr != nil {
			return "", ctxErr
		}
		if a.Log != nil {
			a.Log.Info("refused federation request", "origin", p.Origin, "key", p.Key, "path", r.URL.Path, "err", err)
		}
		if errors.Is(err, ErrBadSignature) {
			return "", unauthorized("Invalid signature for server %s with key %s", p.Origin, p.Key)
		}
		// The cause (an unreachable key server, an expired key) is logged,
		// not sent: it may describe our network.
		return "", unauthorized("Could not find key %s of server %s valid now to verify the request", p.Key, p.Origin)
	}
	return p.Origin, nil
}

// Middleware serves next only for authenticated requests, with the origin
// in the request context (see Origin); others get the error as Matrix JSON.
func (a *Authenticator) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin, err := a.Authenticate(r)
		if err != nil {
			var me *mxhttp.Error
			if !errors.As(err, &me) {
				me = mxhttp.Internal(err)
			}
			mxhttp.WriteError(w, me)
			return
		}
		next.ServeHTTP(w, r.WithContext(WithOrigin(r.Context(), origin)))
	})
}

// Auth is Middleware for handlers that return errors, to be wrapped by
// mxhttp.Server.Handle.
func (a *Authenticator) Auth(h mxhttp.HandlerFunc) mxhttp.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		origin, err := a.Authenticate(r)
		if err != nil {
			return err
		}
		return h(w, r.WithContext(WithOrigin(r.Context(), origin)))
	}
}
