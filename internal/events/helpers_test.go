package events_test

import (
	"testing"

	"ganglion/internal/canonicaljson"
	"ganglion/internal/events"
)

// specKey is the signing key of the spec's "Cryptographic Test Vectors".
func specKey(tb testing.TB) events.SigningKey {
	tb.Helper()
	k, err := events.ParseSigningKeyFile([]byte("ed25519 1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1\n"))
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func roomVersion(tb testing.TB, id string) *events.RoomVersion {
	tb.Helper()
	rv, ok := events.LookupRoomVersion(id)
	if !ok {
		tb.Fatalf("unknown room version %q", id)
	}
	return rv
}

func canonical(tb testing.TB, s string) string {
	tb.Helper()
	b, err := canonicaljson.Canonicalize([]byte(s), true)
	if err != nil {
		tb.Fatalf("canonicalize %s: %v", s, err)
	}
	return string(b)
}

func allVersions(tb testing.TB) []*events.RoomVersion {
	tb.Helper()
	var out []*events.RoomVersion
	for _, id := range events.SupportedRoomVersions() {
		out = append(out, roomVersion(tb, id))
	}
	return out
}
