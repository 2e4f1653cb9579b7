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

// EventuallyState is Eventually for conditions that can say where they
// are: cond returns whether it holds and a description of the state, and
// a timeout reports the last description.
func EventuallyState(t testing.TB, within time.Duration, cond func() (bool, string)) {
	t.Helper()
	var last string
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %v: %s", within, last)
		case <-tick.C:
		}
	}
}
