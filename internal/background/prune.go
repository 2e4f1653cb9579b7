package background

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"ganglion/internal/storage"
)

// pruneBatch is how many rows one DELETE removes. Each batch is its own
// statement and transaction, so pruning a huge backlog never holds locks
// (or, on SQLite, the single writer) for long.
const pruneBatch = 1000

// identifier is the shape of table and column names PruneTable accepts: they
// are formatted into SQL, which cannot bind identifiers. Lowercase only, so
// the quoted name means the same as the unquoted one in the migrations.
var identifier = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// PruneTable returns a job called name that deletes the rows of table whose
// tsColumn (milliseconds since the epoch) is more than maxAge old, in
// batches. It runs every maxAge/2, between 1 minute and 1 hour, so a row
// outlives maxAge by at most that much; set Every on the result to change
// it. An index on tsColumn keeps each batch cheap on a large table.
//
// Batches are chosen by physical row id (ctid on PostgreSQL, rowid on
// SQLite), so the table needs no key of a particular shape, but must not
// be a SQLite WITHOUT ROWID table.
func PruneTable(db *storage.DB, name, table, tsColumn string, maxAge time.Duration) (Job, error) {
	var errs []error
	if name == "" {
		errs = append(errs, errors.New("empty job name"))
	}
	if !identifier.MatchString(table) {
		errs = append(errs, fmt.Errorf("invalid table name %q: want [a-z_][a-z0-9_]*", table))
	}
	if !identifier.MatchString(tsColumn) {
		errs = append(errs, fmt.Errorf("invalid column name %q: want [a-z_][a-z0-9_]*", tsColumn))
	}
	if maxAge <= 0 {
		errs = append(errs, fmt.Errorf("max age %v must be positive", maxAge))
	}
	if err := errors.Join(errs...); err != nil {
		return Job{}, fmt.Errorf("prune job %q: %w", name, err)
	}

	// Quoted as well as validated, so a table called "user" or "order"
	// works; both engines quote identifiers with double quotes.
	t, c := `"`+table+`"`, `"`+tsColumn+`"`
	var stmt string
	switch db.Engine() {
	case storage.Postgres:
		// = ANY(ARRAY(...)) lets the planner fetch the batch by TID
		// scan; IN (SELECT ...) would plan a join.
		stmt = `DELETE FROM ` + t + ` WHERE ctid = ANY(ARRAY(SELECT ctid FROM ` + t +
			` WHERE ` + c + ` < $1 LIMIT $2))`
	default:
		stmt = `DELETE FROM ` + t + ` WHERE rowid IN (SELECT rowid FROM ` + t +
			` WHERE ` + c + ` < $1 LIMIT $2)`
	}
	return Job{
		Name:  name,
		Every: min(max(maxAge/2, time.Minute), time.Hour),
		Run: func(ctx context.Context) error {
			if err := prune(ctx, db, stmt, time.Now().Add(-maxAge).UnixMilli()); err != nil {
				return fmt.Errorf("prune %s: %w", table, err)
			}
			return nil
		},
	}, nil
}

// prune deletes batches until one comes back short. The cutoff is fixed at
// the start, so rows that age meanwhile wait for the next run rather than
// keeping this one going.
func prune(ctx context.Context, db *storage.DB, stmt string, cutoff int64) error {
	for {
		res, err := db.Exec(ctx, stmt, cutoff, pruneBatch)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n < pruneBatch {
			return nil
		}
	}
}
