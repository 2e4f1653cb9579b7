package inbound

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"sync"

	"ganglion/internal/events"
	"ganglion/internal/rooms"
)

// FetchLimits bound what one inbound transaction may make the server
// fetch from its origin, so that a hostile origin cannot keep it fetching.
type FetchLimits struct {
	// Events is the number of events fetched (missing events, auth chains,
	// state) for all the transaction's PDUs together.
	Events int
	// MissingEventsCalls is the number of get_missing_events requests.
	MissingEventsCalls int
	// StateCalls is the number of state_ids fallbacks.
	StateCalls int
	// AuthCalls is the number of event_auth requests (auth chains of
	// events with unknown auth events).
	AuthCalls int
	// Parallel is how many single events are fetched at once.
	Parallel int
}

func (l *FetchLimits) defaults() {
	if l.Events <= 0 {
		l.Events = 5000
	}
	if l.MissingEventsCalls <= 0 {
		l.MissingEventsCalls = 10
	}
	if l.StateCalls <= 0 {
		l.StateCalls = 5
	}
	if l.AuthCalls <= 0 {
		l.AuthCalls = 20
	}
	if l.Parallel <= 0 {
		l.Parallel = 8
	}
}

// Limits of the fetch requests themselves.
const (
	// missingEventsLimit is the limit of a get_missing_events request
	// (Synapse's).
	missingEventsLimit = 10
	// maxEarliestEvents bounds the forward extremities sent as
	// earliest_events.
	maxEarliestEvents = 20
	// stateByIDLimit: more missing state events than this are fetched with
	// one /state request instead of one /event each.
	stateByIDLimit = 50
)

// fetchBudget is what is left of a transaction's FetchLimits.
type fetchBudget struct {
	mu                                  sync.Mutex
	events, missingCalls, states, auths int
}

func newFetchBudget(l FetchLimits) *fetchBudget {
	return &fetchBudget{events: l.Events, missingCalls: l.MissingEventsCalls, states: l.StateCalls, auths: l.AuthCalls}
}

var errBudget = errors.New("transaction fetch limit reached")

func (b *fetchBudget) take(counter *int, n int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if *counter < n {
		return errBudget
	}
	*counter -= n
	return nil
}

// roomFetch stores one room's PDUs of a transaction, fetching from the
// origin the events they need: missing auth events (before the persister
// sees them: it rejects an event whose auth events are unknown), missing
// prev events (get_missing_events) and, when a gap remains, the state
// before the PDU (state_ids).
type roomFetch struct {
	s      *Server
	origin string
	roomID string
	rv     *events.RoomVersion
	budget *fetchBudget
	// chains are the auth chains fetched so far, by event: an event tried
	// again (after its gap is filled) does not cost another request.
	chains map[string][]*events.Event
}

// persist stores evs (the transaction's PDUs of the room) and returns the
// error message of each that failed. An error is a failure of the whole
// batch (the database) that the sender should retry.
func (rf *roomFetch) persist(ctx context.Context, evs []*events.Event) (map[string]string, error) {
	// Prev events first: a transaction's events are usually in order, but
	// depth puts a child after its parent whatever the order.
	evs = sortedByDepth(evs)
	out := map[string]string{}
	res, err := rf.persistBatch(ctx, evs, nil)
	if err != nil {
		return rf.failAll(ctx, evs, err)
	}
	var gaps []*events.Event
	for _, ev := range evs {
		r, ok := res[ev.EventID()]
		switch {
		case !ok:
			out[ev.EventID()] = "not stored"
		case r.Outcome == rooms.RemoteMissingPrev:
			gaps = append(gaps, ev)
		default:
			out[ev.EventID()] = outcomeError(r)
		}
	}
	for _, ev := range gaps {
		msg, err := rf.fillGap(ctx, ev)
		if err != nil {
			if ctx.Err() != nil {
				out[ev.EventID()] = "not processed in time"
				continue
			}
			return nil, err
		}
		out[ev.EventID()] = msg
	}
	return out, nil
}

// failAll answers every PDU with the deadline's error, or returns err when
// it is not the deadline.
func (rf *roomFetch) failAll(ctx context.Context, evs []*events.Event, err error) (map[string]string, error) {
	if ctx.Err() == nil {
		return nil, err
	}
	out := map[string]string{}
	for _, ev := range evs {
		out[ev.EventID()] = "not processed in time"
	}
	return out, nil
}

func sortedByDepth(evs []*events.Event) []*events.Event {
	out := append([]*events.Event(nil), evs...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Depth() < out[j].Depth() })
	return out
}

