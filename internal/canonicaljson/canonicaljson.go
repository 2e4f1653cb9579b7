// Package canonicaljson produces Matrix canonical JSON: the byte sequence
// that content hashes, reference hashes (event ids) and ed25519 signatures
// are computed over. Two servers that disagree by a single byte here reject
// each other's events, so the rules below follow the spec appendix and,
// where the spec leaves room, what Synapse (python canonicaljson over the
// stdlib json module) actually emits.
//
// Decisions:
//
//   - Object keys are sorted by the bytes of their UTF-8 encoding, which is
//     the same order as by Unicode code point.
//   - Strings are emitted as UTF-8; only '"', '\\' and U+0000–U+001F are
//     escaped (\b \f \n \r \t, otherwise \u00xx in lowercase hex). '/',
//     U+007F, U+2028/U+2029 and non-ASCII are written literally. Invalid
//     UTF-8 and unpaired UTF-16 surrogates in \u escapes are errors (Python
//     fails to encode such strings as UTF-8, so Synapse can never sign them).
//   - Integers are copied digit for digit, never through float64, so large
//     values keep their precision; "-0" becomes "0" (the spec's example).
//   - strict (room versions >= 6 and all client input): any fraction or
//     exponent is rejected, even when integral ("1.0", "1e3"), because Synapse
//     rejects every JSON float there; integers must lie in [-(2^53)+1, 2^53-1].
//   - lenient (room versions 1–5, and generic signing/verification of JSON we
//     did not produce): integers of any size are accepted; numbers with a
//     fraction or exponent are re-emitted exactly as Python's repr(float)
//     formats them ("1e3" -> "1000.0", "1e16" -> "1e+16"), because that is
//     the form the events' hashes and signatures were computed over by
//     Synapse. Values that overflow float64 are rejected (Python would
//     produce Infinity, which canonicaljson refuses). This deliberately
//     differs from the spec appendix example that normalises 1e10 to
//     10000000000: following it would break hashes of real legacy events.
//   - Duplicate keys: rejected in strict mode (a duplicated key lets two
//     parsers see two different events under one signature); in lenient
//     mode the last occurrence wins, as with Python's json.loads, so legacy
//     events hash the way Synapse hashed them.
//   - Nesting deeper than MaxDepth is rejected; Python's decoder gives up at
//     about the same depth.
package canonicaljson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxDepth bounds the nesting of arrays and objects.
const MaxDepth = 1000

// The limits of integers that survive a round trip through an IEEE double.
const (
	MaxSafeInt = 1<<53 - 1
	MinSafeInt = -MaxSafeInt
)

// Error kinds, for errors.Is. Every error returned by this package is an
// *Error wrapping one of these.
var (
	ErrSyntax       = errors.New("invalid JSON")
	ErrUTF8         = errors.New("invalid UTF-8")
	ErrNumber       = errors.New("number not allowed in canonical JSON")
	ErrDuplicateKey = errors.New("duplicate object key")
	ErrTooDeep      = errors.New("JSON nested too deeply")
)

// Error reports where canonicalisation failed.
type Error struct {
	Kind   error // one of the Err* values above
	Offset int   // byte offset into the input
	Detail string
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return fmt.Sprintf("canonical json: %v at offset %d", e.Kind, e.Offset)
	}
	return fmt.Sprintf("canonical json: %v at offset %d: %s", e.Kind, e.Offset, e.Detail)
}

func (e *Error) Unwrap() error { return e.Kind }

// Canonicalize returns the canonical encoding of the single JSON value in raw
// (surrounding whitespace allowed). See the package comment for strict.
func Canonicalize(raw []byte, strict bool) ([]byte, error) {
	return Append(make([]byte, 0, len(raw)), raw, strict)
}

