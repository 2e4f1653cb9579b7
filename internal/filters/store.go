package filters

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
)

// Store keeps uploaded filters.
type Store struct {
	db *storage.DB
}

func NewStore(db *storage.DB) *Store { return &Store{db: db} }

// Put stores a validated filter and returns its id.
func (s *Store) Put(ctx context.Context, userID string, raw []byte) (string, error) {
	var id int64
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(max(filter_id), -1) + 1 FROM user_filters WHERE user_id = $1`, userID).Scan(&id); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO user_filters (user_id, filter_id, filter_json) VALUES ($1, $2, $3)`, userID, id, string(raw))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("store filter for %s: %w", userID, err)
	}
	return strconv.FormatInt(id, 10), nil
}

// Get returns a stored filter's JSON, or nil if unknown.
func (s *Store) Get(ctx context.Context, userID, filterID string) ([]byte, error) {
	id, err := strconv.ParseInt(filterID, 10, 64)
	if err != nil {
		return nil, nil
	}
	var raw string
	err = s.db.Reader().QueryRowContext(ctx, `SELECT filter_json FROM user_filters WHERE user_id = $1 AND filter_id = $2`, userID, id).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load filter %s of %s: %w", filterID, userID, err)
	}
	return []byte(raw), nil
}

// Resolve turns a sync "filter" parameter (inline JSON or a stored id) into
// a Filter, with the spec's errors: M_NOT_JSON / M_BAD_JSON for bad inline
// filters, M_NOT_FOUND for unknown ids.
func (s *Store) Resolve(ctx context.Context, userID, param string) (*Filter, error) {
	if param == "" {
		return nil, nil
	}
	raw := []byte(param)
	if param[0] == '{' {
		if !jsonValid(raw) {
			return nil, mxhttp.NotJSON("filter is not valid JSON")
		}
	} else {
		stored, err := s.Get(ctx, userID, param)
		if err != nil {
			return nil, err
		}
		if stored == nil {
			return nil, mxhttp.NotFound("No filter %q for this user", param)
		}
		raw = stored
	}
	f, err := Parse(raw)
	if err != nil {
		return nil, mxhttp.BadJSON("%v", err)
	}
	return f, nil
}

// Routes registers the filter endpoints.
func (s *Store) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	mux.HandleClient("POST", "/user/{userId}/filter", srv.Handle(acc.Auth(s.post)))
	mux.HandleClient("GET", "/user/{userId}/filter/{filterId}", srv.Handle(acc.Auth(s.get)))
}

func (s *Store) post(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	if r.PathValue("userId") != req.UserID {
		return mxhttp.Forbidden("Cannot create filters for other users")
	}
	body, err := mxhttp.ReadBody(r, 64<<10)
	if err != nil {
		return err
	}
	var probe map[string]any
	if err := mxhttp.DecodeJSONBytes(r, body, &probe); err != nil {
		return err
	}
	if _, err := Parse(body); err != nil {
		return mxhttp.BadJSON("%v", err)
	}
	id, err := s.Put(r.Context(), req.UserID, body)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, map[string]string{"filter_id": id})
}

func (s *Store) get(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	if r.PathValue("userId") != req.UserID {
		return mxhttp.Forbidden("Cannot read other users' filters")
	}
	raw, err := s.Get(r.Context(), req.UserID, r.PathValue("filterId"))
	if err != nil {
		return err
	}
	if raw == nil {
		return mxhttp.NotFound("No such filter")
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(raw)
	return nil
}
