package appservice

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"ganglion/internal/presence"
	"ganglion/internal/receipts"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/streams"
	"ganglion/internal/todevice"
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
	// receipts, when set, is followed for services asking for ephemeral
	// events.
	receipts ReceiptRows
	typing   TypingReader
	presence PresenceRows
	toDevice ToDeviceRows
	svc      *Service
	log      *slog.Logger
	opts     NotifierOptions
	wake     map[string]chan struct{} // per service id
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

// ReceiptRows reads the receipts stream's rows (receipts.Store).
type ReceiptRows interface {
	Rows(ctx context.Context, from, to int64, limit int) ([]receipts.Row, error)
}

// TypingReader reads the typing stream (the writer or its replica).
type TypingReader interface {
	Typing(roomID string) []string
	ChangedRooms(from, to int64) []string
}

// PresenceRows reads the presence stream (presence.Service).
type PresenceRows interface {
	Changes(ctx context.Context, from, to int64, limit int) ([]presence.Change, error)
}

// ToDeviceRows reads the to_device stream (todevice.Service).
type ToDeviceRows interface {
	Rows(ctx context.Context, from, to int64, limit int) ([]todevice.InboxRow, int64, error)
}

// FollowPresence makes the notifier send m.presence to the services that
// set receive_ephemeral.
func (n *Notifier) FollowPresence(p PresenceRows) { n.presence = p }

// FollowToDevice makes the notifier send to-device messages for their
// exclusive users to the services that set receive_ephemeral.
func (n *Notifier) FollowToDevice(t ToDeviceRows) { n.toDevice = t }

// FollowTyping makes the notifier send typing notifications to the
// services that set receive_ephemeral.
func (n *Notifier) FollowTyping(t TypingReader) { n.typing = t }

// FollowReceipts makes the notifier send receipts to the services that
// set receive_ephemeral.
func (n *Notifier) FollowReceipts(r ReceiptRows) { n.receipts = r }

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
	// To-device messages to the service's exclusive users (MSC2409), under
	// the stable key and Synapse's unstable one.
	ToDevice         []json.RawMessage `json:"to_device,omitempty"`
	UnstableToDevice []json.RawMessage `json:"de.sorunome.msc2409.to_device,omitempty"`
}

// follower is one stream the notifier follows by position, and how a
// batch of its rows becomes transactions.
type follower struct {
	stream streams.Name
	pos    int64
	// volatile streams (typing) live in their writer's memory: their
	// position is not saved, restarts with the writer, and what was typed
	// while the notifier was down is gone anyway.
	volatile bool
	// read turns the rows in (from, to] (or a prefix of them, up to the
	// returned position) into transaction bodies per service.
	read func(ctx context.Context, from, to int64) (next int64, queued map[string]*Transaction, err error)
}

// Run follows the streams and sends until ctx ends.
func (n *Notifier) Run(ctx context.Context) error {
	fs := []*follower{{stream: streams.Events, read: n.readEvents}}
	if n.receipts != nil && n.anyEphemeral() {
		fs = append(fs, &follower{stream: streams.Receipts, read: n.readReceipts})
	}
	if n.typing != nil && n.anyEphemeral() {
		fs = append(fs, &follower{stream: streams.Typing, read: n.readTyping, volatile: true})
	}
	if n.presence != nil && n.anyEphemeral() {
		fs = append(fs, &follower{stream: streams.Presence, read: n.readPresence})
	}
	if n.toDevice != nil && n.anyEphemeral() {
		fs = append(fs, &follower{stream: streams.ToDevice, read: n.readToDevice})
	}
	for _, f := range fs {
		if f.volatile {
			f.pos = n.reg.Current(f.stream)
			continue
		}
		pos, err := n.loadPosition(ctx, f.stream)
		if err != nil {
			return err
		}
		f.pos = pos
	}
	n.log.Info("application service notifier started", "position", fs[0].pos, "appservices", len(n.svc.regs))
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
		// One goroutine follows every stream: transactions are queued in
		// the order their rows were read.
		changed := make([]<-chan struct{}, len(fs))
		progressed, failed := false, false
		for i, f := range fs {
			changed[i] = n.reg.Changed(f.stream)
			to := n.reg.Current(f.stream)
			if f.volatile && to < f.pos {
				f.pos = to // the writer restarted
			}
			if to <= f.pos {
				continue
			}
			next, err := n.step(ctx, f, to)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				n.log.Warn("application service notifier step failed", "stream", f.stream, "position", f.pos, "err", err)
				failed = true
				continue
			}
			f.pos = next
			progressed = true
		}
		if failed {
			if !streams.Sleep(ctx, backoff) {
				return nil
			}
			backoff = min(backoff*2, n.opts.MaxBackoff)
			continue
		}
		backoff = n.opts.MinBackoff
		if progressed {
			continue
		}
		if !streams.WaitAny(ctx, tick.C, changed) {
			return nil
		}
	}
}

