package rooms

import (
	"context"
	"fmt"

	"ganglion/internal/accounts"
)

// Appservices is what rooms needs from application services
// (internal/appservice), wired at start-up.
type Appservices interface {
	// CheckAliasCreation refuses (400 M_EXCLUSIVE) an alias in a service's
	// exclusive namespace created by anyone but that service.
	CheckAliasCreation(req *accounts.Requester, alias string) error
	// QueryAlias asks the services whose namespace holds the unknown
	// alias whether it exists (they create it if so); true if one said
	// yes.
	QueryAlias(ctx context.Context, alias string) bool
}

// SetAppservices wires application services in.
func (s *Service) SetAppservices(a Appservices) { s.appservices = a }

// EventsAfter reads the events with stream positions in (from, to], in
// stream order, at most limit: the application-service notifier's reader
// of the events stream.
func (s *Store) EventsAfter(ctx context.Context, from, to int64, limit int) ([]*StoredEvent, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT `+eventColumns+` FROM events e
		WHERE e.stream_ordering > $1 AND e.stream_ordering <= $2 ORDER BY e.stream_ordering LIMIT $3`, from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("read events after %d: %w", from, err)
	}
	evs, err := s.scanEvents(ctx, rows)
	if err != nil {
		return nil, fmt.Errorf("read events after %d: %w", from, err)
	}
	return evs, nil
}

// AliasesOfRoom lists the room's local aliases.
func (s *Store) AliasesOfRoom(ctx context.Context, roomID string) ([]string, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT alias FROM room_aliases WHERE room_id = $1`, roomID)
	if err != nil {
		return nil, fmt.Errorf("aliases of %s: %w", roomID, err)
	}
	return scanStrings(rows)
}
