package forwarded_test

import (
	"net/http/httptest"
	"testing"

	"ganglion/internal/forwarded"
)

func TestClient(t *testing.T) {
	custom, err := forwarded.Parse([]string{"10.0.0.0/8", "192.0.2.7"})
	if err != nil {
		t.Fatal(err)
	}
	nobody, err := forwarded.Parse([]string{})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		trust  forwarded.Trust
		peer   string
		xff    []string
		client string
	}{
		{"no header", forwarded.Loopback(), "127.0.0.1:5000", nil, "127.0.0.1"},
		{"router on loopback", forwarded.Loopback(), "127.0.0.1:5000", []string{"203.0.113.9"}, "203.0.113.9"},
		{"forged header from an untrusted peer", forwarded.Loopback(), "198.51.100.3:5000", []string{"203.0.113.9"}, "198.51.100.3"},
		{"client forged a chain the proxy appended to", forwarded.Loopback(), "127.0.0.1:5000",
			[]string{"1.2.3.4, 203.0.113.9"}, "203.0.113.9"},
		{"two trusted hops", custom, "10.1.1.1:5000", []string{"203.0.113.9, 192.0.2.7"}, "203.0.113.9"},
		{"several header lines", custom, "10.1.1.1:5000", []string{"1.2.3.4", "203.0.113.9", "10.2.2.2"}, "203.0.113.9"},
		{"all hops trusted", custom, "10.1.1.1:5000", []string{"10.3.3.3, 10.4.4.4"}, "10.3.3.3"},
		{"garbage in the chain", forwarded.Loopback(), "127.0.0.1:5000", []string{"1.2.3.4, bogus"}, "127.0.0.1"},
		{"loopback not trusted by a custom list", custom, "127.0.0.1:5000", []string{"203.0.113.9"}, "127.0.0.1"},
		{"empty list trusts nobody", nobody, "127.0.0.1:5000", []string{"203.0.113.9"}, "127.0.0.1"},
		{"IPv6 loopback", forwarded.Loopback(), "[::1]:5000", []string{"2001:db8::5"}, "2001:db8::5"},
		{"IPv4-mapped peer", forwarded.Loopback(), "[::ffff:127.0.0.1]:5000", []string{"203.0.113.9"}, "203.0.113.9"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			r.RemoteAddr = c.peer
			for _, v := range c.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			got, ok := c.trust.Client(r)
			if !ok || got.String() != c.client {
				t.Fatalf("Client = %v, %v; want %s", got, ok, c.client)
			}
		})
	}
}

func TestParseRejectsGarbage(t *testing.T) {
	if _, err := forwarded.Parse([]string{"10.0.0.0/8", "not-an-ip"}); err == nil {
		t.Fatal("Parse accepted not-an-ip")
	}
}
