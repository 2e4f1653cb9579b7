package sender

import (
	"context"
	"fmt"

	"ganglion/internal/rooms"
	"ganglion/internal/storage"
)

// relayedEvents maps the events of evs that other servers built and this
// server relays as a resident server of their room (the joins, leaves and
// knocks of federation_relayed_events) to the server that sent them here.
func (s *Sender) relayedEvents(ctx context.Context, evs []*rooms.StoredEvent) (map[string]string, error) {
	var ids []string
	for _, se := range evs {
		if se.Event.Type() == "m.room.member" && serverOf(se.Event.Sender()) != s.opts.ServerName {
			ids = append(ids, se.Event.EventID())
		}
	}
	out := map[string]string{}
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), 500)]
		ids = ids[len(chunk):]
		args, in := storage.AppendIn(nil, chunk)
		rows, err := s.db.Reader().QueryContext(ctx, `SELECT event_id, origin FROM federation_relayed_events
			WHERE event_id IN (`+in+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("relayed events: %w", err)
		}
		for rows.Next() {
			var id, origin string
			if err := rows.Scan(&id, &origin); err != nil {
				rows.Close()
				return nil, fmt.Errorf("relayed events: %w", err)
			}
			out[id] = origin
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("relayed events: %w", err)
		}
	}
	return out, nil
}
