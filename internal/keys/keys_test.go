package keys_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/canonicaljson"
	"ganglion/internal/events"
	"ganglion/internal/keys"
	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
)

const server = "keys.test"

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type fixture struct {
	db  *storage.DB
	reg *streams.Registry
	w   *keys.LocalWriter
	s   *keys.Service
	acc *accounts.Service
	mux *mxhttp.Mux
}

func newFixture(t *testing.T, db *storage.DB) *fixture {
	t.Helper()
	reg, err := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	w, err := keys.NewLocalWriter(ctxT(t), db, reg, discard)
	if err != nil {
		t.Fatal(err)
	}
	acc := accounts.NewService(db, accounts.Settings{ServerName: server, BcryptRounds: 4}, discard)
	s := keys.NewService(db, reg, w, server, discard)
	acc.SetDeviceListHook(s)
	acc.SetDeactivationHook(s)
	mux := mxhttp.NewMux()
	s.Routes(mux, mxhttp.NewServer(discard), acc)
	return &fixture{db: db, reg: reg, w: w, s: s, acc: acc, mux: mux}
}

// device is a client device with its ed25519 identity key.
type device struct {
	user, id, token string
	priv            ed25519.PrivateKey
}

func (f *fixture) register(t *testing.T, localpart, deviceID string) *device {
	t.Helper()
	sess, err := f.acc.Register(ctxT(t), accounts.NewUser{Localpart: localpart, DeviceID: deviceID})
	if err != nil {
		t.Fatal(err)
	}
	return f.deviceFor(t, sess)
}

func (f *fixture) login(t *testing.T, userID, deviceID string) *device {
	t.Helper()
	sess, err := f.acc.CreateSession(ctxT(t), userID, deviceID, "", false)
	if err != nil {
		t.Fatal(err)
	}
	return f.deviceFor(t, sess)
}

func (f *fixture) deviceFor(t *testing.T, sess accounts.Session) *device {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &device{user: sess.UserID, id: sess.DeviceID, token: sess.AccessToken, priv: priv}
}

// sign adds d's signature to obj (a map) and returns it.
func (d *device) sign(t *testing.T, obj map[string]any) map[string]any {
	t.Helper()
	msg, err := canonicaljson.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	obj["signatures"] = map[string]any{d.user: map[string]string{"ed25519:" + d.id: events.EncodeBase64(ed25519.Sign(d.priv, msg))}}
	return obj
}

// deviceKeys is d's signed device_keys object; curve names the curve25519
// key so tests can make "different" keys.
func (d *device) deviceKeys(t *testing.T, curve string) map[string]any {
	return d.sign(t, map[string]any{
		"user_id":    d.user,
		"device_id":  d.id,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys": map[string]string{
			"ed25519:" + d.id:    events.EncodeBase64(d.priv.Public().(ed25519.PublicKey)),
			"curve25519:" + d.id: curve,
		},
	})
}

