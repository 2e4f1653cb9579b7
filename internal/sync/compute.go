package sync

import (
	"context"
	"fmt"
	"slices"

	"ganglion/internal/accountdata"
	"ganglion/internal/eventauth"
	"ganglion/internal/filters"
	"ganglion/internal/presence"
	"ganglion/internal/rooms"
	"ganglion/internal/streams"
)

// request is one sync computation: a user's device, its filter, and the
// window (since, now] of every stream.
type request struct {
	userID    string
	deviceID  string
	filter    *filters.Filter
	since     *streams.Token // nil: initial sync
	now       streams.Token
	fullState bool
	ignored   map[string]bool
	fmtr      *rooms.Formatter
	// joined is filled by compute with the rooms the user is joined to at
	// now, so the long-poll can listen on them.
	joined []string
	// lazySent collects the member events a lazy-loading response carries,
	// recorded against its next_batch once it is complete.
	lazySent []lazyEntry
	// persisterOf names the events writer of a room.
	persisterOf func(roomID string) string
	// joinsSeen collects, per room, the users whose join events the
	// timeline scan passed over (before any filter): candidates for
	// "newly shares a room" presence.
	joinsSeen map[string]map[string]bool
}

// noteJoin records a join event met while reading a timeline.
func (r *request) noteJoin(roomID, userID string) {
	if r.joinsSeen == nil {
		r.joinsSeen = map[string]map[string]bool{}
	}
	if r.joinsSeen[roomID] == nil {
		r.joinsSeen[roomID] = map[string]bool{}
	}
	r.joinsSeen[roomID][userID] = true
}

func (r *request) sinceOr0(f func(streams.Token) int64) int64 {
	if r.since == nil {
		return 0
	}
	return f(*r.since)
}

// sinceFor and nowFor bound one room's events: a room's events all come
// from its persister, so its window is that writer's part of the tokens.
func (r *request) sinceFor(roomID string) int64 {
	if r.since == nil {
		return 0
	}
	return r.since.EventsFor(r.persisterOf(roomID))
}

func (r *request) nowFor(roomID string) int64 { return r.now.EventsFor(r.persisterOf(roomID)) }

const defaultTimelineLimit = 10

