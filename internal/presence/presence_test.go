package presence_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
	"ganglion/internal/presence"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
)

const server = "pr.test"

var (
	discard = slog.New(slog.NewTextHandler(io.Discard, nil))
	alice   = "@alice:" + server
	bob     = "@bob:" + server
	carol   = "@carol:" + server
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// clock is a fake clock the tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type fixture struct {
	db    *storage.DB
	reg   *streams.Registry
	clock *clock
	store *rooms.Store
	w     *presence.LocalWriter
	s     *presence.Service
}

// newFixture builds a presence writer and reader; alice and bob share a
// room, carol is in a room of her own.
func newFixture(t *testing.T, db *storage.DB) *fixture {
	t.Helper()
	ctx := ctxT(t)
	f := &fixture{db: db, clock: &clock{t: time.UnixMilli(1_700_000_000_000)}, store: rooms.NewStore(db)}
	var err error
	if f.reg, err = streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier()); err != nil {
		t.Fatal(err)
	}
	key, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	p, err := rooms.NewPersister(ctx, db, f.reg, server, key, discard)
	if err != nil {
		t.Fatal(err)
	}
	makeRoom(t, p, "!shared:"+server, alice, bob)
	makeRoom(t, p, "!alone:"+server, carol)
	f.restart(t)
	return f
}

// restart builds a new writer and service over the same database and
// registry, as a restarted presence writer would.
func (f *fixture) restart(t *testing.T) {
	t.Helper()
	w, err := presence.NewLocalWriter(ctxT(t), f.db, f.reg, f.store, presence.WriterOptions{Now: f.clock.Now}, discard)
	if err != nil {
		t.Fatal(err)
	}
	f.w = w
	f.s = presence.NewService(f.db, f.reg, w, f.store, presence.Options{Enabled: true, ServerName: server, Now: f.clock.Now}, discard)
}

func raw(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

func makeRoom(t *testing.T, p *rooms.Persister, roomID, creator string, joiners ...string) {
	t.Helper()
	ctx := ctxT(t)
	s := func(v string) *string { return &v }
	drafts := []rooms.Draft{
		{Type: "m.room.create", StateKey: s(""), Sender: creator, RoomVersion: "10", Content: raw(map[string]any{"creator": creator, "room_version": "10"})},
		{Type: "m.room.member", StateKey: s(creator), Sender: creator, Content: raw(map[string]any{"membership": "join"})},
		{Type: "m.room.power_levels", StateKey: s(""), Sender: creator, Content: raw(map[string]any{"users": map[string]int{creator: 100}})},
		{Type: "m.room.join_rules", StateKey: s(""), Sender: creator, Content: raw(map[string]any{"join_rule": "public"})},
	}
	for _, j := range joiners {
		drafts = append(drafts, rooms.Draft{Type: "m.room.member", StateKey: s(j), Sender: j, Content: raw(map[string]any{"membership": "join"})})
	}
	if _, err := p.SendEvents(ctx, roomID, drafts); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) status(t *testing.T, userID string) presence.Content {
	t.Helper()
	c, err := f.s.Status(ctxT(t), userID)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *fixture) set(t *testing.T, userID, state, msg string, setStatus bool) int64 {
	t.Helper()
	id, err := f.w.SetPresence(ctxT(t), userID, state, msg, setStatus)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func (f *fixture) check(t *testing.T) {
	t.Helper()
	if err := f.w.CheckTimeouts(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// senders lists who the events are about, sorted.
func senders(evs []presence.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Sender+"="+e.Content.Presence)
	}
	slices.Sort(out)
	return out
}

func TestSetAndGet(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		if c := f.status(t, alice); c.Presence != presence.Offline || c.LastActiveAgo != nil {
			t.Fatalf("never-seen user = %+v", c)
		}
		p1 := f.set(t, alice, presence.Online, "in a meeting", true)
		if p1 == 0 || f.s.Position() != p1 {
			t.Fatalf("set returned %d, position %d", p1, f.s.Position())
		}
		f.clock.Advance(2 * time.Second)
		c := f.status(t, alice)
		if c.Presence != presence.Online || c.StatusMsg == nil || *c.StatusMsg != "in a meeting" ||
			c.CurrentlyActive == nil || !*c.CurrentlyActive || c.LastActiveAgo == nil || *c.LastActiveAgo != 2000 {
			t.Fatalf("status = %s", raw(c))
		}
		// Setting the state again without the status keeps the message;
		// nothing changed, so no row.
		if p := f.set(t, alice, presence.Online, "", false); p != p1 {
			t.Fatalf("no-op set wrote a row: %d → %d", p1, p)
		}
		p2 := f.set(t, alice, presence.Unavailable, "", false)
		if c := f.status(t, alice); p2 <= p1 || c.Presence != presence.Unavailable || c.StatusMsg == nil || c.CurrentlyActive != nil {
			t.Fatalf("unavailable: %d %s", p2, raw(c))
		}
		// Going offline clears the status message.
		f.set(t, alice, presence.Offline, "bye", true)
		if c := f.status(t, alice); c.Presence != presence.Offline || c.StatusMsg != nil {
			t.Fatalf("offline: %s", raw(c))
		}
		if _, err := f.w.SetPresence(ctxT(t), alice, "busy", "", false); !errors.Is(err, presence.ErrInvalidState) {
			t.Fatalf("invalid state: %v", err)
		}
	})
}