func (n *Notifier) anyEphemeral() bool {
	for _, r := range n.svc.regs {
		if r.ReceiveEphemeral && r.URL != "" {
			return true
		}
	}
	return false
}

// loadPosition reads how far the notifier got on a stream; the first start
// begins at the stream's current position (services are not sent the
// history that predates them).
func (n *Notifier) loadPosition(ctx context.Context, stream streams.Name) (int64, error) {
	var pos int64
	err := n.db.Reader().QueryRowContext(ctx, `SELECT stream_id FROM appservice_stream_positions WHERE stream_name = $1`,
		string(stream)).Scan(&pos)
	if err == nil {
		return pos, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("load application service position: %w", err)
	}
	if _, err := n.db.Exec(ctx, `INSERT INTO appservice_stream_positions (stream_name, stream_id) VALUES ($1, $2)
		ON CONFLICT (stream_name) DO NOTHING`, string(stream), n.reg.Current(stream)); err != nil {
		return 0, fmt.Errorf("save application service position: %w", err)
	}
	if err := n.db.Reader().QueryRowContext(ctx, `SELECT stream_id FROM appservice_stream_positions WHERE stream_name = $1`,
		string(stream)).Scan(&pos); err != nil {
		return 0, fmt.Errorf("load application service position: %w", err)
	}
	return pos, nil
}

// step reads one batch of f's rows up to to and queues the services'
// transactions with the new position, in one database transaction.
func (n *Notifier) step(ctx context.Context, f *follower, to int64) (int64, error) {
	next, queued, err := f.read(ctx, f.pos, to)
	if err != nil {
		return f.pos, err
	}
	err = n.db.Tx(ctx, func(tx *sql.Tx) error {
		for _, r := range n.svc.regs {
			txn := queued[r.ID]
			if txn == nil {
				continue
			}
			if txn.Events == nil {
				txn.Events = []json.RawMessage{} // required by the spec
			}
			body, err := json.Marshal(txn)
			if err != nil {
				return err
			}
			if err := enqueue(ctx, tx, r.ID, body); err != nil {
				return err
			}
		}
		if f.volatile {
			return nil
		}
		res, err := tx.ExecContext(ctx, `UPDATE appservice_stream_positions SET stream_id = $1
			WHERE stream_name = $2 AND stream_id = $3`, next, string(f.stream), f.pos)
		if err != nil {
			return err
		}
		if k, err := res.RowsAffected(); err == nil && k != 1 {
			// Another notifier moved it: two instances configured to send
			// would each send, so refuse rather than duplicate.
			return fmt.Errorf("application service position of %s moved under us (another notifier running?)", f.stream)
		}
		return nil
	})
	if err != nil {
		return f.pos, fmt.Errorf("queue application service transactions: %w", err)
	}
	for id := range queued {
		n.signal(id)
	}
	return next, nil
}

