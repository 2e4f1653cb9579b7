package media

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

// The admin media API, as Synapse's /_synapse/admin/v1 media endpoints.
// Protected media (safe_from_quarantine) is never quarantined and never
// deleted by date.

const adminPrefix = "/_synapse/admin/v1"

func (h *handlers) adminRoutes(mux *mxhttp.Mux, srv *mxhttp.Server) {
	a := func(f accounts.AuthedHandler) http.Handler { return srv.Handle(h.acc.Auth(admin(f))) }
	mux.Handle("POST "+adminPrefix+"/media/quarantine/{serverName}/{mediaId}", a(h.quarantineOne))
	mux.Handle("POST "+adminPrefix+"/media/unquarantine/{serverName}/{mediaId}", a(h.unquarantineOne))
	mux.Handle("POST "+adminPrefix+"/room/{roomId}/media/quarantine", a(h.quarantineRoom))
	mux.Handle("POST "+adminPrefix+"/quarantine_media/{roomId}", a(h.quarantineRoom))
	mux.Handle("POST "+adminPrefix+"/user/{userId}/media/quarantine", a(h.quarantineUser))
	mux.Handle("POST "+adminPrefix+"/media/protect/{mediaId}", a(h.protect(true)))
	mux.Handle("POST "+adminPrefix+"/media/unprotect/{mediaId}", a(h.protect(false)))
	mux.Handle("DELETE "+adminPrefix+"/media/{serverName}/{mediaId}", a(h.deleteOne))
	mux.Handle("POST "+adminPrefix+"/media/delete", a(h.deleteBefore))
	mux.Handle("POST "+adminPrefix+"/purge_media_cache", a(h.purgeMediaCache))
	mux.Handle("GET "+adminPrefix+"/users/{userId}/media", a(h.listUserMedia))
	mux.Handle("DELETE "+adminPrefix+"/users/{userId}/media", a(h.deleteUserMedia))
}

func admin(f accounts.AuthedHandler) accounts.AuthedHandler {
	return func(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
		if !req.Admin {
			return mxhttp.Forbidden("You are not a server admin")
		}
		return f(w, r, req)
	}
}

func (h *handlers) quarantineOne(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	if _, err := h.s.meta.db.Exec(r.Context(), `UPDATE media SET quarantined_by = $1
		WHERE server_name = $2 AND media_id = $3 AND NOT safe_from_quarantine`,
		req.UserID, r.PathValue("serverName"), r.PathValue("mediaId")); err != nil {
		return fmt.Errorf("quarantine media: %w", err)
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{})
}

func (h *handlers) unquarantineOne(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
	if _, err := h.s.meta.db.Exec(r.Context(), `UPDATE media SET quarantined_by = NULL
		WHERE server_name = $1 AND media_id = $2`, r.PathValue("serverName"), r.PathValue("mediaId")); err != nil {
		return fmt.Errorf("unquarantine media: %w", err)
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{})
}

func (h *handlers) protect(on bool) accounts.AuthedHandler {
	return func(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
		if _, err := h.s.meta.db.Exec(r.Context(), `UPDATE media SET safe_from_quarantine = $1
			WHERE server_name = $2 AND media_id = $3`, on, h.s.cfg.ServerName, r.PathValue("mediaId")); err != nil {
			return fmt.Errorf("protect media: %w", err)
		}
		return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{})
	}
}

func (h *handlers) quarantineUser(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	res, err := h.s.meta.db.Exec(r.Context(), `UPDATE media SET quarantined_by = $1
		WHERE server_name = $2 AND user_id = $3 AND quarantined_by IS NULL AND NOT safe_from_quarantine`,
		req.UserID, h.s.cfg.ServerName, r.PathValue("userId"))
	if err != nil {
		return fmt.Errorf("quarantine media of user: %w", err)
	}
	n, _ := res.RowsAffected()
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"num_quarantined": n})
}

