package push

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"

	"ganglion/internal/eventauth"
	"ganglion/internal/events"
	"ganglion/internal/storage"
)

// Hook evaluates push rules where events are persisted: for each event of
// a batch, for every local joined member but the sender (and a local user
// the event invites), in the batch's own transaction. When an event
// notifies most joined members alike (a message in a big room), it writes
// one event_push_actions_room row with that outcome and event_push_actions
// rows only for the members whose outcome differs (notify 0 for those it
// does not notify); otherwise one event_push_actions row per user it
// notifies, whichever is fewer rows. It keeps each
// room's members and power levels in memory: the room's persister is the
// only writer of its events, so the state only changes through batches
// this hook sees.
type Hook struct {
	db    *storage.DB
	rules *userCache[*cachedRules]
	// ignored caches each user's m.ignored_user_list: events from users
	// one ignores notify one of nothing.
	ignored    *userCache[map[string]bool]
	eval       *Evaluator
	serverName string
	log        *slog.Logger

	mu    sync.Mutex
	rooms map[string]*roomState
}

// roomState is what evaluation needs of a room's current state. It is
// never changed in place once cached: a batch works on a copy, which
// replaces the cached one only after the batch commits.
type roomState struct {
	// joined holds every joined member; local maps each local joined
	// member to their display name.
	joined map[string]struct{}
	local  map[string]localMember
	levels eventauth.PowerLevels
	create *events.Event
	hasPL  bool
}

// localMember is a local joined member's display name, also in lower
// case (contains_display_name compares it with every message's body).
type localMember struct{ name, lower string }

func newLocalMember(name string) localMember {
	return localMember{name: name, lower: strings.ToLower(name)}
}

const maxHookRooms = 10000

// NewHook builds the hook over the service's rules cache.
func NewHook(db *storage.DB, s *Service, serverName string, log *slog.Logger) *Hook {
	return &Hook{db: db, rules: s.cache, ignored: newUserCache[map[string]bool](50000), eval: NewEvaluator(),
		serverName: serverName, log: log, rooms: map[string]*roomState{}}
}

// IgnoredCacheName is the caches stream name under which a change of a
// user's m.ignored_user_list is announced (keys: user ids).
const IgnoredCacheName = "push_ignored_users"

// IgnoredChanged drops cached ignore lists (the caches stream's handler;
// nil keys: all of them).
func (h *Hook) IgnoredChanged(keys []string) { h.ignored.Changed(keys...) }

const ignoredQuery = `SELECT user_id, content FROM account_data WHERE room_id = '' AND type = 'm.ignored_user_list' AND user_id IN`

func buildIgnored(_ string, raw string) map[string]bool {
	var c struct {
		IgnoredUsers map[string]json.RawMessage `json:"ignored_users"`
	}
	if raw == "" || json.Unmarshal([]byte(raw), &c) != nil || len(c.IgnoredUsers) == 0 {
		return nil
	}
	out := make(map[string]bool, len(c.IgnoredUsers))
	for u := range c.IgnoredUsers {
		out[u] = true
	}
	return out
}

// Forget drops the room's cached state (its last batch's outcome is
// unknown).
func (h *Hook) Forget(roomID string) {
	h.mu.Lock()
	delete(h.rooms, roomID)
	h.mu.Unlock()
}

func (h *Hook) isLocal(userID string) bool { return strings.HasSuffix(userID, ":"+h.serverName) }

// InBatch evaluates the batch's events (evs[i] has stream ordering
// ids[i]) and writes their push actions with tx. The returned function
// publishes the room's new state once the transaction has committed.
func (h *Hook) InBatch(ctx context.Context, tx *sql.Tx, roomID string, evs []*events.Event, ids []int64) (func(), error) {
	st, err := h.state(ctx, roomID, evs)
	if err != nil {
		return nil, err
	}
	var out batchRows
	var redacted []string
	owned := false // whether st is this batch's copy yet
	for i, ev := range evs {
		recipients := make([]string, 0, len(st.local)+1)
		for u := range st.local {
			if u != ev.Sender() {
				recipients = append(recipients, u)
			}
		}
		if ev.Type() == "m.room.member" && ev.Membership() == "invite" && ev.StateKey() != nil {
			if u := *ev.StateKey(); h.isLocal(u) && u != ev.Sender() {
				if _, joined := st.local[u]; !joined {
					recipients = append(recipients, u)
				}
			}
		}
		if len(recipients) > 0 {
			if err = h.evaluate(ctx, st, ev, ids[i], recipients, &out); err != nil {
				return nil, err
			}
		}
		if r := ev.Redacts(); r != "" && ev.Type() == "m.room.redaction" {
			redacted = append(redacted, r)
		}
		if affectsState(ev) {
			if !owned {
				st, owned = st.clone(), true
			}
			h.apply(st, ev)
		}
	}
	if err := insertRoomActions(ctx, tx, out.room); err != nil {
		return nil, err
	}
	if err := insertActions(ctx, tx, out.users); err != nil {
		return nil, err
	}
	// A redacted event notifies nobody any more: its rows go, so counts
	// drop and /notifications and pushers no longer see it. After the
	// inserts, as the target may be in this very batch.
	if err := deleteActions(ctx, tx, roomID, redacted); err != nil {
		return nil, err
	}
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if len(h.rooms) >= maxHookRooms {
			for k := range h.rooms { // evict an arbitrary room; reloading is one query
				delete(h.rooms, k)
				break
			}
		}
		h.rooms[roomID] = st
	}, nil
}

