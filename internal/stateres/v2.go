package stateres

import (
	"cmp"
	"container/heap"
	"context"
	"fmt"
	"math"
	"slices"

	"ganglion/internal/eventauth"
	"ganglion/internal/events"
)

const (
	typeCreate      = "m.room.create"
	typePowerLevels = "m.room.power_levels"
	typeJoinRules   = "m.room.join_rules"
	typeMember      = "m.room.member"
)

var powerLevelsKey = StateKey{Type: typePowerLevels}

// resolveV2 is state resolution v2 (room versions 2–11) and, with v21,
// MSC4297's v2.1 (room version 12).
func resolveV2(ctx context.Context, rv *events.RoomVersion, sets []map[StateKey]string, f EventFetcher, v21 bool) (map[StateKey]string, error) {
	unconflicted, conflicted, _ := split(sets)
	if len(conflicted) == 0 {
		return unconflicted, nil
	}
	l := newLoader(f, 4*len(conflicted)+16)
	if err := l.load(ctx, conflicted); err != nil {
		return nil, err
	}
	for _, id := range conflicted {
		if l.get(id) == nil {
			return nil, fmt.Errorf("%w: conflicted state event %s", ErrMissingEvent, id)
		}
	}

	full, fullIDs, err := fullConflictedSet(ctx, l, sets, unconflicted, conflicted, v21)
	if err != nil {
		return nil, err
	}

	create, err := impliedCreate(ctx, rv, l, l.get(conflicted[0]))
	if err != nil {
		return nil, err
	}

	// Step 1: the power events of the full conflicted set and the full
	// conflicted set events of their auth chains, in reverse topological
	// power ordering.
	sortedPower, err := reverseTopologicalPowerOrder(ctx, rv, l, full, fullIDs, create)
	if err != nil {
		return nil, err
	}

	// Step 2: iterative auth checks over them, from the unconflicted state
	// (v2) or from nothing (v2.1: unconflicted state is no longer trusted to
	// authorise the conflicted power events, MSC4297).
	var partial map[StateKey]string
	if v21 {
		partial = make(map[StateKey]string, len(unconflicted)+len(fullIDs))
	} else {
		partial = maps1(unconflicted)
	}
	if err := iterativeAuthChecks(ctx, l, sortedPower, partial, create); err != nil {
		return nil, err
	}

	// Step 3: the rest of the full conflicted set in mainline order of the
	// power levels event step 2 resolved.
	inPower := make(map[string]struct{}, len(sortedPower))
	for _, id := range sortedPower {
		inPower[id] = struct{}{}
	}
	leftover := make([]string, 0, len(fullIDs)-len(sortedPower))
	for _, id := range fullIDs {
		if _, ok := inPower[id]; !ok {
			leftover = append(leftover, id)
		}
	}
	sorted, err := mainlineOrder(ctx, l, partial[powerLevelsKey], leftover)
	if err != nil {
		return nil, err
	}

	// Step 4: iterative auth checks over those, from step 2's state.
	if err := iterativeAuthChecks(ctx, l, sorted, partial, create); err != nil {
		return nil, err
	}

	// Step 5: the unconflicted state wins over anything resolved.
	for k, v := range unconflicted {
		partial[k] = v
	}
	return partial, nil
}

// fullConflictedSet is the conflicted state set ∪ the auth difference (∪
// the conflicted state subgraph in v2.1), without events the fetcher does
// not have; also as a sorted list.
func fullConflictedSet(ctx context.Context, l *loader, sets []map[StateKey]string, unconflicted map[StateKey]string, conflicted []string, v21 bool) (map[string]struct{}, []string, error) {
	// The full conflicted set: conflicted state ∪ auth difference
	// (∪ conflicted state subgraph in v2.1).
	full := make(map[string]struct{}, 2*len(conflicted))
	for _, id := range conflicted {
		full[id] = struct{}{}
	}
	diff, err := authDifference(ctx, l.f, sets, unconflicted)
	if err != nil {
		return nil, nil, err
	}
	for _, id := range diff {
		full[id] = struct{}{}
	}
	if v21 {
		sub, err := conflictedSubgraph(ctx, l, conflicted)
		if err != nil {
			return nil, nil, err
		}
		for _, id := range sub {
			full[id] = struct{}{}
		}
	}
	fullIDs := make([]string, 0, len(full))
	for id := range full {
		fullIDs = append(fullIDs, id)
	}
	if err := l.load(ctx, fullIDs); err != nil {
		return nil, nil, err
	}
	// Auth-difference events the fetcher does not have (or has rejected)
	// cannot take part; the conflicted ones were checked above.
	fullIDs = fullIDs[:0]
	for id := range full {
		if ev := l.get(id); ev == nil || !ev.IsState() {
			delete(full, id)
			continue
		}
		fullIDs = append(fullIDs, id)
	}
	slices.Sort(fullIDs)

	return full, fullIDs, nil
}

