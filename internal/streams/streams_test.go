package streams_test

import (
	"context"
	"reflect"
	"sync"
	"testing"
	"time"

	"ganglion/internal/streams"
)

func TestTrackerPositionWaitsForLowerIDs(t *testing.T) {
	var advanced []int64
	tr := streams.NewTracker(10, func(p int64) { advanced = append(advanced, p) })
	a, b := tr.Reserve(), tr.Reserve()
	a.Add(11)
	b.Add(12)
	b.Done()
	if got := tr.Position(); got != 10 {
		t.Fatalf("position after 12 finished but 11 in flight = %d, want 10", got)
	}
	a.Done()
	if got := tr.Position(); got != 12 {
		t.Fatalf("position after both finished = %d, want 12", got)
	}
	if len(advanced) != 1 || advanced[0] != 12 {
		t.Fatalf("onAdvance calls = %v, want [12]", advanced)
	}
}

func TestTrackerReservationBeforeIDHoldsPosition(t *testing.T) {
	// A reservation that has not learnt its id yet must stop the position
	// from passing ids above the floor: the id it gets may be lower than ids
	// another reservation already finished.
	tr := streams.NewTracker(0, nil)
	slow := tr.Reserve() // asked the sequence, no answer yet
	fast := tr.Reserve()
	fast.Add(2)
	fast.Done()
	if got := tr.Position(); got != 0 {
		t.Fatalf("position with an unresolved reservation = %d, want 0", got)
	}
	slow.Add(1)
	slow.Done()
	if got := tr.Position(); got != 2 {
		t.Fatalf("position = %d, want 2", got)
	}
}

func TestTrackerRolledBackIDsDoNotBlock(t *testing.T) {
	tr := streams.NewTracker(0, nil)
	r := tr.Reserve()
	r.Add(1)
	r.Done() // rolled back: still done
	r2 := tr.Reserve()
	r2.Add(2)
	r2.Done()
	r2.Done() // idempotent
	if got := tr.Position(); got != 2 {
		t.Fatalf("position = %d, want 2", got)
	}
}

func TestTrackerConcurrent(t *testing.T) {
	tr := streams.NewTracker(0, nil)
	var mu sync.Mutex
	next := int64(0)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				r := tr.Reserve()
				mu.Lock()
				next++
				id := next
				mu.Unlock()
				r.Add(id)
				r.Done()
			}
		}()
	}
	wg.Wait()
	if got := tr.Position(); got != 1600 {
		t.Fatalf("position = %d, want 1600", got)
	}
}

func TestRegistryMinimumOverWriters(t *testing.T) {
	reg, err := streams.NewRegistry("p1", streams.AllDefs(), map[streams.Name][]string{streams.Events: {"p1", "p2"}}, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	reg.Advance(streams.Events, "p1", 10)
	reg.Advance(streams.Events, "p2", 7)
	if got := reg.Current(streams.Events); got != 7 {
		t.Fatalf("current = %d, want 7", got)
	}
	reg.Advance(streams.Events, "p2", 5) // never backwards
	if got := reg.WriterPosition(streams.Events, "p2"); got != 7 {
		t.Fatalf("writer position went backwards to %d", got)
	}
	min, vec := reg.Vector(streams.Events)
	if min != 7 || vec["p1"] != 10 || vec["p2"] != 7 {
		t.Fatalf("vector = %d %v", min, vec)
	}
	if !reg.IsWriter(streams.Events) || reg.IsWriter(streams.Typing) {
		t.Fatal("IsWriter wrong")
	}
}

func TestRegistryRejectsTwoWritersForSingleWriterStream(t *testing.T) {
	_, err := streams.NewRegistry("main", streams.AllDefs(), map[streams.Name][]string{streams.Typing: {"a", "b"}}, streams.NewNotifier())
	if err == nil {
		t.Fatal("expected an error for two typing writers")
	}
}

func TestWaitForWriter(t *testing.T) {
	reg, _ := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- reg.WaitForWriter(ctx, streams.Events, "main", 3) }()
	reg.Advance(streams.Events, "main", 2)
	reg.Advance(streams.Events, "main", 3)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	short, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if err := reg.WaitForWriter(short, streams.Events, "main", 100); err == nil {
		t.Fatal("expected an error when the context ends first")
	}
}

