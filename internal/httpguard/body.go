package httpguard

import (
	"io"
	"net/http"
	"sync"
	"time"
)

// Handler wraps h (the server's outermost handler): a request body must
// arrive by its deadline, and a request whose body has fully arrived (or
// that has none) marks its connection as no longer pending.
//
// The deadline is the connection's read deadline, set through
// http.ResponseController: a read past it fails with an error satisfying
// errors.Is(err, os.ErrDeadlineExceeded), which the JSON body reader
// answers with 408, and the server then closes the connection. Once the
// body is complete the deadline is cleared, because the server keeps
// reading the connection in the background to notice a client going away,
// and a long-poll must not be cancelled by a body deadline.
func (g *Guard) Handler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := r.Context().Value(connKey{}).(*conn)
		if r.Body == nil || r.Body == http.NoBody || g.opts.BodyTimeout <= 0 {
			g.markProven(c)
			h.ServeHTTP(w, r)
			return
		}
		b := &body{ReadCloser: r.Body, g: g, c: c, rc: http.NewResponseController(w), start: g.now()}
		b.deadline = b.start.Add(g.opts.BodyTimeout)
		if err := b.rc.SetReadDeadline(b.deadline); err != nil {
			// A ResponseWriter without deadlines (none of net/http's):
			// nothing to enforce with.
			g.markProven(c)
			h.ServeHTTP(w, r)
			return
		}
		r.Body = b
		h.ServeHTTP(w, r)
	})
}

// body enforces the deadline while the handler reads.
type body struct {
	io.ReadCloser
	g     *Guard
	c     *conn
	rc    *http.ResponseController
	start time.Time

	mu       sync.Mutex
	n        int64
	deadline time.Time
	done     bool
}

// extendStep is the smallest move of the deadline worth a call.
const extendStep = 100 * time.Millisecond

func (b *body) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return n, err
	}
	b.n += int64(n)
	switch {
	case err == io.EOF:
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
		b.g.markProven(b.c)
	case err == nil && n > 0 && b.g.opts.BodyMinRate > 0:
		allowance := time.Duration(float64(b.n) / float64(b.g.opts.BodyMinRate) * float64(time.Second))
		if d := b.start.Add(b.g.opts.BodyTimeout + allowance); d.Sub(b.deadline) >= extendStep {
			b.deadline = d
			_ = b.rc.SetReadDeadline(d)
		}
	}
	return n, err
}
