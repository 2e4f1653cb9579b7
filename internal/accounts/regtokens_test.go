package accounts_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/ratelimit"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// tokenServer is an accounts service with registration tokens required,
// served over its HTTP routes, with a server admin's access token.
type tokenServer struct {
	t     *testing.T
	s     *accounts.Service
	mux   *mxhttp.Mux
	admin string
}

func newTokenServer(t *testing.T, db *storage.DB, settings accounts.Settings, adminName ...string) *tokenServer {
	settings.ServerName, settings.EnableRegistration, settings.BcryptRounds = "acc.test", true, 4
	s := accounts.NewService(db, settings, slog.New(slog.NewTextHandler(io.Discard, nil)))
	mux := mxhttp.NewMux()
	off := func() *ratelimit.Limiter { return ratelimit.New(ratelimit.Rule{}, nil) }
	s.Routes(mux, mxhttp.NewServer(slog.New(slog.NewTextHandler(io.Discard, nil))), accounts.Limits{
		Registration: off(), LoginAddress: off(), LoginAccount: off(), LoginFailedAttempt: off(),
		UIAFailedAttempt: off(), AdminNonce: off(), RegistrationTokenValidity: off(),
	})
	name := "admin"
	if len(adminName) > 0 {
		name = adminName[0]
	}
	sess, err := s.Register(ctxT(t), accounts.NewUser{Localpart: name, Password: "pw", Admin: true})
	if err != nil {
		t.Fatal(err)
	}
	return &tokenServer{t: t, s: s, mux: mux, admin: sess.AccessToken}
}

func (ts *tokenServer) do(method, path, token string, body any) (int, map[string]any) {
	ts.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			ts.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req := httptest.NewRequestWithContext(ctxT(ts.t), method, path, rd)
	req.RemoteAddr = "127.0.0.1:1234"
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	ts.mux.ServeHTTP(rec, req)
	out := map[string]any{}
	_ = json.Unmarshal(rec.Body.Bytes(), &out)
	return rec.Code, out
}

// registerWithToken runs the whole token registration: the flows, the
// token stage, the dummy stage. It returns the final status and errcode
// of the first step that did not go on.
func (ts *tokenServer) registerWithToken(user, token string) (int, string) {
	body := map[string]any{"username": user, "password": "pw-" + user}
	code, out := ts.do("POST", "/_matrix/client/v3/register", "", body)
	session, _ := out["session"].(string)
	if code != 401 || session == "" {
		return code, fmt.Sprint(out["errcode"])
	}
	body["auth"] = map[string]any{"type": accounts.StageRegistrationToken, "token": token, "session": session}
	code, out = ts.do("POST", "/_matrix/client/v3/register", "", body)
	if code != 401 || out["errcode"] != nil {
		return code, fmt.Sprint(out["errcode"])
	}
	body["auth"] = map[string]any{"type": accounts.StageDummy, "session": session}
	code, out = ts.do("POST", "/_matrix/client/v3/register", "", body)
	return code, fmt.Sprint(out["errcode"])
}

func (ts *tokenServer) token(name string) map[string]any {
	ts.t.Helper()
	code, out := ts.do("GET", "/_synapse/admin/v1/registration_tokens/"+name, ts.admin, nil)
	if code != 200 {
		ts.t.Fatalf("get token %s: %d %v", name, code, out)
	}
	return out
}

// Registrations racing for the last uses of a token never take more uses
// than it has: every request runs its own transactions, as two workers do.
func TestRegistrationTokenNeverOverused(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ts := newTokenServer(t, db, accounts.Settings{RegistrationRequiresToken: true})
		if code, out := ts.do("POST", "/_synapse/admin/v1/registration_tokens/new", ts.admin,
			map[string]any{"token": "race", "uses_allowed": 3}); code != 200 || out["token"] != "race" {
			t.Fatalf("create token: %d %v", code, out)
		}
		const n = 10
		var wg sync.WaitGroup
		results := make([]int, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i], _ = ts.registerWithToken(fmt.Sprintf("racer%d", i), "race")
			}()
		}
		wg.Wait()
		ok := 0
		for _, c := range results {
			if c == 200 {
				ok++
			}
		}
		if ok != 3 {
			t.Fatalf("%d registrations succeeded with a 3-use token (statuses %v)", ok, results)
		}
		tok := ts.token("race")
		if tok["completed"] != float64(3) || tok["pending"] != float64(0) {
			t.Fatalf("token after the race: %v, want completed 3 pending 0", tok)
		}
		if code, out := ts.do("GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token=race", "", nil); code != 200 || out["valid"] != false {
			t.Fatalf("validity of a used-up token: %d %v", code, out)
		}
	})
}

