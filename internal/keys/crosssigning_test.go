package keys_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"

	"ganglion/internal/accounts"
	"ganglion/internal/canonicaljson"
	"ganglion/internal/events"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// csKeys is a user's set of cross-signing key pairs.
type csKeys struct {
	user                string
	master, self, usign ed25519.PrivateKey
}

func newCSKeys(t *testing.T, user string) *csKeys {
	gen := func() ed25519.PrivateKey {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	return &csKeys{user: user, master: gen(), self: gen(), usign: gen()}
}

func pubOf(k ed25519.PrivateKey) string { return events.EncodeBase64(k.Public().(ed25519.PublicKey)) }

// signWith adds a signature by signer (key id "ed25519:"+name) to obj.
func signWith(t *testing.T, obj map[string]any, user, name string, signer ed25519.PrivateKey) map[string]any {
	t.Helper()
	bare := map[string]any{}
	for k, v := range obj {
		if k != "signatures" && k != "unsigned" {
			bare[k] = v
		}
	}
	msg, err := canonicaljson.Marshal(bare)
	if err != nil {
		t.Fatal(err)
	}
	sigs, _ := obj["signatures"].(map[string]any)
	if sigs == nil {
		sigs = map[string]any{}
	}
	mine, _ := sigs[user].(map[string]string)
	if mine == nil {
		mine = map[string]string{}
	}
	mine["ed25519:"+name] = events.EncodeBase64(ed25519.Sign(signer, msg))
	sigs[user] = mine
	obj["signatures"] = sigs
	return obj
}

func (c *csKeys) key(t *testing.T, usage string, k ed25519.PrivateKey) map[string]any {
	obj := map[string]any{"user_id": c.user, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + pubOf(k): pubOf(k)}}
	if usage != "master" {
		signWith(t, obj, c.user, pubOf(c.master), c.master)
	}
	return obj
}

func (c *csKeys) upload(t *testing.T) string {
	return string(raw(t, map[string]any{
		"master_key":       c.key(t, "master", c.master),
		"self_signing_key": c.key(t, "self_signing", c.self),
		"user_signing_key": c.key(t, "user_signing", c.usign),
	}))
}

