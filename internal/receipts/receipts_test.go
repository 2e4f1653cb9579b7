package receipts_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"ganglion/internal/events"
	"ganglion/internal/receipts"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
)

const server = "test.local"

var (
	alice = "@alice:" + server
	bob   = "@bob:" + server
)

// fixedTS is the receipts' ts in these tests, so contents compare exactly.
const fixedTS = 1_700_000_000_000

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func ptr(s string) *string { return &s }

func raw(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

// env is a database with two rooms (alice and bob joined to both) and a
// few messages in each, plus the receipts writer.
type env struct {
	db        *storage.DB
	reg       *streams.Registry
	svc       *receipts.Service
	room1     string
	room2     string
	ev1       []string // messages in room1, oldest first
	ev2       []string // messages in room2
	persister *rooms.Persister
}

func newRegistry(t *testing.T) *streams.Registry {
	t.Helper()
	reg, err := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

func newReceipts(t *testing.T, db *storage.DB, reg *streams.Registry) *receipts.Service {
	t.Helper()
	svc, err := receipts.NewService(ctxT(t), db, reg, discard())
	if err != nil {
		t.Fatal(err)
	}
	svc.SetClock(func() time.Time { return time.UnixMilli(fixedTS) })
	return svc
}

func newEnv(t *testing.T, db *storage.DB) *env {
	t.Helper()
	ctx := ctxT(t)
	reg := newRegistry(t)
	key, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	p, err := rooms.NewPersister(ctx, db, reg, server, key, discard())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{db: db, reg: reg, persister: p, room1: "!one:" + server, room2: "!two:" + server}
	e.ev1 = makeRoom(t, p, e.room1, 5)
	e.ev2 = makeRoom(t, p, e.room2, 2)
	e.svc = newReceipts(t, db, reg)
	return e
}

// makeRoom creates a public room with alice and bob joined and n messages.
func makeRoom(t *testing.T, p *rooms.Persister, roomID string, n int) []string {
	t.Helper()
	drafts := []rooms.Draft{
		{Type: "m.room.create", StateKey: ptr(""), Sender: alice, RoomVersion: "10",
			Content: raw(map[string]any{"creator": alice, "room_version": "10"})},
		{Type: "m.room.member", StateKey: ptr(alice), Sender: alice, Content: raw(map[string]any{"membership": "join"})},
		{Type: "m.room.power_levels", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"users": map[string]int{alice: 100}})},
		{Type: "m.room.join_rules", StateKey: ptr(""), Sender: alice, Content: raw(map[string]any{"join_rule": "public"})},
		{Type: "m.room.member", StateKey: ptr(bob), Sender: bob, Content: raw(map[string]any{"membership": "join"})},
	}
	for i := 0; i < n; i++ {
		drafts = append(drafts, rooms.Draft{Type: "m.room.message", Sender: alice,
			Content: raw(map[string]any{"msgtype": "m.text", "body": fmt.Sprint("message ", i)})})
	}
	res, err := p.SendEvents(ctxT(t), roomID, drafts)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range res[5:] {
		ids = append(ids, r.EventID)
	}
	return ids
}

func (e *env) set(t *testing.T, r receipts.Receipt) int64 {
	t.Helper()
	id, err := e.svc.SetReceipt(ctxT(t), r)
	if err != nil {
		t.Fatalf("SetReceipt(%+v): %v", r, err)
	}
	return id
}

func (e *env) forRooms(t *testing.T, userID string, roomIDs []string, from, to int64) map[string]any {
	t.Helper()
	got, err := e.svc.ForRooms(ctxT(t), userID, roomIDs, from, to)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]any{}
	for room, content := range got {
		var v any
		if err := json.Unmarshal(content, &v); err != nil {
			t.Fatalf("content of %s is not JSON: %s", room, content)
		}
		out[room] = v
	}
	return out
}

// receiptJSON builds the expected m.receipt content of one room from
// (event, type, user, thread) tuples.
func content(entries ...[4]string) any {
	c := map[string]any{}
	for _, e := range entries {
		ev, typ, user, thread := e[0], e[1], e[2], e[3]
		if c[ev] == nil {
			c[ev] = map[string]any{}
		}
		byType := c[ev].(map[string]any)
		if byType[typ] == nil {
			byType[typ] = map[string]any{}
		}
		body := map[string]any{"ts": float64(fixedTS)}
		if thread != "" {
			body["thread_id"] = thread
		}
		byType[typ].(map[string]any)[user] = body
	}
	return c
}

