// Package accounts owns users, devices, access tokens, passwords, profiles
// and user-interactive authentication.
package accounts

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
)

// Requester is the authenticated user behind a request.
type Requester struct {
	UserID   string
	DeviceID string
	Admin    bool
	// TokenHash identifies the access token, for logout.
	TokenHash string
	// AppserviceID is set when an application service's as_token made
	// the request (UserID is then its sender or the user it masquerades
	// as).
	AppserviceID string
	// RateLimitExempt skips rc_message and the room limits: an
	// application service registered with rate_limited: false.
	RateLimitExempt bool
}

// Settings are the account-related config values.
type Settings struct {
	ServerName                string
	EnableRegistration        bool
	RegistrationWithoutVerify bool
	RegistrationSharedSecret  string
	BcryptRounds              int
	// MaxOutstandingNonces caps unexpired shared-secret registration
	// nonces; 0 means DefaultMaxOutstandingNonces.
	MaxOutstandingNonces int
	Lifetimes            Lifetimes
	// RegistrationRequiresToken puts m.login.registration_token first in
	// every registration flow.
	RegistrationRequiresToken bool
	// PasswordPolicy is checked on every new password.
	PasswordPolicy PasswordPolicy
	// PasswordLoginDisabled (password_config.enabled false or
	// only_for_reauth) refuses passwords at /login;
	// PasswordReauthDisabled (false) also in user-interactive auth and
	// for password changes. Negated so the zero Settings keep passwords.
	PasswordLoginDisabled  bool
	PasswordReauthDisabled bool
}

// RoomHooks is what accounts needs from rooms: profile changes are
// propagated into member events and deactivation leaves every room. Wired at
// start-up to break the import cycle.
type RoomHooks interface {
	ProfileChanged(ctx context.Context, userID string, p Profile) error
	LeaveAllRooms(ctx context.Context, userID string) error
}

// DeviceHooks is told when devices go away, so per-device data kept by
// other domains (the to-device inbox) goes with them.
type DeviceHooks interface {
	DeleteDeviceInbox(ctx context.Context, userID, deviceID string) error
}

// DeviceListHook is told of every device created (login, registration),
// renamed or deleted, so the device_lists stream announces it to the users
// who share a room with the owner (and deleted devices lose their keys).
// The change is recorded in the transaction that makes it, so it cannot be
// lost; announcing it after the commit only makes it prompt.
type DeviceListHook interface {
	DevicesChangedTx(ctx context.Context, tx *sql.Tx, userID string, deviceIDs []string, deleted bool) error
	AnnounceDeviceChanges(ctx context.Context, userID string) error
}

// DeactivationHook is told, in the deactivation's transaction, so other
// domains delete what the user kept there (cross-signing keys, key
// backups) atomically with it.
type DeactivationHook interface {
	UserDeactivatedTx(ctx context.Context, tx *sql.Tx, userID string) error
}

// Service is the accounts domain.
type Service struct {
	db          *storage.DB
	log         *slog.Logger
	cfg         Settings
	hooks       RoomHooks
	deviceHooks DeviceHooks
	deviceList  DeviceListHook
	// profileIndex, if set, hears of profile changes in their transaction.
	profileIndex ProfileIndex
	invalidator  Invalidator
	tokens       *tokenCache
	now          func() time.Time
	deactivated  DeactivationHook
	appservices  Appservices
	// remoteProfiles asks other servers for their users' profiles (nil
	// without federation).
	remoteProfiles RemoteProfiles
}

func NewService(db *storage.DB, cfg Settings, log *slog.Logger) *Service {
	if cfg.BcryptRounds == 0 {
		cfg.BcryptRounds = 12
	}
	return &Service{db: db, log: log, cfg: cfg, now: time.Now, tokens: newTokenCache()}
}

// SetRoomHooks wires the rooms domain in.
func (s *Service) SetRoomHooks(h RoomHooks) { s.hooks = h }

// SetDeviceHooks wires the domains that keep per-device data.
func (s *Service) SetDeviceHooks(h DeviceHooks) { s.deviceHooks = h }

// SetDeactivationHook wires the keys domain in.
func (s *Service) SetDeactivationHook(h DeactivationHook) { s.deactivated = h }

// SetDeviceListHook wires the keys domain in.
func (s *Service) SetDeviceListHook(h DeviceListHook) { s.deviceList = h }

// recordDevicesTx records, in the transaction changing them, that devices
// were created, renamed or deleted.
func (s *Service) recordDevicesTx(ctx context.Context, tx *sql.Tx, userID string, deviceIDs []string, deleted bool) error {
	if s.deviceList == nil || len(deviceIDs) == 0 {
		return nil
	}
	return s.deviceList.DevicesChangedTx(ctx, tx, userID, deviceIDs, deleted)
}

