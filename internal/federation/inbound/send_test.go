package inbound_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"ganglion/internal/events"
	"ganglion/internal/federation/inbound"
	"ganglion/internal/federation/serverkeys"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/testutil"
)

// verifier checks event signatures with the fixture's fixed keys, as the
// keyring would.
type verifier struct{ k keys }

func (v verifier) VerifyEventSignatures(ctx context.Context, ev *events.Event) error {
	return serverkeys.VerifyEventSignatures(ctx, v.k, ev)
}

// fakeRemote stands for the persister's remote event path: it knows the
// events of the fixture's room and those it "stored", and answers a PDU
// whose prev events it does not know (and that has no StateBefore) with
// missing_prev, as the contract says. Every batch is recorded.
type fakeRemote struct {
	mu      sync.Mutex
	known   map[string]bool
	batches []rooms.RemoteBatch
	// block, when set, holds PersistRemote until it is closed.
	block chan struct{}
	// fail makes PersistRemote fail as a whole.
	fail error
}

func (r *fakeRemote) PersistRemote(ctx context.Context, roomID string, b rooms.RemoteBatch) ([]rooms.RemoteResult, error) {
	r.mu.Lock()
	r.batches = append(r.batches, b)
	block, fail := r.block, r.fail
	r.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if fail != nil {
		return nil, fail
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	rv, _ := events.LookupRoomVersion("10")
	var out []rooms.RemoteResult
	for _, o := range b.Outliers {
		ev, err := events.Parse(o, rv)
		if err != nil {
			return nil, err
		}
		r.known[ev.EventID()] = true
		out = append(out, rooms.RemoteResult{EventID: ev.EventID(), Outcome: rooms.RemoteOutlier})
	}
	for _, p := range b.PDUs {
		ev, err := events.Parse(p.Event, rv)
		if err != nil {
			return nil, err
		}
		var missing []string
		for _, id := range ev.PrevEventIDs() {
			if !r.known[id] {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 && p.StateBefore == nil {
			out = append(out, rooms.RemoteResult{EventID: ev.EventID(), Outcome: rooms.RemoteMissingPrev, Missing: missing})
			continue
		}
		r.known[ev.EventID()] = true
		out = append(out, rooms.RemoteResult{EventID: ev.EventID(), Outcome: rooms.RemotePersisted, StreamPos: 100})
	}
	return out, nil
}

func (r *fakeRemote) recorded() []rooms.RemoteBatch {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.batches)
}

// fakeFetcher sends the signed requests of the handler to an in-process
// remote server (remoteServer) and records their paths.
type fakeFetcher struct {
	t     *testing.T
	h     http.Handler
	mu    sync.Mutex
	calls []string
	gme   []map[string]any
}

func (f *fakeFetcher) SignedGetJSON(ctx context.Context, dest, path string, out any) error {
	return f.do(ctx, dest, "GET", path, nil, out)
}

func (f *fakeFetcher) SignedPostJSON(ctx context.Context, dest, path string, body, out any) error {
	return f.do(ctx, dest, "POST", path, body, out)
}

func (f *fakeFetcher) do(ctx context.Context, dest, method, path string, body, out any) error {
	if dest != remote {
		return fmt.Errorf("request to %s, want %s", dest, remote)
	}
	f.mu.Lock()
	f.calls = append(f.calls, method+" "+path)
	if strings.Contains(path, "/get_missing_events/") {
		var m map[string]any
		_ = json.Unmarshal(raw(body), &m)
		f.gme = append(f.gme, m)
	}
	f.mu.Unlock()
	var content io.Reader
	if body != nil {
		content = bytes.NewReader(raw(body))
	}
	req := httptest.NewRequest(method, path, content).WithContext(ctx)
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	if rec.Code != 200 {
		return fmt.Errorf("%s %s: %d %s", method, path, rec.Code, rec.Body.String())
	}
	return json.Unmarshal(rec.Body.Bytes(), out)
}

func (f *fakeFetcher) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// remoteServer serves the events remote.test has and the local server
// does not, over the federation read endpoints.
type remoteServer struct {
	events    map[string]*events.Event
	missing   []string // get_missing_events answer
	stateIDs  []string // state_ids answer
	authChain []string // state_ids and event_auth answers
	// hang makes get_missing_events wait until the request is cancelled.
	hang bool
}

func (rs *remoteServer) handler() http.Handler {
	mux := http.NewServeMux()
	pdusOf := func(ids []string) []json.RawMessage {
		var out []json.RawMessage
		for _, id := range ids {
			if ev := rs.events[id]; ev != nil {
				out = append(out, ev.JSON())
			}
		}
		return out
	}
	mux.HandleFunc("GET /_matrix/federation/v1/event/{id}", func(w http.ResponseWriter, r *http.Request) {
		ev := rs.events[r.PathValue("id")]
		if ev == nil {
			http.Error(w, `{"errcode":"M_NOT_FOUND"}`, 404)
			return
		}
		_ = mxhttp.WriteJSON(w, 200, map[string]any{"origin": remote, "origin_server_ts": 1, "pdus": []json.RawMessage{ev.JSON()}})
	})
	mux.HandleFunc("POST /_matrix/federation/v1/get_missing_events/{room}", func(w http.ResponseWriter, r *http.Request) {
		if rs.hang {
			<-r.Context().Done()
			http.Error(w, `{"errcode":"M_UNKNOWN"}`, 500)
			return
		}
		_ = mxhttp.WriteJSON(w, 200, map[string]any{"events": nonEmpty(pdusOf(rs.missing))})
	})
	mux.HandleFunc("GET /_matrix/federation/v1/state_ids/{room}", func(w http.ResponseWriter, r *http.Request) {
		_ = mxhttp.WriteJSON(w, 200, map[string]any{"pdu_ids": rs.stateIDs, "auth_chain_ids": rs.authChain})
	})
	mux.HandleFunc("GET /_matrix/federation/v1/state/{room}", func(w http.ResponseWriter, r *http.Request) {
		_ = mxhttp.WriteJSON(w, 200, map[string]any{"pdus": nonEmpty(pdusOf(rs.stateIDs)), "auth_chain": nonEmpty(pdusOf(rs.authChain))})
	})
	mux.HandleFunc("GET /_matrix/federation/v1/event_auth/{room}/{id}", func(w http.ResponseWriter, r *http.Request) {
		_ = mxhttp.WriteJSON(w, 200, map[string]any{"auth_chain": nonEmpty(pdusOf(rs.authChain))})
	})
	return mux
}

func nonEmpty(l []json.RawMessage) []json.RawMessage {
	if l == nil {
		return []json.RawMessage{}
	}
	return l
}

type sendFixture struct {
	*fixture
	remoteW *fakeRemote
	fetch   *fakeFetcher
	rs      *remoteServer
	rv      *events.RoomVersion
	depth   int64
	last    string // the latest event id (prev of the next remote event)
	// deadline is the handlers' processing deadline (0: the default).
	deadline time.Duration
}

// newSendFixture is the fixture's room with PUT /send served, PDUs going
// to a fakeRemote and fetches to a remoteServer. setup runs on the
// inbound server before its routes are mounted.
func newSendFixture(t *testing.T, db *storage.DB, withRemote bool, setup func(*inbound.Server)) *sendFixture {
	t.Helper()
	f := newFixture(t, db, true)
	sf := &sendFixture{fixture: f, rs: &remoteServer{events: map[string]*events.Event{}}, depth: 11, last: f.id["last"]}
	sf.rv, _ = events.LookupRoomVersion("10")
	sf.remoteW = &fakeRemote{known: map[string]bool{}}
	for _, id := range f.id {
		sf.remoteW.known[id] = true
	}
	sf.fetch = &fakeFetcher{t: t, h: sf.rs.handler()}
	sf.h = sf.newHandler(db, withRemote, setup)
	return sf
}

func (sf *sendFixture) newHandler(db *storage.DB, withRemote bool, setup func(*inbound.Server)) http.Handler {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var rw rooms.RemoteWriter
	if withRemote {
		rw = sf.remoteW
	}
	s := inbound.New(inbound.Config{ServerName: server, Now: func() time.Time { return time.UnixMilli(1_700_000_000_000) }},
		sf.svc, profiles{}, log).WithSend(inbound.SendOptions{Remote: rw, Fetch: sf.fetch, Verifier: verifier{sf.finder}, DB: db, Deadline: sf.deadline})
	if setup != nil {
		setup(s)
	}
	mux := mxhttp.NewMux()
	s.Routes(mux, mxhttp.NewServer(log), &xmatrix.Authenticator{ServerName: server, Keys: sf.finder, Log: log})
	return mux
}

// remoteEvent builds an event of bob's signed by remote.test, after
// prev (the latest event when empty).
func (sf *sendFixture) remoteEvent(typ string, stateKey *string, content any, prev ...string) *events.Event {
	sf.t.Helper()
	if prev == nil {
		prev = []string{sf.last}
	}
	sf.depth++
	ev, err := events.Build(events.ProtoEvent{
		RoomID: sf.room, Sender: bob, Type: typ, StateKey: stateKey, Content: raw(content),
		PrevEvents: prev, AuthEvents: []string{sf.id["create"], sf.id["power levels"], sf.id["bob join"]},
		Depth: sf.depth, OriginServerTS: 1_700_000_000_000,
	}, sf.rv, sf.keys[remote], remote)
	if err != nil {
		sf.t.Fatal(err)
	}
	sf.last = ev.EventID()
	sf.rs.events[ev.EventID()] = ev
	return ev
}

func (sf *sendFixture) remoteMessage(body string, prev ...string) *events.Event {
	return sf.remoteEvent("m.room.message", nil, map[string]any{"msgtype": "m.text", "body": body}, prev...)
}

func sendPath(txnID string) string { return "/_matrix/federation/v1/send/" + url.PathEscape(txnID) }

// txn is a transaction body from remote.test.
func txn(pdus []json.RawMessage, edus ...any) map[string]any {
	if pdus == nil {
		pdus = []json.RawMessage{}
	}
	return map[string]any{"origin": remote, "origin_server_ts": 1_700_000_000_000, "pdus": pdus, "edus": edus}
}

func pduList(evs ...*events.Event) []json.RawMessage {
	var out []json.RawMessage
	for _, ev := range evs {
		out = append(out, ev.JSON())
	}
	return out
}

// results is the answer's "pdus" object.
func results(t *testing.T, code int, body map[string]any) map[string]map[string]any {
	t.Helper()
	if code != 200 {
		t.Fatalf("send: %d %v", code, body)
	}
	out := map[string]map[string]any{}
	m, ok := body["pdus"].(map[string]any)
	if !ok {
		t.Fatalf("answer without pdus: %v", body)
	}
	for id, v := range m {
		out[id], _ = v.(map[string]any)
	}
	return out
}

// sendOK sends a transaction from remote.test and returns its results.
func (sf *sendFixture) sendOK(path string, body any) map[string]map[string]any {
	sf.t.Helper()
	code, out := sf.do("PUT", path, body, remote)
	return results(sf.t, code, out)
}

// sentPDUs lists the events of the recorded batches' PDUs.
func sentPDUs(t *testing.T, bs []rooms.RemoteBatch) []*events.Event {
	t.Helper()
	rv, _ := events.LookupRoomVersion("10")
	var out []*events.Event
	for _, b := range bs {
		for _, p := range b.PDUs {
			ev, err := events.Parse(p.Event, rv)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, ev)
		}
	}
	return out
}

func idsOf(evs []*events.Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.EventID())
	}
	return out
}