// compute builds the response for (since, now].
func (s *Service) compute(ctx context.Context, r *request) (*Response, error) {
	resp := newResponse()
	r.lazySent = r.lazySent[:0]
	r.joinsSeen = nil
	next := r.now
	sinceMin := r.sinceOr0(func(t streams.Token) int64 { return t.Events })
	nowMax := r.now.EventsMax()

	// Account data first: whether the ignored list changed in the window
	// decides whether the cached list still holds. Nothing can have
	// changed when the stream did not move.
	adFrom := r.sinceOr0(func(t streams.Token) int64 { return t.AccountData })
	var globalAD []accountdata.Event
	var roomAD map[string][]accountdata.Event
	if r.since == nil || adFrom < r.now.AccountData {
		var err error
		if globalAD, roomAD, err = s.AccountData.Since(ctx, r.userID, adFrom, r.now.AccountData); err != nil {
			return nil, err
		}
	}
	if err := s.loadIgnored(ctx, r, adFrom, globalAD); err != nil {
		return nil, err
	}
	// Push rules are account data to clients but their own stream here.
	if prFrom := r.sinceOr0(func(t streams.Token) int64 { return t.PushRules }); s.PushRules != nil && (r.since == nil || prFrom < r.now.PushRules) {
		content, err := s.PushRules.AccountData(ctx, r.userID, prFrom, r.now.PushRules)
		if err != nil {
			return nil, err
		}
		if content != nil {
			globalAD = append(globalAD, accountdata.Event{Type: accountdata.TypePushRules, Content: content})
		}
	}

	atNow, err := s.membershipsAt(ctx, r.userID, r.nowFor, r.since == nil)
	if err != nil {
		return nil, err
	}
	changed := map[string]bool{}
	if r.since != nil && s.membershipMovedSince(ctx, r) {
		changes, err := s.store.MembershipChanges(ctx, r.userID, sinceMin, nowMax)
		if err != nil {
			return nil, err
		}
		for _, c := range changes {
			if c.Pos > r.sinceFor(c.RoomID) && c.Pos <= r.nowFor(c.RoomID) {
				changed[c.RoomID] = true
			}
		}
	}
	var joined []string
	for roomID, m := range atNow {
		if m.Membership == "join" {
			joined = append(joined, roomID)
		}
	}
	slices.Sort(joined)
	r.joined = joined

	// Which joined rooms have something to say, and whether each needs its
	// full state (initial sync, full_state, or joined during the window).
	// A room joined during the window (newlyJoined) is sent like in an
	// initial sync; anywhere else the timeline starts at since, full_state
	// or not (the spec: the timeline is still limited by since).
	type plan struct{ full, newlyJoined bool }
	plans := map[string]*plan{}
	for _, roomID := range joined {
		if !r.filter.RoomAllowed(roomID) {
			continue
		}
		switch {
		case r.since == nil:
			plans[roomID] = &plan{full: true}
		case changed[roomID]:
			before, _, err := s.store.MembershipAt(ctx, roomID, r.userID, r.sinceFor(roomID))
			if err != nil {
				return nil, err
			}
			newly := before != "join"
			plans[roomID] = &plan{full: newly || r.fullState, newlyJoined: newly}
		case r.fullState:
			plans[roomID] = &plan{full: true}
		}
	}
	if r.since != nil {
		// Candidates over the widest window; each room's own window is
		// applied when its timeline is read, and rooms that turn out to
		// have nothing are dropped below.
		withEvents, err := s.store.JoinedRoomsWithEvents(ctx, joined, sinceMin, nowMax)
		if err != nil {
			return nil, err
		}
		for _, roomID := range joined {
			if _, ok := withEvents[roomID]; ok && plans[roomID] == nil && r.filter.RoomAllowed(roomID) {
				plans[roomID] = &plan{}
			}
		}
	}

	// Ephemeral data and room account data can put a room in the response
	// on their own.
	ephemeral, err := s.ephemeral(ctx, r, joined)
	if err != nil {
		return nil, err
	}
	for _, roomID := range joined {
		if plans[roomID] == nil && r.filter.RoomAllowed(roomID) && (len(ephemeral[roomID]) > 0 || len(roomAD[roomID]) > 0) {
			plans[roomID] = &plan{}
		}
	}

	for roomID, p := range plans {
		from := r.sinceFor(roomID)
		if r.since == nil || p.newlyJoined {
			from = 0
		}
		jr, err := s.joinedRoom(ctx, r, roomID, from, r.nowFor(roomID), p.full)
		if err != nil {
			return nil, fmt.Errorf("sync room %s: %w", roomID, err)
		}
		if p.newlyJoined {
			// The client has none of this room's history (a rejoin: none
			// since it left): the timeline does not hold every event since
			// since, whatever fits in it. Synapse says the same.
			jr.Timeline.Limited = true
		}
		for _, e := range ephemeral[roomID] {
			jr.Ephemeral.Events = append(jr.Ephemeral.Events, e)
		}
		jr.AccountData.Events = accountDataEvents(roomAD[roomID], r.filter.RoomAccountData())
		if !p.full && !changed[roomID] && len(jr.Timeline.Events) == 0 && len(jr.State.Events) == 0 &&
			len(jr.Ephemeral.Events) == 0 && len(jr.AccountData.Events) == 0 {
			continue // a candidate whose own window held nothing
		}
		resp.Rooms.Join[roomID] = jr
	}
	if err := s.unreadCounts(ctx, r, resp.Rooms.Join); err != nil {
		return nil, err
	}

	for roomID, m := range atNow {
		if !r.filter.RoomAllowed(roomID) {
			continue
		}
		inWindow := r.since == nil || changed[roomID]
		switch m.Membership {
		case "invite":
			if inWindow && !r.ignored[m.Sender] {
				inv, err := s.invitedRoom(ctx, roomID, r.userID, m)
				if err != nil {
					return nil, err
				}
				resp.Rooms.Invite[roomID] = inv
			}
		case "knock":
			if inWindow {
				kn, err := s.knockedRoom(ctx, roomID, r.userID, m)
				if err != nil {
					return nil, err
				}
				resp.Rooms.Knock[roomID] = kn
			}
		case "leave", "ban":
			if (r.since == nil && r.filter.IncludeLeave() && !m.Forgotten) || (r.since != nil && changed[roomID]) {
				lr, err := s.leftRoom(ctx, r, roomID, r.sinceFor(roomID), m.Pos)
				if err != nil {
					return nil, err
				}
				lr.AccountData.Events = accountDataEvents(roomAD[roomID], r.filter.RoomAccountData())
				resp.Rooms.Leave[roomID] = lr
			}
		}
	}

	resp.AccountData.Events = accountDataEvents(globalAD, toRoomFilter(r.filter.AccountDataFilter()))
	var pres []presence.Event
	if presFrom := r.sinceOr0(func(t streams.Token) int64 { return t.Presence }); r.since == nil || presFrom < r.now.Presence {
		if pres, err = s.Presence.Since(ctx, r.userID, presFrom, r.now.Presence); err != nil {
			return nil, err
		}
	}
	if r.since != nil && len(plans) > 0 && s.Presence.Enabled() {
		// Presence of users who newly share a room with the user: the
		// client never had it, whether or not it changed in the window.
		var newly []string
		planned := make([]string, 0, len(plans))
		for roomID := range plans {
			planned = append(planned, roomID)
		}
		if newly, err = s.newlyShared(ctx, r, planned, func(roomID string) bool { return plans[roomID].newlyJoined },
			func(roomID string) bool {
				return resp.Rooms.Join[roomID] != nil && resp.Rooms.Join[roomID].Timeline.Limited
			}); err != nil {
			return nil, err
		}
		have := map[string]bool{}
		for _, p := range pres {
			have[p.Sender] = true
		}
		var ask []string
		for _, u := range newly {
			if !have[u] {
				ask = append(ask, u)
			}
		}
		extra, err := s.Presence.ForUsers(ctx, ask)
		if err != nil {
			return nil, err
		}
		pres = append(pres, extra...)
	}
	pf := r.filter.PresenceFilter()
	for _, p := range pres {
		if pf.Matches(p.Type, p.Sender) && !r.ignored[p.Sender] {
			resp.Presence.Events = append(resp.Presence.Events, p)
		}
	}
	if limit := pf.LimitOr(-1); limit >= 0 && len(resp.Presence.Events) > limit {
		resp.Presence.Events = resp.Presence.Events[:limit]
	}

	toDevFrom := r.sinceOr0(func(t streams.Token) int64 { return t.ToDevice })
	// Messages in (since, now] only: nothing when the stream did not move
	// (earlier ones were acknowledged and deleted by this request).
	if r.deviceID != "" && toDevFrom != r.now.ToDevice {
		msgs, upTo, err := s.ToDevice.Messages(ctx, r.userID, r.deviceID, toDevFrom, r.now.ToDevice, 100)
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			resp.ToDevice.Events = append(resp.ToDevice.Events, m)
		}
		next.ToDevice = upTo
	}
	if err := s.keys(ctx, r, resp); err != nil {
		return nil, err
	}
	resp.NextBatch = s.Registry.FormatToken(next)
	s.lazy.record(r.userID, r.deviceID, resp.NextBatch, r.lazySent)
	return resp, nil
}

