package accounts_test

import (
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTimedService(t *testing.T, db *storage.DB, l accounts.Lifetimes) (*accounts.Service, *clock) {
	s := accounts.NewService(db, accounts.Settings{ServerName: "acc.test", EnableRegistration: true,
		RegistrationWithoutVerify: true, BcryptRounds: 4, Lifetimes: l}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	c := &clock{t: time.Now()}
	accounts.SetClock(s, c.now)
	return s, c
}

// softLogout returns whether err is M_UNKNOWN_TOKEN and its soft_logout.
func softLogout(t *testing.T, err error) bool {
	t.Helper()
	var me *mxhttp.Error
	if !errors.As(err, &me) || me.Code != "M_UNKNOWN_TOKEN" || me.Status != 401 {
		t.Fatalf("error = %v, want 401 M_UNKNOWN_TOKEN", err)
	}
	soft, _ := me.Body()["soft_logout"].(bool)
	return soft
}

// TestRefreshTokens: a refreshable access token expires into a soft
// logout; a refresh token gives a new pair; the old refresh token works
// until the new pair is used (a retry replaces the unused pair), then it
// and its access token are revoked; refresh_token_lifetime ends a refresh
// token; logging the device out revokes its refresh tokens.
func TestRefreshTokens(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		s, clk := newTimedService(t, db, accounts.Lifetimes{Refreshable: time.Minute, RefreshToken: 10 * time.Minute})
		s0, err := s.Register(ctx, accounts.NewUser{Localpart: "alice", Password: "pw", RefreshToken: true})
		if err != nil {
			t.Fatal(err)
		}
		if s0.RefreshToken == "" || s0.ExpiresInMS != 60000 {
			t.Fatalf("register with refresh_token: %+v, want a refresh token and expires_in_ms 60000", s0)
		}
		if _, err := s.Authenticate(ctx, s0.RefreshToken); err == nil {
			t.Fatalf("a refresh token authenticated as an access token")
		}
		if _, err := s.Authenticate(ctx, s0.AccessToken); err != nil {
			t.Fatalf("fresh token: %v", err)
		}
		clk.advance(time.Minute)
		if _, err := s.Authenticate(ctx, s0.AccessToken); !softLogout(t, err) {
			t.Fatalf("expired access token: soft_logout false, want true")
		}

		s1, err := s.Refresh(ctx, s0.RefreshToken)
		if err != nil {
			t.Fatal(err)
		}
		// The client lost s1 and retries: the unused pair is replaced.
		s2, err := s.Refresh(ctx, s0.RefreshToken)
		if err != nil {
			t.Fatalf("retry with the unused-successor refresh token: %v", err)
		}
		if s2.UserID != s0.UserID || s2.DeviceID != s0.DeviceID || s2.ExpiresInMS != 60000 || s2.AccessToken == s1.AccessToken || s2.RefreshToken == s1.RefreshToken {
			t.Fatalf("refresh = %+v after %+v", s2, s1)
		}
		if _, err := s.Authenticate(ctx, s1.AccessToken); softLogout(t, err) {
			t.Fatalf("replaced access token: soft_logout true, want false")
		}
		if _, err := s.Refresh(ctx, s1.RefreshToken); softLogout(t, err) {
			t.Fatalf("replaced refresh token: soft_logout true")
		}
		// Using the new access token revokes the old refresh token.
		if req, err := s.Authenticate(ctx, s2.AccessToken); err != nil || req.DeviceID != s0.DeviceID {
			t.Fatalf("refreshed token: %+v %v", req, err)
		}
		if _, err := s.Refresh(ctx, s0.RefreshToken); softLogout(t, err) {
			t.Fatalf("superseded refresh token: soft_logout true")
		}
		// Refreshing again: the old pair stays until the new one is used,
		// then both old tokens are gone.
		s3, err := s.Refresh(ctx, s2.RefreshToken)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, s2.AccessToken); err != nil {
			t.Fatalf("previous access token before the new one is used: %v", err)
		}
		if _, err := s.Authenticate(ctx, s3.AccessToken); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, s2.AccessToken); softLogout(t, err) {
			t.Fatalf("superseded access token: soft_logout true")
		}
		// A refresh token is itself "using" its pair: refreshing with s3's
		// token before its access token is used revokes nothing wrongly.
		clk.advance(10 * time.Minute)
		if _, err := s.Refresh(ctx, s3.RefreshToken); softLogout(t, err) {
			t.Fatalf("expired refresh token: soft_logout true")
		}

		// Logging out revokes the device's refresh tokens.
		l, err := s.CreateSession(ctx, s0.UserID, "", "laptop", true)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteDevices(ctx, l.UserID, []string{l.DeviceID}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Refresh(ctx, l.RefreshToken); softLogout(t, err) {
			t.Fatalf("refresh token of a deleted device: soft_logout true")
		}
		if _, err := s.Refresh(ctx, "syr_bogus"); softLogout(t, err) {
			t.Fatalf("bogus refresh token: soft_logout true")
		}
	})
}

// TestTokenLifetimes: session_lifetime caps refreshed tokens and ends the
// session; nonrefreshable_access_token_lifetime expires plain logins; with
// refresh tokens off a login asking for one gets a plain token.
func TestTokenLifetimes(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		s, clk := newTimedService(t, db, accounts.Lifetimes{Refreshable: 2 * time.Minute, RefreshToken: 2 * time.Minute,
			Session: 3 * time.Minute, NonRefreshable: 150 * time.Second})
		s0, err := s.Register(ctx, accounts.NewUser{Localpart: "bob", Password: "pw", RefreshToken: true})
		if err != nil {
			t.Fatal(err)
		}
		clk.advance(119 * time.Second)
		s1, err := s.Refresh(ctx, s0.RefreshToken)
		if err != nil {
			t.Fatal(err)
		}
		if s1.ExpiresInMS != 61000 {
			t.Fatalf("refreshed near the session's end: expires_in_ms %d, want 61000", s1.ExpiresInMS)
		}
		clk.advance(61 * time.Second)
		if _, err := s.Refresh(ctx, s1.RefreshToken); softLogout(t, err) {
			t.Fatalf("refresh after session_lifetime: soft_logout true")
		}
		if _, err := s.Authenticate(ctx, s1.AccessToken); !softLogout(t, err) {
			t.Fatalf("access token after session_lifetime: soft_logout false")
		}

		plain, err := s.CreateSession(ctx, s0.UserID, "", "", false)
		if err != nil {
			t.Fatal(err)
		}
		if plain.RefreshToken != "" || plain.ExpiresInMS != 150000 {
			t.Fatalf("non-refreshable login = %+v, want no refresh token, expires_in_ms 150000", plain)
		}
		clk.advance(149 * time.Second)
		if _, err := s.Authenticate(ctx, plain.AccessToken); err != nil {
			t.Fatalf("non-refreshable token before its lifetime: %v", err)
		}
		clk.advance(time.Second)
		if _, err := s.Authenticate(ctx, plain.AccessToken); !softLogout(t, err) {
			t.Fatalf("non-refreshable token after its lifetime: soft_logout false")
		}

		off, _ := newTimedService(t, db, accounts.Lifetimes{})
		o, err := off.CreateSession(ctx, s0.UserID, "", "", true)
		if err != nil {
			t.Fatal(err)
		}
		if o.RefreshToken != "" || o.ExpiresInMS != 0 {
			t.Fatalf("refresh tokens off: %+v, want a plain non-expiring token", o)
		}
	})
}
