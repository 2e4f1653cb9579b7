package events_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"ganglion/internal/canonicaljson"
	"ganglion/internal/events"
)

func ptr(s string) *string { return &s }

func protoMessage() events.ProtoEvent {
	return events.ProtoEvent{
		RoomID:         "!room:domain",
		Sender:         "@alice:domain",
		Type:           "m.room.message",
		Content:        json.RawMessage(`{"msgtype":"m.text","body":"hello <world> & ünïcödé"}`),
		PrevEvents:     []string{"$prev"},
		AuthEvents:     []string{"$create", "$member", "$power"},
		Depth:          7,
		OriginServerTS: 1700000000000,
	}
}

func TestBuildRoundTrip(t *testing.T) {
	key := specKey(t)
	protos := map[string]events.ProtoEvent{
		"message": protoMessage(),
		"state": {
			RoomID: "!room:domain", Sender: "@alice:domain", Type: "m.room.member", StateKey: ptr("@alice:domain"),
			Content: json.RawMessage(`{"membership":"join","displayname":"Alice"}`), AuthEvents: []string{"$create"},
			PrevEvents: []string{"$prev"}, Depth: 2, OriginServerTS: 1,
		},
		"create without refs": {
			RoomID: "!room:domain", Sender: "@alice:domain", Type: "m.room.create", StateKey: ptr(""),
			Content: json.RawMessage(`{"room_version":"10"}`), Depth: 1, OriginServerTS: 1,
		},
	}
	for _, rv := range allVersions(t) {
		for name, p := range protos {
			t.Run(fmt.Sprintf("v%s/%s", rv.ID, name), func(t *testing.T) {
				if rv.RoomIDFromCreate && p.Type == "m.room.create" {
					p.RoomID = "" // v12+: the create event's hash is the room id
				}
				e, err := events.Build(p, rv, key, "domain")
				if err != nil {
					t.Fatal(err)
				}
				if p.RoomID == "" {
					p.RoomID = "!" + e.EventID()[1:]
				}
				parsed, err := events.Parse(e.JSON(), rv)
				if err != nil {
					t.Fatalf("Parse(Build()) failed: %v\n%s", err, e.JSON())
				}
				if parsed.EventID() != e.EventID() || !bytes.Equal(parsed.JSON(), e.JSON()) {
					t.Fatalf("round trip changed the event: %s vs %s", parsed.EventID(), e.EventID())
				}
				if parsed.Type() != p.Type || parsed.Sender() != p.Sender || parsed.RoomID() != p.RoomID ||
					parsed.Depth() != p.Depth || parsed.OriginServerTS() != p.OriginServerTS ||
					!slices.Equal(parsed.PrevEventIDs(), p.PrevEvents) || !slices.Equal(parsed.AuthEventIDs(), p.AuthEvents) ||
					parsed.IsState() != (p.StateKey != nil) {
					t.Errorf("fields differ from proto: %s", parsed.JSON())
				}
				if strings.Contains(string(e.JSON()), `"origin"`) {
					t.Errorf("built event carries origin: %s", e.JSON())
				}
				if err := events.CheckContentHash(parsed); err != nil {
					t.Errorf("CheckContentHash: %v", err)
				}
				if err := events.VerifyEventSignature(parsed, "domain", key.ID, key.Public()); err != nil {
					t.Errorf("VerifyEventSignature: %v", err)
				}
				checkEventIDFormat(t, rv, e)
				checkTampering(t, rv, key, e)
			})
		}
	}
}

func checkEventIDFormat(t *testing.T, rv *events.RoomVersion, e *events.Event) {
	t.Helper()
	switch rv.Format {
	case events.FormatV1:
		if !regexp.MustCompile(`^\$[A-Za-z]{18}:domain$`).MatchString(e.EventID()) {
			t.Errorf("v1 event id %q", e.EventID())
		}
	case events.FormatV2:
		if !regexp.MustCompile(`^\$[A-Za-z0-9+/]{43}$`).MatchString(e.EventID()) {
			t.Errorf("v3 event id %q", e.EventID())
		}
	case events.FormatV3:
		if !regexp.MustCompile(`^\$[A-Za-z0-9_-]{43}$`).MatchString(e.EventID()) {
			t.Errorf("v4+ event id %q", e.EventID())
		}
	}
	if rv.Format != events.FormatV1 {
		if want := independentEventID(t, rv, e.JSON()); e.EventID() != want {
			t.Errorf("event id %s, independently computed %s", e.EventID(), want)
		}
	}
}