// readEvents turns events into transactions for the services interested.
func (n *Notifier) readEvents(ctx context.Context, from, to int64) (int64, map[string]*Transaction, error) {
	evs, err := n.store.EventsAfter(ctx, from, to, n.opts.BatchSize)
	if err != nil {
		return from, nil, err
	}
	next := to
	if len(evs) == n.opts.BatchSize {
		next = evs[len(evs)-1].StreamOrdering
	}
	queued := map[string]*Transaction{}
	if len(evs) == 0 {
		return next, queued, nil
	}
	formatted, err := n.fmt.Format(ctx, evs)
	if err != nil {
		return from, nil, err
	}
	for i, se := range evs {
		raw, err := json.Marshal(formatted[i])
		if err != nil {
			return from, nil, fmt.Errorf("encode event %s: %w", se.Event.EventID(), err)
		}
		for _, r := range n.svc.regs {
			if r.URL == "" {
				continue
			}
			yes, err := n.interested(ctx, r, se)
			if err != nil {
				return from, nil, err
			}
			if yes {
				txn := txnFor(queued, r.ID)
				txn.Events = append(txn.Events, raw)
			}
		}
		if se.Event.Type() == "m.room.member" {
			n.forgetRoom(se.Event.RoomID())
		}
	}
	return next, queued, nil
}

// readTyping sends each changed room's current typers as m.typing.
func (n *Notifier) readTyping(ctx context.Context, from, to int64) (int64, map[string]*Transaction, error) {
	queued := map[string]*Transaction{}
	for _, roomID := range n.typing.ChangedRooms(from, to) {
		users := n.typing.Typing(roomID)
		if users == nil {
			users = []string{}
		}
		edu, err := json.Marshal(map[string]any{"type": "m.typing", "room_id": roomID,
			"content": map[string]any{"user_ids": users}})
		if err != nil {
			return from, nil, err
		}
		if err := n.queueEphemeral(ctx, queued, roomID, "", edu); err != nil {
			return from, nil, err
		}
	}
	return to, queued, nil
}

// queueEphemeral adds an ephemeral event to the transactions of the
// services that asked for them and are interested in the room (or the
// user, when given).
func (n *Notifier) queueEphemeral(ctx context.Context, queued map[string]*Transaction, roomID, userID string, edu json.RawMessage) error {
	for _, r := range n.svc.regs {
		if r.URL == "" || !r.ReceiveEphemeral {
			continue
		}
		yes := (userID != "" && r.IsInterestedInUser(userID, n.svc.serverName)) || r.IsInterestedInRoom(roomID)
		if !yes {
			var err error
			if yes, err = n.roomInterest(ctx, r, roomID); err != nil {
				return err
			}
		}
		if yes {
			txnFor(queued, r.ID).addEphemeral(edu)
		}
	}
	return nil
}

// readReceipts turns receipts into m.receipt ephemeral events (MSC2409)
// for the services that asked for them and are interested in the room or
// the user.
func (n *Notifier) readReceipts(ctx context.Context, from, to int64) (int64, map[string]*Transaction, error) {
	rows, err := n.receipts.Rows(ctx, from, to, n.opts.BatchSize)
	if err != nil {
		return from, nil, err
	}
	next := to
	if len(rows) == n.opts.BatchSize {
		next = rows[len(rows)-1].StreamID
	}
	queued := map[string]*Transaction{}
	for _, row := range rows {
		data := row.Data
		if len(data) == 0 {
			data = json.RawMessage("{}")
		}
		edu, err := json.Marshal(map[string]any{
			"type":    "m.receipt",
			"room_id": row.RoomID,
			"content": map[string]any{row.EventID: map[string]any{row.Type: map[string]json.RawMessage{row.UserID: data}}},
		})
		if err != nil {
			return from, nil, err
		}
		if row.Type == "m.read.private" {
			// Private receipts are only for the services whose user
			// wrote them.
			for _, r := range n.svc.regs {
				if r.URL != "" && r.ReceiveEphemeral && r.IsInterestedInUser(row.UserID, n.svc.serverName) {
					txnFor(queued, r.ID).addEphemeral(edu)
				}
			}
			continue
		}
		if err := n.queueEphemeral(ctx, queued, row.RoomID, row.UserID, edu); err != nil {
			return from, nil, err
		}
	}
	return next, queued, nil
}

