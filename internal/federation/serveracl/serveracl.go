// Package serveracl reads a room's m.room.server_acl (spec: "Server Access
// Control Lists"): the inbound endpoints refuse a denied origin, and the
// federation sender sends a room's events and EDUs to no denied server.
package serveracl

import (
	"encoding/json"
	"strings"

	"ganglion/internal/federation/servername"
)

// ACL is the content of an m.room.server_acl event (spec: "Server
// Access Control Lists").
type ACL struct {
	allow, deny     []string
	allowIPLiterals bool
}

// Parse reads an ACL leniently, as the spec's receivers must:
// entries that are not strings are ignored, a missing or malformed allow
// list allows nobody, and allow_ip_literals is true unless it is false.
func Parse(content json.RawMessage) ACL {
	var raw map[string]json.RawMessage
	_ = json.Unmarshal(content, &raw)
	acl := ACL{allowIPLiterals: true}
	var b bool
	if v, ok := raw["allow_ip_literals"]; ok && json.Unmarshal(v, &b) == nil {
		acl.allowIPLiterals = b
	}
	acl.allow = globList(raw["allow"])
	acl.deny = globList(raw["deny"])
	return acl
}

func globList(v json.RawMessage) []string {
	var items []json.RawMessage
	if json.Unmarshal(v, &items) != nil {
		return nil
	}
	var out []string
	for _, it := range items {
		var s string
		if json.Unmarshal(it, &s) == nil {
			out = append(out, s)
		}
	}
	return out
}

// Allows reports whether the ACL lets server (a server name, port
// ignored) take part in the room: not an IP literal when those are
// refused, matching no deny glob, and matching an allow glob.
func (a ACL) Allows(server string) bool {
	n, err := servername.Parse(server)
	if err != nil {
		return false
	}
	host := n.Host
	if n.IP.Is6() {
		// Matched as written in server names, brackets included.
		host = "[" + host + "]"
	}
	if !a.allowIPLiterals && n.IsIP() {
		return false
	}
	for _, g := range a.deny {
		if GlobMatch(g, host) {
			return false
		}
	}
	for _, g := range a.allow {
		if GlobMatch(g, host) {
			return true
		}
	}
	return false
}

// GlobMatch matches s against a glob where '*' is any run of characters
// and '?' any one, ignoring ASCII case (as Synapse's ACL globs do). It
// runs in time linear in len(pattern)*len(s) at worst: a '*' is retried
// from the last star only.
func GlobMatch(pattern, s string) bool {
	p, t := strings.ToLower(pattern), strings.ToLower(s)
	pi, ti := 0, 0
	star, mark := -1, 0
	for ti < len(t) {
		switch {
		case pi < len(p) && (p[pi] == '?' || p[pi] == t[ti]):
			pi++
			ti++
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, ti
			pi++
		case star >= 0:
			pi = star + 1
			mark++
			ti = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}
