package sync

import (
	"encoding/json"
	"testing"
)

func TestRemoteStrippedState(t *testing.T) {
	u := json.RawMessage(`{"age":5,"invite_room_state":[
		{"type":"m.room.name","state_key":"","sender":"@a:remote.test","content":{"name":"Far"}},
		{"type":"m.room.member","state_key":"@a:remote.test","sender":"@a:remote.test","content":{"membership":"join"}},
		{"type":"m.room.topic","sender":"@a:remote.test","content":{"topic":"no state key"}},
		{"type":"m.room.join_rules","state_key":"","sender":"@a:remote.test","content":"not an object"},
		"junk"]}`)
	got := remoteStrippedState(u)
	if len(got) != 1 || got[0].Type != "m.room.name" || string(got[0].Content) != `{"name":"Far"}` {
		t.Errorf("stripped state = %+v, want only the room name", got)
	}
	if remoteStrippedState(json.RawMessage(`{"age":5}`)) != nil || remoteStrippedState(nil) != nil {
		t.Error("an event without invite_room_state has stripped state")
	}
}