// quarantineRoom quarantines the local media that the room's events point
// to (content.url and content.info.thumbnail_url, as Synapse looks at).
func (h *handlers) quarantineRoom(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	ids, err := h.s.roomMediaIDs(r.Context(), r.PathValue("roomId"))
	if err != nil {
		return err
	}
	var n int64
	for _, id := range ids {
		res, err := h.s.meta.db.Exec(r.Context(), `UPDATE media SET quarantined_by = $1
			WHERE server_name = $2 AND media_id = $3 AND quarantined_by IS NULL AND NOT safe_from_quarantine`,
			req.UserID, h.s.cfg.ServerName, id)
		if err != nil {
			return fmt.Errorf("quarantine media of room: %w", err)
		}
		c, _ := res.RowsAffected()
		n += c
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"num_quarantined": n})
}

// roomMediaIDs lists the ids of local media the room's events point to.
func (s *Service) roomMediaIDs(ctx context.Context, roomID string) ([]string, error) {
	rows, err := s.meta.db.Reader().QueryContext(ctx, `SELECT json FROM events WHERE room_id = $1 AND json LIKE '%mxc://%'`, roomID)
	if err != nil {
		return nil, fmt.Errorf("scan room %s for media: %w", roomID, err)
	}
	defer rows.Close()
	seen := map[string]bool{}
	var out []string
	prefix := "mxc://" + s.cfg.ServerName + "/"
	for rows.Next() {
		var raw string
		if err := rows.Scan(&raw); err != nil {
			return nil, fmt.Errorf("scan room %s for media: %w", roomID, err)
		}
		var ev struct {
			Content struct {
				URL  any `json:"url"`
				Info struct {
					ThumbnailURL any `json:"thumbnail_url"`
				} `json:"info"`
			} `json:"content"`
		}
		if json.Unmarshal([]byte(raw), &ev) != nil {
			continue
		}
		for _, v := range []any{ev.Content.URL, ev.Content.Info.ThumbnailURL} {
			u, ok := v.(string)
			if !ok {
				continue
			}
			if id, ok := strings.CutPrefix(u, prefix); ok && ValidMediaID(id) && !seen[id] {
				seen[id] = true
				out = append(out, id)
			}
		}
	}
	return out, rows.Err()
}

func (h *handlers) deleteOne(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
	server, id := r.PathValue("serverName"), r.PathValue("mediaId")
	if server != h.s.cfg.ServerName {
		return mxhttp.InvalidParam("Can only delete local media")
	}
	found, err := h.s.Delete(r.Context(), server, id)
	if err != nil {
		return err
	}
	if !found {
		return mxhttp.NotFound("Unknown media")
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"deleted_media": []string{id}, "total": 1})
}

func intParam(r *http.Request, name string, def int64, required bool) (int64, error) {
	raw := r.URL.Query().Get(name)
	if raw == "" {
		if required {
			return 0, mxhttp.MissingParam("Missing integer query parameter %s", name)
		}
		return def, nil
	}
	n, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || n < 0 {
		return 0, mxhttp.InvalidParam("Query parameter %s must be a non-negative integer", name)
	}
	return n, nil
}

// deleteBefore deletes local media last created before before_ts (and
// larger than size_gt), except protected media and, with keep_profiles
// (default true), media used as a profile picture.
func (h *handlers) deleteBefore(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
	before, err := intParam(r, "before_ts", 0, true)
	if err != nil {
		return err
	}
	sizeGT, err := intParam(r, "size_gt", 0, false)
	if err != nil {
		return err
	}
	keepProfiles := true
	switch r.URL.Query().Get("keep_profiles") {
	case "", "true":
	case "false":
		keepProfiles = false
	default:
		return mxhttp.InvalidParam("keep_profiles must be true or false")
	}
	q := `SELECT media_id FROM media WHERE server_name = $1 AND created_ts < $2 AND media_length IS NOT NULL
		AND media_length > $3 AND NOT safe_from_quarantine`
	if keepProfiles {
		q += ` AND NOT EXISTS (SELECT 1 FROM profiles p WHERE p.avatar_url = $4 || media.media_id)`
	} else {
		q += ` AND $4 <> ''`
	}
	ids, err := h.s.meta.listIDs(r.Context(), q, h.s.cfg.ServerName, before, sizeGT, "mxc://"+h.s.cfg.ServerName+"/")
	if err != nil {
		return fmt.Errorf("list media to delete: %w", err)
	}
	return h.deleteIDs(w, r, ids)
}

