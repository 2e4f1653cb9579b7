package inbound_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"testing"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/events"
	"ganglion/internal/federation/inbound"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
)

const (
	server = "local.test"
	remote = "remote.test"
	// stranger has a valid key but no user in any room.
	stranger = "stranger.test"
)

var (
	alice = "@alice:" + server
	bob   = "@bob:" + remote
)

// keys is a VerifyKeyFinder over fixed keys, as the keyring would answer.
type keys map[string]ed25519.PublicKey // "server|key id"

func (k keys) VerifyKey(_ context.Context, srv, keyID string, _ int64) (ed25519.PublicKey, error) {
	if pub, ok := k[srv+"|"+keyID]; ok {
		return pub, nil
	}
	return nil, fmt.Errorf("no key %s of %s", keyID, srv)
}

type profiles map[string]*accounts.Profile

func (p profiles) GetProfile(_ context.Context, userID string) (*accounts.Profile, error) {
	return p[userID], nil
}

func ptr(s string) *string { return &s }

func raw(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

// fixture is a room on a fresh database, served by the endpoints:
//
//	create, alice join, power levels, public join rule,
//	history visibility "joined", "before" (a message no remote user could
//	see), bob@remote.test joins, "after", "redacted" (then redacted), the
//	redaction, "last".
type fixture struct {
	t        *testing.T
	db       *storage.DB
	p        *rooms.Persister
	h        http.Handler
	room     string
	id       map[string]string
	pos      map[string]int64
	keys     map[string]events.SigningKey
	allowPro bool
	// What newKeysFixture builds its own endpoints from.
	reg    *streams.Registry
	svc    *rooms.Service
	finder keys
}

func newFixture(t *testing.T, db *storage.DB, allowProfiles bool) *fixture {
	t.Helper()
	ctx := t.Context()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg, err := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	ourKey := mustKey(t)
	p, err := rooms.NewPersister(ctx, db, reg, server, ourKey, log)
	if err != nil {
		t.Fatal(err)
	}
	store := rooms.NewStore(db)
	svc := rooms.NewService(rooms.Config{ServerName: server}, store, p, nil, reg, nil, log)
	f := &fixture{t: t, db: db, p: p, room: "!room:" + server, id: map[string]string{}, pos: map[string]int64{},
		keys: map[string]events.SigningKey{remote: mustKey(t), stranger: mustKey(t), "forger": mustKey(t)}}
	finder := keys{}
	for _, srv := range []string{remote, stranger} {
		finder[srv+"|"+f.keys[srv].ID] = f.keys[srv].Public()
	}
	mux := mxhttp.NewMux()
	inbound.New(inbound.Config{ServerName: server, AllowProfileLookup: allowProfiles,
		Now: func() time.Time { return time.UnixMilli(1_700_000_000_000) }},
		svc, profiles{alice: {DisplayName: ptr("Alice")}}, log).
		Routes(mux, mxhttp.NewServer(log), &xmatrix.Authenticator{ServerName: server, Keys: finder, Log: log})
	f.h, f.reg, f.svc, f.finder = mux, reg, svc, finder

	f.send("create", rooms.Draft{Type: "m.room.create", StateKey: ptr(""), Sender: alice, RoomVersion: "10",
		Content: raw(map[string]any{"creator": alice, "room_version": "10"})})
	f.send("alice join", rooms.Draft{Type: "m.room.member", StateKey: ptr(alice), Sender: alice, Content: raw(map[string]any{"membership": "join"})})
	f.send("power levels", rooms.Draft{Type: "m.room.power_levels", StateKey: ptr(""), Sender: alice,
		Content: raw(map[string]any{"users": map[string]int{alice: 100}, "state_default": 50, "events_default": 0})})
	f.send("join rules", rooms.Draft{Type: "m.room.join_rules", StateKey: ptr(""), Sender: alice, Content: raw(map[string]any{"join_rule": "public"})})
	f.send("history", rooms.Draft{Type: "m.room.history_visibility", StateKey: ptr(""), Sender: alice,
		Content: raw(map[string]any{"history_visibility": "joined"})})
	f.message("before")
	// A remote user's join, made locally: federation joins do not exist
	// yet, and the endpoints only read the state log.
	f.send("bob join", rooms.Draft{Type: "m.room.member", StateKey: ptr(bob), Sender: bob, Content: raw(map[string]any{"membership": "join"})})
	f.message("after")
	f.message("redacted")
	f.send("redaction", rooms.Draft{Type: "m.room.redaction", Sender: alice, Redacts: f.id["redacted"], Content: raw(map[string]any{})})
	f.message("last")
	return f
}

func mustKey(t *testing.T) events.SigningKey {
	t.Helper()
	k, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (f *fixture) send(name string, d rooms.Draft) {
	f.t.Helper()
	res, err := f.p.SendEvents(f.t.Context(), f.room, []rooms.Draft{d})
	if err != nil {
		f.t.Fatalf("send %s: %v", name, err)
	}
	f.id[name], f.pos[name] = res[0].EventID, res[0].StreamPos
}

func (f *fixture) message(body string) {
	f.t.Helper()
	f.send(body, rooms.Draft{Type: "m.room.message", Sender: alice, Content: raw(map[string]any{"msgtype": "m.text", "body": body})})
}

// do sends a request signed as origin (unsigned when origin is "").
// "forger" signs as remote.test with a key that is not remote.test's.
func (f *fixture) do(method, uri string, body any, origin string) (int, map[string]any) {
	f.t.Helper()
	var content []byte
	if body != nil {
		content = raw(body)
	}
	req := httptest.NewRequest(method, uri, bytes.NewReader(content))
	if origin != "" {
		key := f.keys[origin]
		if origin == "forger" {
			origin = remote
		}
		params, err := xmatrix.Sign(xmatrix.Request{Method: method, URI: uri, Origin: origin, Destination: server, Content: content}, key)
		if err != nil {
			f.t.Fatal(err)
		}
		req.Header.Set("Authorization", params.Format())
	}
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		f.t.Fatalf("%s %s: answer is not a JSON object: %q", method, uri, rec.Body.String())
	}
	return rec.Code, out
}

// want checks an error answer.
func want(t *testing.T, what string, code int, body map[string]any, wantCode int, errcode string) {
	t.Helper()
	if code != wantCode || body["errcode"] != errcode {
		t.Errorf("%s: got %d %v, want %d %s", what, code, body, wantCode, errcode)
	}
}

// pduOf parses an answer's PDU as a room v10 event.
func pduOf(t *testing.T, v any) *events.Event {
	t.Helper()
	rv, _ := events.LookupRoomVersion("10")
	ev, err := events.Parse(raw(v), rv)
	if err != nil {
		t.Fatalf("parse PDU %v: %v", v, err)
	}
	return ev
}

func bodyOf(ev *events.Event) string {
	var c struct {
		Body string `json:"body"`
	}
	_ = json.Unmarshal(ev.Content(), &c)
	return c.Body
}

func list(v any) []any {
	l, _ := v.([]any)
	return l
}

func strs(v any) []string {
	var out []string
	for _, x := range list(v) {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

func (f *fixture) names(ids []string) []string {
	byID := map[string]string{}
	for n, id := range f.id {
		byID[id] = n
	}
	var out []string
	for _, id := range ids {
		if n, ok := byID[id]; ok {
			out = append(out, n)
		} else {
			out = append(out, id)
		}
	}
	return out
}

func eventPath(id string) string { return "/_matrix/federation/v1/event/" + url.PathEscape(id) }

func TestFederationInboundEvent(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db, true)

		code, body := f.do("GET", eventPath(f.id["after"]), nil, remote)
		if code != 200 || body["origin"] != server || body["origin_server_ts"] != float64(1_700_000_000_000) || len(list(body["pdus"])) != 1 {
			t.Fatalf("event: %d %v", code, body)
		}
		ev := pduOf(t, list(body["pdus"])[0])
		if ev.EventID() != f.id["after"] || bodyOf(ev) != "after" {
			t.Errorf("event: got %s %q, want %s with its content", ev.EventID(), bodyOf(ev), f.id["after"])
		}
		if err := events.CheckContentHash(ev); err != nil {
			t.Errorf("served PDU fails its content hash: %v", err)
		}

		// Under "joined" visibility, remote.test had no one in the room
		// when "before" was sent: it gets the event redacted, with its id
		// (the redacted form hashes to the same reference hash).
		_, body = f.do("GET", eventPath(f.id["before"]), nil, remote)
		ev = pduOf(t, list(body["pdus"])[0])
		if ev.EventID() != f.id["before"] || bodyOf(ev) != "" {
			t.Errorf("event before the join: got %s %q, want %s redacted", ev.EventID(), bodyOf(ev), f.id["before"])
		}
		// A redacted event is served redacted.
		_, body = f.do("GET", eventPath(f.id["redacted"]), nil, remote)
		if ev = pduOf(t, list(body["pdus"])[0]); bodyOf(ev) != "" || ev.EventID() != f.id["redacted"] {
			t.Errorf("redacted event served with content %q", bodyOf(ev))
		}
		// The server's own user's join is visible to it.
		_, body = f.do("GET", eventPath(f.id["bob join"]), nil, remote)
		if ev = pduOf(t, list(body["pdus"])[0]); ev.Membership() != "join" {
			t.Errorf("bob's join served as %s", ev.JSON())
		}

		code, body = f.do("GET", eventPath("$unknown"), nil, remote)
		want(t, "unknown event", code, body, 404, "M_NOT_FOUND")
		code, body = f.do("GET", eventPath(f.id["after"]), nil, "")
		want(t, "unsigned", code, body, 401, "M_UNAUTHORIZED")
		code, body = f.do("GET", eventPath(f.id["after"]), nil, "forger")
		want(t, "forged signature", code, body, 401, "M_UNAUTHORIZED")
		code, body = f.do("GET", eventPath(f.id["after"]), nil, stranger)
		want(t, "server never in the room", code, body, 403, "M_FORBIDDEN")
	})
}

