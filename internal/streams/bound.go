package streams

import (
	"context"
	"fmt"
	"log/slog"

	"ganglion/internal/storage"
)

// SequenceBound returns the bound of table-backed streams' positions: the
// current value of the stream's id sequence. A writer's position is an id
// it (or, through Bump, another writer) got from that sequence, so no true
// position is above it; one read of a sequence, no table scan. Positions
// heard on Redis above it are forged (or from another fleet).
func SequenceBound(db *storage.DB) func(ctx context.Context, name Name, writer string) (int64, error) {
	return func(ctx context.Context, name Name, writer string) (int64, error) {
		v, err := db.CurrentStreamSeq(ctx, string(name))
		if err != nil {
			return 0, fmt.Errorf("bound of %s: %w", name, err)
		}
		return v, nil
	}
}

// RepairSavedPositions deletes saved stream positions above their stream's
// sequence. No writer can have committed past the ids the sequence handed
// out, so such a row was saved from a position forged on Redis (versions
// that believed Redis let a writer adopt it); left alone it would restart
// the writer, and seed every reader, far ahead of its rows, hiding new
// messages from /sync for good. Honest rows are never above the sequence,
// so any process may run this at any time; the writer's next save
// rewrites its row from what it committed.
func RepairSavedPositions(ctx context.Context, db *storage.DB, log *slog.Logger) error {
	type saved struct {
		stream, instance string
		pos              int64
	}
	rows, err := db.Reader().QueryContext(ctx, `SELECT stream_name, instance_name, stream_id FROM stream_positions`)
	if err != nil {
		return fmt.Errorf("read saved stream positions: %w", err)
	}
	var all []saved
	for rows.Next() {
		var s saved
		if err := rows.Scan(&s.stream, &s.instance, &s.pos); err != nil {
			rows.Close()
			return fmt.Errorf("read saved stream positions: %w", err)
		}
		all = append(all, s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read saved stream positions: %w", err)
	}
	// The sequences are read after the rows: a row saved meanwhile was
	// below the sequence when saved, and the sequence only grows.
	seqs := map[string]int64{}
	for _, s := range all {
		seq, ok := seqs[s.stream]
		if !ok {
			v, err := db.CurrentStreamSeq(ctx, s.stream)
			if err != nil {
				continue // a stream without a sequence (in-memory) is never saved
			}
			seq, seqs[s.stream] = v, v
		}
		if s.pos <= seq {
			continue
		}
		log.Warn("dropping a saved stream position beyond anything committed (forged on Redis?)",
			"stream", s.stream, "writer", s.instance, "saved", s.pos, "sequence", seq)
		if _, err := db.Exec(ctx, `DELETE FROM stream_positions WHERE stream_name = $1 AND instance_name = $2 AND stream_id = $3`,
			s.stream, s.instance, s.pos); err != nil {
			return fmt.Errorf("drop forged %s position of %s: %w", s.stream, s.instance, err)
		}
	}
	return nil
}