// outcomeError is the answer's error for a persister outcome ("" for an
// event that is stored and counts as accepted).
func outcomeError(r rooms.RemoteResult) string {
	switch r.Outcome {
	case rooms.RemotePersisted, rooms.RemoteDuplicate, rooms.RemoteSoftFailed, rooms.RemoteOutlier:
		return ""
	case rooms.RemoteRejected:
		if r.Error != "" {
			return "rejected: " + r.Error
		}
		return "rejected"
	case rooms.RemoteMissingPrev:
		return "prev events missing"
	case "":
		// No result for the event: it was not stored.
		return "not stored"
	}
	if r.Error != "" {
		return r.Error
	}
	return r.Outcome
}

// persistBatch fetches the auth events evs (and outliers) need that are
// not stored, then stores the batch. stateBefore, when set, is the state
// before the last event of evs. It returns the results by event id.
func (rf *roomFetch) persistBatch(ctx context.Context, evs, outliers []*events.Event, stateBefore ...string) (map[string]rooms.RemoteResult, error) {
	auth, err := rf.missingAuth(ctx, append(append([]*events.Event(nil), outliers...), evs...))
	if err != nil {
		return nil, err
	}
	outliers = append(outliers, auth...)
	batch := rooms.RemoteBatch{}
	for _, o := range outliers {
		batch.Outliers = append(batch.Outliers, o.JSON())
	}
	for i, ev := range evs {
		p := rooms.RemotePDU{Event: ev.JSON()}
		if i == len(evs)-1 && stateBefore != nil {
			p.StateBefore = stateBefore
		}
		batch.PDUs = append(batch.PDUs, p)
	}
	res, err := rf.s.send.opts.Remote.PersistRemote(ctx, rf.roomID, batch)
	if err != nil {
		return nil, fmt.Errorf("persist remote events of %s: %w", rf.roomID, err)
	}
	out := map[string]rooms.RemoteResult{}
	for _, r := range res {
		out[r.EventID] = r
	}
	return out, nil
}

// stored reports which of ids are stored here.
func (rf *roomFetch) stored(ctx context.Context, ids []string) (map[string]bool, error) {
	return rf.s.store.KnownEvents(ctx, ids)
}

// missingAuth returns the auth events evs reference that are neither
// stored nor among evs, with their own missing auth events: for each event
// with such a gap, its auth chain as the origin serves it (event_auth),
// less what is stored.
func (rf *roomFetch) missingAuth(ctx context.Context, evs []*events.Event) ([]*events.Event, error) {
	known := map[string]bool{}
	var refs []string
	for _, ev := range evs {
		known[ev.EventID()] = true
		refs = append(refs, ev.AuthEventIDs()...)
	}
	stored, err := rf.stored(ctx, refs)
	if err != nil {
		return nil, err
	}
	var out []*events.Event
	for _, ev := range evs {
		gap := false
		for _, id := range ev.AuthEventIDs() {
			if !known[id] && !stored[id] {
				gap = true
			}
		}
		if !gap {
			continue
		}
		chain, ok := rf.chains[ev.EventID()]
		if !ok {
			chain, err = rf.eventAuth(ctx, ev.EventID())
		}
		if err != nil {
			// The persister rejects the event for its unknown auth events.
			rf.s.log.Info("auth chain not fetched", "origin", rf.origin, "event_id", ev.EventID(), "err", err)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		}
		var ids []string
		for _, a := range chain {
			ids = append(ids, a.EventID())
		}
		have, err := rf.stored(ctx, ids)
		if err != nil {
			return nil, err
		}
		for _, a := range chain {
			if !known[a.EventID()] && !have[a.EventID()] {
				known[a.EventID()] = true
				out = append(out, a)
			}
		}
	}
	return out, nil
}

