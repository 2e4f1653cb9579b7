package inbound_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/url"
	"sync"
	"testing"
	"time"

	"ganglion/internal/canonicaljson"
	"ganglion/internal/federation/inbound"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// identityServer signs third-party invite proofs with its key.
type identityServer struct {
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
}

func newIdentityServer(t *testing.T) identityServer {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return identityServer{pub, priv}
}

func (is identityServer) sign(t *testing.T, mxid, token string) map[string]any {
	t.Helper()
	msg, err := canonicaljson.Marshal(map[string]any{"mxid": mxid, "token": token})
	if err != nil {
		t.Fatal(err)
	}
	sig := base64.RawStdEncoding.EncodeToString(ed25519.Sign(is.priv, msg))
	return map[string]any{"mxid": mxid, "token": token,
		"signatures": map[string]any{"id.test": map[string]string{"ed25519:0": sig}}}
}

// thirdPartyInvite sends alice's m.room.third_party_invite for token.
func (f *fixture) thirdPartyInvite(is identityServer, token string) {
	f.send("tpi "+token, rooms.Draft{Type: "m.room.third_party_invite", StateKey: ptr(token), Sender: alice,
		Content: raw(map[string]any{"display_name": "c...@example.org", "key_validity_url": "https://id.test/isvalid",
			"public_key": base64.RawStdEncoding.EncodeToString(is.pub)})})
}

func (f *fixture) memberOf(room, user string) (string, map[string]any) {
	f.t.Helper()
	se, err := rooms.NewStore(f.db).CurrentStateEvent(f.t.Context(), room, "m.room.member", user)
	if err != nil {
		f.t.Fatal(err)
	}
	if se == nil {
		return "", nil
	}
	var c map[string]any
	_ = json.Unmarshal(se.Event.Content(), &c)
	m, _ := c["membership"].(string)
	return m, c
}

func exchangeBody(room, sender, target string, signed any) map[string]any {
	return map[string]any{"type": "m.room.member", "room_id": room, "sender": sender, "state_key": target,
		"content": map[string]any{"membership": "invite", "third_party_invite": map[string]any{"signed": signed}}}
}

func TestFederationInboundExchangeThirdPartyInvite(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db, true)
		is := newIdentityServer(t)
		f.thirdPartyInvite(is, "tok1")
		carol := "@carol:" + remote
		path := "/_matrix/federation/v1/exchange_third_party_invite/" + url.PathEscape(f.room)

		// Bad input first: nothing of it may invite carol.
		other := newIdentityServer(t)
		for _, c := range []struct {
			what    string
			body    any
			code    int
			errcode string
		}{
			{"not a member event", func() any {
				b := exchangeBody(f.room, alice, carol, is.sign(t, carol, "tok1"))
				b["type"] = "m.room.message"
				return b
			}(), 400, "M_INVALID_PARAM"},
			{"other room in the body", exchangeBody("!other:"+server, alice, carol, is.sign(t, carol, "tok1")), 400, "M_INVALID_PARAM"},
			{"no signed", exchangeBody(f.room, alice, carol, nil), 400, "M_INVALID_PARAM"},
			{"mxid is not the target", exchangeBody(f.room, alice, carol, is.sign(t, "@dave:"+remote, "tok1")), 400, "M_INVALID_PARAM"},
			{"signed by another key", exchangeBody(f.room, alice, carol, other.sign(t, carol, "tok1")), 403, "M_FORBIDDEN"},
			{"unknown token", exchangeBody(f.room, alice, carol, is.sign(t, carol, "nope")), 403, "M_FORBIDDEN"},
			{"sender is not ours", exchangeBody(f.room, bob, carol, is.sign(t, carol, "tok1")), 403, "M_FORBIDDEN"},
			{"not JSON", "just a string", 400, "M_BAD_JSON"},
		} {
			code, body := f.do("PUT", path, c.body, remote)
			if c.errcode == "M_BAD_JSON" && code == 400 && (body["errcode"] == "M_BAD_JSON" || body["errcode"] == "M_NOT_JSON") {
				continue
			}
			want(t, c.what, code, body, c.code, c.errcode)
		}
		if m, _ := f.memberOf(f.room, carol); m != "" {
			t.Fatalf("bad exchanges left carol %q", m)
		}
		good := exchangeBody(f.room, alice, carol, is.sign(t, carol, "tok1"))
		code, body := f.do("PUT", path, good, "")
		want(t, "unsigned", code, body, 401, "M_UNAUTHORIZED")
		code, body = f.do("PUT", "/_matrix/federation/v1/exchange_third_party_invite/"+url.PathEscape("!nope:"+server),
			exchangeBody("!nope:"+server, alice, carol, is.sign(t, carol, "tok1")), remote)
		want(t, "unknown room", code, body, 404, "M_NOT_FOUND")

		code, body = f.do("PUT", path, good, remote)
		if code != 200 {
			t.Fatalf("exchange: %d %v", code, body)
		}
		m, content := f.memberOf(f.room, carol)
		tpi, _ := content["third_party_invite"].(map[string]any)
		if m != "invite" || tpi["display_name"] != "c...@example.org" || tpi["signed"] == nil {
			t.Errorf("carol's membership %q content %v, want an invite carrying the proof and display_name", m, content)
		}

		// The server ACL is checked first.
		f.send("acl", rooms.Draft{Type: "m.room.server_acl", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"allow": []string{"*"}, "deny": []string{remote}})})
		code, body = f.do("PUT", path, good, remote)
		want(t, "denied by the ACL", code, body, 403, "M_FORBIDDEN")
	})
}