func TestFederationInboundServerACL(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db, true)
		path := eventPath(f.id["after"])
		f.send("acl", rooms.Draft{Type: "m.room.server_acl", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"allow": []string{"*"}, "deny": []string{"*.TEST"}})})
		code, body := f.do("GET", path, nil, remote)
		want(t, "denied by the ACL", code, body, 403, "M_FORBIDDEN")
		code, body = f.do("GET", "/_matrix/federation/v1/backfill/"+url.PathEscape(f.room)+"?v="+url.QueryEscape(f.id["last"])+"&limit=5", nil, remote)
		want(t, "backfill denied by the ACL", code, body, 403, "M_FORBIDDEN")

		f.send("acl2", rooms.Draft{Type: "m.room.server_acl", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"allow": []string{"remote.*"}, "deny": []string{"evil.test"}})})
		if code, body = f.do("GET", path, nil, remote); code != 200 {
			t.Errorf("allowed by the ACL: %d %v", code, body)
		}
	})
}

func (f *fixture) stateIDs(event string) (int, map[string]any) {
	return f.do("GET", "/_matrix/federation/v1/state_ids/"+url.PathEscape(f.room)+"?event_id="+url.QueryEscape(event), nil, remote)
}

func TestFederationInboundState(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db, true)
		code, body := f.stateIDs(f.id["bob join"])
		if code != 200 {
			t.Fatalf("state_ids: %d %v", code, body)
		}
		// The state at an event is the state before it: bob's join is not
		// part of the state at bob's join.
		got := f.names(strs(body["pdu_ids"]))
		sort.Strings(got)
		wantState := []string{"alice join", "create", "history", "join rules", "power levels"}
		if !slices.Equal(got, wantState) {
			t.Errorf("state_ids at bob's join = %v, want %v", got, wantState)
		}
		chain := f.names(strs(body["auth_chain_ids"]))
		sort.Strings(chain)
		if wantChain := []string{"alice join", "create", "power levels"}; !slices.Equal(chain, wantChain) {
			t.Errorf("auth_chain_ids = %v, want %v", chain, wantChain)
		}

		code, body = f.do("GET", "/_matrix/federation/v1/state/"+url.PathEscape(f.room)+"?event_id="+url.QueryEscape(f.id["last"]), nil, remote)
		if code != 200 {
			t.Fatalf("state: %d %v", code, body)
		}
		var stateIDs []string
		for _, p := range list(body["pdus"]) {
			stateIDs = append(stateIDs, pduOf(t, p).EventID())
		}
		got = f.names(stateIDs)
		sort.Strings(got)
		if wantState := []string{"alice join", "bob join", "create", "history", "join rules", "power levels"}; !slices.Equal(got, wantState) {
			t.Errorf("state at the last event = %v, want %v", got, wantState)
		}
		if n := len(list(body["auth_chain"])); n != 4 { // create, alice join, power levels, join rules
			t.Errorf("auth_chain has %d events, want 4: %v", n, body["auth_chain"])
		}

		code, body = f.do("GET", "/_matrix/federation/v1/state_ids/"+url.PathEscape(f.room), nil, remote)
		want(t, "state_ids without event_id", code, body, 400, "M_MISSING_PARAM")
		code, body = f.stateIDs("$unknown")
		want(t, "state_ids at an unknown event", code, body, 404, "M_NOT_FOUND")
		code, body = f.do("GET", "/_matrix/federation/v1/state/"+url.PathEscape("!nowhere:"+server)+"?event_id="+url.QueryEscape(f.id["last"]), nil, remote)
		want(t, "state of an unknown room", code, body, 404, "M_NOT_FOUND")
		code, body = f.do("GET", "/_matrix/federation/v1/state_ids/"+url.PathEscape(f.room)+"?event_id="+url.QueryEscape(f.id["last"]), nil, "")
		want(t, "unsigned state_ids", code, body, 401, "M_UNAUTHORIZED")
		code, body = f.do("GET", "/_matrix/federation/v1/state_ids/"+url.PathEscape(f.room)+"?event_id="+url.QueryEscape(f.id["last"]), nil, stranger)
		want(t, "state_ids for a server never in the room", code, body, 403, "M_FORBIDDEN")
	})
}

