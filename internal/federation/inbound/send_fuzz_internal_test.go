package inbound

import (
	"encoding/json"
	"errors"
	"testing"

	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
)

const fuzzPDU = `{"type":"m.room.message","room_id":"!r:remote.test","sender":"@b:remote.test","content":{"body":"x"},` +
	`"depth":3,"origin_server_ts":1,"prev_events":["$p"],"auth_events":["$a"],"hashes":{"sha256":"x"},"signatures":{}}`

// FuzzSendTransaction: any body is either refused with a Matrix error or
// yields a transaction within the spec's limits.
func FuzzSendTransaction(f *testing.F) {
	for _, s := range []string{
		`{"origin":"remote.test","origin_server_ts":1,"pdus":[` + fuzzPDU + `],"edus":[{"edu_type":"m.typing","content":{}}]}`,
		`{"origin":"remote.test","pdus":[]}`, `{"pdus":"x"}`, `{"origin":1}`, `[]`, `"x"`, ``, `{`,
		`{"origin":"a","pdus":[1,2,3],"edus":[null,"x",{"edu_type":1}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		txn, err := parseTransaction(body)
		if err != nil {
			var me *mxhttp.Error
			if !errors.As(err, &me) || me.Status != 400 {
				t.Fatalf("refusal is not a 400 Matrix error: %v", err)
			}
			return
		}
		if txn.Origin == "" || len(txn.PDUs) > maxTxnPDUs || len(txn.EDUs) > maxTxnEDUs {
			t.Fatalf("accepted a transaction outside the limits: origin %q, %d PDUs, %d EDUs", txn.Origin, len(txn.PDUs), len(txn.EDUs))
		}
	})
}

// FuzzSendPDU: parsing a transaction's PDU never panics, fails only with a
// per-PDU error, and an accepted PDU is of the room it names.
func FuzzSendPDU(f *testing.F) {
	for _, s := range []string{fuzzPDU, `{}`, `{"room_id":1}`, `{"room_id":"!r:x","event_id":"$e"}`, `null`, `[]`,
		`{"room_id":"!r:x","type":"m.room.member","state_key":"@a:x","content":{"membership":"join"},"sender":"@a:x","depth":"1"}`} {
		for _, v := range []uint8{0, 2, 9, 11} {
			f.Add([]byte(s), v)
		}
	}
	f.Fuzz(func(t *testing.T, raw []byte, v uint8) {
		ids := events.SupportedRoomVersions()
		rv, _ := events.LookupRoomVersion(ids[int(v)%len(ids)])
		ev, id, err := parsePDU(json.RawMessage(raw), func(string) (*events.RoomVersion, error) { return rv, nil })
		if err != nil {
			if !isPDUError(err) {
				t.Fatalf("not a per-PDU error: %v", err)
			}
			return
		}
		if id != ev.EventID() {
			t.Fatalf("id %q for event %s", id, ev.EventID())
		}
		var head struct {
			RoomID string `json:"room_id"`
		}
		if json.Unmarshal(raw, &head) != nil || head.RoomID != ev.RoomID() {
			t.Fatalf("accepted PDU of room %q names %q", ev.RoomID(), head.RoomID)
		}
	})
}