// announceDevices announces the changes recorded for userID once their
// transaction committed. A failure loses nothing (the record waits for
// the device_lists writer's next drain), so it is logged, not returned.
func (s *Service) announceDevices(ctx context.Context, userID string) {
	if s.deviceList == nil {
		return
	}
	if err := s.deviceList.AnnounceDeviceChanges(ctx, userID); err != nil {
		s.log.Warn("device list change recorded, announcement deferred to the device_lists writer's next drain",
			"user_id", userID, "err", err)
	}
}

// deleteDevicesTx deletes the user's devices matching cond (an SQL
// condition on device_id with $2 as its argument, or "" for all) with
// their tokens, records the deletion and returns the deleted ids.
func (s *Service) deleteDevicesTx(ctx context.Context, tx *sql.Tx, userID, cond string, arg ...any) ([]string, error) {
	where := `user_id = $1`
	if cond != "" {
		where += ` AND ` + cond
	}
	args := append([]any{userID}, arg...)
	for _, table := range []string{"access_tokens", "refresh_tokens"} {
		if _, err := tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE `+where, args...); err != nil {
			return nil, err
		}
	}
	rows, err := tx.QueryContext(ctx, `DELETE FROM devices WHERE `+where+` RETURNING device_id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var gone []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return nil, err
		}
		gone = append(gone, d)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if err := s.recordDevicesTx(ctx, tx, userID, gone, true); err != nil {
		return nil, err
	}
	return gone, nil
}

// devicesGone runs the hooks for devices that were deleted (their device
// list change was recorded with the deletion); the deletion itself is
// committed, so a hook failure is logged, not returned.
func (s *Service) devicesGone(ctx context.Context, userID string, deviceIDs []string) {
	s.tokensChanged(ctx, userID)
	if len(deviceIDs) > 0 {
		s.announceDevices(ctx, userID)
	}
	if s.deviceHooks == nil {
		return
	}
	for _, d := range deviceIDs {
		if err := s.deviceHooks.DeleteDeviceInbox(ctx, userID, d); err != nil {
			s.log.Warn("could not clean up after deleted device", "user_id", userID, "device_id", d, "err", err)
		}
	}
}

// ServerName is the homeserver's name.
func (s *Service) ServerName() string { return s.cfg.ServerName }

func (s *Service) nowMS() int64 { return s.now().UnixMilli() }

// UserID builds a local user id.
func (s *Service) UserID(localpart string) string { return "@" + localpart + ":" + s.cfg.ServerName }

// Session is what register and login return.
type Session struct {
	UserID      string `json:"user_id"`
	AccessToken string `json:"access_token,omitempty"`
	DeviceID    string `json:"device_id,omitempty"`
	HomeServer  string `json:"home_server,omitempty"`
	// RefreshToken and ExpiresInMS are set when the client asked for a
	// refresh token, ExpiresInMS also for expiring non-refreshable tokens.
	RefreshToken string `json:"refresh_token,omitempty"`
	ExpiresInMS  int64  `json:"expires_in_ms,omitempty"`
}

var errUserInUse = mxhttp.WithCode(http.StatusBadRequest, "M_USER_IN_USE", "User ID already taken.")

// CheckUsername validates a localpart for registration.
func (s *Service) CheckUsername(ctx context.Context, localpart string) error {
	if !ValidLocalpart(localpart) {
		return mxhttp.WithCode(http.StatusBadRequest, "M_INVALID_USERNAME",
			"User ID can only contain characters a-z, 0-9, or '=_-./+'")
	}
	if len(s.UserID(localpart)) > 255 {
		return mxhttp.WithCode(http.StatusBadRequest, "M_INVALID_USERNAME", "User ID may not be longer than 255 characters")
	}
	var one int
	err := s.db.Reader().QueryRowContext(ctx, `SELECT 1 FROM users WHERE user_id = $1`, s.UserID(localpart)).Scan(&one)
	switch {
	case err == nil:
		return errUserInUse
	case errors.Is(err, sql.ErrNoRows):
		return nil
	default:
		return fmt.Errorf("check username %s: %w", localpart, err)
	}
}

// maxPasswordBytes is what bcrypt reads of a password.
const maxPasswordBytes = 72

var errPasswordTooLong = mxhttp.WithCode(http.StatusBadRequest, "M_WEAK_PASSWORD", "Password too long (72 bytes at most)")

