package httpguard_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"ganglion/internal/httpguard"
	"ganglion/internal/testutil"
)

// serve runs an http.Server with g's hooks on a loopback port. /block
// waits until release is closed; everything else reads the body and
// answers its length, or 408 when the body deadline passes.
func serve(t *testing.T, opts httpguard.Options) (addr string, g *httpguard.Guard, release chan struct{}) {
	t.Helper()
	g = httpguard.New(opts, slog.New(slog.NewTextHandler(io.Discard, nil)))
	release = make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		n, err := io.Copy(io.Discard, r.Body)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			w.WriteHeader(http.StatusRequestTimeout)
			return
		}
		fmt.Fprintf(w, "%d", n)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: g.Handler(h), ConnState: g.ConnState, ConnContext: g.ConnContext,
		ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(g.Listener(ln)) }()
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
		_ = srv.Close()
	})
	return ln.Addr().String(), g, release
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func send(t *testing.T, c net.Conn, s string) {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// status reads one response from c and returns its status code.
func status(t *testing.T, c net.Conn, br *bufio.Reader) int {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// closedByServer waits (bounded) for the server to close c.
func closedByServer(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err := io.Copy(io.Discard, br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after 20 s")
	}
}

const get = "GET /x HTTP/1.1\r\nHost: t\r\n\r\n"

// TestSlowBodyCutOff: a body trickling in is cut off at the deadline with
// 408 and the connection closed.
func TestSlowBodyCutOff(t *testing.T) {
	addr, g, _ := serve(t, httpguard.Options{BodyTimeout: 300 * time.Millisecond, BodyMinRate: 1 << 10, PlainHTTP: true})
	c := dial(t, addr)
	br := bufio.NewReader(c)
	send(t, c, "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
	if got := status(t, c, br); got != http.StatusRequestTimeout {
		t.Fatalf("status %d, want 408", got)
	}
	closedByServer(t, c, br)
	testutil.Eventually(t, 10*time.Second, "the slow connection released", func() bool {
		open, pending := g.Counts()
		return open == 0 && pending == 0
	})
}

// TestPacedUploadPasses: an upload that takes longer than the base
// deadline passes when its rate stays above the minimum, because each
// received byte extends the deadline.
func TestPacedUploadPasses(t *testing.T) {
	addr, _, _ := serve(t, httpguard.Options{BodyTimeout: time.Second, BodyMinRate: 64 << 10, PlainHTTP: true})
	const chunk, chunks = 16 << 10, 16 // 256 KiB at about 160 KiB/s: 1.6 s, past the 1 s base
	pr, pw := io.Pipe()
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		buf := bytes.Repeat([]byte("a"), chunk)
		for range chunks {
			<-tick.C
			if _, err := pw.Write(buf); err != nil {
				return
			}
		}
		pw.Close()
	}()
	req, err := http.NewRequest("POST", "http://"+addr+"/x", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = chunk * chunks
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != fmt.Sprint(chunk*chunks) {
		t.Fatalf("upload answered %d %q after %v, want 200 %d", resp.StatusCode, b, time.Since(start), chunk*chunks)
	}
	if took := time.Since(start); took < time.Second {
		t.Fatalf("upload took %v, under the base deadline: the test proves nothing", took)
	}
}

// TestPendingCapPerIP: one address holds at most MaxPendingPerIP
// connections without a complete request; the next is refused with 429,
// and a connection that completes a request frees its place.
func TestPendingCapPerIP(t *testing.T) {
	addr, g, _ := serve(t, httpguard.Options{BodyTimeout: 10 * time.Second, MaxPendingPerIP: 2, PlainHTTP: true})
	a, b := dial(t, addr), dial(t, addr)
	send(t, a, "GET /x HTTP/1.1\r\nHost: t\r\n")
	send(t, b, "GET /x HTTP/1.1\r\nHost: t\r\n")
	testutil.Eventually(t, 10*time.Second, "two pending connections", func() bool {
		_, pending := g.Counts()
		return pending == 2
	})
	c := dial(t, addr)
	cr := bufio.NewReader(c)
	if got := status(t, c, cr); got != http.StatusTooManyRequests {
		t.Fatalf("third pending connection: %d, want 429", got)
	}
	closedByServer(t, c, cr)

	ar := bufio.NewReader(a)
	send(t, a, "\r\n")
	if got := status(t, a, ar); got != 200 {
		t.Fatalf("completed request: %d", got)
	}
	testutil.Eventually(t, 10*time.Second, "the completed connection no longer pending", func() bool {
		_, pending := g.Counts()
		return pending == 1
	})
	d := dial(t, addr)
	send(t, d, get)
	if got := status(t, d, bufio.NewReader(d)); got != 200 {
		t.Fatalf("new connection after a place freed: %d", got)
	}
}

// TestConnectionCap: at MaxConns, a newcomer closes the idle keep-alive
// connection first, then the oldest pending one, and is refused when every
// connection is busy with a request.
func TestConnectionCap(t *testing.T) {
	addr, g, release := serve(t, httpguard.Options{BodyTimeout: 10 * time.Second, MaxConns: 2, PlainHTTP: true})
	open := func(n int) func() bool {
		return func() bool { o, _ := g.Counts(); return o == n }
	}

	// Idle first: A finished a request and idles; B is pending.
	a := dial(t, addr)
	ar := bufio.NewReader(a)
	send(t, a, get)
	if got := status(t, a, ar); got != 200 {
		t.Fatalf("A: %d", got)
	}
	b := dial(t, addr)
	send(t, b, "GET /x HTTP/1.1\r\nHost: t\r\n")
	testutil.Eventually(t, 10*time.Second, "A and B open", open(2))
	// A is idle once the server is back to reading it, which can be after
	// the client read its response.
	testutil.Eventually(t, 10*time.Second, "A idle", func() bool { return g.Idle() == 1 })
	c := dial(t, addr)
	closedByServer(t, a, ar)
	br := bufio.NewReader(b)
	send(t, b, "\r\n")
	if got := status(t, b, br); got != 200 {
		t.Fatalf("B after the idle A was evicted: %d", got)
	}

	// Then the oldest pending: B now idles, so it goes; C (pending, sent
	// nothing) stays until D's arrival finds no idle connection left.
	testutil.Eventually(t, 10*time.Second, "B idle", func() bool { return g.Idle() == 1 })
	d := dial(t, addr)
	closedByServer(t, b, br)
	send(t, d, "GET /x HTTP/1.1\r\nHost: t\r\n")
	testutil.Eventually(t, 10*time.Second, "C and D open", open(2))
	e := dial(t, addr)
	cr := bufio.NewReader(c)
	closedByServer(t, c, cr) // C is older than D
	send(t, d, "\r\n")
	if got := status(t, d, bufio.NewReader(d)); got != 200 {
		t.Fatalf("D: %d", got)
	}

	// Busy: two long requests in flight (D and E) and no idle or pending
	// connection: a newcomer is refused.
	send(t, d, "GET /block HTTP/1.1\r\nHost: t\r\n\r\n")
	send(t, e, "GET /block HTTP/1.1\r\nHost: t\r\n\r\n")
	testutil.Eventually(t, 10*time.Second, "D and E busy", func() bool {
		o, pending := g.Counts()
		return o == 2 && pending == 0
	})
	f := dial(t, addr)
	fr := bufio.NewReader(f)
	if got := status(t, f, fr); got != http.StatusTooManyRequests {
		t.Fatalf("newcomer while all are busy: %d, want 429", got)
	}
	closedByServer(t, f, fr)
	if o, _ := g.Counts(); o != 2 {
		t.Fatalf("%d connections open after a refusal, want the two busy ones", o)
	}
	close(release)
}
