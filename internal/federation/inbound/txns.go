package inbound

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
)

// txnStore keeps the answers of inbound transactions
// (federation_inbound_txns) so that a retried transaction is answered
// without processing it again, on whichever worker it lands.
type txnStore struct {
	db  *storage.DB
	now func() time.Time

	mu        sync.Mutex
	lastPrune time.Time
}

// Answers are kept a day: a sender gives up on a transaction, or sends
// it again successfully, long before.
const (
	txnKeep       = 24 * time.Hour
	txnPruneEvery = 10 * time.Minute
)

// claim answers (the stored response, false) for a transaction that was
// answered before, (nil, true) when this caller now owns the processing of
// it, and (nil, false) while another caller processes it. A claim older
// than staleBefore (a worker that died while processing) is taken over.
func (t *txnStore) claim(ctx context.Context, origin, txnID string, staleBefore time.Time) ([]byte, bool, error) {
	now := t.now().UnixMilli()
	res, err := t.db.Exec(ctx, `INSERT INTO federation_inbound_txns (origin, txn_id, claimed_ts) VALUES ($1, $2, $3)
		ON CONFLICT DO NOTHING`, origin, txnID, now)
	if err != nil {
		return nil, false, fmt.Errorf("claim transaction %s of %s: %w", txnID, origin, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 1 {
		return nil, true, nil
	}
	var claimed int64
	var resp sql.NullString
	err = t.db.Reader().QueryRowContext(ctx, `SELECT claimed_ts, response FROM federation_inbound_txns
		WHERE origin = $1 AND txn_id = $2`, origin, txnID).Scan(&claimed, &resp)
	if errors.Is(err, sql.ErrNoRows) {
		// Released between the insert and the read: try again.
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read transaction %s of %s: %w", txnID, origin, err)
	}
	if resp.Valid {
		return []byte(resp.String), false, nil
	}
	if claimed >= staleBefore.UnixMilli() {
		return nil, false, nil
	}
	// Only one of several callers that saw the same stale claim wins it.
	res, err = t.db.Exec(ctx, `UPDATE federation_inbound_txns SET claimed_ts = $3
		WHERE origin = $1 AND txn_id = $2 AND claimed_ts = $4 AND response IS NULL`, origin, txnID, now, claimed)
	if err != nil {
		return nil, false, fmt.Errorf("take over transaction %s of %s: %w", txnID, origin, err)
	}
	n, err := res.RowsAffected()
	return nil, err == nil && n == 1, nil
}

// finish records the answer of a claimed transaction and prunes old
// answers now and then.
func (t *txnStore) finish(ctx context.Context, origin, txnID string, response []byte) error {
	if _, err := t.db.Exec(ctx, `UPDATE federation_inbound_txns SET response = $3 WHERE origin = $1 AND txn_id = $2`,
		origin, txnID, string(response)); err != nil {
		return fmt.Errorf("record answer of transaction %s of %s: %w", txnID, origin, err)
	}
	return t.prune(ctx)
}

// release drops a claim whose processing failed, so that the sender's
// retry processes the transaction again.
func (t *txnStore) release(ctx context.Context, origin, txnID string) error {
	if _, err := t.db.Exec(ctx, `DELETE FROM federation_inbound_txns WHERE origin = $1 AND txn_id = $2 AND response IS NULL`,
		origin, txnID); err != nil {
		return fmt.Errorf("release transaction %s of %s: %w", txnID, origin, err)
	}
	return nil
}

func (t *txnStore) prune(ctx context.Context) error {
	now := t.now()
	t.mu.Lock()
	due := now.Sub(t.lastPrune) >= txnPruneEvery
	if due {
		t.lastPrune = now
	}
	t.mu.Unlock()
	if !due {
		return nil
	}
	if _, err := t.db.Exec(ctx, `DELETE FROM federation_inbound_txns WHERE claimed_ts < $1`,
		now.Add(-txnKeep).UnixMilli()); err != nil {
		return fmt.Errorf("prune inbound transactions: %w", err)
	}
	return nil
}

// forwardExtremities are the room's latest events here: the
// earliest_events of a get_missing_events request. The table belongs to
// the rooms domain; rooms.Store has no reader for it yet.
func (t *txnStore) forwardExtremities(ctx context.Context, roomID string, limit int) ([]string, error) {
	rows, err := t.db.Reader().QueryContext(ctx, `SELECT event_id FROM forward_extremities WHERE room_id = $1 ORDER BY event_id LIMIT $2`,
		roomID, limit)
	if err != nil {
		return nil, fmt.Errorf("forward extremities of %s: %w", roomID, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("forward extremities of %s: %w", roomID, err)
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("forward extremities of %s: %w", roomID, err)
	}
	return out, nil
}

// originLocks lets one transaction of an origin be processed at a time
// without holding back other origins. The spec has a sender wait for each
// answer before its next transaction, so another transaction while one is
// processed is refused (429, as Synapse), and only copies of the
// transaction being processed (a retry after a timeout) wait for it, a
// few at most: waiting requests hold their bodies.
type originLocks struct {
	mu sync.Mutex
	m  map[string]*originLock
}

type originLock struct {
	ch    chan struct{}
	txnID string
	users int
}

// maxTxnWaiters bounds the copies of a transaction waiting for it.
const maxTxnWaiters = 4

// errBusy refuses a transaction while another one of the origin is being
// processed.
func errBusy() error {
	return mxhttp.WithCode(http.StatusTooManyRequests, "M_UNKNOWN", "Too many concurrent transactions")
}

// lock waits for origin's lock for txnID, or for ctx.
func (l *originLocks) lock(ctx context.Context, origin, txnID string) (func(), error) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*originLock{}
	}
	ol := l.m[origin]
	if ol == nil {
		ol = &originLock{ch: make(chan struct{}, 1), txnID: txnID}
		l.m[origin] = ol
	}
	if ol.txnID != txnID || ol.users > maxTxnWaiters {
		l.mu.Unlock()
		return nil, errBusy()
	}
	ol.users++
	l.mu.Unlock()
	done := func() {
		l.mu.Lock()
		ol.users--
		if ol.users == 0 {
			delete(l.m, origin)
		}
		l.mu.Unlock()
	}
	select {
	case ol.ch <- struct{}{}:
		return func() { <-ol.ch; done() }, nil
	case <-ctx.Done():
		done()
		return nil, ctx.Err()
	}
}