func raw(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// otks makes n signed_curve25519 one-time keys named prefix0..prefixN-1.
func (d *device) otks(t *testing.T, prefix string, n int) map[string]json.RawMessage {
	out := map[string]json.RawMessage{}
	for i := range n {
		id := fmt.Sprintf("%s%03d", prefix, i)
		out["signed_curve25519:"+id] = raw(t, d.sign(t, map[string]any{"key": "k-" + id}))
	}
	return out
}

// do sends an authenticated request and returns the status, errcode and body.
func (f *fixture) do(t *testing.T, d *device, method, path, body string) (int, string, []byte) {
	t.Helper()
	r := httptest.NewRequest(method, "/_matrix/client/v3"+path, bytes.NewBufferString(body))
	r.Header.Set("Authorization", "Bearer "+d.token)
	w := httptest.NewRecorder()
	f.mux.ServeMux.ServeHTTP(w, r)
	var e struct{ Errcode string }
	_ = json.Unmarshal(w.Body.Bytes(), &e)
	return w.Code, e.Errcode, w.Body.Bytes()
}

func (f *fixture) streamRows(t *testing.T) int {
	t.Helper()
	var n int
	if err := f.db.Reader().QueryRowContext(ctxT(t), `SELECT count(DISTINCT stream_id) FROM device_lists_stream`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestUploadDeviceKeysValidation(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		alice := f.register(t, "alice", "ALICE1")
		bob := f.register(t, "bob", "BOB1")
		good := alice.deviceKeys(t, "curveA")
		body := func(dk any) string { return string(raw(t, map[string]any{"device_keys": dk})) }
		mutate := func(fn func(m map[string]any)) string {
			m := alice.deviceKeys(t, "curveA")
			fn(m)
			return body(m)
		}
		resign := func(fn func(m map[string]any)) string {
			m := alice.deviceKeys(t, "curveA")
			delete(m, "signatures")
			fn(m)
			return body(alice.sign(t, m))
		}
		cases := []struct {
			name, body string
			status     int
			code       string
		}{
			{"not json", `{`, 400, "M_NOT_JSON"},
			{"device_keys a list", `{"device_keys":[1]}`, 400, "M_BAD_JSON"},
			{"keys not strings", mutate(func(m map[string]any) { m["keys"] = []int{1} }), 400, "M_BAD_JSON"},
			{"other user", resign(func(m map[string]any) { m["user_id"] = bob.user }), 400, "M_INVALID_PARAM"},
			{"other device", resign(func(m map[string]any) { m["device_id"] = "OTHER" }), 400, "M_INVALID_PARAM"},
			{"no algorithms", resign(func(m map[string]any) { delete(m, "algorithms") }), 400, "M_INVALID_PARAM"},
			{"empty algorithms", resign(func(m map[string]any) { m["algorithms"] = []string{} }), 400, "M_INVALID_PARAM"},
			{"no ed25519 key", resign(func(m map[string]any) { m["keys"] = map[string]string{"curve25519:" + alice.id: "c"} }), 400, "M_INVALID_PARAM"},
			{"unsigned", mutate(func(m map[string]any) { delete(m, "signatures") }), 400, "M_INVALID_PARAM"},
			{"tampered after signing", mutate(func(m map[string]any) { m["algorithms"] = []string{"evil"} }), 400, "M_INVALID_PARAM"},
			{"signed by another key", body(bob.sign(t, alice.deviceKeys(t, "curveA"))), 400, "M_INVALID_PARAM"},
			{"bad signature base64", mutate(func(m map[string]any) {
				m["signatures"] = map[string]any{alice.user: map[string]string{"ed25519:" + alice.id: "!!"}}
			}), 400, "M_INVALID_PARAM"},
			{"float in keys object", mutate(func(m map[string]any) { m["x"] = 1.5 }), 400, "M_BAD_JSON"},
			{"good", body(good), 200, ""},
			{"good, unsigned ignored", mutate(func(m map[string]any) { m["unsigned"] = map[string]any{"x": 1} }), 200, ""},
		}
		for _, c := range cases {
			if status, code, b := f.do(t, alice, "POST", "/keys/upload", c.body); status != c.status || code != c.code {
				t.Errorf("%s: %d %s (%s), want %d %s", c.name, status, code, b, c.status, c.code)
			}
		}
		// Registration announced one change; the accepted keys one more;
		// the identical re-upload (with unsigned) none.
		if n := f.streamRows(t); n != 3 { // alice's and bob's registrations, alice's keys
			t.Fatalf("device_lists changes = %d, want 3", n)
		}
		// New keys for the device: stored and announced.
		if status, _, _ := f.do(t, alice, "POST", "/keys/upload", body(alice.deviceKeys(t, "curveB"))); status != 200 {
			t.Fatal(status)
		}
		if n := f.streamRows(t); n != 4 {
			t.Fatalf("device_lists changes = %d, want 4", n)
		}
		res, err := f.s.QueryKeys(ctxT(t), bob.user, map[string][]string{alice.user: nil})
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			Keys       map[string]string
			Signatures map[string]map[string]string
			Unsigned   map[string]any
		}
		if err := json.Unmarshal(res.DeviceKeys[alice.user][alice.id], &got); err != nil {
			t.Fatal(err)
		}
		if got.Keys["curve25519:"+alice.id] != "curveB" || got.Signatures[alice.user]["ed25519:"+alice.id] == "" {
			t.Fatalf("queried keys %s", res.DeviceKeys[alice.user][alice.id])
		}
	})
}