func TestFederationSendAuth(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		sf := newSendFixture(t, db, true, nil)
		body := txn(pduList(sf.remoteMessage("hi")))
		code, out := sf.do("PUT", sendPath("t1"), body, "")
		want(t, "unsigned", code, out, 401, "M_UNAUTHORIZED")
		code, out = sf.do("PUT", sendPath("t1"), body, "forger")
		want(t, "wrong signature", code, out, 401, "M_UNAUTHORIZED")

		// Signed for another destination.
		content := raw(body)
		params, err := xmatrix.Sign(xmatrix.Request{Method: "PUT", URI: sendPath("t1"), Origin: remote, Destination: "other.test", Content: content}, sf.keys[remote])
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest("PUT", sendPath("t1"), bytes.NewReader(content))
		req.Header.Set("Authorization", params.Format())
		rec := httptest.NewRecorder()
		sf.h.ServeHTTP(rec, req)
		if rec.Code != 401 || !strings.Contains(rec.Body.String(), "M_UNAUTHORIZED") {
			t.Errorf("destination mismatch: %d %s", rec.Code, rec.Body.String())
		}
		if n := len(sf.remoteW.recorded()); n != 0 {
			t.Errorf("%d batches stored from refused requests", n)
		}
	})
}

func TestFederationSendBadBodies(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		sf := newSendFixture(t, db, true, nil)
		ev := sf.remoteMessage("hi")

		other := txn(pduList(ev))
		other["origin"] = stranger
		code, out := sf.do("PUT", sendPath("b1"), other, remote)
		want(t, "origin of another server", code, out, 403, "M_FORBIDDEN")
		noOrigin := txn(pduList(ev))
		delete(noOrigin, "origin")
		code, out = sf.do("PUT", sendPath("b2"), noOrigin, remote)
		want(t, "no origin", code, out, 400, "M_BAD_JSON")

		var many []json.RawMessage
		for range 51 {
			many = append(many, ev.JSON())
		}
		code, out = sf.do("PUT", sendPath("b3"), txn(many), remote)
		want(t, "51 PDUs", code, out, 400, "M_BAD_JSON")
		var edus []any
		for range 101 {
			edus = append(edus, map[string]any{"edu_type": "m.typing", "content": map[string]any{}})
		}
		code, out = sf.do("PUT", sendPath("b4"), txn(nil, edus...), remote)
		want(t, "101 EDUs", code, out, 400, "M_BAD_JSON")
		code, out = sf.do("PUT", sendPath("b5"), []int{1}, remote)
		want(t, "not an object", code, out, 400, "M_NOT_JSON")
		code, out = doWith(t, sf.h, sf.fixture, "PUT", sendPath("b5"), []byte(`{"origin":`))
		want(t, "not JSON", code, out, 400, "M_NOT_JSON")
		code, out = sf.do("PUT", sendPath("b6"), map[string]any{"origin": remote, "pdus": "x"}, remote)
		want(t, "pdus not a list", code, out, 400, "M_BAD_JSON")
		if n := len(sf.remoteW.recorded()); n != 0 {
			t.Errorf("%d batches stored from refused transactions", n)
		}

		// A body past the federation body limit (10 MiB).
		huge := txn(nil)
		huge["padding"] = strings.Repeat("x", 10<<20)
		code, out = sf.do("PUT", sendPath("b8"), huge, remote)
		want(t, "oversize body", code, out, 413, "M_TOO_LARGE")

		// Exactly 50 PDUs and 100 EDUs are fine.
		code, out = sf.do("PUT", sendPath("b7"), txn(many[:50], edus[:100]...), remote)
		if r := results(t, code, out); len(r) != 1 || r[ev.EventID()]["error"] != nil {
			t.Errorf("50 copies of one PDU: %v", r)
		}
	})
}