func expect(t *testing.T, what string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		t.Fatalf("%s:\n got %s\nwant %s", what, g, w)
	}
}

func woken(l *streams.Listener) bool {
	select {
	case <-l.C:
		return true
	default:
		return false
	}
}

func TestReceiptsOrderPositionsAndWakes(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db)
		l := e.reg.Notifier().Listen(streams.RoomKey(e.room1))
		defer l.Close()

		id1 := e.set(t, receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: alice, EventID: e.ev1[0]})
		if id1 <= 0 || e.svc.Position() != id1 || e.reg.Current(streams.Receipts) != id1 {
			t.Fatalf("id %d, position %d, registry %d", id1, e.svc.Position(), e.reg.Current(streams.Receipts))
		}
		if !woken(l) {
			t.Fatal("receipt did not wake the room")
		}
		id2 := e.set(t, receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: bob, EventID: e.ev1[1]})
		if id2 <= id1 || e.reg.Current(streams.Receipts) != id2 || !woken(l) {
			t.Fatalf("second receipt: id %d after %d, registry %d", id2, id1, e.reg.Current(streams.Receipts))
		}
		expect(t, "all receipts", e.forRooms(t, alice, []string{e.room1}, 0, id2), map[string]any{
			e.room1: content([4]string{e.ev1[0], receipts.Read, alice, ""}, [4]string{e.ev1[1], receipts.Read, bob, ""}),
		})
	})
}

func TestReceiptsOnlyMoveForward(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db)
		l := e.reg.Notifier().Listen(streams.RoomKey(e.room1))
		defer l.Close()
		r := func(ev string) receipts.Receipt {
			return receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: alice, EventID: ev}
		}
		id := e.set(t, r(e.ev1[3]))
		<-l.C

		for _, older := range []string{e.ev1[1], e.ev1[3]} { // an older event, then the same one again
			if got := e.set(t, r(older)); got != id {
				t.Fatalf("ignored receipt for %s returned %d, want the current position %d", older, got, id)
			}
			if woken(l) {
				t.Fatal("ignored receipt woke the room")
			}
		}
		want := map[string]any{e.room1: content([4]string{e.ev1[3], receipts.Read, alice, ""})}
		expect(t, "after older receipts", e.forRooms(t, alice, []string{e.room1}, 0, e.svc.Position()), want)

		// Each type moves on its own: a private receipt behind the public
		// one is fine (spec: "Private read receipts").
		priv := e.set(t, receipts.Receipt{RoomID: e.room1, Type: receipts.ReadPrivate, UserID: alice, EventID: e.ev1[0]})
		if priv <= id {
			t.Fatalf("private receipt id %d, want > %d", priv, id)
		}
		newer := e.set(t, r(e.ev1[4]))
		if newer <= priv {
			t.Fatalf("newer receipt id %d, want > %d", newer, priv)
		}
		expect(t, "after a newer receipt", e.forRooms(t, alice, []string{e.room1}, 0, newer), map[string]any{
			e.room1: content([4]string{e.ev1[4], receipts.Read, alice, ""}, [4]string{e.ev1[0], receipts.ReadPrivate, alice, ""}),
		})
	})
}

func TestThreadedAndUnthreadedReceiptsAreSeparate(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db)
		root := e.ev1[0]
		e.set(t, receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: alice, EventID: e.ev1[3]})
		// Older than the unthreaded receipt, but a different thread: kept.
		e.set(t, receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: alice, EventID: e.ev1[1], ThreadID: receipts.MainThread})
		e.set(t, receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: alice, EventID: e.ev1[2], ThreadID: root})
		// Within a thread receipts still only move forward.
		pos := e.svc.Position()
		if got := e.set(t, receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: alice, EventID: e.ev1[0],
			ThreadID: receipts.MainThread}); got != pos {
			t.Fatalf("older main-thread receipt got id %d, want ignored at %d", got, pos)
		}
		expect(t, "threaded receipts", e.forRooms(t, bob, []string{e.room1}, 0, e.svc.Position()), map[string]any{
			e.room1: content(
				[4]string{e.ev1[3], receipts.Read, alice, ""},
				[4]string{e.ev1[1], receipts.Read, alice, receipts.MainThread},
				[4]string{e.ev1[2], receipts.Read, alice, root},
			),
		})
		rows, err := e.svc.Rows(ctxT(t), 0, e.svc.Position(), 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != 3 {
			t.Fatalf("rows = %+v, want 3 (one per thread)", rows)
		}
	})
}

