// Package voip serves GET /voip/turnServer: the TURN servers a client may
// use for calls and credentials for them, as Synapse does.
package voip

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"net/http"
	"strconv"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// Settings are the turn_* config keys.
type Settings struct {
	URIs []string
	// SharedSecret, when set, derives time-limited credentials (the TURN
	// REST API scheme of coturn's use-auth-secret); otherwise Username and
	// Password are handed out as they are.
	SharedSecret string
	Username     string
	Password     string
	Lifetime     time.Duration
}

// Credentials is the turnServer response.
type Credentials struct {
	Username string   `json:"username"`
	Password string   `json:"password"`
	URIs     []string `json:"uris"`
	TTL      int64    `json:"ttl"`
}

// Credentials returns what userID gets at now, or nil when TURN is not
// configured (no URIs, or neither a secret nor a static account), which
// the endpoint answers with {} as Synapse does.
func (s Settings) Credentials(userID string, now time.Time) *Credentials {
	if len(s.URIs) == 0 {
		return nil
	}
	c := &Credentials{URIs: s.URIs, TTL: int64(s.Lifetime / time.Second)}
	switch {
	case s.SharedSecret != "":
		// The TURN server recomputes the password from the username and
		// refuses it after the expiry it names (seconds since the epoch).
		expiry := now.Add(s.Lifetime).Unix()
		c.Username = strconv.FormatInt(expiry, 10) + ":" + userID
		mac := hmac.New(sha1.New, []byte(s.SharedSecret))
		mac.Write([]byte(c.Username))
		c.Password = base64.StdEncoding.EncodeToString(mac.Sum(nil))
	case s.Username != "" && s.Password != "":
		c.Username, c.Password = s.Username, s.Password
	default:
		return nil
	}
	return c
}

// Routes registers GET /voip/turnServer.
func Routes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service, s Settings, now func() time.Time) {
	mux.HandleClient("GET", "/voip/turnServer", srv.Handle(acc.Auth(func(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
		c := s.Credentials(req.UserID, now())
		if c == nil {
			return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
		}
		return mxhttp.WriteJSON(w, http.StatusOK, c)
	})))
}
