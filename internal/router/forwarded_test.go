package router_test

import (
	"bytes"
	"net/http"
	"testing"
)

// A client cannot choose the address the workers see: the router sends
// its peer as X-Forwarded-For, dropping a chain the client wrote, unless
// listen.x_forwarded is on and the peer is one of its trusted proxies.
func TestForwardedChainFromUntrustedPeerDropped(t *testing.T) {
	get := func(t *testing.T, base string) echoReply {
		t.Helper()
		req, _ := http.NewRequest("GET", base+"/_matrix/client/versions", nil)
		req.Header.Set("X-Forwarded-For", "203.0.113.7")
		req.Header.Set("X-Forwarded-Proto", "https")
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(resp.Body)
		return result{status: resp.StatusCode, body: buf.Bytes()}.reply(t)
	}
	t.Run("x_forwarded off", func(t *testing.T) {
		f := newTestFleet(t, 8008)
		_, base := startRouter(t, f)
		if e := get(t, base); e.XFF != "127.0.0.1" || e.XFP != "http" {
			t.Errorf("XFF %q XFP %q, want the peer 127.0.0.1 and http", e.XFF, e.XFP)
		}
	})
	t.Run("x_forwarded on, peer not trusted", func(t *testing.T) {
		f := newTestFleet(t, 8008)
		f.rc.Listen.XForwarded = true
		f.rc.Listen.XForwardedTrustedProxies = []string{"10.0.0.0/8"}
		_, base := startRouter(t, f)
		if e := get(t, base); e.XFF != "127.0.0.1" || e.XFP != "http" {
			t.Errorf("XFF %q XFP %q, want the peer 127.0.0.1 and http", e.XFF, e.XFP)
		}
	})
}