func TestPrivateReceiptsOnlyForTheirUser(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db)
		e.set(t, receipts.Receipt{RoomID: e.room1, Type: receipts.ReadPrivate, UserID: alice, EventID: e.ev1[2]})
		e.set(t, receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: bob, EventID: e.ev1[1]})
		to := e.svc.Position()
		expect(t, "alice sees her private receipt", e.forRooms(t, alice, []string{e.room1}, 0, to), map[string]any{
			e.room1: content([4]string{e.ev1[2], receipts.ReadPrivate, alice, ""}, [4]string{e.ev1[1], receipts.Read, bob, ""}),
		})
		expect(t, "bob does not", e.forRooms(t, bob, []string{e.room1}, 0, to), map[string]any{
			e.room1: content([4]string{e.ev1[1], receipts.Read, bob, ""}),
		})
		// A window holding only someone else's private receipt is empty,
		// not an empty object.
		expect(t, "bob, window of alice's private receipt", e.forRooms(t, bob, []string{e.room1}, 0, to-1), map[string]any{})
	})
}

func TestForRoomsWindows(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db)
		a := e.set(t, receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: alice, EventID: e.ev1[0]})
		b := e.set(t, receipts.Receipt{RoomID: e.room2, Type: receipts.Read, UserID: alice, EventID: e.ev2[0]})
		c := e.set(t, receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: bob, EventID: e.ev1[1]})
		both := []string{e.room1, e.room2}
		aliceR1 := [4]string{e.ev1[0], receipts.Read, alice, ""}
		aliceR2 := [4]string{e.ev2[0], receipts.Read, alice, ""}
		bobR1 := [4]string{e.ev1[1], receipts.Read, bob, ""}

		tests := []struct {
			name     string
			rooms    []string
			from, to int64
			want     map[string]any
		}{
			{"initial sync", both, 0, c, map[string]any{e.room1: content(aliceR1, bobR1), e.room2: content(aliceR2)}},
			{"after a", both, a, c, map[string]any{e.room1: content(bobR1), e.room2: content(aliceR2)}},
			{"after b", both, b, c, map[string]any{e.room1: content(bobR1)}},
			{"up to a", both, 0, a, map[string]any{e.room1: content(aliceR1)}},
			{"only room2 asked", []string{e.room2}, 0, c, map[string]any{e.room2: content(aliceR2)}},
			{"empty window", both, c, c, map[string]any{}},
			{"no rooms", nil, 0, c, map[string]any{}},
		}
		for _, tc := range tests {
			expect(t, tc.name, e.forRooms(t, alice, tc.rooms, tc.from, tc.to), tc.want)
		}

		// More rooms than one query takes.
		many := []string{e.room2}
		for i := 0; i < 1200; i++ {
			many = append(many, fmt.Sprintf("!r%d:%s", i, server))
		}
		many = append(many, e.room1)
		expect(t, "many rooms", e.forRooms(t, alice, many, 0, c), map[string]any{e.room1: content(aliceR1, bobR1), e.room2: content(aliceR2)})

		// A superseded receipt leaves its old window: the row moved on.
		d := e.set(t, receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: alice, EventID: e.ev1[4]})
		expect(t, "old window after alice moved on", e.forRooms(t, alice, []string{e.room1}, 0, c),
			map[string]any{e.room1: content(bobR1)})
		expect(t, "new window", e.forRooms(t, alice, []string{e.room1}, c, d),
			map[string]any{e.room1: content([4]string{e.ev1[4], receipts.Read, alice, ""})})
	})
}

func TestPositionResumesAfterRestart(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db)
		var last int64
		for i, ev := range e.ev1[:3] {
			last = e.set(t, receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: []string{alice, bob}[i%2], EventID: ev})
		}
		// An ignored receipt after the last write must not confuse the
		// restarted writer either.
		e.set(t, receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: alice, EventID: e.ev1[0]})
		if err := e.svc.SavePosition(ctxT(t)); err != nil {
			t.Fatal(err)
		}

		reg := newRegistry(t)
		again := newReceipts(t, db, reg)
		if again.Position() < last || reg.Current(streams.Receipts) != again.Position() {
			t.Fatalf("restarted at %d (registry %d), want at least %d", again.Position(), reg.Current(streams.Receipts), last)
		}
		next, err := again.SetReceipt(ctxT(t), receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: bob, EventID: e.ev1[4]})
		if err != nil {
			t.Fatal(err)
		}
		if next <= last {
			t.Fatalf("first id after restart %d, want > %d", next, last)
		}
		got, err := again.ForRooms(ctxT(t), alice, []string{e.room1}, last, next)
		if err != nil || len(got) != 1 {
			t.Fatalf("ForRooms after restart = %s, %v", got, err)
		}
	})
}

