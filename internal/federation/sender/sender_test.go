package sender_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/events"
	"ganglion/internal/federation/sender"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
	"ganglion/internal/testutil"
)

const server = "home.test"

var alice = "@alice:" + server

func raw(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

func ptr(s string) *string { return &s }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// fixture is a database with a persister, and the registry the sender
// follows (the persister advances it, as on a monolith).
type fixture struct {
	db  *storage.DB
	reg *streams.Registry
	p   *rooms.Persister
	st  *rooms.Store
	log *slog.Logger
	// edus are the EDU streams the senders run follow.
	edus sender.Sources
}

func newFixture(t *testing.T, db *storage.DB) *fixture {
	t.Helper()
	reg, err := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	key, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	p, err := rooms.NewPersister(ctxT(t), db, reg, server, key, log)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{db: db, reg: reg, p: p, st: rooms.NewStore(db), log: log}
}

func (f *fixture) send(t *testing.T, roomID string, drafts ...rooms.Draft) []rooms.Persisted {
	t.Helper()
	res, err := f.p.SendEvents(ctxT(t), roomID, drafts)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func (f *fixture) createRoom(t *testing.T, roomID string) {
	f.send(t, roomID,
		rooms.Draft{Type: "m.room.create", StateKey: ptr(""), Sender: alice, RoomVersion: "10",
			Content: raw(map[string]any{"creator": alice, "room_version": "10"})},
		rooms.Draft{Type: "m.room.member", StateKey: ptr(alice), Sender: alice, Content: raw(map[string]any{"membership": "join"})},
		rooms.Draft{Type: "m.room.power_levels", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"users": map[string]int{alice: 100}})},
		rooms.Draft{Type: "m.room.join_rules", StateKey: ptr(""), Sender: alice, Content: raw(map[string]any{"join_rule": "public"})})
}

// remoteJoin stands for a remote user's join received over federation: an
// event whose sender is not ours, which the sender must not send back.
func (f *fixture) remoteJoin(t *testing.T, roomID, userID string) {
	f.send(t, roomID, rooms.Draft{Type: "m.room.member", StateKey: ptr(userID), Sender: userID,
		Content: raw(map[string]any{"membership": "join"})})
}

func (f *fixture) messages(t *testing.T, roomID string, n int, prefix string) []string {
	var ids []string
	for i := range n {
		res := f.send(t, roomID, rooms.Draft{Type: "m.room.message", Sender: alice,
			Content: raw(map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("%s %d", prefix, i)})})
		ids = append(ids, res[0].EventID)
	}
	return ids
}

// receiver is a fake set of remote servers: it records the PDUs each
// destination accepted, deduplicating by event id as a real receiver does,
// and fails transactions to destinations while they are down.
type receiver struct {
	mu       sync.Mutex
	got      map[string][]string // destination → event ids, in arrival order, first copies
	copies   map[string]int      // destination/event id → copies received in acknowledged transactions
	txns     map[string]int      // destination → acknowledged transactions
	down     map[string]bool
	block    chan struct{} // non-nil: transactions wait for it to close
	maxPDUs  int
	origin   string
	txnIDs   map[string]bool
	attempts map[string]int
	edus     map[string][]json.RawMessage // destination → EDUs of acknowledged transactions
	maxEDUs  int
}

func newReceiver() *receiver {
	return &receiver{got: map[string][]string{}, copies: map[string]int{}, txns: map[string]int{}, down: map[string]bool{},
		txnIDs: map[string]bool{}, attempts: map[string]int{}, edus: map[string][]json.RawMessage{}}
}

func (r *receiver) SendTransaction(ctx context.Context, dest, txnID string, txn *sender.Transaction) error {
	r.mu.Lock()
	block := r.block
	r.attempts[dest]++
	r.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down[dest] {
		return errors.New("connection refused")
	}
	r.origin = txn.Origin
	r.maxPDUs = max(r.maxPDUs, len(txn.PDUs))
	r.txns[dest]++
	r.txnIDs[dest+"/"+txnID] = true
	r.maxEDUs = max(r.maxEDUs, len(txn.EDUs))
	r.edus[dest] = append(r.edus[dest], txn.EDUs...)
	for _, pdu := range txn.PDUs {
		var ev struct {
			Type    string          `json:"type"`
			Content json.RawMessage `json:"content"`
			RoomID  string          `json:"room_id"`
		}
		if err := json.Unmarshal(pdu, &ev); err != nil {
			return err
		}
		id := eventID(pdu)
		if r.copies[dest+"/"+id] == 0 {
			r.got[dest] = append(r.got[dest], id)
		}
		r.copies[dest+"/"+id]++
	}
	return nil
}

