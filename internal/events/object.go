package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"ganglion/internal/canonicaljson"
)

// object is a canonical JSON object split into its members, kept in
// canonical order. It exists so that hashing, signing and redaction can drop
// or replace top-level keys without decoding into map[string]any and
// re-encoding, and so that keys are matched exactly: encoding/json matches
// struct fields case-insensitively, which would let {"ROOM_ID": …} stand in
// for a missing "room_id".
//
// Invariant: every object is built from canonical JSON (the output of
// canonicaljson) and only ever has canonical values added, so encode needs no
// further canonicalisation.
type object []member

type member struct {
	// key is the canonical encoding of the key without the quotes; for
	// every key this package looks up (plain ASCII) it equals the key itself.
	key string
	val []byte // canonical JSON
}

var errNotObject = errors.New("not a JSON object")

// parseObject splits canonical JSON b into members. The values alias b.
func parseObject(b []byte) (object, error) {
	if len(b) < 2 || b[0] != '{' || b[len(b)-1] != '}' {
		return nil, errNotObject
	}
	if len(b) == 2 {
		return object{}, nil
	}
	o := make(object, 0, 16)
	i := 1
	for {
		if i >= len(b) || b[i] != '"' {
			return nil, fmt.Errorf("object key expected at offset %d", i)
		}
		end, err := skipString(b, i)
		if err != nil {
			return nil, err
		}
		key := string(b[i+1 : end-1])
		if end >= len(b) || b[end] != ':' {
			return nil, fmt.Errorf("':' expected at offset %d", end)
		}
		vStart := end + 1
		vEnd, err := skipValue(b, vStart)
		if err != nil {
			return nil, err
		}
		o = append(o, member{key: key, val: b[vStart:vEnd]})
		if vEnd >= len(b) {
			return nil, fmt.Errorf("truncated object")
		}
		switch b[vEnd] {
		case ',':
			i = vEnd + 1
		case '}':
			if vEnd != len(b)-1 {
				return nil, fmt.Errorf("data after object at offset %d", vEnd+1)
			}
			return o, nil
		default:
			return nil, fmt.Errorf("',' or '}' expected at offset %d", vEnd)
		}
	}
}

// parseArray splits the canonical JSON array b into its elements.
func parseArray(b []byte) ([][]byte, error) {
	if len(b) < 2 || b[0] != '[' || b[len(b)-1] != ']' {
		return nil, errors.New("not a JSON array")
	}
	if len(b) == 2 {
		return [][]byte{}, nil
	}
	var out [][]byte
	i := 1
	for {
		end, err := skipValue(b, i)
		if err != nil {
			return nil, err
		}
		out = append(out, b[i:end])
		if end >= len(b) {
			return nil, errors.New("truncated array")
		}
		switch b[end] {
		case ',':
			i = end + 1
		case ']':
			if end != len(b)-1 {
				return nil, fmt.Errorf("data after array at offset %d", end+1)
			}
			return out, nil
		default:
			return nil, fmt.Errorf("',' or ']' expected at offset %d", end)
		}
	}
}

// skipString returns the offset just past the string starting at b[i].
// Canonical strings contain only two-byte escapes and \u00XX, so skipping
// the byte after every backslash is enough.
func skipString(b []byte, i int) (int, error) {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1, nil
		}
	}
	return 0, errors.New("unterminated string")
}

// skipValue returns the offset just past the canonical value starting at b[i].
func skipValue(b []byte, i int) (int, error) {
	if i >= len(b) {
		return 0, errors.New("value expected")
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end, err := skipString(b, j)
				if err != nil {
					return 0, err
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, errors.New("unterminated container")
	default:
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' {
			j++
		}
		if j == i {
			return 0, fmt.Errorf("value expected at offset %d", i)
		}
		return j, nil
	}
}

func (o object) index(key string) int {
	for i, m := range o {
		if m.key == key {
			return i
		}
	}
	return -1
}

func (o object) get(key string) ([]byte, bool) {
	if i := o.index(key); i >= 0 {
		return o[i].val, true
	}
	return nil, false
}

// without returns a copy of o without the given keys.
func (o object) without(keys ...string) object {
	out := make(object, 0, len(o))
	for _, m := range o {
		if !slices.Contains(keys, m.key) {
			out = append(out, m)
		}
	}
	return out
}

// only returns a copy of o with just the given keys.
func (o object) only(keys ...string) object {
	out := make(object, 0, len(keys))
	for _, m := range o {
		if slices.Contains(keys, m.key) {
			out = append(out, m)
		}
	}
	return out
}

// with returns a copy of o in which key (in stored form, see objectKey) maps
// to the canonical value val, keeping canonical order.
func (o object) with(key string, val []byte) object {
	out := make(object, 0, len(o)+1)
	inserted := false
	for _, m := range o {
		if !inserted {
			switch c := compareKeys(m.key, key); {
			case c == 0:
				out = append(out, member{key, val})
				inserted = true
				continue
			case c > 0:
				out = append(out, member{key, val})
				inserted = true
			}
		}
		out = append(out, m)
	}
	if !inserted {
		out = append(out, member{key, val})
	}
	return out
}

// compareKeys orders two canonically-escaped keys by their decoded bytes,
// which is not the order of the escaped forms when control characters, '"'
// or '\\' are involved.
func compareKeys(a, b string) int {
	if strings.IndexByte(a, '\\') < 0 && strings.IndexByte(b, '\\') < 0 {
		return strings.Compare(a, b)
	}
	return strings.Compare(decodeKey(a), decodeKey(b))
}

func decodeKey(k string) string {
	var s string
	if err := json.Unmarshal([]byte(`"`+k+`"`), &s); err != nil {
		return k // unreachable for canonical keys
	}
	return s
}

func (o object) encode() []byte {
	n := 2
	for _, m := range o {
		n += len(m.key) + len(m.val) + 4
	}
	out := make([]byte, 0, n)
	out = append(out, '{')
	for i, m := range o {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, '"')
		out = append(out, m.key...)
		out = append(out, '"', ':')
		out = append(out, m.val...)
	}
	return append(out, '}')
}

// unquote decodes a canonical JSON string value.
func unquote(v []byte) (string, bool) {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return "", false
	}
	inner := v[1 : len(v)-1]
	if !slices.Contains(inner, '\\') {
		return string(inner), true
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return "", false
	}
	return s, true
}

// quote encodes s as a canonical JSON string. Invalid UTF-8 becomes U+FFFD
// (encoding/json's behaviour); callers that must not alter input validate it
// first.
func quote(s string) []byte {
	b, err := canonicaljson.Marshal(s)
	if err != nil {
		// Unreachable: encoding a string cannot fail and its output is
		// always valid input for the canonicaliser.
		return []byte(`""`)
	}
	return b
}

// parseInt decodes a canonical JSON integer.
func parseInt(v []byte) (int64, bool) {
	n, err := strconv.ParseInt(string(v), 10, 64)
	return n, err == nil
}

func isObject(v []byte) bool { return len(v) > 0 && v[0] == '{' }
