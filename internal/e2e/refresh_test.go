package e2e_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"ganglion/internal/testutil"
)

// refreshLifetime is the refreshable access token lifetime of the refresh
// test: long enough for a few requests with a fresh token on a loaded
// machine, short enough to wait out.
const refreshLifetime = 6 * time.Second

func withRefreshableLifetime(d time.Duration) configOption {
	return func(cfg map[string]any) { cfg["refreshable_access_token_lifetime"] = d.String() }
}

// refreshResp is POST /refresh's body.
type refreshResp struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	ExpiresInMS  int64  `json:"expires_in_ms"`
}

// refresh calls POST /v3/refresh through c's server (a generic worker on a
// fleet, the front behind a router), without an access token.
func refresh(ctx context.Context, c *mautrix.Client, token string) (*refreshResp, error) {
	var out refreshResp
	anon, err := mautrix.NewClient(c.HomeserverURL.String(), "", "")
	if err != nil {
		return nil, err
	}
	anon.Client = c.Client
	_, err = anon.MakeRequest(ctx, "POST", anon.BuildClientURL("v3", "refresh"), map[string]string{"refresh_token": token}, &out)
	return &out, err
}

// respErr unwraps a mautrix error into the server's Matrix error.
func respErr(t testing.TB, err error) *mautrix.RespError {
	t.Helper()
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.RespError == nil {
		t.Fatalf("error %v is not a Matrix error response", err)
	}
	he.RespError.StatusCode = he.Response.StatusCode
	return he.RespError
}

// wantUnknownToken checks err is 401 M_UNKNOWN_TOKEN with soft_logout as
// given.
func wantUnknownToken(t testing.TB, err error, soft bool, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: succeeded, want 401 M_UNKNOWN_TOKEN", what)
	}
	re := respErr(t, err)
	got, _ := re.ExtraData["soft_logout"].(bool)
	if re.StatusCode != 401 || re.ErrCode != "M_UNKNOWN_TOKEN" || got != soft {
		t.Fatalf("%s: %d %s soft_logout=%v, want 401 M_UNKNOWN_TOKEN soft_logout=%v", what, re.StatusCode, re.ErrCode, got, soft)
	}
}

// TestRefreshTokens: login and register hand out a refresh token and
// expires_in_ms when asked; the access token expires into a soft logout;
// POST /refresh (served by any generic worker) gives a new pair; the old
// refresh token is refused once the new access token was used; logging
// out revokes the refresh token.
func TestRefreshTokens(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		reg, err := srv.client(t, "", "").RegisterDummy(ctx, &mautrix.ReqRegister[any]{
			Username: "alice", Password: password("alice"), RefreshToken: true,
		})
		if err != nil {
			t.Fatalf("register with refresh_token: %v", err)
		}
		if reg.RefreshToken == "" || reg.ExpiresInMS <= 0 || reg.ExpiresInMS > refreshLifetime.Milliseconds() {
			t.Fatalf("register with refresh_token: refresh_token %q, expires_in_ms %d; want both, at most %d",
				reg.RefreshToken, reg.ExpiresInMS, refreshLifetime.Milliseconds())
		}
		plain := srv.mustLogin(t, ctx, "alice", password("alice"))
		if _, err := plain.Whoami(ctx); err != nil {
			t.Fatalf("non-refreshable login: %v", err)
		}

		c := srv.client(t, "", "")
		login, err := c.Login(ctx, &mautrix.ReqLogin{
			Type:       mautrix.AuthTypePassword,
			Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"},
			Password:   password("alice"), RefreshToken: true, StoreCredentials: true,
		})
		if err != nil {
			t.Fatalf("login with refresh_token: %v", err)
		}
		if login.RefreshToken == "" || login.ExpiresInMS <= 0 || login.ExpiresInMS > refreshLifetime.Milliseconds() {
			t.Fatalf("login with refresh_token: refresh_token %q, expires_in_ms %d", login.RefreshToken, login.ExpiresInMS)
		}
		if _, err := c.Whoami(ctx); err != nil {
			t.Fatalf("fresh refreshable token: %v", err)
		}
		// Expiry: a soft logout, on whichever process answers (and its
		// token cache).
		testutil.Eventually(t, refreshLifetime+20*time.Second, "the access token to expire", func() bool {
			_, err := c.Whoami(ctx)
			if err == nil {
				return false
			}
			wantUnknownToken(t, err, true, "expired access token")
			return true
		})
		if _, err := plain.Whoami(ctx); err != nil {
			t.Fatalf("the non-refreshable token expired with the refreshable one: %v", err)
		}

		r1, err := refresh(ctx, c, login.RefreshToken)
		if err != nil {
			t.Fatalf("refresh: %v", err)
		}
		if r1.AccessToken == "" || r1.RefreshToken == "" || r1.RefreshToken == login.RefreshToken ||
			r1.ExpiresInMS <= 0 || r1.ExpiresInMS > refreshLifetime.Milliseconds() {
			t.Fatalf("refresh = %+v", r1)
		}
		c.AccessToken = r1.AccessToken
		who, err := c.Whoami(ctx)
		if err != nil || who.DeviceID != login.DeviceID {
			t.Fatalf("whoami with the refreshed token: %+v, %v; want device %s", who, err, login.DeviceID)
		}
		// The new access token was used: the old refresh token is dead.
		_, err = refresh(ctx, srv.client(t, "", ""), login.RefreshToken)
		wantUnknownToken(t, err, false, "refresh with the superseded refresh token")
		_, err = refresh(ctx, srv.client(t, "", ""), "syr_not_a_token")
		wantUnknownToken(t, err, false, "refresh with an unknown token")

		r2, err := refresh(ctx, srv.client(t, "", ""), r1.RefreshToken)
		if err != nil {
			t.Fatalf("second refresh: %v", err)
		}
		c.AccessToken = r2.AccessToken
		if _, err := c.Logout(ctx); err != nil {
			t.Fatalf("logout: %v", err)
		}
		_, err = refresh(ctx, srv.client(t, "", ""), r2.RefreshToken)
		wantUnknownToken(t, err, false, "refresh after logout")
	}, withRefreshableLifetime(refreshLifetime))
}