// fillGap stores an event whose prev events are unknown here: first by
// fetching the missing events between the room's forward extremities and
// it, then, if that leaves a gap, with the state before it as the origin
// tells it. It returns the event's answer.
func (rf *roomFetch) fillGap(ctx context.Context, ev *events.Event) (string, error) {
	// An earlier gap's filling may have brought this one's prev events.
	res, err := rf.persistBatch(ctx, []*events.Event{ev}, nil)
	if err != nil {
		return "", err
	}
	if r := res[ev.EventID()]; r.Outcome != rooms.RemoteMissingPrev {
		return outcomeError(r), nil
	}
	if rf.budget.take(&rf.budget.missingCalls, 1) == nil {
		missing, err := rf.missingEvents(ctx, ev)
		if err != nil {
			rf.s.log.Info("get_missing_events failed", "origin", rf.origin, "event_id", ev.EventID(), "err", err)
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
		}
		if len(missing) > 0 {
			res, err := rf.persistBatch(ctx, append(missing, ev), nil)
			if err != nil {
				return "", err
			}
			if r := res[ev.EventID()]; r.Outcome != rooms.RemoteMissingPrev {
				return outcomeError(r), nil
			}
		}
	}
	if err := rf.budget.take(&rf.budget.states, 1); err != nil {
		return "prev events missing and the " + err.Error(), nil
	}
	stateIDs, outliers, err := rf.stateBefore(ctx, ev)
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return fmt.Sprintf("prev events missing and the state before the event is unavailable: %v", err), nil
	}
	res, err = rf.persistBatch(ctx, []*events.Event{ev}, outliers, stateIDs...)
	if err != nil {
		return "", err
	}
	return outcomeError(res[ev.EventID()]), nil
}

// missingEvents asks the origin for the events between the room's forward
// extremities here and ev, and returns those that pass the checks and are
// not stored, prev events first.
func (rf *roomFetch) missingEvents(ctx context.Context, ev *events.Event) ([]*events.Event, error) {
	earliest, err := rf.s.send.txns.forwardExtremities(ctx, rf.roomID, maxEarliestEvents)
	if err != nil {
		return nil, err
	}
	body := map[string]any{
		"earliest_events": nonNil(earliest),
		"latest_events":   []string{ev.EventID()},
		"limit":           missingEventsLimit,
		"min_depth":       0,
	}
	var resp struct {
		Events []json.RawMessage `json:"events"`
	}
	path := "/_matrix/federation/v1/get_missing_events/" + url.PathEscape(rf.roomID)
	if err := rf.s.send.opts.Fetch.SignedPostJSON(ctx, rf.origin, path, body, &resp); err != nil {
		return nil, err
	}
	if len(resp.Events) > missingEventsLimit {
		resp.Events = resp.Events[:missingEventsLimit]
	}
	if err := rf.budget.take(&rf.budget.events, len(resp.Events)); err != nil {
		return nil, err
	}
	var got []*events.Event
	var ids []string
	for _, raw := range resp.Events {
		e, err := rf.checkFetched(ctx, raw, "")
		if err != nil {
			rf.s.log.Info("dropped a missing event", "origin", rf.origin, "err", err)
			continue
		}
		if e.EventID() == ev.EventID() {
			continue
		}
		got = append(got, e)
		ids = append(ids, e.EventID())
	}
	have, err := rf.stored(ctx, ids)
	if err != nil {
		return nil, err
	}
	var out []*events.Event
	seen := map[string]bool{}
	for _, e := range got {
		if !have[e.EventID()] && !seen[e.EventID()] {
			seen[e.EventID()] = true
			out = append(out, e)
		}
	}
	return sortedByDepth(out), nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// stateBefore asks the origin for the state before ev (state_ids) and
// fetches the state and auth chain events that are not stored: they are
// returned as outliers with the state's ids.
func (rf *roomFetch) stateBefore(ctx context.Context, ev *events.Event) ([]string, []*events.Event, error) {
	var resp struct {
		PDUIDs       []string `json:"pdu_ids"`
		AuthChainIDs []string `json:"auth_chain_ids"`
	}
	q := "?event_id=" + url.QueryEscape(ev.EventID())
	if err := rf.s.send.opts.Fetch.SignedGetJSON(ctx, rf.origin, "/_matrix/federation/v1/state_ids/"+url.PathEscape(rf.roomID)+q, &resp); err != nil {
		return nil, nil, err
	}
	if len(resp.PDUIDs) == 0 {
		return nil, nil, errors.New("empty state")
	}
	all := append(append([]string(nil), resp.PDUIDs...), resp.AuthChainIDs...)
	have, err := rf.stored(ctx, all)
	if err != nil {
		return nil, nil, err
	}
	var missing []string
	seen := map[string]bool{}
	for _, id := range all {
		if !have[id] && !seen[id] {
			seen[id] = true
			missing = append(missing, id)
		}
	}
	if err := rf.budget.take(&rf.budget.events, len(missing)); err != nil {
		return nil, nil, fmt.Errorf("%d state events to fetch: %w", len(missing), err)
	}
	var fetched []*events.Event
	if len(missing) > stateByIDLimit {
		fetched, err = rf.stateEvents(ctx, ev.EventID(), seen)
	} else {
		fetched = rf.fetchEvents(ctx, missing)
	}
	if err != nil {
		return nil, nil, err
	}
	return resp.PDUIDs, fetched, nil
}

// stateEvents fetches the state before eventID and its auth chain in one
// /state request, keeping the events of want.
func (rf *roomFetch) stateEvents(ctx context.Context, eventID string, want map[string]bool) ([]*events.Event, error) {
	var resp struct {
		PDUs      []json.RawMessage `json:"pdus"`
		AuthChain []json.RawMessage `json:"auth_chain"`
	}
	q := "?event_id=" + url.QueryEscape(eventID)
	if err := rf.s.send.opts.Fetch.SignedGetJSON(ctx, rf.origin, "/_matrix/federation/v1/state/"+url.PathEscape(rf.roomID)+q, &resp); err != nil {
		return nil, err
	}
	var out []*events.Event
	for _, raw := range append(resp.PDUs, resp.AuthChain...) {
		e, err := rf.checkFetched(ctx, raw, "")
		if err != nil {
			rf.s.log.Info("dropped a state event", "origin", rf.origin, "err", err)
			continue
		}
		if want[e.EventID()] {
			delete(want, e.EventID())
			out = append(out, e)
		}
	}
	return out, nil
}

// eventAuth fetches the auth chain of an event from the origin.
func (rf *roomFetch) eventAuth(ctx context.Context, eventID string) ([]*events.Event, error) {
	if err := rf.budget.take(&rf.budget.auths, 1); err != nil {
		return nil, err
	}
	var resp struct {
		AuthChain []json.RawMessage `json:"auth_chain"`
	}
	path := "/_matrix/federation/v1/event_auth/" + url.PathEscape(rf.roomID) + "/" + url.PathEscape(eventID)
	if err := rf.s.send.opts.Fetch.SignedGetJSON(ctx, rf.origin, path, &resp); err != nil {
		return nil, err
	}
	if err := rf.budget.take(&rf.budget.events, len(resp.AuthChain)); err != nil {
		return nil, fmt.Errorf("auth chain of %d events: %w", len(resp.AuthChain), err)
	}
	var out []*events.Event
	for _, raw := range resp.AuthChain {
		e, err := rf.checkFetched(ctx, raw, "")
		if err != nil {
			rf.s.log.Info("dropped an auth event", "origin", rf.origin, "err", err)
			continue
		}
		out = append(out, e)
	}
	if rf.chains == nil {
		rf.chains = map[string][]*events.Event{}
	}
	rf.chains[eventID] = out
	return out, nil
}

// fetchEvents fetches events one by one (/event), a few at a time; those
// that cannot be fetched or fail the checks are left out.
func (rf *roomFetch) fetchEvents(ctx context.Context, ids []string) []*events.Event {
	out := make([]*events.Event, len(ids))
	sem := make(chan struct{}, rf.s.send.opts.Limits.Parallel)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-sem }()
			e, err := rf.fetchEvent(ctx, id)
			if err != nil {
				rf.s.log.Info("event not fetched", "origin", rf.origin, "event_id", id, "err", err)
				return
			}
			out[i] = e
		}()
	}
	wg.Wait()
	var got []*events.Event
	for _, e := range out {
		if e != nil {
			got = append(got, e)
		}
	}
	return got
}

