// Package edus takes the EDUs of inbound federation transactions (m.typing,
// m.receipt, m.presence, m.direct_to_device, m.device_list_update,
// m.signing_key_update) and hands each to the stream writer that owns its
// data, through the same Writer interfaces the client API uses: locally
// on the writer, over HTTP replication elsewhere in a fleet. The /send
// endpoint (internal/federation/inbound) calls the handlers Register
// installs, with the transaction's authenticated origin.
//
// Every handler first checks that the EDU speaks only for users of the
// origin server: a server may report its own users' typing, receipts,
// presence, to-device messages and devices, never anyone else's.
package edus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"ganglion/internal/federation/inbound"
	"ganglion/internal/keys"
	"ganglion/internal/presence"
	"ganglion/internal/receipts"
	"ganglion/internal/todevice"
	"ganglion/internal/typing"
)

// EDU types of the server-server API this package handles.
const (
	Typing         = "m.typing"
	Receipt        = "m.receipt"
	Presence       = "m.presence"
	DirectToDevice = "m.direct_to_device"
	DeviceList     = "m.device_list_update"
	SigningKey     = "m.signing_key_update"
)

// RemoteTypingTimeout is how long a remote user stays typing without a
// refresh: their server sends typing: false when they stop, but a
// transaction may be lost with the server, so the typing state still
// expires (Synapse's federation typing timeout).
const RemoteTypingTimeout = 60 * time.Second

// DefaultResyncTimeout bounds a device list resync done while handling a
// transaction, so an unreachable server cannot hold the /send request.
const DefaultResyncTimeout = 10 * time.Second

// Rooms is what the handlers need of rooms: memberships (rooms.Store).
type Rooms interface {
	Membership(ctx context.Context, roomID, userID string) (string, int64, error)
	RoomsForUser(ctx context.Context, userID string, memberships ...string) ([]string, error)
	JoinedMembers(ctx context.Context, roomID string) ([]string, error)
}

// DeviceLists is what the device list handlers need of the keys domain
// (*keys.Service): the remote device list cache and its resync.
type DeviceLists interface {
	RemoteListState(ctx context.Context, userID string) (keys.RemoteList, error)
	ApplyRemote(ctx context.Context, userID string, c keys.RemoteChange, crossSigning map[string]json.RawMessage) error
	ApplyRemoteCrossSigning(ctx context.Context, userID string, crossSigning map[string]json.RawMessage) error
	ResyncRemote(ctx context.Context, userID string) error
	AnnounceRemote(ctx context.Context, userID string, deviceIDs []string) error
	RemoteCrossSigning(userID string, given map[string]json.RawMessage) map[string]json.RawMessage
}

// Deps are the writers (local or forwarding over replication) and readers
// the handlers hand EDUs to.
type Deps struct {
	Typing   typing.Writer
	Receipts receipts.Writer
	// Presence is nil when presence is disabled (presence.enabled: false):
	// remote presence is then dropped, as Synapse does.
	Presence presence.FederationWriter
	ToDevice todevice.Writer
	Keys     DeviceLists
	Rooms    Rooms
}

// Options configure the handlers.
type Options struct {
	ServerName    string
	ResyncTimeout time.Duration // 0 means DefaultResyncTimeout
}

// Handlers are the EDU handlers of one process.
type Handlers struct {
	opts Options
	d    Deps
	log  *slog.Logger
}

// New builds the handlers.
func New(opts Options, d Deps, log *slog.Logger) *Handlers {
	if opts.ResyncTimeout <= 0 {
		opts.ResyncTimeout = DefaultResyncTimeout
	}
	return &Handlers{opts: opts, d: d, log: log}
}

// Registrar installs EDU handlers (*inbound.Server).
type Registrar interface {
	HandleEDU(eduType string, h inbound.EDUHandler)
}

var _ Registrar = (*inbound.Server)(nil)

// Register installs a handler for every EDU type whose writer the process
// has.
func (h *Handlers) Register(r Registrar) {
	r.HandleEDU(Typing, h.Typing)
	r.HandleEDU(Receipt, h.Receipt)
	if h.d.Presence != nil {
		r.HandleEDU(Presence, h.Presence)
	}
	r.HandleEDU(DirectToDevice, h.DirectToDevice)
	r.HandleEDU(DeviceList, h.DeviceListUpdate)
	r.HandleEDU(SigningKey, h.SigningKeyUpdate)
}

// ErrWrongOrigin is returned for an EDU speaking for a user of another
// server than the one that sent it.
var ErrWrongOrigin = errors.New("EDU speaks for a user of another server")

// serverOf is the server name of a user id ("" if malformed).
func serverOf(userID string) string {
	if len(userID) < 4 || userID[0] != '@' || len(userID) > 255 {
		return ""
	}
	local, server, ok := strings.Cut(userID[1:], ":")
	if !ok || local == "" {
		return ""
	}
	return server
}

