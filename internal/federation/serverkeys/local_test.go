package serverkeys_test

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"ganglion/internal/events"
	"ganglion/internal/federation/serverkeys"
)

// Our answer lists the current key and old_signing_keys, is valid for
// key_refresh_interval, is signed by the current key, and is rebuilt with
// a later valid_until_ts once less than half the interval remains.
func TestLocalKeyResponse(t *testing.T) {
	c := newClock()
	key := mustKey(t)
	oldPub, _, _ := ed25519.GenerateKey(nil)
	old := map[string]serverkeys.OldKey{"ed25519:old": {Key: oldPub, ExpiredTS: 1234}}
	l := newLocal(t, "example.test", key, c, old)

	body, err := l.Response()
	if err != nil {
		t.Fatal(err)
	}
	r, err := serverkeys.ParseResponse(body)
	if err != nil {
		t.Fatal(err)
	}
	if r.ServerName != "example.test" {
		t.Errorf("server_name %q", r.ServerName)
	}
	if want := c.MS() + (24 * time.Hour).Milliseconds(); r.ValidUntilTS != want {
		t.Errorf("valid_until_ts %d, want %d", r.ValidUntilTS, want)
	}
	if !r.VerifyKeys[key.ID].Equal(key.Public()) || len(r.VerifyKeys) != 1 {
		t.Errorf("verify_keys %v", r.VerifyKeys)
	}
	if o := r.OldVerifyKeys["ed25519:old"]; !o.Key.Equal(oldPub) || o.ExpiredTS != 1234 {
		t.Errorf("old_verify_keys %v", r.OldVerifyKeys)
	}
	if err := events.VerifyJSON(body, "example.test", key.ID, key.Public()); err != nil {
		t.Errorf("not signed by our key: %v", err)
	}
	if err := r.CheckSelfSigned(); err != nil {
		t.Error(err)
	}

	// Within the first half of the interval the same bytes are served.
	c.Advance(11 * time.Hour)
	again, _ := l.Response()
	if string(again) != string(body) {
		t.Error("answer rebuilt before half its life")
	}
	c.Advance(2 * time.Hour)
	fresh, _ := l.Response()
	r2, err := serverkeys.ParseResponse(fresh)
	if err != nil {
		t.Fatal(err)
	}
	if want := c.MS() + (24 * time.Hour).Milliseconds(); r2.ValidUntilTS != want {
		t.Errorf("after 13h valid_until_ts %d, want %d", r2.ValidUntilTS, want)
	}
	if err := r2.CheckSelfSigned(); err != nil {
		t.Error(err)
	}
}

func TestLocalRefusesBadConfig(t *testing.T) {
	key := mustKey(t)
	if _, err := serverkeys.NewLocal(serverkeys.LocalConfig{ServerName: "x.test", Key: key}); err == nil {
		t.Error("zero refresh interval accepted")
	}
	if _, err := serverkeys.NewLocal(serverkeys.LocalConfig{ServerName: "x.test", RefreshInterval: time.Hour}); err == nil {
		t.Error("missing key accepted")
	}
	old := map[string]serverkeys.OldKey{key.ID: {Key: key.Public(), ExpiredTS: 1}}
	if _, err := serverkeys.NewLocal(serverkeys.LocalConfig{ServerName: "x.test", Key: key, RefreshInterval: time.Hour, OldKeys: old}); err == nil {
		t.Error("current key listed as old accepted")
	}
}

// The keyring answers for our own server from the config: the current key
// at any time, an old key up to its expired_ts.
func TestKeyringOwnKeys(t *testing.T) {
	c := newClock()
	key := mustKey(t)
	oldPub, _, _ := ed25519.GenerateKey(nil)
	l := newLocal(t, "ours.test", key, c, map[string]serverkeys.OldKey{"ed25519:old": {Key: oldPub, ExpiredTS: 5000}})
	k := serverkeys.NewKeyring(l, nil, serverkeys.Options{Now: c.Now}, quietLog())
	ctx := t.Context()
	if pub, err := k.VerifyKey(ctx, "ours.test", key.ID, c.MS()+1e9); err != nil || !pub.Equal(key.Public()) {
		t.Errorf("current key: %v, %v", pub, err)
	}
	if pub, err := k.VerifyKey(ctx, "ours.test", "ed25519:old", 5000); err != nil || !pub.Equal(oldPub) {
		t.Errorf("old key at expiry: %v, %v", pub, err)
	}
	if _, err := k.VerifyKey(ctx, "ours.test", "ed25519:old", 5001); !errors.Is(err, serverkeys.ErrKeyNotValid) {
		t.Errorf("old key after expiry: %v, want ErrKeyNotValid", err)
	}
	if _, err := k.VerifyKey(ctx, "ours.test", "ed25519:nope", 0); !errors.Is(err, serverkeys.ErrKeyNotFound) {
		t.Errorf("unknown own key: %v, want ErrKeyNotFound", err)
	}
}

// ParseResponse refuses answers without the fields the spec requires and
// keys that are not ed25519 public keys; it ignores other algorithms.
func TestParseResponse(t *testing.T) {
	good := `"key":"` + events.EncodeBase64(make([]byte, 32)) + `"`
	cases := []struct {
		name, body string
		ok         bool
	}{
		{"ok", `{"server_name":"a","valid_until_ts":1,"verify_keys":{"ed25519:a":{` + good + `}}}`, true},
		{"other algorithm ignored", `{"server_name":"a","valid_until_ts":1,"verify_keys":{"curve:a":{"key":"!!"}}}`, true},
		{"no server_name", `{"valid_until_ts":1,"verify_keys":{}}`, false},
		{"no valid_until_ts", `{"server_name":"a","verify_keys":{}}`, false},
		{"short key", `{"server_name":"a","valid_until_ts":1,"verify_keys":{"ed25519:a":{"key":"AAAA"}}}`, false},
		{"old key without expired_ts", `{"server_name":"a","valid_until_ts":1,"old_verify_keys":{"ed25519:a":{` + good + `}}}`, false},
		{"not an object", `[1]`, false},
	}
	for _, tc := range cases {
		_, err := serverkeys.ParseResponse([]byte(tc.body))
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v", tc.name, err)
		}
		if err != nil && !errors.Is(err, serverkeys.ErrBadResponse) {
			t.Errorf("%s: %v is not ErrBadResponse", tc.name, err)
		}
	}
	var many = map[string]any{"server_name": "a", "valid_until_ts": 1}
	vk := map[string]any{}
	for i := 0; i < 100; i++ {
		vk["ed25519:k"+string(rune('a'+i%26))+string(rune('a'+i/26))] = map[string]string{"key": events.EncodeBase64(make([]byte, 32))}
	}
	many["verify_keys"] = vk
	b, _ := json.Marshal(many)
	if _, err := serverkeys.ParseResponse(b); err == nil {
		t.Error("answer with 100 keys accepted")
	}
}
