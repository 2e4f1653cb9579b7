package inbound_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"ganglion/internal/events"
	"ganglion/internal/federation/inbound"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
)

// fakeWriter stands for the persister's remote-event path: it records the
// batches and answers each event with outcome.
type fakeWriter struct {
	mu      sync.Mutex
	batches []rooms.RemoteBatch
	rooms   []string
	outcome string
}

func (w *fakeWriter) PersistRemote(_ context.Context, roomID string, b rooms.RemoteBatch) ([]rooms.RemoteResult, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.batches = append(w.batches, b)
	w.rooms = append(w.rooms, roomID)
	var out []rooms.RemoteResult
	for range b.Outliers {
		out = append(out, rooms.RemoteResult{Outcome: rooms.RemoteOutlier})
	}
	for range b.PDUs {
		out = append(out, rooms.RemoteResult{Outcome: w.outcome, Error: "because"})
	}
	return out, nil
}

func (w *fakeWriter) last(t *testing.T) rooms.RemoteBatch {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.batches) == 0 {
		t.Fatal("nothing was persisted")
	}
	return w.batches[len(w.batches)-1]
}

func (w *fakeWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.batches)
}

type knownUsers map[string]bool

func (k knownUsers) KnownUser(_ context.Context, userID string) (bool, error) { return k[userID], nil }

// mfixture is a server with rooms of each join rule, and the membership
// handshakes mounted: "public", "invite" (invite only), "restricted"
// (joining needs membership of "public") and "knock".
type mfixture struct {
	t      *testing.T
	db     *storage.DB
	p      *rooms.Persister
	h      http.Handler
	w      *fakeWriter
	our    events.SigningKey
	keys   map[string]events.SigningKey
	rooms  map[string]string
	finder keys
}

var carol = "@carol:" + remote

func newMembershipFixture(t *testing.T, db *storage.DB) *mfixture {
	t.Helper()
	ctx := t.Context()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg, err := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	f := &mfixture{t: t, db: db, our: mustKey(t), w: &fakeWriter{outcome: rooms.RemotePersisted}, rooms: map[string]string{},
		keys: map[string]events.SigningKey{remote: mustKey(t), stranger: mustKey(t), "forger": mustKey(t)}}
	if f.p, err = rooms.NewPersister(ctx, db, reg, server, f.our, log); err != nil {
		t.Fatal(err)
	}
	svc := rooms.NewService(rooms.Config{ServerName: server}, rooms.NewStore(db), f.p, nil, reg, nil, log)
	f.finder = keys{server + "|" + f.our.ID: f.our.Public()}
	for _, srv := range []string{remote, stranger} {
		f.finder[srv+"|"+f.keys[srv].ID] = f.keys[srv].Public()
	}
	mux := mxhttp.NewMux()
	inbound.New(inbound.Config{ServerName: server, Now: func() time.Time { return time.UnixMilli(1_700_000_000_000) }},
		svc, profiles{}, log).
		WithMembership(inbound.Membership{Key: f.our, Keys: f.finder, Writer: f.w, DB: db, Users: knownUsers{"@dave:" + server: true}}).
		Routes(mux, mxhttp.NewServer(log), &xmatrix.Authenticator{ServerName: server, Keys: f.finder, Log: log})
	f.h = mux

	for _, name := range []string{"public", "invite", "restricted", "knock"} {
		f.createRoom(name)
	}
	rule := func(room string, c map[string]any) {
		f.send(room, rooms.Draft{Type: "m.room.join_rules", StateKey: ptr(""), Sender: alice, Content: raw(c)})
	}
	rule("public", map[string]any{"join_rule": "public"})
	rule("invite", map[string]any{"join_rule": "invite"})
	rule("restricted", map[string]any{"join_rule": "restricted",
		"allow": []any{map[string]any{"type": "m.room_membership", "room_id": f.rooms["public"]}}})
	rule("knock", map[string]any{"join_rule": "knock"})
	f.send("public", rooms.Draft{Type: "m.room.name", StateKey: ptr(""), Sender: alice, Content: raw(map[string]any{"name": "Pub"})})
	f.send("knock", rooms.Draft{Type: "m.room.name", StateKey: ptr(""), Sender: alice, Content: raw(map[string]any{"name": "Knock"})})
	// carol@remote.test is in "public" (a join made locally: what the
	// persister's remote path will store), which lets her into
	// "restricted".
	f.send("public", rooms.Draft{Type: "m.room.member", StateKey: ptr(carol), Sender: carol, Content: raw(map[string]any{"membership": "join"})})
	return f
}