func TestReceiptData(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db)
		ctx := ctxT(t)
		for _, bad := range []string{`[]`, `"x"`, `null`, `{`} {
			_, err := e.svc.SetReceipt(ctx, receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: alice,
				EventID: e.ev1[0], Data: json.RawMessage(bad)})
			if err == nil {
				t.Fatalf("data %s: no error", bad)
			}
		}
		if _, err := e.svc.SetReceipt(ctx, receipts.Receipt{RoomID: e.room1, UserID: alice, EventID: e.ev1[0]}); err == nil {
			t.Fatal("receipt without type: no error")
		}
		// Caller-supplied data is kept; a thread_id in it is not (the
		// ThreadID field is the truth).
		e.set(t, receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: alice, EventID: e.ev1[1],
			Data: json.RawMessage(`{"ts": 5, "thread_id": "bogus"}`)})
		got := e.forRooms(t, alice, []string{e.room1}, 0, e.svc.Position())
		want := map[string]any{e.room1: map[string]any{e.ev1[1]: map[string]any{receipts.Read: map[string]any{
			alice: map[string]any{"ts": float64(5)}}}}}
		expect(t, "caller data", got, want)

		// A receipt for an event this server does not know cannot be
		// ordered, so it is taken.
		e.set(t, receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: bob, EventID: "$unknown"})
	})
}

func TestRowWireFormat(t *testing.T) {
	for _, tc := range []struct {
		row  receipts.Row
		wire string
	}{
		{receipts.Row{StreamID: 7, Receipt: receipts.Receipt{RoomID: "!r", Type: receipts.Read, UserID: "@u", EventID: "$e",
			Data: json.RawMessage(`{"ts":1}`)}}, `["!r","m.read","@u","$e",null,{"ts":1}]`},
		{receipts.Row{Receipt: receipts.Receipt{RoomID: "!r", Type: receipts.Read, UserID: "@u", EventID: "$e",
			ThreadID: "main", Data: json.RawMessage(`{"ts":1}`)}}, `["!r","m.read","@u","$e","main",{"ts":1}]`},
	} {
		b, err := json.Marshal(tc.row)
		if err != nil || string(b) != tc.wire {
			t.Fatalf("marshal = %s, %v; want %s", b, err, tc.wire)
		}
		var back receipts.Row
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if back.ThreadID != tc.row.ThreadID || back.EventID != tc.row.EventID || string(back.Data) != string(tc.row.Data) {
			t.Fatalf("unmarshal %s = %+v", b, back)
		}
	}
	var r receipts.Row
	for _, bad := range []string{`{}`, `["!r"]`, `[1,"m.read","@u","$e",null,{}]`} {
		if err := json.Unmarshal([]byte(bad), &r); err == nil {
			t.Errorf("unmarshal %s: no error", bad)
		}
	}
}

func TestOnlyAWriterMayWrite(t *testing.T) {
	db := storagetest.NewDB(t, storage.SQLite)
	reg, err := streams.NewRegistry("worker1", streams.AllDefs(), map[streams.Name][]string{streams.Receipts: {"main", "worker2"}},
		streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := receipts.NewService(ctxT(t), db, reg, discard()); err == nil {
		t.Fatal("NewService on a non-writer: no error")
	}
}

// Concurrent receipts of one user, arriving in any order, must leave the
// newest event in place: the upsert compares under the row lock.
func TestConcurrentReceiptsKeepTheNewest(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db)
		order := []int{2, 4, 0, 3, 1, 4, 2, 0}
		errs := make(chan error, len(order))
		for _, i := range order {
			go func() {
				_, err := e.svc.SetReceipt(ctxT(t), receipts.Receipt{RoomID: e.room1, Type: receipts.Read, UserID: alice, EventID: e.ev1[i]})
				errs <- err
			}()
		}
		for range order {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		expect(t, "after concurrent receipts", e.forRooms(t, alice, []string{e.room1}, 0, e.svc.Position()),
			map[string]any{e.room1: content([4]string{e.ev1[4], receipts.Read, alice, ""})})
		if e.reg.Current(streams.Receipts) != e.svc.Position() {
			t.Fatalf("registry %d, writer %d", e.reg.Current(streams.Receipts), e.svc.Position())
		}
	})
}
