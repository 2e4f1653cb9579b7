package typing

import (
	"context"
	"math"
	"net/http"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// Membership answers a user's current membership of a room ("join",
// "leave", …, "" if none); *rooms.Store has it.
type Membership interface {
	Membership(ctx context.Context, roomID, userID string) (string, int64, error)
}

// Handlers serve the client typing endpoint. They run on any process that
// serves it and write through a Writer, local or forwarded to the writer.
type Handlers struct {
	w     Writer
	rooms Membership
}

// NewHandlers builds the typing endpoints.
func NewHandlers(w Writer, rooms Membership) *Handlers {
	return &Handlers{w: w, rooms: rooms}
}

// Routes registers PUT /rooms/{roomId}/typing/{userId}.
func (h *Handlers) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	mux.HandleClient("PUT", "/rooms/{roomId}/typing/{userId}", srv.Handle(acc.Auth(h.putTyping)))
}

type typingBody struct {
	Typing  *bool    `json:"typing"`
	Timeout *float64 `json:"timeout"` // ms; a float so 30000.0 from sloppy clients is fine
}

func (h *Handlers) putTyping(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	roomID, userID := r.PathValue("roomId"), r.PathValue("userId")
	if userID != req.UserID {
		return mxhttp.Forbidden("User %s cannot set the typing state of %s", req.UserID, userID)
	}
	var body typingBody
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.Typing == nil {
		return mxhttp.BadJSON("Missing 'typing'")
	}
	var timeout time.Duration
	if body.Timeout != nil {
		ms := *body.Timeout
		if ms < 0 || math.IsNaN(ms) {
			return mxhttp.BadJSON("'timeout' must be a non-negative number of milliseconds")
		}
		// Capped before converting so a huge value cannot overflow.
		timeout = time.Duration(math.Min(ms, float64(MaxTimeout.Milliseconds()))) * time.Millisecond
	}
	m, _, err := h.rooms.Membership(r.Context(), roomID, req.UserID)
	if err != nil {
		return err
	}
	if m != "join" {
		return mxhttp.Forbidden("User %s not in room %s", req.UserID, roomID)
	}
	if err := h.w.SetTyping(r.Context(), roomID, req.UserID, *body.Typing, timeout); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}