// independentEventID recomputes a v3+ event id with encoding/json maps (which
// sort keys) instead of this package's code. It only handles events whose
// content redacts to {} or that are m.room.member/m.room.create (kept keys
// listed here), and ASCII without <, >, &.
func independentEventID(t *testing.T, rv *events.RoomVersion, raw []byte) string {
	t.Helper()
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	keep := map[string]bool{"event_id": true, "type": true, "room_id": true, "sender": true, "state_key": true,
		"content": true, "hashes": true, "depth": true, "prev_events": true, "auth_events": true, "origin_server_ts": true}
	if !rv.UpdatedRedactionRules {
		keep["origin"], keep["membership"], keep["prev_state"] = true, true, true
	}
	for k := range m {
		if !keep[k] {
			delete(m, k)
		}
	}
	content := m["content"].(map[string]any)
	switch m["type"] {
	case "m.room.member":
		m["content"] = map[string]any{"membership": content["membership"]}
	case "m.room.create":
		if !rv.UpdatedRedactionRules {
			m["content"] = map[string]any{}
		}
	default:
		m["content"] = map[string]any{}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
	if rv.Format == events.FormatV2 {
		return "$" + base64.RawStdEncoding.EncodeToString(sum[:])
	}
	return "$" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// checkTampering edits a built event and checks that the edit is caught by
// the check that covers that part of the event.
func checkTampering(t *testing.T, rv *events.RoomVersion, key events.SigningKey, e *events.Event) {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(e.JSON(), &m); err != nil {
		t.Fatal(err)
	}
	reparse := func(m map[string]json.RawMessage) *events.Event {
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		te, err := events.Parse(b, rv)
		if err != nil {
			t.Fatalf("tampered event no longer parses: %v", err)
		}
		return te
	}

	// Content outside what redaction keeps: only the content hash notices.
	m["content"] = json.RawMessage(`{"membership":"join","displayname":"Mallory","room_version":"10","extra":1}`)
	te := reparse(m)
	if err := events.CheckContentHash(te); !errors.Is(err, events.ErrContentHashMismatch) {
		t.Errorf("content edit: CheckContentHash = %v", err)
	}
	if e.Type() == "m.room.message" {
		// Redaction strips message content, so signature and reference hash
		// do not cover it: the content hash is the only protection, by design.
		if err := events.VerifyEventSignature(te, "domain", key.ID, key.Public()); err != nil {
			t.Errorf("content edit of a message: VerifyEventSignature = %v", err)
		}
		if rv.Format != events.FormatV1 && te.EventID() != e.EventID() {
			t.Errorf("content edit of a message changed the event id")
		}
	}

	// A protected key: signature, content hash and (v3+) event id all change.
	if err := json.Unmarshal(e.JSON(), &m); err != nil {
		t.Fatal(err)
	}
	m["depth"] = json.RawMessage(`999`)
	te = reparse(m)
	if err := events.VerifyEventSignature(te, "domain", key.ID, key.Public()); !errors.Is(err, events.ErrSignatureInvalid) {
		t.Errorf("depth edit: VerifyEventSignature = %v", err)
	}
	if err := events.CheckContentHash(te); !errors.Is(err, events.ErrContentHashMismatch) {
		t.Errorf("depth edit: CheckContentHash = %v", err)
	}
	if rv.Format != events.FormatV1 && te.EventID() == e.EventID() {
		t.Errorf("depth edit kept event id %s", e.EventID())
	}

	// Signature checks fail cleanly for the wrong server, key or public key.
	other, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		server, keyID string
		pub           []byte
		kind          error
	}{
		{"elsewhere", key.ID, key.Public(), events.ErrSignatureMissing},
		{"domain", "ed25519:other", key.Public(), events.ErrSignatureMissing},
		{"domain", key.ID, other.Public(), events.ErrSignatureInvalid},
	} {
		if err := events.VerifyEventSignature(e, c.server, c.keyID, c.pub); !errors.Is(err, c.kind) {
			t.Errorf("VerifyEventSignature(%s, %s) = %v, want %v", c.server, c.keyID, err, c.kind)
		}
	}
	if err := events.VerifyEventSignature(e, "domain", "curve25519:1", key.Public()); err == nil {
		t.Error("unsupported algorithm accepted")
	}
	if err := events.VerifyEventSignature(e, "domain", key.ID, key.Public()[:5]); err == nil {
		t.Error("short public key accepted")
	}
}

func TestEventIDAlphabet(t *testing.T) {
	// Find a deterministic event whose reference hash needs '+' or '/' in
	// standard base64, then check v3 and v4 encode the same hash with
	// their own alphabets.
	v3, v4 := roomVersion(t, "3"), roomVersion(t, "4")
	for ts := 0; ts < 1000; ts++ {
		raw := pdu(t, basePDU, "origin_server_ts", fmt.Sprint(ts))
		h3, err := events.ReferenceHash([]byte(raw), v3)
		if err != nil {
			t.Fatal(err)
		}
		std := base64.RawStdEncoding.EncodeToString(h3)
		if !strings.ContainsAny(std, "+/") {
			continue
		}
		e3, err := events.Parse([]byte(raw), v3)
		if err != nil {
			t.Fatal(err)
		}
		e4, err := events.Parse([]byte(raw), v4)
		if err != nil {
			t.Fatal(err)
		}
		if e3.EventID() != "$"+std {
			t.Errorf("v3 id %s, want $%s", e3.EventID(), std)
		}
		if want := "$" + strings.NewReplacer("+", "-", "/", "_").Replace(std); e4.EventID() != want {
			t.Errorf("v4 id %s, want %s", e4.EventID(), want)
		}
		if e3.EventID() != independentEventID(t, v3, e3.JSON()) {
			t.Errorf("v3 id disagrees with independent computation")
		}
		return
	}
	t.Fatal("no reference hash with + or / found")
}

func TestReferenceHashIgnoresUnsignedAndSignatures(t *testing.T) {
	rv := roomVersion(t, "10")
	a, err := events.ReferenceHash([]byte(basePDU), rv)
	if err != nil {
		t.Fatal(err)
	}
	b, err := events.ReferenceHash([]byte(pdu(t, basePDU, "unsigned", `{"age":1}`, "signatures", `{"x":{"ed25519:1":"sig"}}`, "content", `{"body":"redacted anyway"}`)), rv)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("reference hash depends on unsigned, signatures or redacted content")
	}
	c, err := events.ReferenceHash([]byte(pdu(t, basePDU, "hashes", `{"sha256":"y"}`)), rv)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a, c) {
		t.Error("reference hash ignores hashes")
	}
}

