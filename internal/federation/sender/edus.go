package sender

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"ganglion/internal/presence"
	"ganglion/internal/receipts"
	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// EDUs go out with the PDUs, at most maxEDUsPerTxn per transaction. Each
// kind comes from its stream, for local users only, to the destinations of
// this sender's shard:
//
//   - m.receipt (receipts stream) and m.device_list_update /
//     m.signing_key_update (device_lists stream) are durable: the sender
//     queues them in federation_edu_outbox in the transaction that saves
//     its position on their stream, and deletes them when the destination
//     acknowledged them, so a restart loses none.
//   - m.direct_to_device is queued in federation_edu_outbox by the to_device
//     writer in the client's send (see internal/todevice); the sender only
//     follows the stream to know when to look.
//   - m.typing and m.presence are volatile: kept in memory, the latest per
//     user (and room), and lost when the sender stops — they are stale by
//     the time it is back, and Synapse does the same.

const maxEDUsPerTxn = 100

// Sources are the EDU streams a sender follows; a nil field is not
// followed.
type Sources struct {
	Receipts ReceiptRows
	Typing   TypingReader
	// Presence is nil when presence.enabled is false: no m.presence then.
	Presence PresenceRows
	// DeviceLists follows the device_lists stream (read from the database).
	DeviceLists bool
	// ToDevice follows the to_device stream.
	ToDevice bool
}

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

// FollowEDUs makes the sender send the EDUs of src. Call before Run.
func (s *Sender) FollowEDUs(src Sources) { s.edus = src }

// edu is the wire form of an EDU in a transaction.
type edu struct {
	Type    string `json:"edu_type"`
	Content any    `json:"content"`
}

// eduKey names a durable EDU's row in federation_edu_outbox.
type eduKey struct {
	stream   string
	streamID int64
	seq      int
}

// volatileQueue holds a destination's volatile EDUs, the latest per key,
// in the order the keys were first queued.
type volatileQueue struct {
	order []string
	edus  map[string]json.RawMessage
}

// volatileEDU is one volatile EDU taken for a transaction.
type volatileEDU struct {
	key string
	edu json.RawMessage
}

// queueVolatile queues (or replaces) a volatile EDU for dest.
func (s *Sender) queueVolatile(dest, key string, e json.RawMessage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.volatile[dest]
	if q == nil {
		q = &volatileQueue{edus: map[string]json.RawMessage{}}
		s.volatile[dest] = q
	}
	if _, ok := q.edus[key]; !ok {
		q.order = append(q.order, key)
	}
	q.edus[key] = e
}

// takeVolatile removes up to n of dest's volatile EDUs for a transaction.
func (s *Sender) takeVolatile(dest string, n int) []volatileEDU {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.volatile[dest]
	if q == nil || n <= 0 {
		return nil
	}
	k := min(n, len(q.order))
	out := make([]volatileEDU, 0, k)
	for _, key := range q.order[:k] {
		out = append(out, volatileEDU{key, q.edus[key]})
		delete(q.edus, key)
	}
	q.order = q.order[k:]
	if len(q.order) == 0 {
		delete(s.volatile, dest)
	}
	return out
}

// returnVolatile puts back the EDUs of a failed transaction, unless a newer
// one replaced them meanwhile.
func (s *Sender) returnVolatile(dest string, taken []volatileEDU) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.volatile[dest]
	if q == nil {
		q = &volatileQueue{edus: map[string]json.RawMessage{}}
		s.volatile[dest] = q
	}
	var back []string
	for _, v := range taken {
		if _, ok := q.edus[v.key]; ok {
			continue
		}
		q.edus[v.key] = v.edu
		back = append(back, v.key)
	}
	q.order = append(back, q.order...)
}

// eduFollower is one EDU stream followed by position.
type eduFollower struct {
	stream streams.Name
	pos    int64
	// volatile streams start at the current position and save none.
	volatile bool
	// read handles the rows in (from, to] (or a prefix, up to the returned
	// position); durable followers write their outbox rows in tx, which
	// also saves the position.
	read func(ctx context.Context, tx *sql.Tx, from, to int64) (next int64, touched []string, err error)
}

