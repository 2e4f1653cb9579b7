package streams

import (
	"context"
	"time"
)

// WaitAny waits until one of changed (Registry.Changed channels) fires or
// tick does; false when ctx ended first. Followers of several streams (the
// application service notifier, the federation sender) wait this way.
func WaitAny(ctx context.Context, tick <-chan time.Time, changed []<-chan struct{}) bool {
	merged := make(chan struct{}, 1)
	stop := make(chan struct{})
	defer close(stop)
	for _, c := range changed {
		go func() {
			select {
			case <-c:
				select {
				case merged <- struct{}{}:
				default:
				}
			case <-stop:
			}
		}()
	}
	select {
	case <-ctx.Done():
		return false
	case <-merged:
	case <-tick:
	}
	return true
}

// Sleep waits d; false when ctx ended first. Stream followers back off
// with it after a failed step.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
