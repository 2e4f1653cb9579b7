package streams_test

import (
	"database/sql"
	"io"
	"log/slog"
	"testing"

	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
)

// TestRepairSavedPositions: a saved position above its stream's sequence
// (taken from a forged Redis line by older versions) is dropped at start,
// so neither the writer nor its readers resume there; honest rows stay.
// SequenceBound reads the same sequence.
func TestRepairSavedPositions(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := t.Context()
		for range 3 {
			if _, err := db.NextStreamID(ctx, nil, "events"); err != nil {
				t.Fatal(err)
			}
		}
		bound, err := streams.SequenceBound(db)(ctx, streams.Events, "p1")
		if err != nil || bound != 3 {
			t.Fatalf("SequenceBound = %d, %v; want 3", bound, err)
		}
		for _, r := range []struct {
			stream, instance string
			pos              int64
		}{{"events", "p1", 3}, {"events", "p2", 99999999}, {"receipts", "w", 5}} {
			if _, err := db.Exec(ctx, `INSERT INTO stream_positions (stream_name, instance_name, stream_id) VALUES ($1, $2, $3)`,
				r.stream, r.instance, r.pos); err != nil {
				t.Fatal(err)
			}
		}
		if err := streams.RepairSavedPositions(ctx, db, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
			t.Fatal(err)
		}
		saved := func(stream, instance string) int64 {
			var pos int64
			err := db.Reader().QueryRowContext(ctx, `SELECT stream_id FROM stream_positions WHERE stream_name = $1 AND instance_name = $2`,
				stream, instance).Scan(&pos)
			if err == sql.ErrNoRows {
				return -1
			}
			if err != nil {
				t.Fatal(err)
			}
			return pos
		}
		if got := saved("events", "p1"); got != 3 {
			t.Errorf("honest events row = %d, want 3", got)
		}
		if got := saved("events", "p2"); got != -1 {
			t.Errorf("forged events row still there: %d", got)
		}
		// receipts' sequence never handed out 5 either.
		if got := saved("receipts", "w"); got != -1 {
			t.Errorf("forged receipts row still there: %d", got)
		}
	})
}
