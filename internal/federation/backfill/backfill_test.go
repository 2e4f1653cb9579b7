package backfill_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"ganglion/internal/events"
	"ganglion/internal/federation/backfill"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
)

const (
	local  = "here.test"
	remote = "there.test"
)

// history is a room of remote.test's: create, carol's join, power levels,
// public join rule, then messages, then alice's (our user's) join.
type history struct {
	rv       *events.RoomVersion
	key      events.SigningKey
	roomID   string
	all      map[string]*events.Event
	state    []*events.Event // before alice's join
	messages []*events.Event // oldest first
	join     *events.Event
}

func raw(v any) json.RawMessage { b, _ := json.Marshal(v); return b }
func ptr(s string) *string      { return &s }

func newHistory(t *testing.T, messages int) *history {
	t.Helper()
	key, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	rv, _ := events.LookupRoomVersion("10")
	h := &history{rv: rv, key: key, roomID: "!old:" + remote, all: map[string]*events.Event{}}
	carol := "@carol:" + remote
	var last *events.Event
	build := func(sender, typ string, sk *string, content any, auth ...*events.Event) *events.Event {
		t.Helper()
		prev, depth := []string{}, int64(1)
		if last != nil {
			prev, depth = []string{last.EventID()}, last.Depth()+1
		}
		ids := []string{}
		for _, a := range auth {
			ids = append(ids, a.EventID())
		}
		ev, err := events.Build(events.ProtoEvent{RoomID: h.roomID, Sender: sender, Type: typ, StateKey: sk, Content: raw(content),
			PrevEvents: prev, AuthEvents: ids, Depth: depth, OriginServerTS: 1700000000000 + depth}, rv, key, remote)
		if err != nil {
			t.Fatal(err)
		}
		h.all[ev.EventID()] = ev
		last = ev
		return ev
	}
	create := build(carol, "m.room.create", ptr(""), map[string]any{"room_version": "10", "creator": carol})
	cj := build(carol, "m.room.member", ptr(carol), map[string]any{"membership": "join"}, create)
	pl := build(carol, "m.room.power_levels", ptr(""), map[string]any{"users": map[string]int{carol: 100}}, create, cj)
	jr := build(carol, "m.room.join_rules", ptr(""), map[string]any{"join_rule": "public"}, create, cj, pl)
	h.state = []*events.Event{create, cj, pl, jr}
	for i := range messages {
		h.messages = append(h.messages, build(carol, "m.room.message", nil, map[string]any{"body": "old " + string(rune('a'+i))}, create, cj, pl))
	}
	alice := "@alice:" + local
	h.join = build(alice, "m.room.member", ptr(alice), map[string]any{"membership": "join"}, create, pl, jr)
	return h
}

// fakeRemote answers /backfill and /event_auth from the history, as the
// remote server would.
type fakeRemote struct {
	h        *history
	tamper   string // the id of a message served with altered content
	unsigned string // the id of a message served with a bad signature
	asked    []string
	down     bool
}

func (f *fakeRemote) SignedGetJSON(ctx context.Context, server, path string, out any) error {
	f.asked = append(f.asked, server+" "+path)
	if f.down {
		return errors.New("connection refused")
	}
	u, err := url.Parse(path)
	if err != nil {
		return err
	}
	switch {
	case strings.HasPrefix(u.Path, "/_matrix/federation/v1/backfill/"):
		v := u.Query().Get("v")
		var pdus []json.RawMessage
		// v and its predecessors, newest first.
		cur := f.h.all[v]
		for cur != nil && len(pdus) < 100 {
			pdus = append(pdus, f.serve(cur))
			if len(cur.PrevEventIDs()) == 0 {
				break
			}
			cur = f.h.all[cur.PrevEventIDs()[0]]
		}
		b, _ := json.Marshal(map[string]any{"origin": remote, "pdus": pdus})
		return json.Unmarshal(b, out)
	case strings.HasPrefix(u.Path, "/_matrix/federation/v1/event_auth/"):
		var chain []json.RawMessage
		for _, ev := range f.h.state {
			chain = append(chain, ev.JSON())
		}
		b, _ := json.Marshal(map[string]any{"auth_chain": chain})
		return json.Unmarshal(b, out)
	}
	return errors.New("unexpected path " + path)
}

