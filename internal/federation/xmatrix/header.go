// Package xmatrix implements the server-server API's request
// authentication: the "Authorization: X-Matrix …" header, the JSON object a
// request's signature covers, signing outbound requests and verifying
// inbound ones, and the HTTP middleware that refuses unauthenticated
// federation requests.
package xmatrix

import (
	"errors"
	"fmt"
	"strings"
)

// Scheme is the authorization scheme name (matched case-insensitively).
const Scheme = "X-Matrix"

// Params are the parameters of one X-Matrix header.
type Params struct {
	Origin string
	// Destination is empty when the sender left it out (servers older
	// than spec v1.3 did).
	Destination string
	// Key is the signing key id with its algorithm ("ed25519:abc").
	Key string
	// Sig is the unpadded base64 signature.
	Sig string
}

// ErrNotXMatrix means the header uses another authorization scheme.
var ErrNotXMatrix = errors.New("not an X-Matrix authorization header")

// Format renders p as a header value. Values are always quoted (a server
// name with a port, or an IPv6 literal, is not a token) and, as the spec
// asks of senders for older servers, use one space after the scheme and
// lower-case names. Server names and key ids contain no '"' or '\', so
// the escaping below never fires for valid input; it keeps invalid input
// from breaking the header's structure.
func (p Params) Format() string {
	var b strings.Builder
	b.WriteString(Scheme)
	b.WriteString(" origin=")
	writeQuoted(&b, p.Origin)
	if p.Destination != "" {
		b.WriteString(",destination=")
		writeQuoted(&b, p.Destination)
	}
	b.WriteString(",key=")
	writeQuoted(&b, p.Key)
	b.WriteString(",sig=")
	writeQuoted(&b, p.Sig)
	return b.String()
}

func writeQuoted(b *strings.Builder, s string) {
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
}

// ParseHeader reads one Authorization header value per the spec (RFC 9110
// §11.4 credentials): the scheme, one or more spaces, then a
// comma-separated list of name=value parameters with optional spaces and
// tabs around commas and '='. Names are case-insensitive; values are
// tokens or quoted strings with backslash escapes. For older servers an
// unquoted value may contain ':' (and, leniently, any other character but
// whitespace, ',' and '"'). Unknown parameters are ignored; a known one
// given twice is an error, since two values cannot both be the signed one.
// origin, key and sig are required.
func ParseHeader(h string) (Params, error) {
	if len(h) < len(Scheme) || !strings.EqualFold(h[:len(Scheme)], Scheme) {
		return Params{}, ErrNotXMatrix
	}
	rest := h[len(Scheme):]
	if rest == "" {
		return Params{}, errors.New("X-Matrix header has no parameters")
	}
	if rest[0] != ' ' {
		// "X-Matrixfoo": another scheme that merely starts the same way.
		return Params{}, ErrNotXMatrix
	}
	var p Params
	seen := map[string]bool{}
	s := scanner{in: rest}
	s.skipSpace()
	for {
		// Empty list elements (",,") are allowed by RFC 9110's list rules.
		for s.peek() == ',' {
			s.pos++
			s.skipSpace()
		}
		if s.done() {
			break
		}
		name := s.token()
		if name == "" {
			return Params{}, fmt.Errorf("X-Matrix header: expected a parameter name at offset %d", s.pos)
		}
		s.skipSpace()
		if s.peek() != '=' {
			return Params{}, fmt.Errorf("X-Matrix header: parameter %q has no value", name)
		}
		s.pos++
		s.skipSpace()
		value, err := s.value()
		if err != nil {
			return Params{}, fmt.Errorf("X-Matrix header: parameter %q: %w", name, err)
		}
		s.skipSpace()
		if !s.done() && s.peek() != ',' {
			return Params{}, fmt.Errorf("X-Matrix header: expected ',' after parameter %q", name)
		}
		lname := strings.ToLower(name)
		var dst *string
		switch lname {
		case "origin":
			dst = &p.Origin
		case "destination":
			dst = &p.Destination
		case "key":
			dst = &p.Key
		case "sig":
			dst = &p.Sig
		default:
			continue
		}
		if seen[lname] {
			return Params{}, fmt.Errorf("X-Matrix header: parameter %q given twice", lname)
		}
		seen[lname] = true
		*dst = value
	}
	switch {
	case p.Origin == "":
		return Params{}, errors.New("X-Matrix header: missing origin")
	case p.Key == "":
		return Params{}, errors.New("X-Matrix header: missing key")
	case p.Sig == "":
		return Params{}, errors.New("X-Matrix header: missing sig")
	case seen["destination"] && p.Destination == "":
		return Params{}, errors.New("X-Matrix header: empty destination")
	}
	return p, nil
}

type scanner struct {
	in  string
	pos int
}

func (s *scanner) done() bool { return s.pos >= len(s.in) }

func (s *scanner) peek() byte {
	if s.done() {
		return 0
	}
	return s.in[s.pos]
}

func (s *scanner) skipSpace() {
	for !s.done() && (s.in[s.pos] == ' ' || s.in[s.pos] == '\t') {
		s.pos++
	}
}

// isTchar is RFC 9110's token character set.
func isTchar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func (s *scanner) token() string {
	start := s.pos
	for !s.done() && isTchar(s.in[s.pos]) {
		s.pos++
	}
	return s.in[start:s.pos]
}

// value reads a quoted string (unescaping backslash pairs) or an unquoted
// value.
func (s *scanner) value() (string, error) {
	if s.peek() == '"' {
		s.pos++
		var b strings.Builder
		for {
			if s.done() {
				return "", errors.New("unterminated quoted value")
			}
			c := s.in[s.pos]
			s.pos++
			switch {
			case c == '"':
				return b.String(), nil
			case c == '\\':
				if s.done() {
					return "", errors.New("unterminated quoted value")
				}
				c = s.in[s.pos]
				s.pos++
				if isCtl(c) && c != '\t' {
					return "", errors.New("control character in quoted value")
				}
				b.WriteByte(c)
			case isCtl(c) && c != '\t':
				return "", errors.New("control character in quoted value")
			default:
				b.WriteByte(c)
			}
		}
	}
	start := s.pos
	for !s.done() {
		c := s.in[s.pos]
		if c == ',' || c == ' ' || c == '\t' {
			break
		}
		if c == '"' || isCtl(c) {
			return "", fmt.Errorf("invalid character %q in unquoted value", c)
		}
		s.pos++
	}
	if s.pos == start {
		return "", errors.New("empty value")
	}
	return s.in[start:s.pos], nil
}

func isCtl(c byte) bool { return c < 0x20 || c == 0x7f }