// Append is Canonicalize appending to dst, for callers that reuse buffers.
// On error it returns nil, and dst's backing array past len(dst) may have
// been overwritten.
func Append(dst, raw []byte, strict bool) ([]byte, error) {
	s := state{in: raw, strict: strict}
	s.keys, s.members, s.str = s.keysBuf[:0], s.membersBuf[:0], s.strBuf[:0]
	s.skipWS()
	dst, err := s.value(dst)
	if err != nil {
		return nil, err
	}
	s.skipWS()
	if s.pos != len(s.in) {
		return nil, s.fail(ErrSyntax, "data after the top-level value")
	}
	return dst, nil
}

// Marshal encodes v with encoding/json and canonicalises the result strictly.
// encoding/json's HTML-safe escapes (\u003c, \u0026, \u2028, …) are undone
// by the canonicaliser.
func Marshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("canonical json: marshal %T: %w", v, err)
	}
	return Canonicalize(b, true)
}

// state is one canonicalisation pass. Objects are emitted member by member in
// input order straight into dst; only when the keys turn out not to be sorted
// is the object's region copied out and re-emitted in order. Decoded keys live
// in one arena and member spans in one stack, both shared by all nesting
// levels: a nested object truncates them back before its parent resumes.
type state struct {
	in     []byte
	pos    int
	strict bool
	depth  int

	keys    []byte   // decoded keys of the objects currently open
	members []member // members of the objects currently open
	tmp     []byte   // copy of an object's region while re-ordering it
	str     []byte   // decoded string value

	// Initial backing storage, enough for typical events without growing.
	keysBuf    [256]byte
	membersBuf [24]member
	strBuf     [256]byte
}

type member struct {
	keyStart, keyEnd int // decoded key, in state.keys
	start, end       int // `"key":value`, in dst
}

func (s *state) fail(kind error, detail string) error {
	return &Error{Kind: kind, Offset: s.pos, Detail: detail}
}

