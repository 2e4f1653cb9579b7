package inbound

import (
	"encoding/json"
	"strings"

	"ganglion/internal/federation/servername"
)

// serverACL is the content of an m.room.server_acl event (spec: "Server
// Access Control Lists").
type serverACL struct {
	allow, deny     []string
	allowIPLiterals bool
}

// parseServerACL reads an ACL leniently, as the spec's receivers must:
// entries that are not strings are ignored, a missing or malformed allow
// list allows nobody, and allow_ip_literals is true unless it is false.
func parseServerACL(content json.RawMessage) serverACL {
	var raw map[string]json.RawMessage
	_ = json.Unmarshal(content, &raw)
	acl := serverACL{allowIPLiterals: true}
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

// allows reports whether the ACL lets server (a server name, port
// ignored) take part in the room: not an IP literal when those are
// refused, matching no deny glob, and matching an allow glob.
func (a serverACL) allows(server string) bool {
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
		if globMatch(g, host) {
			return false
		}
	}
	for _, g := range a.allow {
		if globMatch(g, host) {
			return true
		}
	}
	return false
}

// globMatch matches s against a glob where '*' is any run of characters
// and '?' any one, ignoring ASCII case (as Synapse's ACL globs do). It
// runs in time linear in len(pattern)*len(s) at worst: a '*' is retried
// from the last star only.
func globMatch(pattern, s string) bool {
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
