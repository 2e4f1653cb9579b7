package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

func textMessage(body string) map[string]any {
	return map[string]any{"msgtype": "m.text", "body": body}
}

// send: users split evenly across rooms (user i in room i % rooms) all send
// at once, each its messages one after another. The figure is messages/s
// over the whole phase and the latency of each PUT.
func (s *scenarioRun) send(ctx context.Context) error {
	nu, nr, nm := s.o.sendUsers, s.o.sendRooms, s.o.sendMessages
	s.res.Params = map[string]any{"users": nu, "rooms": nr, "messages_per_user": nm}
	users, err := s.users(ctx, nu)
	if err != nil {
		return err
	}
	rooms := make([]string, nr)
	s.prog.phase("setup: create rooms", nr)
	if err := forEach(ctx, nr, s.o.concurrency, func(ctx context.Context, j int) error {
		id, err := s.createRoom(ctx, users[j], "public_chat", fmt.Sprintf("bench send %d", j))
		rooms[j] = id
		s.prog.add(1)
		return err
	}); err != nil {
		return err
	}
	// Users 0..nr-1 created the rooms they belong in; the rest join.
	s.prog.phase("setup: join rooms", nu-nr)
	if err := forEach(ctx, nu-nr, s.o.concurrency, func(ctx context.Context, k int) error {
		i := nr + k
		s.prog.add(1)
		return s.joinRoom(ctx, users[i], rooms[i%nr])
	}); err != nil {
		return err
	}

	var lat samples
	var sent atomic.Int64
	d := s.measure(ctx, "send", nu*nm, func(ctx context.Context) {
		var wg sync.WaitGroup
		for i, u := range users {
			wg.Go(func() {
				for k := range nm {
					if ctx.Err() != nil {
						return
					}
					t0 := time.Now()
					_, err := s.sendMessage(ctx, u, rooms[i%nr], textMessage(fmt.Sprintf("send %d from user %d", k, i)))
					if err != nil {
						s.errs.add(err)
						continue
					}
					lat.add(time.Since(t0))
					sent.Add(1)
					s.prog.add(1)
				}
			})
		}
		wg.Wait()
	})
	s.setResult(int(sent.Load()), d, "messages/s", lat.all())
	return ctx.Err()
}

// fanoutTracker records which member received which message when. Message
// seq 0 is the warm-up: it proves every member's long-poll loop is running
// and is not part of the figures.
type fanoutTracker struct {
	prog *progress

	mu         sync.Mutex
	members    int
	sentAt     []time.Time
	seen       [][]bool // [member][seq]
	received   []int
	done       []chan struct{} // closed when every member has seq
	delays     []time.Duration // of measured messages
	last       time.Time       // latest measured delivery
	duplicates int
	strays     int // sequence numbers never sent
}

func newFanoutTracker(members, messages int, prog *progress) *fanoutTracker {
	t := &fanoutTracker{prog: prog, members: members, sentAt: make([]time.Time, messages),
		seen: make([][]bool, members), received: make([]int, messages), done: make([]chan struct{}, messages)}
	for i := range t.seen {
		t.seen[i] = make([]bool, messages)
	}
	for i := range t.done {
		t.done[i] = make(chan struct{})
	}
	return t
}

func (t *fanoutTracker) sent(seq int, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sentAt[seq] = at
}

func (t *fanoutTracker) deliver(member, seq int, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if seq < 0 || seq >= len(t.sentAt) || t.sentAt[seq].IsZero() {
		t.strays++
		return
	}
	if t.seen[member][seq] {
		t.duplicates++
		return
	}
	t.seen[member][seq] = true
	t.received[seq]++
	if seq > 0 {
		t.delays = append(t.delays, at.Sub(t.sentAt[seq]))
		t.last = later(t.last, at)
		t.prog.add(1)
	}
	if t.received[seq] == t.members {
		close(t.done[seq])
	}
}

func (t *fanoutTracker) count(seq int) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.received[seq]
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// fanoutContent is what the sender puts in each message: the run prefix
// and a sequence number, so a member can tell which message it received.
type fanoutContent struct {
	MsgType string `json:"msgtype"`
	Body    string `json:"body"`
	Run     string `json:"bench_run"`
	Seq     int    `json:"bench_seq"`
}

