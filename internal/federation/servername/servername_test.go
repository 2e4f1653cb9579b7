package servername_test

import (
	"testing"

	"ganglion/internal/federation/servername"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in       string
		host     string
		port     int
		ip       bool
		hostPort string
	}{
		{"matrix.org", "matrix.org", 0, false, "matrix.org"},
		{"matrix.org:8448", "matrix.org", 8448, false, "matrix.org:8448"},
		{"1.2.3.4", "1.2.3.4", 0, true, "1.2.3.4"},
		{"1.2.3.4:1234", "1.2.3.4", 1234, true, "1.2.3.4:1234"},
		{"[1234:5678::abcd]", "1234:5678::abcd", 0, true, "[1234:5678::abcd]"},
		{"[1234:5678::abcd]:5678", "1234:5678::abcd", 5678, true, "[1234:5678::abcd]:5678"},
		{"localhost", "localhost", 0, false, "localhost"},
		{"a-b.C9.example", "a-b.C9.example", 0, false, "a-b.C9.example"},
	} {
		n, err := servername.Parse(tc.in)
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if n.Host != tc.host || n.Port != tc.port || n.IsIP() != tc.ip || n.HostPort() != tc.hostPort {
			t.Errorf("%s: got %+v (HostPort %s)", tc.in, n, n.HostPort())
		}
	}
	for _, bad := range []string{"", ":8448", "a.example:", "a.example:0", "a.example:65536", "a.example:-1", "a b",
		"a_b.example", "[::1", "[::1]x", "[1.2.3.4]", "::1", "[fe80::1%eth0]", "a.example:8448x", "a.example:+80"} {
		if servername.Valid(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
}