// eduFollowers sets up the EDU streams to follow at their positions.
func (s *Sender) eduFollowers(ctx context.Context) ([]*eduFollower, error) {
	var fs []*eduFollower
	if s.edus.Receipts != nil {
		fs = append(fs, &eduFollower{stream: streams.Receipts, read: s.readReceipts})
	}
	if s.edus.DeviceLists {
		fs = append(fs, &eduFollower{stream: streams.DeviceLists, read: s.readDeviceLists})
	}
	if s.edus.Typing != nil {
		fs = append(fs, &eduFollower{stream: streams.Typing, read: s.readTyping, volatile: true})
	}
	if s.edus.Presence != nil {
		fs = append(fs, &eduFollower{stream: streams.Presence, read: s.readPresence, volatile: true})
	}
	if s.edus.ToDevice {
		fs = append(fs, &eduFollower{stream: streams.ToDevice, read: s.readToDevice, volatile: true})
	}
	for _, f := range fs {
		if f.volatile {
			f.pos = s.reg.Current(f.stream)
			continue
		}
		pos, err := s.loadStreamPosition(ctx, f.stream)
		if err != nil {
			return nil, err
		}
		f.pos = pos
	}
	return fs, nil
}

// runEDUs follows the EDU streams fs until ctx ends, waking the
// destinations that got EDUs with start.
func (s *Sender) runEDUs(ctx context.Context, fs []*eduFollower, start func(string)) {
	if len(fs) == 0 {
		return
	}
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	backoff := time.Second
	for {
		changed := make([]<-chan struct{}, len(fs))
		progressed, failed := false, false
		for i, f := range fs {
			changed[i] = s.reg.Changed(f.stream)
			to := s.reg.Current(f.stream)
			if f.volatile && to < f.pos {
				f.pos = to // the writer restarted
			}
			if to <= f.pos {
				continue
			}
			next, touched, err := s.stepEDUs(ctx, f, to)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				s.log.Warn("federation sender could not queue EDUs", "stream", f.stream, "position", f.pos, "err", err)
				failed = true
				continue
			}
			f.pos = next
			progressed = true
			for _, d := range touched {
				start(d)
			}
		}
		if failed {
			if !streams.Sleep(ctx, backoff) {
				return
			}
			backoff = min(backoff*2, time.Minute)
			continue
		}
		backoff = time.Second
		if progressed {
			continue
		}
		if !streams.WaitAny(ctx, tick.C, changed) {
			return
		}
	}
}