func (f *mfixture) createRoom(name string) {
	f.rooms[name] = "!" + name + ":" + server
	f.send(name, rooms.Draft{Type: "m.room.create", StateKey: ptr(""), Sender: alice, RoomVersion: "10",
		Content: raw(map[string]any{"creator": alice, "room_version": "10"})})
	f.send(name, rooms.Draft{Type: "m.room.member", StateKey: ptr(alice), Sender: alice, Content: raw(map[string]any{"membership": "join"})})
	f.send(name, rooms.Draft{Type: "m.room.power_levels", StateKey: ptr(""), Sender: alice,
		Content: raw(map[string]any{"users": map[string]int{alice: 100}})})
}

func (f *mfixture) send(room string, d rooms.Draft) string {
	f.t.Helper()
	res, err := f.p.SendEvents(f.t.Context(), f.rooms[room], []rooms.Draft{d})
	if err != nil {
		f.t.Fatalf("send to %s: %v", room, err)
	}
	return res[0].EventID
}

// do sends a signed request (unsigned when origin is "") and returns the
// status and raw answer.
func (f *mfixture) do(method, uri string, body []byte, origin string) (int, []byte) {
	f.t.Helper()
	req := httptest.NewRequest(method, uri, bytes.NewReader(body))
	if origin != "" {
		key := f.keys[origin]
		if origin == "forger" {
			origin = remote
		}
		params, err := xmatrix.Sign(xmatrix.Request{Method: method, URI: uri, Origin: origin, Destination: server, Content: body}, key)
		if err != nil {
			f.t.Fatal(err)
		}
		req.Header.Set("Authorization", params.Format())
	}
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.Bytes()
}

func (f *mfixture) doJSON(method, uri string, body []byte, origin string) (int, map[string]any) {
	f.t.Helper()
	code, b := f.do(method, uri, body, origin)
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		f.t.Fatalf("%s %s: answer is not a JSON object: %q", method, uri, b)
	}
	return code, out
}

func makePath(kind, room, user string) string {
	return "/_matrix/federation/v1/make_" + kind + "/" + url.PathEscape(room) + "/" + url.PathEscape(user)
}

// fillTemplate builds and signs, as server srv, the event a make_*
// template describes.
func (f *mfixture) fillTemplate(tmpl any, srv string) *events.Event {
	f.t.Helper()
	var t struct {
		RoomID     string          `json:"room_id"`
		Sender     string          `json:"sender"`
		Type       string          `json:"type"`
		StateKey   *string         `json:"state_key"`
		Content    json.RawMessage `json:"content"`
		PrevEvents []string        `json:"prev_events"`
		AuthEvents []string        `json:"auth_events"`
		Depth      int64           `json:"depth"`
	}
	if err := json.Unmarshal(raw(tmpl), &t); err != nil {
		f.t.Fatalf("template %v: %v", tmpl, err)
	}
	rv, _ := events.LookupRoomVersion("10")
	ev, err := events.Build(events.ProtoEvent{RoomID: t.RoomID, Sender: t.Sender, Type: t.Type, StateKey: t.StateKey, Content: t.Content,
		PrevEvents: t.PrevEvents, AuthEvents: t.AuthEvents, Depth: t.Depth, OriginServerTS: 1_700_000_000_500}, rv, f.keys[srv], srv)
	if err != nil {
		f.t.Fatal(err)
	}
	return ev
}