// impliedCreate is the room's create event in room versions whose events do
// not list it among their auth events (MSC4291: the room id is the create
// event's reference hash). Nil in other versions: their events carry it.
func impliedCreate(ctx context.Context, rv *events.RoomVersion, l *loader, anyEvent *events.Event) (*events.Event, error) {
	if !rv.RoomIDFromCreate || anyEvent == nil {
		return nil, nil
	}
	id, ok := events.CreateEventIDForRoom(anyEvent.RoomID())
	if !ok {
		return nil, nil
	}
	if err := l.load(ctx, []string{id}); err != nil {
		return nil, err
	}
	return l.get(id), nil
}

// authDifference is the spec's auth difference: the events in the full auth
// chain (the state events and their auth chains) of some state set but not
// of every one. Events of the unconflicted state and their auth chains are
// in every set's chain, so each set's chain is only computed from its
// conflicted events and the common part subtracted once.
func authDifference(ctx context.Context, f EventFetcher, sets []map[StateKey]string, unconflicted map[StateKey]string) ([]string, error) {
	uIDs := make([]string, 0, len(unconflicted))
	for _, id := range unconflicted {
		uIDs = append(uIDs, id)
	}
	chainU, err := f.AuthChain(ctx, uIDs)
	if err != nil {
		return nil, fmt.Errorf("auth chain of the unconflicted state: %w", err)
	}
	common := make(map[string]struct{}, len(uIDs)+len(chainU))
	for _, id := range uIDs {
		common[id] = struct{}{}
	}
	for _, id := range chainU {
		common[id] = struct{}{}
	}

	// For each id: in how many sets' chains it is, and the last set that
	// counted it (chains may list an id twice; each set counts once).
	type mark struct{ count, last int }
	marks := map[string]mark{}
	var ci []string
	for i, s := range sets {
		ci = ci[:0]
		for k, id := range s {
			if _, ok := unconflicted[k]; !ok {
				ci = append(ci, id)
			}
		}
		chain, err := f.AuthChain(ctx, ci)
		if err != nil {
			return nil, fmt.Errorf("auth chain of state set %d: %w", i, err)
		}
		for _, ids := range [2][]string{ci, chain} {
			for _, id := range ids {
				m := marks[id]
				if m.last == i+1 {
					continue
				}
				m.last = i + 1
				m.count++
				marks[id] = m
			}
		}
	}
	var diff []string
	for id, m := range marks {
		if _, ok := common[id]; ok || m.count == len(sets) {
			continue
		}
		diff = append(diff, id)
	}
	return diff, nil
}

