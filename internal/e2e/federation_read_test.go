package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"ganglion/internal/events"
	"ganglion/internal/federation/serverkeys"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/testutil/testca"
)

// readingRemote is another homeserver that reads our rooms over
// federation: it publishes its key over TLS (certificate from the test's
// CA) at /_matrix/key/v2/server, where our keyring fetches it, and signs
// its requests with it. It accepts whatever transactions our senders push.
type readingRemote struct {
	name string
	key  events.SigningKey
	srv  *httptest.Server
}

func startReadingRemote(t *testing.T, ca *testca.CA) *readingRemote {
	t.Helper()
	key, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	r := &readingRemote{key: key, srv: httptest.NewUnstartedServer(nil)}
	r.srv.TLS = ca.ServerTLS(t, "127.0.0.1")
	r.srv.StartTLS()
	t.Cleanup(r.srv.Close)
	r.name = strings.TrimPrefix(r.srv.URL, "https://")
	local, err := serverkeys.NewLocal(serverkeys.LocalConfig{ServerName: r.name, Key: key, RefreshInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	r.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case req.Method == http.MethodGet && strings.HasPrefix(req.URL.Path, "/_matrix/key/v2/server"):
			body, err := local.Response()
			if err != nil {
				http.Error(w, `{"errcode":"M_UNKNOWN"}`, http.StatusInternalServerError)
				return
			}
			_, _ = w.Write(body)
		case req.Method == http.MethodPut && strings.HasPrefix(req.URL.Path, "/_matrix/federation/v1/send/"):
			_, _ = w.Write([]byte(`{"pdus":{}}`))
		default:
			http.Error(w, `{"errcode":"M_UNRECOGNIZED"}`, http.StatusNotFound)
		}
	})
	return r
}