func (f *fakeRemote) serve(ev *events.Event) json.RawMessage {
	switch ev.EventID() {
	case f.tamper:
		var m map[string]any
		_ = json.Unmarshal(ev.JSON(), &m)
		m["content"] = map[string]any{"body": "forged", "msgtype": "m.text"}
		b, _ := json.Marshal(m)
		return b
	}
	return ev.JSON()
}

type verifier struct{ bad string }

func (v verifier) VerifyEventSignatures(ctx context.Context, ev *events.Event) error {
	if ev.EventID() == v.bad {
		return errors.New("signature does not verify")
	}
	return nil
}

func setup(t *testing.T, db *storage.DB, h *history, withState bool) (*rooms.Persister, *rooms.Store) {
	t.Helper()
	ctx := context.Background()
	reg, err := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := events.GenerateSigningKey()
	p, err := rooms.NewPersister(ctx, db, reg, local, key, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	var outliers []json.RawMessage
	var ids []string
	for _, ev := range h.state {
		ids = append(ids, ev.EventID())
		if withState {
			outliers = append(outliers, ev.JSON())
		}
	}
	if !withState {
		// Only the create event: the rest of the auth chain must be
		// fetched when backfilled events need it.
		outliers = []json.RawMessage{h.state[0].JSON()}
		ids = ids[:1]
	}
	res, err := p.PersistRemote(ctx, h.roomID, rooms.RemoteBatch{RoomVersion: "10", Outliers: outliers,
		PDUs: []rooms.RemotePDU{{Event: h.join.JSON(), StateBefore: ids}}})
	if err != nil {
		t.Fatal(err)
	}
	if last := res[len(res)-1]; withState && last.Outcome != rooms.RemotePersisted {
		t.Fatalf("join: %+v", last)
	}
	return p, rooms.NewStore(db)
}

func TestBackfillFetchesHistoryBelowTheJoin(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		h := newHistory(t, 5)
		p, store := setup(t, db, h, true)
		f := &fakeRemote{h: h, tamper: h.messages[1].EventID()}
		b := &backfill.Backfiller{ServerName: local, DB: db, Client: f, Keys: verifier{bad: h.messages[0].EventID()}, Writer: p,
			Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
		n, err := b.Backfill(ctx, h.roomID, 10)
		if err != nil {
			t.Fatal(err)
		}
		// Five messages; the badly signed one is dropped. The state events
		// come back too but are outliers here already, so they join the
		// history as well.
		if n < 4 {
			t.Fatalf("backfilled %d events, want at least the 4 good messages", n)
		}
		if !strings.HasPrefix(f.asked[0], remote+" /_matrix/federation/v1/backfill/") || !strings.Contains(f.asked[0], url.QueryEscape(h.join.EventID())) {
			t.Fatalf("asked %v", f.asked)
		}
		evs, err := store.RoomEvents(ctx, h.roomID, 1<<62, -1, true, 100)
		if err != nil {
			t.Fatal(err)
		}
		var order []string
		for _, se := range evs {
			order = append(order, se.Event.EventID())
		}
		// Newest first: the join, then the messages newest to oldest.
		want := []string{h.join.EventID(), h.messages[4].EventID(), h.messages[3].EventID(), h.messages[2].EventID(), h.messages[1].EventID()}
		if len(order) < len(want) {
			t.Fatalf("history %v", order)
		}
		for i, id := range want {
			if order[i] != id {
				t.Fatalf("history[%d] = %s, want %s (all: %v)", i, order[i], id, order)
			}
		}
		for _, se := range evs {
			if se.Event.EventID() == h.messages[0].EventID() {
				t.Fatal("a badly signed event was stored")
			}
			if se.Event.EventID() == h.messages[1].EventID() && strings.Contains(string(se.Event.Content()), "forged") {
				t.Fatal("an event whose content hash does not match was stored unredacted")
			}
		}
		// Asking again stores nothing new (everything is a duplicate).
		n, err = b.Backfill(ctx, h.roomID, 10)
		if err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Fatalf("second backfill stored %d events", n)
		}
	})
}

