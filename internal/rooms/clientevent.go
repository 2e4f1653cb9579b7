package rooms

import (
	"context"
	"encoding/json"
	"time"
)

// ClientEvent is the client-server API's event format.
type ClientEvent struct {
	Content        json.RawMessage `json:"content"`
	EventID        string          `json:"event_id"`
	OriginServerTS int64           `json:"origin_server_ts"`
	RoomID         string          `json:"room_id,omitempty"`
	Sender         string          `json:"sender"`
	StateKey       *string         `json:"state_key,omitempty"`
	Type           string          `json:"type"`
	Redacts        string          `json:"redacts,omitempty"`
	Unsigned       map[string]any  `json:"unsigned,omitempty"`
}

// Formatter renders stored events for one viewer: the sending device sees
// its transaction id, redacted events are pruned, state events carry the
// content they replaced.
type Formatter struct {
	s        *Service
	store    *Store
	userID   string
	deviceID string
	now      func() time.Time
	// cachedMembership: unsigned.membership histories may come from the
	// state cache (SyncFormatter).
	cachedMembership bool
}

func (s *Service) Formatter(userID, deviceID string) *Formatter {
	return &Formatter{s: s, store: s.store, userID: userID, deviceID: deviceID, now: s.now}
}

// Format renders events; prev_content and redacted_because are loaded in
// one batch, and so are the bundled aggregations (bundle.go).
func (f *Formatter) Format(ctx context.Context, evs []*StoredEvent) ([]ClientEvent, error) {
	var need []string
	for _, se := range evs {
		if se.ReplacesState != "" {
			need = append(need, se.ReplacesState)
		}
		if se.RedactedBy != "" {
			need = append(need, se.RedactedBy)
		}
	}
	var related map[string]*StoredEvent
	if len(need) > 0 {
		var err error
		if related, err = f.store.EventsByID(ctx, need); err != nil {
			return nil, err
		}
	}
	out := make([]ClientEvent, 0, len(evs))
	for _, se := range evs {
		out = append(out, f.one(se, related))
	}
	if err := f.bundle(ctx, evs, out); err != nil {
		return nil, err
	}
	if err := f.addMembership(ctx, evs, out); err != nil {
		return nil, err
	}
	return out, nil
}

func (f *Formatter) one(se *StoredEvent, related map[string]*StoredEvent) ClientEvent {
	ev := se.Event
	ce := ClientEvent{
		Content:        ev.Content(),
		EventID:        ev.EventID(),
		OriginServerTS: ev.OriginServerTS(),
		RoomID:         ev.RoomID(),
		Sender:         ev.Sender(),
		StateKey:       ev.StateKey(),
		Type:           ev.Type(),
		Unsigned:       map[string]any{},
	}
	if ev.Type() == "m.room.redaction" {
		ce.Redacts = ev.Redacts()
	}
	ce.Unsigned["age"] = max(f.now().UnixMilli()-ev.OriginServerTS(), 0)
	if se.TxnID != "" && ev.Sender() == f.userID && se.SenderDevice == f.deviceID {
		ce.Unsigned["transaction_id"] = se.TxnID
	}
	if se.RedactedBy != "" {
		if red, err := ev.Redact(); err == nil {
			ce.Content = red.Content()
		}
		if rb := related[se.RedactedBy]; rb != nil {
			rbf := f.one(&StoredEvent{Event: rb.Event, StreamOrdering: rb.StreamOrdering}, nil)
			ce.Unsigned["redacted_because"] = rbf
		}
	}
	if prev := related[se.ReplacesState]; prev != nil && se.ReplacesState != "" {
		content := prev.Event.Content()
		if prev.RedactedBy != "" {
			if red, err := prev.Event.Redact(); err == nil {
				content = red.Content()
			}
		}
		ce.Unsigned["prev_content"] = content
		ce.Unsigned["replaces_state"] = se.ReplacesState
		ce.Unsigned["prev_sender"] = prev.Event.Sender()
	}
	if len(ce.Content) == 0 {
		ce.Content = json.RawMessage("{}")
	}
	return ce
}