func TestVisibilityAndWakes(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		// Listen as each user's sync does: on the user and their rooms.
		listen := func(user string) *streams.Listener {
			rs, err := f.store.RoomsForUser(ctx, user, "join")
			if err != nil {
				t.Fatal(err)
			}
			keys := []string{streams.UserKey(user)}
			for _, r := range rs {
				keys = append(keys, streams.RoomKey(r))
			}
			return f.reg.Notifier().Listen(keys...)
		}
		lb := listen(bob)
		defer lb.Close()
		lc := listen(carol)
		defer lc.Close()

		start := f.s.Position()
		pa := f.set(t, alice, presence.Online, "", false)
		select {
		case <-lb.C:
		default:
			t.Fatal("bob, who shares a room with alice, was not woken")
		}
		select {
		case <-lc.C:
			t.Fatal("carol, who shares no room with alice, was woken")
		default:
		}
		pc := f.set(t, carol, presence.Online, "", false)
		pb := f.set(t, bob, presence.Unavailable, "", false)
		now := f.s.Position()

		cases := []struct {
			name     string
			forUser  string
			from, to int64
			want     []string
		}{
			{"bob initial", bob, 0, now, []string{alice + "=online", bob + "=unavailable"}},
			{"bob incremental", bob, pa, now, []string{bob + "=unavailable"}},
			{"bob window before own change", bob, start, pc, []string{alice + "=online"}},
			{"carol initial", carol, 0, now, []string{carol + "=online"}},
			{"carol incremental", carol, start, now, []string{carol + "=online"}},
			{"alice incremental", alice, pc, pb, []string{bob + "=unavailable"}},
			{"nothing new", alice, now, now, nil},
		}
		for _, c := range cases {
			evs, err := f.s.Since(ctx, c.forUser, c.from, c.to)
			if err != nil {
				t.Fatal(err)
			}
			if got := senders(evs); !slices.Equal(got, c.want) {
				t.Errorf("%s: %v, want %v", c.name, got, c.want)
			}
			for _, e := range evs {
				if e.Type != "m.presence" {
					t.Errorf("event type %q", e.Type)
				}
			}
		}
		// Initial sync leaves offline users out.
		f.set(t, alice, presence.Offline, "", false)
		if evs, _ := f.s.Since(ctx, bob, 0, f.s.Position()); !slices.Equal(senders(evs), []string{bob + "=unavailable"}) {
			t.Fatalf("initial sync with alice offline: %v", senders(evs))
		}
		for _, c := range []struct {
			observer, target string
			want             bool
		}{{bob, alice, true}, {alice, bob, true}, {carol, carol, true}, {carol, alice, false}, {alice, carol, false}} {
			if ok, err := f.s.CanSee(ctx, c.observer, c.target); err != nil || ok != c.want {
				t.Errorf("CanSee(%s, %s) = %v, %v", c.observer, c.target, ok, err)
			}
		}
		if evs, _ := f.s.ForUsers(ctx, []string{bob, carol, "@nobody:" + server}); !slices.Equal(senders(evs), []string{bob + "=unavailable", carol + "=online"}) {
			t.Fatalf("ForUsers = %v", senders(evs))
		}
	})
}

