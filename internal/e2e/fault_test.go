package e2e_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/config"
)

// Fault tests: a fleet under a steady send load loses one of its parts
// (kill -9, or a Redis restart) and gets it back. No acknowledged event
// may be lost or duplicated, every member's timeline must hold each one
// exactly once on every worker, and the workers must catch up.
//
// Each test has a fleet and a redis-server of its own (every fleet does),
// so killing and restarting parts never disturbs another test.

// faultTimeout bounds a whole fault test.
const faultTimeout = 150 * time.Second

// progressLimit bounds each wait for the load to make progress.
const progressLimit = 45 * time.Second

func TestFaultKillGenericWorker(t *testing.T) {
	t.Parallel()
	runFault(t, func(t *testing.T, fx *faultFixture) {
		// sender1 and the to-device load talk to worker2.
		fx.f.killProc(t, instWorker2)
		fx.waitProgress(t, "sends through worker1 while worker2 is down", 10, fx.loopsOn(instWorker1)...)
		fx.f.restartProc(t, instWorker2)
		fx.waitProgress(t, "every loop after worker2 restarted", 3, fx.allLoops()...)
	})
}

func TestFaultKillEventPersister(t *testing.T) {
	t.Parallel()
	runFault(t, func(t *testing.T, fx *faultFixture) {
		victim := fx.persisterOf(fx.rooms[1])
		fx.f.killProc(t, victim)
		fx.waitProgress(t, "sends into the other persister's room while "+victim+" is down", 10, fx.loopsIn(fx.rooms[0])...)
		fx.f.restartProc(t, victim)
		fx.waitProgress(t, "every loop after "+victim+" restarted", 3, fx.allLoops()...)
	})
}

func TestFaultKillStreamWriter(t *testing.T) {
	t.Parallel()
	runFault(t, func(t *testing.T, fx *faultFixture) {
		// writer1 writes to_device (and typing, receipts, account data,
		// presence); message sends do not need it.
		fx.f.killProc(t, instWriter)
		fx.waitProgress(t, "message sends while writer1 is down", 10, fx.messageLoops()...)
		fx.f.restartProc(t, instWriter)
		fx.waitProgress(t, "every loop after writer1 restarted", 3, fx.allLoops()...)
	})
}

func TestFaultRestartRedis(t *testing.T) {
	t.Parallel()
	runFault(t, func(t *testing.T, fx *faultFixture) {
		fx.f.redis.stop()
		// HTTP replication still carries the writes; only the doorbell is
		// gone (a send may wait out its position wait). One ack per loop
		// shows the fleet still takes writes.
		fx.waitProgress(t, "sends while Redis is down", 1, fx.messageLoops()...)
		if err := fx.f.redis.start(); err != nil {
			t.Fatalf("restart redis-server on port %d: %v", fx.f.redis.port, err)
		}
		fx.f.waitAllReady(t)
		fx.waitProgress(t, "every loop after Redis restarted", 3, fx.allLoops()...)
	})
}

// faultFixture is a fleet with three senders (on alternating generic
// workers) in two rooms owned by different persisters, and the load they
// generate.
type faultFixture struct {
	srv     *server
	f       *fleet
	ctx     context.Context
	senders []*mautrix.Client // sender0 (worker1), sender1 (worker2), sender2 (worker1)
	rooms   []id.RoomID       // rooms[0] and rooms[1] have different persisters
	tdDev   *mautrix.Client   // sender0's second device, target of the to-device load
	load    *sendLoad
	// followers follow sender2's sync on each generic worker from a
	// token taken before the fault.
	followers map[string]*follower
}

