package replication

// Internal because expiry needs a fake clock; everything else about the
// cache is tested over HTTP in rpc_test.go.

import (
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestResponseCacheExpiresAfterTTL(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	c := newResponseCache(30*time.Minute, 100, clk.now)
	k := cacheKey{"send_events", "t1"}
	e, owner := c.claim(k)
	if !owner {
		t.Fatal("first claim does not own the entry")
	}
	c.complete(e, response{status: 200, body: []byte(`{"a":1}`)}, true)

	clk.t = clk.t.Add(29 * time.Minute)
	if got, owner := c.claim(k); owner || string(got.resp.body) != `{"a":1}` {
		t.Fatalf("within TTL: owner %v, body %s", owner, got.resp.body)
	}
	clk.t = clk.t.Add(time.Minute)
	if _, owner := c.claim(k); !owner {
		t.Fatal("after TTL the response is still replayed")
	}
}

func TestResponseCacheBoundedOldestFirst(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	c := newResponseCache(time.Hour, 2, clk.now)
	for _, txn := range []string{"a", "b", "c"} {
		e, _ := c.claim(cacheKey{"n", txn})
		c.complete(e, response{status: 200}, true)
		clk.t = clk.t.Add(time.Second)
	}
	if n := c.len(); n != 2 {
		t.Fatalf("%d entries, want 2", n)
	}
	if _, owner := c.claim(cacheKey{"n", "a"}); !owner {
		t.Fatal("oldest entry not evicted")
	}
	if _, owner := c.claim(cacheKey{"n", "c"}); owner {
		t.Fatal("newest entry evicted")
	}
}

func TestResponseCacheInFlightAndFailures(t *testing.T) {
	c := newResponseCache(time.Hour, 1, time.Now)
	k := cacheKey{"n", "t"}
	first, _ := c.claim(k)
	dup, owner := c.claim(k)
	if owner || dup != first {
		t.Fatal("duplicate did not join the in-flight entry")
	}
	// A full cache never evicts what is still running.
	other, _ := c.claim(cacheKey{"n", "other"})
	c.complete(other, response{status: 200}, true)
	if again, owner := c.claim(k); owner || again != first {
		t.Fatal("in-flight entry lost")
	}
	c.complete(first, response{status: 500, body: []byte("x")}, false)
	<-dup.ready
	if dup.resp.status != 500 {
		t.Fatalf("waiter got %d, want the failure", dup.resp.status)
	}
	if _, owner := c.claim(k); !owner {
		t.Fatal("failure kept for replay")
	}
}
