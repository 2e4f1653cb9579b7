package config_test

import (
	"crypto/sha256"
	"fmt"
	"math"
	"math/big"
	"slices"
	"testing"

	"ganglion/internal/config"
)

// bigShardIndex is the obvious implementation: build the 256-bit
// little-endian integer and reduce it.
func bigShardIndex(key string, n int) int {
	sum := sha256.Sum256([]byte(key))
	be := make([]byte, len(sum))
	for i, b := range sum {
		be[len(sum)-1-i] = b // big.Int wants big-endian
	}
	v := new(big.Int).SetBytes(be)
	return int(new(big.Int).Mod(v, big.NewInt(int64(n))).Int64())
}

func TestShardIndexVectors(t *testing.T) {
	// Expected values computed with Synapse's own expression,
	// int.from_bytes(sha256(key).digest(), "little") % n, in Python.
	tests := []struct {
		key  string
		n    int
		want int
	}{
		{"!abc:example.org", 2, 0},
		{"!abc:example.org", 5, 2},
		{"!abc:example.org", 10, 2},
		{"!room:example.org", 2, 1},
		{"!room:example.org", 10, 5},
		{"", 7, 3},
		{"", 10, 9},
		{"!abc:example.org", math.MaxInt64, 4629715466999512407},
		{"!room:example.org", math.MaxInt64, 3040875770509788162},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q mod %d", tt.key, tt.n), func(t *testing.T) {
			if got := config.ShardIndex(tt.key, tt.n); got != tt.want {
				t.Errorf("ShardIndex = %d, want %d", got, tt.want)
			}
			if got := bigShardIndex(tt.key, tt.n); got != tt.want {
				t.Errorf("math/big = %d, want %d (test vector wrong?)", got, tt.want)
			}
		})
	}
}

func TestShardIndexMatchesBigInt(t *testing.T) {
	ns := []int{1, 2, 3, 4, 7, 16, 255, 256, 257, 1000, 1 << 31, 1<<56 + 3, math.MaxInt64}
	for i := range 200 {
		key := fmt.Sprintf("!room%d:example.org", i)
		for _, n := range ns {
			if got, want := config.ShardIndex(key, n), bigShardIndex(key, n); got != want {
				t.Fatalf("ShardIndex(%q, %d) = %d, math/big says %d", key, n, got, want)
			}
		}
	}
}

func TestEventsWriterFor(t *testing.T) {
	writers := []string{"p1", "p2", "p3", "p4"}
	cfg := config.Default()
	cfg.Writers.Events = writers

	counts := map[string]int{}
	const rooms = 4000
	for i := range rooms {
		room := fmt.Sprintf("!r%d:example.org", i)
		w := cfg.EventsWriterFor(room)
		if !slices.Contains(writers, w) {
			t.Fatalf("EventsWriterFor(%q) = %q, not a configured writer", room, w)
		}
		// Stable: the same room always maps to the same writer, and the
		// answer is exactly the shard index into the list.
		if again := cfg.EventsWriterFor(room); again != w {
			t.Fatalf("EventsWriterFor(%q) changed from %q to %q", room, w, again)
		}
		if want := writers[bigShardIndex(room, len(writers))]; w != want {
			t.Fatalf("EventsWriterFor(%q) = %q, want %q", room, w, want)
		}
		counts[w]++
	}
	// Roughly uniform: each writer within ±20% of its fair share.
	for _, w := range writers {
		if c := counts[w]; c < rooms/len(writers)*8/10 || c > rooms/len(writers)*12/10 {
			t.Errorf("writer %s got %d of %d rooms; distribution is skewed: %v", w, c, rooms, counts)
		}
	}
}

func TestShardForEdgeCases(t *testing.T) {
	tests := []struct {
		name      string
		instances []string
		want      string
	}{
		{"none", nil, ""},
		{"one", []string{"only"}, "only"},
		{"two", []string{"a", "b"}, "b"}, // "!room:example.org" mod 2 = 1
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := config.ShardFor(tt.instances, "!room:example.org"); got != tt.want {
				t.Errorf("ShardFor = %q, want %q", got, tt.want)
			}
		})
	}
	if got := config.Default().EventsWriterFor("!x:y"); got != "main" {
		t.Errorf("default events writer = %q, want main", got)
	}
}