// checkOrigin refuses a user who is not of origin.
func checkOrigin(origin, userID string) error {
	if serverOf(userID) != origin || origin == "" {
		return fmt.Errorf("%w: %s sent %q", ErrWrongOrigin, origin, userID)
	}
	return nil
}

func (h *Handlers) local(userID string) bool { return serverOf(userID) == h.opts.ServerName }

// joined reports whether userID is joined to roomID here.
func (h *Handlers) joined(ctx context.Context, roomID, userID string) (bool, error) {
	m, _, err := h.d.Rooms.Membership(ctx, roomID, userID)
	if err != nil {
		return false, err
	}
	return m == "join", nil
}

// Typing handles m.typing: {room_id, user_id, typing}. The user must be
// joined to the room; local /sync then shows them in the room's ephemeral
// m.typing through the typing writer, as a local typer.
func (h *Handlers) Typing(ctx context.Context, origin string, content json.RawMessage) error {
	var e struct {
		RoomID string `json:"room_id"`
		UserID string `json:"user_id"`
		Typing bool   `json:"typing"`
	}
	if err := json.Unmarshal(content, &e); err != nil {
		return fmt.Errorf("m.typing: %w", err)
	}
	if err := checkOrigin(origin, e.UserID); err != nil {
		return fmt.Errorf("m.typing: %w", err)
	}
	if e.RoomID == "" {
		return errors.New("m.typing: no room_id")
	}
	ok, err := h.joined(ctx, e.RoomID, e.UserID)
	if err != nil {
		return fmt.Errorf("m.typing: %w", err)
	}
	if !ok {
		return fmt.Errorf("m.typing: %s is not joined to %s", e.UserID, e.RoomID)
	}
	if err := h.d.Typing.SetTyping(ctx, e.RoomID, e.UserID, e.Typing, RemoteTypingTimeout); err != nil {
		return fmt.Errorf("m.typing of %s in %s: %w", e.UserID, e.RoomID, err)
	}
	return nil
}