func TestOneTimeAndFallbackKeyUpload(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice := f.register(t, "alice", "A")
		up := func(otks, fbs map[string]json.RawMessage) (map[string]int, error) {
			return f.s.UploadKeys(ctx, alice.user, alice.id, keys.Upload{OneTimeKeys: otks, FallbackKeys: fbs})
		}
		counts, err := up(alice.otks(t, "a", 5), nil)
		if err != nil || counts["signed_curve25519"] != 5 {
			t.Fatalf("counts %v, %v", counts, err)
		}
		// The same keys again are a no-op.
		if counts, err = up(alice.otks(t, "a", 5), nil); err != nil || counts["signed_curve25519"] != 5 {
			t.Fatalf("re-upload: counts %v, %v", counts, err)
		}
		// A different key under an existing id is refused, and nothing of
		// that upload is stored.
		batch := alice.otks(t, "b", 3)
		batch["signed_curve25519:a002"] = raw(t, alice.sign(t, map[string]any{"key": "different"}))
		if _, err := up(batch, nil); !isCode(err, "M_INVALID_PARAM") {
			t.Fatalf("conflicting key: %v", err)
		}
		if counts, _ = f.s.OneTimeKeyCounts(ctx, alice.user, alice.id); counts["signed_curve25519"] != 5 {
			t.Fatalf("after refused upload: %v", counts)
		}
		// Unsigned curve25519 keys (plain strings) count per algorithm.
		if counts, err = up(map[string]json.RawMessage{"curve25519:c1": raw(t, "plain")}, nil); err != nil ||
			counts["curve25519"] != 1 || counts["signed_curve25519"] != 5 {
			t.Fatalf("counts %v, %v", counts, err)
		}
		bad := []map[string]json.RawMessage{
			{"nocolon": raw(t, "k")},
			{":id": raw(t, "k")},
			{"alg:": raw(t, "k")},
			{"signed_curve25519:x": raw(t, 5)},
			{"signed_curve25519:x": raw(t, map[string]any{"nokey": 1})},
			{"signed_curve25519:x": json.RawMessage(`{"key":"a","key":"b"}`)},
		}
		for _, b := range bad {
			if _, err := up(b, nil); !isCode(err, "M_INVALID_PARAM") && !isCode(err, "M_BAD_JSON") {
				t.Errorf("one_time_keys %s: %v", b, err)
			}
		}
		// Fallback keys: one per algorithm; unused until claimed.
		types, _ := f.s.UnusedFallbackKeyTypes(ctx, alice.user, alice.id)
		if len(types) != 0 {
			t.Fatalf("fallback types before upload: %v", types)
		}
		fb := map[string]json.RawMessage{"signed_curve25519:f1": raw(t, alice.sign(t, map[string]any{"key": "fb1", "fallback": true}))}
		if _, err := up(nil, fb); err != nil {
			t.Fatal(err)
		}
		if types, _ = f.s.UnusedFallbackKeyTypes(ctx, alice.user, alice.id); !slices.Equal(types, []string{"signed_curve25519"}) {
			t.Fatalf("fallback types: %v", types)
		}
		// /sync reads both in one query: the same answers.
		syncCounts, syncTypes, err := f.s.SyncKeyCounts(ctx, alice.user, alice.id)
		if err != nil || syncCounts["signed_curve25519"] != 5 || syncCounts["curve25519"] != 1 || len(syncCounts) != 2 ||
			!slices.Equal(syncTypes, []string{"signed_curve25519"}) {
			t.Fatalf("sync key counts %v %v, %v", syncCounts, syncTypes, err)
		}
		two := map[string]json.RawMessage{"signed_curve25519:f2": fb["signed_curve25519:f1"], "signed_curve25519:f3": fb["signed_curve25519:f1"]}
		if _, err := up(nil, two); !isCode(err, "M_INVALID_PARAM") {
			t.Fatalf("two fallback keys of one algorithm: %v", err)
		}
	})
}

func isCode(err error, code string) bool {
	me, ok := err.(*mxhttp.Error)
	return ok && me.Code == code && me.Status == 400
}