func TestNotifierWakesOnlyMatchingKeys(t *testing.T) {
	n := streams.NewNotifier()
	room := n.Listen(streams.RoomKey("!a:x"))
	user := n.Listen(streams.UserKey("@u:x"))
	defer room.Close()
	defer user.Close()
	n.Wake(streams.RoomKey("!a:x"))
	select {
	case <-room.C:
	default:
		t.Fatal("room listener not woken")
	}
	select {
	case <-user.C:
		t.Fatal("user listener woken by a room key")
	default:
	}
	// A wake before the waiter selects is kept (one-slot buffer).
	n.Wake(streams.UserKey("@u:x"))
	n.Wake(streams.UserKey("@u:x"))
	select {
	case <-user.C:
	default:
		t.Fatal("wake lost")
	}
	user.Close()
	if got := n.Listening(streams.UserKey("@u:x")); got != 0 {
		t.Fatalf("listeners after close = %d", got)
	}
}

func TestTokenRoundTrip(t *testing.T) {
	tok := streams.Token{Events: 12, Presence: 3, Typing: 4, Receipts: 5, AccountData: 6, PushRules: 7, ToDevice: 8, DeviceLists: 9}
	s := tok.String()
	if s != "s12_3_4_5_6_7_8_9" {
		t.Fatalf("token = %s", s)
	}
	back, err := streams.ParseToken(s)
	if err != nil || !reflect.DeepEqual(back, tok) {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	short, err := streams.ParseToken("s42")
	_ = short
	if err != nil || short.Events != 42 || short.ToDevice != 0 {
		t.Fatalf("short token: %+v %v", short, err)
	}
	for _, bad := range []string{"", "s", "x1_2", "s1_x", "s-1", "s1__2", "garbage"} {
		if _, err := streams.ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
	if !(streams.Token{Events: 5}).Ahead(streams.Token{Events: 4}) || (streams.Token{Events: 4}).Ahead(streams.Token{Events: 4}) {
		t.Fatal("Ahead wrong")
	}
}

func FuzzParseToken(f *testing.F) {
	f.Add("s1_2_3_4_5_6_7_8")
	f.Add("s0")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := streams.ParseToken(s)
		if err != nil {
			return
		}
		again, err := streams.ParseToken(tok.String())
		if err != nil || !reflect.DeepEqual(again, tok) {
			t.Fatalf("%q → %s → %+v %v", s, tok, again, err)
		}
	})
}

func TestTrackerAbortDoesNotPassReusedID(t *testing.T) {
	// SQLite hands a rolled-back id out again: the position must not pass
	// it when the first use aborts.
	tr := streams.NewTracker(4, nil)
	r := tr.Reserve()
	r.Add(5)
	r.Abort()
	if got := tr.Position(); got != 4 {
		t.Fatalf("position after abort = %d, want 4", got)
	}
	r2 := tr.Reserve()
	r2.Add(5)
	r2.Done()
	r2.Abort() // no-op after Done
	if got := tr.Position(); got != 5 {
		t.Fatalf("position = %d, want 5", got)
	}
}

func TestTrackerBumpWaitsForInFlight(t *testing.T) {
	tr := streams.NewTracker(5, nil)
	r := tr.Reserve()
	r.Add(6)
	tr.Bump(9) // another writer reached 9 while our 6 is in flight
	if got := tr.Position(); got != 5 {
		t.Fatalf("bumped past an in-flight id: %d", got)
	}
	r.Done()
	if got := tr.Position(); got != 9 {
		t.Fatalf("position after in-flight finished = %d, want the bump 9", got)
	}
	// A later reservation's floor is above the bump.
	r2 := tr.Reserve()
	r2.Add(10)
	r2.Done()
	if got := tr.Position(); got != 10 {
		t.Fatalf("position = %d, want 10", got)
	}
}