// batchRows are the rows a batch writes.
type batchRows struct {
	room  []roomRow
	users []actionRow
}

// roomRow is an event's room-wide outcome (event_push_actions_room).
type roomRow struct {
	room, eventID, thread, sender string
	pos                           int64
	highlight                     bool
	actions                       []byte
}

// actionRow is a user's own outcome of an event; notify false only
// overrides a room-wide row.
type actionRow struct {
	user, room, eventID, thread string
	pos                         int64
	notify, highlight           bool
	actions                     []byte
}

// users reads the recipients' rules and ignore lists from the caches
// (rules[i] and ignored[i] are recipients[i]'s), loading the missing ones
// with one query per chunk of users.
func (h *Hook) users(ctx context.Context, recipients []string) ([]*cachedRules, []map[string]bool, error) {
	rules := make([]*cachedRules, len(recipients))
	ignored := make([]map[string]bool, len(recipients))
	q := h.db.Reader()
	if err := h.rules.into(ctx, q, recipients, rules, rulesQuery, h.buildRules); err != nil {
		return nil, nil, err
	}
	if err := h.ignored.into(ctx, q, recipients, ignored, ignoredQuery, buildIgnored); err != nil {
		return nil, nil, err
	}
	return rules, ignored, nil
}

// buildRules compiles a user's rules with the hook's evaluator, which
// memoises the conditions users share.
func (h *Hook) buildRules(user, raw string) *cachedRules {
	rs := parseUserRules(raw).ruleset(user)
	return &cachedRules{ruleset: rs, compiled: h.eval.CompileFor(user, rs)}
}

// userOutcome is one recipient's outcome of an event.
type userOutcome struct {
	user string
	// joined: the user is a joined member (not just invited by the event),
	// so a room-wide row would apply to them.
	joined            bool
	notify, highlight bool
	actions           []json.RawMessage
}

func (o *userOutcome) same(p *userOutcome) bool {
	if o.notify != p.notify || o.highlight != p.highlight || len(o.actions) != len(p.actions) {
		return false
	}
	if len(o.actions) > 0 && &o.actions[0] == &p.actions[0] {
		return true // the same rule's actions, the usual case
	}
	for i := range o.actions {
		if !bytes.Equal(o.actions[i], p.actions[i]) {
			return false
		}
	}
	return true
}

