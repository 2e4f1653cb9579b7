package streams

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"

	"ganglion/internal/storage"
)

// TableWriter is the local writer of a table-backed stream: it allocates
// each row's stream id inside the row's transaction, advances the stream
// position only after commit (through the Tracker, so ids committed out of
// order never expose a gap), and wakes the notifier keys the write concerns.
// Every per-user stream (receipts, account data, to-device, presence, …)
// writes through one of these when this process is the stream's writer.
type TableWriter struct {
	db      *storage.DB
	reg     *Registry
	name    Name
	tracker *Tracker
}

var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// NewTableWriter resumes the stream at the largest of the saved position,
// the highest id this instance wrote to table.column and the sequence's
// current value.
// instanceColumn may be "" for tables without one (single-writer streams).
func NewTableWriter(ctx context.Context, db *storage.DB, reg *Registry, name Name, table, column, instanceColumn string) (*TableWriter, error) {
	for _, id := range []string{table, column, instanceColumn} {
		if id != "" && !identRE.MatchString(id) {
			return nil, fmt.Errorf("stream %s: bad identifier %q", name, id)
		}
	}
	q := `SELECT max(` + column + `) FROM ` + table
	var args []any
	if instanceColumn != "" {
		q += ` WHERE ` + instanceColumn + ` = $1`
		args = append(args, reg.Instance())
	}
	var maxID sql.NullInt64
	if err := db.Reader().QueryRowContext(ctx, q, args...).Scan(&maxID); err != nil {
		return nil, fmt.Errorf("load %s position: %w", name, err)
	}
	var saved sql.NullInt64
	err := db.Reader().QueryRowContext(ctx, `SELECT stream_id FROM stream_positions WHERE stream_name = $1 AND instance_name = $2`,
		string(name), reg.Instance()).Scan(&saved)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("load %s saved position: %w", name, err)
	}
	// Nothing of ours is in flight while we start, so every id the sequence
	// has handed out that was ours is finished: its current value is a
	// safe position too. It matters for streams whose rows get deleted
	// (delivered to-device messages), where the table's maximum can fall
	// below positions clients already hold.
	seq, err := db.CurrentStreamSeq(ctx, string(name))
	if err != nil {
		return nil, fmt.Errorf("load %s sequence: %w", name, err)
	}
	w := &TableWriter{db: db, reg: reg, name: name}
	w.tracker = reg.LocalTracker(name, max(maxID.Int64, saved.Int64, seq))
	return w, nil
}

// Write runs fn in a transaction with a fresh stream id for the row(s) it
// writes, then advances the position and wakes keys. It returns the id.
func (w *TableWriter) Write(ctx context.Context, fn func(tx *sql.Tx, id int64) error, wake ...string) (int64, error) {
	res := w.tracker.Reserve()
	defer res.Abort() // no-op after Done
	var id int64
	err := w.db.Tx(ctx, func(tx *sql.Tx) error {
		var err error
		if id, err = w.db.NextStreamID(ctx, tx, string(w.name)); err != nil {
			return err
		}
		res.Add(id)
		return fn(tx, id)
	})
	if err != nil {
		return 0, err
	}
	res.Done()
	w.reg.WakeAt(w.name, id, wake...)
	return id, nil
}

// Position is the writer's committed position.
func (w *TableWriter) Position() int64 { return w.tracker.Position() }

// SavePosition records the position in stream_positions (periodically and
// at shutdown, not per write).
func (w *TableWriter) SavePosition(ctx context.Context) error {
	_, err := w.db.Exec(ctx, `INSERT INTO stream_positions (stream_name, instance_name, stream_id) VALUES ($1, $2, $3)
		ON CONFLICT (stream_name, instance_name) DO UPDATE SET stream_id = excluded.stream_id
		WHERE stream_positions.stream_id < excluded.stream_id`, string(w.name), w.reg.Instance(), w.tracker.Position())
	if err != nil {
		return fmt.Errorf("save %s position: %w", w.name, err)
	}
	return nil
}

// Instance is the writing process's instance name.
func (w *TableWriter) Instance() string { return w.reg.Instance() }
