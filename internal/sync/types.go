// Package sync owns /sync and the legacy /events and /initialSync: it
// computes a user's view between two stream tokens from the database and
// long-polls on the notifier, holding no database connection while waiting.
package sync

import (
	"context"
	"encoding/json"

	"ganglion/internal/accountdata"
	"ganglion/internal/presence"
	"ganglion/internal/push"
	"ganglion/internal/rooms"
	"ganglion/internal/streams"
	"ganglion/internal/todevice"
)

// The streams sync reads are reached through these small interfaces, so the
// same code serves a process that writes them and one that only reads them.

// TypingReader is the typing stream's read side.
type TypingReader interface {
	// Typing is the room's current typers.
	Typing(roomID string) []string
	// ChangedRooms lists rooms whose typing changed in (from, to].
	ChangedRooms(from, to int64) []string
}

// ReceiptsReader is the receipts stream's read side.
type ReceiptsReader interface {
	// ForRooms returns per room the m.receipt content for receipts in
	// (from, to] (from 0: all current ones) visible to userID.
	ForRooms(ctx context.Context, userID string, roomIDs []string, from, to int64) (map[string]json.RawMessage, error)
}

// AccountDataReader is the account data stream's read side.
type AccountDataReader interface {
	Since(ctx context.Context, userID string, from, to int64) (global []accountdata.Event, rooms map[string][]accountdata.Event, err error)
	IgnoredUsers(ctx context.Context, userID string) (map[string]bool, error)
}

// PushRulesReader is the push_rules stream's read side: the m.push_rules
// account data content for a window, nil when it did not change in it
// (always present for an initial sync, from 0).
type PushRulesReader interface {
	AccountData(ctx context.Context, userID string, from, to int64) (json.RawMessage, error)
}

// NotificationCounter reads unread notification counts: per room, per
// thread ("main" outside threads).
type NotificationCounter interface {
	Counts(ctx context.Context, userID string, rooms []string) (map[string]map[string]push.Count, error)
}

// ToDeviceReader is the to-device stream's read side.
type ToDeviceReader interface {
	Messages(ctx context.Context, userID, deviceID string, from, to int64, limit int) ([]todevice.Message, int64, error)
	// Ack deletes messages up to upTo: the client's since token proves it
	// received them.
	Ack(ctx context.Context, userID, deviceID string, upTo int64) error
}

// PresenceReader is the presence stream's read side.
type PresenceReader interface {
	Since(ctx context.Context, forUser string, from, to int64) ([]presence.Event, error)
	// ForUsers is the current presence of users (for those who newly
	// share a room with the syncing user).
	ForUsers(ctx context.Context, userIDs []string) ([]presence.Event, error)
	// Enabled is presence.enabled.
	Enabled() bool
}

// KeysReader is the E2EE read side: device list changes between two
// tokens and a device's one-time and fallback key state.
type KeysReader interface {
	Changes(ctx context.Context, userID string, from, to streams.Token) (changed, left []string, err error)
	// SyncKeyCounts returns the device's one-time key counts and its
	// unused fallback key types together.
	SyncKeyCounts(ctx context.Context, userID, deviceID string) (map[string]int, []string, error)
}

// Response is the /sync body.
type Response struct {
	NextBatch   string        `json:"next_batch"`
	Rooms       RoomsResponse `json:"rooms"`
	Presence    EventList     `json:"presence"`
	AccountData EventList     `json:"account_data"`
	ToDevice    EventList     `json:"to_device"`
	DeviceLists struct {
		Changed []string `json:"changed"`
		Left    []string `json:"left"`
	} `json:"device_lists"`
	DeviceOneTimeKeysCount map[string]int `json:"device_one_time_keys_count"`
	// DeviceUnusedFallbackKeyTypes is omitted when keys are not wired:
	// clients read its absence as "the server does not support fallback
	// keys", and an empty list as "upload one".
	DeviceUnusedFallbackKeyTypes *[]string `json:"device_unused_fallback_key_types,omitempty"`
}