const (
	fanoutPollMS = 30000
	// Initial sync: only the newest event per room; the incremental
	// limit is generous so a burst never comes back "limited".
	fanoutInitialFilter = `{"room":{"timeline":{"limit":1}},"presence":{"not_types":["*"]}}`
	fanoutPollFilter    = `{"room":{"timeline":{"limit":50}},"presence":{"not_types":["*"]}}`
)

// fanout: members of one room each hold a long-poll /sync; one sender
// sends messages one at a time, waiting (bounded) until every member has
// message k before sending k+1. The figure is the delay from the start of
// the send request to the member's /sync returning with the event.
func (s *scenarioRun) fanout(ctx context.Context) error {
	nm, msgs := s.o.fanoutMembers, s.o.fanoutMessages
	s.res.Params = map[string]any{"members": nm, "messages": msgs, "poll_timeout_ms": fanoutPollMS}
	users, err := s.users(ctx, nm+1)
	if err != nil {
		return err
	}
	sender, members := users[0], users[1:]
	roomID, err := s.createRoom(ctx, sender, "public_chat", "bench fanout")
	if err != nil {
		return err
	}
	s.prog.phase("setup: join", nm)
	if err := forEach(ctx, nm, s.o.concurrency, func(ctx context.Context, i int) error {
		s.prog.add(1)
		return s.joinRoom(ctx, members[i], roomID)
	}); err != nil {
		return err
	}
	since := make([]string, nm)
	s.prog.phase("setup: initial sync", nm)
	if err := forEach(ctx, nm, s.o.concurrency, func(ctx context.Context, i int) error {
		ans, _, err := s.sync(ctx, members[i], "", fanoutInitialFilter, 0)
		if err != nil {
			return err
		}
		since[i] = ans.NextBatch
		s.prog.add(1)
		return nil
	}); err != nil {
		return err
	}

	tr := newFanoutTracker(nm, msgs+1, s.prog)
	var limited atomic.Int64
	memberCtx, stopMembers := context.WithCancel(ctx)
	defer stopMembers()
	var polls sync.WaitGroup
	// Each message wakes every member at least once; the rest is room for
	// spurious wake-ups and retries. The context is the real bound.
	maxPolls := 10*(msgs+1) + 1000
	for mi, m := range members {
		polls.Go(func() {
			since := since[mi]
			for range maxPolls {
				if memberCtx.Err() != nil {
					return
				}
				ans, _, err := s.sync(memberCtx, m, since, fanoutPollFilter, fanoutPollMS)
				at := time.Now()
				if err != nil {
					if isCanceled(memberCtx, err) {
						return
					}
					s.errs.add(err)
					if pause(memberCtx, 250*time.Millisecond) != nil {
						return
					}
					continue
				}
				since = ans.NextBatch
				room, ok := ans.Rooms.Join[roomID]
				if !ok {
					continue
				}
				if room.Timeline.Limited {
					limited.Add(1)
				}
				for _, ev := range room.Timeline.Events {
					if ev.Type != "m.room.message" || ev.Sender != sender.id {
						continue
					}
					var c fanoutContent
					if json.Unmarshal(ev.Content, &c) != nil || c.Run != s.o.prefix {
						continue
					}
					tr.deliver(mi, c.Seq, at)
				}
			}
		})
	}

	var sendLat samples
	// sendOne sends message seq and waits (bounded) until every member has
	// it; false if that did not happen.
	sendOne := func(ctx context.Context, seq int) bool {
		t0 := time.Now()
		tr.sent(seq, t0)
		_, err := s.sendMessage(ctx, sender, roomID, fanoutContent{
			MsgType: "m.text", Body: fmt.Sprintf("fanout %d", seq), Run: s.o.prefix, Seq: seq})
		if err != nil {
			s.errs.add(err)
			return false
		}
		if seq > 0 {
			sendLat.add(time.Since(t0))
		}
		if !waitOrDone(ctx, tr.done[seq], s.o.fanoutWait) {
			s.errs.add(fmt.Errorf("message %d: %d of %d members had it after %s", seq, tr.count(seq), nm, s.o.fanoutWait))
			return false
		}
		return true
	}
	// A healthy server delivers every message; one that stalls would cost
	// up to timeout + fanout-wait per remaining message, so a few failed
	// messages end the scenario.
	const maxFailed = 3
	failed := 0
	var stalled error
	s.prog.phase("setup: warm-up message", 0)
	if !sendOne(ctx, 0) {
		failed++
	}

	var first time.Time
	s.measure(ctx, "deliver", nm*msgs, func(ctx context.Context) {
		first = time.Now()
		for seq := 1; seq <= msgs && ctx.Err() == nil; seq++ {
			if sendOne(ctx, seq) {
				continue
			}
			if failed++; failed >= maxFailed {
				stalled = fmt.Errorf("gave up at message %d of %d: %d messages were not delivered to every member in time (see error_samples)", seq, msgs, failed)
				return
			}
		}
	})
	stopMembers()
	polls.Wait()

	tr.mu.Lock()
	defer tr.mu.Unlock()
	missed, unsent := 0, 0
	for seq, n := range tr.received {
		if tr.sentAt[seq].IsZero() {
			unsent++
			continue
		}
		missed += nm - n
	}
	if missed > 0 {
		s.errs.add(fmt.Errorf("%d deliveries missing at the end", missed))
	}
	if tr.duplicates > 0 {
		s.errs.add(fmt.Errorf("%d messages delivered twice to the same member", tr.duplicates))
	}
	if tr.strays > 0 {
		s.errs.add(fmt.Errorf("%d deliveries of messages never sent", tr.strays))
	}
	var d time.Duration
	if !tr.last.IsZero() {
		d = tr.last.Sub(first)
	}
	s.setResult(len(tr.delays), d, "deliveries/s", tr.delays)
	s.res.Extra["expected_deliveries"] = nm * msgs
	s.res.Extra["missed"] = missed
	s.res.Extra["unsent_messages"] = unsent
	s.res.Extra["duplicates"] = tr.duplicates
	s.res.Extra["limited_timelines"] = limited.Load()
	s.res.Extra["send_latency_ms"] = percentiles(sendLat.all())
	if stalled != nil {
		return stalled
	}
	return ctx.Err()
}