// readPresence sends m.presence of the users a service is interested in:
// those of its user namespace and those sharing a joined room with one.
func (n *Notifier) readPresence(ctx context.Context, from, to int64) (int64, map[string]*Transaction, error) {
	changes, err := n.presence.Changes(ctx, from, to, n.opts.BatchSize)
	if err != nil {
		return from, nil, err
	}
	next := to
	if len(changes) == n.opts.BatchSize {
		next = changes[len(changes)-1].StreamID
	}
	queued := map[string]*Transaction{}
	for _, c := range changes {
		edu, err := json.Marshal(c.Event)
		if err != nil {
			return from, nil, err
		}
		var joined []string
		for _, r := range n.svc.regs {
			if r.URL == "" || !r.ReceiveEphemeral {
				continue
			}
			yes := r.IsInterestedInUser(c.Event.Sender, n.svc.serverName)
			if !yes && joined == nil {
				if joined, err = n.store.RoomsForUser(ctx, c.Event.Sender, "join"); err != nil {
					return from, nil, fmt.Errorf("rooms of %s: %w", c.Event.Sender, err)
				}
				if joined == nil {
					joined = []string{}
				}
			}
			for _, roomID := range joined {
				if yes {
					break
				}
				if yes, err = n.roomInterest(ctx, r, roomID); err != nil {
					return from, nil, err
				}
			}
			if yes {
				txnFor(queued, r.ID).addEphemeral(edu)
			}
		}
	}
	return next, queued, nil
}

// readToDevice sends each to-device message addressed to a user in a
// service's exclusive user namespace to that service, with its recipient
// (to_user_id, to_device_id), as Synapse does.
func (n *Notifier) readToDevice(ctx context.Context, from, to int64) (int64, map[string]*Transaction, error) {
	rows, next, err := n.toDevice.Rows(ctx, from, to, n.opts.BatchSize)
	if err != nil {
		return from, nil, err
	}
	queued := map[string]*Transaction{}
	for _, row := range rows {
		var msg json.RawMessage
		for _, r := range n.svc.regs {
			if r.URL == "" || !r.ReceiveEphemeral || !matches(r.Users, row.UserID, true) {
				continue
			}
			if msg == nil {
				content := row.Content
				if len(content) == 0 {
					content = json.RawMessage("{}")
				}
				if msg, err = json.Marshal(map[string]any{"type": row.Type, "sender": row.Sender, "content": content,
					"to_user_id": row.UserID, "to_device_id": row.DeviceID}); err != nil {
					return from, nil, err
				}
			}
			txn := txnFor(queued, r.ID)
			txn.ToDevice = append(txn.ToDevice, msg)
			txn.UnstableToDevice = append(txn.UnstableToDevice, msg)
		}
	}
	return next, queued, nil
}

// enqueue stores the service's next transaction. The counter is bumped
// in place (UPDATE … RETURNING), so concurrent writers could never hand
// out one txn id twice.
func enqueue(ctx context.Context, tx *sql.Tx, asID string, body []byte) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO appservice_last_txn (as_id, txn_id) VALUES ($1, 0)
		ON CONFLICT (as_id) DO NOTHING`, asID); err != nil {
		return err
	}
	var id int64
	if err := tx.QueryRowContext(ctx, `UPDATE appservice_last_txn SET txn_id = txn_id + 1 WHERE as_id = $1 RETURNING txn_id`,
		asID).Scan(&id); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO appservice_txns (as_id, txn_id, body) VALUES ($1, $2, $3)`, asID, id, string(body))
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
		if !streams.Sleep(ctx, backoff) {
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

// txnFor returns the transaction being assembled for service id, creating
// it on first use.
func txnFor(queued map[string]*Transaction, id string) *Transaction {
	txn := queued[id]
	if txn == nil {
		txn = &Transaction{}
		queued[id] = txn
	}
	return txn
}

// addEphemeral adds an ephemeral event under both the stable and the
// MSC2409 key.
func (t *Transaction) addEphemeral(edu json.RawMessage) {
	t.Ephemeral = append(t.Ephemeral, edu)
	t.UnstableEphemeral = append(t.UnstableEphemeral, edu)
}