func (h *Hook) evaluate(ctx context.Context, st *roomState, ev *events.Event, pos int64, recipients []string, out *batchRows) error {
	rules, ignored, err := h.users(ctx, recipients)
	if err != nil {
		return err
	}
	pe, perr := NewEvent(ev.JSON())
	if perr != nil {
		h.log.Warn("event not evaluated for push", "event_id", ev.EventID(), "err", perr)
		return nil
	}
	thread := "main"
	if pe.String("content", "m.relates_to", "rel_type") == "m.thread" {
		if root := pe.String("content", "m.relates_to", "event_id"); root != "" {
			thread = root
		}
	}
	pctx := Context{MemberCount: len(st.joined), SenderPower: st.levels.UserLevel(ev.Sender()), NotificationLevels: st.levels.Notifications}
	outs := make([]userOutcome, len(recipients))
	plans := map[int32]*Plan{}
	notifying := 0
	// The joined recipients' notifying outcomes, grouped: the largest
	// group may become the room-wide row.
	type group struct {
		first *userOutcome
		n     int
	}
	var groups []group
	joinedN := 0
	for i, u := range recipients {
		o := &outs[i]
		o.user = u
		m, joined := st.local[u]
		o.joined = joined
		if o.joined {
			joinedN++
		}
		if ignored[i][ev.Sender()] {
			continue
		}
		pctx.UserID, pctx.DisplayName, pctx.lowerName = u, m.name, m.lower
		var res Outcome
		var ok bool
		if c := rules[i].compiled; c.Class() != 0 {
			// Users of one class share the conditions not about them:
			// those are decided once for the event.
			p := plans[c.Class()]
			if p == nil {
				p = h.eval.Plan(c, pe, &pctx)
				plans[c.Class()] = p
			}
			res, ok = h.eval.EvaluatePlanned(c, p, pe, &pctx)
		} else {
			res, ok = h.eval.Evaluate(c, pe, &pctx)
		}
		if !ok || !res.Notify {
			continue
		}
		o.notify, o.highlight, o.actions = true, res.Highlight, res.Actions
		notifying++
		if !o.joined {
			continue
		}
		found := false
		for g := range groups {
			if groups[g].first.same(o) {
				groups[g].n++
				found = true
				break
			}
		}
		if !found {
			groups = append(groups, group{first: o, n: 1})
		}
	}
	if notifying == 0 {
		return nil
	}
	var common *userOutcome
	best := 0
	for _, g := range groups {
		if g.n > best {
			common, best = g.first, g.n
		}
	}
	// A room-wide row costs one row plus one per joined recipient whose
	// outcome differs; per-user rows cost one per notifying recipient.
	if common != nil && 1+joinedN-best >= notifying {
		common = nil
	}
	encoded := map[*userOutcome][]byte{}
	encode := func(o *userOutcome) ([]byte, error) {
		if !o.notify {
			return []byte("[]"), nil
		}
		for k, v := range encoded {
			if k.same(o) {
				return v, nil
			}
		}
		b, err := json.Marshal(o.actions)
		if err != nil {
			return nil, fmt.Errorf("encode push actions: %w", err)
		}
		encoded[o] = b
		return b, nil
	}
	if common != nil {
		actions, err := encode(common)
		if err != nil {
			return err
		}
		out.room = append(out.room, roomRow{room: ev.RoomID(), eventID: ev.EventID(), thread: thread, sender: ev.Sender(), pos: pos,
			highlight: common.highlight, actions: actions})
	}
	for i := range outs {
		o := &outs[i]
		switch {
		case common != nil && o.joined:
			if o.same(common) {
				continue // the room-wide row says it
			}
		case !o.notify:
			continue
		}
		actions, err := encode(o)
		if err != nil {
			return err
		}
		out.users = append(out.users, actionRow{user: o.user, room: ev.RoomID(), eventID: ev.EventID(), thread: thread, pos: pos,
			notify: o.notify, highlight: o.highlight, actions: actions})
	}
	return nil
}

// insertChunk bounds one INSERT's rows (8 parameters each).
const insertChunk = 500

func insertActions(ctx context.Context, tx *sql.Tx, rows []actionRow) error {
	for lo := 0; lo < len(rows); lo += insertChunk {
		part := rows[lo:min(lo+insertChunk, len(rows))]
		var q strings.Builder
		q.WriteString(`INSERT INTO event_push_actions (user_id, room_id, event_id, stream_ordering, thread_id, notify, highlight, actions) VALUES `)
		args := make([]any, 0, 8*len(part))
		for i, r := range part {
			if i > 0 {
				q.WriteString(", ")
			}
			n := len(args)
			fmt.Fprintf(&q, "($%d, $%d, $%d, $%d, $%d, $%d, $%d, $%d)", n+1, n+2, n+3, n+4, n+5, n+6, n+7, n+8)
			args = append(args, r.user, r.room, r.eventID, r.pos, r.thread, flag(r.notify), flag(r.highlight), string(r.actions))
		}
		if _, err := tx.ExecContext(ctx, q.String(), args...); err != nil {
			return fmt.Errorf("insert %d push actions: %w", len(part), err)
		}
	}
	return nil
}

func insertRoomActions(ctx context.Context, tx *sql.Tx, rows []roomRow) error {
	for _, r := range rows {
		if _, err := tx.ExecContext(ctx, `INSERT INTO event_push_actions_room (event_id, room_id, stream_ordering, thread_id, sender, highlight, actions)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`, r.eventID, r.room, r.pos, r.thread, r.sender, flag(r.highlight), string(r.actions)); err != nil {
			return fmt.Errorf("insert room push actions of %s: %w", r.eventID, err)
		}
	}
	return nil
}

