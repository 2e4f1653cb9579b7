package router_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"ganglion/internal/router"
)

// TestRouterCutsOffSlowBodies: the router's own listener applies
// http_limits, so a client trickling a body is answered and disconnected
// at the body deadline instead of holding the connection (and a backend
// request) open.
func TestRouterCutsOffSlowBodies(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	f := newTestFleet(t, port)
	f.cfg.HTTPLimits.RequestBodyTimeout = "300ms"
	f.cfg.HTTPLimits.RequestBodyMinRate = "1K"
	rt, err := router.New(f.cfg, f.rc, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Listen(); err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = rt.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	c, err := net.Dial("tcp", rt.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "POST /_matrix/client/v3/createRoom HTTP/1.1\r\nHost: r\r\nContent-Length: 100\r\n\r\n{"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, nil); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatalf("a body that never arrived was answered 200")
		}
	}
	_, err = io.Copy(io.Discard, br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("slow connection still open after 20 s")
	}
}
