package rooms

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// timestampScanBatch is how many events timestamp_to_event reads at a
// time while it skips those the requester may not see, and
// timestampScanMax how many it looks at before it says there is none, so
// a room full of hidden events cannot make one request read all of them.
const (
	timestampScanBatch = 50
	timestampScanMax   = 1000
)

// TimestampEvent is the answer of /timestamp_to_event.
type TimestampEvent struct {
	EventID        string `json:"event_id"`
	OriginServerTS int64  `json:"origin_server_ts"`
}

// TimestampQuery reads timestamp_to_event's ts and dir (the client and
// the federation endpoint take the same).
func TimestampQuery(q url.Values) (ts int64, forwards bool, err error) {
	rawTS, ok := q["ts"]
	if !ok || rawTS[0] == "" {
		return 0, false, mxhttp.MissingParam("Missing ts")
	}
	if ts, err = strconv.ParseInt(rawTS[0], 10, 64); err != nil {
		return 0, false, mxhttp.InvalidParam("ts must be an integer (milliseconds since the epoch)")
	}
	switch q.Get("dir") {
	case "f":
		return ts, true, nil
	case "b":
		return ts, false, nil
	case "":
		return 0, false, mxhttp.MissingParam("Missing dir")
	}
	return 0, false, mxhttp.InvalidParam("dir must be f or b")
}

func (h *roomHandlers) timestampToEvent(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	roomID := r.PathValue("roomId")
	if !validRoomID(roomID) {
		return mxhttp.InvalidParam("Invalid room id %q", roomID)
	}
	// Access first, parameters second, as OpenTimeline explains.
	t, err := h.s.OpenTimeline(r.Context(), req, roomID)
	if err != nil {
		return err
	}
	ts, forwards, err := TimestampQuery(r.URL.Query())
	if err != nil {
		return err
	}
	ev, err := t.ClosestToTimestamp(r.Context(), ts, forwards)
	if err != nil {
		return err
	}
	if ev == nil {
		return mxhttp.NotFound("Unable to find event from %d in direction %s", ts, r.URL.Query().Get("dir"))
	}
	return mxhttp.WriteJSON(w, http.StatusOK, ev)
}

// ClosestToTimestamp finds the event of the room closest to ts (by its
// origin_server_ts) at or after it (forwards) or at or before it, among
// those the timeline's user may see; nil when there is none. Events with
// the same timestamp are taken in stream order. Only this server's copy
// of the room is searched (Synapse also asks other servers when its own
// copy has a gap, and pulls the event it is told about; that needs the
// remote event persisted, which is not done here).
func (t *Timeline) ClosestToTimestamp(ctx context.Context, ts int64, forwards bool) (*TimestampEvent, error) {
	return t.s.closestToTimestamp(ctx, t.roomID, ts, forwards, t.v.CanSee)
}

// ClosestToTimestampForServer is ClosestToTimestamp for another server
// (GET /_matrix/federation/v1/timestamp_to_event), which the caller has
// let into the room: any event counts, as the server may fetch each one
// (redacted where it could not see it).
func (s *Service) ClosestToTimestampForServer(ctx context.Context, roomID string, ts int64, forwards bool) (*TimestampEvent, error) {
	// Outliers (negative stream orderings) are not part of the timeline.
	return s.closestToTimestamp(ctx, roomID, ts, forwards, func(se *StoredEvent) bool { return se.StreamOrdering > 0 })
}

func (s *Service) closestToTimestamp(ctx context.Context, roomID string, ts int64, forwards bool, canSee func(*StoredEvent) bool) (*TimestampEvent, error) {
	cmp, order := ">", "ASC"
	if !forwards {
		cmp, order = "<", "DESC"
	}
	// Keyset paging over (origin_server_ts, stream_ordering): the first
	// page starts at ts inclusive, each next one after the last row read.
	curTS, curSO := ts, int64(-1<<62)
	if !forwards {
		curSO = 1 << 62
	}
	for scanned := 0; scanned < timestampScanMax; {
		rows, err := s.store.db.Reader().QueryContext(ctx, `SELECT `+eventColumns+` FROM events e
			WHERE e.room_id = $1 AND (e.origin_server_ts `+cmp+` $2 OR (e.origin_server_ts = $2 AND e.stream_ordering `+cmp+` $3))
			ORDER BY e.origin_server_ts `+order+`, e.stream_ordering `+order+` LIMIT $4`,
			roomID, curTS, curSO, timestampScanBatch)
		if err != nil {
			return nil, fmt.Errorf("find event by timestamp in %s: %w", roomID, err)
		}
		evs, err := s.store.scanEvents(ctx, rows)
		if err != nil {
			return nil, fmt.Errorf("find event by timestamp in %s: %w", roomID, err)
		}
		for _, se := range evs {
			if canSee(se) {
				return &TimestampEvent{EventID: se.Event.EventID(), OriginServerTS: se.Event.OriginServerTS()}, nil
			}
			curTS, curSO = se.Event.OriginServerTS(), se.StreamOrdering
		}
		scanned += len(evs)
		if len(evs) < timestampScanBatch {
			break
		}
	}
	return nil, nil
}
