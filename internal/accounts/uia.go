package accounts

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"ganglion/internal/mxhttp"
)

// User-interactive authentication (spec: client-server "User-Interactive
// Authentication API"). Sessions live in the database so that the stages of
// one session may hit different workers.

const (
	StageDummy    = "m.login.dummy"
	StagePassword = "m.login.password"
)

// Also StageRegistrationToken (regtokens.go).

// uiaSessionTTL bounds how long a client may take between stages.
const uiaSessionTTL = 30 * time.Minute

// ErrUIAFailed is the cause (errors.Is) of RunUIA's answer when a stage
// failed to authenticate: a wrong password, or credentials of another
// user. Callers count these against rc_login.failed_attempts, so that an
// access token is not an unlimited password oracle.
var ErrUIAFailed = errors.New("user-interactive auth stage failed")

// errOtherUser is checkStage's answer to credentials naming another user
// than the one the request must prove.
var errOtherUser = errors.New("UIA credentials name another user")

// AuthDict is the "auth" object of a UIA request.
type AuthDict struct {
	Type       string          `json:"type"`
	Session    string          `json:"session"`
	Password   string          `json:"password"`
	Identifier *Identifier     `json:"identifier"`
	User       string          `json:"user"`  // deprecated form of identifier
	Token      string          `json:"token"` // m.login.registration_token
	Extra      json.RawMessage `json:"-"`
}

// Identifier is the spec's user identifier object.
type Identifier struct {
	Type string `json:"type"`
	User string `json:"user"`
}

// Flows lists alternative stage sequences.
type Flows [][]string

func (f Flows) body(session string, completed []string) map[string]any {
	flows := make([]map[string]any, len(f))
	for i, st := range f {
		flows[i] = map[string]any{"stages": st}
	}
	b := map[string]any{"flows": flows, "params": map[string]any{}, "session": session}
	if len(completed) > 0 {
		b["completed"] = completed
	}
	return b
}