func TestFederationInboundEventAuth(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db, true)
		path := "/_matrix/federation/v1/event_auth/" + url.PathEscape(f.room) + "/"
		code, body := f.do("GET", path+url.PathEscape(f.id["bob join"]), nil, remote)
		if code != 200 {
			t.Fatalf("event_auth: %d %v", code, body)
		}
		var ids []string
		for _, p := range list(body["auth_chain"]) {
			ids = append(ids, pduOf(t, p).EventID())
		}
		got := f.names(ids)
		// Oldest first; a join's auth events are create, power levels and
		// join rules, whose own chain adds alice's join.
		if wantChain := []string{"create", "alice join", "power levels", "join rules"}; !slices.Equal(got, wantChain) {
			t.Errorf("auth chain of bob's join = %v, want %v", got, wantChain)
		}
		code, body = f.do("GET", path+url.PathEscape("$unknown"), nil, remote)
		want(t, "event_auth of an unknown event", code, body, 404, "M_NOT_FOUND")
		code, body = f.do("GET", path+url.PathEscape(f.id["last"]), nil, stranger)
		want(t, "event_auth for a server never in the room", code, body, 403, "M_FORBIDDEN")
		code, body = f.do("GET", path+url.PathEscape(f.id["last"]), nil, "")
		want(t, "unsigned event_auth", code, body, 401, "M_UNAUTHORIZED")
	})
}

