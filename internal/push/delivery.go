package push

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
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

// passLimit bounds the rows one pass sends.
const passLimit = 500

// pass sends what is pending for this instance's pushers, oldest first.
func (s *Delivery) pass(ctx context.Context) error {
	// Rows at or below the current position are all committed: a lagging
	// persister cannot add one below it later.
	upTo := s.reg.Current(streams.Events)
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT p.user_id, p.app_id, p.pushkey, p.kind, p.data, p.pushkey_ts,
		epa.event_id, epa.room_id, epa.stream_ordering, epa.actions
		FROM pushers p JOIN event_push_actions epa ON epa.user_id = p.user_id
		AND epa.stream_ordering > p.last_stream_ordering AND epa.stream_ordering <= $1
		ORDER BY epa.stream_ordering LIMIT $2`, upTo, passLimit)
	if err != nil {
		return fmt.Errorf("read pending notifications: %w", err)
	}
	var todo []pending
	for rows.Next() {
		var p pending
		if err := rows.Scan(&p.key.user, &p.key.app, &p.key.pushkey, &p.kind, &p.data, &p.pushkeyTS,
			&p.eventID, &p.roomID, &p.pos, &p.actions); err != nil {
			rows.Close()
			return fmt.Errorf("read pending notifications: %w", err)
		}
		if config.ShardFor(s.instances, p.key.user) == s.self {
			todo = append(todo, p)
		}
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return fmt.Errorf("read pending notifications: %w", err)
	}
	blocked := map[pusherKey]bool{}
	now := time.Now()
	for _, p := range todo {
		if blocked[p.key] {
			continue
		}
		if r := s.retry[p.key]; r != nil && now.Before(r.next) {
			blocked[p.key] = true
			continue
		}
		err := s.send(ctx, p)
		if err != nil {
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
				blocked[p.key] = true
				continue
			}
			s.log.Warn("push gateway failing for too long; skipping a notification", "user_id", p.key.user, "event_id", p.eventID, "err", err)
		} else {
			delete(s.retry, p.key)
		}
		if _, err := s.db.Exec(ctx, `UPDATE pushers SET last_stream_ordering = $4 WHERE user_id = $1 AND app_id = $2 AND pushkey = $3
			AND last_stream_ordering < $4`, p.key.user, p.key.app, p.key.pushkey, p.pos); err != nil {
			return fmt.Errorf("advance pusher of %s: %w", p.key.user, err)
		}
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
	var unread int
	if err := s.db.Reader().QueryRowContext(ctx, `SELECT count(DISTINCT epa.room_id) FROM event_push_actions epa
		WHERE epa.user_id = $1 AND `+unreadCond, p.key.user).Scan(&unread); err != nil {
		return nil, fmt.Errorf("unread count of %s: %w", p.key.user, err)
	}
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