func (s *state) skipWS() {
	for s.pos < len(s.in) {
		switch s.in[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// value canonicalises the value starting at s.pos (whitespace already skipped).
func (s *state) value(dst []byte) ([]byte, error) {
	if s.pos >= len(s.in) {
		return nil, s.fail(ErrSyntax, "unexpected end of input")
	}
	switch c := s.in[s.pos]; {
	case c == '{':
		return s.object(dst)
	case c == '[':
		return s.array(dst)
	case c == '"':
		return s.stringValue(dst)
	case c == 't':
		return s.literal(dst, "true")
	case c == 'f':
		return s.literal(dst, "false")
	case c == 'n':
		return s.literal(dst, "null")
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number(dst)
	default:
		return nil, s.fail(ErrSyntax, fmt.Sprintf("unexpected character %q", c))
	}
}

func (s *state) literal(dst []byte, lit string) ([]byte, error) {
	if !bytes.HasPrefix(s.in[s.pos:], []byte(lit)) {
		return nil, s.fail(ErrSyntax, "invalid literal")
	}
	s.pos += len(lit)
	return append(dst, lit...), nil
}

func (s *state) enter() error {
	s.depth++
	if s.depth > MaxDepth {
		return s.fail(ErrTooDeep, "")
	}
	return nil
}

func (s *state) array(dst []byte) ([]byte, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	s.pos++ // '['
	dst = append(dst, '[')
	s.skipWS()
	if s.pos < len(s.in) && s.in[s.pos] == ']' {
		s.pos++
		s.depth--
		return append(dst, ']'), nil
	}
	for {
		s.skipWS()
		var err error
		if dst, err = s.value(dst); err != nil {
			return nil, err
		}
		s.skipWS()
		if s.pos >= len(s.in) {
			return nil, s.fail(ErrSyntax, "unterminated array")
		}
		switch s.in[s.pos] {
		case ',':
			s.pos++
			dst = append(dst, ',')
		case ']':
			s.pos++
			s.depth--
			return append(dst, ']'), nil
		default:
			return nil, s.fail(ErrSyntax, "expected ',' or ']' in array")
		}
	}
}

func (s *state) object(dst []byte) ([]byte, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	objOffset := s.pos
	s.pos++ // '{'
	start := len(dst)
	dst = append(dst, '{')
	keysBase, memBase := len(s.keys), len(s.members)
	s.skipWS()
	if s.pos < len(s.in) && s.in[s.pos] == '}' {
		s.pos++
		s.depth--
		return append(dst, '}'), nil
	}
	sorted := true
	for {
		s.skipWS()
		if s.pos >= len(s.in) || s.in[s.pos] != '"' {
			return nil, s.fail(ErrSyntax, "expected string object key")
		}
		keyRaw := s.pos
		keyStart := len(s.keys)
		var err error
		if s.keys, err = s.decodeString(s.keys); err != nil {
			return nil, err
		}
		keyEnd := len(s.keys)
		keyRawLen := s.pos - keyRaw
		if n := len(s.members); n > memBase {
			prev := s.members[n-1]
			if bytes.Compare(s.keys[prev.keyStart:prev.keyEnd], s.keys[keyStart:keyEnd]) >= 0 {
				sorted = false
			}
		}
		s.skipWS()
		if s.pos >= len(s.in) || s.in[s.pos] != ':' {
			return nil, s.fail(ErrSyntax, "expected ':' after object key")
		}
		s.pos++
		s.skipWS()
		mStart := len(dst)
		if keyEnd-keyStart == keyRawLen-2 {
			// No escapes in the key (see stringValue): already canonical.
			dst = appendQuoted(dst, s.keys[keyStart:keyEnd])
		} else {
			dst = appendString(dst, s.keys[keyStart:keyEnd])
		}
		dst = append(dst, ':')
		if dst, err = s.value(dst); err != nil {
			return nil, err
		}
		s.members = append(s.members, member{keyStart, keyEnd, mStart, len(dst)})
		s.skipWS()
		if s.pos >= len(s.in) {
			return nil, s.fail(ErrSyntax, "unterminated object")
		}
		if s.in[s.pos] == ',' {
			s.pos++
			dst = append(dst, ',')
			continue
		}
		if s.in[s.pos] != '}' {
			return nil, s.fail(ErrSyntax, "expected ',' or '}' in object")
		}
		s.pos++
		break
	}
	if sorted {
		dst = append(dst, '}')
	} else {
		var err error
		if dst, err = s.reorder(dst, start, memBase, objOffset); err != nil {
			return nil, err
		}
	}
	s.keys = s.keys[:keysBase]
	s.members = s.members[:memBase]
	s.depth--
	return dst, nil
}

// reorder re-emits the object that starts at dst[start] with its members
// sorted, removing duplicates as the mode demands.
func (s *state) reorder(dst []byte, start, memBase, objOffset int) ([]byte, error) {
	mem := s.members[memBase:]
	key := func(m member) []byte { return s.keys[m.keyStart:m.keyEnd] }
	// Stable, so that among duplicates the last one in the input sorts last.
	slices.SortStableFunc(mem, func(a, b member) int { return bytes.Compare(key(a), key(b)) })
	w := 0
	for i := range mem {
		if i+1 < len(mem) && bytes.Equal(key(mem[i]), key(mem[i+1])) {
			if s.strict {
				return nil, &Error{Kind: ErrDuplicateKey, Offset: objOffset, Detail: strconv.Quote(string(key(mem[i])))}
			}
			continue
		}
		mem[w] = mem[i]
		w++
	}
	mem = mem[:w]
	s.tmp = append(s.tmp[:0], dst[start:]...)
	dst = append(dst[:start], '{')
	for i, m := range mem {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, s.tmp[m.start-start:m.end-start]...)
	}
	return append(dst, '}'), nil
}

func (s *state) stringValue(dst []byte) ([]byte, error) {
	rawStart := s.pos
	var err error
	if s.str, err = s.decodeString(s.str[:0]); err != nil {
		return nil, err
	}
	// Every escape sequence is longer than what it decodes to, so equal
	// lengths mean there were none and the input bytes are canonical as is.
	if len(s.str) == s.pos-rawStart-2 {
		return append(dst, s.in[rawStart:s.pos]...), nil
	}
	return appendString(dst, s.str), nil
}

// decodeString appends the decoded contents of the string at s.pos to dst
// and leaves s.pos after its closing quote.
func (s *state) decodeString(dst []byte) ([]byte, error) {
	s.pos++ // opening quote
	for {
		i := s.pos
		for i < len(s.in) {
			c := s.in[i]
			if c < utf8.RuneSelf {
				if c == '"' || c == '\\' || c < 0x20 {
					break
				}
				i++
				continue
			}
			r, size := utf8.DecodeRune(s.in[i:])
			if r == utf8.RuneError && size == 1 {
				s.pos = i
				return nil, s.fail(ErrUTF8, "")
			}
			i += size
		}
		dst = append(dst, s.in[s.pos:i]...)
		s.pos = i
		if i >= len(s.in) {
			return nil, s.fail(ErrSyntax, "unterminated string")
		}
		switch c := s.in[i]; {
		case c == '"':
			s.pos++
			return dst, nil
		case c < 0x20:
			return nil, s.fail(ErrSyntax, "control character in string")
		}
		var err error
		if dst, err = s.escape(dst); err != nil {
			return nil, err
		}
	}
}

// escape decodes the escape sequence at s.pos (a backslash).
func (s *state) escape(dst []byte) ([]byte, error) {
	if s.pos+1 >= len(s.in) {
		return nil, s.fail(ErrSyntax, "unterminated escape")
	}
	c := s.in[s.pos+1]
	s.pos += 2
	switch c {
	case '"', '\\', '/':
		return append(dst, c), nil
	case 'b':
		return append(dst, '\b'), nil
	case 'f':
		return append(dst, '\f'), nil
	case 'n':
		return append(dst, '\n'), nil
	case 'r':
		return append(dst, '\r'), nil
	case 't':
		return append(dst, '\t'), nil
	case 'u':
	default:
		s.pos -= 2
		return nil, s.fail(ErrSyntax, "invalid escape")
	}
	r, ok := hex4(s.in[s.pos:])
	if !ok {
		return nil, s.fail(ErrSyntax, "invalid \\u escape")
	}
	s.pos += 4
	switch {
	case utf16.IsSurrogate(r) && r < 0xdc00:
		if s.pos+6 > len(s.in) || s.in[s.pos] != '\\' || s.in[s.pos+1] != 'u' {
			return nil, s.fail(ErrUTF8, "unpaired surrogate")
		}
		lo, ok := hex4(s.in[s.pos+2:])
		if !ok || lo < 0xdc00 || lo > 0xdfff {
			return nil, s.fail(ErrUTF8, "unpaired surrogate")
		}
		s.pos += 6
		r = utf16.DecodeRune(r, lo)
	case utf16.IsSurrogate(r):
		return nil, s.fail(ErrUTF8, "unpaired surrogate")
	}
	return utf8.AppendRune(dst, r), nil
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

const hexDigits = "0123456789abcdef"

// appendQuoted wraps s, known to need no escaping, in quotes.
func appendQuoted(dst, s []byte) []byte {
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// appendString appends the canonical encoding of the UTF-8 string s.
func appendString(dst, s []byte) []byte {
	dst = append(dst, '"')
	start := 0
	for i, c := range s {
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func (s *state) number(dst []byte) ([]byte, error) {
	start := s.pos
	i := s.pos
	neg := s.in[i] == '-'
	if neg {
		i++
	}
	if i >= len(s.in) || !isDigit(s.in[i]) {
		s.pos = i
		return nil, s.fail(ErrSyntax, "invalid number")
	}
	if s.in[i] == '0' {
		i++
	} else {
		for i < len(s.in) && isDigit(s.in[i]) {
			i++
		}
	}
	intEnd := i
	isFloat := false
	if i < len(s.in) && s.in[i] == '.' {
		i++
		if i >= len(s.in) || !isDigit(s.in[i]) {
			s.pos = i
			return nil, s.fail(ErrSyntax, "invalid number fraction")
		}
		for i < len(s.in) && isDigit(s.in[i]) {
			i++
		}
		isFloat = true
	}
	if i < len(s.in) && (s.in[i] == 'e' || s.in[i] == 'E') {
		i++
		if i < len(s.in) && (s.in[i] == '+' || s.in[i] == '-') {
			i++
		}
		if i >= len(s.in) || !isDigit(s.in[i]) {
			s.pos = i
			return nil, s.fail(ErrSyntax, "invalid number exponent")
		}
		for i < len(s.in) && isDigit(s.in[i]) {
			i++
		}
		isFloat = true
	}
	lex := s.in[start:i]
	if isFloat {
		if s.strict {
			return nil, s.fail(ErrNumber, fmt.Sprintf("%s is not an integer", lex))
		}
		f, err := strconv.ParseFloat(string(lex), 64)
		if err != nil {
			// Only overflow to ±Inf reaches here; underflow rounds to zero
			// without error, as Python's float() does.
			return nil, s.fail(ErrNumber, fmt.Sprintf("%s overflows a double", lex))
		}
		s.pos = i
		return appendPythonFloat(dst, f), nil
	}
	digits := s.in[start:intEnd]
	if neg {
		digits = digits[1:]
	}
	if s.strict && !safeInt(digits) {
		return nil, s.fail(ErrNumber, fmt.Sprintf("%s is outside [-(2^53)+1, 2^53-1]", lex))
	}
	s.pos = i
	if neg && len(digits) == 1 && digits[0] == '0' {
		return append(dst, '0'), nil
	}
	return append(dst, lex...), nil
}

// safeInt reports whether the magnitude written in digits is at most 2^53-1.
func safeInt(digits []byte) bool {
	if len(digits) > 16 {
		return false
	}
	var n uint64
	for _, c := range digits {
		n = n*10 + uint64(c-'0')
	}
	return n <= MaxSafeInt
}

// appendPythonFloat formats f as Python's repr(float) does: the shortest
// digits that round-trip, positional notation with at least one fractional
// digit when the decimal exponent is in [-4, 16), otherwise d.ddde±XX.
func appendPythonFloat(dst []byte, f float64) []byte {
	var buf [32]byte
	e := strconv.AppendFloat(buf[:0], f, 'e', -1, 64) // [-]d[.ddd]e±XX
	if e[0] == '-' {
		dst = append(dst, '-')
		e = e[1:]
	}
	ePos := bytes.IndexByte(e, 'e')
	var digitBuf [24]byte
	digits := append(digitBuf[:0], e[0])
	if ePos > 1 {
		digits = append(digits, e[2:ePos]...)
	}
	exp, _ := strconv.Atoi(string(e[ePos+1:]))
	decpt := exp + 1 // value = 0.DIGITS × 10^decpt
	switch {
	case decpt <= -4 || decpt > 16:
		dst = append(dst, digits[0])
		if len(digits) > 1 {
			dst = append(dst, '.')
			dst = append(dst, digits[1:]...)
		}
		dst = append(dst, 'e')
		if exp < 0 {
			dst = append(dst, '-')
			exp = -exp
		} else {
			dst = append(dst, '+')
		}
		if exp < 10 {
			dst = append(dst, '0')
		}
		return strconv.AppendInt(dst, int64(exp), 10)
	case decpt <= 0:
		dst = append(dst, '0', '.')
		for range -decpt {
			dst = append(dst, '0')
		}
		return append(dst, digits...)
	case decpt >= len(digits):
		dst = append(dst, digits...)
		for range decpt - len(digits) {
			dst = append(dst, '0')
		}
		return append(dst, '.', '0')
	default:
		dst = append(dst, digits[:decpt]...)
		dst = append(dst, '.')
		return append(dst, digits[decpt:]...)
	}
}