func TestFederationSendPDUChecks(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		sf := newSendFixture(t, db, true, nil)
		good := sf.remoteMessage("good")

		// Malformed: depth is not an integer (the id is still computable).
		var m map[string]any
		_ = json.Unmarshal(sf.remoteMessage("malformed", good.EventID()).JSON(), &m)
		m["depth"] = "deep"
		malformed := raw(m)
		rv, _ := events.LookupRoomVersion("10")
		malformedID := idOfRaw(t, malformed, rv)

		// Signed by a key that is not remote.test's.
		forged, err := events.Build(events.ProtoEvent{RoomID: sf.room, Sender: bob, Type: "m.room.message",
			Content: raw(map[string]any{"body": "forged"}), PrevEvents: []string{good.EventID()},
			AuthEvents: []string{sf.id["create"], sf.id["power levels"], sf.id["bob join"]}, Depth: 20, OriginServerTS: 1},
			rv, sf.keys["forger"], remote)
		if err != nil {
			t.Fatal(err)
		}

		// Content altered after hashing and signing (signatures cover the
		// redacted form, so they still verify).
		altered := sf.remoteMessage("original", good.EventID())
		_ = json.Unmarshal(altered.JSON(), &m)
		m["content"] = map[string]any{"msgtype": "m.text", "body": "altered"}
		alteredRaw := raw(m)

		// A room this server does not know.
		unknownRoom, err := events.Build(events.ProtoEvent{RoomID: "!elsewhere:" + remote, Sender: bob, Type: "m.room.message",
			Content: raw(map[string]any{"body": "x"}), PrevEvents: []string{"$p"}, AuthEvents: []string{"$a"}, Depth: 5, OriginServerTS: 1},
			rv, sf.keys[remote], remote)
		if err != nil {
			t.Fatal(err)
		}

		pdus := []json.RawMessage{good.JSON(), malformed, forged.JSON(), alteredRaw, unknownRoom.JSON(), json.RawMessage(`"not an object"`)}
		r := sf.sendOK(sendPath("c1"), txn(pdus))
		if e, ok := r[good.EventID()]; !ok || e["error"] != nil {
			t.Errorf("good PDU: %v (answer %v)", e, r)
		}
		if e := r[malformedID]; e == nil || e["error"] == nil {
			t.Errorf("malformed PDU: %v (answer %v)", e, r)
		}
		if e := r[forged.EventID()]; e == nil || !strings.Contains(fmt.Sprint(e["error"]), "signature") {
			t.Errorf("forged PDU: %v", e)
		}
		if e, ok := r[altered.EventID()]; !ok || e["error"] != nil {
			t.Errorf("PDU with a bad content hash: %v, want accepted redacted", e)
		}
		if e, ok := r[unknownRoom.EventID()]; ok && e["error"] == nil {
			t.Errorf("PDU of an unknown room accepted: %v", e)
		}

		got := sentPDUs(t, sf.remoteW.recorded())
		if ids, wantIDs := idsOf(got), []string{good.EventID(), altered.EventID()}; !slices.Equal(ids, wantIDs) {
			t.Fatalf("stored %v, want %v", ids, wantIDs)
		}
		if bodyOf(got[1]) != "" || len(got[1].Content()) > 2 {
			t.Errorf("PDU with a bad content hash handed on with content %s, want redacted", got[1].Content())
		}
		if err := events.VerifyEventSignature(got[1], remote, sf.keys[remote].ID, sf.keys[remote].Public()); err != nil {
			t.Errorf("redacted PDU lost its signature: %v", err)
		}
	})
}