// stepEDUs reads one batch of f's rows and, for a durable stream, saves
// the outbox rows and the new position in one database transaction.
func (s *Sender) stepEDUs(ctx context.Context, f *eduFollower, to int64) (int64, []string, error) {
	if f.volatile {
		return f.read(ctx, nil, f.pos, to)
	}
	var next int64
	var touched []string
	err := s.db.Tx(storage.WithTxName(ctx, "federation.queue_edus"), func(tx *sql.Tx) error {
		var err error
		next, touched, err = f.read(ctx, tx, f.pos, to)
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE federation_sender_stream_positions SET stream_id = $1
			WHERE instance_name = $2 AND stream_name = $3 AND stream_id = $4`, next, s.opts.Instance, string(f.stream), f.pos)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err == nil && n != 1 {
			return fmt.Errorf("federation sender position of %s on %s moved under us (is another process using the instance name?)",
				s.opts.Instance, f.stream)
		}
		return nil
	})
	if err != nil {
		return f.pos, nil, fmt.Errorf("queue federation EDUs of %s: %w", f.stream, err)
	}
	return next, touched, nil
}

// loadStreamPosition reads how far this instance has read stream; a first
// start begins at the stream's current position.
func (s *Sender) loadStreamPosition(ctx context.Context, stream streams.Name) (int64, error) {
	if _, err := s.db.Exec(ctx, `INSERT INTO federation_sender_stream_positions (instance_name, stream_name, stream_id)
		VALUES ($1, $2, $3) ON CONFLICT (instance_name, stream_name) DO NOTHING`,
		s.opts.Instance, string(stream), s.reg.Current(stream)); err != nil {
		return 0, fmt.Errorf("save federation sender position on %s: %w", stream, err)
	}
	var pos int64
	if err := s.db.Reader().QueryRowContext(ctx, `SELECT stream_id FROM federation_sender_stream_positions
		WHERE instance_name = $1 AND stream_name = $2`, s.opts.Instance, string(stream)).Scan(&pos); err != nil {
		return 0, fmt.Errorf("load federation sender position on %s: %w", stream, err)
	}
	return pos, nil
}

// insertEDU queues a durable EDU for dest in tx.
func insertEDU(ctx context.Context, tx *sql.Tx, dest string, key eduKey, e edu) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO federation_edu_outbox (destination, stream_name, stream_id, seq, edu_type, content)
		VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`, dest, key.stream, key.streamID, key.seq, e.Type, string(b))
	if err != nil {
		return fmt.Errorf("queue %s for %s: %w", e.Type, dest, err)
	}
	return nil
}

// userServers lists this shard's destinations sharing a joined room with
// userID.
func (s *Sender) userServers(ctx context.Context, userID string) ([]string, error) {
	roomIDs, err := s.store.RoomsForUser(ctx, userID, "join")
	if err != nil {
		return nil, fmt.Errorf("rooms of %s: %w", userID, err)
	}
	var out []string
	for _, roomID := range roomIDs {
		dests, err := s.roomServers(ctx, roomID)
		if err != nil {
			return nil, err
		}
		for _, d := range dests {
			if s.owns(d) && !slices.Contains(out, d) {
				out = append(out, d)
			}
		}
	}
	return out, nil
}

// ownedRoomServers is roomServers restricted to this shard.
func (s *Sender) ownedRoomServers(ctx context.Context, roomID string) ([]string, error) {
	dests, err := s.roomServers(ctx, roomID)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, d := range dests {
		if s.owns(d) {
			out = append(out, d)
		}
	}
	return out, nil
}

func (s *Sender) local(userID string) bool { return serverOf(userID) == s.opts.ServerName }

// readReceipts queues local users' public read receipts for the servers
// in their rooms. Private receipts (m.read.private) never leave.
func (s *Sender) readReceipts(ctx context.Context, tx *sql.Tx, from, to int64) (int64, []string, error) {
	rows, err := s.edus.Receipts.Rows(ctx, from, to, s.opts.BatchSize)
	if err != nil {
		return from, nil, err
	}
	next := to
	if len(rows) == s.opts.BatchSize {
		next = rows[len(rows)-1].StreamID
	}
	touched := map[string]bool{}
	for _, r := range rows {
		if r.Type != receipts.Read || !s.local(r.UserID) {
			continue
		}
		data := map[string]any{}
		if len(r.Data) > 0 {
			if err := json.Unmarshal(r.Data, &data); err != nil {
				data = map[string]any{}
			}
		}
		if r.ThreadID != "" {
			data["thread_id"] = r.ThreadID
		}
		content := map[string]any{r.RoomID: map[string]any{receipts.Read: map[string]any{
			r.UserID: map[string]any{"event_ids": []string{r.EventID}, "data": data}}}}
		dests, err := s.ownedRoomServers(ctx, r.RoomID)
		if err != nil {
			return from, nil, err
		}
		for _, d := range dests {
			if err := insertEDU(ctx, tx, d, eduKey{string(streams.Receipts), r.StreamID, 0}, edu{"m.receipt", content}); err != nil {
				return from, nil, err
			}
			touched[d] = true
		}
	}
	return next, keys(touched), nil
}

// deviceListSeqBits is how many low bits of an m.device_list_update's
// stream_id number the devices of one device_lists row: one row (one
// stream id) can change several devices, and each needs its own id for
// the prev_id chain.
const deviceListSeqBits = 12

// readDeviceLists queues local users' device list changes for the servers
// sharing a room with them: m.device_list_update per device (prev_id
// chained per user and destination) and m.signing_key_update for their
// cross-signing keys (device "").
func (s *Sender) readDeviceLists(ctx context.Context, tx *sql.Tx, from, to int64) (int64, []string, error) {
	rows, err := tx.QueryContext(ctx, `SELECT stream_id, user_id, device_id FROM device_lists_stream
		WHERE stream_id IN (SELECT DISTINCT stream_id FROM device_lists_stream
			WHERE stream_id > $1 AND stream_id <= $2 ORDER BY stream_id LIMIT $3)
		ORDER BY stream_id, user_id, device_id`, from, to, s.opts.BatchSize)
	if err != nil {
		return from, nil, fmt.Errorf("read device list changes: %w", err)
	}
	type change struct {
		id             int64
		user, deviceID string
	}
	var changes []change
	ids := map[int64]bool{}
	for rows.Next() {
		var c change
		if err := rows.Scan(&c.id, &c.user, &c.deviceID); err != nil {
			rows.Close()
			return from, nil, fmt.Errorf("read device list changes: %w", err)
		}
		changes = append(changes, c)
		ids[c.id] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return from, nil, fmt.Errorf("read device list changes: %w", err)
	}
	next := to
	if len(ids) == s.opts.BatchSize {
		next = changes[len(changes)-1].id
	}
	touched := map[string]bool{}
	seq := map[int64]int{}
	for _, c := range changes {
		if !s.local(c.user) {
			continue
		}
		dests, err := s.userServers(ctx, c.user)
		if err != nil {
			return from, nil, err
		}
		n := seq[c.id]
		seq[c.id]++
		if len(dests) == 0 {
			continue
		}
		if c.deviceID == "" {
			content, err := signingKeyUpdate(ctx, tx, c.user)
			if err != nil {
				return from, nil, err
			}
			for _, d := range dests {
				if err := insertEDU(ctx, tx, d, eduKey{string(streams.DeviceLists), c.id, n}, edu{"m.signing_key_update", content}); err != nil {
					return from, nil, err
				}
				touched[d] = true
			}
			continue
		}
		content, err := deviceListUpdate(ctx, tx, c.user, c.deviceID)
		if err != nil {
			return from, nil, err
		}
		streamID := c.id<<deviceListSeqBits | int64(min(n, 1<<deviceListSeqBits-1))
		for _, d := range dests {
			var prev int64
			err := tx.QueryRowContext(ctx, `SELECT stream_id FROM federation_device_list_sent WHERE destination = $1 AND user_id = $2`,
				d, c.user).Scan(&prev)
			prevIDs := []int64{}
			switch {
			case errors.Is(err, sql.ErrNoRows):
			case err != nil:
				return from, nil, fmt.Errorf("previous device list update of %s to %s: %w", c.user, d, err)
			case prev < streamID:
				prevIDs = append(prevIDs, prev)
			}
			body := map[string]any{}
			for k, v := range content {
				body[k] = v
			}
			body["stream_id"], body["prev_id"] = streamID, prevIDs
			if err := insertEDU(ctx, tx, d, eduKey{string(streams.DeviceLists), c.id, n}, edu{"m.device_list_update", body}); err != nil {
				return from, nil, err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO federation_device_list_sent (destination, user_id, stream_id) VALUES ($1, $2, $3)
				ON CONFLICT (destination, user_id) DO UPDATE SET stream_id = excluded.stream_id`, d, c.user, streamID); err != nil {
				return from, nil, fmt.Errorf("record device list update of %s to %s: %w", c.user, d, err)
			}
			touched[d] = true
		}
	}
	return next, keys(touched), nil
}

// deviceListUpdate is the content of an m.device_list_update for a device
// as it is now (without stream_id and prev_id): deleted when it is gone.
func deviceListUpdate(ctx context.Context, tx *sql.Tx, userID, deviceID string) (map[string]any, error) {
	out := map[string]any{"user_id": userID, "device_id": deviceID}
	var name sql.NullString
	err := tx.QueryRowContext(ctx, `SELECT display_name FROM devices WHERE user_id = $1 AND device_id = $2`, userID, deviceID).Scan(&name)
	if errors.Is(err, sql.ErrNoRows) {
		out["deleted"] = true
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("device %s of %s: %w", deviceID, userID, err)
	}
	if name.Valid && name.String != "" {
		out["device_display_name"] = name.String
	}
	var keyJSON string
	err = tx.QueryRowContext(ctx, `SELECT key_json FROM e2e_device_keys WHERE user_id = $1 AND device_id = $2`, userID, deviceID).Scan(&keyJSON)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("keys of device %s of %s: %w", deviceID, userID, err)
	default:
		out["keys"] = json.RawMessage(keyJSON)
	}
	return out, nil
}

// signingKeyUpdate is the content of an m.signing_key_update: the user's
// master and self-signing keys (the user-signing key is private to the
// user's own server).
func signingKeyUpdate(ctx context.Context, tx *sql.Tx, userID string) (map[string]any, error) {
	out := map[string]any{"user_id": userID}
	rows, err := tx.QueryContext(ctx, `SELECT key_type, key_json FROM e2e_cross_signing_keys WHERE user_id = $1`, userID)
	if err != nil {
		return nil, fmt.Errorf("cross-signing keys of %s: %w", userID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var typ, key string
		if err := rows.Scan(&typ, &key); err != nil {
			return nil, fmt.Errorf("cross-signing keys of %s: %w", userID, err)
		}
		switch typ {
		case "master":
			out["master_key"] = json.RawMessage(key)
		case "self_signing":
			out["self_signing_key"] = json.RawMessage(key)
		}
	}
	return out, rows.Err()
}

// readTyping queues m.typing for each local user whose typing started or
// stopped in a changed room, for the room's servers.
func (s *Sender) readTyping(ctx context.Context, _ *sql.Tx, from, to int64) (int64, []string, error) {
	touched := map[string]bool{}
	for _, roomID := range s.edus.Typing.ChangedRooms(from, to) {
		var now []string
		for _, u := range s.edus.Typing.Typing(roomID) {
			if s.local(u) {
				now = append(now, u)
			}
		}
		s.mu.Lock()
		before := s.typing[roomID]
		if len(now) == 0 {
			delete(s.typing, roomID)
		} else {
			s.typing[roomID] = now
		}
		s.mu.Unlock()
		type change struct {
			user   string
			typing bool
		}
		var changes []change
		for _, u := range now {
			if !slices.Contains(before, u) {
				changes = append(changes, change{u, true})
			}
		}
		for _, u := range before {
			if !slices.Contains(now, u) {
				changes = append(changes, change{u, false})
			}
		}
		if len(changes) == 0 {
			continue
		}
		dests, err := s.ownedRoomServers(ctx, roomID)
		if err != nil {
			return from, nil, err
		}
		for _, c := range changes {
			b, err := json.Marshal(edu{"m.typing", map[string]any{"room_id": roomID, "user_id": c.user, "typing": c.typing}})
			if err != nil {
				return from, nil, err
			}
			for _, d := range dests {
				s.queueVolatile(d, "typing\x00"+roomID+"\x00"+c.user, b)
				touched[d] = true
			}
		}
	}
	return to, keys(touched), nil
}

// readPresence queues local users' presence for the servers sharing a
// room with them.
func (s *Sender) readPresence(ctx context.Context, _ *sql.Tx, from, to int64) (int64, []string, error) {
	changes, err := s.edus.Presence.Changes(ctx, from, to, s.opts.BatchSize)
	if err != nil {
		return from, nil, err
	}
	next := to
	if len(changes) == s.opts.BatchSize {
		next = changes[len(changes)-1].StreamID
	}
	touched := map[string]bool{}
	for _, c := range changes {
		user := c.Event.Sender
		if !s.local(user) {
			continue
		}
		dests, err := s.userServers(ctx, user)
		if err != nil {
			return from, nil, err
		}
		if len(dests) == 0 {
			continue
		}
		p := map[string]any{"user_id": user, "presence": c.Event.Content.Presence,
			"last_active_ago": int64(0), "currently_active": false}
		if c.Event.Content.LastActiveAgo != nil {
			p["last_active_ago"] = *c.Event.Content.LastActiveAgo
		}
		if c.Event.Content.CurrentlyActive != nil {
			p["currently_active"] = *c.Event.Content.CurrentlyActive
		}
		if c.Event.Content.StatusMsg != nil {
			p["status_msg"] = *c.Event.Content.StatusMsg
		}
		b, err := json.Marshal(edu{"m.presence", map[string]any{"push": []any{p}}})
		if err != nil {
			return from, nil, err
		}
		for _, d := range dests {
			s.queueVolatile(d, "presence\x00"+user, b)
			touched[d] = true
		}
	}
	return next, keys(touched), nil
}

// readToDevice wakes this shard's destinations with to-device messages the
// to_device writer queued in (from, to].
func (s *Sender) readToDevice(ctx context.Context, _ *sql.Tx, from, to int64) (int64, []string, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT DISTINCT destination FROM federation_edu_outbox
		WHERE stream_name = $1 AND stream_id > $2 AND stream_id <= $3`, string(streams.ToDevice), from, to)
	if err != nil {
		return from, nil, fmt.Errorf("destinations of to-device messages: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return from, nil, fmt.Errorf("destinations of to-device messages: %w", err)
		}
		if s.owns(d) {
			out = append(out, d)
		}
	}
	return to, out, rows.Err()
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
