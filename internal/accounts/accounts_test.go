package accounts_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/ratelimit"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

func newService(t *testing.T, db *storage.DB) *accounts.Service {
	return accounts.NewService(db, accounts.Settings{ServerName: "acc.test", EnableRegistration: true,
		RegistrationWithoutVerify: true, BcryptRounds: 4}, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func errcode(err error) string {
	var me *mxhttp.Error
	if errors.As(err, &me) {
		return me.Code
	}
	return ""
}

func TestRegisterLoginAndTokens(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		s := newService(t, db)
		sess, err := s.Register(ctx, accounts.NewUser{Localpart: "alice", Password: "pw1", DeviceName: "phone"})
		if err != nil {
			t.Fatal(err)
		}
		if sess.UserID != "@alice:acc.test" || sess.AccessToken == "" || sess.DeviceID == "" {
			t.Fatalf("session = %+v", sess)
		}
		if local, ok := accounts.TokenLocalpart(sess.AccessToken); !ok || local != "alice" {
			t.Fatalf("token localpart = %q %v", local, ok)
		}
		if _, err := s.Register(ctx, accounts.NewUser{Localpart: "alice", Password: "x"}); errcode(err) != "M_USER_IN_USE" {
			t.Fatalf("duplicate register: %v", err)
		}
		if _, err := s.Register(ctx, accounts.NewUser{Localpart: "Bad Name"}); errcode(err) != "M_INVALID_USERNAME" {
			t.Fatalf("invalid username: %v", err)
		}
		req, err := s.Authenticate(ctx, sess.AccessToken)
		if err != nil || req.UserID != sess.UserID || req.DeviceID != sess.DeviceID {
			t.Fatalf("authenticate = %+v, %v", req, err)
		}
		// Tokens are stored hashed: the raw token is nowhere in the table.
		var n int
		if err := db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM access_tokens WHERE token_hash = $1`, sess.AccessToken).Scan(&n); err != nil || n != 0 {
			t.Fatalf("raw token stored: %d %v", n, err)
		}
		var hash string
		if err := db.Reader().QueryRowContext(ctx, `SELECT password_hash FROM users WHERE user_id = $1`, sess.UserID).Scan(&hash); err != nil || !strings.HasPrefix(hash, "$2") {
			t.Fatalf("password not bcrypt-hashed: %q %v", hash, err)
		}
		if err := s.CheckPassword(ctx, sess.UserID, "pw1"); err != nil {
			t.Fatal(err)
		}
		if err := s.CheckPassword(ctx, sess.UserID, "wrong"); errcode(err) != "M_FORBIDDEN" {
			t.Fatalf("wrong password: %v", err)
		}
		if err := s.CheckPassword(ctx, "@nobody:acc.test", "pw1"); errcode(err) != "M_FORBIDDEN" {
			t.Fatalf("unknown user: %v", err)
		}
		if _, err := s.Authenticate(ctx, "syt_bogus_token_000000"); errcode(err) != "M_UNKNOWN_TOKEN" {
			t.Fatalf("bogus token: %v", err)
		}
		if _, err := s.Authenticate(ctx, ""); errcode(err) != "M_MISSING_TOKEN" {
			t.Fatalf("empty token: %v", err)
		}

		second, err := s.CreateSession(ctx, sess.UserID, "", "laptop", false)
		if err != nil {
			t.Fatal(err)
		}
		devs, err := s.Devices(ctx, sess.UserID)
		if err != nil || len(devs) != 2 {
			t.Fatalf("devices = %v, %v", devs, err)
		}
		// Logging in again with an existing device id replaces its token.
		again, err := s.CreateSession(ctx, sess.UserID, second.DeviceID, "", false)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, second.AccessToken); errcode(err) != "M_UNKNOWN_TOKEN" {
			t.Fatalf("old token of reused device still valid: %v", err)
		}
		if err := s.Logout(ctx, &accounts.Requester{UserID: sess.UserID, DeviceID: again.DeviceID}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, again.AccessToken); errcode(err) != "M_UNKNOWN_TOKEN" {
			t.Fatalf("token after logout: %v", err)
		}
		if _, err := s.Authenticate(ctx, sess.AccessToken); err != nil {
			t.Fatalf("other device logged out too: %v", err)
		}
		if err := s.ChangePassword(ctx, sess.UserID, "pw2", true, sess.DeviceID); err != nil {
			t.Fatal(err)
		}
		if err := s.CheckPassword(ctx, sess.UserID, "pw2"); err != nil {
			t.Fatal(err)
		}
		if err := s.LogoutAll(ctx, sess.UserID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, sess.AccessToken); errcode(err) != "M_UNKNOWN_TOKEN" {
			t.Fatalf("token after logout/all: %v", err)
		}
	})
}

func TestUIAFlows(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		s := newService(t, db)
		sess, err := s.Register(ctx, accounts.NewUser{Localpart: "bob", Password: "secret"})
		if err != nil {
			t.Fatal(err)
		}
		flows := accounts.Flows{{accounts.StagePassword}}
		err = s.RunUIA(ctx, nil, flows, sess.UserID)
		var me *mxhttp.Error
		if !errors.As(err, &me) || me.Status != 401 || me.Raw == nil || me.Raw["session"] == "" {
			t.Fatalf("first UIA call: %v", err)
		}
		session := me.Raw["session"].(string)
		bad := &accounts.AuthDict{Type: accounts.StagePassword, Session: session, Password: "nope",
			Identifier: &accounts.Identifier{Type: "m.id.user", User: "bob"}}
		if err := s.RunUIA(ctx, bad, flows, sess.UserID); !errors.As(err, &me) || me.Status != 401 || me.Code != "M_FORBIDDEN" ||
			!errors.Is(err, accounts.ErrUIAFailed) {
			t.Fatalf("wrong password stage: %v", err)
		}
		// Another user's credentials, right or wrong, refuse the request
		// (403, not a stage to retry) and count as a failed attempt.
		if _, err := s.Register(ctx, accounts.NewUser{Localpart: "carol", Password: "carols"}); err != nil {
			t.Fatal(err)
		}
		for _, pw := range []string{"carols", "secret", "nope"} {
			other := &accounts.AuthDict{Type: accounts.StagePassword, Session: session, Password: pw,
				Identifier: &accounts.Identifier{Type: "m.id.user", User: "@carol:acc.test"}}
			if err := s.RunUIA(ctx, other, flows, sess.UserID); !errors.As(err, &me) || me.Status != 403 || me.Code != "M_FORBIDDEN" ||
				me.Raw != nil || !errors.Is(err, accounts.ErrUIAFailed) {
				t.Fatalf("authenticating as another user with password %q: %v, want 403 M_FORBIDDEN", pw, err)
			}
		}
		good := &accounts.AuthDict{Type: accounts.StagePassword, Session: session, Password: "secret",
			Identifier: &accounts.Identifier{Type: "m.id.user", User: "bob"}}
		if err := s.RunUIA(ctx, good, flows, sess.UserID); err != nil {
			t.Fatalf("correct password stage: %v", err)
		}
		// The session is used up.
		if err := s.RunUIA(ctx, good, flows, sess.UserID); err == nil || errcode(err) != "M_UNKNOWN" {
			t.Fatalf("reused session: %v", err)
		}
		if err := s.RunUIA(ctx, &accounts.AuthDict{Type: accounts.StageDummy}, accounts.Flows{{accounts.StageDummy}}, ""); err != nil {
			t.Fatalf("dummy stage: %v", err)
		}
	})
}

func TestDeactivateAndProfile(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		s := newService(t, db)
		sess, err := s.Register(ctx, accounts.NewUser{Localpart: "dee", Password: "pw"})
		if err != nil {
			t.Fatal(err)
		}
		p, err := s.GetProfile(ctx, sess.UserID)
		if err != nil || p == nil || p.DisplayName == nil || *p.DisplayName != "dee" {
			t.Fatalf("default profile = %+v %v", p, err)
		}
		name := "Dee Dee"
		if err := s.SetProfileField(ctx, sess.UserID, "displayname", &name); err != nil {
			t.Fatal(err)
		}
		if p, _ = s.GetProfile(ctx, sess.UserID); *p.DisplayName != name {
			t.Fatalf("displayname = %q", *p.DisplayName)
		}
		ok, err := s.SetDeviceName(ctx, sess.UserID, sess.DeviceID, "renamed")
		if err != nil || !ok {
			t.Fatalf("rename device: %v %v", ok, err)
		}
		if ok, _ := s.SetDeviceName(ctx, sess.UserID, "NOPE", "x"); ok {
			t.Fatal("renamed a missing device")
		}
		if err := s.Deactivate(ctx, sess.UserID); err != nil {
			t.Fatal(err)
		}
		if err := s.CheckPassword(ctx, sess.UserID, "pw"); errcode(err) != "M_USER_DEACTIVATED" && errcode(err) != "M_FORBIDDEN" {
			t.Fatalf("login after deactivation: %v", err)
		}
		if _, err := s.Authenticate(ctx, sess.AccessToken); errcode(err) != "M_UNKNOWN_TOKEN" {
			t.Fatalf("token after deactivation: %v", err)
		}
		if _, err := s.Register(ctx, accounts.NewUser{Localpart: "dee"}); errcode(err) != "M_USER_IN_USE" {
			t.Fatalf("deactivated id re-registered: %v", err)
		}
	})
}

func TestAccessTokenFormat(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		tok := accounts.NewAccessToken("alice")
		if seen[tok] {
			t.Fatal("duplicate token")
		}
		seen[tok] = true
		if !strings.HasPrefix(tok, "syt_") || len(tok) < 36 {
			t.Fatalf("token %q", tok)
		}
	}
	for _, tc := range []struct {
		in string
		ok bool
	}{{"alice", true}, {"a.b_c=d-e/f+g", true}, {"Alice", false}, {"", false}, {"al ice", false}, {"al:ice", false}} {
		if got := accounts.ValidLocalpart(tc.in); got != tc.ok {
			t.Errorf("ValidLocalpart(%q) = %v", tc.in, got)
		}
	}
}

// TestAdminNonceBounded: GET /_synapse/admin/v1/register is rate limited
// per client IP, refuses with 429 once too many nonces are outstanding, and
// serves again when they expire (60 s, as in Synapse).
func TestAdminNonceBounded(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		s := accounts.NewService(db, accounts.Settings{ServerName: "acc.test", RegistrationSharedSecret: "s3cret",
			BcryptRounds: 4, MaxOutstandingNonces: 5}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		mux := mxhttp.NewMux()
		s.Routes(mux, mxhttp.NewServer(slog.New(slog.NewTextHandler(io.Discard, nil))), accounts.Limits{
			AdminNonce: ratelimit.New(ratelimit.Rule{PerSecond: 0.0001, BurstCount: 4}, nil),
		})
		get := func(ip string) *httptest.ResponseRecorder {
			req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/_synapse/admin/v1/register", nil)
			req.RemoteAddr = ip + ":1234"
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, req)
			return rec
		}
		wantLimited := func(what string, rec *httptest.ResponseRecorder, maxWait int64) {
			t.Helper()
			var body struct {
				Errcode      string `json:"errcode"`
				RetryAfterMS int64  `json:"retry_after_ms"`
			}
			if rec.Code != http.StatusTooManyRequests || json.Unmarshal(rec.Body.Bytes(), &body) != nil ||
				body.Errcode != "M_LIMIT_EXCEEDED" || body.RetryAfterMS <= 0 || body.RetryAfterMS > maxWait {
				t.Fatalf("%s: %d %s, want 429 M_LIMIT_EXCEEDED with retry_after_ms in (0, %d]", what, rec.Code, rec.Body, maxWait)
			}
			if rec.Header().Get("Retry-After") == "" {
				t.Fatalf("%s: no Retry-After header", what)
			}
		}
		for i := range 4 {
			if rec := get("192.0.2.1"); rec.Code != http.StatusOK {
				t.Fatalf("nonce %d: %d %s", i, rec.Code, rec.Body)
			}
		}
		// The per-IP bucket (burst 4) is empty; another address is not.
		wantLimited("fifth nonce from one address", get("192.0.2.1"), 1<<40)
		if rec := get("192.0.2.2"); rec.Code != http.StatusOK {
			t.Fatalf("nonce from a second address: %d %s", rec.Code, rec.Body)
		}
		// Five outstanding: the table is full for everyone, until the
		// oldest expires.
		wantLimited("sixth outstanding nonce", get("192.0.2.3"), 60_000)
		count := func() int {
			var n int
			if err := db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM registration_nonces`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		if n := count(); n != 5 {
			t.Fatalf("%d nonces stored, want the cap of 5", n)
		}
		// Age every nonce past its 60 s lifetime: they expire, the next
		// request is served and the table holds only the new one.
		if _, err := db.Exec(ctx, `UPDATE registration_nonces SET created_ts = created_ts - 61000`); err != nil {
			t.Fatal(err)
		}
		if rec := get("192.0.2.3"); rec.Code != http.StatusOK {
			t.Fatalf("nonce after expiry: %d %s", rec.Code, rec.Body)
		}
		if n := count(); n != 1 {
			t.Fatalf("%d nonces stored after expiry, want 1", n)
		}
	})
}
