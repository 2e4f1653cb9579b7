package push

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// TypePushRules is the account data type sync carries the rules in.
const TypePushRules = "m.push_rules"

// Service is the push rules domain of one process: reads for the client
// API and sync, writes through a Writer, and the rules cache evaluation
// reads.
type Service struct {
	db    *storage.DB
	reg   *streams.Registry
	w     Writer
	cache *userCache[*cachedRules]
	// events formats notifications' events (GET /notifications).
	events EventLoader
	// emailNotifs: email pushers are accepted (email.enable_notifs).
	emailNotifs bool
	log         *slog.Logger
}

// NewService builds the service. Call SetWriter before serving requests.
func NewService(db *storage.DB, reg *streams.Registry, log *slog.Logger) *Service {
	return &Service{db: db, reg: reg, cache: newUserCache[*cachedRules](50000), log: log}
}

// SetEmailNotifications says whether email pushers are accepted.
func (s *Service) SetEmailNotifications(on bool) { s.emailNotifs = on }

// SetWriter sets the writer (local or remote) requests write through.
func (s *Service) SetWriter(w Writer) { s.w = w }

// Changed drops a user's cached rules; the local writer and the stream's
// Source call it for every change.
func (s *Service) Changed(userID string) { s.cache.Changed(userID) }

// Position is how far this process may read the push_rules stream.
func (s *Service) Position() int64 { return s.reg.Current(streams.PushRules) }

// Ruleset returns the user's rules as the client API shows them (read from
// the database, so a client reads its own write on any process once the
// write has returned).
func (s *Service) Ruleset(ctx context.Context, userID string) (Ruleset, error) {
	raw, err := loadDocument(ctx, s.db.Reader(), userID)
	if err != nil {
		return nil, err
	}
	return parseUserRules(raw).ruleset(userID), nil
}

// Global is the content of the m.push_rules account data: {"global": …}.
type Global struct {
	Global Ruleset `json:"global"`
}

// AccountData returns the m.push_rules account data content for a sync of
// the window (from, to]: always for an initial sync (from 0), else only if
// the user's rules changed in the window (nil otherwise).
func (s *Service) AccountData(ctx context.Context, userID string, from, to int64) (json.RawMessage, error) {
	var raw string
	var pos int64
	err := s.db.Reader().QueryRowContext(ctx, `SELECT rules, stream_id FROM push_rules_users WHERE user_id = $1`, userID).Scan(&raw, &pos)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if from > 0 {
			return nil, nil
		}
	case err != nil:
		return nil, fmt.Errorf("read push rules of %s: %w", userID, err)
	case from > 0 && (pos <= from || pos > to):
		return nil, nil
	}
	b, err := json.Marshal(Global{Global: parseUserRules(raw).ruleset(userID)})
	if err != nil {
		return nil, fmt.Errorf("encode push rules of %s: %w", userID, err)
	}
	return b, nil
}

// Apply changes a user's rules through the writer.
func (s *Service) Apply(ctx context.Context, userID string, op Op) (int64, error) {
	return s.w.Apply(ctx, userID, op)
}