func idOfRaw(t *testing.T, rawEv []byte, rv *events.RoomVersion) string {
	t.Helper()
	h, err := events.ReferenceHash(rawEv, rv)
	if err != nil {
		t.Fatal(err)
	}
	return "$" + strings.TrimRight(strings.NewReplacer("+", "-", "/", "_").Replace(events.EncodeBase64(h)), "=")
}

func TestFederationSendServerACL(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		sf := newSendFixture(t, db, true, nil)
		sf.send("acl", rooms.Draft{Type: "m.room.server_acl", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"allow": []string{"*"}, "deny": []string{remote}})})
		sf.last = sf.id["acl"]
		ev := sf.remoteMessage("banned")
		r := sf.sendOK(sendPath("acl1"), txn(pduList(ev)))
		if e := r[ev.EventID()]; e == nil || !strings.Contains(fmt.Sprint(e["error"]), "ACL") {
			t.Errorf("PDU from a server the ACL denies: %v", e)
		}
		if n := len(sf.remoteW.recorded()); n != 0 {
			t.Errorf("%d batches stored for a denied server", n)
		}
	})
}

func TestFederationSendIdempotent(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		sf := newSendFixture(t, db, true, nil)
		ev := sf.remoteMessage("once")
		body := txn(pduList(ev))
		code, first := sf.do("PUT", sendPath("i1"), body, remote)
		results(t, code, first)
		code, again := sf.do("PUT", sendPath("i1"), body, remote)
		if code != 200 || fmt.Sprint(again) != fmt.Sprint(first) {
			t.Errorf("replay answered %d %v, want %v", code, again, first)
		}
		if n := len(sf.remoteW.recorded()); n != 1 {
			t.Errorf("replayed transaction stored %d times, want once", n)
		}
		// The same txn id from another origin is another transaction.
		strangerTxn := txn(nil)
		strangerTxn["origin"] = stranger
		if code, out := sf.do("PUT", sendPath("i1"), strangerTxn, stranger); code != 200 {
			t.Errorf("same txn id from another server: %d %v", code, out)
		}

		// Concurrent copies of a transaction are processed once.
		ev2 := sf.remoteMessage("concurrent")
		body = txn(pduList(ev2))
		var wg sync.WaitGroup
		answers := make([]string, 5)
		for i := range answers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				code, out := doWith(t, sf.h, sf.fixture, "PUT", sendPath("i2"), body)
				answers[i] = fmt.Sprint(code, out)
			}()
		}
		wg.Wait()
		for _, a := range answers[1:] {
			if a != answers[0] {
				t.Errorf("concurrent copies answered %q and %q", answers[0], a)
			}
		}
		if n := len(sf.remoteW.recorded()); n != 2 {
			t.Errorf("%d batches after the concurrent copies, want 2", n)
		}
	})
}

