package stateres

import (
	"context"
	"slices"

	"ganglion/internal/events"
)

// PowerOrder exposes the reverse topological power ordering of ids (taken
// as the whole full conflicted set) to the tests.
func PowerOrder(ctx context.Context, rv *events.RoomVersion, f EventFetcher, ids []string) ([]string, error) {
	l := newLoader(f, len(ids))
	if err := l.load(ctx, ids); err != nil {
		return nil, err
	}
	full := map[string]struct{}{}
	for _, id := range ids {
		full[id] = struct{}{}
	}
	sorted := slices.Sorted(slices.Values(ids))
	return reverseTopologicalPowerOrder(ctx, rv, l, full, sorted, nil)
}

// FullConflictedSet exposes the full conflicted set of v2 (v21 false) or
// v2.1 to the tests, sorted.
func FullConflictedSet(ctx context.Context, f EventFetcher, sets []map[StateKey]string, v21 bool) ([]string, error) {
	unconflicted, conflicted, _ := split(sets)
	l := newLoader(f, 16)
	_, ids, err := fullConflictedSet(ctx, l, sets, unconflicted, conflicted, v21)
	return ids, err
}

// MainlineOrder exposes the mainline ordering of ids against the power
// levels event plID to the tests.
func MainlineOrder(ctx context.Context, f EventFetcher, plID string, ids []string) ([]string, error) {
	l := newLoader(f, len(ids))
	if err := l.load(ctx, ids); err != nil {
		return nil, err
	}
	return mainlineOrder(ctx, l, plID, ids)
}
