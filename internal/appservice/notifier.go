package appservice

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// Notifier is the one instance's sender of transactions to the services
// (notify_appservices_from_worker). It follows the events stream by
// position: for each batch it writes, in one database transaction, a
// transaction row per interested service and the new position, and only
// then sends. Rows are deleted when acknowledged, so a crash at any point
// re-sends the same txn id with the same body, and never skips or
// reorders one.
type Notifier struct {
	db    *storage.DB
	reg   *streams.Registry
	store *rooms.Store
	fmt   *rooms.Formatter
	svc   *Service
	log   *slog.Logger
	opts  NotifierOptions
	wake  map[string]chan struct{} // per service id
	// interest caches, per service and room, whether a room member or
	// alias of the room falls in the service's namespaces. Used only by
	// the reading goroutine.
	interest map[interestKey]interestEntry
}

// NotifierOptions tune the notifier; zero values take defaults.
type NotifierOptions struct {
	// BatchSize is how many events are read per step (default 100).
	BatchSize int
	// MaxBackoff caps the wait between retries of a failing service
	// (default 60s); the first retry waits MinBackoff (default 250ms).
	MinBackoff, MaxBackoff time.Duration
}

type interestKey struct{ as, room string }

type interestEntry struct {
	yes     bool
	expires time.Time
}

// interestTTL bounds how long a room's cached interest may miss an alias
// added to it (membership changes drop the entry at once).
const interestTTL = time.Minute

// NewNotifier builds the notifier; format renders events in the client
// format services receive.
func NewNotifier(db *storage.DB, reg *streams.Registry, store *rooms.Store, format *rooms.Formatter, svc *Service,
	opts NotifierOptions, log *slog.Logger) *Notifier {
	if opts.BatchSize <= 0 {
		opts.BatchSize = 100
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 250 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = time.Minute
	}
	n := &Notifier{db: db, reg: reg, store: store, fmt: format, svc: svc, log: log, opts: opts,
		wake: map[string]chan struct{}{}, interest: map[interestKey]interestEntry{}}
	for _, r := range svc.regs {
		n.wake[r.ID] = make(chan struct{}, 1)
	}
	return n
}

// Transaction is the body of PUT /_matrix/app/v1/transactions/{txnId}.
type Transaction struct {
	Events    []json.RawMessage `json:"events"`
	Ephemeral []json.RawMessage `json:"ephemeral,omitempty"`
	// MSC2409's unstable key, sent alongside for services that predate
	// the stable one.
	UnstableEphemeral []json.RawMessage `json:"de.sorunome.msc2409.ephemeral,omitempty"`
}

const eventsPositionKey = "events"