// HashPassword bcrypt-hashes a password with the configured cost.
func (s *Service) HashPassword(pw string) (string, error) {
	if len(pw) > maxPasswordBytes {
		// bcrypt ignores bytes past 72; refuse rather than silently truncate.
		return "", errPasswordTooLong
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), s.cfg.BcryptRounds)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return string(h), nil
}

// NewUser describes a registration.
type NewUser struct {
	Localpart    string
	Password     string // empty: no password login
	Admin        bool
	UserType     string
	DisplayName  string
	DeviceID     string
	DeviceName   string
	InhibitLogin bool
	// RefreshToken asks for a refresh token with the access token.
	RefreshToken bool
	// UIASession, when set, is a completed registration session holding
	// a registration token use: the account is created only if this
	// transaction consumes the session and completes the use.
	UIASession string
}

// Register creates the user and, unless InhibitLogin, a device and token.
func (s *Service) Register(ctx context.Context, u NewUser) (Session, error) {
	if err := s.CheckUsername(ctx, u.Localpart); err != nil {
		return Session{}, err
	}
	var hash sql.NullString
	if u.Password != "" {
		h, err := s.HashPassword(u.Password)
		if err != nil {
			return Session{}, err
		}
		hash = sql.NullString{String: h, Valid: true}
	}
	userID := s.UserID(u.Localpart)
	display := u.DisplayName
	if display == "" {
		display = u.Localpart
	}
	sess := Session{UserID: userID, HomeServer: s.cfg.ServerName}
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO users (user_id, password_hash, created_ts, admin, user_type) VALUES ($1, $2, $3, $4, $5)`,
			userID, hash, s.nowMS(), u.Admin, nullString(u.UserType))
		if err != nil {
			if storage.IsUniqueViolation(err) {
				return errUserInUse
			}
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO profiles (user_id, displayname) VALUES ($1, $2)`, userID, display); err != nil {
			return err
		}
		if u.UIASession != "" {
			if err := completeRegistrationTokenTx(ctx, tx, u.UIASession); err != nil {
				return err
			}
		}
		if err := s.indexProfile(ctx, tx, userID); err != nil {
			return err
		}
		if u.InhibitLogin {
			return nil
		}
		var tokens issued
		sess.DeviceID, tokens, err = s.createDeviceTx(ctx, tx, userID, u.DeviceID, u.DeviceName, u.RefreshToken)
		sess.setTokens(tokens)
		if err != nil {
			return err
		}
		return s.recordDevicesTx(ctx, tx, userID, []string{sess.DeviceID}, false)
	})
	if err != nil {
		var me *mxhttp.Error
		if errors.As(err, &me) {
			return Session{}, err
		}
		return Session{}, fmt.Errorf("register %s: %w", userID, err)
	}
	s.log.Info("registered user", "user_id", userID)
	if sess.DeviceID != "" {
		s.announceDevices(ctx, userID)
	}
	return sess, nil
}

// createDeviceTx makes (or reuses) a device and issues new tokens for it.
// Logging in again with an existing device id replaces that device's
// tokens (refresh tokens included), as the spec says re-using a device id
// invalidates its old token.
func (s *Service) createDeviceTx(ctx context.Context, tx *sql.Tx, userID, deviceID, name string, refreshable bool) (string, issued, error) {
	if deviceID == "" {
		deviceID = NewDeviceID()
	}
	now := s.nowMS()
	_, err := tx.ExecContext(ctx, `INSERT INTO devices (user_id, device_id, display_name, created_ts, last_seen_ts)
		VALUES ($1, $2, $3, $4, $4)
		ON CONFLICT (user_id, device_id) DO UPDATE SET last_seen_ts = excluded.last_seen_ts,
		display_name = COALESCE(excluded.display_name, devices.display_name)`,
		userID, deviceID, nullString(name), now)
	if err != nil {
		return "", issued{}, fmt.Errorf("create device: %w", err)
	}
	if err := deleteDeviceTokensTx(ctx, tx, userID, deviceID); err != nil {
		return "", issued{}, fmt.Errorf("replace device tokens: %w", err)
	}
	tokens, err := s.issueTokensTx(ctx, tx, userID, deviceID, refreshable, s.sessionEnd())
	if err != nil {
		return "", issued{}, err
	}
	return deviceID, tokens, nil
}

// deleteDeviceTokensTx deletes a device's access and refresh tokens.
func deleteDeviceTokensTx(ctx context.Context, tx *sql.Tx, userID, deviceID string) error {
	for _, q := range []string{
		`DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2`,
		`DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2`,
	} {
		if _, err := tx.ExecContext(ctx, q, userID, deviceID); err != nil {
			return err
		}
	}
	return nil
}