func (f *fixture) backfill(query string) (int, map[string]any) {
	return f.do("GET", "/_matrix/federation/v1/backfill/"+url.PathEscape(f.room)+"?"+query, nil, remote)
}

func TestFederationInboundBackfill(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db, true)
		code, body := f.backfill("v=" + url.QueryEscape(f.id["last"]) + "&limit=3")
		if code != 200 || body["origin"] != server {
			t.Fatalf("backfill: %d %v", code, body)
		}
		var ids []string
		for _, p := range list(body["pdus"]) {
			ids = append(ids, pduOf(t, p).EventID())
		}
		if got, wantIDs := f.names(ids), []string{"last", "redaction", "redacted"}; !slices.Equal(got, wantIDs) {
			t.Errorf("backfill from the last event, limit 3 = %v, want %v", got, wantIDs)
		}

		// The whole room, newest first, with what remote.test may not see
		// redacted.
		_, body = f.backfill("v=" + url.QueryEscape(f.id["last"]) + "&limit=50")
		var bodies []string
		ids = nil
		for _, p := range list(body["pdus"]) {
			ev := pduOf(t, p)
			ids = append(ids, ev.EventID())
			if ev.Type() == "m.room.message" {
				bodies = append(bodies, bodyOf(ev))
			}
		}
		if got, wantIDs := f.names(ids), []string{"last", "redaction", "redacted", "after", "bob join", "before",
			"history", "join rules", "power levels", "alice join", "create"}; !slices.Equal(got, wantIDs) {
			t.Errorf("backfill of the whole room = %v, want %v", got, wantIDs)
		}
		if wantBodies := []string{"last", "", "after", ""}; !slices.Equal(bodies, wantBodies) {
			t.Errorf("message bodies = %q, want %q (redacted, and hidden before bob joined)", bodies, wantBodies)
		}

		// The limit is capped at 100.
		var drafts []rooms.Draft
		for i := range 110 {
			drafts = append(drafts, rooms.Draft{Type: "m.room.message", Sender: alice, Content: raw(map[string]any{"msgtype": "m.text", "body": fmt.Sprint(i)})})
		}
		res, err := f.p.SendEvents(t.Context(), f.room, drafts)
		if err != nil {
			t.Fatal(err)
		}
		_, body = f.backfill("v=" + url.QueryEscape(res[len(res)-1].EventID) + "&limit=1000")
		if n := len(list(body["pdus"])); n != 100 {
			t.Errorf("backfill with limit 1000 answered %d events, want 100", n)
		}

		code, body = f.backfill("limit=3")
		want(t, "backfill without v", code, body, 400, "M_MISSING_PARAM")
		code, body = f.backfill("v=" + url.QueryEscape(f.id["last"]))
		want(t, "backfill without limit", code, body, 400, "M_MISSING_PARAM")
		code, body = f.backfill("v=" + url.QueryEscape(f.id["last"]) + "&limit=x")
		want(t, "backfill with a bad limit", code, body, 400, "M_INVALID_PARAM")
		code, body = f.do("GET", "/_matrix/federation/v1/backfill/"+url.PathEscape("!nowhere:"+server)+"?v=x&limit=3", nil, remote)
		want(t, "backfill of an unknown room", code, body, 404, "M_NOT_FOUND")
		code, body = f.do("GET", "/_matrix/federation/v1/backfill/"+url.PathEscape(f.room)+"?v=x&limit=3", nil, stranger)
		want(t, "backfill for a server never in the room", code, body, 403, "M_FORBIDDEN")
	})
}