// conflictedSubgraph is MSC4297's conflicted state subgraph: the events on
// some auth_events path from one conflicted state event to another, i.e.
// those that are both in the auth chain of a conflicted event and have a
// conflicted event in their own auth chain (or are conflicted). It is found
// by loading the auth chain of the conflicted events once and walking its
// auth edges backwards from the conflicted events.
func conflictedSubgraph(ctx context.Context, l *loader, conflicted []string) ([]string, error) {
	chain, err := l.f.AuthChain(ctx, conflicted)
	if err != nil {
		return nil, fmt.Errorf("auth chain of the conflicted state: %w", err)
	}
	if err := l.load(ctx, chain); err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(conflicted)+len(chain))
	idx := make(map[string]int32, cap(ids))
	for _, list := range [2][]string{conflicted, chain} {
		for _, id := range list {
			if _, dup := idx[id]; !dup {
				idx[id] = int32(len(ids))
				ids = append(ids, id)
			}
		}
	}
	// children[j]: the nodes listing node j among their auth events.
	children := make([][]int32, len(ids))
	for i, id := range ids {
		ev := l.get(id)
		if ev == nil {
			continue
		}
		for _, a := range ev.AuthEventIDs() {
			if j, ok := idx[a]; ok && j != int32(i) {
				children[j] = append(children[j], int32(i))
			}
		}
	}
	marked := make([]bool, len(ids))
	queue := make([]int32, 0, len(ids))
	for i := range conflicted {
		j := idx[conflicted[i]]
		if !marked[j] {
			marked[j] = true
			queue = append(queue, j)
		}
	}
	for len(queue) > 0 {
		j := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		for _, c := range children[j] {
			if !marked[c] {
				marked[c] = true
				queue = append(queue, c)
			}
		}
	}
	var out []string
	for i, m := range marked {
		if m {
			out = append(out, ids[i])
		}
	}
	return out, nil
}

// isPowerEvent: power levels, join rules, and kicks and bans (a leave or
// ban whose sender is not its target). The create event counts too, as in
// Synapse; it is only ever conflicted between two different rooms' states.
func isPowerEvent(ev *events.Event) bool {
	switch ev.Type() {
	case typePowerLevels, typeJoinRules, typeCreate:
		return ev.StateKeyEquals("")
	case typeMember:
		switch ev.Membership() {
		case "leave", "ban":
			return !ev.StateKeyEquals(ev.Sender())
		}
	}
	return false
}

// sortNode is one event of a topological sort with its tie-break key.
type sortNode struct {
	id    string
	power int64
	ts    int64
	// outdeg counts the node's auth events in the graph not yet emitted;
	// parents are the nodes naming this one among their auth events.
	outdeg  int
	parents []int32
}

// nodeHeap orders ready nodes by the spec's tie-break: the sender's power
// level descending, then origin_server_ts ascending, then event_id.
type nodeHeap struct {
	nodes []sortNode
	idx   []int32
}

func (h *nodeHeap) Len() int { return len(h.idx) }
func (h *nodeHeap) Less(i, j int) bool {
	a, b := &h.nodes[h.idx[i]], &h.nodes[h.idx[j]]
	if a.power != b.power {
		return a.power > b.power
	}
	if a.ts != b.ts {
		return a.ts < b.ts
	}
	return a.id < b.id
}
func (h *nodeHeap) Swap(i, j int) { h.idx[i], h.idx[j] = h.idx[j], h.idx[i] }
func (h *nodeHeap) Push(x any)    { h.idx = append(h.idx, x.(int32)) }
func (h *nodeHeap) Pop() any {
	x := h.idx[len(h.idx)-1]
	h.idx = h.idx[:len(h.idx)-1]
	return x
}