func (r *receiver) received(dest string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got[dest])
}

func (r *receiver) setDown(dest string, down bool) {
	r.mu.Lock()
	r.down[dest] = down
	r.mu.Unlock()
}

// eventID recomputes a room v10 PDU's event id (PDUs carry none).
func eventID(pdu []byte) string {
	rv, _ := events.LookupRoomVersion("10")
	ev, err := events.Parse(pdu, rv)
	if err != nil {
		return "unparsable"
	}
	return ev.EventID()
}

// run starts a sender and returns a stop function that waits for it.
func (f *fixture) run(t *testing.T, tr sender.Transport, opts sender.Options) (stop func()) {
	t.Helper()
	if opts.ServerName == "" {
		opts.ServerName = server
	}
	if opts.Instance == "" {
		opts.Instance = "main"
	}
	if opts.MinRetry == 0 {
		opts.MinRetry, opts.MaxRetry = 20*time.Millisecond, 100*time.Millisecond
	}
	s := sender.New(f.db, f.reg, f.st, tr, opts, f.log.With("instance", opts.Instance))
	s.FollowEDUs(f.edus)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Started():
	case err := <-done:
		t.Fatalf("sender: %v", err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("sender: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("sender did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func waitReceived(t *testing.T, r *receiver, dest string, want []string) {
	t.Helper()
	testutil.EventuallyState(t, 30*time.Second, func() (bool, string) {
		got := r.received(dest)
		return slices.Equal(got, want), fmt.Sprintf("%s received %d of %d events (%v)", dest, len(got), len(want), got)
	})
}

func TestSenderDeliversLocalEventsToEveryServerInTheRoom(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		room, local := "!fed:"+server, "!local:"+server
		f.createRoom(t, room)
		f.createRoom(t, local)
		r := newReceiver()
		f.run(t, r, sender.Options{})
		f.remoteJoin(t, room, "@bob:one.test")
		f.remoteJoin(t, room, "@carol:two.test")
		f.remoteJoin(t, room, "@dan:two.test")
		sent := f.messages(t, room, 120, "hello")
		f.messages(t, local, 5, "not federated")

		waitReceived(t, r, "one.test", sent)
		waitReceived(t, r, "two.test", sent)
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.origin != server {
			t.Errorf("origin %q", r.origin)
		}
		if r.maxPDUs > 50 || r.maxPDUs == 0 {
			t.Errorf("largest transaction had %d PDUs; the spec allows 50", r.maxPDUs)
		}
		for k, n := range r.copies {
			if n != 1 {
				t.Errorf("%s delivered %d times", k, n)
			}
		}
		if len(r.got) != 2 {
			t.Errorf("destinations %v: the remote joins (not ours) and the local room must not be sent anywhere", r.got)
		}
	})
}

func TestSenderBacksOffAndDeliversAfterOutage(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		room := "!outage:" + server
		f.createRoom(t, room)
		r := newReceiver()
		f.run(t, r, sender.Options{})
		f.remoteJoin(t, room, "@bob:down.test")
		f.remoteJoin(t, room, "@carol:up.test")
		r.setDown("down.test", true)
		sent := f.messages(t, room, 10, "during outage")
		waitReceived(t, r, "up.test", sent)
		// Several failed attempts, spaced by the backoff.
		testutil.EventuallyState(t, 30*time.Second, func() (bool, string) {
			r.mu.Lock()
			defer r.mu.Unlock()
			return r.attempts["down.test"] >= 3, fmt.Sprintf("%d attempts", r.attempts["down.test"])
		})
		var interval int64
		if err := db.Reader().QueryRowContext(ctxT(t), `SELECT retry_interval_ms FROM federation_destinations WHERE destination = 'down.test'`).Scan(&interval); err != nil || interval < 20 {
			t.Fatalf("backoff state: %d, %v", interval, err)
		}
		if got := r.received("down.test"); len(got) != 0 {
			t.Fatalf("a down destination received %v", got)
		}
		r.setDown("down.test", false)
		more := f.messages(t, room, 3, "after")
		waitReceived(t, r, "down.test", append(slices.Clone(sent), more...))
		// Success clears the backoff.
		testutil.EventuallyState(t, 10*time.Second, func() (bool, string) {
			var n int
			_ = db.Reader().QueryRowContext(ctxT(t), `SELECT count(*) FROM federation_destinations`).Scan(&n)
			return n == 0, fmt.Sprintf("%d destinations still backing off", n)
		})
	})
}