// A session that took a use and never registered gives it back when it
// expires; a completed session cannot register a second account.
func TestRegistrationTokenPendingUses(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ts := newTokenServer(t, db, accounts.Settings{RegistrationRequiresToken: true})
		now := time.Now()
		accounts.SetClock(ts.s, func() time.Time { return now })
		if code, out := ts.do("POST", "/_synapse/admin/v1/registration_tokens/new", ts.admin,
			map[string]any{"token": "once", "uses_allowed": 1}); code != 200 {
			t.Fatalf("create token: %d %v", code, out)
		}
		body := map[string]any{"username": "slow", "password": "pw"}
		_, out := ts.do("POST", "/_matrix/client/v3/register", "", body)
		session, _ := out["session"].(string)
		flows, _ := json.Marshal(out["flows"])
		if string(flows) != `[{"stages":["m.login.registration_token","m.login.dummy"]}]` {
			t.Fatalf("flows %s", flows)
		}
		body["auth"] = map[string]any{"type": accounts.StageRegistrationToken, "token": "once", "session": session}
		if code, out := ts.do("POST", "/_matrix/client/v3/register", "", body); code != 401 || out["errcode"] != nil {
			t.Fatalf("token stage: %d %v", code, out)
		}
		if tok := ts.token("once"); tok["pending"] != float64(1) {
			t.Fatalf("token after the stage: %v, want pending 1", tok)
		}
		// The use is held: another registration cannot have it.
		if code, errcode := ts.registerWithToken("other", "once"); code != 401 || errcode != "M_UNAUTHORIZED" {
			t.Fatalf("second registration with a held token: %d %s", code, errcode)
		}
		// The held session expires; the next UIA session gives its use back.
		now = now.Add(31 * time.Minute)
		if code, errcode := ts.registerWithToken("other", "once"); code != 200 {
			t.Fatalf("registration after the held use expired: %d %s", code, errcode)
		}
		if tok := ts.token("once"); tok["pending"] != float64(0) || tok["completed"] != float64(1) {
			t.Fatalf("token after expiry and use: %v", tok)
		}
		// Skipping the token stage is not registering.
		code, out := ts.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "sneaky", "password": "pw"})
		session, _ = out["session"].(string)
		code, out = ts.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "sneaky", "password": "pw",
			"auth": map[string]any{"type": accounts.StageDummy, "session": session}})
		if code != 401 || out["completed"] == nil {
			t.Fatalf("dummy stage alone: %d %v, want 401 with more stages", code, out)
		}
	})
}

