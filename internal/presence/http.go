package presence

import (
	"encoding/json"
	"net/http"
	"strings"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// Routes registers GET and PUT /presence/{userId}/status.
func (s *Service) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	h := &handlers{s: s, acc: acc}
	mux.HandleClient("GET", "/presence/{userId}/status", srv.Handle(acc.Auth(h.get)))
	mux.HandleClient("PUT", "/presence/{userId}/status", srv.Handle(acc.Auth(h.put)))
}

type handlers struct {
	s   *Service
	acc *accounts.Service
}

func (h *handlers) put(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	userID := r.PathValue("userId")
	if userID != req.UserID {
		return mxhttp.Forbidden("Can only set your own presence state")
	}
	if ok, wait := h.s.perUser.Allow(userID); !ok {
		return mxhttp.LimitExceeded(wait.Milliseconds() + 1)
	}
	var body struct {
		Presence  *string         `json:"presence"`
		StatusMsg json.RawMessage `json:"status_msg"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.Presence == nil {
		return mxhttp.MissingParam("Missing presence")
	}
	if !ValidState(*body.Presence) {
		return mxhttp.InvalidParam("Invalid presence state %q", *body.Presence)
	}
	var msg string
	setStatus := false
	if len(body.StatusMsg) > 0 && string(body.StatusMsg) != "null" {
		if err := json.Unmarshal(body.StatusMsg, &msg); err != nil {
			return mxhttp.BadJSON("status_msg must be a string")
		}
		setStatus = true
	} else if string(body.StatusMsg) == "null" {
		setStatus = true // explicit null clears it
	}
	// With presence disabled or untracked the writer is a NoopWriter and
	// this answers 200 without effect, as Synapse does.
	if _, err := h.s.w.SetPresence(r.Context(), userID, *body.Presence, msg, setStatus); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}

func (h *handlers) get(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	userID := r.PathValue("userId")
	if !validUserID(userID) {
		return mxhttp.InvalidParam("Invalid user id %q", userID)
	}
	if !h.s.opts.Enabled {
		return mxhttp.WriteJSON(w, http.StatusOK, Content{Presence: Offline})
	}
	ctx := r.Context()
	if _, server, _ := accounts.SplitUserID(userID); server == h.s.opts.ServerName {
		ok, err := h.acc.UserExists(ctx, userID)
		if err != nil {
			return err
		}
		if !ok {
			return mxhttp.NotFound("Unknown user %s", userID)
		}
	}
	ok, err := h.s.CanSee(ctx, req.UserID, userID)
	if err != nil {
		return err
	}
	if !ok {
		return mxhttp.Forbidden("You are not allowed to see their presence.")
	}
	c, err := h.s.Status(ctx, userID)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, c)
}

// validUserID is the shape check of "@local:server".
func validUserID(id string) bool {
	i := strings.IndexByte(id, ':')
	return len(id) <= 255 && strings.HasPrefix(id, "@") && i > 1 && i < len(id)-1
}
