package push

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// OpKind names a change to a user's push rules.
type OpKind string

const (
	OpPut        OpKind = "put"
	OpDelete     OpKind = "delete"
	OpSetEnabled OpKind = "enabled"
	OpSetActions OpKind = "actions"
)

// Op is one change to a user's rules, as the endpoints ask for it (already
// validated for shape; the writer checks it against the user's rules).
type Op struct {
	Op     OpKind `json:"op"`
	Kind   Kind   `json:"kind"`
	RuleID string `json:"rule_id"`
	// OpPut: the rule's actions and, by kind, conditions or pattern, and
	// where to place it.
	Actions    []json.RawMessage `json:"actions,omitempty"`
	Conditions json.RawMessage   `json:"conditions,omitempty"`
	Pattern    *string           `json:"pattern,omitempty"`
	Before     string            `json:"before,omitempty"`
	After      string            `json:"after,omitempty"`
	// OpSetEnabled.
	Enabled bool `json:"enabled,omitempty"`
}

// Writer changes push rules. Every method returns the push_rules stream
// position of its write, so that a caller on another process can wait for
// it before reading (read-your-writes).
type Writer interface {
	Apply(ctx context.Context, userID string, op Op) (int64, error)
}

var _ Writer = (*LocalWriter)(nil)

// LocalWriter writes push rules on the push_rules stream's writer.
type LocalWriter struct {
	tw  *streams.TableWriter
	db  *storage.DB
	log *slog.Logger
	// changed hears of each user whose rules this writer changed, after
	// the commit (the process's rules cache).
	changed func(userID string)
	// mu serialises the read-modify-write of users' documents: the stream
	// has exactly one writer process.
	mu sync.Mutex
}

// NewLocalWriter resumes the push_rules stream where this process left it.
// changed (may be nil) hears of every user whose rules it changes.
func NewLocalWriter(ctx context.Context, db *storage.DB, reg *streams.Registry, changed func(userID string), log *slog.Logger) (*LocalWriter, error) {
	tw, err := streams.NewTableWriter(ctx, db, reg, streams.PushRules, "push_rules_users", "stream_id", "")
	if err != nil {
		return nil, err
	}
	if changed == nil {
		changed = func(string) {}
	}
	return &LocalWriter{tw: tw, db: db, changed: changed, log: log}, nil
}

// Position is the writer's committed position.
func (w *LocalWriter) Position() int64 { return w.tw.Position() }

// SavePosition records the position in stream_positions (at shutdown).
func (w *LocalWriter) SavePosition(ctx context.Context) error { return w.tw.SavePosition(ctx) }

// Apply implements Writer.
func (w *LocalWriter) Apply(ctx context.Context, userID string, op Op) (int64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	// Under mu no other write of this stream can intervene, so the
	// committed document is the current one.
	raw, err := loadDocument(ctx, w.db.Reader(), userID)
	if err != nil {
		return 0, err
	}
	doc := parseUserRules(raw).clone()
	if err := doc.apply(op); err != nil {
		return 0, err
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return 0, fmt.Errorf("encode push rules of %s: %w", userID, err)
	}
	id, err := w.tw.Write(ctx, func(tx *sql.Tx, id int64) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO push_rules_users (user_id, rules, stream_id) VALUES ($1, $2, $3)
			ON CONFLICT (user_id) DO UPDATE SET rules = excluded.rules, stream_id = excluded.stream_id`, userID, string(b), id)
		return err
	}, streams.UserKey(userID))
	if err != nil {
		return 0, fmt.Errorf("write push rules of %s: %w", userID, err)
	}
	w.changed(userID)
	return id, nil
}

func loadDocument(ctx context.Context, q storage.Querier, userID string) (string, error) {
	var raw string
	err := q.QueryRowContext(ctx, `SELECT rules FROM push_rules_users WHERE user_id = $1`, userID).Scan(&raw)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("read push rules of %s: %w", userID, err)
	}
	return raw, nil
}

// apply changes the document as op says, or returns the Matrix error the
// client gets.
func (u *userRules) apply(op Op) error {
	k := op.Kind
	if _, ok := ParseKind(string(k)); !ok {
		return mxhttp.InvalidParam("Unknown push rule kind %q", k)
	}
	if isDefaultRule(k, op.RuleID) {
		ch := u.Defaults[op.RuleID]
		switch op.Op {
		case OpSetEnabled:
			ch.Enabled = &op.Enabled
		case OpSetActions:
			actions := op.Actions
			if actions == nil {
				actions = []json.RawMessage{}
			}
			ch.Actions = &actions
		case OpDelete:
			return mxhttp.WithCode(400, "M_UNKNOWN", "Cannot delete the server-default rule %s", op.RuleID)
		case OpPut:
			return mxhttp.InvalidParam("Rule ids starting with '.' are reserved for server-default rules")
		default:
			return mxhttp.InvalidParam("Unknown push rule operation %q", op.Op)
		}
		u.Defaults[op.RuleID] = ch
		return nil
	}
	rules := u.Rules[k]
	i := slices.IndexFunc(rules, func(r storedRule) bool { return r.RuleID == op.RuleID })
	switch op.Op {
	case OpSetEnabled, OpSetActions, OpDelete:
		if i < 0 {
			return mxhttp.NotFound("Unknown push rule %s/%s", k, op.RuleID)
		}
		switch op.Op {
		case OpSetEnabled:
			rules[i].Enabled = op.Enabled
		case OpSetActions:
			rules[i].Actions = op.Actions
		case OpDelete:
			rules = slices.Delete(rules, i, i+1)
		}
	case OpPut:
		if isDefaultID(op.RuleID) {
			return mxhttp.InvalidParam("Rule ids starting with '.' are reserved for server-default rules")
		}
		r := storedRule{RuleID: op.RuleID, Enabled: true, Actions: op.Actions, Conditions: op.Conditions, Pattern: op.Pattern}
		if i >= 0 {
			// An update keeps the rule's enabled state and, without
			// before or after, its place.
			r.Enabled = rules[i].Enabled
			if op.Before == "" && op.After == "" {
				rules[i] = r
				break
			}
			rules = slices.Delete(rules, i, i+1)
		}
		at := 0 // a new rule is the most important of its kind
		anchor, after := op.Before, false
		if anchor == "" && op.After != "" {
			anchor, after = op.After, true
		}
		if anchor != "" {
			j := slices.IndexFunc(rules, func(r storedRule) bool { return r.RuleID == anchor })
			if j < 0 {
				// The spec's answer; a server-default anchor is refused
				// the same way, rules cannot be placed among them.
				return mxhttp.WithCode(400, "M_UNKNOWN", "before/after rule not found: %s", anchor)
			}
			at = j
			if after {
				at = j + 1
			}
		}
		rules = slices.Insert(rules, at, r)
	default:
		return mxhttp.InvalidParam("Unknown push rule operation %q", op.Op)
	}
	if u.Rules == nil {
		u.Rules = map[Kind][]storedRule{}
	}
	if len(rules) == 0 {
		delete(u.Rules, k)
	} else {
		u.Rules[k] = rules
	}
	return nil
}
