// Package testutil holds helpers shared by tests of several packages.
package testutil

import (
	"testing"
	"time"
)

// Eventually polls cond until it holds, failing the test after within.
// Tests wait on conditions with a deadline this way instead of sleeping
// for a guessed duration.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", within, what)
		case <-tick.C:
		}
	}
}