func membershipSendPath(kind, version, room, eventID string) string {
	return "/_matrix/federation/" + version + "/send_" + kind + "/" + url.PathEscape(room) + "/" + url.PathEscape(eventID)
}

func (f *mfixture) relayedOrigin(eventID string) string {
	f.t.Helper()
	var origin string
	err := f.db.Reader().QueryRowContext(f.t.Context(), `SELECT origin FROM federation_relayed_events WHERE event_id = $1`, eventID).Scan(&origin)
	if err != nil {
		return ""
	}
	return origin
}

func TestFederationMakeJoinSendJoin(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newMembershipFixture(t, db)
		room := f.rooms["public"]
		dan := "@dan:" + remote

		code, body := f.doJSON("GET", makePath("join", room, dan)+"?ver=9&ver=10", nil, remote)
		if code != 200 || body["room_version"] != "10" {
			t.Fatalf("make_join: %d %v", code, body)
		}
		tmpl, _ := body["event"].(map[string]any)
		for _, k := range []string{"hashes", "signatures", "event_id"} {
			if _, ok := tmpl[k]; ok {
				t.Errorf("template carries %s: %v", k, tmpl)
			}
		}
		if tmpl["sender"] != dan || tmpl["state_key"] != dan || tmpl["type"] != "m.room.member" ||
			tmpl["content"].(map[string]any)["membership"] != "join" {
			t.Errorf("template %v", tmpl)
		}
		if n := len(list(tmpl["auth_events"])); n != 3 { // create, power levels, join rules
			t.Errorf("template auth_events %v, want 3", tmpl["auth_events"])
		}

		join := f.fillTemplate(tmpl, remote)
		code, b := f.do("PUT", membershipSendPath("join", "v2", room, join.EventID()), join.JSON(), remote)
		var ans struct {
			Origin         string            `json:"origin"`
			State          []json.RawMessage `json:"state"`
			AuthChain      []json.RawMessage `json:"auth_chain"`
			Event          json.RawMessage   `json:"event"`
			MembersOmitted *bool             `json:"members_omitted"`
		}
		if code != 200 || json.Unmarshal(b, &ans) != nil {
			t.Fatalf("send_join: %d %s", code, b)
		}
		if ans.Origin != server || ans.MembersOmitted == nil || *ans.MembersOmitted {
			t.Errorf("send_join answer %s", b)
		}
		var types []string
		for _, p := range ans.State {
			ev := pduOf(t, p)
			types = append(types, ev.Type()+"|"+*ev.StateKey())
		}
		sort.Strings(types)
		wantState := []string{"m.room.create|", "m.room.join_rules|", "m.room.member|" + alice, "m.room.member|" + carol,
			"m.room.name|", "m.room.power_levels|"}
		if !slices.Equal(types, wantState) {
			t.Errorf("state before the join = %v, want %v", types, wantState)
		}
		if len(ans.AuthChain) != 4 { // create, alice's join, power levels, join rules (of carol's join)
			t.Errorf("auth chain has %d events, want 4", len(ans.AuthChain))
		}
		if ev := pduOf(t, ans.Event); ev.EventID() != join.EventID() {
			t.Errorf("answered event %s, want %s", ev.EventID(), join.EventID())
		}
		batch := f.w.last(t)
		if len(batch.PDUs) != 1 || pduOf(t, batch.PDUs[0].Event).EventID() != join.EventID() || f.w.rooms[len(f.w.rooms)-1] != room {
			t.Errorf("persisted %+v, want the join", batch)
		}
		if o := f.relayedOrigin(join.EventID()); o != remote {
			t.Errorf("the join is relayed with origin %q, want %s", o, remote)
		}

		// The v1 shape: [200, answer].
		code, b = f.do("PUT", membershipSendPath("join", "v1", room, join.EventID()), join.JSON(), remote)
		var v1 []json.RawMessage
		if code != 200 || json.Unmarshal(b, &v1) != nil || len(v1) != 2 || string(v1[0]) != "200" {
			t.Errorf("v1 send_join: %d %s", code, b)
		}

		// omit_members (MSC3706): a named room's state without member
		// events, the auth chain without what the state holds, and the
		// servers in the room.
		code, b = f.do("PUT", membershipSendPath("join", "v2", room, join.EventID())+"?omit_members=true", join.JSON(), remote)
		var partial struct {
			State          []json.RawMessage `json:"state"`
			AuthChain      []json.RawMessage `json:"auth_chain"`
			MembersOmitted bool              `json:"members_omitted"`
			ServersInRoom  []string          `json:"servers_in_room"`
		}
		if code != 200 || json.Unmarshal(b, &partial) != nil || !partial.MembersOmitted {
			t.Fatalf("send_join with omit_members: %d %s", code, b)
		}
		inState := map[string]bool{}
		for _, p := range partial.State {
			ev := pduOf(t, p)
			inState[ev.EventID()] = true
			if ev.Type() == "m.room.member" {
				t.Errorf("partial state of a named room holds %s's membership", *ev.StateKey())
			}
		}
		if len(partial.State) != len(wantState)-2 {
			t.Errorf("partial state has %d events, want the %d that are not memberships", len(partial.State), len(wantState)-2)
		}
		for _, p := range partial.AuthChain {
			if ev := pduOf(t, p); inState[ev.EventID()] {
				t.Errorf("partial auth chain repeats %s (%s) of the state", ev.EventID(), ev.Type())
			}
		}
		if len(partial.AuthChain) == 0 {
			t.Error("partial auth chain is empty: alice's join, which authorises the state, belongs in it")
		}
		if !slices.Contains(partial.ServersInRoom, server) {
			t.Errorf("servers_in_room %v lacks %s", partial.ServersInRoom, server)
		}
		code, body = f.doJSON("PUT", membershipSendPath("join", "v2", room, join.EventID())+"?omit_members=maybe", join.JSON(), remote)
		want(t, "send_join with omit_members=maybe", code, body, 400, "M_INVALID_PARAM")

		// Bad input.
		code, body = f.doJSON("GET", makePath("join", room, dan)+"?ver=9", nil, remote)
		want(t, "make_join without our version", code, body, 400, "M_INCOMPATIBLE_ROOM_VERSION")
		if body["room_version"] != "10" {
			t.Errorf("incompatible version answer %v lacks room_version", body)
		}
		code, body = f.doJSON("GET", makePath("join", room, dan), nil, remote)
		want(t, "make_join with no ver (version 1 only)", code, body, 400, "M_INCOMPATIBLE_ROOM_VERSION")
		code, body = f.doJSON("GET", makePath("join", room, "@eve:"+stranger)+"?ver=10", nil, remote)
		want(t, "make_join for a user of another server", code, body, 403, "M_FORBIDDEN")
		code, body = f.doJSON("GET", makePath("join", "!nowhere:"+server, dan)+"?ver=10", nil, remote)
		want(t, "make_join to an unknown room", code, body, 404, "M_NOT_FOUND")
		code, body = f.doJSON("GET", makePath("join", room, dan)+"?ver=10", nil, "")
		want(t, "unsigned make_join", code, body, 401, "M_UNAUTHORIZED")
		code, body = f.doJSON("GET", makePath("join", f.rooms["invite"], dan)+"?ver=10", nil, remote)
		want(t, "make_join to an invite-only room", code, body, 403, "M_FORBIDDEN")

		n := f.w.count()
		code, body = f.doJSON("PUT", membershipSendPath("join", "v2", room, "$not-its-id"), join.JSON(), remote)
		want(t, "send_join with another event id", code, body, 400, "M_BAD_JSON")
		code, body = f.doJSON("PUT", membershipSendPath("join", "v2", f.rooms["knock"], join.EventID()), join.JSON(), remote)
		want(t, "send_join of an event of another room", code, body, 400, "M_BAD_JSON")
		code, body = f.doJSON("PUT", membershipSendPath("join", "v2", room, join.EventID()), join.JSON(), stranger)
		want(t, "send_join of another server's user", code, body, 403, "M_FORBIDDEN")
		code, body = f.doJSON("PUT", membershipSendPath("join", "v2", room, join.EventID()), join.JSON(), "")
		want(t, "unsigned send_join", code, body, 401, "M_UNAUTHORIZED")
		code, body = f.doJSON("PUT", membershipSendPath("join", "v2", "!nowhere:"+server, join.EventID()), join.JSON(), remote)
		want(t, "send_join to an unknown room", code, body, 404, "M_NOT_FOUND")
		forged := f.fillTemplate(tmpl, "forger")
		code, body = f.doJSON("PUT", membershipSendPath("join", "v2", room, forged.EventID()), forged.JSON(), remote)
		want(t, "send_join of an event signed with a wrong key", code, body, 403, "M_FORBIDDEN")
		code, body = f.doJSON("PUT", membershipSendPath("leave", "v2", room, join.EventID()), join.JSON(), remote)
		want(t, "send_leave of a join", code, body, 400, "M_BAD_JSON")
		code, body = f.doJSON("PUT", membershipSendPath("join", "v2", room, join.EventID()), []byte(`{"type":1}`), remote)
		want(t, "send_join of a malformed event", code, body, 400, "M_BAD_JSON")
		if f.w.count() != n {
			t.Errorf("refused send_joins were persisted")
		}
		// The persister refuses the join.
		f.w.outcome = rooms.RemoteRejected
		code, body = f.doJSON("PUT", membershipSendPath("join", "v2", room, join.EventID()), join.JSON(), remote)
		want(t, "send_join the auth rules reject", code, body, 403, "M_FORBIDDEN")
	})
}