func (f Flows) done(completed []string) bool {
	for _, st := range f {
		all := true
		for _, s := range st {
			if !slices.Contains(completed, s) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// RunUIA checks the auth dict of a request against flows. It returns nil
// once a flow is complete; otherwise a 401 carrying the flows (and, after a
// failed stage, the stage's errcode). userID is the account the stages must
// prove (empty for registration).
func (s *Service) RunUIA(ctx context.Context, auth *AuthDict, flows Flows, userID string) error {
	_, err := s.runUIA(ctx, auth, flows, userID)
	return err
}

// runUIA is RunUIA that also returns, on success, the id of a session
// that holds a registration token use. Such a session is kept past
// completion: the registration consumes it, with the use, in the
// transaction that creates the account (see completeRegistrationTokenTx).
// Other sessions are deleted once complete and "" is returned.
func (s *Service) runUIA(ctx context.Context, auth *AuthDict, flows Flows, userID string) (string, error) {
	err := s.runUIAStages(ctx, auth, flows, userID)
	if err == nil || !errors.Is(err, errUIAKept) {
		return "", err
	}
	return auth.Session, nil
}

// errUIAKept is runUIAStages' answer for a complete session kept because
// it holds a registration token use.
var errUIAKept = errors.New("UIA complete; session kept for its registration token")

func (s *Service) runUIAStages(ctx context.Context, auth *AuthDict, flows Flows, userID string) error {
	if auth == nil || auth.Type == "" {
		id, err := s.newUIASession(ctx, userID)
		if err != nil {
			return err
		}
		if auth != nil && auth.Session != "" {
			id = auth.Session
		}
		return &mxhttp.Error{Status: http.StatusUnauthorized, Code: "M_UNKNOWN", Message: "Authentication required",
			Raw: flows.body(id, nil)}
	}
	sessionID := auth.Session
	var completed []string
	if sessionID == "" {
		id, err := s.newUIASession(ctx, userID)
		if err != nil {
			return err
		}
		sessionID = id
	} else {
		c, owner, err := s.loadUIASession(ctx, sessionID)
		if err != nil {
			return err
		}
		if owner != "" && owner != userID {
			return mxhttp.Forbidden("UIA session belongs to another user")
		}
		completed = c
	}
	allowed := false
	for _, st := range flows {
		if slices.Contains(st, auth.Type) {
			allowed = true
		}
	}
	if !allowed {
		e := &mxhttp.Error{Status: http.StatusUnauthorized, Code: "M_UNRECOGNIZED", Message: "Unknown auth type " + auth.Type,
			Extra: flows.body(sessionID, completed)}
		return e
	}
	if err := s.checkStage(ctx, auth, sessionID, userID); err != nil {
		if errors.Is(err, errOtherUser) {
			// Not a stage to try again: the request is refused, as
			// Synapse does ("Invalid auth").
			return &mxhttp.Error{Status: http.StatusForbidden, Code: "M_FORBIDDEN", Message: "Invalid auth", Cause: ErrUIAFailed}
		}
		var me *mxhttp.Error
		if errors.As(err, &me) && me.Status < 500 {
			extra := flows.body(sessionID, completed)
			e := &mxhttp.Error{Status: http.StatusUnauthorized, Code: me.Code, Message: me.Message, Extra: extra}
			if errors.Is(err, ErrUIAFailed) {
				e.Cause = ErrUIAFailed
			}
			return e
		}
		return err
	}
	if !slices.Contains(completed, auth.Type) {
		completed = append(completed, auth.Type)
	}
	done := flows.done(completed)
	if done {
		holds, err := s.sessionHoldsToken(ctx, sessionID)
		if err != nil {
			return err
		}
		if !holds {
			_, _ = s.db.Exec(ctx, `DELETE FROM uia_sessions WHERE session_id = $1`, sessionID)
			return nil
		}
	}
	js, _ := json.Marshal(completed)
	if _, err := s.db.Exec(ctx, `UPDATE uia_sessions SET completed = $1 WHERE session_id = $2`, string(js), sessionID); err != nil {
		return fmt.Errorf("update UIA session: %w", err)
	}
	if done {
		auth.Session = sessionID
		return errUIAKept
	}
	return &mxhttp.Error{Status: http.StatusUnauthorized, Code: "M_UNKNOWN", Message: "More authentication required",
		Raw: flows.body(sessionID, completed)}
}

func (s *Service) checkStage(ctx context.Context, auth *AuthDict, sessionID, userID string) error {
	switch auth.Type {
	case StageDummy:
		return nil
	case StageRegistrationToken:
		if userID != "" {
			return mxhttp.Unknown("%s is a registration stage", StageRegistrationToken)
		}
		return s.holdRegistrationToken(ctx, sessionID, auth.Token)
	case StagePassword:
		if s.cfg.PasswordReauthDisabled {
			return mxhttp.Forbidden("Password authentication is disabled on this server (password_config.enabled)")
		}
		ident := auth.User
		if auth.Identifier != nil {
			if auth.Identifier.Type != "m.id.user" {
				return mxhttp.Unknown("Unsupported identifier type %q", auth.Identifier.Type)
			}
			ident = auth.Identifier.User
		}
		if ident == "" {
			ident = userID
		}
		qualified, err := s.QualifyUser(ident)
		if err != nil {
			return err
		}
		if userID != "" && qualified != userID {
			// Refused without looking at the password, so the answer
			// says nothing about the other account's password.
			return errOtherUser
		}
		err = s.CheckPassword(ctx, qualified, auth.Password)
		if me := (*mxhttp.Error)(nil); errors.As(err, &me) && me.Status < 500 {
			return fmt.Errorf("%w: %w", ErrUIAFailed, err)
		}
		return err
	default:
		return mxhttp.Unknown("Unsupported auth type %q", auth.Type)
	}
}

func (s *Service) newUIASession(ctx context.Context, userID string) (string, error) {
	id := randomString(24, alnum)
	now := s.nowMS()
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		// Expire old sessions opportunistically; there is no other cleanup.
		if err := expireUIASessionsTx(ctx, tx, now-uiaSessionTTL.Milliseconds()); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO uia_sessions (session_id, created_ts, user_id) VALUES ($1, $2, $3)`,
			id, now, nullString(userID))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("create UIA session: %w", err)
	}
	return id, nil
}

func (s *Service) loadUIASession(ctx context.Context, id string) ([]string, string, error) {
	var completedJSON string
	var owner sql.NullString
	var created int64
	err := s.db.Reader().QueryRowContext(ctx, `SELECT completed, user_id, created_ts FROM uia_sessions WHERE session_id = $1`, id).
		Scan(&completedJSON, &owner, &created)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && created < s.nowMS()-uiaSessionTTL.Milliseconds()) {
		return nil, "", mxhttp.WithCode(http.StatusBadRequest, "M_UNKNOWN", "Unknown or expired UIA session")
	}
	if err != nil {
		return nil, "", fmt.Errorf("load UIA session: %w", err)
	}
	var completed []string
	_ = json.Unmarshal([]byte(completedJSON), &completed)
	return completed, owner.String, nil
}