func TestBuildRedactions(t *testing.T) {
	key := specKey(t)
	p := protoMessage()
	p.Type, p.Redacts, p.Content = "m.room.redaction", "$target", json.RawMessage(`{"reason":"spam"}`)
	tests := []struct {
		version     string
		wantContent string
	}{
		{"1", `{"reason":"spam"}`},
		{"10", `{"reason":"spam"}`},
		{"11", `{"reason":"spam","redacts":"$target"}`},
	}
	for _, tt := range tests {
		t.Run("v"+tt.version, func(t *testing.T) {
			e, err := events.Build(p, roomVersion(t, tt.version), key, "domain")
			if err != nil {
				t.Fatal(err)
			}
			if string(e.Content()) != tt.wantContent {
				t.Errorf("content %s, want %s", e.Content(), tt.wantContent)
			}
			if e.Redacts() != "$target" || !strings.Contains(string(e.JSON()), `"redacts":"$target","room_id"`) {
				t.Errorf("redacts %q in %s", e.Redacts(), e.JSON())
			}
			red, err := e.Redact()
			if err != nil {
				t.Fatal(err)
			}
			// v11 keeps content.redacts; before, the top-level key is not
			// protected and the target is lost on redaction.
			if want := map[bool]string{true: "$target", false: ""}[tt.version == "11"]; red.Redacts() != want {
				t.Errorf("redacted event redacts %q, want %q", red.Redacts(), want)
			}
		})
	}
}

