package inbound_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/canonicaljson"
	"ganglion/internal/events"
	"ganglion/internal/federation/inbound"
	"ganglion/internal/federation/xmatrix"
	e2ekeys "ganglion/internal/keys"
	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// keysFixture is the room fixture served with the keys domain and
// allow_public_rooms_over_federation as given, and alice registered with
// two devices: PHONE (with device keys, one-time keys and a fallback key)
// and LAPTOP (named "Laptop", no keys), and cross-signing keys.
type keysFixture struct {
	*fixture
	ks     *e2ekeys.Service
	acc    *accounts.Service
	phone  ed25519.PrivateKey
	master ed25519.PrivateKey
}

func newKeysFixture(t *testing.T, db *storage.DB, allowPublicRooms bool, opts ...func(*inbound.Config)) *keysFixture {
	t.Helper()
	f := newFixture(t, db, true)
	ctx := t.Context()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	w, err := e2ekeys.NewLocalWriter(ctx, db, f.reg, log)
	if err != nil {
		t.Fatal(err)
	}
	ks := e2ekeys.NewService(db, f.reg, w, server, log)
	acc := accounts.NewService(db, accounts.Settings{ServerName: server, BcryptRounds: 4}, log)
	acc.SetDeviceListHook(ks)
	mux := mxhttp.NewMux()
	cfg := inbound.Config{ServerName: server, AllowProfileLookup: true, AllowPublicRooms: allowPublicRooms,
		Now: func() time.Time { return time.UnixMilli(1_700_000_000_000) }}
	for _, o := range opts {
		o(&cfg)
	}
	inbound.New(cfg, f.svc, profiles{}, log).WithKeys(ks).
		Routes(mux, mxhttp.NewServer(log), &xmatrix.Authenticator{ServerName: server, Keys: f.finder, Log: log})
	f.h = mux
	kf := &keysFixture{fixture: f, ks: ks, acc: acc, phone: edKey(t), master: edKey(t)}

	if _, err := acc.Register(ctx, accounts.NewUser{Localpart: "alice", DeviceID: "PHONE"}); err != nil {
		t.Fatal(err)
	}
	if _, err := acc.CreateSession(ctx, alice, "LAPTOP", "Laptop", false); err != nil {
		t.Fatal(err)
	}
	pub := events.EncodeBase64(kf.phone.Public().(ed25519.PublicKey))
	dk := kf.sign(t, kf.phone, "ed25519:PHONE", map[string]any{"user_id": alice, "device_id": "PHONE",
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]string{"ed25519:PHONE": pub, "curve25519:PHONE": "curve"}})
	otks := map[string]json.RawMessage{}
	for _, id := range []string{"AAA", "AAB", "AAC", "AAD"} {
		otks["signed_curve25519:"+id] = raw(kf.sign(t, kf.phone, "ed25519:PHONE", map[string]any{"key": "otk-" + id}))
	}
	fb := map[string]json.RawMessage{"signed_curve25519:FB1": raw(kf.sign(t, kf.phone, "ed25519:PHONE",
		map[string]any{"key": "fallback", "fallback": true}))}
	if _, err := ks.UploadKeys(ctx, alice, "PHONE", e2ekeys.Upload{DeviceKeys: raw(dk), OneTimeKeys: otks, FallbackKeys: fb}); err != nil {
		t.Fatal(err)
	}
	csKey := func(priv ed25519.PrivateKey, usage string) map[string]any {
		p := events.EncodeBase64(priv.Public().(ed25519.PublicKey))
		return map[string]any{"user_id": alice, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + p: p}}
	}
	masterID := "ed25519:" + events.EncodeBase64(kf.master.Public().(ed25519.PublicKey))
	up := e2ekeys.SigningKeysUpload{
		MasterKey:      raw(csKey(kf.master, "master")),
		SelfSigningKey: raw(kf.sign(t, kf.master, masterID, csKey(edKey(t), "self_signing"))),
		UserSigningKey: raw(kf.sign(t, kf.master, masterID, csKey(edKey(t), "user_signing"))),
	}
	changes, _, err := ks.CheckSigningKeys(ctx, alice, up)
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.StoreSigningKeys(ctx, alice, changes); err != nil {
		t.Fatal(err)
	}
	return kf
}

func edKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

// sign adds alice's signature by priv under keyID to obj.
func (kf *keysFixture) sign(t *testing.T, priv ed25519.PrivateKey, keyID string, obj map[string]any) map[string]any {
	t.Helper()
	msg, err := canonicaljson.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	obj["signatures"] = map[string]any{alice: map[string]string{keyID: events.EncodeBase64(ed25519.Sign(priv, msg))}}
	return obj
}

// doRaw posts body as is, signed as remote.test over no content: the
// authenticator must refuse a body that is not JSON before anything else.
func (f *fixture) doRaw(uri string, body []byte) (int, map[string]any) {
	f.t.Helper()
	req := httptest.NewRequest("POST", uri, bytes.NewReader(body))
	params, err := xmatrix.Sign(xmatrix.Request{Method: "POST", URI: uri, Origin: remote, Destination: server}, f.keys[remote])
	if err != nil {
		f.t.Fatal(err)
	}
	req.Header.Set("Authorization", params.Format())
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		f.t.Fatalf("POST %s: answer is not a JSON object: %q", uri, rec.Body.String())
	}
	return rec.Code, out
}

func obj(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// sentStreamID is the stream id of the last device list update the
// federation sender queued for dest about alice (0: none).
func (kf *keysFixture) sentStreamID(t *testing.T, dest string) float64 {
	t.Helper()
	var id int64
	err := kf.db.Reader().QueryRowContext(t.Context(), `SELECT stream_id FROM federation_device_list_sent WHERE destination = $1 AND user_id = $2`,
		dest, alice).Scan(&id)
	if err != nil && err != sql.ErrNoRows {
		t.Fatal(err)
	}
	return float64(id)
}

func TestFederationInboundUserDevices(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		kf := newKeysFixture(t, db, false)
		path := "/_matrix/federation/v1/user/devices/"
		code, body := kf.do("GET", path+url.PathEscape(alice), nil, remote)
		if code != 200 || body["user_id"] != alice {
			t.Fatalf("user/devices: %d %v", code, body)
		}
		// Nothing was sent to the asking server yet: its next update will
		// name no prev_id.
		if body["stream_id"] != float64(0) {
			t.Errorf("stream_id = %v before any update was sent, want 0", body["stream_id"])
		}
		devs := list(body["devices"])
		if len(devs) != 2 {
			t.Fatalf("devices = %v, want LAPTOP and PHONE", devs)
		}
		laptop, phone := obj(devs[0]), obj(devs[1])
		if laptop["device_id"] != "LAPTOP" || laptop["device_display_name"] != nil || laptop["keys"] != nil {
			t.Errorf("LAPTOP = %v, want no name (allow_device_name_lookup_over_federation is off) and no keys", laptop)
		}
		pk := obj(phone["keys"])
		if phone["device_id"] != "PHONE" || obj(pk["keys"])["ed25519:PHONE"] != events.EncodeBase64(kf.phone.Public().(ed25519.PublicKey)) ||
			obj(obj(pk["signatures"])[alice])["ed25519:PHONE"] == nil {
			t.Errorf("PHONE = %v, want its signed device keys", phone)
		}
		masterPub := events.EncodeBase64(kf.master.Public().(ed25519.PublicKey))
		if obj(obj(body["master_key"])["keys"])["ed25519:"+masterPub] != masterPub {
			t.Errorf("master_key = %v", body["master_key"])
		}
		if obj(body["self_signing_key"])["usage"] == nil {
			t.Errorf("self_signing_key = %v", body["self_signing_key"])
		}
		if _, ok := body["user_signing_key"]; ok {
			t.Errorf("user_signing_key served over federation: %v", body)
		}

		// Once the sender queued an update for the asking server, the
		// answer names it (the prev_id its next update will carry), and
		// only for that server.
		if _, err := kf.acc.CreateSession(t.Context(), alice, "TABLET", "", false); err != nil {
			t.Fatal(err)
		}
		if _, err := kf.db.Exec(t.Context(), `INSERT INTO federation_device_list_sent (destination, user_id, stream_id) VALUES ($1, $2, $3)`,
			remote, alice, int64(77<<12|1)); err != nil {
			t.Fatal(err)
		}
		_, body = kf.do("GET", path+url.PathEscape(alice), nil, remote)
		if sid, _ := body["stream_id"].(float64); sid != kf.sentStreamID(t, remote) || sid == 0 || len(list(body["devices"])) != 3 {
			t.Errorf("after a new device: stream_id %v, want %v; %d devices", body["stream_id"], kf.sentStreamID(t, remote), len(list(body["devices"])))
		}

		code, body = kf.do("GET", path+url.PathEscape(bob), nil, remote)
		want(t, "remote user", code, body, 400, "M_INVALID_PARAM")
		code, body = kf.do("GET", path+url.PathEscape("@nobody:"+server), nil, remote)
		want(t, "unknown local user", code, body, 404, "M_NOT_FOUND")
		code, body = kf.do("GET", path+"alice", nil, remote)
		want(t, "malformed user id", code, body, 400, "M_INVALID_PARAM")
		code, body = kf.do("GET", path+url.PathEscape(alice), nil, "")
		want(t, "unsigned", code, body, 401, "M_UNAUTHORIZED")
		code, body = kf.do("GET", path+url.PathEscape(alice), nil, "forger")
		want(t, "forged signature", code, body, 401, "M_UNAUTHORIZED")
	})
}

