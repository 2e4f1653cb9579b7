package rooms

import "testing"

// TestValidRoomID: "!opaque:server" ids and room version 12's "!" + hash
// ids are room ids; anything else is not.
func TestValidRoomID(t *testing.T) {
	hash := "!" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ-_01234" // 43 URL-safe base64 characters
	for id, want := range map[string]bool{
		"!abc:example.org": true,
		hash:               true,
		"!ab":              false,
		"!:x":              false,
		"abc:example.org":  false,
		hash[:43]:          false, // too short for a sha256
		hash + "A":         false,
		"!" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ+/01234": false, // standard alphabet
		"!" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ-_0123=": false,
		"!" + string(make([]byte, 300)) + ":x":              false,
	} {
		if got := validRoomID(id); got != want {
			t.Errorf("validRoomID(%q) = %v, want %v", id, got, want)
		}
	}
}
