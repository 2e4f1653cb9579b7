package serverkeys_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"ganglion/internal/events"
	"ganglion/internal/federation/serverkeys"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// finder is a VerifyKeyFinder over fixed keys with a validity each.
type finder map[string]struct {
	key   ed25519.PublicKey
	until int64
}

func (f finder) add(server string, k events.SigningKey, until int64) {
	f[server+"|"+k.ID] = struct {
		key   ed25519.PublicKey
		until int64
	}{k.Public(), until}
}

func (f finder) VerifyKey(_ context.Context, server, keyID string, atTS int64) (ed25519.PublicKey, error) {
	e, ok := f[server+"|"+keyID]
	if !ok {
		return nil, fmt.Errorf("%w: %s %s", serverkeys.ErrKeyNotFound, server, keyID)
	}
	if e.until < atTS {
		return nil, fmt.Errorf("%w: %s %s", serverkeys.ErrKeyNotValid, server, keyID)
	}
	return e.key, nil
}

func buildEvent(t *testing.T, rvID string, p events.ProtoEvent, key events.SigningKey, origin string) *events.Event {
	t.Helper()
	rv, _ := events.LookupRoomVersion(rvID)
	if p.RoomID == "" {
		p.RoomID = "!room:a.test"
	}
	if p.Depth == 0 {
		p.Depth = 3
	}
	if p.AuthEvents == nil {
		p.AuthEvents, p.PrevEvents = []string{}, []string{}
	}
	ev, err := events.Build(p, rv, key, origin)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func cosign(t *testing.T, ev *events.Event, server string, key events.SigningKey) *events.Event {
	t.Helper()
	raw, err := events.SignEvent(ev.JSON(), ev.Version(), server, key)
	if err != nil {
		t.Fatal(err)
	}
	out, err := events.Parse(raw, ev.Version())
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func strp(s string) *string { return &s }

// The signatures an event must carry, per room version and event shape.
func TestVerifyEventSignatures(t *testing.T) {
	ka, kb, kc := mustKey(t), mustKey(t), mustKey(t)
	const ts = 1_700_000_000_000
	f := finder{}
	f.add("a.test", ka, ts+1000)
	f.add("b.test", kb, ts-1) // expired before the events below
	f.add("c.test", kc, ts+1000)
	msg := events.ProtoEvent{Sender: "@u:a.test", Type: "m.room.message", Content: json.RawMessage(`{"body":"hi"}`), OriginServerTS: ts}
	ctx := t.Context()

	// v10: the sender's server, at origin_server_ts.
	if err := serverkeys.VerifyEventSignatures(ctx, f, buildEvent(t, "10", msg, ka, "a.test")); err != nil {
		t.Errorf("v10 signed by sender: %v", err)
	}
	if err := serverkeys.VerifyEventSignatures(ctx, f, buildEvent(t, "10", msg, kc, "c.test")); !errors.Is(err, events.ErrSignatureMissing) {
		t.Errorf("v10 signed by another server: %v, want ErrSignatureMissing", err)
	}
	forged := buildEvent(t, "10", msg, events.SigningKey{ID: ka.ID, Private: kc.Private}, "a.test")
	if err := serverkeys.VerifyEventSignatures(ctx, f, forged); !errors.Is(err, events.ErrSignatureInvalid) {
		t.Errorf("v10 signed with the wrong key: %v, want ErrSignatureInvalid", err)
	}
	fromB := msg
	fromB.Sender = "@u:b.test"
	if err := serverkeys.VerifyEventSignatures(ctx, f, buildEvent(t, "10", fromB, kb, "b.test")); !errors.Is(err, serverkeys.ErrKeyNotValid) {
		t.Errorf("v10 with a key expired at origin_server_ts: %v, want ErrKeyNotValid", err)
	}
	// v4 does not enforce key validity.
	if err := serverkeys.VerifyEventSignatures(ctx, f, buildEvent(t, "4", fromB, kb, "b.test")); err != nil {
		t.Errorf("v4 with an expired key: %v", err)
	}

	// v1: the event id's server too.
	v1 := buildEvent(t, "1", msg, kc, "c.test") // id minted by c.test, signed by c.test only
	if err := serverkeys.VerifyEventSignatures(ctx, f, v1); !errors.Is(err, events.ErrSignatureMissing) {
		t.Errorf("v1 without the sender's signature: %v", err)
	}
	if err := serverkeys.VerifyEventSignatures(ctx, f, cosign(t, v1, "a.test", ka)); err != nil {
		t.Errorf("v1 signed by sender and id server: %v", err)
	}
	v1a := buildEvent(t, "1", msg, ka, "a.test")
	if err := serverkeys.VerifyEventSignatures(ctx, f, v1a); err != nil {
		t.Errorf("v1 from the sender's server: %v", err)
	}

	// A third-party invite need not carry the sender's server's signature.
	tpi := events.ProtoEvent{Sender: "@u:a.test", Type: "m.room.member", StateKey: strp("@v:c.test"), OriginServerTS: ts,
		Content: json.RawMessage(`{"membership":"invite","third_party_invite":{"display_name":"v","signed":{"mxid":"@v:c.test","token":"t","signatures":{}}}}`)}
	if err := serverkeys.VerifyEventSignatures(ctx, f, buildEvent(t, "10", tpi, kc, "c.test")); err != nil {
		t.Errorf("third-party invite sent by another server: %v", err)
	}
	plainInvite := tpi
	plainInvite.Content = json.RawMessage(`{"membership":"invite"}`)
	if err := serverkeys.VerifyEventSignatures(ctx, f, buildEvent(t, "10", plainInvite, kc, "c.test")); !errors.Is(err, events.ErrSignatureMissing) {
		t.Errorf("plain invite without the sender's signature: %v", err)
	}

	// A restricted join needs the authorising server's signature.
	join := events.ProtoEvent{Sender: "@u:a.test", Type: "m.room.member", StateKey: strp("@u:a.test"), OriginServerTS: ts,
		Content: json.RawMessage(`{"membership":"join","join_authorised_via_users_server":"@admin:c.test"}`)}
	j := buildEvent(t, "10", join, ka, "a.test")
	if err := serverkeys.VerifyEventSignatures(ctx, f, j); !errors.Is(err, events.ErrSignatureMissing) {
		t.Errorf("restricted join without the authorising server: %v", err)
	}
	if err := serverkeys.VerifyEventSignatures(ctx, f, cosign(t, j, "c.test", kc)); err != nil {
		t.Errorf("restricted join co-signed: %v", err)
	}
	// Before v8 the key means nothing.
	if err := serverkeys.VerifyEventSignatures(ctx, f, buildEvent(t, "7", join, ka, "a.test")); err != nil {
		t.Errorf("v7 join with join_authorised_via_users_server: %v", err)
	}

	// Redacted copies verify too (signatures cover the redacted form).
	red := cosign(t, buildEvent(t, "10", msg, ka, "a.test"), "c.test", kc)
	stripped := map[string]any{}
	_ = json.Unmarshal(red.JSON(), &stripped)
	stripped["content"] = map[string]any{}
	raw, _ := json.Marshal(stripped)
	rv, _ := events.LookupRoomVersion("10")
	redEv, err := events.Parse(raw, rv)
	if err != nil {
		t.Fatal(err)
	}
	if err := serverkeys.VerifyEventSignatures(ctx, f, redEv); err != nil {
		t.Errorf("redacted copy: %v", err)
	}
}

// With the keyring: a remote event's signature is checked with a key
// fetched from its server.
func TestKeyringVerifiesEventSignatures(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		c := newClock()
		rt := newRouter()
		rkey := mustKey(t)
		rt.add(t, "remote.test", keyServer(newLocal(t, "remote.test", rkey, c, nil)))
		k := newKeyring(t, db, c, serverkeys.Options{Getter: rt})
		ev := buildEvent(t, "10", events.ProtoEvent{Sender: "@u:remote.test", Type: "m.room.message",
			Content: json.RawMessage(`{"body":"hi"}`), OriginServerTS: c.MS()}, rkey, "remote.test")
		if err := k.VerifyEventSignatures(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
		other := mustKey(t)
		forged := buildEvent(t, "10", events.ProtoEvent{Sender: "@u:remote.test", Type: "m.room.message",
			Content: json.RawMessage(`{"body":"hi"}`), OriginServerTS: c.MS()}, events.SigningKey{ID: rkey.ID, Private: other.Private}, "remote.test")
		if err := k.VerifyEventSignatures(t.Context(), forged); !errors.Is(err, events.ErrSignatureInvalid) {
			t.Fatalf("forged: %v, want ErrSignatureInvalid", err)
		}
	})
}

// Any signed JSON object, checked at a time.
func TestVerifyJSONSignatures(t *testing.T) {
	ka, kb := mustKey(t), mustKey(t)
	f := finder{}
	f.add("a.test", ka, 5000)
	ctx := t.Context()
	signed, err := events.SignJSON([]byte(`{"mxid":"@v:c.test","token":"t"}`), "a.test", ka)
	if err != nil {
		t.Fatal(err)
	}
	if err := serverkeys.VerifyJSONSignatures(ctx, f, signed, "a.test", 5000); err != nil {
		t.Errorf("valid: %v", err)
	}
	if err := serverkeys.VerifyJSONSignatures(ctx, f, signed, "a.test", 0); err != nil {
		t.Errorf("at time 0: %v", err)
	}
	if err := serverkeys.VerifyJSONSignatures(ctx, f, signed, "a.test", 5001); !errors.Is(err, serverkeys.ErrKeyNotValid) {
		t.Errorf("after the key's validity: %v, want ErrKeyNotValid", err)
	}
	if err := serverkeys.VerifyJSONSignatures(ctx, f, signed, "b.test", 0); !errors.Is(err, events.ErrSignatureMissing) {
		t.Errorf("another server: %v, want ErrSignatureMissing", err)
	}
	tampered := []byte(strings.Replace(string(signed), `"token":"t"`, `"token":"u"`, 1))
	if err := serverkeys.VerifyJSONSignatures(ctx, f, tampered, "a.test", 0); !errors.Is(err, events.ErrSignatureInvalid) {
		t.Errorf("tampered: %v, want ErrSignatureInvalid", err)
	}
	// Signed by a key of a.test we cannot find, plus a good one: the good
	// one is enough.
	both, _ := events.SignJSON(signed, "a.test", events.SigningKey{ID: "ed25519:gone", Private: kb.Private})
	if err := serverkeys.VerifyJSONSignatures(ctx, f, both, "a.test", 0); err != nil {
		t.Errorf("with an extra unknown key: %v", err)
	}
	onlyUnknown, _ := events.SignJSON([]byte(`{"x":1}`), "a.test", events.SigningKey{ID: "ed25519:gone", Private: kb.Private})
	if err := serverkeys.VerifyJSONSignatures(ctx, f, onlyUnknown, "a.test", 0); !errors.Is(err, serverkeys.ErrKeyNotFound) {
		t.Errorf("only an unknown key: %v, want ErrKeyNotFound", err)
	}
}