// Two workers on one database (the routing table keeps an origin on one
// worker, but not across a routing change): the second copy of a
// transaction waits for the first's answer instead of processing it.
func TestFederationSendIdempotentAcrossWorkers(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		sf := newSendFixture(t, db, true, nil)
		second := sf.newHandler(db, true, nil)
		ev := sf.remoteMessage("w")
		body := txn(pduList(ev))
		sf.remoteW.block = make(chan struct{})
		firstDone := make(chan string, 1)
		go func() {
			code, out := doWith(t, sf.h, sf.fixture, "PUT", sendPath("w1"), body)
			firstDone <- fmt.Sprint(code, out)
		}()
		testutil.Eventually(t, 10*time.Second, "first worker processing", func() bool { return len(sf.remoteW.recorded()) == 1 })
		secondDone := make(chan string, 1)
		go func() {
			code, out := doWith(t, second, sf.fixture, "PUT", sendPath("w1"), body)
			secondDone <- fmt.Sprint(code, out)
		}()
		close(sf.remoteW.block)
		a, b := <-firstDone, <-secondDone
		if a != b || !strings.HasPrefix(a, "200") {
			t.Errorf("answers %q and %q, want the same 200", a, b)
		}
		if n := len(sf.remoteW.recorded()); n != 1 {
			t.Errorf("transaction processed %d times, want once", n)
		}

		// A claim abandoned long ago (a worker died) is taken over.
		if _, err := db.Exec(t.Context(), `INSERT INTO federation_inbound_txns (origin, txn_id, claimed_ts) VALUES ($1, $2, $3)`,
			remote, "w2", int64(1_600_000_000_000)); err != nil {
			t.Fatal(err)
		}
		ev2 := sf.remoteMessage("w2")
		r := sf.sendOK(sendPath("w2"), txn(pduList(ev2)))
		if e, ok := r[ev2.EventID()]; !ok || e["error"] != nil {
			t.Errorf("transaction of an abandoned claim: %v", r)
		}
	})
}

// An origin's transactions are processed one at a time: another
// transaction meanwhile is refused with 429 (as Synapse), other origins
// are not held back.
func TestFederationSendOneTransactionAtATime(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		sf := newSendFixture(t, db, true, nil)
		ev := sf.remoteMessage("slow")
		sf.remoteW.block = make(chan struct{})
		firstDone := make(chan int, 1)
		go func() {
			code, _ := doWith(t, sf.h, sf.fixture, "PUT", sendPath("o1"), txn(pduList(ev)))
			firstDone <- code
		}()
		testutil.Eventually(t, 10*time.Second, "first transaction processing", func() bool { return len(sf.remoteW.recorded()) == 1 })
		other := sf.remoteMessage("next")
		code, out := sf.do("PUT", sendPath("o2"), txn(pduList(other)), remote)
		want(t, "second transaction while the first is processed", code, out, 429, "M_UNKNOWN")
		strangerTxn := txn(nil)
		strangerTxn["origin"] = stranger
		if code, out := sf.do("PUT", sendPath("o1"), strangerTxn, stranger); code != 200 {
			t.Errorf("another origin held back: %d %v", code, out)
		}
		close(sf.remoteW.block)
		if code := <-firstDone; code != 200 {
			t.Errorf("first transaction: %d", code)
		}
		if r := sf.sendOK(sendPath("o2"), txn(pduList(other))); r[other.EventID()] == nil || r[other.EventID()]["error"] != nil {
			t.Errorf("second transaction after the first: %v", r)
		}
	})
}

// Answers older than a day are pruned: a transaction id that old may be
// processed again.
func TestFederationSendPrunesOldAnswers(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		sf := newSendFixture(t, db, true, nil)
		// The fixture's clock is 1_700_000_000_000.
		for txnID, ts := range map[string]int64{"old": 1_700_000_000_000 - 25*3600*1000, "recent": 1_700_000_000_000 - 23*3600*1000} {
			if _, err := db.Exec(t.Context(), `INSERT INTO federation_inbound_txns (origin, txn_id, claimed_ts, response) VALUES ($1, $2, $3, '{"pdus":{}}')`,
				remote, txnID, ts); err != nil {
				t.Fatal(err)
			}
		}
		sf.sendOK(sendPath("p1"), txn(nil))
		var ids []string
		rows, err := db.Reader().QueryContext(t.Context(), `SELECT txn_id FROM federation_inbound_txns ORDER BY txn_id`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		if !slices.Equal(ids, []string{"p1", "recent"}) {
			t.Errorf("kept answers %v, want p1 and recent", ids)
		}
	})
}