func TestCrossSigningKeysUpload(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		sess, err := f.acc.Register(ctxT(t), accounts.NewUser{Localpart: "alice", Password: "secret-pw-1", DeviceID: "A"})
		if err != nil {
			t.Fatal(err)
		}
		alice := f.deviceFor(t, sess)
		bob := f.register(t, "bob", "B")
		cs := newCSKeys(t, alice.user)
		post := func(body string) (int, string, []byte) {
			return f.do(t, alice, "POST", "/keys/device_signing/upload", body)
		}
		wrongUser := newCSKeys(t, bob.user)
		unsignedSelf := cs.key(t, "self_signing", cs.self)
		delete(unsignedSelf, "signatures")
		otherSigned := signWith(t, map[string]any{"user_id": alice.user, "usage": []string{"self_signing"},
			"keys": map[string]string{"ed25519:" + pubOf(cs.self): pubOf(cs.self)}}, alice.user, pubOf(cs.usign), cs.usign)
		cases := []struct {
			name, body string
			status     int
			code       string
		}{
			{"nothing", `{}`, 400, "M_MISSING_PARAM"},
			{"self-signing without a master", string(raw(t, map[string]any{"self_signing_key": cs.key(t, "self_signing", cs.self)})), 400, "M_MISSING_PARAM"},
			{"another user's keys", wrongUser.upload(t), 400, "M_INVALID_PARAM"},
			{"wrong usage", string(raw(t, map[string]any{"master_key": cs.key(t, "self_signing", cs.master)})), 400, "M_INVALID_PARAM"},
			{"two keys", string(raw(t, map[string]any{"master_key": map[string]any{"user_id": alice.user, "usage": []string{"master"},
				"keys": map[string]string{"ed25519:" + pubOf(cs.master): pubOf(cs.master), "ed25519:" + pubOf(cs.self): pubOf(cs.self)}}})), 400, "M_INVALID_PARAM"},
			{"key id not the key", string(raw(t, map[string]any{"master_key": map[string]any{"user_id": alice.user, "usage": []string{"master"},
				"keys": map[string]string{"ed25519:abc": pubOf(cs.master)}}})), 400, "M_INVALID_PARAM"},
			{"master not an object", `{"master_key":"x"}`, 400, "M_BAD_JSON"},
			{"self-signing unsigned", string(raw(t, map[string]any{"master_key": cs.key(t, "master", cs.master), "self_signing_key": unsignedSelf})), 400, "M_INVALID_SIGNATURE"},
			{"self-signing signed by another key", string(raw(t, map[string]any{"master_key": cs.key(t, "master", cs.master), "self_signing_key": otherSigned})), 400, "M_INVALID_SIGNATURE"},
			{"first upload needs no auth", cs.upload(t), 200, ""},
			{"identical re-upload needs no auth", cs.upload(t), 200, ""},
		}
		for _, c := range cases {
			if status, code, b := post(c.body); status != c.status || code != c.code {
				t.Errorf("%s: %d %s (%s), want %d %s", c.name, status, code, b, c.status, c.code)
			}
		}
		// Replacing the master key needs the password.
		cs2 := newCSKeys(t, alice.user)
		status, _, b := post(cs2.upload(t))
		if status != 401 || !strings.Contains(string(b), "m.login.password") {
			t.Fatalf("replacing without auth: %d %s", status, b)
		}
		var challenge struct{ Session string }
		_ = json.Unmarshal(b, &challenge)
		withAuth := map[string]any{}
		_ = json.Unmarshal([]byte(cs2.upload(t)), &withAuth)
		withAuth["auth"] = map[string]any{"type": "m.login.password", "session": challenge.Session, "password": "secret-pw-1",
			"identifier": map[string]string{"type": "m.id.user", "user": alice.user}}
		if status, code, b := post(string(raw(t, withAuth))); status != 200 {
			t.Fatalf("replacing with auth: %d %s %s", status, code, b)
		}

		// Everyone sees the master and self-signing keys; only alice her
		// user-signing key.
		for _, viewer := range []*device{alice, bob} {
			_, _, b := f.do(t, viewer, "POST", "/keys/query", `{"device_keys":{"`+alice.user+`":[]}}`)
			var res struct {
				MasterKeys      map[string]struct{ Keys map[string]string } `json:"master_keys"`
				SelfSigningKeys map[string]json.RawMessage                  `json:"self_signing_keys"`
				UserSigningKeys map[string]json.RawMessage                  `json:"user_signing_keys"`
			}
			if err := json.Unmarshal(b, &res); err != nil {
				t.Fatal(err)
			}
			if res.MasterKeys[alice.user].Keys["ed25519:"+pubOf(cs2.master)] == "" || res.SelfSigningKeys[alice.user] == nil {
				t.Errorf("%s's query: %s", viewer.user, b)
			}
			if _, ok := res.UserSigningKeys[alice.user]; ok != (viewer == alice) {
				t.Errorf("%s's query shows alice's user-signing key: %v", viewer.user, ok)
			}
		}
	})
}