// membershipMovedSince reports whether any of the user's memberships may
// have changed after the client's token: the latest membership event of
// every room (current state) is at or before the token's position for the
// room, the window holds no membership change and the state log need not
// be read.
func (s *Service) membershipMovedSince(ctx context.Context, r *request) bool {
	cur, err := s.store.SyncMemberships(ctx, r.userID)
	if err != nil {
		return true // let the exact query run (and report the error)
	}
	for roomID, m := range cur {
		if m.Pos > r.sinceFor(roomID) {
			return true
		}
	}
	return false
}

// loadIgnored sets r.ignored: from the cache when the list is known current
// at the window's start and the window's account data (global) does not
// change it, else from the database.
func (s *Service) loadIgnored(ctx context.Context, r *request, from int64, changes []accountdata.Event) error {
	changed := false
	for _, e := range changes {
		changed = changed || e.Type == accountdata.TypeIgnoredList
	}
	if r.since != nil && !changed {
		if ig, _, ok := s.ignored.get(r.userID, from); ok {
			r.ignored = ig
			s.ignored.put(r.userID, ig, r.now.AccountData)
			return nil
		}
	}
	ig, err := s.AccountData.IgnoredUsers(ctx, r.userID)
	if err != nil {
		return err
	}
	r.ignored = ig
	// The list read is at least as new as now; it is current at now.
	s.ignored.put(r.userID, ig, r.now.AccountData)
	return nil
}