// doWith sends a request signed by remote.test to handler h; a []byte
// body is sent as it is.
func doWith(t *testing.T, h http.Handler, f *fixture, method, uri string, body any) (int, map[string]any) {
	content, ok := body.([]byte)
	if !ok {
		content = raw(body)
	}
	req := httptest.NewRequest(method, uri, bytes.NewReader(content))
	// Content that is not JSON cannot be signed; the server refuses it
	// before it looks at the signature.
	if params, err := xmatrix.Sign(xmatrix.Request{Method: method, URI: uri, Origin: remote, Destination: server, Content: content}, f.keys[remote]); err == nil {
		req.Header.Set("Authorization", params.Format())
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var out map[string]any
	_ = json.Unmarshal(rec.Body.Bytes(), &out)
	return rec.Code, out
}

func TestFederationSendPersistFailure(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		sf := newSendFixture(t, db, true, nil)
		ev := sf.remoteMessage("retry me")
		body := txn(pduList(ev))
		sf.remoteW.fail = errors.New("database down")
		code, out := sf.do("PUT", sendPath("f1"), body, remote)
		if code != 500 {
			t.Fatalf("failed batch answered %d %v, want 500 so the sender retries", code, out)
		}
		// The retry is processed, not answered from a stored failure.
		sf.remoteW.fail = nil
		r := sf.sendOK(sendPath("f1"), body)
		if e, ok := r[ev.EventID()]; !ok || e["error"] != nil {
			t.Errorf("retry: %v", r)
		}
	})
}

func TestFederationSendMissingPrevEvents(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		sf := newSendFixture(t, db, true, nil)
		m1, m2, m3 := sf.remoteMessage("m1"), sf.remoteMessage("m2"), sf.remoteMessage("m3")
		p := sf.remoteMessage("p")
		sf.rs.missing = []string{m3.EventID(), m1.EventID(), m2.EventID()}

		r := sf.sendOK(sendPath("g1"), txn(pduList(p)))
		if e, ok := r[p.EventID()]; !ok || e["error"] != nil {
			t.Fatalf("PDU after missing events: %v", r)
		}
		if len(r) != 1 {
			t.Errorf("answer names fetched events too: %v", r)
		}
		bs := sf.remoteW.recorded()
		last := sentPDUs(t, bs[len(bs)-1:])
		if ids, wantIDs := idsOf(last), idsOf([]*events.Event{m1, m2, m3, p}); !slices.Equal(ids, wantIDs) {
			t.Errorf("last batch %v, want the missing events prev first, then the PDU %v", ids, wantIDs)
		}
		if len(sf.fetch.gme) != 1 {
			t.Fatalf("get_missing_events requests: %v", sf.fetch.gme)
		}
		g := sf.fetch.gme[0]
		if fmt.Sprint(g["earliest_events"]) != fmt.Sprint([]any{sf.id["last"]}) || fmt.Sprint(g["latest_events"]) != fmt.Sprint([]any{p.EventID()}) ||
			g["limit"] != float64(10) {
			t.Errorf("get_missing_events body %v, want earliest = the forward extremity, latest = the PDU, limit 10", g)
		}
		for _, c := range sf.fetch.requests() {
			if strings.Contains(c, "/state_ids/") {
				t.Errorf("state fetched though get_missing_events closed the gap: %s", c)
			}
		}
	})
}

func TestFederationSendStateFallback(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		sf := newSendFixture(t, db, true, nil)
		// The gap is longer than get_missing_events brings: m1 and m2 are
		// never served, m3 is.
		sf.remoteMessage("m1")
		sf.remoteMessage("m2")
		m3 := sf.remoteMessage("m3")
		// bob's new display name, part of the state before p, unknown here.
		name := sf.remoteEvent("m.room.member", ptr(bob), map[string]any{"membership": "join", "displayname": "Bob"})
		p := sf.remoteMessage("p")
		sf.rs.missing = []string{m3.EventID()}
		state := []string{sf.id["create"], sf.id["alice join"], sf.id["power levels"], sf.id["join rules"], sf.id["history"], name.EventID()}
		sf.rs.stateIDs = state
		sf.rs.authChain = []string{sf.id["create"], sf.id["alice join"], sf.id["power levels"], sf.id["bob join"]}

		r := sf.sendOK(sendPath("s1"), txn(pduList(p)))
		if e, ok := r[p.EventID()]; !ok || e["error"] != nil {
			t.Fatalf("PDU after a gap: %v", r)
		}
		bs := sf.remoteW.recorded()
		final := bs[len(bs)-1]
		if len(final.PDUs) != 1 || !slices.Equal(final.PDUs[0].StateBefore, state) {
			t.Fatalf("final batch PDUs %d, state before %v, want the PDU with %v", len(final.PDUs), final.PDUs, state)
		}
		if ev := sentPDUs(t, []rooms.RemoteBatch{final})[0]; ev.EventID() != p.EventID() {
			t.Errorf("final batch carries %s, want the PDU", ev.EventID())
		}
		var outliers []string
		for _, o := range final.Outliers {
			ev, err := events.Parse(o, sf.rv)
			if err != nil {
				t.Fatal(err)
			}
			outliers = append(outliers, ev.EventID())
		}
		if !slices.Equal(outliers, []string{name.EventID()}) {
			t.Errorf("outliers %v, want only the state event not stored here (%s)", outliers, name.EventID())
		}
		reqs := sf.fetch.requests()
		if !slices.ContainsFunc(reqs, func(c string) bool {
			return strings.Contains(c, "/state_ids/") && strings.Contains(c, url.QueryEscape(p.EventID()))
		}) ||
			!slices.Contains(reqs, "GET /_matrix/federation/v1/event/"+url.PathEscape(name.EventID())) {
			t.Errorf("requests %v, want state_ids at the PDU and the unknown state event", reqs)
		}
	})
}