// reverseTopologicalPowerOrder builds the graph of the power events of the
// full conflicted set and, as Synapse does, of the full conflicted set
// events reachable from them through auth_events links that stay inside the
// full conflicted set, then sorts it with Kahn's algorithm: an event comes
// after its auth events, ties broken by nodeHeap's key.
func reverseTopologicalPowerOrder(ctx context.Context, rv *events.RoomVersion, l *loader, full map[string]struct{}, fullIDs []string, create *events.Event) ([]string, error) {
	var nodes []sortNode
	idx := map[string]int32{}
	addNode := func(id string) int32 {
		if i, ok := idx[id]; ok {
			return i
		}
		i := int32(len(nodes))
		idx[id] = i
		nodes = append(nodes, sortNode{id: id})
		return i
	}
	var queue []int32
	for _, id := range fullIDs {
		if isPowerEvent(l.get(id)) {
			queue = append(queue, addNode(id))
		}
	}
	for len(queue) > 0 {
		i := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		ev := l.get(nodes[i].id)
		for k, a := range ev.AuthEventIDs() {
			if _, ok := full[a]; !ok || slices.Contains(ev.AuthEventIDs()[:k], a) || a == ev.EventID() {
				continue
			}
			_, known := idx[a]
			j := addNode(a)
			nodes[i].outdeg++
			nodes[j].parents = append(nodes[j].parents, i)
			if !known {
				queue = append(queue, j)
			}
		}
	}
	if len(nodes) == 0 {
		return nil, nil
	}

	// The tie-break needs each sender's power level from the event's own
	// auth events.
	evs := make([]*events.Event, len(nodes))
	for i := range nodes {
		evs[i] = l.get(nodes[i].id)
	}
	if err := l.load(ctx, authEventIDs(nil, evs)); err != nil {
		return nil, err
	}
	levels := powerCache{rv: rv, create: create, l: l, byPL: map[string]eventauth.PowerLevels{}}
	for i := range nodes {
		nodes[i].power = levels.senderLevel(evs[i])
		nodes[i].ts = evs[i].OriginServerTS()
	}

	h := &nodeHeap{nodes: nodes, idx: make([]int32, 0, len(nodes))}
	for i := range nodes {
		if nodes[i].outdeg == 0 {
			h.idx = append(h.idx, int32(i))
		}
	}
	heap.Init(h)
	out := make([]string, 0, len(nodes))
	emitted := make([]bool, len(nodes))
	for h.Len() > 0 {
		i := heap.Pop(h).(int32)
		emitted[i] = true
		out = append(out, nodes[i].id)
		for _, p := range nodes[i].parents {
			nodes[p].outdeg--
			if nodes[p].outdeg == 0 {
				heap.Push(h, p)
			}
		}
	}
	// Only a cycle of auth_events leaves nodes behind, possible only with
	// sender-chosen event ids (room versions 1 and 2) and never in a valid
	// room. They are appended in key order so the result stays deterministic.
	if len(out) < len(nodes) {
		var rest []int32
		for i := range nodes {
			if !emitted[i] {
				rest = append(rest, int32(i))
			}
		}
		slices.SortFunc(rest, func(a, b int32) int {
			x, y := &nodes[a], &nodes[b]
			if c := cmp.Compare(y.power, x.power); c != 0 {
				return c
			}
			if c := cmp.Compare(x.ts, y.ts); c != 0 {
				return c
			}
			return cmp.Compare(x.id, y.id)
		})
		for _, i := range rest {
			out = append(out, nodes[i].id)
		}
	}
	return out, nil
}

// powerCache computes senders' power levels as the ordering needs them:
// from the m.room.power_levels event among the event's auth events, or,
// without one, 100 for the room's creator and 0 for everyone else (Synapse's
// reading of "the sender's power level as determined by the auth events").
// Parsed power levels are cached per power levels event.
type powerCache struct {
	rv     *events.RoomVersion
	create *events.Event
	l      *loader
	byPL   map[string]eventauth.PowerLevels
}

func (c *powerCache) senderLevel(ev *events.Event) int64 {
	var pl, create *events.Event
	for _, a := range ev.AuthEventIDs() {
		aev := c.l.get(a)
		if aev == nil || !aev.StateKeyEquals("") {
			continue
		}
		switch aev.Type() {
		case typePowerLevels:
			if pl == nil {
				pl = aev
			}
		case typeCreate:
			if create == nil {
				create = aev
			}
		}
	}
	if create == nil {
		create = c.create
	}
	if create != nil && eventauth.IsCreator(create, ev.Sender()) && c.rv.PrivilegedCreators {
		return math.MaxInt64
	}
	key := ""
	if pl != nil {
		key = pl.EventID()
	} else if create != nil {
		key = "create:" + create.EventID()
	}
	levels, ok := c.byPL[key]
	if !ok {
		levels = eventauth.LevelsFrom(pl, create, c.rv)
		c.byPL[key] = levels
	}
	return levels.UserLevel(ev.Sender())
}