func TestSignaturesUpload(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		alice := f.register(t, "alice", "A")
		bob := f.register(t, "bob", "B")
		carol := f.register(t, "carol", "C")
		acs, bcs := newCSKeys(t, alice.user), newCSKeys(t, bob.user)
		for _, u := range []struct {
			d  *device
			cs *csKeys
		}{{alice, acs}, {bob, bcs}} {
			if status, _, b := f.do(t, u.d, "POST", "/keys/upload", string(raw(t, map[string]any{"device_keys": u.d.deviceKeys(t, "c")}))); status != 200 {
				t.Fatalf("upload device keys: %s", b)
			}
			if status, _, b := f.do(t, u.d, "POST", "/keys/device_signing/upload", u.cs.upload(t)); status != 200 {
				t.Fatalf("upload cross-signing keys: %s", b)
			}
		}
		before := f.streamRows(t)
		// alice's self-signing key signs her device; her device signs her
		// master key; her user-signing key signs bob's master key.
		devSigned := signWith(t, alice.deviceKeys(t, "c"), alice.user, pubOf(acs.self), acs.self)
		masterSigned := signWith(t, acs.key(t, "master", acs.master), alice.user, alice.id, alice.priv)
		bobSigned := signWith(t, bcs.key(t, "master", bcs.master), alice.user, pubOf(acs.usign), acs.usign)
		badDev := signWith(t, alice.deviceKeys(t, "c"), alice.user, pubOf(acs.self), acs.usign) // wrong key under self's id
		tampered := signWith(t, alice.deviceKeys(t, "other-curve"), alice.user, pubOf(acs.self), acs.self)
		body := map[string]map[string]any{
			alice.user: {
				alice.id:          devSigned,
				pubOf(acs.master): masterSigned,
				"NODEVICE":        devSigned,
			},
			bob.user: {
				pubOf(bcs.master): bobSigned,
				bob.id:            signWith(t, bob.deviceKeys(t, "c"), alice.user, pubOf(acs.usign), acs.usign),
			},
			"@x:elsewhere": {"K": map[string]any{}},
		}
		status, _, b := f.do(t, alice, "POST", "/keys/signatures/upload", string(raw(t, body)))
		if status != 200 {
			t.Fatalf("signatures upload: %d %s", status, b)
		}
		var res struct {
			Failures map[string]map[string]struct{ Errcode string }
		}
		_ = json.Unmarshal(b, &res)
		wantFail := map[string]map[string]string{
			alice.user:     {"NODEVICE": "M_NOT_FOUND"},
			bob.user:       {bob.id: "M_NOT_FOUND"},
			"@x:elsewhere": {"K": "M_INVALID_PARAM"},
		}
		for u, keys := range wantFail {
			for k, code := range keys {
				if res.Failures[u][k].Errcode != code {
					t.Errorf("failure for %s/%s = %q, want %s (%s)", u, k, res.Failures[u][k].Errcode, code, b)
				}
			}
		}
		if len(res.Failures[alice.user]) != 1 || len(res.Failures[bob.user]) != 1 {
			t.Errorf("failures %s", b)
		}
		// Two announcements: alice's device + master (one change of alice's
		// list), alice's signature of bob (alice's list again).
		if n := f.streamRows(t); n != before+1 {
			t.Errorf("device_lists changes %d → %d, want one more", before, n)
		}
		for _, bad := range []map[string]any{badDev, tampered} {
			_, _, b := f.do(t, alice, "POST", "/keys/signatures/upload", string(raw(t, map[string]map[string]any{alice.user: {alice.id: bad}})))
			if !strings.Contains(string(b), "M_INVALID") {
				t.Errorf("bad signature accepted: %s", b)
			}
		}
		// Visibility: alice's signature of bob's master key only to alice.
		sigOnBob := func(viewer *device) bool {
			_, _, b := f.do(t, viewer, "POST", "/keys/query", `{"device_keys":{"`+bob.user+`":[]}}`)
			var q struct {
				MasterKeys map[string]struct{ Signatures map[string]map[string]string } `json:"master_keys"`
			}
			_ = json.Unmarshal(b, &q)
			return q.MasterKeys[bob.user].Signatures[alice.user]["ed25519:"+pubOf(acs.usign)] != ""
		}
		if !sigOnBob(alice) || sigOnBob(bob) || sigOnBob(carol) {
			t.Errorf("user-signing signature visible to alice %v, bob %v, carol %v", sigOnBob(alice), sigOnBob(bob), sigOnBob(carol))
		}
		// alice's own signatures are visible to all.
		_, _, b = f.do(t, carol, "POST", "/keys/query", `{"device_keys":{"`+alice.user+`":[]}}`)
		var q struct {
			DeviceKeys map[string]map[string]struct{ Signatures map[string]map[string]string } `json:"device_keys"`
			MasterKeys map[string]struct{ Signatures map[string]map[string]string }            `json:"master_keys"`
		}
		_ = json.Unmarshal(b, &q)
		if q.DeviceKeys[alice.user][alice.id].Signatures[alice.user]["ed25519:"+pubOf(acs.self)] == "" ||
			q.MasterKeys[alice.user].Signatures[alice.user]["ed25519:"+alice.id] == "" {
			t.Errorf("carol's query of alice: %s", b)
		}
	})
}
