package receipts

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
)

// FullyReadSetter moves a user's m.fully_read marker, which is room
// account data, not a receipt (spec: "Fully read markers"). The account
// data domain implements it; the receipt endpoints only validate and pass
// the request on.
type FullyReadSetter interface {
	SetFullyRead(ctx context.Context, userID, roomID, eventID string) error
}

// Membership answers a user's current membership of a room ("" if none);
// *rooms.Store has it.
type Membership interface {
	Membership(ctx context.Context, roomID, userID string) (string, int64, error)
}

// Events returns an event of a room if the requester may see it, and a
// Matrix 404 otherwise; *rooms.Service has it.
type Events interface {
	Event(ctx context.Context, req *accounts.Requester, roomID, eventID string) (*rooms.ClientEvent, error)
}

// Handlers serve the receipt and read marker endpoints on any process;
// receipts go through a Writer, local or forwarded to a receipts writer.
type Handlers struct {
	w         Writer
	members   Membership
	events    Events
	fullyRead FullyReadSetter
}

// NewHandlers builds the endpoints.
func NewHandlers(w Writer, members Membership, events Events, fullyRead FullyReadSetter) *Handlers {
	return &Handlers{w: w, members: members, events: events, fullyRead: fullyRead}
}

// Routes registers POST /rooms/{roomId}/receipt/{receiptType}/{eventId} and
// POST /rooms/{roomId}/read_markers.
func (h *Handlers) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	mux.HandleClient("POST", "/rooms/{roomId}/receipt/{receiptType}/{eventId}", srv.Handle(acc.Auth(h.postReceipt)))
	mux.HandleClient("POST", "/rooms/{roomId}/read_markers", srv.Handle(acc.Auth(h.postReadMarkers)))
}

func (h *Handlers) postReceipt(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	roomID, typ, eventID := r.PathValue("roomId"), r.PathValue("receiptType"), r.PathValue("eventId")
	switch typ {
	case Read, ReadPrivate, FullyRead:
	default:
		return mxhttp.InvalidParam("Receipt type %q is not one of %s, %s, %s", typ, Read, ReadPrivate, FullyRead)
	}
	var body map[string]json.RawMessage
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	threadID, err := threadParam(body, typ)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if err := h.requireJoined(ctx, req, roomID); err != nil {
		return err
	}
	if err := h.requireVisible(ctx, req, roomID, eventID); err != nil {
		return err
	}
	if typ == FullyRead {
		err = h.fullyRead.SetFullyRead(ctx, req.UserID, roomID, eventID)
	} else {
		_, err = h.w.SetReceipt(ctx, Receipt{RoomID: roomID, Type: typ, UserID: req.UserID, EventID: eventID, ThreadID: threadID})
	}
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}

// threadParam validates the body's thread_id (spec: "Threaded read
// receipts"): absent or null means unthreaded; otherwise a non-empty string,
// either "main" or a thread root's event id, and only on real receipts.
func threadParam(body map[string]json.RawMessage, typ string) (string, error) {
	raw, ok := body["thread_id"]
	if !ok || string(raw) == "null" {
		return "", nil
	}
	if typ == FullyRead {
		return "", mxhttp.InvalidParam("thread_id is not allowed with %s", FullyRead)
	}
	var id string
	if err := json.Unmarshal(raw, &id); err != nil {
		return "", mxhttp.InvalidParam("thread_id must be a string")
	}
	if id == "" {
		return "", mxhttp.InvalidParam("thread_id must be a non-empty string")
	}
	if id != MainThread && !strings.HasPrefix(id, "$") {
		return "", mxhttp.InvalidParam("thread_id must be %q or an event id", MainThread)
	}
	return id, nil
}

func (h *Handlers) requireJoined(ctx context.Context, req *accounts.Requester, roomID string) error {
	m, _, err := h.members.Membership(ctx, roomID, req.UserID)
	if err != nil {
		return err
	}
	if m != "join" {
		return mxhttp.Forbidden("User %s not in room %s", req.UserID, roomID)
	}
	return nil
}

// requireVisible refuses receipts for events that are not in the room or
// that the user may not see: a receipt would otherwise leak (to the room)
// or probe (for the user) events across history visibility.
func (h *Handlers) requireVisible(ctx context.Context, req *accounts.Requester, roomID, eventID string) error {
	if eventID == "" {
		return mxhttp.NotFound("Event not found")
	}
	_, err := h.events.Event(ctx, req, roomID, eventID)
	return err
}

// readMarkersBody is POST /read_markers: each marker is optional.
type readMarkersBody struct {
	FullyRead   string `json:"m.fully_read"`
	Read        string `json:"m.read"`
	ReadPrivate string `json:"m.read.private"`
}

func (h *Handlers) postReadMarkers(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body readMarkersBody
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	roomID := r.PathValue("roomId")
	ctx := r.Context()
	if err := h.requireJoined(ctx, req, roomID); err != nil {
		return err
	}
	// Every target is checked before anything is written, so a bad one
	// does not leave the others half applied.
	for _, id := range []string{body.FullyRead, body.Read, body.ReadPrivate} {
		if id == "" {
			continue
		}
		if err := h.requireVisible(ctx, req, roomID, id); err != nil {
			return err
		}
	}
	if body.FullyRead != "" {
		if err := h.fullyRead.SetFullyRead(ctx, req.UserID, roomID, body.FullyRead); err != nil {
			return err
		}
	}
	for _, rc := range []struct{ typ, id string }{{Read, body.Read}, {ReadPrivate, body.ReadPrivate}} {
		if rc.id == "" {
			continue
		}
		if _, err := h.w.SetReceipt(ctx, Receipt{RoomID: roomID, Type: rc.typ, UserID: req.UserID, EventID: rc.id}); err != nil {
			return err
		}
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}