// initialSync: one user in rooms rooms with events messages each; the
// figure is the time and size of a full initial /sync (no filter, no
// since), repeated, the median being the headline.
func (s *scenarioRun) initialSync(ctx context.Context) error {
	nr, ne, reps := s.o.syncRooms, s.o.syncEvents, s.o.syncRepeats
	s.res.Params = map[string]any{"rooms": nr, "events_per_room": ne, "repeats": reps}
	users, err := s.users(ctx, 1)
	if err != nil {
		return err
	}
	u := users[0]
	s.prog.phase("setup: fill rooms", nr*ne)
	if err := forEach(ctx, nr, s.o.concurrency, func(ctx context.Context, j int) error {
		roomID, err := s.createRoom(ctx, u, "private_chat", fmt.Sprintf("bench initial_sync %d", j))
		if err != nil {
			return err
		}
		for k := range ne {
			if _, err := s.sendMessage(ctx, u, roomID, textMessage(fmt.Sprintf("history %d", k))); err != nil {
				return err
			}
			s.prog.add(1)
		}
		return nil
	}); err != nil {
		return err
	}

	var lat []time.Duration
	var sizes []int
	roomsSeen, events := 0, 0
	d := s.measure(ctx, "initial sync", reps, func(ctx context.Context) {
		for range reps {
			if ctx.Err() != nil {
				return
			}
			t0 := time.Now()
			ans, n, err := s.sync(ctx, u, "", "", 0)
			el := time.Since(t0)
			if err != nil {
				s.errs.add(err)
				continue
			}
			lat = append(lat, el)
			sizes = append(sizes, n)
			roomsSeen, events = len(ans.Rooms.Join), 0
			for _, r := range ans.Rooms.Join {
				events += len(r.Timeline.Events)
			}
			if roomsSeen < nr {
				s.errs.add(fmt.Errorf("initial sync lists %d joined rooms, want %d", roomsSeen, nr))
			}
			s.prog.add(1)
		}
	})
	s.setResult(len(lat), d, "syncs/s", lat)
	if len(sizes) > 0 {
		sort.Ints(sizes)
		s.res.Extra["median_bytes"] = sizes[(len(sizes)-1)/2]
	}
	if s.res.LatencyMS != nil {
		s.res.Extra["median_ms"] = s.res.LatencyMS.P50
	}
	s.res.Extra["rooms_in_sync"] = roomsSeen
	s.res.Extra["timeline_events_in_sync"] = events
	return ctx.Err()
}