func TestClaimOrderAndFallback(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice := f.register(t, "alice", "A")
		bob := f.register(t, "bob", "B")
		clock := time.UnixMilli(1000)
		keys.SetClock(f.s, func() time.Time { return clock })
		// Uploaded in three batches; ids deliberately not in upload order.
		for _, id := range []string{"zz", "mm", "aa"} {
			if _, err := f.s.UploadKeys(ctx, alice.user, alice.id, keys.Upload{OneTimeKeys: alice.otks(t, id, 1)}); err != nil {
				t.Fatal(err)
			}
			clock = clock.Add(time.Second)
		}
		fb := map[string]json.RawMessage{"signed_curve25519:fb": raw(t, alice.sign(t, map[string]any{"key": "fallback", "fallback": true}))}
		if _, err := f.s.UploadKeys(ctx, alice.user, alice.id, keys.Upload{FallbackKeys: fb}); err != nil {
			t.Fatal(err)
		}
		claim := func() string {
			t.Helper()
			res, err := f.s.ClaimKeys(ctx, map[string]map[string]string{
				alice.user:          {alice.id: "signed_curve25519", "NODEVICE": "signed_curve25519"},
				bob.user:            {bob.id: "signed_curve25519"}, // bob has no keys at all
				"@remote:elsewhere": {"X": "signed_curve25519"},
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.OneTimeKeys) != 1 || len(res.OneTimeKeys[alice.user]) != 1 {
				t.Fatalf("claim result %+v", res.OneTimeKeys)
			}
			for id := range res.OneTimeKeys[alice.user][alice.id] {
				return id
			}
			t.Fatal("nothing claimed")
			return ""
		}
		var got []string
		for range 5 {
			got = append(got, claim())
		}
		want := []string{"signed_curve25519:zz000", "signed_curve25519:mm000", "signed_curve25519:aa000",
			"signed_curve25519:fb", "signed_curve25519:fb"}
		if !slices.Equal(got, want) {
			t.Fatalf("claims %v, want %v", got, want)
		}
		if types, _ := f.s.UnusedFallbackKeyTypes(ctx, alice.user, alice.id); len(types) != 0 {
			t.Fatalf("used fallback still listed unused: %v", types)
		}
		// Uploading the same fallback key again keeps it used; a new one
		// is unused.
		if _, err := f.s.UploadKeys(ctx, alice.user, alice.id, keys.Upload{FallbackKeys: fb}); err != nil {
			t.Fatal(err)
		}
		if types, _ := f.s.UnusedFallbackKeyTypes(ctx, alice.user, alice.id); len(types) != 0 {
			t.Fatalf("re-uploaded used fallback listed unused: %v", types)
		}
		fb2 := map[string]json.RawMessage{"signed_curve25519:fb2": raw(t, alice.sign(t, map[string]any{"key": "fallback2", "fallback": true}))}
		if _, err := f.s.UploadKeys(ctx, alice.user, alice.id, keys.Upload{FallbackKeys: fb2}); err != nil {
			t.Fatal(err)
		}
		if types, _ := f.s.UnusedFallbackKeyTypes(ctx, alice.user, alice.id); !slices.Equal(types, []string{"signed_curve25519"}) {
			t.Fatalf("new fallback: %v", types)
		}
		if id := claim(); id != "signed_curve25519:fb2" {
			t.Fatalf("claimed %s, want the new fallback key", id)
		}
	})
}

// TestConcurrentClaims: 50 claimers race for 20 one-time keys on separate
// connections; no key goes out twice, every key goes out, the other 30 get
// the fallback key.
func TestConcurrentClaims(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice := f.register(t, "alice", "A")
		fb := map[string]json.RawMessage{"signed_curve25519:fb": raw(t, alice.sign(t, map[string]any{"key": "fallback", "fallback": true}))}
		if _, err := f.s.UploadKeys(ctx, alice.user, alice.id, keys.Upload{OneTimeKeys: alice.otks(t, "k", 20), FallbackKeys: fb}); err != nil {
			t.Fatal(err)
		}
		// A second service over the same database stands for another worker.
		other := keys.NewService(db, f.reg, f.w, server, discard)
		var mu sync.Mutex
		seen := map[string]int{}
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make(chan error, 50)
		for i := range 50 {
			s := f.s
			if i%2 == 1 {
				s = other
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				res, err := s.ClaimKeys(ctx, map[string]map[string]string{alice.user: {alice.id: "signed_curve25519"}})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				defer mu.Unlock()
				for id := range res.OneTimeKeys[alice.user][alice.id] {
					seen[id]++
				}
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		otk := 0
		for id, n := range seen {
			if id == "signed_curve25519:fb" {
				continue
			}
			otk++
			if n != 1 {
				t.Errorf("key %s handed out %d times", id, n)
			}
		}
		if otk != 20 || seen["signed_curve25519:fb"] != 30 {
			t.Fatalf("%d one-time keys and %d fallbacks handed out, want 20 and 30", otk, seen["signed_curve25519:fb"])
		}
		counts, _ := f.s.OneTimeKeyCounts(ctx, alice.user, alice.id)
		if counts["signed_curve25519"] != 0 {
			t.Fatalf("left: %v", counts)
		}
	})
}

