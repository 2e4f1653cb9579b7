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
	// server has no state of (or none it can build on): an invite received
	// through /invite (with unsigned.invite_room_state, to keep), or the
	// leave rejecting it and a knock, built by a resident server through
	// make_leave/make_knock. Its auth events are not here, so it is not
	// auth-checked (its signatures were: the sender's server's and ours);
	// it becomes the user's current membership in the room (current_state
	// and the state log, so sync lists it under invite/knock/leave) at a
	// new stream position, without becoming a forward extremity. (fedjoin
	// needs this of PersistRemote; see its report.)
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
	// without state) and the PDU came without StateBefore. Missing names
	// them; nothing was stored for this PDU. The caller fetches them
	// (get_missing_events) or the state before the PDU (/state_ids) and
	// tries again.
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
