package e2e_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestSlowClientsCutOff: fifty connections that send a request's headers
// and then trickle its body, against a listener capped at twenty
// connections, neither lock a normal client out nor stay connected: each is
// either pushed out by newer connections or answered 408 when its body
// deadline passes, and closed.
func TestSlowClientsCutOff(t *testing.T) {
	t.Parallel()
	const slow, maxConns = 50, 20
	runDeployments(t, []string{engineSQLite}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		host := *srv.host.Load()
		conns := make([]net.Conn, 0, slow)
		for range slow {
			c, err := net.Dial("tcp", host)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			t.Cleanup(func() { c.Close() })
			// One byte of a 1,000-byte body, then nothing.
			if _, err := io.WriteString(c, "POST /_matrix/client/v3/login HTTP/1.1\r\nHost: e2e\r\n"+
				"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"); err != nil {
				t.Fatalf("write: %v", err)
			}
			conns = append(conns, c)
		}

		// A normal client is served while they hang on.
		if r := srv.do(t, ctx, http.MethodGet, "/_matrix/client/versions", "", nil); r.status != http.StatusOK {
			t.Fatalf("versions with slow clients connected: %d %s", r.status, truncate(r.body))
		}
		alice := srv.register(t, ctx, "alice")
		if _, err := alice.Whoami(ctx); err != nil {
			t.Fatalf("whoami with slow clients connected: %v", err)
		}

		// Every slow connection is closed by the server, with a 408 or with
		// no answer at all (pushed out), never a success.
		timedOut := 0
		for i, c := range conns {
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			data, err := io.ReadAll(c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("slow connection %d still open after 30 s", i)
			}
			switch {
			case len(data) == 0:
			case bytes.HasPrefix(data, []byte("HTTP/1.1 408 ")):
				timedOut++
			default:
				t.Fatalf("slow connection %d answered %q, want 408 or nothing", i, firstLine(data))
			}
		}
		if timedOut == 0 {
			t.Fatalf("no slow connection was answered 408: the body deadline never fired")
		}
		// And the server still serves.
		if _, err := alice.Whoami(ctx); err != nil {
			t.Fatalf("whoami afterwards: %v", err)
		}
	}, withKey("http_limits", map[string]any{
		"request_body_timeout":  "2s",
		"request_body_min_rate": "1K",
		"max_connections":       maxConns,
	}))
}

func firstLine(b []byte) string {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}
