package push

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// DeliveryOptions tune the pusher loop (tests shorten them).
type DeliveryOptions struct {
	// MinBackoff and MaxBackoff bound the wait before retrying a gateway
	// that failed (doubling in between).
	MinBackoff, MaxBackoff time.Duration
	// GiveUpAfter is how long a pusher may keep failing on one
	// notification before it is skipped, so a dead gateway cannot hold
	// back everything after it forever.
	GiveUpAfter time.Duration
	// Idle is how often the loop looks even when no event arrived.
	Idle time.Duration
	// Client sends the requests (a 10 s timeout by default).
	Client *http.Client
	// Email sends email pushers' notifications; nil when email
	// notifications are off.
	Email *EmailSettings
}

// Delivery is the pusher loop of one pusher instance: it follows the push
// actions rows of the users it owns (pusher_instances, sharded by user id)
// and posts each to their pushers' gateways in the push gateway API's
// format, retrying with backoff; a pusher's position only moves past a
// notification once the gateway took it (or it was given up on).
type Delivery struct {
	db        *storage.DB
	reg       *streams.Registry
	self      string
	instances []string
	opts      DeliveryOptions
	log       *slog.Logger
	retry     map[pusherKey]*retryState
	// lastUpTo is the events position the last complete pass reached.
	lastUpTo int64
	// mailWake is when the next waiting email notification is due (zero:
	// none waits).
	mailWake time.Time
}

type pusherKey struct{ user, app, pushkey string }

type retryState struct {
	next    time.Time
	backoff time.Duration
	since   time.Time
}

// NewDelivery builds the loop for instance self among instances.
func NewDelivery(db *storage.DB, reg *streams.Registry, self string, instances []string, opts DeliveryOptions, log *slog.Logger) *Delivery {
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 10 * time.Minute
	}
	if opts.GiveUpAfter <= 0 {
		opts.GiveUpAfter = 24 * time.Hour
	}
	if opts.Idle <= 0 {
		opts.Idle = 30 * time.Second
	}
	if opts.Client == nil {
		opts.Client = &http.Client{Timeout: 10 * time.Second}
	}
	return &Delivery{db: db, reg: reg, self: self, instances: instances, opts: opts, log: log, retry: map[pusherKey]*retryState{}}
}

