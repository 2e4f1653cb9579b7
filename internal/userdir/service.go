package userdir

import (
	"net/http"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/ratelimit"
)

const (
	defaultLimit = 10
	// maxLimit is Synapse's cap on limit.
	maxLimit = 50
)

// Service answers POST /user_directory/search on any process: it only
// reads the directory tables.
type Service struct {
	store   *Store
	enabled bool
	opts    SearchOptions
	limiter *ratelimit.Limiter // rc_user_directory; nil means none
}

func NewService(store *Store, enabled bool, opts SearchOptions, limiter *ratelimit.Limiter) *Service {
	return &Service{store: store, enabled: enabled, opts: opts, limiter: limiter}
}

// Routes registers the endpoint.
func (s *Service) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	mux.HandleClient("POST", "/user_directory/search", srv.Handle(acc.Auth(s.search)))
}

type searchRequest struct {
	SearchTerm *string `json:"search_term"`
	Limit      *int    `json:"limit"`
}

type searchResponse struct {
	Limited bool   `json:"limited"`
	Results []User `json:"results"`
}

func (s *Service) search(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body searchRequest
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.SearchTerm == nil {
		return mxhttp.MissingParam("search_term is required")
	}
	limit := defaultLimit
	if body.Limit != nil {
		if *body.Limit < 0 {
			return mxhttp.InvalidParam("limit must not be negative")
		}
		limit = min(*body.Limit, maxLimit)
	}
	if s.limiter != nil && !req.Admin {
		if ok, wait := s.limiter.Allow(req.UserID); !ok {
			return mxhttp.LimitExceeded(wait.Milliseconds() + 1)
		}
	}
	if !s.enabled {
		return mxhttp.WriteJSON(w, 200, searchResponse{Results: []User{}})
	}
	users, limited, err := s.store.Search(r.Context(), req.UserID, *body.SearchTerm, limit, s.opts)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, searchResponse{Limited: limited, Results: users})
}