func TestFederationInboundUserKeysQuery(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		kf := newKeysFixture(t, db, false)
		path := "/_matrix/federation/v1/user/keys/query"
		code, body := kf.do("POST", path, map[string]any{"device_keys": map[string]any{alice: []string{}}}, remote)
		if code != 200 {
			t.Fatalf("keys/query: %d %v", code, body)
		}
		dk := obj(obj(body["device_keys"])[alice])
		if len(dk) != 1 || obj(dk["PHONE"])["device_id"] != "PHONE" {
			t.Errorf("device_keys of alice = %v, want PHONE's only (LAPTOP has none)", dk)
		}
		if obj(body["master_keys"])[alice] == nil || obj(body["self_signing_keys"])[alice] == nil {
			t.Errorf("cross-signing keys missing: %v", body)
		}
		if _, ok := body["user_signing_keys"]; ok {
			t.Errorf("user_signing_keys served over federation: %v", body)
		}
		_, body = kf.do("POST", path, map[string]any{"device_keys": map[string]any{alice: []string{"LAPTOP"}}}, remote)
		if dk := obj(obj(body["device_keys"])[alice]); len(dk) != 0 {
			t.Errorf("device_keys of LAPTOP only = %v, want none", dk)
		}

		code, body = kf.do("POST", path, map[string]any{"device_keys": map[string]any{bob: []string{}}}, remote)
		want(t, "remote user", code, body, 400, "M_INVALID_PARAM")
		code, body = kf.do("POST", path, map[string]any{"device_keys": map[string]any{"alice": []string{}}}, remote)
		want(t, "malformed user id", code, body, 400, "M_INVALID_PARAM")
		code, body = kf.do("POST", path, map[string]any{}, remote)
		want(t, "no device_keys", code, body, 400, "M_BAD_JSON")
		code, body = kf.do("POST", path, map[string]any{"device_keys": map[string]any{alice: "PHONE"}}, remote)
		want(t, "device list not a list", code, body, 400, "M_BAD_JSON")
		code, body = kf.doRaw(path, []byte("not json"))
		want(t, "body not JSON", code, body, 400, "M_NOT_JSON")
		code, body = kf.do("POST", path, map[string]any{"device_keys": map[string]any{alice: []string{}}}, "")
		want(t, "unsigned", code, body, 401, "M_UNAUTHORIZED")
	})
}

