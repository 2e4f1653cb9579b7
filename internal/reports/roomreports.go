package reports

import (
	"database/sql"
	"errors"
	"fmt"
	"net/http"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// RoomReport is one room report (POST /v3/rooms/{roomId}/report) as the
// admin API shows it, with the room's name and canonical alias now.
type RoomReport struct {
	ID             int64   `json:"id"`
	ReceivedTS     int64   `json:"received_ts"`
	RoomID         string  `json:"room_id"`
	Name           *string `json:"name"`
	CanonicalAlias *string `json:"canonical_alias"`
	UserID         string  `json:"user_id"`
	Reason         string  `json:"reason"`
}

const roomReportColumns = `id, received_ts, room_id, user_id, reason`

func scanRoomReport(row interface{ Scan(...any) error }) (RoomReport, error) {
	var rp RoomReport
	err := row.Scan(&rp.ID, &rp.ReceivedTS, &rp.RoomID, &rp.UserID, &rp.Reason)
	return rp, err
}

// describeRooms adds each report's room name and canonical alias, through
// describe's lookup of event reports.
func (s *Service) describeRooms(r *http.Request, rps []RoomReport) error {
	as := make([]Report, len(rps))
	for i, rp := range rps {
		as[i] = Report{RoomID: rp.RoomID}
	}
	if err := s.describe(r.Context(), as, false); err != nil {
		return err
	}
	for i := range rps {
		rps[i].Name, rps[i].CanonicalAlias = as[i].Name, as[i].CanonicalAlias
	}
	return nil
}

// listRooms is GET /_synapse/admin/v1/room_reports, with event_reports'
// parameters (from, limit, dir, user_id, room_id).
func (s *Service) listRooms(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
	from, limit, order, cond, args, err := listParams(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	var total int64
	if err := s.db.Reader().QueryRowContext(ctx, `SELECT COUNT(*) FROM room_reports`+cond, args...).Scan(&total); err != nil {
		return fmt.Errorf("count room reports: %w", err)
	}
	args = append(args, limit, from)
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT `+roomReportColumns+` FROM room_reports`+cond+
		fmt.Sprintf(` ORDER BY received_ts %s, id %s LIMIT $%d OFFSET $%d`, order, order, len(args)-1, len(args)), args...)
	if err != nil {
		return fmt.Errorf("list room reports: %w", err)
	}
	out := []RoomReport{}
	for rows.Next() {
		rp, err := scanRoomReport(rows)
		if err != nil {
			rows.Close()
			return fmt.Errorf("list room reports: %w", err)
		}
		out = append(out, rp)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list room reports: %w", err)
	}
	if err := s.describeRooms(r, out); err != nil {
		return err
	}
	resp := map[string]any{"room_reports": out, "total": total}
	if next := from + int64(len(out)); next < total && len(out) > 0 {
		resp["next_token"] = next
	}
	return mxhttp.WriteJSON(w, http.StatusOK, resp)
}

// getRoom is GET /_synapse/admin/v1/room_reports/{id}.
func (s *Service) getRoom(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
	id, err := reportID(r)
	if err != nil {
		return err
	}
	rp, err := scanRoomReport(s.db.Reader().QueryRowContext(r.Context(), `SELECT `+roomReportColumns+` FROM room_reports WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return mxhttp.NotFound("Room report not found")
	}
	if err != nil {
		return fmt.Errorf("load room report %d: %w", id, err)
	}
	rps := []RoomReport{rp}
	if err := s.describeRooms(r, rps); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, rps[0])
}

// deleteRoom is DELETE /_synapse/admin/v1/room_reports/{id}.
func (s *Service) deleteRoom(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
	id, err := reportID(r)
	if err != nil {
		return err
	}
	res, err := s.db.Exec(r.Context(), `DELETE FROM room_reports WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete room report %d: %w", id, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return mxhttp.NotFound("Room report not found")
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}
