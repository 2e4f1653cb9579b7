package eventauth_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"ganglion/internal/eventauth"
	"ganglion/internal/events"
)

// Users of the test room. alice created it (100), mod has 50, bob is a
// plain member from another server, eve is banned, carol and dave are
// outsiders.
const (
	roomID = "!room:a.test"
	alice  = "@alice:a.test"
	mod    = "@mod:a.test"
	bob    = "@bob:b.test"
	carol  = "@carol:c.test"
	dave   = "@dave:a.test"
	eve    = "@eve:e.test"
)

// allVersions is every room version the rules cover.
func allVersions() []string { return versions(1, 11) }

// versions lists room versions from..to inclusive.
func versions(from, to int) []string {
	var out []string
	for v := from; v <= to; v++ {
		out = append(out, strconv.Itoa(v))
	}
	return out
}

func roomVersion(tb testing.TB, id string) *events.RoomVersion {
	tb.Helper()
	rv, ok := events.LookupRoomVersion(id)
	if !ok {
		tb.Fatalf("unknown room version %q", id)
	}
	return rv
}

// identityKey is the identity server key third-party invites are signed
// with; derived from a fixed seed so failures reproduce.
func identityKey() ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
}

// tpiSigned is the canonical JSON of the signed block of the test's
// third-party invite, written out by hand so the test does not depend on the
// canonicaliser it exercises.
const tpiSigned = `{"mxid":"@carol:c.test","sender":"@bob:b.test","token":"tok"}`

// placeholders are substituted in every JSON literal before parsing.
func placeholders(createID string) *strings.Replacer {
	key := identityKey()
	pub := key.Public().(ed25519.PublicKey)
	sig := ed25519.Sign(key, []byte(tpiSigned))
	badSig := ed25519.Sign(key, []byte(`{"mxid":"@carol:c.test","sender":"@bob:b.test","token":"other"}`))
	return strings.NewReplacer(
		"{{create}}", createID,
		"{{pubkey}}", base64.RawStdEncoding.EncodeToString(pub),
		"{{pubkey_urlpad}}", base64.URLEncoding.EncodeToString(pub),
		"{{sig}}", base64.RawStdEncoding.EncodeToString(sig),
		"{{badsig}}", base64.RawStdEncoding.EncodeToString(badSig),
	)
}

// buildEvent turns a compact JSON literal into a full PDU of room version rv
// and parses it with events.Parse. The literal needs type, sender and
// whatever it tests; room_id, depth, timestamps, hashes and (v1/v2) an
// event_id are filled in, and prev_events/auth_events given as plain ids are
// written in the version's format. prev_events defaults to none for create
// events and to one unrelated event otherwise.
func buildEvent(tb testing.TB, rv *events.RoomVersion, literal string, repl *strings.Replacer) *events.Event {
	tb.Helper()
	if repl != nil {
		literal = repl.Replace(literal)
	}
	dec := json.NewDecoder(strings.NewReader(literal))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		tb.Fatalf("bad test literal %s: %v", literal, err)
	}
	setDefault := func(k string, v any) {
		if _, ok := m[k]; !ok {
			m[k] = v
		}
	}
	setDefault("room_id", roomID)
	setDefault("content", map[string]any{})
	setDefault("depth", 5)
	setDefault("origin_server_ts", 1700000000000)
	setDefault("hashes", map[string]any{"sha256": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"})
	setDefault("signatures", map[string]any{})
	sender, _ := m["sender"].(string)
	domain := sender[strings.IndexByte(sender, ':')+1:]
	setDefault("origin", domain)
	if m["type"] == "m.room.create" {
		setDefault("prev_events", []any{})
	} else {
		setDefault("prev_events", []any{refID(rv, "prev", domain)})
	}
	setDefault("auth_events", []any{})
	if rv.Format == events.FormatV1 {
		sum := sha256.Sum256([]byte(literal))
		setDefault("event_id", refID(rv, fmt.Sprintf("%x", sum[:6]), domain))
		for _, k := range []string{"prev_events", "auth_events"} {
			var pairs []any
			for _, id := range m[k].([]any) {
				pairs = append(pairs, []any{id, map[string]any{"sha256": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"}})
			}
			if pairs == nil {
				pairs = []any{}
			}
			m[k] = pairs
		}
	}
	raw, err := json.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	ev, err := events.Parse(raw, rv)
	if err != nil {
		tb.Fatalf("events.Parse(%s): %v", raw, err)
	}
	return ev
}

// refID makes an event id of the version's shape that names no real event.
func refID(rv *events.RoomVersion, local, domain string) string {
	if rv.Format == events.FormatV1 {
		return "$" + local + ":" + domain
	}
	s := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf("%-32s", local)))
	if rv.Format == events.FormatV2 {
		s = base64.RawStdEncoding.EncodeToString([]byte(fmt.Sprintf("%-32s", local)))
	}
	return "$" + s
}

// room is a room's state at the point the event under test is checked.
type room struct {
	rv     *events.RoomVersion
	create *events.Event
	state  eventauth.StateMap
	repl   *strings.Replacer
}

// createLiteral is the room's m.room.create; v11 leaves out creator because
// the sender is the creator there.
func createLiteral(rv *events.RoomVersion, extra string) string {
	content := `"room_version":"` + rv.ID + `"`
	if !rv.ImplicitRoomCreator {
		content += `,"creator":"` + alice + `"`
	}
	if extra != "" {
		content += "," + extra
	}
	return `{"type":"m.room.create","state_key":"","sender":"` + alice + `","content":{` + content + `}}`
}

// baseState is the test room: invite-only, alice 100, mod 50, bob and mod
// joined, eve banned (the create event is built separately).
func baseState() []string {
	return []string{
		`{"type":"m.room.member","state_key":"@alice:a.test","sender":"@alice:a.test","content":{"membership":"join"}}`,
		`{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"users":{"@alice:a.test":100,"@mod:a.test":50}}}`,
		`{"type":"m.room.join_rules","state_key":"","sender":"@alice:a.test","content":{"join_rule":"invite"}}`,
		`{"type":"m.room.member","state_key":"@mod:a.test","sender":"@mod:a.test","content":{"membership":"join"}}`,
		`{"type":"m.room.member","state_key":"@bob:b.test","sender":"@bob:b.test","content":{"membership":"join"}}`,
		`{"type":"m.room.member","state_key":"@eve:e.test","sender":"@alice:a.test","content":{"membership":"ban"}}`,
	}
}

// roomSetup says how a case's room differs from the base room.
type roomSetup struct {
	createExtra string               // extra m.room.create content members
	bare        bool                 // only the create event, nothing else
	state       []string             // added or replacing (by type and state_key)
	omit        []eventauth.StateKey // removed from the base state
}

func newRoom(tb testing.TB, version string, setup roomSetup) *room {
	tb.Helper()
	rv := roomVersion(tb, version)
	r := &room{rv: rv}
	r.create = buildEvent(tb, rv, createLiteral(rv, setup.createExtra), nil)
	r.repl = placeholders(r.create.EventID())
	r.state = eventauth.NewStateMap(r.create)
	if setup.bare {
		return r
	}
	for _, lit := range append(baseState(), setup.state...) {
		ev := buildEvent(tb, rv, lit, r.repl)
		r.state[eventauth.StateKey{Type: ev.Type(), StateKey: *ev.StateKey()}] = ev
	}
	for _, k := range setup.omit {
		delete(r.state, k)
	}
	return r
}

func (r *room) event(tb testing.TB, literal string) *events.Event {
	tb.Helper()
	return buildEvent(tb, r.rv, literal, r.repl)
}
