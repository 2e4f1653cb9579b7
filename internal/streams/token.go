package streams

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Token is a sync token (next_batch / since): one position per stream a
// client follows. Its text form is Synapse's: "s" then the positions joined
// by "_" in the order events, presence, typing, receipts, account_data,
// push_rules, to_device, device_lists. Missing trailing parts read as 0, so
// tokens of older versions stay valid.
type Token struct {
	// Events is the minimum over the events writers; EventsAhead holds the
	// writers that are further (the vector part, "m<min>~<id>.<pos>"). A
	// room's events all come from one persister, so a reader bounds each
	// room by its persister's position, not the minimum: one slow or dead
	// persister does not hold back the others' rooms.
	Events      int64
	EventsAhead map[string]int64
	Presence    int64
	Typing      int64
	Receipts    int64
	AccountData int64
	PushRules   int64
	ToDevice    int64
	DeviceLists int64
}

func (t *Token) fields() []*int64 {
	return []*int64{&t.Events, &t.Presence, &t.Typing, &t.Receipts, &t.AccountData, &t.PushRules, &t.ToDevice, &t.DeviceLists}
}

// EventsFor is the events position of one writer in the token.
func (t Token) EventsFor(writer string) int64 {
	if p, ok := t.EventsAhead[writer]; ok && p > t.Events {
		return p
	}
	return t.Events
}

// EventsMax is the highest events position in the token.
func (t Token) EventsMax() int64 {
	m := t.Events
	for _, p := range t.EventsAhead {
		m = max(m, p)
	}
	return m
}

// tokenStreams names the stream behind each token part, in order.
var tokenStreams = []Name{Events, Presence, Typing, Receipts, AccountData, PushRules, ToDevice, DeviceLists}

// String renders the token without its vector part (for tokens that have
// none); Registry.FormatToken renders the full form.
func (t Token) String() string {
	var b strings.Builder
	b.WriteByte('s')
	for i, f := range t.fields() {
		if i > 0 {
			b.WriteByte('_')
		}
		b.WriteString(strconv.FormatInt(*f, 10))
	}
	return b.String()
}

// ParseToken reads a sync token; garbage is an error, never a zero token.
func ParseToken(s string) (Token, error) {
	var t Token
	if len(s) < 2 || s[0] != 's' {
		return t, fmt.Errorf("sync token %q: must start with 's'", s)
	}
	parts := strings.Split(s[1:], "_")
	fields := t.fields()
	if len(parts) > len(fields)+8 { // leave room for parts added by newer versions
		return t, fmt.Errorf("sync token %q: too many parts", s)
	}
	for i, p := range parts {
		n, err := strconv.ParseInt(p, 10, 64)
		if err != nil || n < 0 {
			return t, fmt.Errorf("sync token %q: part %d is not a position", s, i)
		}
		if i < len(fields) {
			*fields[i] = n
		}
	}
	return t, nil
}

// CurrentToken is the token of everything this process has seen.
func (r *Registry) CurrentToken() Token {
	var t Token
	for i, f := range t.fields() {
		if i > 0 {
			*f = r.Current(tokenStreams[i])
		}
	}
	// The minimum and the per-writer positions come from one snapshot:
	// read apart, writers advancing in between would yield a minimum
	// older than every writer and no vector part, a token behind what
	// this process has already woken its listeners for.
	min, writers := r.Vector(Events)
	t.Events = min
	for w, p := range writers {
		if p > min {
			if t.EventsAhead == nil {
				t.EventsAhead = map[string]int64{}
			}
			t.EventsAhead[w] = p
		}
	}
	return t
}

// Ahead reports whether any part of t is beyond now, i.e. the client saw
// data this process has not caught up with yet (another worker served it).
func (t Token) Ahead(now Token) bool {
	a, b := t.fields(), now.fields()
	for i := range a {
		if i == 0 {
			continue // events: compared per writer below
		}
		if *a[i] > *b[i] {
			return true
		}
	}
	for w, p := range t.EventsAhead {
		if p > now.EventsFor(w) {
			return true
		}
	}
	// A higher minimum means the writers at now's minimum are behind it.
	return t.Events > now.Events
}

// SetInstanceIDs gives the registry the numeric ids of the events writers
// used in vector tokens.
func (r *Registry) SetInstanceIDs(ids map[string]int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids = map[string]int{}
	r.names = map[int]string{}
	for n, id := range ids {
		r.ids[n] = id
		r.names[id] = n
	}
}

// FormatToken renders a token, with the events vector when some writer is
// ahead of the minimum: "m<min>~<id>.<pos>…_<presence>_…".
func (r *Registry) FormatToken(t Token) string {
	s := t.String()
	if len(t.EventsAhead) == 0 {
		return s
	}
	r.mu.Lock()
	type part struct{ id, pos int64 }
	var parts []part
	for w, p := range t.EventsAhead {
		if id, ok := r.ids[w]; ok && p > t.Events {
			parts = append(parts, part{int64(id), p})
		}
	}
	r.mu.Unlock()
	if len(parts) == 0 {
		return s
	}
	slices.SortFunc(parts, func(a, b part) int { return int(a.id - b.id) })
	var b strings.Builder
	b.WriteString("m" + strconv.FormatInt(t.Events, 10))
	for _, p := range parts {
		fmt.Fprintf(&b, "~%d.%d", p.id, p.pos)
	}
	rest := s[strings.IndexByte(s, '_'):]
	return b.String() + rest
}

// ParseToken reads a sync token in either form.
func (r *Registry) ParseToken(s string) (Token, error) {
	if !strings.HasPrefix(s, "m") {
		return ParseToken(s)
	}
	head, rest, _ := strings.Cut(s, "_")
	parts := strings.Split(head[1:], "~")
	t, err := ParseToken("s" + parts[0] + "_" + rest)
	if rest == "" {
		t, err = ParseToken("s" + parts[0])
	}
	if err != nil {
		return Token{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range parts[1:] {
		idStr, posStr, ok := strings.Cut(p, ".")
		id, err1 := strconv.Atoi(idStr)
		pos, err2 := strconv.ParseInt(posStr, 10, 64)
		if !ok || err1 != nil || err2 != nil || pos < 0 {
			return Token{}, fmt.Errorf("sync token %q: bad vector part %q", s, p)
		}
		name, known := r.names[id]
		if !known {
			return Token{}, fmt.Errorf("sync token %q: unknown writer id %d", s, id)
		}
		if t.EventsAhead == nil {
			t.EventsAhead = map[string]int64{}
		}
		t.EventsAhead[name] = pos
	}
	return t, nil
}