// membership is a user's membership in a room as of the sync's now.
type membership struct {
	Membership string
	Pos        int64
	EventID    string
	Sender     string
	Forgotten  bool
}

// membershipsAt returns the user's membership in every room as of pos. The
// current_state rows are right except where the membership changed after
// pos (committed since the token was taken): those are looked up in the
// state log.
//
// Whether a room is forgotten matters only to an initial sync's leave
// section; withForgotten says whether to look it up.
func (s *Service) membershipsAt(ctx context.Context, userID string, posFor func(roomID string) int64, withForgotten bool) (map[string]membership, error) {
	cur, err := s.store.SyncMemberships(ctx, userID)
	if err != nil {
		return nil, err
	}
	forgotten := map[string]bool{}
	if withForgotten {
		if forgotten, err = s.store.ForgottenRooms(ctx, userID); err != nil {
			return nil, err
		}
	}
	out := make(map[string]membership, len(cur))
	for roomID, m := range cur {
		if pos := posFor(roomID); m.Pos > pos {
			mm, p, err := s.store.MembershipAt(ctx, roomID, userID, pos)
			if err != nil {
				return nil, err
			}
			if mm == "" {
				continue
			}
			m.Membership, m.Pos = mm, p
			m.EventID = ""
		}
		out[roomID] = membership{Membership: m.Membership, Pos: m.Pos, EventID: m.EventID, Forgotten: forgotten[roomID]}
	}
	// Senders of invites are needed to hide invites from ignored users.
	for roomID, m := range out {
		if m.Membership == "invite" || m.Membership == "knock" {
			ev, err := s.memberEvent(ctx, roomID, userID, m)
			if err != nil {
				return nil, err
			}
			if ev != nil {
				m.Sender = ev.Event.Sender()
				m.EventID = ev.Event.EventID()
				out[roomID] = m
			}
		}
	}
	return out, nil
}

func (s *Service) memberEvent(ctx context.Context, roomID, userID string, m membership) (*rooms.StoredEvent, error) {
	if m.EventID != "" {
		return s.store.Event(ctx, m.EventID)
	}
	evs, err := s.store.StateAt(ctx, roomID, m.Pos, []eventauth.StateKey{{Type: "m.room.member", StateKey: userID}})
	if err != nil || len(evs) == 0 {
		return nil, err
	}
	return evs[0], nil
}

func toRoomFilter(f *filters.EventFilter) *filters.RoomEventFilter {
	if f == nil {
		return nil
	}
	return &filters.RoomEventFilter{EventFilter: *f}
}

func accountDataEvents(evs []accountdata.Event, f *filters.RoomEventFilter) []any {
	out := []any{}
	for _, e := range evs {
		if f == nil || f.EventFilter.Matches(e.Type, "") {
			out = append(out, e)
		}
	}
	if f != nil && f.Limit != nil && len(out) > *f.Limit {
		out = out[:*f.Limit]
	}
	return out
}