func TestTimeouts(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		f.w.SyncStarted(alice)
		p := f.set(t, alice, presence.Online, "", false)

		// Within LastActiveGranularity nothing happens.
		f.clock.Advance(30 * time.Second)
		f.check(t)
		if f.s.Position() != p {
			t.Fatal("a row was written before any timer expired")
		}
		// After it, currently_active drops (a row, so others learn it).
		f.clock.Advance(31 * time.Second)
		f.check(t)
		c := f.status(t, alice)
		if f.s.Position() <= p || c.Presence != presence.Online || c.CurrentlyActive == nil || *c.CurrentlyActive {
			t.Fatalf("after a minute idle: %s", raw(c))
		}
		// Idle for IdleTimeout: unavailable. Still syncing, so not offline.
		f.clock.Advance(presence.IdleTimeout)
		f.check(t)
		if c := f.status(t, alice); c.Presence != presence.Unavailable {
			t.Fatalf("after idle timeout: %s", raw(c))
		}
		f.clock.Advance(10 * time.Minute)
		f.check(t)
		if c := f.status(t, alice); c.Presence != presence.Unavailable {
			t.Fatalf("offline while syncing: %s", raw(c))
		}
		// Activity brings an unavailable user back online.
		if err := f.w.BumpActive(ctxT(t), alice); err != nil {
			t.Fatal(err)
		}
		if c := f.status(t, alice); c.Presence != presence.Online || !*c.CurrentlyActive {
			t.Fatalf("after activity: %s", raw(c))
		}
		// The sync ends; SyncOnlineTimeout later, offline.
		f.w.SyncEnded(alice)
		f.clock.Advance(presence.SyncOnlineTimeout - time.Second)
		f.check(t)
		if c := f.status(t, alice); c.Presence != presence.Online {
			t.Fatalf("offline too early: %s", raw(c))
		}
		f.clock.Advance(2 * time.Second)
		f.check(t)
		if c := f.status(t, alice); c.Presence != presence.Offline {
			t.Fatalf("after sync timeout: %s", raw(c))
		}
		// Activity does not bring an offline user back.
		if err := f.w.BumpActive(ctxT(t), alice); err != nil {
			t.Fatal(err)
		}
		if c := f.status(t, alice); c.Presence != presence.Offline {
			t.Fatalf("offline user after activity: %s", raw(c))
		}
		// A user who never syncs goes offline after the timeout from their
		// last activity.
		f.set(t, bob, presence.Online, "", false)
		f.clock.Advance(presence.SyncOnlineTimeout + time.Second)
		f.check(t)
		if c := f.status(t, bob); c.Presence != presence.Offline {
			t.Fatalf("bob never synced: %s", raw(c))
		}
	})
}

func TestRefreshesAreFlushedNotStreamed(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		f.w.SyncStarted(alice)
		p := f.set(t, alice, presence.Online, "", false)
		f.clock.Advance(20 * time.Second)
		// Activity while currently_active is not worth waking anyone.
		if err := f.w.BumpActive(ctx, alice); err != nil {
			t.Fatal(err)
		}
		if f.s.Position() != p {
			t.Fatal("a last-active refresh wrote a stream row")
		}
		if c := f.status(t, alice); *c.LastActiveAgo != 20000 {
			t.Fatalf("before flush, last_active_ago = %d", *c.LastActiveAgo)
		}
		if err := f.w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if c := f.status(t, alice); *c.LastActiveAgo != 0 {
			t.Fatalf("after flush, last_active_ago = %d", *c.LastActiveAgo)
		}
		if f.s.Position() != p {
			t.Fatal("flush wrote a stream row")
		}
	})
}

func TestRestartKeepsTimers(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		f.w.SyncStarted(alice)
		f.set(t, alice, presence.Online, "here", true)
		f.w.SyncStarted(bob)
		f.set(t, bob, presence.Online, "", false)
		last := f.s.Position()
		// The writer dies; alice's client reconnects to the new one, bob's
		// does not.
		f.restart(t)
		if f.s.Position() != last {
			t.Fatalf("restarted at %d, want %d", f.s.Position(), last)
		}
		f.w.SyncStarted(alice)
		f.clock.Advance(presence.SyncOnlineTimeout + time.Second)
		f.check(t)
		if c := f.status(t, alice); c.Presence != presence.Online || c.StatusMsg == nil {
			t.Fatalf("alice after restart: %s", raw(c))
		}
		if c := f.status(t, bob); c.Presence != presence.Offline {
			t.Fatalf("bob after restart: %s", raw(c))
		}
	})
}

