package sync

import "encoding/json"

// remoteStrippedState reads unsigned.invite_room_state (or
// knock_room_state) of an out-of-band membership event; nil if none. An
// entry that is not a state event is skipped, and the member event of the
// user is left to the caller.
func remoteStrippedState(unsigned json.RawMessage) []StrippedEvent {
	if len(unsigned) == 0 {
		return nil
	}
	var u struct {
		Invite []json.RawMessage `json:"invite_room_state"`
		Knock  []json.RawMessage `json:"knock_room_state"`
	}
	if json.Unmarshal(unsigned, &u) != nil || (u.Invite == nil && u.Knock == nil) {
		return nil
	}
	out := []StrippedEvent{}
	for _, raw := range append(u.Invite, u.Knock...) {
		var e struct {
			Type     string          `json:"type"`
			StateKey *string         `json:"state_key"`
			Sender   string          `json:"sender"`
			Content  json.RawMessage `json:"content"`
		}
		if json.Unmarshal(raw, &e) != nil || e.Type == "" || e.StateKey == nil || e.Type == "m.room.member" {
			continue
		}
		if len(e.Content) == 0 || e.Content[0] != '{' {
			continue
		}
		out = append(out, StrippedEvent{Type: e.Type, StateKey: *e.StateKey, Sender: e.Sender, Content: e.Content})
	}
	return out
}