// EventList is {"events": [...]}.
type EventList struct {
	Events []any `json:"events"`
}

// RoomsResponse is the rooms section.
type RoomsResponse struct {
	Join   map[string]*JoinedRoom  `json:"join"`
	Invite map[string]*InvitedRoom `json:"invite"`
	Leave  map[string]*LeftRoom    `json:"leave"`
	Knock  map[string]*KnockedRoom `json:"knock"`
}

// Timeline is a room's timeline section.
type Timeline struct {
	Events    []rooms.ClientEvent `json:"events"`
	Limited   bool                `json:"limited"`
	PrevBatch string              `json:"prev_batch,omitempty"`
}

// StateList is {"events": [...]} for state.
type StateList struct {
	Events []rooms.ClientEvent `json:"events"`
}

// Summary is the room summary of a joined room.
type Summary struct {
	Heroes       []string `json:"m.heroes,omitempty"`
	JoinedCount  *int     `json:"m.joined_member_count,omitempty"`
	InvitedCount *int     `json:"m.invited_member_count,omitempty"`
}

// JoinedRoom is one entry of rooms.join.
type JoinedRoom struct {
	Summary             Summary       `json:"summary"`
	State               StateList     `json:"state"`
	Timeline            Timeline      `json:"timeline"`
	Ephemeral           EventList     `json:"ephemeral"`
	AccountData         EventList     `json:"account_data"`
	UnreadNotifications Notifications `json:"unread_notifications"`
	// UnreadThreadNotifications holds per-thread counts when the filter
	// asks for them (unread_thread_notifications).
	UnreadThreadNotifications map[string]Notifications `json:"unread_thread_notifications,omitempty"`
}

// Notifications are the unread counts: notifying events after the user's
// read receipt.
type Notifications struct {
	HighlightCount    int `json:"highlight_count"`
	NotificationCount int `json:"notification_count"`
}

// StrippedEvent is a stripped state event (invite_state / knock_state).
type StrippedEvent struct {
	Type     string          `json:"type"`
	StateKey string          `json:"state_key"`
	Sender   string          `json:"sender"`
	Content  json.RawMessage `json:"content"`
}

// InvitedRoom is one entry of rooms.invite.
type InvitedRoom struct {
	InviteState struct {
		Events []StrippedEvent `json:"events"`
	} `json:"invite_state"`
}

// KnockedRoom is one entry of rooms.knock.
type KnockedRoom struct {
	KnockState struct {
		Events []StrippedEvent `json:"events"`
	} `json:"knock_state"`
}

// LeftRoom is one entry of rooms.leave.
type LeftRoom struct {
	State       StateList `json:"state"`
	Timeline    Timeline  `json:"timeline"`
	AccountData EventList `json:"account_data"`
}

func newResponse() *Response {
	r := &Response{}
	r.Rooms.Join = map[string]*JoinedRoom{}
	r.Rooms.Invite = map[string]*InvitedRoom{}
	r.Rooms.Leave = map[string]*LeftRoom{}
	r.Rooms.Knock = map[string]*KnockedRoom{}
	r.Presence.Events = []any{}
	r.AccountData.Events = []any{}
	r.ToDevice.Events = []any{}
	r.DeviceLists.Changed = []string{}
	r.DeviceLists.Left = []string{}
	r.DeviceOneTimeKeysCount = map[string]int{}
	return r
}

// empty reports whether an incremental response has nothing for the client
// (then a long-poll keeps waiting).
func (r *Response) empty() bool {
	return len(r.Rooms.Join) == 0 && len(r.Rooms.Invite) == 0 && len(r.Rooms.Leave) == 0 && len(r.Rooms.Knock) == 0 &&
		len(r.Presence.Events) == 0 && len(r.AccountData.Events) == 0 && len(r.ToDevice.Events) == 0 &&
		len(r.DeviceLists.Changed) == 0 && len(r.DeviceLists.Left) == 0
}