func TestFederationInboundGetMissingEvents(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db, true)
		path := "/_matrix/federation/v1/get_missing_events/" + url.PathEscape(f.room)
		missing := func(body map[string]any) []string {
			t.Helper()
			code, out := f.do("POST", path, body, remote)
			if code != 200 {
				t.Fatalf("get_missing_events %v: %d %v", body, code, out)
			}
			var ids []string
			for _, p := range list(out["events"]) {
				ids = append(ids, pduOf(t, p).EventID())
			}
			return f.names(ids)
		}
		got := missing(map[string]any{"earliest_events": []string{f.id["bob join"]}, "latest_events": []string{f.id["last"]}})
		if wantIDs := []string{"after", "redacted", "redaction"}; !slices.Equal(got, wantIDs) {
			t.Errorf("missing events between bob's join and the last = %v, want %v (oldest first)", got, wantIDs)
		}
		got = missing(map[string]any{"earliest_events": []string{}, "latest_events": []string{f.id["last"]}, "limit": 2})
		if wantIDs := []string{"redacted", "redaction"}; !slices.Equal(got, wantIDs) {
			t.Errorf("missing events with limit 2 = %v, want %v", got, wantIDs)
		}
		// Depths: create 1 … before 6, bob join 7, after 8.
		got = missing(map[string]any{"earliest_events": []string{}, "latest_events": []string{f.id["last"]}, "min_depth": 8})
		if wantIDs := []string{"after", "redacted", "redaction"}; !slices.Equal(got, wantIDs) {
			t.Errorf("missing events from depth 8 = %v, want %v", got, wantIDs)
		}
		var drafts []rooms.Draft
		for i := range 30 {
			drafts = append(drafts, rooms.Draft{Type: "m.room.message", Sender: alice, Content: raw(map[string]any{"msgtype": "m.text", "body": fmt.Sprint(i)})})
		}
		res, err := f.p.SendEvents(t.Context(), f.room, drafts)
		if err != nil {
			t.Fatal(err)
		}
		// Default 10, at most 20.
		if got = missing(map[string]any{"latest_events": []string{res[29].EventID}}); len(got) != 10 {
			t.Errorf("default limit gave %d events, want 10", len(got))
		}
		if got = missing(map[string]any{"earliest_events": []string{}, "latest_events": []string{res[29].EventID}, "limit": 500}); len(got) != 20 {
			t.Errorf("limit 500 gave %d events, want 20", len(got))
		}

		code, body := f.do("POST", path, map[string]any{"earliest_events": []string{}}, remote)
		want(t, "without latest_events", code, body, 400, "M_MISSING_PARAM")
		code, body = f.do("POST", path, map[string]any{"earliest_events": []string{}, "latest_events": "x"}, remote)
		want(t, "latest_events not a list", code, body, 400, "M_BAD_JSON")
		code, body = f.do("POST", path, map[string]any{"earliest_events": []string{}, "latest_events": []string{f.id["last"]}}, stranger)
		want(t, "server never in the room", code, body, 403, "M_FORBIDDEN")
		code, body = f.do("POST", path, map[string]any{"earliest_events": []string{}, "latest_events": []string{f.id["last"]}}, "")
		want(t, "unsigned", code, body, 401, "M_UNAUTHORIZED")
		code, body = f.do("POST", "/_matrix/federation/v1/get_missing_events/"+url.PathEscape("!nowhere:"+server),
			map[string]any{"earliest_events": []string{}, "latest_events": []string{"$x"}}, remote)
		want(t, "unknown room", code, body, 404, "M_NOT_FOUND")
	})
}

