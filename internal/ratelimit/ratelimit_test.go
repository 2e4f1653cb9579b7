package ratelimit_test

import (
	"testing"
	"time"

	"ganglion/internal/ratelimit"
)

func TestBucket(t *testing.T) {
	now := time.Unix(1000, 0)
	l := ratelimit.New(ratelimit.Rule{PerSecond: 1, BurstCount: 2}, func() time.Time { return now })
	for i := 0; i < 2; i++ {
		if ok, _ := l.Allow("u"); !ok {
			t.Fatalf("action %d refused within burst", i)
		}
	}
	ok, wait := l.Allow("u")
	if ok || wait <= 0 || wait > time.Second {
		t.Fatalf("third action: ok=%v wait=%v", ok, wait)
	}
	if ok, _ := l.Allow("other"); !ok {
		t.Fatal("keys share a bucket")
	}
	now = now.Add(time.Second)
	if ok, _ := l.Allow("u"); !ok {
		t.Fatal("not refilled after a second")
	}
	if ok, _ := l.Peek("u"); ok {
		t.Fatal("peek says allowed with an empty bucket")
	}
}

func TestDisabled(t *testing.T) {
	l := ratelimit.New(ratelimit.Rule{}, nil)
	for i := 0; i < 1000; i++ {
		if ok, _ := l.Allow("u"); !ok {
			t.Fatal("disabled limiter refused")
		}
	}
	var nilLimiter *ratelimit.Limiter
	if ok, _ := nilLimiter.Allow("u"); !ok {
		t.Fatal("nil limiter refused")
	}
}

func TestAllowN(t *testing.T) {
	now := time.Unix(1000, 0)
	l := ratelimit.New(ratelimit.Rule{PerSecond: 1, BurstCount: 5}, func() time.Time { return now })
	if ok, _ := l.AllowN("room", 3); !ok {
		t.Fatal("3 of a burst of 5 refused")
	}
	ok, wait := l.AllowN("room", 3)
	if ok || wait != time.Second {
		t.Fatalf("3 more with 2 left: ok=%v wait=%v, want refused for 1s", ok, wait)
	}
	if ok, _ := l.AllowN("room", 2); !ok {
		t.Fatal("a refused AllowN took tokens")
	}
	if ok, _ := l.AllowN("other", 6); ok {
		t.Fatal("more than the burst passed")
	}
}