// deleteActions drops every push actions row of the room's events (a
// redaction only ever redacts an event of its own room).
func deleteActions(ctx context.Context, tx *sql.Tx, roomID string, eventIDs []string) error {
	for _, id := range eventIDs {
		if _, err := tx.ExecContext(ctx, `DELETE FROM event_push_actions_room WHERE event_id = $1 AND room_id = $2`, id, roomID); err != nil {
			return fmt.Errorf("delete room push actions of redacted %s: %w", id, err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM event_push_actions WHERE event_id = $1 AND room_id = $2`, id, roomID); err != nil {
			return fmt.Errorf("delete push actions of redacted %s: %w", id, err)
		}
	}
	return nil
}

func flag(b bool) int {
	if b {
		return 1
	}
	return 0
}

func affectsState(ev *events.Event) bool {
	if !ev.IsState() {
		return false
	}
	switch ev.Type() {
	case "m.room.member":
		return true
	case "m.room.power_levels", "m.room.create":
		return *ev.StateKey() == ""
	}
	return false
}

func (st *roomState) clone() *roomState {
	c := *st
	c.joined = maps.Clone(st.joined)
	c.local = maps.Clone(st.local)
	return &c
}

// apply folds a state event into st (a batch's own copy).
func (h *Hook) apply(st *roomState, ev *events.Event) {
	switch ev.Type() {
	case "m.room.create":
		st.create = ev
		if !st.hasPL {
			st.levels = eventauth.DefaultPowerLevels(ev)
		}
	case "m.room.power_levels":
		if pl, err := eventauth.ParsePowerLevels(ev.Content(), ev.Version()); err == nil {
			// v12+ creators outrank any level (a no-op before v12).
			st.levels, st.hasPL = pl.WithCreators(st.create), true
		}
	case "m.room.member":
		u := *ev.StateKey()
		if ev.Membership() == "join" {
			st.joined[u] = struct{}{}
			if h.isLocal(u) {
				st.local[u] = newLocalMember(displayName(ev.Content()))
			}
		} else {
			delete(st.joined, u)
			delete(st.local, u)
		}
	}
}

func displayName(content json.RawMessage) string {
	var c struct {
		DisplayName string `json:"displayname"`
	}
	_ = json.Unmarshal(content, &c)
	return c.DisplayName
}

// state returns the room's cached state, loading it from the committed
// state (the batch's own rows are not committed yet, so this is the state
// before the batch) on first use.
func (h *Hook) state(ctx context.Context, roomID string, evs []*events.Event) (*roomState, error) {
	h.mu.Lock()
	st := h.rooms[roomID]
	h.mu.Unlock()
	if st != nil {
		return st, nil
	}
	st = &roomState{joined: map[string]struct{}{}, local: map[string]localMember{}}
	q := h.db.Reader()
	members, err := q.QueryContext(ctx, `SELECT state_key FROM current_state WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'`, roomID)
	if err != nil {
		return nil, fmt.Errorf("load members of %s: %w", roomID, err)
	}
	for members.Next() {
		var u string
		if err := members.Scan(&u); err != nil {
			members.Close()
			return nil, fmt.Errorf("load members of %s: %w", roomID, err)
		}
		st.joined[u] = struct{}{}
	}
	err = members.Err()
	members.Close()
	if err != nil {
		return nil, fmt.Errorf("load members of %s: %w", roomID, err)
	}
	rows, err := q.QueryContext(ctx, `SELECT cs.type, cs.state_key, e.json FROM current_state cs JOIN events e ON e.event_id = cs.event_id
		WHERE cs.room_id = $1 AND ((cs.type = 'm.room.member' AND cs.membership = 'join' AND cs.state_key LIKE $2)
		OR (cs.type IN ('m.room.power_levels', 'm.room.create') AND cs.state_key = ''))`, roomID, "%:"+h.serverName)
	if err != nil {
		return nil, fmt.Errorf("load push state of %s: %w", roomID, err)
	}
	defer rows.Close()
	var plJSON []byte
	for rows.Next() {
		var typ, sk string
		var raw []byte
		if err := rows.Scan(&typ, &sk, &raw); err != nil {
			return nil, fmt.Errorf("load push state of %s: %w", roomID, err)
		}
		switch typ {
		case "m.room.member":
			if h.isLocal(sk) {
				var e struct {
					Content json.RawMessage `json:"content"`
				}
				_ = json.Unmarshal(raw, &e)
				st.local[sk] = newLocalMember(displayName(e.Content))
			}
		case "m.room.power_levels":
			plJSON = raw
		case "m.room.create":
			if len(evs) > 0 {
				if ev, err := events.Parse(raw, evs[0].Version()); err == nil {
					st.create = ev
				}
			}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load push state of %s: %w", roomID, err)
	}
	st.levels = eventauth.DefaultPowerLevels(st.create)
	if plJSON != nil && len(evs) > 0 {
		var e struct {
			Content json.RawMessage `json:"content"`
		}
		if json.Unmarshal(plJSON, &e) == nil {
			if pl, err := eventauth.ParsePowerLevels(e.Content, evs[0].Version()); err == nil {
				st.levels, st.hasPL = pl.WithCreators(st.create), true
			}
		}
	}
	return st, nil
}
