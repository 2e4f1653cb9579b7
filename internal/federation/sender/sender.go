// Package sender is the outbound half of federation: the federation sender
// duty (federation_sender_instances, legacy send_federation). Each sender
// instance follows the events stream and queues every local event for the
// other servers in its room that its shard owns (SHA-256 of the destination,
// as Synapse shards them), durably: the queue rows and the stream position
// they were read up to are written in one transaction, and a destination's
// rows are deleted only once it acknowledged the transaction that carried
// them. A sender killed at any point resends, after restart, whatever was
// not acknowledged; receivers deduplicate PDUs by event id, so every event
// reaches every server once. EDUs ride in the same transactions (see
// edus.go).
package sender

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/federation/serveracl"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// Transaction is the body of PUT /_matrix/federation/v1/send/{txnId}.
type Transaction struct {
	Origin         string            `json:"origin"`
	OriginServerTS int64             `json:"origin_server_ts"`
	PDUs           []json.RawMessage `json:"pdus"`
	EDUs           []json.RawMessage `json:"edus,omitempty"`
}

// Transport delivers one transaction to a destination (signed, over the
// federation client). An error means it was not acknowledged: the same
// events go again, under the same txn id if nothing was added, after the
// destination's backoff.
type Transport interface {
	SendTransaction(ctx context.Context, destination, txnID string, txn *Transaction) error
}

// Limits of one transaction, per the spec.
const (
	maxPDUsPerTxn = 50
)

// Options configure a sender.
type Options struct {
	ServerName string
	// Instance is this sender's instance name; Instances is
	// federation_sender_instances in order (the shard map).
	Instance  string
	Instances []string
	// BatchSize bounds the events read from the stream per step.
	BatchSize int
	// Backoff per destination after a failed transaction: Synapse's
	// federation.destination_min_retry_interval, _retry_multiplier and
	// _max_retry_interval.
	MinRetry, MaxRetry time.Duration
	RetryMultiplier    float64
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
}

// Sender is one federation sender instance.
type Sender struct {
	db        *storage.DB
	reg       *streams.Registry
	store     *rooms.Store
	transport Transport
	opts      Options
	log       *slog.Logger

	mu sync.Mutex
	// servers caches each room's other servers with a joined member; an
	// m.room.member event read from the stream drops its room's entry.
	servers map[string][]string
	// queues are the running per-destination send loops.
	queues map[string]*destination
	// edus are the EDU streams followed (FollowEDUs).
	edus Sources
	// volatile holds each destination's typing and presence EDUs.
	volatile map[string]*volatileQueue
	// typing is each room's local typers as last sent.
	typing map[string][]string
	// txnPrefix and txnCount make the ids of transactions with EDUs unique
	// across restarts (their content is not a fixed range of the queue).
	txnPrefix string
	txnCount  atomic.Int64
	// started is closed once Run has read its stream positions: what is
	// written after that is sent.
	started chan struct{}
}

