package keys

import (
	"database/sql"
	"encoding/json"
	"reflect"
	"testing"
)

// The spliced answer must decode to the stored keys plus unsigned, exactly
// as decoding, adding and re-encoding would give.
func TestWithDisplayName(t *testing.T) {
	for _, tc := range []struct {
		stored string
		name   sql.NullString
	}{
		{`{"algorithms":["a"],"device_id":"D","user_id":"@u:x"}`, sql.NullString{String: `Al "<phone>"`, Valid: true}},
		{`{"device_id":"D"}`, sql.NullString{}},
		{`{}`, sql.NullString{String: "n", Valid: true}},
	} {
		got, ok := withDisplayName(tc.stored, tc.name)
		if !ok {
			t.Fatalf("%s: not spliced", tc.stored)
		}
		var want, have map[string]any
		if err := json.Unmarshal([]byte(tc.stored), &want); err != nil {
			t.Fatal(err)
		}
		if tc.name.Valid {
			want["unsigned"] = map[string]any{"device_display_name": tc.name.String}
		}
		if err := json.Unmarshal(got, &have); err != nil {
			t.Fatalf("%s: spliced %s is not JSON: %v", tc.stored, got, err)
		}
		if !reflect.DeepEqual(have, want) {
			t.Errorf("%s: got %s, want %v", tc.stored, got, want)
		}
	}
	if _, ok := withDisplayName(`[1]`, sql.NullString{}); ok {
		t.Error("a non-object was spliced")
	}
}
