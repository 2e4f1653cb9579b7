package events_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"ganglion/internal/events"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

// TestBuildWireFormat pins the exact PDU bytes Build produces. Room versions
// 3+ are deterministic (no random event id; ed25519 signatures are
// deterministic), so any diff here is a wire-format change that other
// servers would see.
func TestBuildWireFormat(t *testing.T) {
	key := specKey(t)
	member := events.ProtoEvent{
		RoomID: "!room:domain", Sender: "@alice:domain", Type: "m.room.member", StateKey: ptr("@alice:domain"),
		Content:    json.RawMessage(`{"membership":"join","displayname":"Alice","join_authorised_via_users_server":"@bob:domain"}`),
		PrevEvents: []string{"$prev"}, AuthEvents: []string{"$create", "$power"}, Depth: 2, OriginServerTS: 1700000000000,
		Unsigned: json.RawMessage(`{"age":3}`),
	}
	redaction := protoMessage()
	redaction.Type, redaction.Redacts, redaction.Content = "m.room.redaction", "$target", json.RawMessage(`{"reason":"spam"}`)
	for _, version := range []string{"3", "10", "11"} {
		rv := roomVersion(t, version)
		for name, p := range map[string]events.ProtoEvent{"message": protoMessage(), "member": member, "redaction": redaction} {
			t.Run("v"+version+"/"+name, func(t *testing.T) {
				e, err := events.Build(p, rv, key, "domain")
				if err != nil {
					t.Fatal(err)
				}
				got := append(append([]byte(e.EventID()), '\n'), append(e.JSON(), '\n')...)
				path := filepath.Join("testdata", "build_v"+version+"_"+name+".golden")
				if *update {
					if err := os.WriteFile(path, got, 0o644); err != nil {
						t.Fatal(err)
					}
				}
				want, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("%v (run with -update to create)", err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("wire format changed:\n got %s\nwant %s", got, want)
				}
			})
		}
	}
}