func (rf *roomFetch) fetchEvent(ctx context.Context, id string) (*events.Event, error) {
	var resp struct {
		PDUs []json.RawMessage `json:"pdus"`
	}
	if err := rf.s.send.opts.Fetch.SignedGetJSON(ctx, rf.origin, "/_matrix/federation/v1/event/"+url.PathEscape(id), &resp); err != nil {
		return nil, err
	}
	if len(resp.PDUs) != 1 {
		return nil, fmt.Errorf("answer with %d PDUs", len(resp.PDUs))
	}
	return rf.checkFetched(ctx, resp.PDUs[0], id)
}

// checkFetched parses and checks a fetched event of the room; wantID, when
// set, is the id it must have.
func (rf *roomFetch) checkFetched(ctx context.Context, raw json.RawMessage, wantID string) (*events.Event, error) {
	ev, err := events.Parse(raw, rf.rv)
	if err != nil {
		return nil, err
	}
	if ev.RoomID() != rf.roomID {
		return nil, fmt.Errorf("event %s is of room %s, not %s", ev.EventID(), ev.RoomID(), rf.roomID)
	}
	if wantID != "" && ev.EventID() != wantID {
		return nil, fmt.Errorf("asked for %s, got %s", wantID, ev.EventID())
	}
	return rf.s.checkEvent(ctx, ev)
}