func TestFederationRestrictedJoinIsAuthorisedAndCosigned(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newMembershipFixture(t, db)
		room := f.rooms["restricted"]
		code, body := f.doJSON("GET", makePath("join", room, carol)+"?ver=10", nil, remote)
		if code != 200 {
			t.Fatalf("make_join: %d %v", code, body)
		}
		tmpl := body["event"].(map[string]any)
		if via := tmpl["content"].(map[string]any)["join_authorised_via_users_server"]; via != alice {
			t.Errorf("authoriser %v, want %s", via, alice)
		}
		// dan is in none of the allowed rooms.
		code, body = f.doJSON("GET", makePath("join", room, "@dan:"+remote)+"?ver=10", nil, remote)
		want(t, "restricted make_join of a user in no allowed room", code, body, 403, "M_FORBIDDEN")

		join := f.fillTemplate(tmpl, remote)
		code, b := f.do("PUT", membershipSendPath("join", "v2", room, join.EventID()), join.JSON(), remote)
		if code != 200 {
			t.Fatalf("send_join: %d %s", code, b)
		}
		var ans struct {
			Event json.RawMessage `json:"event"`
		}
		_ = json.Unmarshal(b, &ans)
		ev := pduOf(t, ans.Event)
		if err := events.VerifyEventSignature(ev, server, f.our.ID, f.our.Public()); err != nil {
			t.Errorf("the answered join lacks our signature: %v", err)
		}
		if err := events.VerifyEventSignature(ev, remote, f.keys[remote].ID, f.keys[remote].Public()); err != nil {
			t.Errorf("the answered join lost the joining server's signature: %v", err)
		}
		if p := pduOf(t, f.w.last(t).PDUs[0].Event); events.VerifyEventSignature(p, server, f.our.ID, f.our.Public()) != nil {
			t.Error("the persisted join lacks our signature")
		}
	})
}