// Receipt handles m.receipt: {room_id: {receipt_type: {user_id: {event_ids,
// data}}}}. Only public read receipts travel between servers: m.read.private
// (and any other type) from federation is dropped. data.thread_id makes a
// threaded receipt. The user must be joined to the room. Every receipt is
// tried; the first error is reported.
func (h *Handlers) Receipt(ctx context.Context, origin string, content json.RawMessage) error {
	var byRoom map[string]map[string]map[string]struct {
		EventIDs []string                   `json:"event_ids"`
		Data     map[string]json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(content, &byRoom); err != nil {
		return fmt.Errorf("m.receipt: %w", err)
	}
	var errs []error
	for roomID, byType := range byRoom {
		for typ, byUser := range byType {
			if typ != receipts.Read {
				continue
			}
			for userID, r := range byUser {
				if err := checkOrigin(origin, userID); err != nil {
					errs = append(errs, fmt.Errorf("m.receipt in %s: %w", roomID, err))
					continue
				}
				if err := h.receipt(ctx, roomID, userID, r.EventIDs, r.Data); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

func (h *Handlers) receipt(ctx context.Context, roomID, userID string, eventIDs []string, data map[string]json.RawMessage) error {
	ok, err := h.joined(ctx, roomID, userID)
	if err != nil {
		return fmt.Errorf("m.receipt: %w", err)
	}
	if !ok {
		return fmt.Errorf("m.receipt: %s is not joined to %s", userID, roomID)
	}
	var thread string
	if t, ok := data["thread_id"]; ok {
		if err := json.Unmarshal(t, &thread); err != nil || thread == "" {
			return fmt.Errorf("m.receipt of %s in %s: thread_id must be a non-empty string", userID, roomID)
		}
	}
	// The receipt's body: the server's timestamp; thread_id is carried by
	// the row itself.
	body := map[string]json.RawMessage{}
	if ts, ok := data["ts"]; ok {
		var n int64
		if json.Unmarshal(ts, &n) == nil {
			body["ts"] = ts
		}
	}
	var raw json.RawMessage
	if len(body) > 0 {
		raw, _ = json.Marshal(body)
	}
	// Synapse sends the one event the receipt is at; a list of several
	// is taken in order, each only moving the receipt forward.
	for _, ev := range eventIDs {
		if ev == "" {
			continue
		}
		if _, err := h.d.Receipts.SetReceipt(ctx, receipts.Receipt{RoomID: roomID, Type: receipts.Read, UserID: userID,
			EventID: ev, ThreadID: thread, Data: raw}); err != nil {
			return fmt.Errorf("m.receipt of %s in %s: %w", userID, roomID, err)
		}
	}
	return nil
}

// Presence handles m.presence: {push: [{user_id, presence, status_msg,
// last_active_ago, currently_active}]}, given to the presence writer
// (Register installs it only when presence is enabled). Every entry is
// tried; entries for users of other servers are refused.
func (h *Handlers) Presence(ctx context.Context, origin string, content json.RawMessage) error {
	var e struct {
		Push []struct {
			UserID string `json:"user_id"`
			presence.Remote
		} `json:"push"`
	}
	if err := json.Unmarshal(content, &e); err != nil {
		return fmt.Errorf("m.presence: %w", err)
	}
	var errs []error
	for _, p := range e.Push {
		if err := checkOrigin(origin, p.UserID); err != nil {
			errs = append(errs, fmt.Errorf("m.presence: %w", err))
			continue
		}
		if !presence.ValidState(p.State) {
			errs = append(errs, fmt.Errorf("m.presence of %s: invalid state %q", p.UserID, p.State))
			continue
		}
		if err := h.d.Presence.SetRemotePresence(ctx, p.UserID, p.Remote); err != nil {
			errs = append(errs, fmt.Errorf("m.presence of %s: %w", p.UserID, err))
		}
	}
	return errors.Join(errs...)
}

// DirectToDevice handles m.direct_to_device: {sender, type, message_id,
// messages: {user_id: {device_id or "*": content}}}. Messages go to local
// users only (a server cannot make us relay to a third one), through the
// to_device writer, keyed by the sender and message_id so a retried
// transaction delivers nothing twice.
func (h *Handlers) DirectToDevice(ctx context.Context, origin string, content json.RawMessage) error {
	var e struct {
		Sender    string                                `json:"sender"`
		Type      string                                `json:"type"`
		MessageID string                                `json:"message_id"`
		Messages  map[string]map[string]json.RawMessage `json:"messages"`
	}
	if err := json.Unmarshal(content, &e); err != nil {
		return fmt.Errorf("m.direct_to_device: %w", err)
	}
	if err := checkOrigin(origin, e.Sender); err != nil {
		return fmt.Errorf("m.direct_to_device: %w", err)
	}
	if e.Type == "" || e.MessageID == "" {
		return fmt.Errorf("m.direct_to_device from %s: type and message_id are required", e.Sender)
	}
	local := map[string]map[string]json.RawMessage{}
	for userID, byDevice := range e.Messages {
		if !h.local(userID) {
			h.log.Info("dropping a to-device message for a user of another server", "origin", origin, "user_id", userID)
			continue
		}
		local[userID] = byDevice
	}
	if len(local) == 0 {
		return nil
	}
	// The transaction id space of to_device_txns is the sender's; federation
	// ids are kept apart from any a client could choose by their prefix
	// (a remote sender has no local device anyway).
	txnID := "m.direct_to_device:" + e.MessageID
	if err := h.d.ToDevice.Send(ctx, e.Sender, "", txnID, e.Type, local); err != nil {
		return fmt.Errorf("m.direct_to_device from %s: %w", e.Sender, err)
	}
	return nil
}

// SigningKeyUpdate handles m.signing_key_update: {user_id, master_key,
// self_signing_key}: the remote user's cross-signing keys, stored by the
// device_lists writer owning the user and announced to local users
// sharing a room with them (device_lists.changed).
func (h *Handlers) SigningKeyUpdate(ctx context.Context, origin string, content json.RawMessage) error {
	var e struct {
		UserID         string          `json:"user_id"`
		MasterKey      json.RawMessage `json:"master_key"`
		SelfSigningKey json.RawMessage `json:"self_signing_key"`
	}
	if err := json.Unmarshal(content, &e); err != nil {
		return fmt.Errorf("m.signing_key_update: %w", err)
	}
	if err := checkOrigin(origin, e.UserID); err != nil {
		return fmt.Errorf("m.signing_key_update: %w", err)
	}
	cs := h.d.Keys.RemoteCrossSigning(e.UserID, map[string]json.RawMessage{keys.KeyMaster: e.MasterKey, keys.KeySelfSigning: e.SelfSigningKey})
	if len(cs) == 0 {
		return fmt.Errorf("m.signing_key_update of %s: no valid key", e.UserID)
	}
	shared, err := h.sharesRoom(ctx, e.UserID)
	if err != nil || !shared {
		return err
	}
	if err := h.d.Keys.ApplyRemoteCrossSigning(ctx, e.UserID, cs); err != nil {
		return fmt.Errorf("m.signing_key_update of %s: %w", e.UserID, err)
	}
	return nil
}

// sharesRoom reports whether a local user is joined to a room userID is
// joined to: only such users' device lists are followed (as Synapse),
// so a server cannot fill our cache with users nobody here cares about.
func (h *Handlers) sharesRoom(ctx context.Context, userID string) (bool, error) {
	rooms, err := h.d.Rooms.RoomsForUser(ctx, userID, "join")
	if err != nil {
		return false, fmt.Errorf("rooms of %s: %w", userID, err)
	}
	for _, r := range rooms {
		members, err := h.d.Rooms.JoinedMembers(ctx, r)
		if err != nil {
			return false, fmt.Errorf("members of %s: %w", r, err)
		}
		for _, m := range members {
			if h.local(m) {
				return true, nil
			}
		}
	}
	return false, nil
}