func TestBuildV1RefHashes(t *testing.T) {
	p := protoMessage()
	p.PrevEvents, p.AuthEvents = []string{"$p:domain"}, []string{"$a:domain", "$b:domain"}
	p.RefHashes = map[string]string{"$a:domain": "aGFzaA"}
	e, err := events.Build(p, roomVersion(t, "2"), specKey(t), "domain")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"auth_events":[["$a:domain",{"sha256":"aGFzaA"}],["$b:domain",{}]]`, `"prev_events":[["$p:domain",{}]]`} {
		if !strings.Contains(string(e.JSON()), want) {
			t.Errorf("%s not in %s", want, e.JSON())
		}
	}
}

func TestBuildRejects(t *testing.T) {
	key := specKey(t)
	tests := []struct {
		name    string
		version string
		edit    func(p *events.ProtoEvent)
		kind    error
	}{
		{"no room", "10", func(p *events.ProtoEvent) { p.RoomID = "" }, nil},
		{"no sender", "10", func(p *events.ProtoEvent) { p.Sender = "" }, nil},
		{"no type", "10", func(p *events.ProtoEvent) { p.Type = "" }, nil},
		{"invalid utf8 sender", "10", func(p *events.ProtoEvent) { p.Sender = "@\xff:x" }, nil},
		{"content not object", "10", func(p *events.ProtoEvent) { p.Content = json.RawMessage(`[]`) }, nil},
		{"content invalid", "10", func(p *events.ProtoEvent) { p.Content = json.RawMessage(`{`) }, canonicaljson.ErrSyntax},
		{"content float even in v1", "1", func(p *events.ProtoEvent) { p.Content = json.RawMessage(`{"a":1.5}`) }, canonicaljson.ErrNumber},
		{"redacts on a message", "10", func(p *events.ProtoEvent) { p.Redacts = "$x" }, nil},
		{"conflicting content.redacts", "11", func(p *events.ProtoEvent) {
			p.Type, p.Redacts, p.Content = "m.room.redaction", "$x", json.RawMessage(`{"redacts":"$y"}`)
		}, nil},
		{"bad prev event id", "10", func(p *events.ProtoEvent) { p.PrevEvents = []string{"nope"} }, nil},
		{"depth beyond 2^53 in v6", "6", func(p *events.ProtoEvent) { p.Depth = 1 << 53 }, nil},
		{"unsigned not object", "10", func(p *events.ProtoEvent) { p.Unsigned = json.RawMessage(`[1]`) }, nil},
		{"type of 256 bytes", "10", func(p *events.ProtoEvent) { p.Type = strings.Repeat("t", 256) }, events.ErrEventTooLarge},
		{"state key of 256 bytes", "10", func(p *events.ProtoEvent) { p.StateKey = ptr(strings.Repeat("k", 256)) }, events.ErrEventTooLarge},
		{"sender of 256 bytes", "10", func(p *events.ProtoEvent) { p.Sender = "@" + strings.Repeat("s", 248) + ":domain" }, events.ErrEventTooLarge},
		{"room id of 256 bytes", "10", func(p *events.ProtoEvent) { p.RoomID = "!" + strings.Repeat("r", 248) + ":domain" }, events.ErrEventTooLarge},
		{"too large", "10", func(p *events.ProtoEvent) {
			p.Content = json.RawMessage(fmt.Sprintf(`{"body":%q}`, strings.Repeat("x", events.MaxPDUSize)))
		}, events.ErrEventTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := protoMessage()
			tt.edit(&p)
			e, err := events.Build(p, roomVersion(t, tt.version), key, "domain")
			if err == nil {
				t.Fatalf("built %s", e.JSON())
			}
			if tt.kind != nil && !errors.Is(err, tt.kind) {
				t.Errorf("error %v is not %v", err, tt.kind)
			}
		})
	}
	if _, err := events.Build(protoMessage(), nil, key, "domain"); err == nil {
		t.Error("nil room version accepted")
	}
	// 255 bytes is within the limit.
	atLimit := protoMessage()
	atLimit.Type, atLimit.StateKey = strings.Repeat("t", 255), ptr(strings.Repeat("k", 255))
	if _, err := events.Build(atLimit, roomVersion(t, "10"), key, "domain"); err != nil {
		t.Errorf("type and state key of 255 bytes refused: %v", err)
	}
	if _, err := events.Build(protoMessage(), roomVersion(t, "10"), events.SigningKey{}, "domain"); err == nil {
		t.Error("zero signing key accepted")
	}
}

func TestBuildDeterministicAndUnsignedOutsideID(t *testing.T) {
	key := specKey(t)
	rv := roomVersion(t, "10")
	p := protoMessage()
	plain, err := events.Build(p, rv, key, "domain")
	if err != nil {
		t.Fatal(err)
	}
	p.Unsigned = json.RawMessage(`{"transaction_id":"txn1"}`)
	withUnsigned, err := events.Build(p, rv, key, "domain")
	if err != nil {
		t.Fatal(err)
	}
	if plain.EventID() != withUnsigned.EventID() {
		t.Errorf("unsigned changed the event id: %s vs %s", plain.EventID(), withUnsigned.EventID())
	}
	if string(withUnsigned.Unsigned()) != `{"transaction_id":"txn1"}` {
		t.Errorf("unsigned %s", withUnsigned.Unsigned())
	}
	if err := events.VerifyEventSignature(withUnsigned, "domain", key.ID, key.Public()); err != nil {
		t.Error(err)
	}
}

func TestSetUnsigned(t *testing.T) {
	key := specKey(t)
	rv := roomVersion(t, "11")
	e, err := events.Build(protoMessage(), rv, key, "domain")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, u, want string
	}{
		{"add", `{"age": 5, "transaction_id": "t"}`, `{"age":5,"transaction_id":"t"}`},
		{"remove with nil", ``, ``},
		{"remove with null", `null`, ``},
		{"invalid removes", `{"age":`, ``},
		{"non-object removes", `[1]`, ``},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ne := e.SetUnsigned(json.RawMessage(tt.u))
			if string(ne.Unsigned()) != tt.want {
				t.Errorf("Unsigned() = %s, want %s", ne.Unsigned(), tt.want)
			}
			if ne.EventID() != e.EventID() {
				t.Errorf("id changed")
			}
			if len(e.Unsigned()) != 0 {
				t.Errorf("original event modified")
			}
			reparsed, err := events.Parse(ne.JSON(), rv)
			if err != nil {
				t.Fatal(err)
			}
			if reparsed.EventID() != e.EventID() || string(reparsed.Unsigned()) != tt.want {
				t.Errorf("reparsed %s / %s", reparsed.EventID(), reparsed.Unsigned())
			}
			if err := events.VerifyEventSignature(ne, "domain", key.ID, key.Public()); err != nil {
				t.Error(err)
			}
		})
	}
	if _, err := e.WithUnsigned(json.RawMessage(`"x"`)); err == nil {
		t.Error("WithUnsigned accepted a string")
	}
}

func TestEventRedact(t *testing.T) {
	key := specKey(t)
	for _, rv := range allVersions(t) {
		t.Run("v"+rv.ID, func(t *testing.T) {
			p := protoMessage()
			p.Unsigned = json.RawMessage(`{"age":1}`)
			e, err := events.Build(p, rv, key, "domain")
			if err != nil {
				t.Fatal(err)
			}
			red, err := e.Redact()
			if err != nil {
				t.Fatal(err)
			}
			if red.EventID() != e.EventID() || string(red.Content()) != `{}` || len(red.Unsigned()) != 0 {
				t.Errorf("redacted: id %s content %s unsigned %s", red.EventID(), red.Content(), red.Unsigned())
			}
			if err := events.VerifyEventSignature(red, "domain", key.ID, key.Public()); err != nil {
				t.Errorf("redacted event signature: %v", err)
			}
			if err := events.CheckContentHash(red); !errors.Is(err, events.ErrContentHashMismatch) {
				t.Errorf("redacted event content hash: %v", err)
			}
			reparsed, err := events.Parse(red.JSON(), rv)
			if err != nil || reparsed.EventID() != e.EventID() {
				t.Errorf("redacted event reparsed: %v, id %v", err, reparsed)
			}
		})
	}
}

func BenchmarkBuild(b *testing.B) {
	key := specKey(b)
	for _, version := range []string{"1", "10"} {
		rv := roomVersion(b, version)
		b.Run("v"+version, func(b *testing.B) {
			b.ReportAllocs()
			p := protoMessage()
			for b.Loop() {
				if _, err := events.Build(p, rv, key, "domain"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkParse(b *testing.B) {
	key := specKey(b)
	rv := roomVersion(b, "10")
	e, err := events.Build(protoMessage(), rv, key, "domain")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := events.Parse(e.JSON(), rv); err != nil {
			b.Fatal(err)
		}
	}
}