func (sess *Session) setTokens(t issued) {
	sess.AccessToken, sess.RefreshToken, sess.ExpiresInMS = t.access, t.refresh, t.expiresInMS
}

// CreateSession logs an existing user in on a (new or given) device, with
// a refresh token if asked for.
func (s *Service) CreateSession(ctx context.Context, userID, deviceID, deviceName string, refreshable bool) (Session, error) {
	sess := Session{UserID: userID, HomeServer: s.cfg.ServerName}
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		var err error
		var tokens issued
		sess.DeviceID, tokens, err = s.createDeviceTx(ctx, tx, userID, deviceID, deviceName, refreshable)
		sess.setTokens(tokens)
		if err != nil {
			return err
		}
		return s.recordDevicesTx(ctx, tx, userID, []string{sess.DeviceID}, false)
	})
	if err != nil {
		return Session{}, fmt.Errorf("create session for %s: %w", userID, err)
	}
	if deviceID != "" {
		// Re-using a device id replaced its old token.
		s.tokensChanged(ctx, userID)
	}
	s.announceDevices(ctx, userID)
	return sess, nil
}

// user is a row of users.
type user struct {
	passwordHash sql.NullString
	admin        bool
	deactivated  bool
}

func (s *Service) getUser(ctx context.Context, userID string) (*user, error) {
	var u user
	err := s.db.Reader().QueryRowContext(ctx, `SELECT password_hash, admin, deactivated FROM users WHERE user_id = $1`, userID).
		Scan(&u.passwordHash, &u.admin, &u.deactivated)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load user %s: %w", userID, err)
	}
	return &u, nil
}

// UserExists reports whether a local user is registered (deactivated ones count).
func (s *Service) UserExists(ctx context.Context, userID string) (bool, error) {
	u, err := s.getUser(ctx, userID)
	return u != nil, err
}

var errBadLogin = mxhttp.Forbidden("Invalid username or password")

// CheckPassword verifies a user's password; the returned error is always
// the same M_FORBIDDEN so responses do not reveal which users exist.
func (s *Service) CheckPassword(ctx context.Context, userID, password string) error {
	u, err := s.getUser(ctx, userID)
	if err != nil {
		return err
	}
	if u == nil || !u.passwordHash.Valid || u.deactivated {
		// Spend bcrypt time anyway so timing does not reveal existence.
		_ = bcrypt.CompareHashAndPassword([]byte("$2a$04$invalidinvalidinvalidinvalidinvalidinvalidinvalidinva"), []byte(password))
		if u != nil && u.deactivated {
			return mxhttp.WithCode(http.StatusForbidden, "M_USER_DEACTIVATED", "This account has been deactivated")
		}
		return errBadLogin
	}
	if bcrypt.CompareHashAndPassword([]byte(u.passwordHash.String), []byte(password)) != nil {
		return errBadLogin
	}
	return nil
}

// QualifyUser turns a login identifier (localpart or full id) into a local
// user id, lowercasing the localpart as Synapse does.
func (s *Service) QualifyUser(ident string) (string, error) {
	if strings.HasPrefix(ident, "@") {
		local, server, ok := SplitUserID(ident)
		if !ok {
			return "", mxhttp.InvalidParam("Invalid user id %q", ident)
		}
		if server != s.cfg.ServerName {
			return "", errBadLogin
		}
		ident = local
	}
	return s.UserID(strings.ToLower(ident)), nil
}

// Authenticate resolves an access token.
func (s *Service) Authenticate(ctx context.Context, token string) (*Requester, error) {
	if token == "" {
		return nil, mxhttp.MissingToken()
	}
	if !tokenChecksumOK(token) {
		return nil, mxhttp.UnknownToken(false)
	}
	h := HashToken(token)
	if cached, ok := s.tokens.get(h, s.now()); ok {
		return cached, nil
	}
	var r Requester
	var deactivated, superseding bool
	var validUntil sql.NullInt64
	var refreshHash sql.NullString
	// superseding: the token came from a refresh whose predecessor refresh
	// token still exists, i.e. this is the new pair's first use.
	err := s.db.Reader().QueryRowContext(ctx, `SELECT t.user_id, t.device_id, u.admin, u.deactivated, t.valid_until_ms,
		t.refresh_token_hash, EXISTS (SELECT 1 FROM refresh_tokens p WHERE p.next_token_hash = t.refresh_token_hash)
		FROM access_tokens t JOIN users u ON u.user_id = t.user_id WHERE t.token_hash = $1`, h).
		Scan(&r.UserID, &r.DeviceID, &r.Admin, &deactivated, &validUntil, &refreshHash, &superseding)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && deactivated) {
		return nil, mxhttp.UnknownToken(false)
	}
	if err != nil {
		return nil, fmt.Errorf("look up access token: %w", err)
	}
	if validUntil.Valid && s.nowMS() >= validUntil.Int64 {
		// Expired, not revoked: the client may refresh or log in again
		// keeping its device and keys (soft logout).
		return nil, mxhttp.UnknownToken(true)
	}
	r.TokenHash = h
	if superseding && refreshHash.Valid {
		if err := s.firstUse(ctx, r.UserID, refreshHash.String); err != nil {
			// The token itself is good; answer the request, and leave it
			// out of the cache so the next request revokes again.
			s.log.Warn("could not revoke a superseded refresh token", "user_id", r.UserID, "err", err)
			return &r, nil
		}
	}
	s.tokens.put(h, r, s.now(), validUntil.Int64)
	return &r, nil
}