func TestFederationMakeLeaveSendLeaveAndKnock(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newMembershipFixture(t, db)
		code, body := f.doJSON("GET", makePath("leave", f.rooms["public"], carol), nil, remote)
		if code != 200 || body["room_version"] != "10" {
			t.Fatalf("make_leave: %d %v", code, body)
		}
		leave := f.fillTemplate(body["event"], remote)
		if leave.Membership() != "leave" {
			t.Fatalf("make_leave template of membership %q", leave.Membership())
		}
		code, b := f.do("PUT", membershipSendPath("leave", "v2", f.rooms["public"], leave.EventID()), leave.JSON(), remote)
		if code != 200 || string(b) != "{}" {
			t.Errorf("send_leave: %d %s", code, b)
		}
		if o := f.relayedOrigin(leave.EventID()); o != remote {
			t.Errorf("the leave is relayed with origin %q", o)
		}
		code, b = f.do("PUT", membershipSendPath("leave", "v1", f.rooms["public"], leave.EventID()), leave.JSON(), remote)
		if code != 200 || string(b) != "[200,{}]" {
			t.Errorf("v1 send_leave: %d %s", code, b)
		}
		f.w.outcome = rooms.RemoteMissingPrev
		code, body = f.doJSON("PUT", membershipSendPath("leave", "v2", f.rooms["public"], leave.EventID()), leave.JSON(), remote)
		want(t, "send_leave on unknown prev events", code, body, 400, "M_BAD_JSON")
		f.w.outcome = rooms.RemotePersisted
		code, body = f.doJSON("GET", makePath("leave", f.rooms["public"], "@x:"+stranger), nil, remote)
		want(t, "make_leave of another server's user", code, body, 403, "M_FORBIDDEN")

		dan := "@dan:" + remote
		code, body = f.doJSON("GET", makePath("knock", f.rooms["knock"], dan), nil, remote)
		want(t, "make_knock without ver", code, body, 400, "M_INCOMPATIBLE_ROOM_VERSION")
		code, body = f.doJSON("GET", makePath("knock", f.rooms["public"], dan)+"?ver=10", nil, remote)
		want(t, "make_knock on a public room", code, body, 403, "M_FORBIDDEN")
		code, body = f.doJSON("GET", makePath("knock", f.rooms["knock"], dan)+"?ver=10", nil, remote)
		if code != 200 {
			t.Fatalf("make_knock: %d %v", code, body)
		}
		knock := f.fillTemplate(body["event"], remote)
		code, body = f.doJSON("PUT", membershipSendPath("knock", "v1", f.rooms["knock"], knock.EventID()), knock.JSON(), remote)
		if code != 200 {
			t.Fatalf("send_knock: %d %v", code, body)
		}
		var names []string
		for _, s := range list(body["knock_room_state"]) {
			m := s.(map[string]any)
			names = append(names, m["type"].(string))
		}
		sort.Strings(names)
		if want := []string{"m.room.create", "m.room.join_rules", "m.room.name"}; !slices.Equal(names, want) {
			t.Errorf("knock_room_state types %v, want %v", names, want)
		}
	})
}