// ephemeral gathers typing and receipts per joined room in the window.
func (s *Service) ephemeral(ctx context.Context, r *request, joined []string) (map[string][]any, error) {
	out := map[string][]any{}
	ef := r.filter.Ephemeral()
	// ef's type lists; ef may be nil (no filter), and the promoted
	// EventFilter.Matches would dereference it.
	var types *filters.EventFilter
	if ef != nil {
		types = &ef.EventFilter
	}
	typingFrom := r.sinceOr0(func(t streams.Token) int64 { return t.Typing })
	if typingFrom > r.now.Typing {
		typingFrom = 0 // the typing writer restarted: its positions reset
	}
	isJoined := map[string]bool{}
	for _, id := range joined {
		isJoined[id] = true
	}
	var typingRooms []string
	if r.since == nil || typingFrom == 0 {
		typingRooms = joined
	} else {
		typingRooms = s.Typing.ChangedRooms(typingFrom, r.now.Typing)
	}
	if types.Matches("m.typing", "") {
		for _, roomID := range typingRooms {
			if !isJoined[roomID] || !ef.MatchesRoom(roomID) {
				continue
			}
			users := s.Typing.Typing(roomID)
			if len(users) == 0 && (r.since == nil || typingFrom == 0) {
				continue
			}
			visible := make([]string, 0, len(users))
			for _, u := range users {
				if !r.ignored[u] {
					visible = append(visible, u)
				}
			}
			out[roomID] = append(out[roomID], map[string]any{"type": "m.typing", "content": map[string]any{"user_ids": visible}})
		}
	}
	receiptsFrom := r.sinceOr0(func(t streams.Token) int64 { return t.Receipts })
	if types.Matches("m.receipt", "") && len(joined) > 0 && (r.since == nil || receiptsFrom < r.now.Receipts) {
		rec, err := s.Receipts.ForRooms(ctx, r.userID, joined, receiptsFrom, r.now.Receipts)
		if err != nil {
			return nil, err
		}
		for roomID, content := range rec {
			if ef.MatchesRoom(roomID) {
				out[roomID] = append(out[roomID], map[string]any{"type": "m.receipt", "content": content})
			}
		}
	}
	return out, nil
}

// timeline returns up to limit events of the room in (from, to] that the
// user may see and the filter keeps, oldest first, and whether older ones
// were left out.
func (s *Service) timeline(ctx context.Context, r *request, roomID string, from, to int64, limit int) ([]*rooms.StoredEvent, bool, error) {
	vis, err := s.Rooms.SyncVisibilityFor(ctx, roomID, r.userID)
	if err != nil {
		return nil, false, err
	}
	tf := r.filter.Timeline()
	var kept []*rooms.StoredEvent
	cursor := to
	batch := max(limit+1, 20)
	for len(kept) <= limit {
		evs, err := s.store.RoomEvents(ctx, roomID, cursor, from, true, batch)
		if err != nil {
			return nil, false, err
		}
		for _, e := range evs {
			cursor = e.StreamOrdering - 1
			ev := e.Event
			if sk := ev.StateKey(); sk != nil && *sk != r.userID && ev.Type() == "m.room.member" && ev.Membership() == "join" {
				r.noteJoin(roomID, *sk)
			}
			if !vis.CanSee(e) || !tf.MatchesEvent(roomID, ev.Type(), ev.Sender(), ev.Content()) {
				continue
			}
			if r.ignored[ev.Sender()] && !ev.IsState() {
				continue
			}
			kept = append(kept, e)
			if len(kept) > limit {
				break
			}
		}
		if len(evs) < batch {
			break
		}
	}
	limited := len(kept) > limit
	if limited {
		kept = kept[:limit]
	}
	slices.Reverse(kept)
	return kept, limited, nil
}

