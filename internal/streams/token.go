package streams

import (
	"fmt"
	"strconv"
	"strings"
)

// Token is a sync token (next_batch / since): one position per stream a
// client follows. Its text form is Synapse's: "s" then the positions joined
// by "_" in the order events, presence, typing, receipts, account_data,
// push_rules, to_device, device_lists. Missing trailing parts read as 0, so
// tokens of older versions stay valid.
type Token struct {
	Events      int64
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

// tokenStreams names the stream behind each token part, in order.
var tokenStreams = []Name{Events, Presence, Typing, Receipts, AccountData, PushRules, ToDevice, DeviceLists}

// String renders the token.
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
		*f = r.Current(tokenStreams[i])
	}
	return t
}

// Ahead reports whether any part of t is beyond now, i.e. the client saw
// data this process has not caught up with yet (another worker served it).
func (t Token) Ahead(now Token) bool {
	a, b := t.fields(), now.fields()
	for i := range a {
		if *a[i] > *b[i] {
			return true
		}
	}
	return false
}
