package sync

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"ganglion/internal/accountdata"
	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
	"ganglion/internal/streams"
)

// The legacy endpoints (deprecated in the spec but routed by Synapse's
// workers document, and still used by old clients): /events streams room
// events after a token; /initialSync and /rooms/{roomId}/initialSync give a
// snapshot. They share the sync machinery and its tokens.

func (s *Service) handleEvents(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	q := r.URL.Query()
	timeout, err := parseTimeout(q.Get("timeout"))
	if err != nil {
		return err
	}
	if timeout == 0 && q.Get("timeout") == "" {
		timeout = 30 * time.Second // the legacy API's default
	}
	var from streams.Token
	if f := q.Get("from"); f != "" {
		if from, err = s.Registry.ParseToken(f); err != nil {
			return mxhttp.InvalidParam("Invalid from token")
		}
	} else {
		from = s.Registry.CurrentToken()
	}
	chunk, end, err := s.eventsSince(r.Context(), req, from, min(timeout, s.maxTimeout))
	if err != nil {
		if r.Context().Err() != nil {
			return nil
		}
		return err
	}
	return mxhttp.WriteJSON(w, 200, map[string]any{"chunk": chunk, "start": s.Registry.FormatToken(from), "end": s.Registry.FormatToken(end)})
}

// eventsSince long-polls for room events visible to the user after from.
func (s *Service) eventsSince(ctx context.Context, req *accounts.Requester, from streams.Token, timeout time.Duration) ([]rooms.ClientEvent, streams.Token, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	f := s.Rooms.Formatter(req.UserID, req.DeviceID)
	for {
		joined, err := s.store.RoomsForUser(ctx, req.UserID, "join")
		if err != nil {
			return nil, from, err
		}
		keys := []string{streams.UserKey(req.UserID)}
		for _, id := range joined {
			keys = append(keys, streams.RoomKey(id))
		}
		l := s.Registry.Notifier().Listen(keys...)
		now := s.Registry.CurrentToken()
		var out []*rooms.StoredEvent
		if now.EventsMax() > from.Events {
			withEvents, err := s.store.RoomsWithEvents(ctx, from.Events, now.EventsMax())
			if err != nil {
				l.Close()
				return nil, from, err
			}
			for _, roomID := range joined {
				if _, ok := withEvents[roomID]; !ok {
					continue
				}
				vis, err := s.Rooms.VisibilityFor(ctx, roomID, req.UserID)
				if err != nil {
					l.Close()
					return nil, from, err
				}
				p := s.persisterOf(roomID)
				evs, err := s.store.RoomEvents(ctx, roomID, from.EventsFor(p), now.EventsFor(p), false, 1000)
				if err != nil {
					l.Close()
					return nil, from, err
				}
				out = append(out, vis.Filter(evs)...)
			}
		}
		if len(out) > 0 || timeout == 0 {
			l.Close()
			chunk, err := f.Format(ctx, out)
			if chunk == nil {
				chunk = []rooms.ClientEvent{}
			}
			return chunk, now, err
		}
		select {
		case <-l.C:
			l.Close()
		case <-t.C:
			l.Close()
			return []rooms.ClientEvent{}, now, nil
		case <-ctx.Done():
			l.Close()
			return nil, from, ctx.Err()
		}
	}
}

type legacyRoom struct {
	RoomID      string              `json:"room_id"`
	Membership  string              `json:"membership"`
	Visibility  string              `json:"visibility,omitempty"`
	Messages    *legacyMessages     `json:"messages,omitempty"`
	State       []rooms.ClientEvent `json:"state,omitempty"`
	AccountData []any               `json:"account_data"`
	Presence    []any               `json:"presence,omitempty"`
	// Receipts is set (possibly empty) by the room initial sync only.
	Receipts *[]any `json:"receipts,omitempty"`
}

type legacyMessages struct {
	Chunk []rooms.ClientEvent `json:"chunk"`
	Start string              `json:"start"`
	End   string              `json:"end"`
}

func legacyLimit(r *http.Request) (int, error) {
	l := r.URL.Query().Get("limit")
	if l == "" {
		return 10, nil
	}
	n, err := strconv.Atoi(l)
	if err != nil || n < 0 {
		return 0, mxhttp.InvalidParam("limit must be a non-negative integer")
	}
	return min(n, 100), nil
}

// legacyRoomView renders one room for /initialSync.
func (s *Service) legacyRoomView(ctx context.Context, req *accounts.Requester, roomID string, m membership, now streams.Token, limit int, ad map[string][]accountdata.Event) (*legacyRoom, error) {
	r := &request{userID: req.UserID, deviceID: req.DeviceID, fmtr: s.Rooms.Formatter(req.UserID, req.DeviceID)}
	lr := &legacyRoom{RoomID: roomID, Membership: m.Membership, AccountData: []any{}}
	if vis, err := s.Rooms.DirectoryVisibility(ctx, roomID); err == nil {
		lr.Visibility = vis
	}
	upTo := now.EventsFor(s.persisterOf(roomID))
	if m.Membership != "join" {
		upTo = m.Pos
	}
	if m.Membership == "join" || m.Membership == "leave" || m.Membership == "ban" {
		tl, _, err := s.timeline(ctx, r, roomID, 0, upTo, limit)
		if err != nil {
			return nil, err
		}
		start := upTo + 1
		if len(tl) > 0 {
			start = tl[0].StreamOrdering
		}
		chunk, err := r.fmtr.Format(ctx, tl)
		if err != nil {
			return nil, err
		}
		if chunk == nil {
			chunk = []rooms.ClientEvent{}
		}
		lr.Messages = &legacyMessages{Chunk: chunk, Start: rooms.FormatRoomToken(start - 1), End: rooms.FormatRoomToken(upTo)}
		st, err := s.store.StateAt(ctx, roomID, upTo, nil)
		if err != nil {
			return nil, err
		}
		if lr.State, err = r.fmtr.Format(ctx, st); err != nil {
			return nil, err
		}
	}
	for _, e := range ad[roomID] {
		lr.AccountData = append(lr.AccountData, e)
	}
	return lr, nil
}