func invitePath(room, eventID string) string {
	return "/_matrix/federation/v2/invite/" + url.PathEscape(room) + "/" + url.PathEscape(eventID)
}

func TestFederationInviteOfALocalUser(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newMembershipFixture(t, db)
		rv, _ := events.LookupRoomVersion("10")
		far := "!far:" + remote
		dave := "@dave:" + server
		build := func(sender, target, srv string) *events.Event {
			ev, err := events.Build(events.ProtoEvent{RoomID: far, Sender: sender, Type: "m.room.member", StateKey: &target,
				Content: raw(map[string]any{"membership": "invite"}), PrevEvents: []string{"$prev"}, AuthEvents: []string{"$create"},
				Depth: 7, OriginServerTS: 1_700_000_000_000}, rv, f.keys[srv], srv)
			if err != nil {
				t.Fatal(err)
			}
			return ev
		}
		inv := build(carol, dave, remote)
		strippedState := []any{map[string]any{"type": "m.room.name", "state_key": "", "sender": carol, "content": map[string]any{"name": "Far"}}}
		req := func(ev *events.Event, version string) []byte {
			return raw(map[string]any{"room_version": version, "event": json.RawMessage(ev.JSON()), "invite_room_state": strippedState})
		}
		code, body := f.doJSON("PUT", invitePath(far, inv.EventID()), req(inv, "10"), remote)
		if code != 200 {
			t.Fatalf("invite: %d %v", code, body)
		}
		signed := pduOf(t, body["event"])
		if signed.EventID() != inv.EventID() {
			t.Errorf("answered %s, want %s", signed.EventID(), inv.EventID())
		}
		if err := events.VerifyEventSignature(signed, server, f.our.ID, f.our.Public()); err != nil {
			t.Errorf("the invite is not signed by us: %v", err)
		}
		if err := events.VerifyEventSignature(signed, remote, f.keys[remote].ID, f.keys[remote].Public()); err != nil {
			t.Errorf("the invite lost the inviting server's signature: %v", err)
		}
		batch := f.w.last(t)
		if batch.RoomVersion != "10" || len(batch.PDUs) != 1 || !batch.PDUs[0].OutOfBand {
			t.Fatalf("persisted %+v, want one out-of-band PDU of version 10", batch)
		}
		kept := pduOf(t, batch.PDUs[0].Event)
		var u struct {
			State []map[string]any `json:"invite_room_state"`
		}
		if kept.EventID() != inv.EventID() || json.Unmarshal(kept.Unsigned(), &u) != nil || len(u.State) != 1 || u.State[0]["type"] != "m.room.name" {
			t.Errorf("kept invite %s lacks the invite_room_state", kept.JSON())
		}

		// An invite into a room we are in is a plain PDU.
		pub := f.rooms["public"]
		inPub, err := events.Build(events.ProtoEvent{RoomID: pub, Sender: carol, Type: "m.room.member", StateKey: &dave,
			Content: raw(map[string]any{"membership": "invite"}), PrevEvents: []string{"$prev"}, AuthEvents: []string{"$create"},
			Depth: 7, OriginServerTS: 1_700_000_000_000}, rv, f.keys[remote], remote)
		if err != nil {
			t.Fatal(err)
		}
		// Built on events that have not reached us: it comes again
		// through /send, which fetches them; the invite is still signed.
		f.w.outcome = rooms.RemoteMissingPrev
		if code, body = f.doJSON("PUT", invitePath(pub, inPub.EventID()), req(inPub, "10"), remote); code != 200 {
			t.Fatalf("invite into a room we are in: %d %v", code, body)
		}
		f.w.outcome = rooms.RemotePersisted
		if b := f.w.last(t); b.PDUs[0].OutOfBand {
			t.Error("an invite into a room we are in was kept out of band")
		}

		n := f.w.count()
		code, body = f.doJSON("PUT", invitePath(far, inv.EventID()), req(inv, "99"), remote)
		want(t, "invite in an unsupported room version", code, body, 400, "M_INCOMPATIBLE_ROOM_VERSION")
		code, body = f.doJSON("PUT", invitePath(pub, inv.EventID()), req(inv, "10"), remote)
		want(t, "invite whose room is not the path's", code, body, 400, "M_BAD_JSON")
		code, body = f.doJSON("PUT", invitePath(far, "$other"), req(inv, "10"), remote)
		want(t, "invite with another event id", code, body, 400, "M_BAD_JSON")
		code, body = f.doJSON("PUT", invitePath(far, inv.EventID()), req(inv, "10"), stranger)
		want(t, "invite sent by a server that is not the inviter's", code, body, 403, "M_FORBIDDEN")
		code, body = f.doJSON("PUT", invitePath(far, inv.EventID()), req(inv, "10"), "")
		want(t, "unsigned invite", code, body, 401, "M_UNAUTHORIZED")
		nobody := build(carol, "@nobody:"+server, remote)
		code, body = f.doJSON("PUT", invitePath(far, nobody.EventID()), req(nobody, "10"), remote)
		want(t, "invite of an unknown local user", code, body, 404, "M_NOT_FOUND")
		elsewhere := build(carol, "@x:"+stranger, remote)
		code, body = f.doJSON("PUT", invitePath(far, elsewhere.EventID()), req(elsewhere, "10"), remote)
		want(t, "invite of a user of another server", code, body, 400, "M_BAD_JSON")
		forged := build(carol, dave, "forger")
		code, body = f.doJSON("PUT", invitePath(far, forged.EventID()), req(forged, "10"), remote)
		want(t, "invite signed with a wrong key", code, body, 403, "M_FORBIDDEN")
		if f.w.count() != n {
			t.Error("refused invites were persisted")
		}
	})
}

