package rooms

import (
	"encoding/json"
	"testing"
)

// TestRelationOfContent: what the persister indexes as a relation. Only an
// m.relates_to object with string event_id and rel_type counts; a rich
// reply alone (m.in_reply_to) or a malformed field is no relation, and a
// bad key does not hide a good relation.
func TestRelationOfContent(t *testing.T) {
	cases := []struct {
		name, content string
		want          relation
		ok            bool
	}{
		{"none", `{"body":"hi"}`, relation{}, false},
		{"thread", `{"m.relates_to":{"rel_type":"m.thread","event_id":"$r"}}`, relation{EventID: "$r", RelType: "m.thread"}, true},
		{"annotation", `{"m.relates_to":{"rel_type":"m.annotation","event_id":"$r","key":"👍"}}`,
			relation{EventID: "$r", RelType: "m.annotation", Key: "👍"}, true},
		{"bad key kept out", `{"m.relates_to":{"rel_type":"m.annotation","event_id":"$r","key":5}}`,
			relation{EventID: "$r", RelType: "m.annotation"}, true},
		{"rich reply only", `{"m.relates_to":{"m.in_reply_to":{"event_id":"$r"}}}`, relation{}, false},
		{"rel_type not a string", `{"m.relates_to":{"rel_type":5,"event_id":"$r"}}`, relation{}, false},
		{"event_id missing", `{"m.relates_to":{"rel_type":"m.thread"}}`, relation{}, false},
		{"relates_to not an object", `{"m.relates_to":"$r"}`, relation{}, false},
		{"key only mentioned in a body", `{"body":"\"m.relates_to\""}`, relation{}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := relationOfContent(json.RawMessage(c.content))
			if ok != c.ok || got != c.want {
				t.Fatalf("relationOfContent(%s) = %+v, %v; want %+v, %v", c.content, got, ok, c.want, c.ok)
			}
		})
	}
}

// FuzzRelationOfContent: any event content (untrusted) is read without a
// panic, and a relation found always names an event and a type.
func FuzzRelationOfContent(f *testing.F) {
	f.Add(`{"m.relates_to":{"rel_type":"m.thread","event_id":"$r"}}`)
	f.Add(`{"m.relates_to":{"rel_type":"m.annotation","event_id":"$r","key":"k"}}`)
	f.Add(`{"m.relates_to":null}`)
	f.Add(`{"m.relates_to":[1,2]}`)
	f.Fuzz(func(t *testing.T, content string) {
		rel, ok := relationOfContent(json.RawMessage(content))
		if ok && (rel.EventID == "" || rel.RelType == "") {
			t.Fatalf("relation without event id or type: %+v", rel)
		}
	})
}