// New builds a sender. Run starts it.
func New(db *storage.DB, reg *streams.Registry, store *rooms.Store, transport Transport, opts Options, log *slog.Logger) *Sender {
	if opts.BatchSize <= 0 {
		opts.BatchSize = 500
	}
	if opts.MinRetry <= 0 {
		opts.MinRetry = 10 * time.Minute
	}
	if opts.MaxRetry < opts.MinRetry {
		opts.MaxRetry = max(opts.MinRetry, 7*24*time.Hour)
	}
	if opts.RetryMultiplier < 1 {
		opts.RetryMultiplier = 2
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if len(opts.Instances) == 0 {
		opts.Instances = []string{opts.Instance}
	}
	return &Sender{db: db, reg: reg, store: store, transport: transport, opts: opts, log: log,
		servers: map[string][]string{}, queues: map[string]*destination{},
		volatile: map[string]*volatileQueue{}, typing: map[string][]string{},
		txnPrefix: strconv.FormatInt(opts.Now().UnixNano(), 36), started: make(chan struct{})}
}

// Started is closed once Run has read its stream positions.
func (s *Sender) Started() <-chan struct{} { return s.started }

// owns reports whether this instance sends to destination.
func (s *Sender) owns(destination string) bool {
	return config.ShardFor(s.opts.Instances, destination) == s.opts.Instance
}

// Run follows the events stream and sends until ctx ends.
func (s *Sender) Run(ctx context.Context) error {
	pos, err := s.loadPosition(ctx)
	if err != nil {
		return err
	}
	edus, err := s.eduFollowers(ctx)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	loops, stopLoops := context.WithCancel(ctx)
	defer stopLoops()
	start := func(dest string) { s.wake(loops, &wg, dest) }
	// Destinations with events still queued from before a restart.
	pending, err := s.pendingDestinations(ctx)
	if err != nil {
		return err
	}
	for _, d := range pending {
		start(d)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.runEDUs(loops, edus, start)
	}()
	close(s.started)
	s.log.Info("federation sender started", "position", pos, "instances", len(s.opts.Instances), "pending_destinations", len(pending))
	// A periodic look bounds how long a missed wake-up can delay sending.
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	backoff := time.Second
	for {
		changed := s.reg.Changed(streams.Events)
		to := s.reg.Current(streams.Events)
		if to > pos {
			next, touched, err := s.step(ctx, pos, to)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				s.log.Warn("federation sender could not queue events", "position", pos, "err", err)
				if !streams.Sleep(ctx, backoff) {
					return nil
				}
				backoff = min(backoff*2, time.Minute)
				continue
			}
			backoff = time.Second
			pos = next
			for _, d := range touched {
				start(d)
			}
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

// loadPosition reads how far this instance has read; a first start begins
// at the stream's current position (no history is sent to anyone).
func (s *Sender) loadPosition(ctx context.Context) (int64, error) {
	if _, err := s.db.Exec(ctx, `INSERT INTO federation_sender_positions (instance_name, stream_id) VALUES ($1, $2)
		ON CONFLICT (instance_name) DO NOTHING`, s.opts.Instance, s.reg.Current(streams.Events)); err != nil {
		return 0, fmt.Errorf("save federation sender position: %w", err)
	}
	var pos int64
	if err := s.db.Reader().QueryRowContext(ctx, `SELECT stream_id FROM federation_sender_positions WHERE instance_name = $1`,
		s.opts.Instance).Scan(&pos); err != nil {
		return 0, fmt.Errorf("load federation sender position: %w", err)
	}
	return pos, nil
}

// pendingDestinations lists this shard's destinations with queued events.
func (s *Sender) pendingDestinations(ctx context.Context) ([]string, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT destination FROM federation_outbox
		UNION SELECT destination FROM federation_edu_outbox`)
	if err != nil {
		return nil, fmt.Errorf("list federation destinations with queued events: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return nil, fmt.Errorf("list federation destinations with queued events: %w", err)
		}
		if s.owns(d) {
			out = append(out, d)
		}
	}
	return out, rows.Err()
}

// step reads the events in (from, to] (a batch of them) and queues the
// local ones for this shard's destinations, saving the new position in the
// same transaction. It returns the position reached and the destinations
// that got events.
func (s *Sender) step(ctx context.Context, from, to int64) (int64, []string, error) {
	evs, err := s.store.EventsAfter(ctx, from, to, s.opts.BatchSize)
	if err != nil {
		return from, nil, err
	}
	next := to
	if len(evs) == s.opts.BatchSize {
		next = evs[len(evs)-1].StreamOrdering
	}
	type row struct {
		dest, eventID string
		pos           int64
	}
	var queued []row
	touched := map[string]bool{}
	relayed, err := s.relayedEvents(ctx, evs)
	if err != nil {
		return from, nil, err
	}
	for _, se := range evs {
		ev := se.Event
		origin, relay := relayed[ev.EventID()]
		if serverOf(ev.Sender()) != s.opts.ServerName && !relay {
			// Only our own events, and those we relay as a resident server,
			// are ours to send. Another server's state event, or one that
			// merges branches, may have moved the room's membership beyond
			// itself (a resolved fork, the state a join brought), so the
			// room's servers are looked up again.
			if ev.IsState() || len(ev.PrevEventIDs()) > 1 {
				s.forgetRoom(ev.RoomID())
			}
			continue
		}
		if ev.Type() == "m.room.member" || ev.Type() == "m.room.server_acl" || relay {
			s.forgetRoom(ev.RoomID())
		}
		dests, err := s.roomServers(ctx, ev.RoomID())
		if err != nil {
			return from, nil, err
		}
		if relay {
			dests = slices.DeleteFunc(slices.Clone(dests), func(d string) bool { return d == origin })
		}
		if ev.Type() == "m.room.member" && ev.StateKey() != nil && !relay && ev.Membership() != "invite" {
			// A kicked, banned or departing server is told too. An invite
			// already reached the invitee's server through /invite; sent
			// again by /send to a server not in the room, it would be asked
			// about (get_missing_events) and refused.
			if t := serverOf(*ev.StateKey()); t != "" && t != s.opts.ServerName && !slices.Contains(dests, t) {
				ok, err := s.aclAllows(ctx, ev.RoomID(), t)
				if err != nil {
					return from, nil, err
				}
				if ok {
					dests = append(dests[:len(dests):len(dests)], t)
				}
			}
		}
		for _, d := range dests {
			if s.owns(d) {
				queued = append(queued, row{d, ev.EventID(), se.StreamOrdering})
				touched[d] = true
			}
		}
	}
	err = s.db.Tx(storage.WithTxName(ctx, "federation.queue"), func(tx *sql.Tx) error {
		for _, r := range queued {
			if _, err := tx.ExecContext(ctx, `INSERT INTO federation_outbox (destination, stream_ordering, event_id)
				VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, r.dest, r.pos, r.eventID); err != nil {
				return err
			}
		}
		res, err := tx.ExecContext(ctx, `UPDATE federation_sender_positions SET stream_id = $1
			WHERE instance_name = $2 AND stream_id = $3`, next, s.opts.Instance, from)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err == nil && n != 1 {
			return fmt.Errorf("federation sender position of %s moved under us (is another process using the instance name?)", s.opts.Instance)
		}
		return nil
	})
	if err != nil {
		return from, nil, fmt.Errorf("queue federation events: %w", err)
	}
	out := make([]string, 0, len(touched))
	for d := range touched {
		out = append(out, d)
	}
	return next, out, nil
}

