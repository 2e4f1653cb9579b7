package sender

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// destination is one destination's send loop: one transaction in flight
// at a time, as the spec asks.
type destination struct {
	name string
	wake chan struct{}
}

// wake makes sure dest has a running send loop and pokes it.
func (s *Sender) wake(ctx context.Context, wg *sync.WaitGroup, dest string) {
	s.mu.Lock()
	q := s.queues[dest]
	if q == nil {
		q = &destination{name: dest, wake: make(chan struct{}, 1)}
		s.queues[dest] = q
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.sendLoop(ctx, q)
		}()
	}
	s.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// sendLoop sends q's queued events, oldest first, until ctx ends.
func (s *Sender) sendLoop(ctx context.Context, q *destination) {
	log := s.log.With("destination", q.name)
	for {
		due, err := s.retryDue(ctx, q.name)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("could not read the destination's retry state", "err", err)
			due = s.opts.Now().Add(5 * time.Second)
		}
		if wait := due.Sub(s.opts.Now()); wait > 0 {
			if !streams.Sleep(ctx, wait) {
				return
			}
			continue
		}
		b, err := s.nextTransaction(ctx, q.name)
		switch {
		case errors.Is(err, errNoEvents):
			select {
			case <-ctx.Done():
				return
			case <-q.wake:
			}
			continue
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			log.Warn("could not read the destination's queue", "err", err)
			if !streams.Sleep(ctx, 5*time.Second) {
				return
			}
			continue
		}
		if err := s.transport.SendTransaction(ctx, q.name, b.txnID, b.txn); err != nil {
			s.returnVolatile(q.name, b.volatile)
			if ctx.Err() != nil {
				return
			}
			interval, ferr := s.recordFailure(ctx, q.name)
			log.Info("federation transaction failed; backing off", "txn", b.txnID, "pdus", len(b.txn.PDUs), "edus", len(b.txn.EDUs), "retry_in", interval, "err", err)
			if ferr != nil {
				log.Warn("could not save the destination's retry state", "err", ferr)
			}
			continue
		}
		if err := s.acknowledge(ctx, q.name, b); err != nil {
			if ctx.Err() != nil {
				return
			}
			// The events go again; the destination drops what it has.
			log.Warn("could not remove acknowledged events from the queue", "err", err)
		}
	}
}

// batch is one transaction and what it takes from the queues.
type batch struct {
	txnID string
	txn   *Transaction
	// lastPDU is the stream position of the last PDU (hasPDUs).
	lastPDU  int64
	hasPDUs  bool
	durable  []eduKey
	volatile []volatileEDU
}

// nextTransaction builds the transaction of the destination's oldest queued
// events and EDUs. Without EDUs, the txn id names the range of stream
// positions it covers, so a retry of the same events reuses it and the
// destination can answer from its cache; with EDUs (whose selection may
// change between attempts) it is unique to the attempt, which receivers
// handle as EDUs are idempotent (to-device by message_id, device lists by
// stream_id, receipts and typing and presence by value).
func (s *Sender) nextTransaction(ctx context.Context, dest string) (*batch, error) {
	last, txnID, txn, err := s.nextPDUs(ctx, dest)
	if err != nil && !errors.Is(err, errNoEvents) {
		return nil, err
	}
	b := &batch{txnID: txnID, txn: txn, lastPDU: last, hasPDUs: err == nil}
	if b.txn == nil {
		b.txn = &Transaction{Origin: s.opts.ServerName, OriginServerTS: s.opts.Now().UnixMilli(), PDUs: []json.RawMessage{}}
	}
	b.volatile = s.takeVolatile(dest, maxEDUsPerTxn)
	for _, v := range b.volatile {
		b.txn.EDUs = append(b.txn.EDUs, v.edu)
	}
	if room := maxEDUsPerTxn - len(b.volatile); room > 0 {
		rows, err := s.db.Reader().QueryContext(ctx, `SELECT stream_name, stream_id, seq, content FROM federation_edu_outbox
			WHERE destination = $1 ORDER BY stream_name, stream_id, seq LIMIT $2`, dest, room)
		if err != nil {
			s.returnVolatile(dest, b.volatile)
			return nil, fmt.Errorf("read EDU queue of %s: %w", dest, err)
		}
		for rows.Next() {
			var k eduKey
			var content string
			if err := rows.Scan(&k.stream, &k.streamID, &k.seq, &content); err != nil {
				rows.Close()
				s.returnVolatile(dest, b.volatile)
				return nil, fmt.Errorf("read EDU queue of %s: %w", dest, err)
			}
			b.durable = append(b.durable, k)
			b.txn.EDUs = append(b.txn.EDUs, json.RawMessage(content))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			s.returnVolatile(dest, b.volatile)
			return nil, fmt.Errorf("read EDU queue of %s: %w", dest, err)
		}
	}
	if len(b.txn.EDUs) > 0 {
		if b.txnID == "" {
			b.txnID = "edus"
		}
		b.txnID = fmt.Sprintf("%s-%s.%d", b.txnID, s.txnPrefix, s.txnCount.Add(1))
	} else if !b.hasPDUs {
		return nil, errNoEvents
	}
	return b, nil
}