// request sends a federation request to base signed as the remote (or
// unsigned) and decodes the JSON object answered.
func (r *readingRemote) request(t *testing.T, ctx context.Context, base, method, uri string, body any, signed bool) (int, map[string]any) {
	t.Helper()
	var content []byte
	if body != nil {
		content, _ = json.Marshal(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+uri, bytes.NewReader(content))
	if err != nil {
		t.Fatal(err)
	}
	if signed {
		p, err := xmatrix.Sign(xmatrix.Request{Method: method, URI: uri, Origin: r.name, Destination: serverName, Content: content}, r.key)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", p.Format())
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, uri, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s: %d %q is not a JSON object", method, uri, resp.StatusCode, raw)
	}
	return resp.StatusCode, out
}

// TestFederationInboundReadsThroughRouter: a remote server whose user is
// in one of our rooms (a fixture: federation joins do not exist yet) reads
// the room through the fleet's router, which sends the federation reads
// to the generic workers. Its requests are checked against the key our
// keyring fetches from it over TLS. Under "joined" history visibility it
// gets what was sent after its user joined in full and what came before
// redacted; it reads state, auth chains, backfill and missing events, a
// local profile and a local alias; unsigned requests and a room it never
// had a user in are refused.
func TestFederationInboundReadsThroughRouter(t *testing.T) {
	ca := testca.New(t)
	remote := startReadingRemote(t, ca)
	srv := startFrontServer(t, engineFleetRouter, "router",
		withKey("federation_custom_ca_list", []string{ca.WriteCA(t, t.TempDir())}),
		withKey("ip_range_whitelist", []string{"127.0.0.1"}),
	)
	f := srv.fleet
	ctx := testContext(t)
	base := f.front.url

	alice := srv.register(t, ctx, "fedread-alice")
	if err := alice.SetDisplayName(ctx, "Alice"); err != nil {
		t.Fatal(err)
	}
	roomID := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomAliasName: "fedread"})
	if _, err := alice.SendStateEvent(ctx, roomID, event.StateHistoryVisibility, "", map[string]any{"history_visibility": "joined"}); err != nil {
		t.Fatal(err)
	}
	send := func(body string) string {
		resp, err := alice.SendText(ctx, roomID, body)
		if err != nil {
			t.Fatalf("send: %v", err)
		}
		return resp.EventID.String()
	}
	before := send("before")
	topic, err := alice.SendStateEvent(ctx, roomID, event.StateTopic, "", map[string]any{"topic": "with a remote member"})
	if err != nil {
		t.Fatal(err)
	}
	db := fleetDB(t, f)
	var pos int64
	if err := db.Reader().QueryRowContext(ctx, `SELECT stream_ordering FROM events WHERE event_id = $1`, topic.EventID.String()).Scan(&pos); err != nil {
		t.Fatal(err)
	}
	bob := "@bob:" + remote.name
	for _, q := range []string{
		`INSERT INTO state_log (room_id, type, state_key, stream_ordering, event_id, membership) VALUES ($1, 'm.room.member', $2, $3, '$fixture-remote-join', 'join')`,
		`INSERT INTO current_state (room_id, type, state_key, stream_ordering, event_id, membership) VALUES ($1, 'm.room.member', $2, $3, '$fixture-remote-join', 'join')`,
	} {
		if _, err := db.Exec(ctx, q, roomID.String(), bob, pos); err != nil {
			t.Fatalf("insert the remote member: %v", err)
		}
	}
	after := send("after")
	last := send("last")

	get := func(uri string) (int, map[string]any) { return remote.request(t, ctx, base, "GET", uri, nil, true) }
	bodyOf := func(pdu any) (string, string) {
		t.Helper()
		rv, _ := events.LookupRoomVersion(events.DefaultRoomVersion)
		raw, _ := json.Marshal(pdu)
		ev, err := events.Parse(raw, rv)
		if err != nil {
			t.Fatalf("parse PDU %s: %v", raw, err)
		}
		var c struct {
			Body string `json:"body"`
		}
		_ = json.Unmarshal(ev.Content(), &c)
		return ev.EventID(), c.Body
	}
	pdus := func(v any) []any { l, _ := v.([]any); return l }

	// Each worker fetches the remote's key on its first request; both get
	// a few requests through the router's round robin.
	for _, tc := range []struct{ id, body string }{{after, "after"}, {before, ""}, {last, "last"}, {after, "after"}} {
		code, out := get("/_matrix/federation/v1/event/" + tc.id)
		if code != http.StatusOK || out["origin"] != serverName || len(pdus(out["pdus"])) != 1 {
			t.Fatalf("GET event %s: %d %v", tc.id, code, out)
		}
		if id, body := bodyOf(pdus(out["pdus"])[0]); id != tc.id || body != tc.body {
			t.Errorf("event %s served as %s with body %q, want %q", tc.id, id, body, tc.body)
		}
	}

	code, out := get("/_matrix/federation/v1/backfill/" + roomID.String() + "?v=" + url.QueryEscape(last) + "&limit=4")
	if code != http.StatusOK {
		t.Fatalf("backfill: %d %v", code, out)
	}
	var got []string
	for _, p := range pdus(out["pdus"]) {
		id, body := bodyOf(p)
		if id == before && body != "" {
			t.Errorf("backfill served %s, sent before the remote's user joined, unredacted", id)
		}
		got = append(got, id)
	}
	if want := []string{last, after, topic.EventID.String(), before}; !slices.Equal(got, want) {
		t.Errorf("backfill from the last event = %v, want %v", got, want)
	}

	code, out = remote.request(t, ctx, base, "POST", "/_matrix/federation/v1/get_missing_events/"+roomID.String(),
		map[string]any{"earliest_events": []string{topic.EventID.String()}, "latest_events": []string{last}}, true)
	if code != http.StatusOK || len(pdus(out["events"])) != 1 {
		t.Fatalf("get_missing_events: %d %v", code, out)
	}
	if id, _ := bodyOf(pdus(out["events"])[0]); id != after {
		t.Errorf("missing event = %s, want %s", id, after)
	}

	code, out = get("/_matrix/federation/v1/state_ids/" + roomID.String() + "?event_id=" + url.QueryEscape(last))
	if code != http.StatusOK {
		t.Fatalf("state_ids: %d %v", code, out)
	}
	if ids, _ := out["pdu_ids"].([]any); !slices.Contains(ids, any(topic.EventID.String())) || len(ids) < 6 {
		t.Errorf("state_ids at the last event = %v, want the room's state with the topic", ids)
	}
	if ids, _ := out["auth_chain_ids"].([]any); len(ids) < 3 {
		t.Errorf("auth_chain_ids = %v, want at least create, join and power levels", ids)
	}
	code, out = get("/_matrix/federation/v1/state/" + roomID.String() + "?event_id=" + url.QueryEscape(last))
	if code != http.StatusOK || len(pdus(out["pdus"])) < 6 || len(pdus(out["auth_chain"])) < 3 {
		t.Errorf("state: %d %v", code, out)
	}
	code, out = get("/_matrix/federation/v1/event_auth/" + roomID.String() + "/" + last)
	if code != http.StatusOK || len(pdus(out["auth_chain"])) < 3 {
		t.Errorf("event_auth: %d %v", code, out)
	}

	code, out = get("/_matrix/federation/v1/query/profile?user_id=" + url.QueryEscape(alice.UserID.String()))
	if code != http.StatusOK || out["displayname"] != "Alice" {
		t.Errorf("query/profile: %d %v", code, out)
	}
	code, out = get("/_matrix/federation/v1/query/directory?room_alias=" + url.QueryEscape("#fedread:"+serverName))
	if servers, _ := out["servers"].([]any); code != http.StatusOK || out["room_id"] != roomID.String() ||
		!slices.Equal(servers, []any{serverName, remote.name}) {
		t.Errorf("query/directory: %d %v", code, out)
	}

	code, out = remote.request(t, ctx, base, "GET", "/_matrix/federation/v1/event/"+after, nil, false)
	if code != http.StatusUnauthorized || out["errcode"] != "M_UNAUTHORIZED" {
		t.Errorf("unsigned request: %d %v", code, out)
	}
	other := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	otherEv, err := alice.SendText(ctx, other, "elsewhere")
	if err != nil {
		t.Fatal(err)
	}
	code, out = get("/_matrix/federation/v1/event/" + otherEv.EventID.String())
	if code != http.StatusForbidden || out["errcode"] != "M_FORBIDDEN" {
		t.Errorf("event of a room the remote never had a user in: %d %v", code, out)
	}
}