func (h *handlers) deleteIDs(w http.ResponseWriter, r *http.Request, ids []string) error {
	deleted := []string{}
	for _, id := range ids {
		found, err := h.s.Delete(r.Context(), h.s.cfg.ServerName, id)
		if err != nil {
			return err
		}
		if found {
			deleted = append(deleted, id)
		}
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"deleted_media": deleted, "total": len(deleted)})
}

// userMediaOrder maps order_by values to columns.
var userMediaOrder = map[string]string{
	"": "created_ts", "created_ts": "created_ts", "media_id": "media_id", "upload_name": "upload_name",
	"media_length": "media_length", "media_type": "content_type", "quarantined_by": "quarantined_by",
	"safe_from_quarantine": "safe_from_quarantine",
}

type userMediaPage struct {
	ids   []string
	items []map[string]any
	total int64
	next  int64
}

func (h *handlers) userMedia(r *http.Request) (*userMediaPage, error) {
	userID := r.PathValue("userId")
	from, err := intParam(r, "from", 0, false)
	if err != nil {
		return nil, err
	}
	limit, err := intParam(r, "limit", 100, false)
	if err != nil {
		return nil, err
	}
	col, ok := userMediaOrder[r.URL.Query().Get("order_by")]
	if !ok {
		return nil, mxhttp.InvalidParam("Unknown order_by")
	}
	dir := "ASC"
	switch r.URL.Query().Get("dir") {
	case "", "f":
	case "b":
		dir = "DESC"
	default:
		return nil, mxhttp.InvalidParam("dir must be f or b")
	}
	ctx := r.Context()
	p := &userMediaPage{items: []map[string]any{}}
	if err := h.s.meta.db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM media WHERE server_name = $1 AND user_id = $2`,
		h.s.cfg.ServerName, userID).Scan(&p.total); err != nil {
		return nil, fmt.Errorf("count media of %s: %w", userID, err)
	}
	rows, err := h.s.meta.db.Reader().QueryContext(ctx, `SELECT `+mediaColumns+` FROM media
		WHERE server_name = $1 AND user_id = $2 ORDER BY `+col+` `+dir+`, media_id `+dir+` LIMIT $3 OFFSET $4`,
		h.s.cfg.ServerName, userID, limit, from)
	if err != nil {
		return nil, fmt.Errorf("list media of %s: %w", userID, err)
	}
	defer rows.Close()
	for rows.Next() {
		m, err := scanMedia(rows)
		if err != nil {
			return nil, fmt.Errorf("list media of %s: %w", userID, err)
		}
		item := map[string]any{
			"media_id": m.MediaID, "media_type": m.ContentType, "media_length": m.Length, "upload_name": nil,
			"created_ts": m.CreatedTS, "last_access_ts": m.CreatedTS, "quarantined_by": nil,
			"safe_from_quarantine": m.Protected,
		}
		if m.UploadName != "" {
			item["upload_name"] = m.UploadName
		}
		if m.QuarantinedBy != "" {
			item["quarantined_by"] = m.QuarantinedBy
		}
		p.items = append(p.items, item)
		p.ids = append(p.ids, m.MediaID)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list media of %s: %w", userID, err)
	}
	if from+int64(len(p.items)) < p.total {
		p.next = from + int64(len(p.items))
	}
	return p, nil
}

func (h *handlers) listUserMedia(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
	p, err := h.userMedia(r)
	if err != nil {
		return err
	}
	body := map[string]any{"media": p.items, "total": p.total}
	if p.next > 0 {
		body["next_token"] = p.next
	}
	return mxhttp.WriteJSON(w, http.StatusOK, body)
}

func (h *handlers) deleteUserMedia(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
	p, err := h.userMedia(r)
	if err != nil {
		return err
	}
	return h.deleteIDs(w, r, p.ids)
}

// purgeMediaCache deletes cached remote media last served before
// before_ts (Synapse's purge_media_cache).
func (h *handlers) purgeMediaCache(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
	before, err := intParam(r, "before_ts", 0, true)
	if err != nil {
		return err
	}
	n, err := h.s.PurgeRemoteCache(r.Context(), before)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"deleted": n})
}