// nextPDUs builds the PDUs of the destination's next transaction.
func (s *Sender) nextPDUs(ctx context.Context, dest string) (int64, string, *Transaction, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT stream_ordering, event_id FROM federation_outbox
		WHERE destination = $1 ORDER BY stream_ordering LIMIT $2`, dest, maxPDUsPerTxn)
	if err != nil {
		return 0, "", nil, fmt.Errorf("read queue of %s: %w", dest, err)
	}
	var ids []string
	var first, last int64
	for rows.Next() {
		var pos int64
		var id string
		if err := rows.Scan(&pos, &id); err != nil {
			rows.Close()
			return 0, "", nil, fmt.Errorf("read queue of %s: %w", dest, err)
		}
		if len(ids) == 0 {
			first = pos
		}
		last = pos
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, "", nil, fmt.Errorf("read queue of %s: %w", dest, err)
	}
	if len(ids) == 0 {
		return 0, "", nil, errNoEvents
	}
	evs, err := s.store.EventsByID(ctx, ids)
	if err != nil {
		return 0, "", nil, err
	}
	txn := &Transaction{Origin: s.opts.ServerName, OriginServerTS: s.opts.Now().UnixMilli(), PDUs: make([]json.RawMessage, 0, len(ids))}
	for _, id := range ids {
		se := evs[id]
		if se == nil {
			continue // purged since it was queued
		}
		ev := se.Event
		if se.RedactedBy != "" {
			// A redacted event goes out pruned, as it is served.
			if red, err := ev.Redact(); err == nil {
				ev = red
			}
		}
		txn.PDUs = append(txn.PDUs, json.RawMessage(ev.JSON()))
	}
	return last, fmt.Sprintf("%d-%d-%d", first, last, len(ids)), txn, nil
}

// acknowledge removes what b carried from the destination's queues and
// clears its backoff.
func (s *Sender) acknowledge(ctx context.Context, dest string, b *batch) error {
	ctx = storage.WithTxName(ctx, "federation.acknowledge")
	return s.db.Tx(ctx, func(tx *sql.Tx) error {
		if b.hasPDUs {
			if _, err := tx.ExecContext(ctx, `DELETE FROM federation_outbox WHERE destination = $1 AND stream_ordering <= $2`,
				dest, b.lastPDU); err != nil {
				return err
			}
		}
		for _, k := range b.durable {
			if _, err := tx.ExecContext(ctx, `DELETE FROM federation_edu_outbox
				WHERE destination = $1 AND stream_name = $2 AND stream_id = $3 AND seq = $4`, dest, k.stream, k.streamID, k.seq); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM federation_destinations WHERE destination = $1`, dest)
		return err
	})
}

// retryDue is when the next attempt to dest may start (now or earlier when
// it is not backing off).
func (s *Sender) retryDue(ctx context.Context, dest string) (time.Time, error) {
	var last, interval int64
	err := s.db.Reader().QueryRowContext(ctx, `SELECT retry_last_ts, retry_interval_ms FROM federation_destinations
		WHERE destination = $1`, dest).Scan(&last, &interval)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("retry state of %s: %w", dest, err)
	}
	return time.UnixMilli(last + interval), nil
}

// recordFailure grows dest's backoff (min, then times the multiplier, up to
// max) and saves it, so a restarted sender keeps backing off.
func (s *Sender) recordFailure(ctx context.Context, dest string) (time.Duration, error) {
	var interval time.Duration
	ctx = storage.WithTxName(ctx, "federation.backoff")
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		var prev int64
		err := tx.QueryRowContext(ctx, `SELECT retry_interval_ms FROM federation_destinations WHERE destination = $1`, dest).Scan(&prev)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			interval = s.opts.MinRetry
		case err != nil:
			return err
		default:
			grown := float64(prev) * s.opts.RetryMultiplier
			interval = time.Duration(math.Min(grown, float64(s.opts.MaxRetry.Milliseconds()))) * time.Millisecond
			interval = max(interval, s.opts.MinRetry)
		}
		now := s.opts.Now().UnixMilli()
		_, err = tx.ExecContext(ctx, `INSERT INTO federation_destinations (destination, failure_ts, retry_last_ts, retry_interval_ms)
			VALUES ($1, $2, $2, $3) ON CONFLICT (destination) DO UPDATE SET retry_last_ts = excluded.retry_last_ts,
			retry_interval_ms = excluded.retry_interval_ms`, dest, now, interval.Milliseconds())
		return err
	})
	if err != nil {
		return s.opts.MinRetry, fmt.Errorf("save retry state of %s: %w", dest, err)
	}
	return interval, nil
}