// runFault starts a fleet, sets up senders and rooms, runs the load,
// injects the fault (which must also repair it), stops the load and checks
// the fleet.
func runFault(t *testing.T, fault func(t *testing.T, fx *faultFixture)) {
	srv := startServer(t, engineFleet)
	ctx, cancel := context.WithTimeout(context.Background(), faultTimeout)
	t.Cleanup(cancel)
	fx := &faultFixture{srv: srv, f: srv.fleet, ctx: ctx}
	for i := range 3 {
		fx.senders = append(fx.senders, srv.register(t, ctx, "sender"+itoa(i)))
	}
	fx.tdDev = srv.mustLogin(t, ctx, "sender0", password("sender0"))
	fx.rooms = fx.roomsOnBothPersisters(t)
	for _, room := range fx.rooms {
		for _, c := range fx.senders[1:] {
			join(t, ctx, c, room.String())
		}
	}

	// The loops' own context ends them at once if the test fails first
	// (a send to a part that never came back would retry until the end).
	loadCtx, cancelLoad := context.WithCancel(ctx)
	fx.load = newSendLoad()
	for i, c := range fx.senders {
		for r, room := range fx.rooms {
			fx.load.startMessages(loadCtx, fmt.Sprintf("s%d-r%d", i, r), c, room)
		}
	}
	fx.load.startToDevice(loadCtx, "td", fx.senders[1], fx.tdDev.UserID, fx.tdDev.DeviceID)
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			fx.load.stopAndWait(t)
		}
	}
	t.Cleanup(func() {
		cancelLoad()
		stop()
	})

	fx.waitProgress(t, "the load before the fault", 5, fx.allLoops()...)
	fx.followers = map[string]*follower{}
	for _, w := range clientWorkers() {
		fx.followers[w] = newFollower(t, ctx, fx.clientOn(t, w, fx.senders[2]), fx.rooms)
	}
	fault(t, fx)
	stop()
	t.Logf("load: %s", fx.load.summary())
	if t.Failed() {
		return
	}
	fx.check(t)
}

// roomsOnBothPersisters creates rooms as sender0 until it has one for
// each persister (config.ShardFor is the fleet's room → persister map).
func (fx *faultFixture) roomsOnBothPersisters(t *testing.T) []id.RoomID {
	t.Helper()
	byPersister := map[string]id.RoomID{}
	for i := 0; len(byPersister) < 2; i++ {
		if i == 20 {
			t.Fatalf("20 rooms and still not one per persister: %v", byPersister)
		}
		room := createRoom(t, fx.ctx, fx.senders[0], &mautrix.ReqCreateRoom{Preset: "public_chat"})
		if p := fx.persisterOf(room); byPersister[p] == "" {
			byPersister[p] = room
		}
	}
	return []id.RoomID{byPersister[instPersister1], byPersister[instPersister2]}
}

func (fx *faultFixture) persisterOf(room id.RoomID) string {
	return config.ShardFor([]string{instPersister1, instPersister2}, room.String())
}

// Loop selections for waitProgress.
func (fx *faultFixture) allLoops() []string { return fx.load.names() }

func (fx *faultFixture) messageLoops() []string {
	return slices.DeleteFunc(fx.load.names(), func(n string) bool { return n == "td" })
}

func (fx *faultFixture) loopsIn(room id.RoomID) []string {
	r := slices.Index(fx.rooms, room)
	return slices.DeleteFunc(fx.messageLoops(), func(n string) bool { return !strings.HasSuffix(n, "-r"+itoa(r)) })
}

// loopsOn lists the message loops whose sender talks to worker.
func (fx *faultFixture) loopsOn(worker string) []string {
	url := fx.f.clientURL(worker)
	return slices.DeleteFunc(fx.messageLoops(), func(n string) bool {
		i, _ := strconv.Atoi(strings.TrimPrefix(strings.Split(n, "-")[0], "s"))
		return fx.senders[i].HomeserverURL.String() != url
	})
}

// waitProgress waits until each named loop has at least n more
// acknowledgements than when it was called.
func (fx *faultFixture) waitProgress(t *testing.T, what string, n int, loops ...string) {
	t.Helper()
	base := map[string]int{}
	for _, l := range loops {
		base[l] = fx.load.acks(l)
	}
	deadline := time.Now().Add(progressLimit)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		behind := []string{}
		for _, l := range loops {
			if fx.load.acks(l)-base[l] < n {
				behind = append(behind, l)
			}
		}
		if len(behind) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: loops %v made fewer than %d acknowledged sends in %v (load: %s)", what, behind, n, progressLimit, fx.load.summary())
		}
		<-tick.C
	}
}

// clientOn is c's session on another worker.
func (fx *faultFixture) clientOn(t *testing.T, worker string, c *mautrix.Client) *mautrix.Client {
	t.Helper()
	o, err := mautrix.NewClient(fx.f.clientURL(worker), c.UserID, c.AccessToken)
	if err != nil {
		t.Fatalf("mautrix client: %v", err)
	}
	o.Client = fx.srv.http
	o.DeviceID = c.DeviceID
	return o
}