// TestBackfillAuthEventsInTheAnswer backfills a message whose sender's
// join is not in the state we were given (he left before our user
// joined): the join comes in the same answer, older, or through
// event_auth.
func TestBackfillAuthEventsInTheAnswer(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		h := newHistory(t, 0)
		dave := "@dave:" + remote
		create, pl, jr := h.state[0], h.state[2], h.state[3]
		// Rebuild the tail: dave joins, speaks, leaves; then alice joins.
		last := jr
		build := func(sender, typ string, sk *string, content any, auth ...*events.Event) *events.Event {
			ids := []string{}
			for _, a := range auth {
				ids = append(ids, a.EventID())
			}
			ev, err := events.Build(events.ProtoEvent{RoomID: h.roomID, Sender: sender, Type: typ, StateKey: sk, Content: raw(content),
				PrevEvents: []string{last.EventID()}, AuthEvents: ids, Depth: last.Depth() + 1, OriginServerTS: 1700000000000 + last.Depth()}, h.rv, h.key, remote)
			if err != nil {
				t.Fatal(err)
			}
			h.all[ev.EventID()] = ev
			last = ev
			return ev
		}
		dj := build(dave, "m.room.member", ptr(dave), map[string]any{"membership": "join"}, create, pl, jr)
		dm := build(dave, "m.room.message", nil, map[string]any{"body": "bye soon"}, create, pl, dj)
		dl := build(dave, "m.room.member", ptr(dave), map[string]any{"membership": "leave"}, create, pl, dj)
		alice := "@alice:" + local
		delete(h.all, h.join.EventID())
		h.join = build(alice, "m.room.member", ptr(alice), map[string]any{"membership": "join"}, create, pl, jr)
		h.state = append(h.state, dl)
		// dl's auth chain must be stored for the join's state: store it.
		p, store := setup(t, db, h, false)
		_, err := p.PersistRemote(ctx, h.roomID, rooms.RemoteBatch{Outliers: []json.RawMessage{h.state[1].JSON(), pl.JSON(), jr.JSON(), dj.JSON(), dl.JSON()},
			PDUs: []rooms.RemotePDU{{Event: h.join.JSON(), StateBefore: []string{create.EventID(), h.state[1].EventID(), pl.EventID(), jr.EventID(), dl.EventID()}}}})
		if err != nil {
			t.Fatal(err)
		}
		f := &fakeRemote{h: h, down: true}
		b := &backfill.Backfiller{ServerName: local, DB: db, Client: f, Keys: verifier{}, Writer: p,
			Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
		// An unreachable server is an error for the caller to log.
		if _, err := b.Backfill(ctx, h.roomID, 10); err == nil {
			t.Fatal("backfill from an unreachable server succeeded")
		}
		f.down = false
		if _, err := b.Backfill(ctx, h.roomID, 10); err != nil {
			t.Fatal(err)
		}
		se, err := store.Event(ctx, dm.EventID())
		if err != nil || se == nil || se.StreamOrdering >= 0 {
			t.Fatalf("dave's message not backfilled: %+v %v", se, err)
		}
		// History now reaches the create event: nothing more is asked.
		asked := len(f.asked)
		if n, err := b.Backfill(ctx, h.roomID, 10); err != nil || n != 0 || len(f.asked) != asked {
			t.Fatalf("backfill at the start of the room: %d events, %v, asked %d more", n, err, len(f.asked)-asked)
		}
	})
}