func TestFederationInboundUserKeysClaim(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		kf := newKeysFixture(t, db, false)
		path := "/_matrix/federation/v1/user/keys/claim"
		req := map[string]any{"one_time_keys": map[string]any{alice: map[string]string{"PHONE": "signed_curve25519", "LAPTOP": "signed_curve25519"}}}
		claim := func() (string, map[string]any) {
			t.Helper()
			code, body := kf.do("POST", path, req, remote)
			if code != 200 {
				t.Fatalf("keys/claim: %d %v", code, body)
			}
			devs := obj(obj(body["one_time_keys"])[alice])
			if len(devs) != 1 {
				t.Fatalf("claimed %v, want PHONE's key only (LAPTOP has none)", devs)
			}
			for id, k := range obj(devs["PHONE"]) {
				return id, obj(k)
			}
			t.Fatalf("no key for PHONE: %v", body)
			return "", nil
		}
		// Four one-time keys, claimed concurrently: each handed out once.
		var mu sync.Mutex
		var wg sync.WaitGroup
		seen := map[string]int{}
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				code, body := kf.do("POST", path, req, remote)
				mu.Lock()
				defer mu.Unlock()
				if code != 200 {
					seen[fmt.Sprintf("status %d: %v", code, body)]++
					return
				}
				for id := range obj(obj(obj(body["one_time_keys"])[alice])["PHONE"]) {
					seen[id]++
				}
			}()
		}
		wg.Wait()
		var ids []string
		for id, n := range seen {
			if n != 1 {
				t.Errorf("key %s handed out %d times", id, n)
			}
			ids = append(ids, id)
		}
		slices.Sort(ids)
		if wantIDs := []string{"signed_curve25519:AAA", "signed_curve25519:AAB", "signed_curve25519:AAC", "signed_curve25519:AAD"}; !slices.Equal(ids, wantIDs) {
			t.Errorf("concurrent claims handed out %v, want %v", ids, wantIDs)
		}
		// Then the fallback key, which stays.
		for range 2 {
			if id, k := claim(); id != "signed_curve25519:FB1" || k["key"] != "fallback" {
				t.Errorf("claim after the one-time keys ran out: %s %v, want the fallback key", id, k)
			}
		}

		code, body := kf.do("POST", path, map[string]any{"one_time_keys": map[string]any{bob: map[string]string{"D": "signed_curve25519"}}}, remote)
		want(t, "remote user", code, body, 400, "M_INVALID_PARAM")
		code, body = kf.do("POST", path, map[string]any{"one_time_keys": map[string]any{alice: map[string]any{"PHONE": 5}}}, remote)
		want(t, "algorithm not a string", code, body, 400, "M_BAD_JSON")
		code, body = kf.do("POST", path, map[string]any{"one_time_keys": map[string]any{alice: map[string]string{"PHONE": ""}}}, remote)
		want(t, "empty algorithm", code, body, 400, "M_BAD_JSON")
		code, body = kf.do("POST", path, map[string]any{}, remote)
		want(t, "no one_time_keys", code, body, 400, "M_BAD_JSON")
		code, body = kf.doRaw(path, []byte("{"))
		want(t, "body not JSON", code, body, 400, "M_NOT_JSON")
		code, body = kf.do("POST", path, req, "")
		want(t, "unsigned", code, body, 401, "M_UNAUTHORIZED")
	})
}

// With allow_device_name_lookup_over_federation, device names are served.
func TestFederationInboundDeviceNamesAllowed(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		kf := newKeysFixture(t, db, false, func(c *inbound.Config) { c.AllowDeviceNames = true })
		code, body := kf.do("GET", "/_matrix/federation/v1/user/devices/"+url.PathEscape(alice), nil, remote)
		if code != 200 {
			t.Fatalf("user/devices: %d %v", code, body)
		}
		names := map[string]any{}
		for _, d := range list(body["devices"]) {
			names[obj(d)["device_id"].(string)] = obj(d)["device_display_name"]
		}
		if names["LAPTOP"] != "Laptop" {
			t.Errorf("device names %v, want LAPTOP named Laptop", names)
		}
	})
}