// check runs the after-the-fault assertions.
func (fx *faultFixture) check(t *testing.T) {
	t.Helper()
	ctx := fx.ctx
	fx.f.wantAllHealthy(t, ctx)

	// Catch-up: a message sent through worker1 into each room after the
	// fault must reach the incremental syncs on each worker (followed
	// from a token taken before the fault) within waitLimit. Events get
	// their stream ids from one sequence, so once a worker shows the
	// probes it can read every acknowledged event too.
	probes := map[id.RoomID]id.EventID{}
	for _, room := range fx.rooms {
		probes[room] = send(t, ctx, fx.clientOn(t, instWorker1, fx.senders[0]), room, "probe", "probe-"+room.String())
		fx.load.record(room, "probe", 0, probes[room])
	}
	for _, w := range clientWorkers() {
		fx.followers[w].until(t, ctx, "both probes on "+w, func() bool {
			return fx.followers[w].has(fx.rooms[0], probes[fx.rooms[0]]) && fx.followers[w].has(fx.rooms[1], probes[fx.rooms[1]])
		})
	}

	acked := fx.load.ackedByRoom()
	total := 0
	for _, evs := range acked {
		total += len(evs)
	}
	filter := fmt.Sprintf(`{"room":{"timeline":{"limit":%d}}}`, total+50)
	for _, w := range clientWorkers() {
		for _, member := range fx.senders {
			c := fx.clientOn(t, w, member)
			// A fresh initial sync: each room's timeline holds acknowledged
			// events only, none twice, and all of them when not limited.
			resp := doSync(t, ctx, c, syncParams{filter: filter})
			for _, room := range fx.rooms {
				jr := joinedRoom(t, resp, room)
				fx.wantMessages(t, fmt.Sprintf("%s: %s's initial sync of %s", w, member.UserID, room), room,
					jr.Timeline.Events, !jr.Timeline.Limited)
			}
			// The whole timeline, paged backwards from the end; the
			// incremental syncs since before the fault, their gaps filled
			// from prev_batch, are exactly its tail.
			for _, room := range fx.rooms {
				all := reversed(paginate(t, ctx, c, room, mautrix.DirectionBackward, 100))
				fx.wantMessages(t, fmt.Sprintf("%s: %s's /messages of %s", w, member.UserID, room), room, all, true)
				if member == fx.senders[2] {
					fx.followers[w].wantTail(t, w, room, ids(all, ""))
				}
			}
		}
	}

	// To-device: every acknowledged message reaches the device once, in
	// order, through its syncs (it never synced during the load).
	want := fx.load.toDeviceAcked()
	var got []string
	ts := &syncer{c: fx.tdDev, filter: `{"room":{"rooms":[]}}`}
	deadline := time.Now().Add(waitLimit)
	for len(got) < len(want) && time.Now().Before(deadline) {
		resp := ts.next(t, ctx, pollTimeout)
		for _, ev := range resp.ToDevice.Events {
			n, _ := ev.Content.Raw["n"].(string)
			got = append(got, n)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("to-device messages received (%d) differ from those acknowledged (%d), in order and once each:\n got %v\nwant %v",
			len(got), len(want), got, want)
	}
}

// wantMessages checks the m.room.message events of a timeline (oldest
// first) against the acknowledged sends into room: no event twice, none
// that was not acknowledged, each loop's messages in the order it sent
// them, and — if complete — every acknowledged one.
func (fx *faultFixture) wantMessages(t *testing.T, what string, room id.RoomID, timeline []*event.Event, complete bool) {
	t.Helper()
	acked := fx.load.ackedIn(room)
	seen := map[id.EventID]bool{}
	lastN := map[string]int{}
	for _, ev := range timeline {
		if seen[ev.ID] {
			t.Errorf("%s: %s appears twice", what, ev.ID)
			return
		}
		seen[ev.ID] = true
		if ev.Type != event.EventMessage {
			continue
		}
		a, ok := acked[ev.ID]
		if !ok {
			body, _ := ev.Content.Raw["body"].(string)
			t.Errorf("%s: %s (%q from %s) was never acknowledged to a sender (a duplicate of a retried send?)", what, ev.ID, body, ev.Sender)
			return
		}
		if last, ok := lastN[a.loop]; ok && a.n <= last {
			t.Errorf("%s: loop %s's message %d comes after its message %d", what, a.loop, a.n, last)
			return
		}
		lastN[a.loop] = a.n
	}
	if !complete {
		return
	}
	var missing []string
	for e, a := range acked {
		if !seen[e] {
			missing = append(missing, fmt.Sprintf("%s(%s/%d)", e, a.loop, a.n))
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		t.Errorf("%s: %d of %d acknowledged events missing: %v", what, len(missing), len(acked), missing)
	}
}

// sendLoad is a set of loops that send until stopped, each retrying a
// failed send with the same transaction id until it is acknowledged.
type sendLoad struct {
	stop chan struct{}
	wg   sync.WaitGroup

	mu       sync.Mutex
	acked    map[id.RoomID]map[id.EventID]ackedSend
	count    map[string]int // acknowledgements per loop
	failures map[string]int // failed attempts per loop
	lastErr  map[string]error
	toDevice []string // acknowledged to-device messages, in order
}

type ackedSend struct {
	loop string
	n    int
}

func newSendLoad() *sendLoad {
	return &sendLoad{stop: make(chan struct{}), acked: map[id.RoomID]map[id.EventID]ackedSend{},
		count: map[string]int{}, failures: map[string]int{}, lastErr: map[string]error{}}
}

func (l *sendLoad) names() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for n := range l.count {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func (l *sendLoad) acks(loop string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.count[loop]
}

func (l *sendLoad) record(room id.RoomID, loop string, n int, e id.EventID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.acked[room] == nil {
		l.acked[room] = map[id.EventID]ackedSend{}
	}
	l.acked[room][e] = ackedSend{loop: loop, n: n}
	l.count[loop]++
}

func (l *sendLoad) ackedIn(room id.RoomID) map[id.EventID]ackedSend {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[id.EventID]ackedSend{}
	for e, a := range l.acked[room] {
		out[e] = a
	}
	return out
}

func (l *sendLoad) ackedByRoom() map[id.RoomID][]id.EventID {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[id.RoomID][]id.EventID{}
	for room, m := range l.acked {
		for e := range m {
			out[room] = append(out[room], e)
		}
	}
	return out
}

func (l *sendLoad) toDeviceAcked() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.toDevice)
}

func (l *sendLoad) failed(loop string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failures[loop]++
	l.lastErr[loop] = err
}

func (l *sendLoad) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var parts []string
	for _, n := range slices.Sorted(maps.Keys(l.count)) {
		s := fmt.Sprintf("%s %d acked", n, l.count[n])
		if f := l.failures[n]; f > 0 {
			s += fmt.Sprintf(" (%d failed attempts, last: %v)", f, l.lastErr[n])
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// run starts a loop: send(ctx, n) is attempted until it succeeds (the
// same n, so the same transaction id), then the loop moves on, until stop
// is closed. A send in progress when stop closes is still retried to
// success, so every send the loop began is acknowledged when it returns
// (or the test's context ended).
func (l *sendLoad) run(ctx context.Context, loop string, send func(ctx context.Context, n int) error) {
	l.mu.Lock()
	l.count[loop] += 0
	l.mu.Unlock()
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for n := 0; ; n++ {
			select {
			case <-l.stop:
				return
			default:
			}
			backoff := 20 * time.Millisecond
			for {
				actx, cancel := context.WithTimeout(ctx, 20*time.Second)
				err := send(actx, n)
				cancel()
				if err == nil {
					break
				}
				l.failed(loop, err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 500*time.Millisecond)
			}
		}
	}()
}

// startMessages runs a loop sending m.room.message events into room.
func (l *sendLoad) startMessages(ctx context.Context, loop string, c *mautrix.Client, room id.RoomID) {
	l.run(ctx, loop, func(ctx context.Context, n int) error {
		resp, err := c.SendMessageEvent(ctx, room, event.EventMessage,
			map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("%s/%d", loop, n)},
			mautrix.ReqSendEvent{TransactionID: fmt.Sprintf("%s-%d", loop, n)})
		if err != nil {
			return err
		}
		l.record(room, loop, n, resp.EventID)
		return nil
	})
}

// startToDevice runs a loop sending to-device messages to one device,
// each with its own transaction id.
func (l *sendLoad) startToDevice(ctx context.Context, loop string, c *mautrix.Client, user id.UserID, device id.DeviceID) {
	l.run(ctx, loop, func(ctx context.Context, n int) error {
		body := map[string]any{"messages": map[string]any{user.String(): map[string]any{device.String(): map[string]any{"n": itoa(n)}}}}
		url := c.BuildClientURL("v3", "sendToDevice", "com.example.test", fmt.Sprintf("%s-%d", loop, n))
		if _, err := c.MakeRequest(ctx, "PUT", url, body, nil); err != nil {
			return err
		}
		l.mu.Lock()
		l.toDevice = append(l.toDevice, itoa(n))
		l.count[loop]++
		l.mu.Unlock()
		return nil
	})
}

// stopAndWait closes stop and waits for the loops to finish their last
// send.
func (l *sendLoad) stopAndWait(t *testing.T) {
	close(l.stop)
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Errorf("the load did not stop within 60s of being told to: %s", l.summary())
	}
}