func TestDeviceHooks(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice := f.register(t, "alice", "A1")
		a2 := f.login(t, alice.user, "A2")
		if _, err := f.s.UploadKeys(ctx, a2.user, a2.id, keys.Upload{DeviceKeys: raw(t, a2.deviceKeys(t, "c")),
			OneTimeKeys: a2.otks(t, "x", 2)}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.acc.SetDeviceName(ctx, alice.user, "A2", "phone"); err != nil {
			t.Fatal(err)
		}
		res, _ := f.s.QueryKeys(ctx, alice.user, map[string][]string{alice.user: {}})
		if !bytes.Contains(res.DeviceKeys[alice.user]["A2"], []byte(`"device_display_name":"phone"`)) {
			t.Fatalf("query: %s", res.DeviceKeys[alice.user]["A2"])
		}
		if err := f.acc.DeleteDevices(ctx, alice.user, []string{"A2"}); err != nil {
			t.Fatal(err)
		}
		// register, login, keys, rename, delete
		if n := f.streamRows(t); n != 5 {
			t.Fatalf("device_lists changes = %d, want 5", n)
		}
		res, _ = f.s.QueryKeys(ctx, alice.user, map[string][]string{alice.user: {}})
		if len(res.DeviceKeys[alice.user]) != 0 {
			t.Fatalf("deleted device's keys still served: %v", res.DeviceKeys)
		}
		var n int
		if err := db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM e2e_one_time_keys`).Scan(&n); err != nil || n != 0 {
			t.Fatalf("deleted device's one-time keys: %d, %v", n, err)
		}
		// The source replays each change as one row with its devices.
		rows, err := keys.NewSource(db).Rows(ctx, "main", 0, f.w.Position(), 100)
		if err != nil || len(rows) != 5 {
			t.Fatalf("source rows %v, %v", rows, err)
		}
		if string(rows[4].Data) != `["`+alice.user+`",["A2"]]` {
			t.Fatalf("last row %s", rows[4].Data)
		}
		if rows, _ := keys.NewSource(db).Rows(ctx, "main", 0, f.w.Position(), 2); len(rows) != 2 {
			t.Fatalf("limited source rows %v", rows)
		}
	})
}

func TestQueryClaimChangesBadInput(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		alice := f.register(t, "alice", "A")
		tok := f.reg.CurrentToken().String()
		cases := []struct {
			method, path, body string
			status             int
			code               string
		}{
			{"POST", "/keys/query", `{}`, 400, "M_BAD_JSON"},
			{"POST", "/keys/query", `{"device_keys":[]}`, 400, "M_BAD_JSON"},
			{"POST", "/keys/query", `{"device_keys":{"` + alice.user + `":{"A":true}}}`, 400, "M_BAD_JSON"},
			{"POST", "/keys/query", `{"device_keys":{"` + alice.user + `":"A"}}`, 400, "M_BAD_JSON"},
			{"POST", "/keys/query", `{"device_keys":{"alice":[]}}`, 400, "M_INVALID_PARAM"},
			{"POST", "/keys/query", `{"device_keys":{"` + alice.user + `":[]},"timeout":10000}`, 200, ""},
			{"POST", "/keys/query", `{"device_keys":{"` + alice.user + `":null,"@x:other.server":["D"]}}`, 200, ""},
			{"POST", "/keys/query", `{"device_keys":{},"timeout":"soon"}`, 400, "M_BAD_JSON"},
			{"POST", "/keys/claim", `{}`, 400, "M_BAD_JSON"},
			{"POST", "/keys/claim", `{"one_time_keys":{"` + alice.user + `":["A"]}}`, 400, "M_BAD_JSON"},
			{"POST", "/keys/claim", `{"one_time_keys":{"` + alice.user + `":{"A":5}}}`, 400, "M_BAD_JSON"},
			{"POST", "/keys/claim", `{"one_time_keys":{"` + alice.user + `":null}}`, 400, "M_BAD_JSON"},
			{"POST", "/keys/claim", `{"one_time_keys":{"` + alice.user + `":{"A":""}}}`, 400, "M_INVALID_PARAM"},
			{"POST", "/keys/claim", `{"one_time_keys":{"nope":{"A":"signed_curve25519"}}}`, 400, "M_INVALID_PARAM"},
			{"POST", "/keys/claim", `{"one_time_keys":{"` + alice.user + `":{"A":"signed_curve25519"}},"timeout":1}`, 200, ""},
			{"POST", "/keys/upload", `{"one_time_keys":[]}`, 400, "M_BAD_JSON"},
			{"POST", "/keys/upload", `{"one_time_keys":{"bad":"k"}}`, 400, "M_INVALID_PARAM"},
			{"POST", "/keys/upload", `{"fallback_keys":{"signed_curve25519:a":7}}`, 400, "M_BAD_JSON"},
			{"POST", "/keys/upload", `{}`, 200, ""},
			{"POST", "/keys/upload/A", `{}`, 200, ""},
			{"GET", "/keys/changes", ``, 400, "M_MISSING_PARAM"},
			{"GET", "/keys/changes?from=garbage", ``, 400, "M_INVALID_PARAM"},
			{"GET", "/keys/changes?from=" + tok + "&to=x", ``, 400, "M_INVALID_PARAM"},
			{"GET", "/keys/changes?from=" + tok + "&to=" + tok, ``, 200, ""},
			{"GET", "/keys/changes?from=" + tok, ``, 200, ""},
		}
		for _, c := range cases {
			if status, code, b := f.do(t, alice, c.method, c.path, c.body); status != c.status || code != c.code {
				t.Errorf("%s %s %s: %d %s (%s), want %d %s", c.method, c.path, c.body, status, code, b, c.status, c.code)
			}
		}
		_, _, b := f.do(t, alice, "POST", "/keys/upload", `{}`)
		if string(b) != `{"one_time_key_counts":{"signed_curve25519":0}}` {
			t.Fatalf("upload answer %s", b)
		}
	})
}

// member sets userID's membership in roomID at pos, as the persister would.
func member(t *testing.T, db *storage.DB, roomID, userID, membership string, pos int64) {
	t.Helper()
	ctx := ctxT(t)
	ev := fmt.Sprintf("$%s-%s-%d", roomID, userID, pos)
	if _, err := db.Exec(ctx, `INSERT INTO state_log (room_id, type, state_key, stream_ordering, event_id, membership)
		VALUES ($1, 'm.room.member', $2, $3, $4, $5)`, roomID, userID, pos, ev, membership); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `INSERT INTO current_state (room_id, type, state_key, event_id, stream_ordering, membership)
		VALUES ($1, 'm.room.member', $2, $3, $4, $5) ON CONFLICT (room_id, type, state_key)
		DO UPDATE SET event_id = excluded.event_id, stream_ordering = excluded.stream_ordering, membership = excluded.membership`,
		roomID, userID, ev, pos, membership); err != nil {
		t.Fatal(err)
	}
}

func TestChanges(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice := f.register(t, "alice", "A")
		bob := f.register(t, "bob", "B")
		carol := f.register(t, "carol", "C")
		dave := f.register(t, "dave", "D")
		eve := f.register(t, "eve", "E")
		// !r1: alice, bob, carol. !r2: dave alone.
		member(t, db, "!r1", alice.user, "join", 1)
		member(t, db, "!r1", bob.user, "join", 2)
		member(t, db, "!r1", carol.user, "join", 3)
		member(t, db, "!r2", dave.user, "join", 4)
		tok := func(ev int64) streams.Token {
			tk := f.reg.CurrentToken()
			tk.Events = ev
			return tk
		}
		check := func(name string, from, to streams.Token, wantChanged, wantLeft []string) {
			t.Helper()
			changed, left, err := f.s.Changes(ctx, alice.user, from, to)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(changed, wantChanged) || !slices.Equal(left, wantLeft) {
				t.Errorf("%s: changed %v left %v, want %v %v", name, changed, left, wantChanged, wantLeft)
			}
		}
		t0 := tok(4)
		// bob logs in a new device, dave (no shared room) too, alice too.
		f.login(t, bob.user, "B2")
		f.login(t, dave.user, "D2")
		f.login(t, alice.user, "A2")
		t1 := tok(4)
		check("new devices", t0, t1, []string{alice.user, bob.user}, []string{})
		check("nothing new", t1, t1, []string{}, []string{})
		// dave joins r1: his devices are new to alice. carol leaves r1:
		// she shares nothing with alice any more.
		member(t, db, "!r1", dave.user, "join", 5)
		member(t, db, "!r1", carol.user, "leave", 6)
		t2 := tok(6)
		check("join and leave", t1, t2, []string{dave.user}, []string{carol.user})
		// alice leaves r1: everyone there is gone; then she joins r2 with
		// dave (who is in r2): dave is shared again.
		member(t, db, "!r1", alice.user, "leave", 7)
		t3 := tok(7)
		check("alice left", t2, t3, []string{}, []string{bob.user, dave.user})
		member(t, db, "!r2", alice.user, "join", 8)
		t4 := tok(8)
		check("alice joined", t3, t4, []string{dave.user}, []string{})

		// The range's membership counts, not the current one: changes
		// after to do not leak into the answer for (from, to].
		member(t, db, "!r2", eve.user, "join", 9)
		member(t, db, "!r2", eve.user, "leave", 10)
		check("joined in the range, left after it", t4, tok(9), []string{eve.user}, []string{})
		check("left in the range", tok(9), tok(10), []string{}, []string{eve.user})
		check("joined and left in the range", t4, tok(10), []string{}, []string{})
		member(t, db, "!r2", dave.user, "leave", 11)
		member(t, db, "!r2", dave.user, "join", 12)
		check("left in the range, back after it", tok(10), tok(11), []string{}, []string{dave.user})
		check("left and back in the range", tok(10), tok(12), []string{dave.user}, []string{})
		before := tok(12)
		f.login(t, dave.user, "D3")
		after := tok(12)
		member(t, db, "!r2", dave.user, "leave", 13)
		check("new device in the range, left after it", before, after, []string{dave.user}, []string{})
		check("new device and left in the range", before, tok(13), []string{}, []string{dave.user})
		// alice leaves r2 (her only room with dave, who rejoins) and
		// comes back after the range.
		member(t, db, "!r2", dave.user, "join", 14)
		member(t, db, "!r2", alice.user, "leave", 15)
		member(t, db, "!r2", alice.user, "join", 16)
		check("alice left in the range, back after it", tok(14), tok(15), []string{}, []string{dave.user})
		check("alice left and back in the range", tok(14), tok(16), []string{}, []string{})
	})
}

// TestClaimSkipsKeysBeingClaimed: while another transaction (another
// worker's claim, not yet committed) holds the oldest key, a claim takes
// the next one at once instead of waiting for it and then finding nothing
// (which would hand out the fallback key while one-time keys remain).
// PostgreSQL only: SQLite's single writer has no concurrent claims.
func TestClaimSkipsKeysBeingClaimed(t *testing.T) {
	db := storagetest.NewDB(t, storage.Postgres)
	ctx := ctxT(t)
	f := newFixture(t, db)
	alice := f.register(t, "alice", "A")
	clock := time.UnixMilli(1000)
	keys.SetClock(f.s, func() time.Time { return clock })
	for _, id := range []string{"first", "second"} {
		if _, err := f.s.UploadKeys(ctx, alice.user, alice.id, keys.Upload{OneTimeKeys: alice.otks(t, id, 1)}); err != nil {
			t.Fatal(err)
		}
		clock = clock.Add(time.Second)
	}
	fb := map[string]json.RawMessage{"signed_curve25519:fb": raw(t, alice.sign(t, map[string]any{"key": "fallback", "fallback": true}))}
	if _, err := f.s.UploadKeys(ctx, alice.user, alice.id, keys.Upload{FallbackKeys: fb}); err != nil {
		t.Fatal(err)
	}
	// Another claim holds the oldest key, uncommitted, until released (and
	// then rolls back).
	locked, release, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		done <- db.Tx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, `DELETE FROM e2e_one_time_keys WHERE key_id = 'first000'`); err != nil {
				return err
			}
			close(locked)
			<-release
			return errRollback
		})
	}()
	<-locked
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	res, err := f.s.ClaimKeys(cctx, map[string]map[string]string{alice.user: {alice.id: "signed_curve25519"}})
	cancel()
	close(release)
	if txErr := <-done; txErr != errRollback {
		t.Fatalf("locking transaction: %v", txErr)
	}
	if err != nil {
		t.Fatalf("claim while the oldest key is being claimed: %v (it waited for the lock)", err)
	}
	if _, ok := res.OneTimeKeys[alice.user][alice.id]["signed_curve25519:second000"]; !ok {
		t.Fatalf("claimed %v, want the second key", res.OneTimeKeys[alice.user][alice.id])
	}
}

var errRollback = errors.New("roll back")
