package typing_test

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"ganglion/internal/streams"
	"ganglion/internal/typing"
)

// manualClock is a clock that only moves when the test says so. Timers it
// hands out fire inside Advance, so expiry happens at exactly the instant
// the test chooses.
type manualClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []manualTimer
}

type manualTimer struct {
	at time.Time
	ch chan time.Time
}

func newClock() *manualClock { return &manualClock{now: time.Unix(1_700_000_000, 0)} }

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.timers = append(c.timers, manualTimer{at: c.now.Add(d), ch: ch})
	return ch
}

func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if t.at.After(c.now) {
			kept = append(kept, t)
			continue
		}
		t.ch <- c.now
	}
	c.timers = kept
}

type fixture struct {
	svc   *typing.Service
	reg   *streams.Registry
	clock *manualClock
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	reg, err := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	clock := newClock()
	svc, err := typing.NewService(reg, typing.Options{Now: clock.Now, After: clock.After, Start: new(int64)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{svc: svc, reg: reg, clock: clock}
}

// run starts the expiry loop for the test's lifetime and checks it stops.
func (f *fixture) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func set(t *testing.T, s *typing.Service, roomID, userID string, on bool, timeout time.Duration) {
	t.Helper()
	if err := s.SetTyping(ctxT(t), roomID, userID, on, timeout); err != nil {
		t.Fatalf("SetTyping(%s, %s, %v): %v", roomID, userID, on, err)
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

// waitWoken waits (bounded) for a wake that another goroutine causes.
func waitWoken(t *testing.T, l *streams.Listener, what string) {
	t.Helper()
	select {
	case <-l.C:
	case <-time.After(10 * time.Second):
		t.Fatalf("no wake: %s", what)
	}
}

const (
	room1 = "!one:test.local"
	room2 = "!two:test.local"
	alice = "@alice:test.local"
	bob   = "@bob:test.local"
	carol = "@carol:test.local"
)

func TestSetAndClear(t *testing.T) {
	f := newFixture(t)
	l := f.reg.Notifier().Listen(streams.RoomKey(room1))
	defer l.Close()

	set(t, f.svc, room1, alice, true, 0)
	if got := f.svc.Typing(room1); !slices.Equal(got, []string{alice}) {
		t.Fatalf("typing = %v", got)
	}
	if f.svc.Position() != 1 || f.reg.Current(streams.Typing) != 1 {
		t.Fatalf("position = %d, registry %d; want 1", f.svc.Position(), f.reg.Current(streams.Typing))
	}
	if !woken(l) {
		t.Fatal("starting to type did not wake the room")
	}

	// A refresh changes no list: no position, no wake.
	set(t, f.svc, room1, alice, true, 20*time.Second)
	if f.svc.Position() != 1 || woken(l) {
		t.Fatalf("refresh moved the stream: position %d", f.svc.Position())
	}

	set(t, f.svc, room1, bob, true, 0)
	if got := f.svc.Typing(room1); !slices.Equal(got, []string{alice, bob}) {
		t.Fatalf("typing = %v", got)
	}
	set(t, f.svc, room1, alice, false, 0)
	if got := f.svc.Typing(room1); !slices.Equal(got, []string{bob}) {
		t.Fatalf("typing after alice stopped = %v", got)
	}
	if f.svc.Position() != 3 || f.reg.Current(streams.Typing) != 3 || !woken(l) {
		t.Fatalf("position = %d, registry %d; want 3 and a wake", f.svc.Position(), f.reg.Current(streams.Typing))
	}

	// Stopping when not typing, or in a room nobody typed in, is a no-op.
	set(t, f.svc, room1, carol, false, 0)
	set(t, f.svc, room2, carol, false, 0)
	if f.svc.Position() != 3 || woken(l) {
		t.Fatalf("no-op stop moved the stream to %d", f.svc.Position())
	}
	if got := f.svc.Typing(room2); got == nil || len(got) != 0 {
		t.Fatalf("unknown room typing = %#v, want empty non-nil", got)
	}
}

func TestChangesWindows(t *testing.T) {
	f := newFixture(t)
	set(t, f.svc, room1, alice, true, 0) // 1
	set(t, f.svc, room2, bob, true, 0)   // 2
	set(t, f.svc, room1, carol, true, 0) // 3
	set(t, f.svc, room2, bob, false, 0)  // 4

	tests := []struct {
		name string
		from int64
		want []typing.Row
	}{
		{"everything, ordered by last change", 0, []typing.Row{
			{RoomID: room1, UserIDs: []string{alice, carol}},
			{RoomID: room2, UserIDs: []string{}},
		}},
		{"room2's last change only", 3, []typing.Row{{RoomID: room2, UserIDs: []string{}}}},
		{"full list although only carol joined after 2", 2, []typing.Row{
			{RoomID: room1, UserIDs: []string{alice, carol}},
			{RoomID: room2, UserIDs: []string{}},
		}},
		{"caught up", 4, nil},
		{"position from before a restart reads as 0", 99, []typing.Row{
			{RoomID: room1, UserIDs: []string{alice, carol}},
			{RoomID: room2, UserIDs: []string{}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rows, to := f.svc.Changes(tc.from)
			if to != 4 {
				t.Fatalf("to = %d, want 4", to)
			}
			if len(rows) != len(tc.want) {
				t.Fatalf("rows = %v, want %v", rows, tc.want)
			}
			for i := range rows {
				if rows[i].RoomID != tc.want[i].RoomID || !slices.Equal(rows[i].UserIDs, tc.want[i].UserIDs) {
					t.Fatalf("row %d = %v, want %v", i, rows[i], tc.want[i])
				}
			}
		})
	}

	if got := f.svc.ChangedRooms(3, 4); !slices.Equal(got, []string{room2}) {
		t.Fatalf("ChangedRooms(3, 4) = %v", got)
	}
	if got := f.svc.ChangedRooms(4, 4); len(got) != 0 {
		t.Fatalf("ChangedRooms(4, 4) = %v", got)
	}
}

// Many changes in few rooms must not grow the change log without bound, and
// compaction must not lose a room.
func TestChangesAfterCompaction(t *testing.T) {
	f := newFixture(t)
	for i := 0; i < 500; i++ {
		set(t, f.svc, room1, alice, i%2 == 0, 0)
	}
	set(t, f.svc, room2, bob, true, 0)
	rows, to := f.svc.Changes(0)
	if to != 501 || len(rows) != 2 || rows[0].RoomID != room1 || len(rows[0].UserIDs) != 0 || rows[1].RoomID != room2 {
		t.Fatalf("Changes(0) = %v, %d", rows, to)
	}
	rows, _ = f.svc.Changes(499)
	if len(rows) != 2 {
		t.Fatalf("Changes(499) = %v", rows)
	}
}

func TestRowWireFormat(t *testing.T) {
	for _, tc := range []struct {
		row  typing.Row
		wire string
	}{
		{typing.Row{RoomID: room1, UserIDs: []string{alice, bob}}, `["!one:test.local",["@alice:test.local","@bob:test.local"]]`},
		{typing.Row{RoomID: room1}, `["!one:test.local",[]]`},
	} {
		b, err := json.Marshal(tc.row)
		if err != nil || string(b) != tc.wire {
			t.Fatalf("marshal %v = %s, %v; want %s", tc.row, b, err, tc.wire)
		}
		var back typing.Row
		if err := json.Unmarshal(b, &back); err != nil || back.RoomID != tc.row.RoomID || len(back.UserIDs) != len(tc.row.UserIDs) {
			t.Fatalf("unmarshal %s = %v, %v", b, back, err)
		}
	}
	var r typing.Row
	for _, bad := range []string{`{}`, `["!r"]`, `[1,[]]`, `["!r","x"]`} {
		if err := json.Unmarshal([]byte(bad), &r); err == nil {
			t.Errorf("unmarshal %s: no error", bad)
		}
	}
}

func TestTimeoutExpiryWakesAndAppearsInChanges(t *testing.T) {
	f := newFixture(t)
	f.run(t)
	l := f.reg.Notifier().Listen(streams.RoomKey(room1))
	defer l.Close()

	set(t, f.svc, room1, alice, true, 10*time.Second)
	set(t, f.svc, room1, bob, true, 20*time.Second)
	<-l.C
	before := f.svc.Position()

	f.clock.Advance(10 * time.Second)
	waitWoken(t, l, "alice's timeout")
	if got := f.svc.Typing(room1); !slices.Equal(got, []string{bob}) {
		t.Fatalf("typing after alice expired = %v", got)
	}
	rows, to := f.svc.Changes(before)
	if to != before+1 || len(rows) != 1 || !slices.Equal(rows[0].UserIDs, []string{bob}) {
		t.Fatalf("Changes(%d) = %v, %d", before, rows, to)
	}
	if f.reg.Current(streams.Typing) != to {
		t.Fatalf("registry at %d, want %d", f.reg.Current(streams.Typing), to)
	}

	f.clock.Advance(10 * time.Second)
	waitWoken(t, l, "bob's timeout")
	if got := f.svc.Typing(room1); len(got) != 0 {
		t.Fatalf("typing after bob expired = %v", got)
	}
}

// A refresh moves the deadline: the old one must not end the typing.
func TestRefreshPostponesExpiry(t *testing.T) {
	f := newFixture(t)
	f.run(t)
	l := f.reg.Notifier().Listen(streams.RoomKey(room1))
	defer l.Close()

	set(t, f.svc, room1, alice, true, 10*time.Second) // due at +10
	<-l.C
	f.clock.Advance(5 * time.Second)
	set(t, f.svc, room1, alice, true, 10*time.Second) // now due at +15
	set(t, f.svc, room1, bob, true, 7*time.Second)    // due at +12
	<-l.C

	f.clock.Advance(5 * time.Second) // +10: alice's stale deadline
	f.clock.Advance(2 * time.Second) // +12: bob's
	waitWoken(t, l, "bob's timeout")
	if got := f.svc.Typing(room1); !slices.Equal(got, []string{alice}) {
		t.Fatalf("typing at +12 = %v, want only alice", got)
	}
	f.clock.Advance(3 * time.Second) // +15
	waitWoken(t, l, "alice's refreshed timeout")
	if got := f.svc.Typing(room1); len(got) != 0 {
		t.Fatalf("typing at +15 = %v", got)
	}
}

func TestTimeoutDefaultAndCap(t *testing.T) {
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		expires time.Duration
	}{
		{"omitted means the default", 0, typing.DefaultTimeout},
		{"negative means the default", -time.Second, typing.DefaultTimeout},
		{"capped", 10 * time.Hour, typing.MaxTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.run(t)
			l := f.reg.Notifier().Listen(streams.RoomKey(room1))
			defer l.Close()
			set(t, f.svc, room1, alice, true, tc.timeout)
			// carol's deadline lands a millisecond before alice's: once her
			// expiry is seen, alice must still be typing.
			set(t, f.svc, room1, carol, true, tc.expires-time.Millisecond)
			<-l.C
			f.clock.Advance(tc.expires - time.Millisecond)
			waitWoken(t, l, "carol's timeout")
			if got := f.svc.Typing(room1); !slices.Equal(got, []string{alice}) {
				t.Fatalf("typing just before the deadline = %v", got)
			}
			f.clock.Advance(time.Millisecond)
			waitWoken(t, l, "alice's timeout")
			if got := f.svc.Typing(room1); len(got) != 0 {
				t.Fatalf("typing at the deadline = %v", got)
			}
		})
	}
}

func TestOnlyTheWriterMayRunTheService(t *testing.T) {
	reg, err := streams.NewRegistry("worker1", streams.AllDefs(), map[streams.Name][]string{streams.Typing: {"main"}}, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := typing.NewService(reg, typing.Options{}, nil); err == nil {
		t.Fatal("NewService on a non-writer: no error")
	}
}

func TestSetTypingHonoursContext(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.svc.SetTyping(ctx, room1, alice, true, 0); err == nil {
		t.Fatal("SetTyping with a cancelled context: no error")
	}
	if f.svc.Position() != 0 {
		t.Fatal("cancelled SetTyping changed the stream")
	}
}