// A sender stopped with transactions in flight and events not yet read
// loses none of them: a new sender under the same instance name delivers
// everything, and what was acknowledged before the stop is not sent again.
func TestSenderRestartLosesNothing(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		room := "!restart:" + server
		f.createRoom(t, room)
		r := newReceiver()
		stop := f.run(t, r, sender.Options{})
		f.remoteJoin(t, room, "@bob:far.test")
		first := f.messages(t, room, 5, "before")
		waitReceived(t, r, "far.test", first)

		// Transactions now hang until the sender is stopped mid-flight.
		r.mu.Lock()
		r.block = make(chan struct{})
		r.mu.Unlock()
		second := f.messages(t, room, 7, "in flight")
		testutil.EventuallyState(t, 30*time.Second, func() (bool, string) {
			r.mu.Lock()
			defer r.mu.Unlock()
			return r.attempts["far.test"] > r.txns["far.test"], "waiting for a transaction in flight"
		})
		stop()
		// Sent while no sender runs at all.
		third := f.messages(t, room, 4, "while stopped")
		r.mu.Lock()
		close(r.block)
		r.block = nil
		r.mu.Unlock()

		f.run(t, r, sender.Options{})
		want := slices.Concat(first, second, third)
		waitReceived(t, r, "far.test", want)
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, id := range first {
			if n := r.copies["far.test/"+id]; n != 1 {
				t.Errorf("acknowledged event %s sent %d times", id, n)
			}
		}
	})
}

// With two senders, each destination is served by exactly the instance
// Synapse's hash assigns it.
func TestSendersShardByDestination(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		room := "!sharded:" + server
		f.createRoom(t, room)
		instances := []string{"fs1", "fs2"}
		byInstance := map[string]*receiver{"fs1": newReceiver(), "fs2": newReceiver()}
		for _, name := range instances {
			f.run(t, byInstance[name], sender.Options{Instance: name, Instances: instances})
		}
		var dests []string
		for i := range 6 {
			d := fmt.Sprintf("s%d.test", i)
			dests = append(dests, d)
			f.remoteJoin(t, room, "@u:"+d)
		}
		sent := f.messages(t, room, 3, "sharded")
		for _, d := range dests {
			owner := config.ShardFor(instances, d)
			waitReceived(t, byInstance[owner], d, sent)
			for name, r := range byInstance {
				if name != owner && len(r.received(d)) != 0 {
					t.Errorf("%s also sent to %s (owned by %s)", name, d, owner)
				}
			}
		}
	})
}

// A remote user kicked from the room is no longer joined, but its server
// is still told of the kick.
func TestSenderTellsAKickedServer(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		room := "!kick:" + server
		f.createRoom(t, room)
		r := newReceiver()
		f.run(t, r, sender.Options{})
		f.remoteJoin(t, room, "@bob:kicked.test")
		kick := f.send(t, room, rooms.Draft{Type: "m.room.member", StateKey: ptr("@bob:kicked.test"), Sender: alice,
			Content: raw(map[string]any{"membership": "leave"})})
		after := f.messages(t, room, 1, "after the kick")
		waitReceived(t, r, "kicked.test", []string{kick[0].EventID})
		f.messages(t, room, 1, "flush")
		if got := r.received("kicked.test"); slices.Contains(got, after[0]) {
			t.Fatalf("a server with nobody left in the room got %v", got)
		}
	})
}