// roomState returns the state to send before a timeline starting at
// start: everything (full) or what changed in (from, start-1], reduced by
// the state filter and lazy loading of members.
func (s *Service) roomState(ctx context.Context, r *request, roomID string, from, start int64, full bool, timeline []*rooms.StoredEvent) ([]*rooms.StoredEvent, error) {
	at := start - 1
	var evs []*rooms.StoredEvent
	var err error
	if full {
		evs, err = s.store.StateAt(ctx, roomID, at, nil)
	} else if from < at {
		// State changed between the token and the timeline's start; an
		// empty gap (the usual incremental sync) has none to read.
		keys, kerr := s.store.StateKeysChanged(ctx, roomID, from, at)
		if kerr != nil {
			return nil, kerr
		}
		if len(keys) > 0 {
			evs, err = s.store.StateAtKeys(ctx, roomID, at, keys)
		}
	}
	if err != nil {
		return nil, err
	}
	if len(timeline) > 0 {
		// Current-state changes no timeline event carries (a join through
		// another server brings the room's state at the join's position)
		// go with the state before the timeline.
		resets, err := s.store.StateResetsIn(ctx, roomID, start, timeline[len(timeline)-1].StreamOrdering)
		if err != nil {
			return nil, err
		}
		evs = overlayState(evs, resets)
	}
	sf := r.filter.State()
	lazy := r.filter.LazyLoadMembers()
	// In an incremental sync, evs so far is the state that changed between
	// since and the timeline, which the client saw nowhere else: lazy
	// loading must not drop its member events (spec: joins, leaves and
	// profile changes in the gap are not lost), redundant or not.
	inGap := map[string]bool{}
	if !full {
		for _, e := range evs {
			inGap[e.Event.EventID()] = true
		}
	}
	var needed map[string]bool
	if lazy {
		needed = map[string]bool{r.userID: true}
		for _, e := range timeline {
			needed[e.Event.Sender()] = true
		}
		inTimeline := map[string]bool{}
		for _, e := range timeline {
			if e.Event.Type() == "m.room.member" && e.Event.StateKey() != nil {
				inTimeline[*e.Event.StateKey()] = true
			}
		}
		// Members needed by the timeline but whose member event changed
		// before the window must come from the state before it.
		var missing []eventauth.StateKey
		have := map[string]bool{}
		for _, e := range evs {
			if e.Event.Type() == "m.room.member" {
				have[*e.Event.StateKey()] = true
			}
		}
		for u := range needed {
			if !have[u] && !inTimeline[u] && !full {
				missing = append(missing, eventauth.StateKey{Type: "m.room.member", StateKey: u})
			}
		}
		if len(missing) > 0 {
			more, err := s.store.StateAtKeys(ctx, roomID, at, missing)
			if err != nil {
				return nil, err
			}
			evs = append(evs, more...)
		}
	}
	out := evs[:0:0]
	for _, e := range evs {
		ev := e.Event
		if !sf.MatchesEvent(roomID, ev.Type(), ev.Sender(), ev.Content()) {
			continue
		}
		if lazy && ev.Type() == "m.room.member" && !inGap[ev.EventID()] {
			u := *ev.StateKey()
			if !needed[u] {
				continue
			}
			// The user's own member event is always sent with full state
			// (the spec's MUST); otherwise it is redundant like any other.
			if !r.filter.IncludeRedundantMembers() && !(full && u == r.userID) && s.lazy.sent(r.userID, r.deviceID, roomID, u, e.Event.EventID()) {
				continue
			}
		}
		out = append(out, e)
	}
	if lazy && !r.filter.IncludeRedundantMembers() {
		for _, e := range out {
			if e.Event.Type() == "m.room.member" {
				r.lazySent = append(r.lazySent, lazyEntry{roomID, *e.Event.StateKey(), e.Event.EventID()})
			}
		}
		for _, e := range timeline {
			if e.Event.Type() == "m.room.member" && e.Event.StateKey() != nil {
				r.lazySent = append(r.lazySent, lazyEntry{roomID, *e.Event.StateKey(), e.Event.EventID()})
			}
		}
	}
	return out, nil
}

func (s *Service) format(ctx context.Context, r *request, evs []*rooms.StoredEvent) ([]rooms.ClientEvent, error) {
	out, err := r.fmtr.Format(ctx, evs)
	if err != nil {
		return nil, err
	}
	for i := range out {
		out[i].RoomID = "" // sync's events omit room_id (ClientEventWithoutRoomID)
	}
	return out, nil
}

func (s *Service) joinedRoom(ctx context.Context, r *request, roomID string, from, to int64, full bool) (*JoinedRoom, error) {
	limit := r.filter.TimelineLimit(defaultTimelineLimit)
	tl, limited, err := s.timeline(ctx, r, roomID, from, to, limit)
	if err != nil {
		return nil, err
	}
	start := to + 1
	if len(tl) > 0 {
		start = tl[0].StreamOrdering
	}
	state, err := s.roomState(ctx, r, roomID, from, start, full, tl)
	if err != nil {
		return nil, err
	}
	jr := &JoinedRoom{}
	if jr.Timeline.Events, err = s.format(ctx, r, tl); err != nil {
		return nil, err
	}
	if jr.State.Events, err = s.format(ctx, r, state); err != nil {
		return nil, err
	}
	jr.Timeline.Limited = limited
	jr.Timeline.PrevBatch = rooms.FormatRoomToken(start - 1)
	jr.Ephemeral.Events = []any{}
	jr.AccountData.Events = []any{}
	// The summary only changes with membership: send it with full state
	// or when a member event is in the timeline or state, as Synapse does,
	// sparing two queries on every other incremental sync.
	if full || hasMemberEvent(tl) || hasMemberEvent(state) {
		joinedN, invitedN, err := s.store.MemberCounts(ctx, roomID)
		if err != nil {
			return nil, err
		}
		jr.Summary.JoinedCount, jr.Summary.InvitedCount = &joinedN, &invitedN
		if jr.Summary.Heroes, err = s.store.Heroes(ctx, roomID, r.userID, 5); err != nil {
			return nil, err
		}
	}
	return jr, nil
}