// Run follows the events stream and sends until ctx ends.
func (n *Notifier) Run(ctx context.Context) error {
	pos, err := n.loadPosition(ctx)
	if err != nil {
		return err
	}
	n.log.Info("application service notifier started", "position", pos, "appservices", len(n.svc.regs))
	done := make(chan struct{})
	defer func() { <-done }()
	senders, cancelSenders := context.WithCancel(ctx)
	defer cancelSenders()
	go func() {
		defer close(done)
		n.runSenders(senders)
	}()
	// A periodic look bounds how long a missed wake-up can delay delivery.
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	backoff := n.opts.MinBackoff
	for {
		changed := n.reg.Changed(streams.Events)
		to := n.reg.Current(streams.Events)
		if to > pos {
			next, err := n.step(ctx, pos, to)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				n.log.Warn("application service notifier step failed", "position", pos, "err", err)
				if !sleep(ctx, backoff) {
					return nil
				}
				backoff = min(backoff*2, n.opts.MaxBackoff)
				continue
			}
			backoff = n.opts.MinBackoff
			pos = next
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-tick.C:
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// loadPosition reads how far the notifier got; the first start begins at
// the stream's current position (services are not sent the history that
// predates them).
func (n *Notifier) loadPosition(ctx context.Context) (int64, error) {
	var pos int64
	err := n.db.Reader().QueryRowContext(ctx, `SELECT stream_id FROM appservice_stream_positions WHERE stream_name = $1`,
		eventsPositionKey).Scan(&pos)
	if err == nil {
		return pos, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("load application service position: %w", err)
	}
	pos = n.reg.Current(streams.Events)
	if _, err := n.db.Exec(ctx, `INSERT INTO appservice_stream_positions (stream_name, stream_id) VALUES ($1, $2)`,
		eventsPositionKey, pos); err != nil && !storage.IsUniqueViolation(err) {
		return 0, fmt.Errorf("save application service position: %w", err)
	}
	return n.loadPositionAgain(ctx)
}

func (n *Notifier) loadPositionAgain(ctx context.Context) (int64, error) {
	var pos int64
	if err := n.db.Reader().QueryRowContext(ctx, `SELECT stream_id FROM appservice_stream_positions WHERE stream_name = $1`,
		eventsPositionKey).Scan(&pos); err != nil {
		return 0, fmt.Errorf("load application service position: %w", err)
	}
	return pos, nil
}

// step reads one batch of events in (from, to] and queues the services'
// transactions with the new position, atomically.
func (n *Notifier) step(ctx context.Context, from, to int64) (int64, error) {
	evs, err := n.store.EventsAfter(ctx, from, to, n.opts.BatchSize)
	if err != nil {
		return from, err
	}
	next := to
	if len(evs) == n.opts.BatchSize {
		next = evs[len(evs)-1].StreamOrdering
	}
	queued := map[string][]json.RawMessage{}
	if len(evs) > 0 {
		formatted, err := n.fmt.Format(ctx, evs)
		if err != nil {
			return from, err
		}
		for i, se := range evs {
			raw, err := json.Marshal(formatted[i])
			if err != nil {
				return from, fmt.Errorf("encode event %s: %w", se.Event.EventID(), err)
			}
			for _, r := range n.svc.regs {
				if r.URL == "" {
					continue
				}
				yes, err := n.interested(ctx, r, se)
				if err != nil {
					return from, err
				}
				if yes {
					queued[r.ID] = append(queued[r.ID], raw)
				}
			}
			if se.Event.Type() == "m.room.member" {
				n.forgetRoom(se.Event.RoomID())
			}
		}
	}
	err = n.db.Tx(ctx, func(tx *sql.Tx) error {
		for _, r := range n.svc.regs {
			evs := queued[r.ID]
			if len(evs) == 0 {
				continue
			}
			body, err := json.Marshal(Transaction{Events: evs})
			if err != nil {
				return err
			}
			if err := enqueue(ctx, tx, r.ID, body); err != nil {
				return err
			}
		}
		res, err := tx.ExecContext(ctx, `UPDATE appservice_stream_positions SET stream_id = $1
			WHERE stream_name = $2 AND stream_id = $3`, next, eventsPositionKey, from)
		if err != nil {
			return err
		}
		if k, err := res.RowsAffected(); err == nil && k != 1 {
			// Another notifier moved it: two instances configured to send
			// would each send, so refuse rather than duplicate.
			return fmt.Errorf("application service position moved under us (another notifier running?)")
		}
		return nil
	})
	if err != nil {
		return from, fmt.Errorf("queue application service transactions: %w", err)
	}
	for id := range queued {
		n.signal(id)
	}
	return next, nil
}

// enqueue stores the service's next transaction.
func enqueue(ctx context.Context, tx *sql.Tx, asID string, body []byte) error {
	var last int64
	err := tx.QueryRowContext(ctx, `SELECT txn_id FROM appservice_last_txn WHERE as_id = $1`, asID).Scan(&last)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := tx.ExecContext(ctx, `INSERT INTO appservice_last_txn (as_id, txn_id) VALUES ($1, 0)`, asID); err != nil {
			return err
		}
	case err != nil:
		return err
	}
	last++
	if _, err := tx.ExecContext(ctx, `UPDATE appservice_last_txn SET txn_id = $1 WHERE as_id = $2`, last, asID); err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO appservice_txns (as_id, txn_id, body) VALUES ($1, $2, $3)`, asID, last, string(body))
	return err
}

func (n *Notifier) signal(asID string) {
	select {
	case n.wake[asID] <- struct{}{}:
	default:
	}
}

// interested applies the Application Service API's rules: the sender or
// the state key (a membership's target) is in the user namespace, the
// room is in the rooms namespace, or one of the room's aliases or joined
// members is in the service's namespaces.
func (n *Notifier) interested(ctx context.Context, r *Registration, se *rooms.StoredEvent) (bool, error) {
	ev := se.Event
	server := n.svc.serverName
	if r.IsInterestedInUser(ev.Sender(), server) {
		return true, nil
	}
	if sk := ev.StateKey(); sk != nil && ev.Type() == "m.room.member" && r.IsInterestedInUser(*sk, server) {
		return true, nil
	}
	if r.IsInterestedInRoom(ev.RoomID()) {
		return true, nil
	}
	return n.roomInterest(ctx, r, ev.RoomID())
}

func (n *Notifier) roomInterest(ctx context.Context, r *Registration, roomID string) (bool, error) {
	k := interestKey{r.ID, roomID}
	now := time.Now()
	if e, ok := n.interest[k]; ok && now.Before(e.expires) {
		return e.yes, nil
	}
	yes := false
	if len(r.Aliases) > 0 {
		aliases, err := n.store.AliasesOfRoom(ctx, roomID)
		if err != nil {
			return false, err
		}
		for _, a := range aliases {
			if r.IsInterestedInAlias(a) {
				yes = true
				break
			}
		}
	}
	if !yes {
		members, err := n.store.JoinedMembers(ctx, roomID)
		if err != nil {
			return false, fmt.Errorf("members of %s: %w", roomID, err)
		}
		for _, m := range members {
			if r.IsInterestedInUser(m, n.svc.serverName) {
				yes = true
				break
			}
		}
	}
	if len(n.interest) > 100000 {
		clear(n.interest)
	}
	n.interest[k] = interestEntry{yes: yes, expires: now.Add(interestTTL)}
	return yes, nil
}

func (n *Notifier) forgetRoom(roomID string) {
	for _, r := range n.svc.regs {
		delete(n.interest, interestKey{r.ID, roomID})
	}
}

// runSenders runs one sender per service with a URL until ctx ends.
func (n *Notifier) runSenders(ctx context.Context) {
	done := make(chan struct{}, len(n.svc.regs))
	count := 0
	for _, r := range n.svc.regs {
		if r.URL == "" {
			continue
		}
		count++
		go func() {
			n.sendLoop(ctx, r)
			done <- struct{}{}
		}()
	}
	for range count {
		<-done
	}
}

// sendLoop sends the service's queued transactions oldest first, one at a
// time: a transaction is sent again (same id, same body) until the service
// acknowledges it, with exponential backoff between attempts.
func (n *Notifier) sendLoop(ctx context.Context, r *Registration) {
	log := n.log.With("appservice", r.ID)
	backoff := time.Duration(0)
	for {
		txnID, body, ok, err := n.oldest(ctx, r.ID)
		if ctx.Err() != nil {
			return
		}
		if err == nil && !ok {
			select {
			case <-ctx.Done():
				return
			case <-n.wake[r.ID]:
			case <-time.After(5 * time.Second):
			}
			continue
		}
		if err == nil {
			err = n.svc.client.PutTransaction(ctx, r, txnID, body)
			if err == nil {
				_, err = n.db.Exec(ctx, `DELETE FROM appservice_txns WHERE as_id = $1 AND txn_id = $2`, r.ID, txnID)
				if err == nil {
					if backoff > 0 {
						log.Info("application service is reachable again", "txn_id", txnID)
					}
					backoff = 0
					continue
				}
			}
		}
		if ctx.Err() != nil {
			return
		}
		backoff = min(max(backoff*2, n.opts.MinBackoff), n.opts.MaxBackoff)
		log.Warn("could not send transaction to application service; retrying", "txn_id", txnID, "retry_in", backoff, "err", err)
		if !sleep(ctx, backoff) {
			return
		}
	}
}

func (n *Notifier) oldest(ctx context.Context, asID string) (int64, []byte, bool, error) {
	var id int64
	var body string
	err := n.db.Reader().QueryRowContext(ctx, `SELECT txn_id, body FROM appservice_txns WHERE as_id = $1 ORDER BY txn_id LIMIT 1`,
		asID).Scan(&id, &body)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, false, nil
	}
	if err != nil {
		return 0, nil, false, fmt.Errorf("read queued transaction: %w", err)
	}
	return id, []byte(body), true, nil
}
