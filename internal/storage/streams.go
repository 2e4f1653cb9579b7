package storage

import (
	"context"
	"database/sql"
	"fmt"
	"regexp"
)

// streamName is the shape of stream names (see the streams registry); it is
// checked before a name is formatted into a PostgreSQL sequence name, which
// cannot be a bind parameter.
var streamName = regexp.MustCompile(`^[a-z_]+$`)

func sequenceName(stream string) (string, error) {
	if !streamName.MatchString(stream) {
		return "", fmt.Errorf("invalid stream name %q: want [a-z_]+", stream)
	}
	return stream + "_stream_seq", nil
}

// NextStreamID allocates the next id of stream. Ids are positive and
// strictly increasing per stream, but their meaning differs by engine:
//
//   - PostgreSQL: nextval is not transactional. An id is never handed out
//     twice, even if tx rolls back (leaving a gap), and transactions may
//     commit out of id order, so readers must not assume everything below a
//     committed id is visible.
//   - SQLite: the counter row is updated in tx on the single writer, so a
//     rollback returns the id and commits happen in id order.
//
// tx may be nil to allocate outside a transaction; on SQLite that must not
// happen inside a Tx callback (the writer connection is busy there).
func (db *DB) NextStreamID(ctx context.Context, tx *sql.Tx, stream string) (int64, error) {
	seq, err := sequenceName(stream)
	if err != nil {
		return 0, err
	}
	var q Querier = db.writer
	if tx != nil {
		q = tx
	}
	var id int64
	switch db.engine {
	case Postgres:
		err = q.QueryRowContext(ctx, `SELECT nextval('`+seq+`')`).Scan(&id)
	default:
		err = q.QueryRowContext(ctx,
			`UPDATE stream_sequences SET last_value = last_value + 1 WHERE name = $1 RETURNING last_value`,
			stream).Scan(&id)
		if IsNotFound(err) {
			return 0, fmt.Errorf("next id of stream %s: no stream_sequences row (missing migration?)", stream)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("next id of stream %s: %w", stream, err)
	}
	return id, nil
}

// NextStreamIDs allocates n ids of stream in one statement, in ascending
// order.
func (db *DB) NextStreamIDs(ctx context.Context, tx *sql.Tx, stream string, n int) ([]int64, error) {
	if n == 1 {
		id, err := db.NextStreamID(ctx, tx, stream)
		if err != nil {
			return nil, err
		}
		return []int64{id}, nil
	}
	seq, err := sequenceName(stream)
	if err != nil {
		return nil, err
	}
	var q Querier = db.writer
	if tx != nil {
		q = tx
	}
	ids := make([]int64, 0, n)
	switch db.engine {
	case Postgres:
		rows, err := q.QueryContext(ctx, `SELECT nextval('`+seq+`') AS id FROM generate_series(1, $1) ORDER BY id`, n)
		if err != nil {
			return nil, fmt.Errorf("next ids of stream %s: %w", stream, err)
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				return nil, fmt.Errorf("next ids of stream %s: %w", stream, err)
			}
			ids = append(ids, id)
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("next ids of stream %s: %w", stream, err)
		}
	default:
		var last int64
		err := q.QueryRowContext(ctx,
			`UPDATE stream_sequences SET last_value = last_value + $2 WHERE name = $1 RETURNING last_value`,
			stream, n).Scan(&last)
		if IsNotFound(err) {
			return nil, fmt.Errorf("next ids of stream %s: no stream_sequences row (missing migration?)", stream)
		}
		if err != nil {
			return nil, fmt.Errorf("next ids of stream %s: %w", stream, err)
		}
		for id := last - int64(n) + 1; id <= last; id++ {
			ids = append(ids, id)
		}
	}
	if len(ids) != n {
		return nil, fmt.Errorf("next ids of stream %s: got %d ids, want %d", stream, len(ids), n)
	}
	return ids, nil
}

// CurrentStreamSeq is the last id allocated for stream, or 0 if none has
// been. On PostgreSQL an allocated id may belong to a transaction that has
// not committed (or never will); it is an upper bound, not a position.
func (db *DB) CurrentStreamSeq(ctx context.Context, stream string) (int64, error) {
	seq, err := sequenceName(stream)
	if err != nil {
		return 0, err
	}
	var last int64
	switch db.engine {
	case Postgres:
		var called bool
		err = db.reader.QueryRowContext(ctx, `SELECT last_value, is_called FROM `+seq).Scan(&last, &called)
		if err == nil && !called {
			// A fresh sequence stores its start value with is_called
			// false: that value has not been handed out yet.
			last--
		}
	default:
		err = db.reader.QueryRowContext(ctx, `SELECT last_value FROM stream_sequences WHERE name = $1`, stream).Scan(&last)
		if IsNotFound(err) {
			return 0, fmt.Errorf("current id of stream %s: no stream_sequences row (missing migration?)", stream)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("current id of stream %s: %w", stream, err)
	}
	return last, nil
}