func hasMemberEvent(evs []*rooms.StoredEvent) bool {
	for _, e := range evs {
		if e.Event.Type() == "m.room.member" {
			return true
		}
	}
	return false
}

// leftRoom shows a room the user left: the timeline up to (and including)
// the leave, and the state changes before it.
func (s *Service) leftRoom(ctx context.Context, r *request, roomID string, from, leavePos int64) (*LeftRoom, error) {
	limit := r.filter.TimelineLimit(defaultTimelineLimit)
	full := r.since == nil || r.fullState
	if r.since == nil {
		from = 0 // full_state or not, an incremental timeline starts at since
	}
	tl, limited, err := s.timeline(ctx, r, roomID, from, leavePos, limit)
	if err != nil {
		return nil, err
	}
	start := leavePos + 1
	if len(tl) > 0 {
		start = tl[0].StreamOrdering
	}
	state, err := s.roomState(ctx, r, roomID, from, start, full, tl)
	if err != nil {
		return nil, err
	}
	lr := &LeftRoom{}
	if lr.Timeline.Events, err = s.format(ctx, r, tl); err != nil {
		return nil, err
	}
	if lr.State.Events, err = s.format(ctx, r, state); err != nil {
		return nil, err
	}
	lr.Timeline.Limited = limited
	lr.Timeline.PrevBatch = rooms.FormatRoomToken(start - 1)
	lr.AccountData.Events = []any{}
	return lr, nil
}

// strippedTypes is the state shared with invitees and knockers (Synapse's
// room_prejoin_state defaults).
var strippedTypes = []eventauth.StateKey{
	{Type: "m.room.create"}, {Type: "m.room.join_rules"}, {Type: "m.room.name"}, {Type: "m.room.avatar"},
	{Type: "m.room.canonical_alias"}, {Type: "m.room.encryption"}, {Type: "m.room.topic"},
}

func (s *Service) strippedState(ctx context.Context, roomID, userID string, m membership) ([]StrippedEvent, error) {
	evs, err := s.store.StateAt(ctx, roomID, m.Pos, strippedTypes)
	if err != nil {
		return nil, err
	}
	own, err := s.memberEvent(ctx, roomID, userID, m)
	if err != nil {
		return nil, err
	}
	if len(evs) == 0 && own != nil {
		// A room known only through an invite another server sent: its
		// stripped state is what that server sent with the invite, kept
		// in the invite's unsigned.
		if st := remoteStrippedState(own.Event.Unsigned()); st != nil {
			return append(st, StrippedEvent{Type: own.Event.Type(), StateKey: userID, Sender: own.Event.Sender(),
				Content: own.Event.Content()}), nil
		}
	}
	if own != nil {
		evs = append(evs, own)
	}
	out := make([]StrippedEvent, 0, len(evs))
	for _, e := range evs {
		sk := ""
		if e.Event.StateKey() != nil {
			sk = *e.Event.StateKey()
		}
		out = append(out, StrippedEvent{Type: e.Event.Type(), StateKey: sk, Sender: e.Event.Sender(), Content: e.Event.Content()})
	}
	return out, nil
}

func (s *Service) invitedRoom(ctx context.Context, roomID, userID string, m membership) (*InvitedRoom, error) {
	st, err := s.strippedState(ctx, roomID, userID, m)
	if err != nil {
		return nil, err
	}
	ir := &InvitedRoom{}
	ir.InviteState.Events = st
	return ir, nil
}

