// Package reports stores users' content reports (an event, or a whole
// room) and serves them to server admins through Synapse's admin API
// /_synapse/admin/v1/event_reports. As in Synapse v1.83, the endpoints are
// served by the main process (the workers document routes none of them).
package reports

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/ratelimit"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
)

// Service is the reports domain.
type Service struct {
	db      *storage.DB
	rooms   *rooms.Service
	limiter *ratelimit.Limiter // rc_reports, per user; nil: unlimited
	now     func() time.Time
}

func NewService(db *storage.DB, roomSvc *rooms.Service, limiter *ratelimit.Limiter, now func() time.Time) *Service {
	return &Service{db: db, rooms: roomSvc, limiter: limiter, now: now}
}

const adminPrefix = "/_synapse/admin/v1"

// Routes registers the client and admin endpoints.
func (s *Service) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	a := func(f accounts.AuthedHandler) http.Handler { return srv.Handle(acc.Auth(f)) }
	admin := func(f accounts.AuthedHandler) http.Handler {
		return a(func(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
			if !req.Admin {
				return mxhttp.Forbidden("You are not a server admin")
			}
			return f(w, r, req)
		})
	}
	mux.HandleClient("POST", "/rooms/{roomId}/report/{eventId}", a(s.reportEvent))
	mux.HandleClientV3Only("POST", "/rooms/{roomId}/report", a(s.reportRoom))
	mux.Handle("GET "+adminPrefix+"/event_reports", admin(s.list))
	mux.Handle("GET "+adminPrefix+"/event_reports/{id}", admin(s.get))
	mux.Handle("DELETE "+adminPrefix+"/event_reports/{id}", admin(s.delete))
	mux.Handle("GET "+adminPrefix+"/room_reports", admin(s.listRooms))
	mux.Handle("GET "+adminPrefix+"/room_reports/{id}", admin(s.getRoom))
	mux.Handle("DELETE "+adminPrefix+"/room_reports/{id}", admin(s.deleteRoom))
}

func (s *Service) checkRate(req *accounts.Requester) error {
	if s.limiter == nil || req.Admin {
		return nil
	}
	if ok, wait := s.limiter.Allow(req.UserID); !ok {
		return mxhttp.LimitExceeded(wait.Milliseconds() + 1)
	}
	return nil
}

