package search_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"ganglion/internal/events"
	"ganglion/internal/rooms"
	"ganglion/internal/search"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
)

const server = "test.local"

var alice = "@alice:" + server

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func raw(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

func ptr(s string) *string { return &s }

// newPersister is a persister that keeps st's index.
func newPersister(t *testing.T, db *storage.DB, st *search.Store) *rooms.Persister {
	t.Helper()
	reg, err := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	key, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	p, err := rooms.NewPersister(ctxT(t), db, reg, server, key, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	p.AddBatchHook(st)
	return p
}

func send(t *testing.T, p *rooms.Persister, roomID string, drafts ...rooms.Draft) []rooms.Persisted {
	t.Helper()
	res, err := p.SendEvents(ctxT(t), roomID, drafts)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func createRoom(t *testing.T, p *rooms.Persister, roomID string) {
	send(t, p, roomID,
		rooms.Draft{Type: "m.room.create", StateKey: ptr(""), Sender: alice, RoomVersion: "10",
			Content: raw(map[string]any{"creator": alice, "room_version": "10"})},
		rooms.Draft{Type: "m.room.member", StateKey: ptr(alice), Sender: alice, Content: raw(map[string]any{"membership": "join"})},
		rooms.Draft{Type: "m.room.power_levels", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"users": map[string]int{alice: 100}})})
}

func message(body string) rooms.Draft {
	return rooms.Draft{Type: "m.room.message", Sender: alice, Content: raw(map[string]any{"msgtype": "m.text", "body": body})}
}

func ids(hits []search.Hit) []string {
	var out []string
	for _, h := range hits {
		out = append(out, h.EventID)
	}
	return out
}

func TestIndexAndSearch(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		st := search.NewStore(db)
		p := newPersister(t, db, st)
		r1, r2 := "!one:"+server, "!two:"+server
		createRoom(t, p, r1)
		createRoom(t, p, r2)
		m := send(t, p, r1, message("The quick brown fox"), message("jumps over the lazy dog"), message("Foxes are quick"))
		other := send(t, p, r2, message("a quick note elsewhere"))
		named := send(t, p, r1, rooms.Draft{Type: "m.room.name", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"name": "Quick room"})})
		// Not text: not indexed, and must not break the batch.
		send(t, p, r1, rooms.Draft{Type: "m.room.message", Sender: alice, Content: raw(map[string]any{"body": 42})})

		ctx := ctxT(t)
		q := search.Query{Rooms: []string{r1}, Terms: search.Words("QUICK"), Keys: search.AllKeys, Recent: true, Limit: 10}
		hits, err := st.Search(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{named[0].EventID, m[2].EventID, m[0].EventID}
		if !slices.Equal(ids(hits), want) {
			t.Fatalf("recent search for quick in r1: %v, want %v", ids(hits), want)
		}
		// Prefix match on every term; other rooms stay out.
		q.Terms = search.Words("fox qui")
		if hits, _ = st.Search(ctx, q); !slices.Equal(ids(hits), []string{m[2].EventID, m[0].EventID}) {
			t.Fatalf("search fox qui: %v", ids(hits))
		}
		q.Rooms, q.Terms = []string{r1, r2}, search.Words("note")
		if hits, _ = st.Search(ctx, q); !slices.Equal(ids(hits), []string{other[0].EventID}) {
			t.Fatalf("search note across rooms: %v", ids(hits))
		}
		// keys narrows to one field.
		q.Rooms, q.Terms, q.Keys = []string{r1}, search.Words("quick"), []string{"content.name"}
		if hits, _ = st.Search(ctx, q); !slices.Equal(ids(hits), []string{named[0].EventID}) {
			t.Fatalf("search content.name: %v", ids(hits))
		}
		// Pagination by position.
		q.Keys, q.Limit = search.AllKeys, 1
		q.Before = m[2].StreamPos
		if hits, _ = st.Search(ctx, q); !slices.Equal(ids(hits), []string{m[0].EventID}) {
			t.Fatalf("search below %d: %v", q.Before, ids(hits))
		}
		// Rank order with offsets visits every hit once.
		q.Recent, q.Before, q.Limit = false, 0, 1
		var seen []string
		for off := 0; off < 5; off++ {
			q.Offset = off
			hits, err := st.Search(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			seen = append(seen, ids(hits)...)
		}
		slices.Sort(seen)
		all := []string{named[0].EventID, m[2].EventID, m[0].EventID}
		slices.Sort(all)
		if !slices.Equal(seen, all) {
			t.Fatalf("rank pages: %v, want %v", seen, all)
		}
		// Unordered (for counting) yields the same hits, cut at Limit.
		q.Unordered, q.Offset, q.Limit = true, 0, 10
		hits, err = st.Search(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		got := ids(hits)
		slices.Sort(got)
		if !slices.Equal(got, all) {
			t.Fatalf("unordered search: %v, want %v", got, all)
		}
		q.Limit = 2
		if hits, err = st.Search(ctx, q); err != nil || len(hits) != 2 {
			t.Fatalf("unordered search with limit 2: %v, %v", ids(hits), err)
		}
		q.Unordered = false
		n, err := st.Count(ctx, search.Query{Rooms: []string{r1}, Terms: search.Words("quick"), Keys: search.AllKeys}, nil)
		if err != nil || n != 3 {
			t.Fatalf("count = %d, %v; want 3", n, err)
		}
		n, err = st.Count(ctx, search.Query{Rooms: []string{r1}, Terms: search.Words("quick"), Keys: search.AllKeys},
			map[string]int64{r1: m[0].StreamPos})
		if err != nil || n != 1 {
			t.Fatalf("count bounded by a leave = %d, %v; want 1", n, err)
		}

		// A redaction drops its target from the index.
		send(t, p, r1, rooms.Draft{Type: "m.room.redaction", Sender: alice, Redacts: m[0].EventID, Content: raw(map[string]any{})})
		q = search.Query{Rooms: []string{r1}, Terms: search.Words("brown"), Keys: search.AllKeys, Recent: true, Limit: 10}
		if hits, _ = st.Search(ctx, q); len(hits) != 0 {
			t.Fatalf("redacted event still found: %v", ids(hits))
		}
		// Query syntax in the term is only text.
		q.Terms = search.Words(`"lazy" OR * & ! :* NEAR(`)
		if hits, err = st.Search(ctx, q); err != nil {
			t.Fatalf("search with syntax characters: %v", err)
		}
		if !slices.Equal(ids(hits), nil) {
			t.Fatalf("search with syntax words: %v", ids(hits))
		}
		q.Terms = search.Words("lazy")
		if hits, _ = st.Search(ctx, q); !slices.Equal(ids(hits), []string{m[1].EventID}) {
			t.Fatalf("search lazy: %v", ids(hits))
		}
	})
}

// Many messages in one batch (as createRoom with many events, or batched
// sends) are all indexed.
func TestIndexBatch(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		st := search.NewStore(db)
		p := newPersister(t, db, st)
		r := "!batch:" + server
		createRoom(t, p, r)
		var drafts []rooms.Draft
		for i := range 50 {
			drafts = append(drafts, message(fmt.Sprintf("needle number %d", i)))
		}
		send(t, p, r, drafts...)
		n, err := st.Count(ctxT(t), search.Query{Rooms: []string{r}, Terms: []string{"needle"}, Keys: search.AllKeys}, nil)
		if err != nil || n != 50 {
			t.Fatalf("count = %d, %v; want 50", n, err)
		}
	})
}