// More unknown state events than are worth fetching one by one come in
// one /state request.
func TestFederationSendStateFallbackMany(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		sf := newSendFixture(t, db, true, nil)
		sf.remoteMessage("unknown", "$unknown")
		state := []string{sf.id["create"], sf.id["alice join"], sf.id["power levels"], sf.id["join rules"], sf.id["history"]}
		var unknown []string
		for i := range 60 {
			u := fmt.Sprintf("@u%d:%s", i, remote)
			sf.depth++
			ev, err := events.Build(events.ProtoEvent{
				RoomID: sf.room, Sender: u, Type: "m.room.member", StateKey: &u, Content: raw(map[string]any{"membership": "join"}),
				PrevEvents: []string{sf.last}, AuthEvents: []string{sf.id["create"], sf.id["power levels"], sf.id["join rules"]},
				Depth: sf.depth, OriginServerTS: 1_700_000_000_000,
			}, sf.rv, sf.keys[remote], remote)
			if err != nil {
				t.Fatal(err)
			}
			sf.rs.events[ev.EventID()] = ev
			state = append(state, ev.EventID())
			unknown = append(unknown, ev.EventID())
		}
		p := sf.remoteMessage("p")
		sf.rs.stateIDs = state
		sf.rs.authChain = []string{sf.id["create"], sf.id["alice join"], sf.id["power levels"], sf.id["join rules"]}

		r := sf.sendOK(sendPath("sm1"), txn(pduList(p)))
		if e, ok := r[p.EventID()]; !ok || e["error"] != nil {
			t.Fatalf("PDU after a gap: %v", r)
		}
		bs := sf.remoteW.recorded()
		final := bs[len(bs)-1]
		var outliers []string
		for _, o := range final.Outliers {
			ev, err := events.Parse(o, sf.rv)
			if err != nil {
				t.Fatal(err)
			}
			outliers = append(outliers, ev.EventID())
		}
		slices.Sort(outliers)
		slices.Sort(unknown)
		if !slices.Equal(outliers, unknown) || !slices.Equal(final.PDUs[0].StateBefore, state) {
			t.Errorf("final batch: %d outliers, state before %d ids; want the 60 unknown members and the %d state ids",
				len(outliers), len(final.PDUs[0].StateBefore), len(state))
		}
		for _, c := range sf.fetch.requests() {
			if strings.HasPrefix(c, "GET /_matrix/federation/v1/event/") {
				t.Errorf("state fetched one by one: %s", c)
				break
			}
		}
		if !slices.ContainsFunc(sf.fetch.requests(), func(c string) bool { return strings.HasPrefix(c, "GET /_matrix/federation/v1/state/") }) {
			t.Errorf("no /state request: %v", sf.fetch.requests())
		}
	})
}

func TestFederationSendMissingAuthEvents(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		sf := newSendFixture(t, db, true, nil)
		// bob's new membership, unknown here, is an auth event of p.
		name := sf.remoteEvent("m.room.member", ptr(bob), map[string]any{"membership": "join", "displayname": "Bob"})
		sf.depth++
		p, err := events.Build(events.ProtoEvent{
			RoomID: sf.room, Sender: bob, Type: "m.room.message", Content: raw(map[string]any{"body": "p"}),
			PrevEvents: []string{sf.id["last"]}, AuthEvents: []string{sf.id["create"], sf.id["power levels"], name.EventID()},
			Depth: sf.depth, OriginServerTS: 1_700_000_000_000,
		}, sf.rv, sf.keys[remote], remote)
		if err != nil {
			t.Fatal(err)
		}
		sf.rs.authChain = []string{sf.id["create"], sf.id["power levels"], sf.id["alice join"], name.EventID()}
		r := sf.sendOK(sendPath("a1"), txn(pduList(p)))
		if e, ok := r[p.EventID()]; !ok || e["error"] != nil {
			t.Fatalf("PDU with an unknown auth event: %v", r)
		}
		bs := sf.remoteW.recorded()
		if len(bs) != 1 || len(bs[0].Outliers) != 1 {
			t.Fatalf("batches %v, want one with the missing auth event as its outlier", bs)
		}
		if o, _ := events.Parse(bs[0].Outliers[0], sf.rv); o == nil || o.EventID() != name.EventID() {
			t.Errorf("outlier %s, want %s", bs[0].Outliers[0], name.EventID())
		}
	})
}