func TestRunStopsWithContext(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		ctx, cancel := context.WithCancel(ctxT(t))
		done := make(chan error, 1)
		go func() { done <- f.w.Run(ctx) }()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-ctxT(t).Done():
			t.Fatal("Run did not return after cancel")
		}
	})
}

func TestHTTP(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		acc := accounts.NewService(db, accounts.Settings{ServerName: server, BcryptRounds: 4}, discard)
		tokens := map[string]string{}
		for _, u := range []string{"alice", "bob", "carol"} {
			sess, err := acc.Register(ctx, accounts.NewUser{Localpart: u})
			if err != nil {
				t.Fatal(err)
			}
			tokens["@"+u+":"+server] = sess.AccessToken
		}
		serve := func(s *presence.Service) func(method, as, target, body string) (int, map[string]any) {
			mux := mxhttp.NewMux()
			s.Routes(mux, mxhttp.NewServer(discard), acc)
			return func(method, as, target, body string) (int, map[string]any) {
				r := httptest.NewRequest(method, "/_matrix/client/v3/presence/"+target+"/status", bytes.NewBufferString(body))
				r.Header.Set("Authorization", "Bearer "+tokens[as])
				w := httptest.NewRecorder()
				// The embedded ServeMux: mxhttp.Mux.ServeHTTP leaves
				// path values unset (reported to the lead).
				mux.ServeMux.ServeHTTP(w, r)
				var out map[string]any
				_ = json.Unmarshal(w.Body.Bytes(), &out)
				return w.Code, out
			}
		}
		do := serve(f.s)
		steps := []struct {
			method, as, target, body string
			status                   int
			code                     string
		}{
			{"PUT", alice, bob, `{"presence":"online"}`, 403, "M_FORBIDDEN"},
			{"PUT", alice, alice, `{"presence":"busy"}`, 400, "M_INVALID_PARAM"},
			{"PUT", alice, alice, `{"status_msg":"x"}`, 400, "M_MISSING_PARAM"},
			{"PUT", alice, alice, `{"presence":"online","status_msg":5}`, 400, "M_BAD_JSON"},
			{"PUT", alice, alice, `{"presence":"online","status_msg":"coffee"}`, 200, ""},
			{"GET", alice, alice, "", 200, ""},
			{"GET", bob, alice, "", 200, ""},
			{"GET", carol, alice, "", 403, "M_FORBIDDEN"},
			{"GET", alice, "@nobody:" + server, "", 404, "M_NOT_FOUND"},
			{"GET", alice, "nobody", "", 400, "M_INVALID_PARAM"},
		}
		for i, s := range steps {
			status, body := do(s.method, s.as, s.target, s.body)
			if status != s.status || (s.code != "" && body["errcode"] != s.code) {
				t.Fatalf("step %d %s %s as %s: %d %v, want %d %s", i, s.method, s.target, s.as, status, body, s.status, s.code)
			}
		}
		_, body := do("GET", bob, alice, "")
		if body["presence"] != "online" || body["status_msg"] != "coffee" || body["currently_active"] != true || body["last_active_ago"] == nil {
			t.Fatalf("GET = %v", body)
		}

		// presence.enabled: false: GET answers offline for anyone, PUT is
		// accepted and changes nothing.
		off := presence.NewService(db, f.reg, presence.NoopWriter{}, f.store, presence.Options{Enabled: false, ServerName: server}, discard)
		do = serve(off)
		if status, body := do("GET", carol, alice, ""); status != 200 || body["presence"] != "offline" || len(body) != 1 {
			t.Fatalf("disabled GET = %d %v", status, body)
		}
		before := f.s.Position()
		if status, _ := do("PUT", carol, carol, `{"presence":"online"}`); status != 200 || f.s.Position() != before {
			t.Fatalf("disabled PUT = %d, position %d → %d", status, before, f.s.Position())
		}
		if evs, _ := off.Since(ctx, bob, 0, f.s.Position()); len(evs) != 0 {
			t.Fatalf("disabled Since = %v", evs)
		}
	})
}