// joinBatch is one batch of the join scenario.
type joinBatch struct {
	MembersBefore int          `json:"members_before"`
	Joins         int          `json:"joins"`
	MS            float64      `json:"ms"`
	JoinsPerS     float64      `json:"joins_per_s"`
	LatencyMS     *Percentiles `json:"latency_ms"`
}

// join: users join one public room one at a time; the figure is joins/s
// and, per batch, how joining slows as the room grows (last batch's mean
// join time over the first's).
func (s *scenarioRun) join(ctx context.Context) error {
	nj, bs := s.o.joinUsers, s.o.joinBatch
	s.res.Params = map[string]any{"users": nj, "batch": bs}
	users, err := s.users(ctx, nj+1)
	if err != nil {
		return err
	}
	roomID, err := s.createRoom(ctx, users[0], "public_chat", "bench join")
	if err != nil {
		return err
	}
	var all []time.Duration
	var batches []joinBatch
	d := s.measure(ctx, "join", nj, func(ctx context.Context) {
		members := 1 // the creator
		for start := 1; start <= nj && ctx.Err() == nil; start += bs {
			b := joinBatch{MembersBefore: members}
			var lat []time.Duration
			t0 := time.Now()
			for i := start; i < start+bs && i <= nj && ctx.Err() == nil; i++ {
				j0 := time.Now()
				if err := s.joinRoom(ctx, users[i], roomID); err != nil {
					s.errs.add(err)
					continue
				}
				lat = append(lat, time.Since(j0))
				s.prog.add(1)
			}
			el := time.Since(t0)
			b.Joins, b.MS, b.LatencyMS = len(lat), ms(el), percentiles(lat)
			if el > 0 {
				b.JoinsPerS = round2(float64(len(lat)) / el.Seconds())
			}
			members += len(lat)
			batches = append(batches, b)
			all = append(all, lat...)
		}
	})
	s.setResult(len(all), d, "joins/s", all)
	s.res.Extra["batches"] = batches
	if len(batches) > 0 {
		f, l := batches[0], batches[len(batches)-1]
		s.res.Extra["first_batch_ms"] = f.MS
		s.res.Extra["last_batch_ms"] = l.MS
		// Mean join time, so a short last batch compares fairly.
		if f.Joins > 0 && l.Joins > 0 && f.MS > 0 {
			s.res.Extra["last_first_ratio"] = round2((l.MS / float64(l.Joins)) / (f.MS / float64(f.Joins)))
		}
	}
	return ctx.Err()
}