// The deprecated v1 invite: room versions 1 and 2 only, the stripped state
// in the event's unsigned, the answer [200, {"event": …}].
func TestFederationInviteV1(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newMembershipFixture(t, db)
		rv1, _ := events.LookupRoomVersion("1")
		dave := "@dave:" + server
		old := "!old:" + remote
		inv, err := events.Build(events.ProtoEvent{RoomID: old, Sender: carol, Type: "m.room.member", StateKey: &dave,
			Content: raw(map[string]any{"membership": "invite"}), PrevEvents: []string{"$prev:" + remote}, AuthEvents: []string{"$create:" + remote},
			Depth: 3, OriginServerTS: 1_700_000_000_000,
			Unsigned: raw(map[string]any{"invite_room_state": []any{map[string]any{"type": "m.room.name", "state_key": "", "sender": carol,
				"content": map[string]any{"name": "Old"}}}})}, rv1, f.keys[remote], remote)
		if err != nil {
			t.Fatal(err)
		}
		path := "/_matrix/federation/v1/invite/" + url.PathEscape(old) + "/" + url.PathEscape(inv.EventID())
		code, b := f.do("PUT", path, inv.JSON(), remote)
		var ans []json.RawMessage
		if code != 200 || json.Unmarshal(b, &ans) != nil || len(ans) != 2 || string(ans[0]) != "200" {
			t.Fatalf("v1 invite: %d %s", code, b)
		}
		var body struct {
			Event json.RawMessage `json:"event"`
		}
		_ = json.Unmarshal(ans[1], &body)
		signed, err := events.Parse(body.Event, rv1)
		if err != nil || signed.EventID() != inv.EventID() {
			t.Fatalf("v1 invite answered %s: %v", body.Event, err)
		}
		if err := events.VerifyEventSignature(signed, server, f.our.ID, f.our.Public()); err != nil {
			t.Errorf("not signed by us: %v", err)
		}
		batch := f.w.last(t)
		kept, err := events.Parse(batch.PDUs[0].Event, rv1)
		if err != nil || batch.RoomVersion != "1" || !batch.PDUs[0].OutOfBand {
			t.Fatalf("kept %+v: %v", batch, err)
		}
		var u struct {
			State []map[string]any `json:"invite_room_state"`
		}
		if json.Unmarshal(kept.Unsigned(), &u) != nil || len(u.State) != 1 || u.State[0]["type"] != "m.room.name" {
			t.Errorf("kept invite lacks the stripped state: %s", kept.JSON())
		}

		// A room of a later version needs v2.
		pub := f.rooms["public"]
		code, b = f.do("PUT", "/_matrix/federation/v1/invite/"+url.PathEscape(pub)+"/"+url.PathEscape(inv.EventID()), inv.JSON(), remote)
		if code != 400 || !bytes.Contains(b, []byte("M_INCOMPATIBLE_ROOM_VERSION")) {
			t.Errorf("v1 invite into a v10 room: %d %s", code, b)
		}
	})
}