// iterativeAuthChecks applies the events ids, in order, to partial: each
// event that the auth rules allow against authView (partial over its own
// auth events) replaces its key; the others are left out. partial is
// updated in place.
func iterativeAuthChecks(ctx context.Context, l *loader, ids []string, partial map[StateKey]string, create *events.Event) error {
	if len(ids) == 0 {
		return nil
	}
	evs := make([]*events.Event, 0, len(ids))
	for _, id := range ids {
		if ev := l.get(id); ev != nil {
			evs = append(evs, ev)
		}
	}
	// One batch for everything the checks can consult: the events' own
	// auth events and the partial state's events for their auth types.
	need := authEventIDs(make([]string, 0, 4*len(evs)), evs)
	for _, ev := range evs {
		for _, k := range eventauth.AuthEventsNeeded(ev.Type(), ev.StateKey(), ev.Sender(), ev.Content(), ev.Version()) {
			if id, ok := partial[k]; ok {
				need = append(need, id)
			}
		}
		if ev.Version() != nil && ev.Version().RoomIDFromCreate {
			if id, ok := partial[StateKey{Type: typeCreate}]; ok {
				need = append(need, id)
			}
		}
	}
	if err := l.load(ctx, need); err != nil {
		return err
	}
	view := &authView{partial: partial, create: create, l: l}
	for _, ev := range evs {
		view.own = view.own[:0]
		for _, a := range ev.AuthEventIDs() {
			if aev := l.get(a); aev != nil {
				view.own = append(view.own, aev)
			}
		}
		if eventauth.Check(ev, view) == nil {
			partial[StateKey{Type: ev.Type(), StateKey: *ev.StateKey()}] = ev.EventID()
		}
	}
	return nil
}

// mainlineOrder sorts ids by their position relative to the mainline of
// the power levels event plID (that event, its power levels auth event, and
// so on back to the room's first one): an event's position is that of the
// first mainline event met by following power levels auth events from it
// (the event itself included), 0 when none is met. Ties go to the earlier
// origin_server_ts, then the smaller event id.
func mainlineOrder(ctx context.Context, l *loader, plID string, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	// plOf loads ev's auth events and returns its power levels one's id.
	plOf := func(ev *events.Event) (string, error) {
		if err := l.load(ctx, ev.AuthEventIDs()); err != nil {
			return "", err
		}
		for _, a := range ev.AuthEventIDs() {
			if aev := l.get(a); aev != nil && aev.Type() == typePowerLevels && aev.StateKeyEquals("") {
				return a, nil
			}
		}
		return "", nil
	}

	var chain []string
	for cur := plID; cur != "" && !slices.Contains(chain, cur); {
		chain = append(chain, cur)
		if err := l.load(ctx, []string{cur}); err != nil {
			return nil, err
		}
		ev := l.get(cur)
		if ev == nil {
			break
		}
		next, err := plOf(ev)
		if err != nil {
			return nil, err
		}
		cur = next
	}
	position := make(map[string]int, len(chain)+len(ids))
	for i, id := range chain {
		position[id] = len(chain) - i // the oldest is 1
	}

	evs := make([]*events.Event, len(ids))
	for i, id := range ids {
		evs[i] = l.get(id)
	}
	if err := l.load(ctx, authEventIDs(nil, evs)); err != nil {
		return nil, err
	}
	// memo holds positions found by earlier walks, for every event passed.
	memo := map[string]int{}
	var path []string
	depthOf := func(id string) (int, error) {
		path = path[:0]
		d := 0
		for cur := id; cur != ""; {
			if p, ok := position[cur]; ok {
				d = p
				break
			}
			if p, ok := memo[cur]; ok {
				d = p
				break
			}
			if slices.Contains(path, cur) {
				break // an auth cycle: only forged v1-format ids make one
			}
			path = append(path, cur)
			ev := l.get(cur)
			if ev == nil {
				if err := l.load(ctx, []string{cur}); err != nil {
					return 0, err
				}
				if ev = l.get(cur); ev == nil {
					break
				}
			}
			next, err := plOf(ev)
			if err != nil {
				return 0, err
			}
			cur = next
		}
		for _, p := range path {
			memo[p] = d
		}
		return d, nil
	}
	type keyed struct {
		id    string
		depth int
		ts    int64
	}
	ks := make([]keyed, len(ids))
	for i, id := range ids {
		d, err := depthOf(id)
		if err != nil {
			return nil, err
		}
		ks[i] = keyed{id: id, depth: d, ts: evs[i].OriginServerTS()}
	}
	slices.SortFunc(ks, func(a, b keyed) int {
		if c := cmp.Compare(a.depth, b.depth); c != 0 {
			return c
		}
		if c := cmp.Compare(a.ts, b.ts); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = k.id
	}
	return out, nil
}