func (s *Service) knockedRoom(ctx context.Context, roomID, userID string, m membership) (*KnockedRoom, error) {
	st, err := s.strippedState(ctx, roomID, userID, m)
	if err != nil {
		return nil, err
	}
	kr := &KnockedRoom{}
	kr.KnockState.Events = st
	return kr, nil
}

// newlyShared lists the users who came to share a room with the syncing
// user in the window, whose presence the client has never been sent: every
// member of a room the user joined (newlyJoined), and whoever joined one of
// the user's other rooms (not a profile change of an existing member, and
// still joined at now). Joins are found among the events the timeline
// scan passed over; where the timeline was limited the scan stopped short
// of since, and the state log is asked for the rest of the window.
func (s *Service) newlyShared(ctx context.Context, r *request, roomIDs []string, newlyJoined, limited func(roomID string) bool) ([]string, error) {
	out := map[string]bool{}
	for _, roomID := range roomIDs {
		if newlyJoined(roomID) {
			members, err := s.store.JoinedMembers(ctx, roomID)
			if err != nil {
				return nil, err
			}
			for _, u := range members {
				out[u] = true
			}
			continue
		}
		from, to := r.sinceFor(roomID), r.nowFor(roomID)
		cands := r.joinsSeen[roomID]
		if limited(roomID) {
			joins, err := s.store.JoinsBetween(ctx, roomID, from, to)
			if err != nil {
				return nil, err
			}
			cands = map[string]bool{}
			for _, u := range joins {
				cands[u] = true
			}
		}
		for u := range cands {
			if u == r.userID || out[u] {
				continue
			}
			before, _, err := s.store.MembershipAt(ctx, roomID, u, from)
			if err != nil {
				return nil, err
			}
			if before == "join" {
				continue // a profile change
			}
			now, _, err := s.store.MembershipAt(ctx, roomID, u, to)
			if err != nil {
				return nil, err
			}
			if now == "join" {
				out[u] = true
			}
		}
	}
	delete(out, r.userID)
	ids := make([]string, 0, len(out))
	for u := range out {
		ids = append(ids, u)
	}
	slices.Sort(ids)
	return ids, nil
}

// unreadCounts fills the joined rooms' unread_notifications (and
// unread_thread_notifications when the timeline filter asks for them:
// then the main timeline's counts stay in unread_notifications).
func (s *Service) unreadCounts(ctx context.Context, r *request, join map[string]*JoinedRoom) error {
	if s.Notifications == nil || len(join) == 0 {
		return nil
	}
	ids := make([]string, 0, len(join))
	for roomID := range join {
		ids = append(ids, roomID)
	}
	counts, err := s.Notifications.Counts(ctx, r.userID, ids)
	if err != nil {
		return err
	}
	tl := r.filter.Timeline()
	perThread := tl != nil && tl.UnreadThreadNotifs
	for roomID, threads := range counts {
		jr := join[roomID]
		for thread, c := range threads {
			n := Notifications{NotificationCount: c.Notifications, HighlightCount: c.Highlights}
			if !perThread || thread == "main" {
				jr.UnreadNotifications.NotificationCount += n.NotificationCount
				jr.UnreadNotifications.HighlightCount += n.HighlightCount
				continue
			}
			if jr.UnreadThreadNotifications == nil {
				jr.UnreadThreadNotifications = map[string]Notifications{}
			}
			jr.UnreadThreadNotifications[thread] = n
		}
	}
	return nil
}

// overlayState replaces or adds the entries of more in evs, by
// (type, state_key).
func overlayState(evs, more []*rooms.StoredEvent) []*rooms.StoredEvent {
	if len(more) == 0 {
		return evs
	}
	idx := map[eventauth.StateKey]int{}
	for i, e := range evs {
		idx[eventauth.StateKey{Type: e.Event.Type(), StateKey: *e.Event.StateKey()}] = i
	}
	for _, e := range more {
		k := eventauth.StateKey{Type: e.Event.Type(), StateKey: *e.Event.StateKey()}
		if i, ok := idx[k]; ok {
			evs[i] = e
		} else {
			idx[k] = len(evs)
			evs = append(evs, e)
		}
	}
	return evs
}
