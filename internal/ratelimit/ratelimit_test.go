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