// messages: a room with events messages; paginate /messages backwards
// until the start and check every sent event came back exactly once.
func (s *scenarioRun) messages(ctx context.Context) error {
	ne, limit := s.o.messagesEvents, s.o.messagesLimit
	s.res.Params = map[string]any{"events": ne, "limit": limit}
	users, err := s.users(ctx, 1)
	if err != nil {
		return err
	}
	u := users[0]
	roomID, err := s.createRoom(ctx, u, "private_chat", "bench messages")
	if err != nil {
		return err
	}
	ids := make([]string, ne)
	s.prog.phase("setup: send", ne)
	if err := forEach(ctx, ne, s.o.concurrency, func(ctx context.Context, i int) error {
		id, err := s.sendMessage(ctx, u, roomID, textMessage(fmt.Sprintf("page me %d", i)))
		ids[i] = id
		s.prog.add(1)
		return err
	}); err != nil {
		return err
	}
	sent := make(map[string]bool, ne)
	for _, id := range ids {
		sent[id] = true
	}

	seen := map[string]int{}
	var lat []time.Duration
	returned, pages, exhausted := 0, 0, false
	// The room's creation adds a handful of state events; 50 spare pages
	// is far more than any server adds.
	maxPages := (ne+limit-1)/limit + 50
	d := s.measure(ctx, "paginate", ne, func(ctx context.Context) {
		from := ""
		for range maxPages {
			t0 := time.Now()
			ans, err := s.pageMessages(ctx, u, roomID, from, limit)
			if err != nil {
				s.errs.add(err)
				return
			}
			lat = append(lat, time.Since(t0))
			pages++
			for _, ev := range ans.Chunk {
				seen[ev.EventID]++
				returned++
				if sent[ev.EventID] && seen[ev.EventID] == 1 {
					s.prog.add(1)
				}
			}
			if len(ans.Chunk) == 0 || ans.End == "" {
				exhausted = true
				return
			}
			if ans.End == from {
				s.errs.add(fmt.Errorf("/messages page %d: end token %q did not move", pages, ans.End))
				return
			}
			from = ans.End
		}
	})
	if n, _ := s.errs.snapshot(); !exhausted && n == 0 {
		s.errs.add(fmt.Errorf("/messages not exhausted after %d pages", maxPages))
	}
	missing, dups := 0, 0
	for id := range sent {
		if seen[id] == 0 {
			missing++
		}
	}
	for _, n := range seen {
		dups += max(n-1, 0)
	}
	if missing > 0 {
		s.errs.add(fmt.Errorf("%d of the %d sent events never came back", missing, ne))
	}
	if dups > 0 {
		s.errs.add(fmt.Errorf("%d events came back more than once", dups))
	}
	s.setResult(returned, d, "events/s", lat)
	s.res.Extra["pages"] = pages
	s.res.Extra["missing"] = missing
	s.res.Extra["duplicates"] = dups
	s.res.Extra["other_events"] = len(seen) - (ne - missing)
	s.res.Extra["exact"] = exhausted && missing == 0 && dups == 0
	return ctx.Err()
}

// registerLogin: registrations, then password logins of those users, each
// with -concurrency requests in flight.
func (s *scenarioRun) registerLogin(ctx context.Context) error {
	nr, nl := s.o.registerUsers, s.o.logins
	s.res.Params = map[string]any{"registrations": nr, "logins": nl, "concurrency": s.o.concurrency, "mode": s.o.registerMode}
	var regLat, loginLat samples
	registered := make([]*user, nr)
	var dReg, dLogin time.Duration
	var logins atomic.Int64
	s.measure(ctx, "register", nr, func(ctx context.Context) {
		t0 := time.Now()
		_ = forEach(ctx, nr, s.o.concurrency, func(ctx context.Context, i int) error {
			r0 := time.Now()
			u, err := s.register(ctx, s.base(i), fmt.Sprintf("%s-%s-%d", s.o.prefix, s.res.Scenario, i))
			if err != nil {
				s.errs.add(err)
				return nil
			}
			regLat.add(time.Since(r0))
			registered[i] = u
			s.prog.add(1)
			return nil
		})
		dReg = time.Since(t0)
		var ok []*user
		for _, u := range registered {
			if u != nil {
				ok = append(ok, u)
			}
		}
		if len(ok) == 0 {
			return
		}
		s.prog.phase("login", nl)
		t0 = time.Now()
		_ = forEach(ctx, nl, s.o.concurrency, func(ctx context.Context, i int) error {
			u := ok[i%len(ok)]
			l0 := time.Now()
			if _, err := s.login(ctx, u.base, u.localpart); err != nil {
				s.errs.add(err)
				return nil
			}
			loginLat.add(time.Since(l0))
			logins.Add(1)
			s.prog.add(1)
			return nil
		})
		dLogin = time.Since(t0)
	})
	reg := regLat.all()
	s.setResult(len(reg), dReg, "registrations/s", reg)
	s.res.Extra["logins"] = logins.Load()
	if dLogin > 0 {
		s.res.Extra["logins_per_s"] = round2(float64(logins.Load()) / dLogin.Seconds())
	}
	s.res.Extra["login_latency_ms"] = percentiles(loginLat.all())
	s.res.Extra["login_duration_s"] = seconds(dLogin)
	return ctx.Err()
}