// follower follows one client's incremental syncs and stitches each
// room's timeline: a limited timeline's gap is filled from /messages at
// prev_batch back to the last event already seen.
type follower struct {
	s      *syncer
	rooms  []id.RoomID
	anchor map[id.RoomID]id.EventID   // newest event of the initial sync
	last   map[id.RoomID]id.EventID   // newest event stitched so far
	got    map[id.RoomID][]id.EventID // stitched events after anchor
}

func newFollower(t *testing.T, ctx context.Context, c *mautrix.Client, rooms []id.RoomID) *follower {
	t.Helper()
	s, initial := newSyncer(t, ctx, c, `{"room":{"timeline":{"limit":10}}}`)
	f := &follower{s: s, rooms: rooms, anchor: map[id.RoomID]id.EventID{}, last: map[id.RoomID]id.EventID{},
		got: map[id.RoomID][]id.EventID{}}
	for _, room := range rooms {
		tl := joinedRoom(t, initial, room).Timeline.Events
		if len(tl) == 0 {
			t.Fatalf("%s: initial sync has an empty timeline for %s", c.UserID, room)
		}
		f.anchor[room] = tl[len(tl)-1].ID
		f.last[room] = f.anchor[room]
	}
	return f
}

// until syncs incrementally, stitching, until cond holds; it fails the
// test after waitLimit.
func (f *follower) until(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: incremental syncs did not show %s within %v", f.s.c.UserID, what, waitLimit)
		}
		resp := f.s.next(t, ctx, pollTimeout)
		for _, room := range f.rooms {
			jr := resp.Rooms.Join[room]
			if jr == nil {
				continue
			}
			batch := jr.Timeline.Events
			if jr.Timeline.Limited {
				if jr.Timeline.PrevBatch == "" {
					t.Fatalf("%s: limited timeline without prev_batch", room)
				}
				gap, found := messagesFrom(t, ctx, f.s.c, room, jr.Timeline.PrevBatch, 100,
					func(ev *event.Event) bool { return ev.ID == f.last[room] })
				if !found {
					t.Fatalf("%s: /messages from prev_batch %q never reached the last stitched event %s", room, jr.Timeline.PrevBatch, f.last[room])
				}
				batch = append(reversed(gap), batch...)
			}
			for _, ev := range batch {
				f.got[room] = append(f.got[room], ev.ID)
			}
			if len(batch) > 0 {
				f.last[room] = batch[len(batch)-1].ID
			}
		}
	}
}

func (f *follower) has(room id.RoomID, e id.EventID) bool { return slices.Contains(f.got[room], e) }

// wantTail checks the stitched events equal the room's timeline (all,
// oldest first) after the anchor.
func (f *follower) wantTail(t *testing.T, worker string, room id.RoomID, all []id.EventID) {
	t.Helper()
	i := slices.Index(all, f.anchor[room])
	if i < 0 {
		t.Errorf("%s: /messages of %s lacks the initial sync's newest event %s", worker, room, f.anchor[room])
		return
	}
	if want := all[i+1:]; !slices.Equal(f.got[room], want) {
		t.Errorf("%s: incremental syncs of %s since before the fault (%d events, stitched) differ from the timeline after that point (%d events)\n got %v\nwant %v",
			worker, room, len(f.got[room]), len(want), f.got[room], want)
	}
}