// TokenFromRequest extracts the access token from the Authorization header
// or the deprecated access_token query parameter.
func TokenFromRequest(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if t, ok := strings.CutPrefix(h, "Bearer "); ok {
			return strings.TrimSpace(t)
		}
		return ""
	}
	return r.URL.Query().Get("access_token")
}

// AuthedHandler is an endpoint that needs a logged-in user.
type AuthedHandler func(w http.ResponseWriter, r *http.Request, req *Requester) error

// Auth adapts an AuthedHandler, answering M_MISSING_TOKEN/M_UNKNOWN_TOKEN.
func (s *Service) Auth(h AuthedHandler) mxhttp.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		req, err := s.AuthenticateRequest(r)
		if err != nil {
			return err
		}
		return h(w, r, req)
	}
}

// Logout deletes the device behind the requester's token (and so the token).
func (s *Service) Logout(ctx context.Context, req *Requester) error {
	return s.DeleteDevices(ctx, req.UserID, []string{req.DeviceID})
}

// LogoutAll deletes every device of the user.
func (s *Service) LogoutAll(ctx context.Context, userID string) error {
	var gone []string
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		var err error
		gone, err = s.deleteDevicesTx(ctx, tx, userID, "")
		return err
	})
	if err != nil {
		return fmt.Errorf("log out all devices of %s: %w", userID, err)
	}
	s.devicesGone(ctx, userID, gone)
	return nil
}

// ChangePassword sets a new password; unless keepDevices, every other
// device is logged out (the spec's logout_devices, default true).
func (s *Service) ChangePassword(ctx context.Context, userID, newPassword string, logoutDevices bool, keepDevice string) error {
	h, err := s.HashPassword(newPassword)
	if err != nil {
		return err
	}
	var gone []string
	err = s.db.Tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE users SET password_hash = $1 WHERE user_id = $2`, h, userID); err != nil {
			return err
		}
		if !logoutDevices {
			return nil
		}
		var err error
		gone, err = s.deleteDevicesTx(ctx, tx, userID, `device_id <> $2`, keepDevice)
		return err
	})
	if err != nil {
		return fmt.Errorf("change password of %s: %w", userID, err)
	}
	s.devicesGone(ctx, userID, gone)
	return nil
}

// Deactivate locks the account: password removed, devices and tokens
// deleted, every room left, profile cleared.
func (s *Service) Deactivate(ctx context.Context, userID string) error {
	if s.hooks != nil {
		if err := s.hooks.LeaveAllRooms(ctx, userID); err != nil {
			return fmt.Errorf("deactivate %s: leave rooms: %w", userID, err)
		}
	}
	var gone []string
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		for _, q := range []string{
			`UPDATE users SET deactivated = TRUE, password_hash = NULL WHERE user_id = $1`,
			`UPDATE profiles SET displayname = NULL, avatar_url = NULL WHERE user_id = $1`,
		} {
			if _, err := tx.ExecContext(ctx, q, userID); err != nil {
				return err
			}
		}
		var err error
		if gone, err = s.deleteDevicesTx(ctx, tx, userID, ""); err != nil {
			return err
		}
		if s.deactivated != nil {
			return s.deactivated.UserDeactivatedTx(ctx, tx, userID)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("deactivate %s: %w", userID, err)
	}
	s.devicesGone(ctx, userID, gone)
	if len(gone) == 0 {
		// The cross-signing keys' deletion was recorded all the same
		// (devicesGone announced it with the devices otherwise).
		s.announceDevices(ctx, userID)
	}
	s.log.Info("deactivated user", "user_id", userID)
	return nil
}

func nullString(s string) sql.NullString { return sql.NullString{String: s, Valid: s != ""} }