func TestRegistrationTokenAdminAPI(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ts := newTokenServer(t, db, accounts.Settings{RegistrationRequiresToken: true})
		const p = "/_synapse/admin/v1/registration_tokens"
		user, err := ts.s.Register(ctxT(t), accounts.NewUser{Localpart: "plain", Password: "pw"})
		if err != nil {
			t.Fatal(err)
		}
		if code, out := ts.do("GET", p, user.AccessToken, nil); code != 403 || out["errcode"] != "M_FORBIDDEN" {
			t.Fatalf("non-admin list: %d %v", code, out)
		}
		if code, out := ts.do("GET", p, "", nil); code != 401 || out["errcode"] != "M_MISSING_TOKEN" {
			t.Fatalf("anonymous list: %d %v", code, out)
		}
		code, gen := ts.do("POST", p+"/new", ts.admin, map[string]any{"length": 24})
		if code != 200 || len(gen["token"].(string)) != 24 || gen["uses_allowed"] != nil || gen["expiry_time"] != nil ||
			gen["pending"] != float64(0) || gen["completed"] != float64(0) {
			t.Fatalf("generated token: %d %v", code, gen)
		}
		code, def := ts.do("POST", p+"/new", ts.admin, map[string]any{})
		if code != 200 || len(def["token"].(string)) != 16 {
			t.Fatalf("default token: %d %v", code, def)
		}
		past := time.Now().Add(-time.Hour).UnixMilli()
		future := time.Now().Add(time.Hour).UnixMilli()
		for _, bad := range []map[string]any{
			{"token": "has space"}, {"token": 5}, {"token": string(make([]byte, 65))},
			{"uses_allowed": -1}, {"uses_allowed": 1.5}, {"uses_allowed": "3"}, {"uses_allowed": true},
			{"expiry_time": past}, {"length": 0}, {"length": 65}, {"length": "8"},
		} {
			if code, out := ts.do("POST", p+"/new", ts.admin, bad); code != 400 || out["errcode"] != "M_INVALID_PARAM" {
				t.Fatalf("new %v: %d %v, want 400 M_INVALID_PARAM", bad, code, out)
			}
		}
		if code, out := ts.do("POST", p+"/new", ts.admin, map[string]any{"token": "x.y_z~-1", "uses_allowed": 0, "expiry_time": future}); code != 200 || out["uses_allowed"] != float64(0) {
			t.Fatalf("new with limits: %d %v", code, out)
		}
		if code, out := ts.do("POST", p+"/new", ts.admin, map[string]any{"token": "x.y_z~-1"}); code != 400 || out["errcode"] != "M_INVALID_PARAM" {
			t.Fatalf("duplicate token: %d %v", code, out)
		}
		// valid filter: x.y_z~-1 has 0 uses allowed, so it is invalid.
		list := func(q string) []string {
			code, out := ts.do("GET", p+q, ts.admin, nil)
			if code != 200 {
				t.Fatalf("list %s: %d %v", q, code, out)
			}
			var names []string
			for _, e := range out["registration_tokens"].([]any) {
				names = append(names, e.(map[string]any)["token"].(string))
			}
			return names
		}
		if got := list("?valid=false"); len(got) != 1 || got[0] != "x.y_z~-1" {
			t.Fatalf("invalid tokens %v", got)
		}
		if got := list("?valid=true"); len(got) != 2 {
			t.Fatalf("valid tokens %v", got)
		}
		if got := list(""); len(got) != 3 {
			t.Fatalf("all tokens %v", got)
		}
		if code, out := ts.do("GET", p+"?valid=maybe", ts.admin, nil); code != 400 || out["errcode"] != "M_INVALID_PARAM" {
			t.Fatalf("bad valid filter: %d %v", code, out)
		}
		// Update: uses_allowed raised, expiry set then cleared.
		code, up := ts.do("PUT", p+"/x.y_z~-1", ts.admin, map[string]any{"uses_allowed": 2, "expiry_time": nil})
		if code != 200 || up["uses_allowed"] != float64(2) || up["expiry_time"] != nil {
			t.Fatalf("update: %d %v", code, up)
		}
		if got := list("?valid=false"); len(got) != 0 {
			t.Fatalf("invalid tokens after update %v", got)
		}
		if code, out := ts.do("PUT", p+"/x.y_z~-1", ts.admin, map[string]any{"expiry_time": past}); code != 400 || out["errcode"] != "M_INVALID_PARAM" {
			t.Fatalf("update to the past: %d %v", code, out)
		}
		if code, out := ts.do("PUT", p+"/nosuch", ts.admin, map[string]any{"uses_allowed": 1}); code != 404 || out["errcode"] != "M_NOT_FOUND" {
			t.Fatalf("update unknown: %d %v", code, out)
		}
		if code, out := ts.do("GET", p+"/nosuch", ts.admin, nil); code != 404 || out["errcode"] != "M_NOT_FOUND" {
			t.Fatalf("get unknown: %d %v", code, out)
		}
		if code, out := ts.do("DELETE", p+"/x.y_z~-1", ts.admin, nil); code != 200 {
			t.Fatalf("delete: %d %v", code, out)
		}
		if code, out := ts.do("DELETE", p+"/x.y_z~-1", ts.admin, nil); code != 404 || out["errcode"] != "M_NOT_FOUND" {
			t.Fatalf("delete again: %d %v", code, out)
		}
	})
}

