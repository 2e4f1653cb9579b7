package serveracl

import (
	"encoding/json"
	"testing"
)

func TestServerACLMatching(t *testing.T) {
	cases := []struct {
		acl    string
		server string
		want   bool
	}{
		{`{"allow": ["*"]}`, "example.org", true},
		{`{"allow": ["*"]}`, "example.org:8448", true}, // ports are ignored
		{`{}`, "example.org", false},                   // no allow list allows nobody
		{`{"allow": "*"}`, "example.org", false},       // malformed allow list
		{`{"allow": ["*"], "deny": ["*.evil.com"]}`, "a.evil.com", false},
		{`{"allow": ["*"], "deny": ["*.evil.com"]}`, "evil.com", true},
		{`{"allow": ["*"], "deny": ["EVIL.com"]}`, "evil.COM", false}, // case-insensitive
		{`{"allow": ["ex?mple.org"]}`, "example.org", true},
		{`{"allow": ["ex?mple.org"]}`, "exmple.org", false},
		{`{"allow": ["*.org", 3]}`, "example.org", true}, // non-strings ignored
		{`{"allow": ["*"], "allow_ip_literals": false}`, "1.2.3.4", false},
		{`{"allow": ["*"], "allow_ip_literals": false}`, "[::1]:8448", false},
		{`{"allow": ["*"]}`, "1.2.3.4:8448", true},
		{`{"allow": ["[::1]"]}`, "[::1]:8448", true},
		{`{"allow": ["*"], "deny": ["*"]}`, "example.org", false}, // deny wins
		{`{"allow": ["a*b*c"]}`, "axxbyyc", true},
		{`{"allow": ["a*b*c"]}`, "axxbyy", false},
		{`{"allow": ["*"]}`, "not a server", false},
	}
	for _, c := range cases {
		if got := Parse(json.RawMessage(c.acl)).Allows(c.server); got != c.want {
			t.Errorf("ACL %s allows %q = %v, want %v", c.acl, c.server, got, c.want)
		}
	}
}