// reportEvent is POST /rooms/{roomId}/report/{eventId}: reason (string)
// and score (an integer from -100, most offensive, to 0) are optional. An
// event the reporter may not see is 404 like an unknown one, so a report
// cannot probe for events.
func (s *Service) reportEvent(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	raw, err := mxhttp.ReadBody(r, mxhttp.DefaultMaxBody)
	if err != nil {
		return err
	}
	var body struct {
		Reason json.RawMessage `json:"reason"`
		Score  json.RawMessage `json:"score"`
	}
	if err := mxhttp.DecodeJSONBytes(r, raw, &body); err != nil {
		return err
	}
	var reason *string
	if isSet(body.Reason) {
		var v string
		if json.Unmarshal(body.Reason, &v) != nil {
			return mxhttp.BadJSON("Param 'reason' must be a string")
		}
		reason = &v
	}
	var score *int64
	if isSet(body.Score) {
		var v int64
		if json.Unmarshal(body.Score, &v) != nil {
			return mxhttp.BadJSON("Param 'score' must be an integer")
		}
		if v < -100 || v > 0 {
			return mxhttp.InvalidParam("Param 'score' must be an integer between -100 and 0")
		}
		score = &v
	}
	roomID, eventID := r.PathValue("roomId"), r.PathValue("eventId")
	if _, err := s.rooms.Event(r.Context(), req, roomID, eventID); err != nil {
		var me *mxhttp.Error
		if errors.As(err, &me) && me.Status < 500 {
			return mxhttp.NotFound("Unable to find event %s in %s", eventID, roomID)
		}
		return err
	}
	if err := s.checkRate(req); err != nil {
		return err
	}
	if _, err := s.db.Exec(r.Context(), `INSERT INTO event_reports (received_ts, room_id, event_id, user_id, reason, score, content)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, s.now().UnixMilli(), roomID, eventID, req.UserID, reason, score, string(raw)); err != nil {
		return fmt.Errorf("store report of %s: %w", eventID, err)
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}

func isSet(raw json.RawMessage) bool {
	return len(raw) > 0 && !bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
}

// reportRoom is POST /rooms/{roomId}/report (spec v1.13): reason is
// required. An unknown room is 404.
func (s *Service) reportRoom(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body struct {
		Reason *string `json:"reason"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.Reason == nil {
		return mxhttp.MissingParam("Missing reason")
	}
	roomID := r.PathValue("roomId")
	ok, err := s.rooms.Store().RoomExists(r.Context(), roomID)
	if err != nil {
		return err
	}
	if !ok {
		return mxhttp.NotFound("Room %s not found", roomID)
	}
	if err := s.checkRate(req); err != nil {
		return err
	}
	if _, err := s.db.Exec(r.Context(), `INSERT INTO room_reports (received_ts, room_id, user_id, reason) VALUES ($1, $2, $3, $4)`,
		s.now().UnixMilli(), roomID, req.UserID, *body.Reason); err != nil {
		return fmt.Errorf("store report of %s: %w", roomID, err)
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}

// Report is one entry of the admin API.
type Report struct {
	ID             int64           `json:"id"`
	ReceivedTS     int64           `json:"received_ts"`
	RoomID         string          `json:"room_id"`
	Name           *string         `json:"name"`
	EventID        string          `json:"event_id"`
	UserID         string          `json:"user_id"`
	Reason         *string         `json:"reason"`
	Score          *int64          `json:"score"`
	Sender         *string         `json:"sender"`
	CanonicalAlias *string         `json:"canonical_alias"`
	EventJSON      json.RawMessage `json:"event_json,omitempty"`
}

const reportColumns = `id, received_ts, room_id, event_id, user_id, reason, score`

func scanReport(row interface{ Scan(...any) error }) (Report, error) {
	var rp Report
	var reason sql.NullString
	var score sql.NullInt64
	if err := row.Scan(&rp.ID, &rp.ReceivedTS, &rp.RoomID, &rp.EventID, &rp.UserID, &reason, &score); err != nil {
		return rp, err
	}
	if reason.Valid {
		rp.Reason = &reason.String
	}
	if score.Valid {
		rp.Score = &score.Int64
	}
	return rp, nil
}

// describe fills what the admin sees beside the report: the room's name
// and canonical alias now, the event's sender, and with withJSON the event.
func (s *Service) describe(ctx context.Context, rps []Report, withJSON bool) error {
	ids := make([]string, 0, len(rps))
	for _, rp := range rps {
		ids = append(ids, rp.EventID)
	}
	evs, err := s.rooms.Store().EventsByID(ctx, ids)
	if err != nil {
		return err
	}
	type roomInfo struct{ name, alias *string }
	roomsSeen := map[string]roomInfo{}
	for i := range rps {
		rp := &rps[i]
		if se := evs[rp.EventID]; se != nil {
			sender := se.Event.Sender()
			rp.Sender = &sender
			if withJSON {
				rp.EventJSON = se.Event.JSON()
			}
		}
		info, ok := roomsSeen[rp.RoomID]
		if !ok {
			var name struct {
				Name string `json:"name"`
			}
			var alias struct {
				Alias string `json:"alias"`
			}
			if _, err := s.rooms.Store().StateContent(ctx, rp.RoomID, "m.room.name", "", &name); err != nil {
				return err
			}
			if _, err := s.rooms.Store().StateContent(ctx, rp.RoomID, "m.room.canonical_alias", "", &alias); err != nil {
				return err
			}
			if name.Name != "" {
				info.name = &name.Name
			}
			if alias.Alias != "" {
				info.alias = &alias.Alias
			}
			roomsSeen[rp.RoomID] = info
		}
		rp.Name, rp.CanonicalAlias = info.name, info.alias
	}
	return nil
}

// listParams reads the query of a report listing: from (offset), limit
// (default 100), dir (b: newest first, the default; f: oldest first),
// user_id and room_id (substring matches, as Synapse's LIKE), as the
// ORDER BY direction and a WHERE clause with its arguments.
func listParams(r *http.Request) (from, limit int64, order, cond string, args []any, err error) {
	q := r.URL.Query()
	if from, err = nonNegative(q.Get("from"), 0, "from"); err != nil {
		return
	}
	if limit, err = nonNegative(q.Get("limit"), 100, "limit"); err != nil {
		return
	}
	order = "DESC"
	switch q.Get("dir") {
	case "", "b":
	case "f":
		order = "ASC"
	default:
		err = mxhttp.InvalidParam("Unknown direction: %s", q.Get("dir"))
		return
	}
	var where []string
	for _, f := range []string{"user_id", "room_id"} {
		if v := q.Get(f); v != "" {
			args = append(args, "%"+escapeLike(v)+"%")
			where = append(where, fmt.Sprintf("%s LIKE $%d ESCAPE '\\'", f, len(args)))
		}
	}
	if len(where) > 0 {
		cond = " WHERE " + strings.Join(where, " AND ")
	}
	return
}

// list is GET /_synapse/admin/v1/event_reports: from (offset), limit
// (default 100), dir (b: newest first, the default; f: oldest first),
// user_id and room_id (substring matches, as Synapse's LIKE).
func (s *Service) list(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
	from, limit, order, cond, args, err := listParams(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	var total int64
	if err := s.db.Reader().QueryRowContext(ctx, `SELECT COUNT(*) FROM event_reports`+cond, args...).Scan(&total); err != nil {
		return fmt.Errorf("count event reports: %w", err)
	}
	args = append(args, limit, from)
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT `+reportColumns+` FROM event_reports`+cond+
		fmt.Sprintf(` ORDER BY received_ts %s, id %s LIMIT $%d OFFSET $%d`, order, order, len(args)-1, len(args)), args...)
	if err != nil {
		return fmt.Errorf("list event reports: %w", err)
	}
	out := []Report{}
	for rows.Next() {
		rp, err := scanReport(rows)
		if err != nil {
			rows.Close()
			return fmt.Errorf("list event reports: %w", err)
		}
		out = append(out, rp)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list event reports: %w", err)
	}
	if err := s.describe(ctx, out, false); err != nil {
		return err
	}
	resp := map[string]any{"event_reports": out, "total": total}
	if next := from + int64(len(out)); next < total && len(out) > 0 {
		resp["next_token"] = next
	}
	return mxhttp.WriteJSON(w, http.StatusOK, resp)
}

func nonNegative(v string, def int64, name string) (int64, error) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, mxhttp.InvalidParam("Query parameter %s must be a non-negative integer", name)
	}
	return n, nil
}

func escapeLike(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

func reportID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 0 {
		return 0, mxhttp.InvalidParam("The report_id parameter must be a string representing a positive integer")
	}
	return id, nil
}

// get is GET /_synapse/admin/v1/event_reports/{id}, with the event.
func (s *Service) get(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
	id, err := reportID(r)
	if err != nil {
		return err
	}
	rp, err := scanReport(s.db.Reader().QueryRowContext(r.Context(), `SELECT `+reportColumns+` FROM event_reports WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return mxhttp.NotFound("Event report not found")
	}
	if err != nil {
		return fmt.Errorf("load event report %d: %w", id, err)
	}
	rps := []Report{rp}
	if err := s.describe(r.Context(), rps, true); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, rps[0])
}

// delete is DELETE /_synapse/admin/v1/event_reports/{id}.
func (s *Service) delete(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
	id, err := reportID(r)
	if err != nil {
		return err
	}
	res, err := s.db.Exec(r.Context(), `DELETE FROM event_reports WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete event report %d: %w", id, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return mxhttp.NotFound("Event report not found")
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}