// forwarder records onbind's forwarded exchanges.
type forwarder struct {
	mu   sync.Mutex
	puts []string // destination + path
	body []map[string]any
}

func (fw *forwarder) SignedPutJSON(_ context.Context, dest, path string, body, _ any) error {
	b, _ := json.Marshal(body)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	fw.mu.Lock()
	defer fw.mu.Unlock()
	fw.puts = append(fw.puts, dest+path)
	fw.body = append(fw.body, m)
	return nil
}

func TestFederationInboundOnBind(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db, true)
		is := newIdentityServer(t)
		f.thirdPartyInvite(is, "tokA")
		fw := &forwarder{}
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		mux := mxhttp.NewMux()
		inbound.New(inbound.Config{ServerName: server, Now: func() time.Time { return time.UnixMilli(1_700_000_000_000) }},
			f.svc, profiles{}, log).WithForwarder(fw).
			Routes(mux, mxhttp.NewServer(log), &xmatrix.Authenticator{ServerName: server, Keys: f.finder, Log: log})
		f.h = mux
		dave := "@dave:" + server
		remoteRoom := "!far:" + remote
		body := map[string]any{"address": "dave@example.org", "medium": "email", "mxid": dave,
			"invites": []any{
				// A room here: invited directly.
				map[string]any{"address": "dave@example.org", "medium": "email", "mxid": dave, "room_id": f.room,
					"sender": alice, "signed": is.sign(t, dave, "tokA")},
				// A bad proof: skipped, the others still go.
				map[string]any{"address": "dave@example.org", "medium": "email", "mxid": dave, "room_id": f.room,
					"sender": alice, "signed": is.sign(t, dave, "unknown")},
				// A room this server is not in: passed to the sender's server.
				map[string]any{"address": "dave@example.org", "medium": "email", "mxid": dave, "room_id": remoteRoom,
					"sender": bob, "signed": map[string]any{"mxid": dave, "token": "far"}},
			}}
		// No X-Matrix: identity servers call it.
		code, resp := f.do("PUT", "/_matrix/federation/v1/3pid/onbind", body, "")
		if code != 200 {
			t.Fatalf("onbind: %d %v", code, resp)
		}
		if m, _ := f.memberOf(f.room, dave); m != "invite" {
			t.Errorf("dave's membership after onbind: %q, want invite", m)
		}
		fw.mu.Lock()
		puts, bodies := fw.puts, fw.body
		fw.mu.Unlock()
		wantPut := remote + "/_matrix/federation/v1/exchange_third_party_invite/" + url.PathEscape(remoteRoom)
		if len(puts) != 1 || puts[0] != wantPut {
			t.Fatalf("forwarded %v, want one PUT %s", puts, wantPut)
		}
		if bodies[0]["state_key"] != dave || bodies[0]["sender"] != bob || bodies[0]["room_id"] != remoteRoom || bodies[0]["type"] != "m.room.member" {
			t.Errorf("forwarded event %v", bodies[0])
		}

		for _, c := range []struct {
			what string
			body any
			code int
			err  string
		}{
			{"remote mxid", map[string]any{"address": "a@b", "medium": "email", "mxid": "@x:" + remote}, 400, "M_INVALID_PARAM"},
			{"no mxid", map[string]any{"address": "a@b", "medium": "email"}, 400, "M_MISSING_PARAM"},
			{"too many invites", map[string]any{"address": "a@b", "medium": "email", "mxid": dave, "invites": make([]any, 101)}, 400, "M_INVALID_PARAM"},
			{"invites not a list", map[string]any{"address": "a@b", "medium": "email", "mxid": dave, "invites": "x"}, 400, "M_BAD_JSON"},
		} {
			code, resp := f.do("PUT", "/_matrix/federation/v1/3pid/onbind", c.body, "")
			if c.err == "M_BAD_JSON" && code == 400 && (resp["errcode"] == "M_BAD_JSON" || resp["errcode"] == "M_NOT_JSON") {
				continue
			}
			want(t, c.what, code, resp, c.code, c.err)
		}
	})
}