func TestFederationSendFetchBounded(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		sf := newSendFixture(t, db, true, nil)
		// 50 PDUs, each after its own gap that nothing fills and with an
		// auth event nobody serves: get_missing_events, the state fallback
		// and auth chains are tried a bounded number of times.
		var pdus []*events.Event
		for i := range 50 {
			gap := sf.remoteMessage(fmt.Sprint("gap", i), "$unknown"+fmt.Sprint(i))
			sf.depth++
			p, err := events.Build(events.ProtoEvent{
				RoomID: sf.room, Sender: bob, Type: "m.room.message", Content: raw(map[string]any{"body": fmt.Sprint("p", i)}),
				PrevEvents: []string{gap.EventID()}, AuthEvents: []string{sf.id["create"], sf.id["power levels"], "$noauth" + fmt.Sprint(i)},
				Depth: sf.depth, OriginServerTS: 1_700_000_000_000,
			}, sf.rv, sf.keys[remote], remote)
			if err != nil {
				t.Fatal(err)
			}
			pdus = append(pdus, p)
		}
		r := sf.sendOK(sendPath("x1"), txn(pduList(pdus...)))
		failed := 0
		for _, e := range r {
			if e["error"] != nil {
				failed++
			}
		}
		if failed != 50 {
			t.Errorf("%d of 50 unfillable PDUs failed: %v", failed, r)
		}
		gme, states, auths := 0, 0, 0
		for _, c := range sf.fetch.requests() {
			switch {
			case strings.Contains(c, "/get_missing_events/"):
				gme++
			case strings.Contains(c, "/state_ids/"):
				states++
			case strings.Contains(c, "/event_auth/"):
				auths++
			}
		}
		if gme != 10 || states != 5 || auths != 20 {
			t.Errorf("%d get_missing_events, %d state_ids and %d event_auth requests for one transaction, want the limits 10, 5 and 20",
				gme, states, auths)
		}
	})
}

// A transaction's processing ends at its deadline, whatever the origin
// does: the PDUs not stored by then are answered with an error.
func TestFederationSendDeadline(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		sf := newSendFixture(t, db, true, nil)
		sf.deadline = 200 * time.Millisecond
		sf.h = sf.newHandler(db, true, nil)
		sf.remoteMessage("unknown", "$unknown")
		p := sf.remoteMessage("p")
		sf.rs.hang = true
		r := sf.sendOK(sendPath("d1"), txn(pduList(p)))
		if e := r[p.EventID()]; e == nil || !strings.Contains(fmt.Sprint(e["error"]), "in time") {
			t.Errorf("PDU whose fetch outlived the deadline: %v", r)
		}
	})
}

func TestFederationSendEDUs(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		type got struct{ origin, content string }
		var mu sync.Mutex
		var typing []got
		reg := prometheus.NewRegistry()
		sf := newSendFixture(t, db, true, func(s *inbound.Server) {
			s.RegisterMetrics(reg)
			s.HandleEDU("m.typing", func(_ context.Context, origin string, content json.RawMessage) error {
				mu.Lock()
				defer mu.Unlock()
				typing = append(typing, got{origin, string(content)})
				return nil
			})
			s.HandleEDU("m.receipt", func(context.Context, string, json.RawMessage) error { return errors.New("bad receipt") })
			s.HandleEDU("m.presence", func(context.Context, string, json.RawMessage) error { panic("handler bug") })
		})
		ev := sf.remoteMessage("with edus")
		code, out := sf.do("PUT", sendPath("e1"), txn(pduList(ev),
			map[string]any{"edu_type": "m.presence", "content": map[string]any{}},
			map[string]any{"edu_type": "m.receipt", "content": map[string]any{}},
			map[string]any{"edu_type": "org.example.unknown", "content": map[string]any{}},
			"not an EDU",
			map[string]any{"edu_type": "m.typing", "content": map[string]any{"room_id": sf.room, "user_id": bob, "typing": true}},
		), remote)
		if r := results(t, code, out); r[ev.EventID()] == nil || r[ev.EventID()]["error"] != nil {
			t.Errorf("PDU next to EDUs: %v", r)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(typing) != 1 || typing[0].origin != remote || !strings.Contains(typing[0].content, `"typing":true`) {
			t.Errorf("typing handler got %v", typing)
		}
		counts := map[string]float64{}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				counts[mf.GetName()+"/"+m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
		wantCounts := map[string]float64{
			"ganglion_federation_inbound_pdus_total/accepted": 1,
			"ganglion_federation_inbound_edus_total/handled":  1, "ganglion_federation_inbound_edus_total/failed": 2,
			"ganglion_federation_inbound_edus_total/ignored": 1, "ganglion_federation_inbound_edus_total/malformed": 1,
		}
		if fmt.Sprint(counts) != fmt.Sprint(wantCounts) {
			t.Errorf("counters %v, want %v", counts, wantCounts)
		}
	})
}

