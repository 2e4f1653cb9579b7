package rooms

import (
	"context"
	"encoding/json"
)

// RemoteBatch is what a federation handler hands a room's persister: events
// other servers built. The handler has checked each event's signatures and
// content hash (redacting it on a hash mismatch) and the origin's right to
// send it; the persister checks everything about the room: auth rules
// against the event's auth events, the state before it and the current
// state (soft fail), computes the state at each event and resolves the
// room's current state over its forward extremities.
type RemoteBatch struct {
	// RoomVersion must be set when the room may be new here (a join or an
	// invite through another server); otherwise the stored version is used
	// and a different one here is an error.
	RoomVersion string `json:"room_version,omitempty"`
	// Outliers are events stored without being part of the timeline: the
	// auth chain and state a send_join or /state answer carried, or auth
	// events fetched on their own. They are auth-checked against their own
	// auth events only (which must be stored or among Outliers); rejected
	// ones are stored as rejected. Any order.
	Outliers []json.RawMessage `json:"outliers,omitempty"`
	// PDUs join the room's timeline, in the order given (prev events first).
	PDUs []RemotePDU `json:"pdus,omitempty"`
	// Backfill marks PDUs as history older than everything stored (a
	// /backfill answer): each is checked against its own auth events only
	// and stored below the timeline, newest first whatever the order given;
	// the current state and the forward extremities do not change.
	Backfill bool `json:"backfill,omitempty"`
}

// RemotePDU is one timeline event of a RemoteBatch.
type RemotePDU struct {
	Event json.RawMessage `json:"event"`
	// StateBefore, when set, is the room's state before the event as another
	// server told it (the event ids of its /state_ids answer or of a
	// send_join answer's state), for an event whose prev events are
	// unknown here. Each id must be stored or among the batch's Outliers.
	StateBefore []string `json:"state_before,omitempty"`
	// OutOfBand marks a membership event of a local user in a room this
	// server has no state of (an invite received over federation, or the
	// leave that rejects it, or a knock): it is shown to that user but not
	// checked against the room's state, which we do not have; the
	// signatures of the server that sent it (and ours, for an invite)
	// vouch for it. In a room we are in, the flag is ignored.
	OutOfBand bool `json:"out_of_band,omitempty"`
}

// Outcomes of a remote event.
const (
	// RemotePersisted: the event is in the timeline at StreamPos.
	RemotePersisted = "persisted"
	// RemoteDuplicate: the event was already stored; nothing changed.
	RemoteDuplicate = "duplicate"
	// RemoteSoftFailed: the event passes the auth rules against the state
	// before it but not against the current state; it is stored (other
	// events may reference it) but clients never see it and it is not a
	// forward extremity.
	RemoteSoftFailed = "soft_failed"
	// RemoteRejected: the event fails the auth rules against its auth
	// events or against the state before it; Error says why. It is stored
	// as rejected so it is not fetched again.
	RemoteRejected = "rejected"
	// RemoteOutlier: an outlier was stored.
	RemoteOutlier = "outlier"
	// RemoteMissingPrev: some prev events are unknown here (or stored
	// without state) and the PDU came without StateBefore, or some of its
	// auth events (or StateBefore's events) are not stored. Missing names
	// them; nothing was stored for this PDU. The caller fetches the missing
	// prev events (get_missing_events) or the state before the PDU
	// (/state_ids) and missing auth events (as Outliers) and tries again.
	RemoteMissingPrev = "missing_prev"
)

// RemoteResult is the outcome of one event of a RemoteBatch: results are
// the batch's outliers, in order, then its PDUs.
type RemoteResult struct {
	EventID   string   `json:"event_id"`
	Outcome   string   `json:"outcome"`
	StreamPos int64    `json:"stream_ordering,omitempty"`
	Error     string   `json:"error,omitempty"`
	Missing   []string `json:"missing,omitempty"`
}

// RemoteWriter persists events built by other servers. Like EventWriter it
// is the local Persister in a monolith and, in a fleet, forwards to the
// room's persister over HTTP replication, so a room's persister stays the
// only writer of its events whichever server built them.
type RemoteWriter interface {
	// PersistRemote stores a batch of one room's remote events. An error is
	// returned for a failure of the whole batch (the database, a bad room
	// version); a single event's failure is in its RemoteResult, and the
	// other events are still stored.
	PersistRemote(ctx context.Context, roomID string, batch RemoteBatch) ([]RemoteResult, error)
}