func TestFederationInboundQueries(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db, true)
		prof := func(q string) (int, map[string]any) {
			return f.do("GET", "/_matrix/federation/v1/query/profile?"+q, nil, remote)
		}
		code, body := prof("user_id=" + url.QueryEscape(alice))
		if code != 200 || body["displayname"] != "Alice" {
			t.Errorf("profile of alice: %d %v", code, body)
		}
		code, body = prof("user_id=" + url.QueryEscape(alice) + "&field=avatar_url")
		if code != 200 || len(body) != 0 {
			t.Errorf("alice's unset avatar_url: %d %v", code, body)
		}
		code, body = prof("user_id=" + url.QueryEscape("@nobody:"+server))
		want(t, "unknown user", code, body, 404, "M_NOT_FOUND")
		code, body = prof("user_id=" + url.QueryEscape(bob))
		want(t, "remote user", code, body, 400, "M_INVALID_PARAM")
		code, body = prof("")
		want(t, "no user_id", code, body, 400, "M_MISSING_PARAM")
		code, body = prof("user_id=" + url.QueryEscape(alice) + "&field=bio")
		want(t, "unknown field", code, body, 400, "M_INVALID_PARAM")
		code, body = f.do("GET", "/_matrix/federation/v1/query/profile?user_id="+url.QueryEscape(alice), nil, "")
		want(t, "unsigned profile query", code, body, 401, "M_UNAUTHORIZED")

		if _, err := db.Exec(t.Context(), `INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES ($1, $2, $3, 0)`,
			"#room:"+server, f.room, alice); err != nil {
			t.Fatal(err)
		}
		dir := func(alias string) (int, map[string]any) {
			return f.do("GET", "/_matrix/federation/v1/query/directory?room_alias="+url.QueryEscape(alias), nil, stranger)
		}
		code, body = dir("#room:" + server)
		if code != 200 || body["room_id"] != f.room || !slices.Equal(strs(body["servers"]), []string{server, remote}) {
			t.Errorf("directory: %d %v", code, body)
		}
		code, body = dir("#other:" + server)
		want(t, "unknown alias", code, body, 404, "M_NOT_FOUND")
		code, body = dir("#room:" + remote)
		want(t, "remote alias", code, body, 404, "M_NOT_FOUND")
		code, body = dir("room")
		want(t, "malformed alias", code, body, 400, "M_INVALID_PARAM")
		code, body = f.do("GET", "/_matrix/federation/v1/query/directory", nil, remote)
		want(t, "no alias", code, body, 400, "M_MISSING_PARAM")
	})
}