func TestWakeAtWaitsForTheMinimum(t *testing.T) {
	n := streams.NewNotifier()
	reg, _ := streams.NewRegistry("a", streams.AllDefs(), map[streams.Name][]string{streams.Receipts: {"a", "b"}}, n)
	l := n.Listen(streams.RoomKey("!r:x"))
	defer l.Close()
	reg.Advance(streams.Receipts, "a", 10)
	reg.WakeAt(streams.Receipts, 10, streams.RoomKey("!r:x"))
	select {
	case <-l.C:
		t.Fatal("woken before writer b passed 10")
	default:
	}
	reg.Advance(streams.Receipts, "b", 10)
	select {
	case <-l.C:
	default:
		t.Fatal("not woken once the minimum reached 10")
	}
}

// TestWakeAtWriterWaitsForThatWriter: on the events stream (read per
// writer) a row wakes its keys once its own writer's position covers it,
// not the minimum over writers, and not before: a persister whose earlier
// id is still in flight has committed a row its position does not cover.
func TestWakeAtWriterWaitsForThatWriter(t *testing.T) {
	n := streams.NewNotifier()
	reg, _ := streams.NewRegistry("p1", streams.AllDefs(), map[streams.Name][]string{streams.Events: {"p1", "p2"}}, n)
	room := streams.RoomKey("!r:x")
	woken := func(l *streams.Listener) bool {
		select {
		case <-l.C:
			return true
		default:
			return false
		}
	}
	l := n.Listen(room)
	defer l.Close()
	reg.Advance(streams.Events, "p1", 9)
	reg.WakeAtWriter(streams.Events, "p1", 11, room) // id 10 still in flight
	if woken(l) {
		t.Fatal("woken before p1's position covered 11")
	}
	reg.Advance(streams.Events, "p1", 11)
	if !woken(l) {
		t.Fatal("not woken once p1 reached 11 (p2, at 0, must not hold it back)")
	}
	l2 := n.Listen(room)
	defer l2.Close()
	reg.WakeAtWriter(streams.Events, "p2", 5, room)
	if woken(l2) {
		t.Fatal("woken for p2's row before p2 reached it")
	}
	reg.Advance(streams.Events, "p2", 5)
	if !woken(l2) {
		t.Fatal("not woken once p2 reached 5")
	}
}

func TestVectorTokens(t *testing.T) {
	reg, _ := streams.NewRegistry("p1", streams.AllDefs(), map[streams.Name][]string{streams.Events: {"p1", "p2"}}, streams.NewNotifier())
	reg.SetInstanceIDs(map[string]int{"p1": 1, "p2": 2})
	reg.Advance(streams.Events, "p1", 20)
	reg.Advance(streams.Events, "p2", 12)
	tok := reg.CurrentToken()
	if tok.Events != 12 || tok.EventsFor("p1") != 20 || tok.EventsFor("p2") != 12 {
		t.Fatalf("current token %+v", tok)
	}
	s := reg.FormatToken(tok)
	if s != "m12~1.20_0_0_0_0_0_0_0" {
		t.Fatalf("formatted %q", s)
	}
	back, err := reg.ParseToken(s)
	if err != nil || back.EventsFor("p1") != 20 || back.Events != 12 {
		t.Fatalf("parsed %+v %v", back, err)
	}
	if _, err := reg.ParseToken("m12~9.20_0"); err == nil {
		t.Fatal("unknown writer id accepted")
	}
	// A token from a process that saw p1 further is ahead of us; one that
	// saw less is not.
	if !(streams.Token{Events: 12, EventsAhead: map[string]int64{"p1": 25}}).Ahead(tok) {
		t.Fatal("ahead not detected")
	}
	if (streams.Token{Events: 10}).Ahead(tok) {
		t.Fatal("behind reported as ahead")
	}
	// Events wake per writer: a persister's rows are readable when it
	// passed them, whatever the other persister does.
	l := reg.Notifier().Listen(streams.RoomKey("!r:x"))
	defer l.Close()
	reg.WakeAtWriter(streams.Events, "p1", 20, streams.RoomKey("!r:x"))
	select {
	case <-l.C:
	default:
		t.Fatal("events wake held for the minimum")
	}
}