func (s *Service) handleInitialSync(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	limit, err := legacyLimit(r)
	if err != nil {
		return err
	}
	archived := r.URL.Query().Get("archived") == "true"
	ctx := r.Context()
	now := s.Registry.CurrentToken()
	ms, err := s.membershipsAt(ctx, req.UserID, func(roomID string) int64 { return now.EventsFor(s.persisterOf(roomID)) }, true)
	if err != nil {
		return err
	}
	global, roomAD, err := s.AccountData.Since(ctx, req.UserID, 0, now.AccountData)
	if err != nil {
		return err
	}
	if s.PushRules != nil {
		content, err := s.PushRules.AccountData(ctx, req.UserID, 0, now.PushRules)
		if err != nil {
			return err
		}
		global = append(global, accountdata.Event{Type: accountdata.TypePushRules, Content: content})
	}
	out := []*legacyRoom{}
	for roomID, m := range ms {
		switch m.Membership {
		case "join", "invite":
		case "leave", "ban":
			if !archived {
				continue
			}
		default:
			continue
		}
		lr, err := s.legacyRoomView(ctx, req, roomID, m, now, limit, roomAD)
		if err != nil {
			return err
		}
		out = append(out, lr)
	}
	pres, err := s.Presence.Since(ctx, req.UserID, 0, now.Presence)
	if err != nil {
		return err
	}
	presence := make([]any, 0, len(pres))
	for _, p := range pres {
		presence = append(presence, p)
	}
	ad := make([]any, 0, len(global))
	for _, e := range global {
		ad = append(ad, e)
	}
	return mxhttp.WriteJSON(w, 200, map[string]any{"end": s.Registry.FormatToken(now), "rooms": out, "presence": presence, "account_data": ad})
}

func (s *Service) handleRoomInitialSync(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	limit, err := legacyLimit(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	roomID := r.PathValue("roomId")
	ok, err := s.store.RoomExists(ctx, roomID)
	if err != nil {
		return err
	}
	if !ok {
		return mxhttp.Forbidden("User %s not in room %s", req.UserID, roomID)
	}
	now := s.Registry.CurrentToken()
	roomNow := now.EventsFor(s.persisterOf(roomID))
	mm, pos, err := s.store.MembershipAt(ctx, roomID, req.UserID, roomNow)
	if err != nil {
		return err
	}
	m := membership{Membership: mm, Pos: pos}
	if mm != "join" {
		vis, err := s.Rooms.VisibilityFor(ctx, roomID, req.UserID)
		if err != nil {
			return err
		}
		switch {
		case mm == "leave" || mm == "ban":
		case vis.WorldReadableNow():
			m = membership{Membership: mm, Pos: roomNow}
		default:
			return mxhttp.Forbidden("User %s not in room %s", req.UserID, roomID)
		}
		if mm == "" {
			m.Membership = "join" // a world-readable peek reads like a member
		}
	}
	_, roomAD, err := s.AccountData.Since(ctx, req.UserID, 0, now.AccountData)
	if err != nil {
		return err
	}
	lr, err := s.legacyRoomView(ctx, req, roomID, m, now, limit, roomAD)
	if err != nil {
		return err
	}
	lr.Membership = mm
	lr.Presence, lr.Receipts = []any{}, &[]any{}
	if m.Membership == "join" { // joined, or peeking into a world-readable room
		if err := s.roomInitialSyncEphemeral(ctx, req, roomID, now, lr); err != nil {
			return err
		}
	}
	if lr.AccountData == nil {
		lr.AccountData = []any{}
	}
	return mxhttp.WriteJSON(w, 200, lr)
}

// roomInitialSyncEphemeral adds what a member sees of the room now besides
// its events, as Synapse's room initial sync does for members and peekers:
// the presence of the joined members and the room's read receipts.
func (s *Service) roomInitialSyncEphemeral(ctx context.Context, req *accounts.Requester, roomID string, now streams.Token, lr *legacyRoom) error {
	if s.Presence.Enabled() {
		members, err := s.store.JoinedMembers(ctx, roomID)
		if err != nil {
			return err
		}
		pres, err := s.Presence.ForUsers(ctx, members)
		if err != nil {
			return err
		}
		for _, p := range pres {
			lr.Presence = append(lr.Presence, p)
		}
	}
	rec, err := s.Receipts.ForRooms(ctx, req.UserID, []string{roomID}, 0, now.Receipts)
	if err != nil {
		return err
	}
	if c, ok := rec[roomID]; ok && len(c) > 0 {
		*lr.Receipts = append(*lr.Receipts, map[string]any{"type": "m.receipt", "room_id": roomID, "content": c})
	}
	return nil
}