func TestPasswordPolicyCheck(t *testing.T) {
	p := accounts.PasswordPolicy{Enabled: true, MinimumLength: 8, RequireDigit: true, RequireSymbol: true,
		RequireLowercase: true, RequireUppercase: true}
	for _, tt := range []struct {
		pw, want string
	}{
		{"Ab1!xyzw", ""},
		{"Ab1!xyz", "M_PASSWORD_TOO_SHORT"},
		{"Äb1!xyz", "M_PASSWORD_TOO_SHORT"}, // 7 characters, 8 bytes
		{"Abc!xyzw", "M_PASSWORD_NO_DIGIT"},
		{"Ab١!xyzw", ""}, // an Arabic-Indic digit is a digit (and a symbol: not ASCII)
		{"Ab1cxyzw", "M_PASSWORD_NO_SYMBOL"},
		{"ab1!xyzw", "M_PASSWORD_NO_UPPERCASE"},
		{"AB1!XYZW", "M_PASSWORD_NO_LOWERCASE"},
		{"abc", "M_PASSWORD_TOO_SHORT"}, // length is checked first
	} {
		if got := errcode(p.Check(tt.pw)); got != tt.want {
			t.Errorf("Check(%q) = %q, want %q", tt.pw, got, tt.want)
		}
	}
	if err := (accounts.PasswordPolicy{MinimumLength: 100, RequireDigit: true}).Check("x"); err != nil {
		t.Errorf("a policy that is not enabled refused a password: %v", err)
	}
	if err := (accounts.PasswordPolicy{Enabled: true}).Check(""); err != nil {
		t.Errorf("an empty policy refused a password: %v", err)
	}
}

// password_config.enabled false: no password login (the flow is not
// offered), no password change, no password stage; a policy's rules and
// bcrypt's length limit are checked before user-interactive auth.
func TestPasswordsDisabledAndChecked(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ts := newTokenServer(t, db, accounts.Settings{RegistrationWithoutVerify: true, PasswordLoginDisabled: true,
			PasswordReauthDisabled: true})
		if code, out := ts.do("GET", "/_matrix/client/v3/login", "", nil); code != 200 || fmt.Sprint(out["flows"]) != "[]" {
			t.Fatalf("login flows with passwords off: %d %v", code, out)
		}
		login := map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "admin"}, "password": "pw"}
		if code, out := ts.do("POST", "/_matrix/client/v3/login", "", login); code != 400 || out["errcode"] != "M_UNKNOWN" {
			t.Fatalf("password login with passwords off: %d %v", code, out)
		}
		change := map[string]any{"new_password": "new-one", "auth": map[string]any{"type": "m.login.password", "password": "pw",
			"identifier": map[string]any{"type": "m.id.user", "user": "admin"}}}
		if code, out := ts.do("POST", "/_matrix/client/v3/account/password", ts.admin, change); code != 403 || out["errcode"] != "M_FORBIDDEN" {
			t.Fatalf("password change with passwords off: %d %v", code, out)
		}
		if code, out := ts.do("POST", "/_matrix/client/v3/account/deactivate", ts.admin, map[string]any{"auth": change["auth"]}); code != 401 || out["errcode"] != "M_FORBIDDEN" {
			t.Fatalf("password stage with passwords off: %d %v", code, out)
		}

		ts = newTokenServer(t, db, accounts.Settings{RegistrationWithoutVerify: true,
			PasswordPolicy: accounts.PasswordPolicy{Enabled: true, MinimumLength: 10, RequireDigit: true,
				Advertised: map[string]any{"m.minimum_length": 10, "m.require_digit": true}}}, "admin2")
		if code, out := ts.do("GET", "/_matrix/client/unstable/password_policy", "", nil); code != 200 ||
			out["m.minimum_length"] != float64(10) || out["m.require_digit"] != true || len(out) != 2 {
			t.Fatalf("password policy: %d %v", code, out)
		}
		for pw, want := range map[string]string{"short1": "M_PASSWORD_TOO_SHORT", "longenough": "M_PASSWORD_NO_DIGIT",
			strings.Repeat("a1", 37): "M_WEAK_PASSWORD"} {
			if code, out := ts.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "u", "password": pw}); code != 400 || out["errcode"] != want {
				t.Fatalf("register with %q: %d %v, want 400 %s", pw, code, out, want)
			}
		}
		if code, out := ts.do("POST", "/_matrix/client/v3/account/password", ts.admin, map[string]any{"new_password": "nodigitshere"}); code != 400 || out["errcode"] != "M_PASSWORD_NO_DIGIT" {
			t.Fatalf("password change to a weak password: %d %v", code, out)
		}
	})
}