// roomServers lists the servers other than ours with a joined member in
// the room, as of now, that the room's server ACL allows: a denied server
// gets none of the room's events or EDUs (Synapse does the same since
// 1.94), though its users may still be joined.
func (s *Sender) roomServers(ctx context.Context, roomID string) ([]string, error) {
	s.mu.Lock()
	cached, ok := s.servers[roomID]
	s.mu.Unlock()
	if ok {
		return cached, nil
	}
	members, err := s.store.JoinedMembers(ctx, roomID)
	if err != nil {
		return nil, err
	}
	acl, err := s.roomACL(ctx, roomID)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range members {
		if d := serverOf(m); d != "" && d != s.opts.ServerName && !slices.Contains(out, d) && (acl == nil || acl.Allows(d)) {
			out = append(out, d)
		}
	}
	s.mu.Lock()
	s.servers[roomID] = out
	s.mu.Unlock()
	return out, nil
}

// roomACL is the room's current server ACL; nil when it has none.
func (s *Sender) roomACL(ctx context.Context, roomID string) (*serveracl.ACL, error) {
	ev, err := s.store.CurrentStateEvent(ctx, roomID, "m.room.server_acl", "")
	if err != nil {
		return nil, fmt.Errorf("server ACL of %s: %w", roomID, err)
	}
	if ev == nil {
		return nil, nil
	}
	acl := serveracl.Parse(ev.Event.Content())
	return &acl, nil
}

// aclAllows reports whether the room's server ACL lets dest take part.
func (s *Sender) aclAllows(ctx context.Context, roomID, dest string) (bool, error) {
	acl, err := s.roomACL(ctx, roomID)
	if err != nil || acl == nil {
		return err == nil, err
	}
	return acl.Allows(dest), nil
}

func (s *Sender) forgetRoom(roomID string) {
	s.mu.Lock()
	delete(s.servers, roomID)
	s.mu.Unlock()
}

// serverOf is the server name of a user id ("" when it is not one).
func serverOf(userID string) string {
	if !strings.HasPrefix(userID, "@") {
		return ""
	}
	_, server, ok := strings.Cut(userID, ":")
	if !ok {
		return ""
	}
	return server
}

var errNoEvents = errors.New("no queued events")