func TestFederationInboundProfileLookupDisabled(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db, false)
		code, body := f.do("GET", "/_matrix/federation/v1/query/profile?user_id="+url.QueryEscape(alice), nil, remote)
		want(t, "profile lookup with allow_profile_lookup_over_federation: false", code, body, 403, "M_FORBIDDEN")
	})
}

// A server whose users all left may still read the room's history from
// when they were in it, but what came after its users left is redacted
// under "joined" visibility.
func TestFederationInboundAfterLeaving(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db, true)
		f.send("bob leave", rooms.Draft{Type: "m.room.member", StateKey: ptr(bob), Sender: bob, Content: raw(map[string]any{"membership": "leave"})})
		f.message("gone")
		for name, wantBody := range map[string]string{"after": "after", "gone": ""} {
			code, body := f.do("GET", eventPath(f.id[name]), nil, remote)
			if code != 200 {
				t.Fatalf("event %s: %d %v", name, code, body)
			}
			if got := bodyOf(pduOf(t, list(body["pdus"])[0])); got != wantBody {
				t.Errorf("event %q served with body %q, want %q", name, got, wantBody)
			}
		}
	})
}

// Under "invited" visibility a server sees what was sent while one of its
// users was invited or joined, and not what was sent while none was.
func TestFederationInboundInvitedVisibility(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db, true)
		f.send("bob leave", rooms.Draft{Type: "m.room.member", StateKey: ptr(bob), Sender: bob, Content: raw(map[string]any{"membership": "leave"})})
		f.send("invited vis", rooms.Draft{Type: "m.room.history_visibility", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"history_visibility": "invited"})})
		f.message("while away")
		f.send("bob invite", rooms.Draft{Type: "m.room.member", StateKey: ptr(bob), Sender: alice, Content: raw(map[string]any{"membership": "invite"})})
		f.message("while invited")
		for name, wantBody := range map[string]string{"while away": "", "while invited": "while invited"} {
			code, body := f.do("GET", eventPath(f.id[name]), nil, remote)
			if code != 200 {
				t.Fatalf("event %s: %d %v", name, code, body)
			}
			if got := bodyOf(pduOf(t, list(body["pdus"])[0])); got != wantBody {
				t.Errorf("event %q served with body %q, want %q", name, got, wantBody)
			}
		}
	})
}
