package push

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// EventLoader formats events for a user (GET /notifications shows each
// notification's event); missing events are left out of the map.
type EventLoader func(ctx context.Context, userID string, eventIDs []string) (map[string]EventView, error)

// EventView is an event as the client-server API shows it, with the
// timestamp a notification carries.
type EventView struct {
	Event          any
	OriginServerTS int64
}

// SetEventLoader enables GET /notifications.
func (s *Service) SetEventLoader(l EventLoader) { s.events = l }

// Notification is one entry of GET /notifications.
type Notification struct {
	Actions []json.RawMessage `json:"actions"`
	Event   any               `json:"event"`
	Read    bool              `json:"read"`
	RoomID  string            `json:"room_id"`
	TS      int64             `json:"ts"`
}

const (
	defaultNotificationsLimit = 50
	maxNotificationsLimit     = 1000
)

// NotificationsRoutes registers GET /notifications.
func (s *Service) NotificationsRoutes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	mux.HandleClient("GET", "/notifications", srv.Handle(acc.Auth(s.getNotifications)))
}

func (s *Service) getNotifications(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	q := r.URL.Query()
	limit := defaultNotificationsLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return mxhttp.InvalidParam("limit must be a non-negative integer")
		}
		limit = min(n, maxNotificationsLimit)
	}
	var before int64
	if v := q.Get("from"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return mxhttp.InvalidParam("Invalid from token")
		}
		before = n
	}
	only := q.Get("only")
	list, next, err := s.Notifications(r.Context(), req.UserID, before, limit, only == "highlight")
	if err != nil {
		return err
	}
	out := map[string]any{"notifications": list}
	if next != "" {
		out["next_token"] = next
	}
	return mxhttp.WriteJSON(w, http.StatusOK, out)
}

// Notifications lists the user's notifications newest first, those before
// stream position before (0: from the newest), at most limit; next is the
// token for the following page ("" at the end).
func (s *Service) Notifications(ctx context.Context, userID string, before int64, limit int, highlightsOnly bool) ([]Notification, string, error) {
	list := []Notification{}
	if limit == 0 || s.events == nil {
		return list, "", nil
	}
	var conds []string
	args := []any{userID}
	if before > 0 {
		args = append(args, before)
		conds = append(conds, fmt.Sprintf(`epa.stream_ordering < $%d`, len(args)))
	}
	if highlightsOnly {
		conds = append(conds, `epa.highlight = 1`)
	}
	args = append(args, limit)
	lim := fmt.Sprintf(`$%d`, len(args))
	// Each branch of the union is cut to the page first, so a user in
	// many busy rooms does not sort all of their notifications.
	own, room := notifyingBranches(`epa.event_id AS event_id, epa.room_id AS room_id, epa.stream_ordering AS stream_ordering,
		epa.thread_id AS thread_id, epa.actions AS actions`, "", "$1", strings.Join(conds, " AND "))
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT epa.event_id, epa.room_id, epa.stream_ordering, epa.actions,
		CASE WHEN `+unreadCond("$1")+` THEN 0 ELSE 1 END
		FROM (SELECT * FROM (`+own+` ORDER BY epa.stream_ordering DESC LIMIT `+lim+`) a
			UNION ALL SELECT * FROM (`+room+` ORDER BY epa.stream_ordering DESC LIMIT `+lim+`) c
			ORDER BY stream_ordering DESC LIMIT `+lim+`) epa
		ORDER BY epa.stream_ordering DESC`, args...)
	if err != nil {
		return nil, "", fmt.Errorf("list notifications of %s: %w", userID, err)
	}
	type row struct {
		eventID, roomID string
		pos             int64
		actions         string
		read            int
	}
	var got []row
	for rows.Next() {
		var x row
		if err := rows.Scan(&x.eventID, &x.roomID, &x.pos, &x.actions, &x.read); err != nil {
			rows.Close()
			return nil, "", fmt.Errorf("list notifications of %s: %w", userID, err)
		}
		got = append(got, x)
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return nil, "", fmt.Errorf("list notifications of %s: %w", userID, err)
	}
	ids := make([]string, len(got))
	for i, x := range got {
		ids[i] = x.eventID
	}
	evs, err := s.events(ctx, userID, ids)
	if err != nil {
		return nil, "", err
	}
	for _, x := range got {
		ev, ok := evs[x.eventID]
		if !ok {
			continue
		}
		var actions []json.RawMessage
		_ = json.Unmarshal([]byte(x.actions), &actions)
		list = append(list, Notification{Actions: actions, Event: ev.Event, Read: x.read == 1, RoomID: x.roomID, TS: ev.OriginServerTS})
	}
	next := ""
	if len(got) == limit {
		next = strconv.FormatInt(got[len(got)-1].pos, 10)
	}
	return list, next, nil
}