// Run sends notifications until ctx ends.
func (s *Delivery) Run(ctx context.Context) error {
	for {
		changed := s.reg.Changed(streams.Events)
		wait := s.opts.Idle
		if err := s.pass(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("push notification pass failed", "err", err)
		}
		now := time.Now()
		for _, r := range s.retry {
			wait = min(wait, max(r.next.Sub(now), time.Millisecond))
		}
		if !s.mailWake.IsZero() {
			wait = min(wait, max(s.mailWake.Sub(now), time.Millisecond))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

type pending struct {
	key        pusherKey
	kind, data string
	pushkeyTS  int64
	eventID    string
	roomID     string
	pos        int64
	actions    string
}

// batchLimit bounds the rows one query of a pass reads.
const batchLimit = 500

// pass sends what is pending for this instance's pushers, oldest first,
// until nothing is left up to the current position.
func (s *Delivery) pass(ctx context.Context) error {
	// Rows at or below the current position are all committed: a lagging
	// persister cannot add one below it later.
	upTo := s.reg.Current(streams.Events)
	now := time.Now()
	due := false
	for _, r := range s.retry {
		due = due || !now.Before(r.next)
	}
	due = due || (!s.mailWake.IsZero() && !now.Before(s.mailWake))
	if upTo == s.lastUpTo && !due {
		return nil // nothing new and no retry or mail due
	}
	eligible, mailers, err := s.eligible(ctx, now)
	if err != nil {
		return err
	}
	// Email pushers batch: each mails its unread notifications once the
	// oldest has waited the delay.
	wake, err := s.emailPass(ctx, mailers, upTo, now)
	if err != nil {
		return err
	}
	s.mailWake = wake
	for len(eligible) > 0 {
		todo, err := s.pending(ctx, eligible, upTo)
		if err != nil {
			return err
		}
		for _, p := range todo {
			if !eligible[p.key] {
				continue // blocked earlier in this batch
			}
			if err := s.deliver(ctx, p); err != nil {
				if errors.Is(err, errRetryLater) {
					delete(eligible, p.key)
					continue
				}
				return err
			}
		}
		if len(todo) < batchLimit {
			break
		}
	}
	s.lastUpTo = upTo
	return nil
}

// eligible lists this instance's pushers (their users shard here) that
// are not waiting to retry: the http ones, and the email ones apart.
func (s *Delivery) eligible(ctx context.Context, now time.Time) (map[pusherKey]bool, []pusherKey, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT user_id, app_id, pushkey, kind FROM pushers`)
	if err != nil {
		return nil, nil, fmt.Errorf("list pushers: %w", err)
	}
	defer rows.Close()
	out := map[pusherKey]bool{}
	var mailers []pusherKey
	live := map[pusherKey]bool{}
	for rows.Next() {
		var k pusherKey
		var kind string
		if err := rows.Scan(&k.user, &k.app, &k.pushkey, &kind); err != nil {
			return nil, nil, fmt.Errorf("list pushers: %w", err)
		}
		if config.ShardFor(s.instances, k.user) != s.self {
			continue
		}
		live[k] = true
		if r := s.retry[k]; r == nil || !now.Before(r.next) {
			if kind == emailKind {
				mailers = append(mailers, k)
			} else {
				out[k] = true
			}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("list pushers: %w", err)
	}
	for k := range s.retry {
		if !live[k] {
			delete(s.retry, k) // the pusher is gone
		}
	}
	return out, mailers, nil
}

// pending reads the oldest undelivered rows of the eligible pushers, at
// most batchLimit.
func (s *Delivery) pending(ctx context.Context, eligible map[pusherKey]bool, upTo int64) ([]pending, error) {
	var todo []pending
	keys := make([]pusherKey, 0, len(eligible))
	for k := range eligible {
		keys = append(keys, k)
	}
	const chunk = 300 // three parameters each
	for lo := 0; lo < len(keys); lo += chunk {
		part := keys[lo:min(lo+chunk, len(keys))]
		var in strings.Builder
		args := []any{upTo, batchLimit}
		for i, k := range part {
			if i > 0 {
				in.WriteString(", ")
			}
			n := len(args)
			fmt.Fprintf(&in, "($%d, $%d, $%d)", n+1, n+2, n+3)
			args = append(args, k.user, k.app, k.pushkey)
		}
		rows, err := s.db.Reader().QueryContext(ctx, notifying(`p.user_id, p.app_id, p.pushkey, p.kind, p.data, p.pushkey_ts,
			epa.event_id, epa.room_id, epa.stream_ordering AS stream_ordering, epa.actions`, "pushers p", "p.user_id",
			`(p.user_id, p.app_id, p.pushkey) IN (`+in.String()+`)
			AND epa.stream_ordering > p.last_stream_ordering AND epa.stream_ordering <= $1`)+`
			ORDER BY stream_ordering LIMIT $2`, args...)
		if err != nil {
			return nil, fmt.Errorf("read pending notifications: %w", err)
		}
		for rows.Next() {
			var p pending
			if err := rows.Scan(&p.key.user, &p.key.app, &p.key.pushkey, &p.kind, &p.data, &p.pushkeyTS,
				&p.eventID, &p.roomID, &p.pos, &p.actions); err != nil {
				rows.Close()
				return nil, fmt.Errorf("read pending notifications: %w", err)
			}
			todo = append(todo, p)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("read pending notifications: %w", err)
		}
	}
	// Chunks were read apart: keep the oldest batchLimit overall, so that
	// a pusher's rows stay in order (a later chunk's rows never overtake
	// an earlier one's unread rows of the same pusher).
	slices.SortFunc(todo, func(a, b pending) int { return cmp.Compare(a.pos, b.pos) })
	if len(todo) > batchLimit {
		todo = todo[:batchLimit]
	}
	return todo, nil
}

// errRetryLater: the gateway failed; the pusher waits for its backoff.
var errRetryLater = errors.New("push gateway failed; retrying later")

// deliver sends one row and moves the pusher past it, or schedules a
// retry (errRetryLater). A pusher failing for longer than GiveUpAfter
// skips the row instead, so a dead gateway cannot hold back everything
// after it forever.
func (s *Delivery) deliver(ctx context.Context, p pending) error {
	now := time.Now()
	if err := s.send(ctx, p); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r := s.retry[p.key]
		if r == nil {
			r = &retryState{backoff: s.opts.MinBackoff, since: now}
			s.retry[p.key] = r
		} else {
			r.backoff = min(2*r.backoff, s.opts.MaxBackoff)
		}
		r.next = now.Add(r.backoff)
		if now.Sub(r.since) < s.opts.GiveUpAfter {
			s.log.Info("push gateway failed; will retry", "user_id", p.key.user, "app_id", p.key.app, "event_id", p.eventID,
				"retry_in", r.backoff, "err", err)
			return errRetryLater
		}
		s.log.Warn("push gateway failing for too long; skipping a notification", "user_id", p.key.user, "event_id", p.eventID, "err", err)
	} else {
		delete(s.retry, p.key)
	}
	if _, err := s.db.Exec(ctx, `UPDATE pushers SET last_stream_ordering = $4 WHERE user_id = $1 AND app_id = $2 AND pushkey = $3
		AND last_stream_ordering < $4`, p.key.user, p.key.app, p.key.pushkey, p.pos); err != nil {
		return fmt.Errorf("advance pusher of %s: %w", p.key.user, err)
	}
	return nil
}

// send posts one notification to the pusher's gateway.
func (s *Delivery) send(ctx context.Context, p pending) error {
	var data map[string]json.RawMessage
	if err := json.Unmarshal([]byte(p.data), &data); err != nil {
		return fmt.Errorf("pusher data: %w", err)
	}
	var gateway, format string
	_ = json.Unmarshal(data["url"], &gateway)
	_ = json.Unmarshal(data["format"], &format)
	delete(data, "url") // the device's data, as the gateway sees it
	body, err := s.notification(ctx, p, data, format)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, gateway, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("push request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	// Which instance sent it, for gateway logs (and tests of sharding).
	req.Header.Set("User-Agent", "Ganglion ("+s.self+")")
	resp, err := s.opts.Client.Do(req)
	if err != nil {
		return fmt.Errorf("post to push gateway: %w", err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("push gateway answered %d", resp.StatusCode)
	}
	var res struct {
		Rejected []string `json:"rejected"`
	}
	_ = json.Unmarshal(out, &res)
	for _, k := range res.Rejected {
		if k == p.key.pushkey {
			s.log.Info("push gateway rejected a pushkey; removing the pusher", "user_id", p.key.user, "app_id", p.key.app)
			if _, err := s.db.Exec(ctx, `DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3`,
				p.key.user, p.key.app, p.key.pushkey); err != nil {
				return fmt.Errorf("remove rejected pusher: %w", err)
			}
		}
	}
	return nil
}

// notification builds the push gateway API request body.
func (s *Delivery) notification(ctx context.Context, p pending, data map[string]json.RawMessage, format string) ([]byte, error) {
	var actions []json.RawMessage
	_ = json.Unmarshal([]byte(p.actions), &actions)
	tweaks := map[string]any{}
	for _, a := range actions {
		var t struct {
			SetTweak string          `json:"set_tweak"`
			Value    json.RawMessage `json:"value"`
		}
		if json.Unmarshal(a, &t) == nil && t.SetTweak != "" {
			if t.Value == nil {
				tweaks[t.SetTweak] = true // highlight without a value
			} else {
				tweaks[t.SetTweak] = t.Value
			}
		}
	}
	prio := "low"
	if _, ok := tweaks["sound"]; ok {
		prio = "high"
	}
	if _, ok := tweaks["highlight"]; ok {
		prio = "high"
	}
	// The badge: how many rooms have unread notifications (Synapse's
	// default, push.group_unread_count_by_room).
	counts, err := countUnread(ctx, s.db.Reader(), p.key.user, nil)
	if err != nil {
		return nil, err
	}
	unread := len(counts)
	n := map[string]any{
		"event_id": p.eventID,
		"room_id":  p.roomID,
		"prio":     prio,
		"counts":   map[string]int{"unread": unread},
		"devices": []map[string]any{{
			"app_id": p.key.app, "pushkey": p.key.pushkey, "pushkey_ts": p.pushkeyTS / 1000, "data": data, "tweaks": tweaks,
		}},
	}
	if format != "event_id_only" {
		if err := s.eventFields(ctx, p, n); err != nil {
			return nil, err
		}
	}
	return json.Marshal(map[string]any{"notification": n})
}

// eventFields adds the event's type, sender, content and the names a
// notification shows.
func (s *Delivery) eventFields(ctx context.Context, p pending, n map[string]any) error {
	var raw []byte
	if err := s.db.Reader().QueryRowContext(ctx, `SELECT json FROM events WHERE event_id = $1`, p.eventID).Scan(&raw); err != nil {
		return fmt.Errorf("load event %s for push: %w", p.eventID, err)
	}
	var ev struct {
		Type     string          `json:"type"`
		Sender   string          `json:"sender"`
		StateKey *string         `json:"state_key"`
		Content  json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(raw, &ev); err != nil {
		return fmt.Errorf("decode event %s for push: %w", p.eventID, err)
	}
	n["type"], n["sender"], n["content"] = ev.Type, ev.Sender, ev.Content
	if ev.Type == "m.room.member" && ev.StateKey != nil {
		n["user_is_target"] = *ev.StateKey == p.key.user
	}
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT cs.type, e.json FROM current_state cs JOIN events e ON e.event_id = cs.event_id
		WHERE cs.room_id = $1 AND ((cs.type = 'm.room.member' AND cs.state_key = $2) OR (cs.type = 'm.room.name' AND cs.state_key = ''))`,
		p.roomID, ev.Sender)
	if err != nil {
		return fmt.Errorf("load names for push: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var typ string
		var sraw []byte
		if err := rows.Scan(&typ, &sraw); err != nil {
			return fmt.Errorf("load names for push: %w", err)
		}
		var se struct {
			Content struct {
				Name        string `json:"name"`
				DisplayName string `json:"displayname"`
			} `json:"content"`
		}
		_ = json.Unmarshal(sraw, &se)
		if typ == "m.room.name" && se.Content.Name != "" {
			n["room_name"] = se.Content.Name
		}
		if typ == "m.room.member" && se.Content.DisplayName != "" {
			n["sender_display_name"] = se.Content.DisplayName
		}
	}
	return rows.Err()
}
