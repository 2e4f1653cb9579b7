package accounts

import (
	"crypto/hmac"
	"crypto/sha1"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"ganglion/internal/mxhttp"
	"ganglion/internal/ratelimit"
)

// Limits are the rc_* limiters the account endpoints apply.
type Limits struct {
	Registration       *ratelimit.Limiter // per client IP
	LoginAddress       *ratelimit.Limiter // per client IP
	LoginAccount       *ratelimit.Limiter // per account
	LoginFailedAttempt *ratelimit.Limiter // per account, failures only
	// UIAFailedAttempt counts failed password stages of user-interactive
	// auth per user (rc_login.failed_attempts, in buckets of its own as
	// in Synapse).
	UIAFailedAttempt *ratelimit.Limiter
	// AdminNonce limits GET /_synapse/admin/v1/register per client IP: each
	// call stores a row, so it must not be free.
	AdminNonce *ratelimit.Limiter
	// RegistrationTokenValidity limits the token validity check per
	// client IP (rc_registration_token_validity).
	RegistrationTokenValidity *ratelimit.Limiter
}

// Routes registers the account endpoints.
func (s *Service) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, lim Limits) {
	h := &handlers{s: s, lim: lim}
	mux.HandleClient("GET", "/register/available", srv.Handle(h.available))
	mux.HandleClient("POST", "/register", srv.Handle(h.register))
	mux.HandleClient("GET", "/login", srv.Handle(h.loginFlows))
	mux.HandleClient("POST", "/login", srv.Handle(h.login))
	if s.RefreshEnabled() {
		// v3 (spec v1.3) and v1, Synapse's first path for it.
		mux.HandleClientV3Only("POST", "/refresh", srv.Handle(h.refresh))
		mux.Handle("POST /_matrix/client/v1/refresh", srv.Handle(h.refresh))
	}
	mux.HandleClient("POST", "/logout", srv.Handle(s.Auth(h.logout)))
	mux.HandleClient("POST", "/logout/all", srv.Handle(s.Auth(h.logoutAll)))
	mux.HandleClient("GET", "/account/whoami", srv.Handle(s.Auth(h.whoami)))
	mux.HandleClient("POST", "/account/password", srv.Handle(s.Auth(h.password)))
	mux.HandleClient("POST", "/account/deactivate", srv.Handle(s.Auth(h.deactivate)))
	mux.HandleClient("GET", "/devices", srv.Handle(s.Auth(h.listDevices)))
	mux.HandleClient("GET", "/devices/{deviceId}", srv.Handle(s.Auth(h.getDevice)))
	mux.HandleClient("PUT", "/devices/{deviceId}", srv.Handle(s.Auth(h.putDevice)))
	mux.HandleClient("DELETE", "/devices/{deviceId}", srv.Handle(s.Auth(h.deleteDevice)))
	mux.HandleClient("POST", "/delete_devices", srv.Handle(s.Auth(h.deleteDevices)))
	mux.HandleClient("GET", "/profile/{userId}", srv.Handle(h.getProfile))
	mux.HandleClient("GET", "/profile/{userId}/{field}", srv.Handle(h.getProfileField))
	mux.HandleClient("PUT", "/profile/{userId}/{field}", srv.Handle(s.Auth(h.putProfileField)))
	mux.Handle("GET /_synapse/admin/v1/register", srv.Handle(h.adminNonce))
	mux.Handle("POST /_synapse/admin/v1/register", srv.Handle(h.adminRegister))
	// Synapse serves the policy under r0, v3 and unstable.
	mux.HandleClient("GET", "/password_policy", srv.Handle(h.passwordPolicy))
	mux.Handle("GET /_matrix/client/unstable/password_policy", srv.Handle(h.passwordPolicy))
	mux.Handle("GET /_matrix/client/v1/register/m.login.registration_token/validity", srv.Handle(h.tokenValidity(lim.RegistrationTokenValidity)))
	h.adminTokenRoutes(mux, srv)
	h.threepidRoutes(mux, srv)
}

type handlers struct {
	s       *Service
	lim     Limits
	userSeq atomic.Int64
}

// ClientIP is the remote address host; listeners with x_forwarded have
// already replaced RemoteAddr with the forwarded address.
func ClientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func limit(l *ratelimit.Limiter, key string) error {
	if ok, wait := l.Allow(key); !ok {
		return mxhttp.LimitExceeded(wait.Milliseconds() + 1)
	}
	return nil
}

// reauth runs user-interactive auth for an endpoint that makes the
// requester prove their password again. A user with too many failed
// stages is refused before any check, and each failed stage counts, as in
// Synapse's validate_user_via_ui_auth: with a stolen access token,
// guesses are as limited as at /login.
func (h *handlers) reauth(r *http.Request, auth *AuthDict, userID string) error {
	if ok, wait := h.lim.UIAFailedAttempt.Peek(userID); !ok {
		return mxhttp.LimitExceeded(wait.Milliseconds() + 1)
	}
	err := h.s.RunUIA(r.Context(), auth, Flows{{StagePassword}}, userID)
	if errors.Is(err, ErrUIAFailed) {
		_, _ = h.lim.UIAFailedAttempt.Allow(userID)
	}
	return err
}

func (h *handlers) available(w http.ResponseWriter, r *http.Request) error {
	name := r.URL.Query().Get("username")
	if name == "" {
		return mxhttp.MissingParam("Missing username")
	}
	if err := limit(h.lim.Registration, ClientIP(r)); err != nil {
		return err
	}
	if err := h.s.CheckUsername(r.Context(), strings.ToLower(name)); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, map[string]bool{"available": true})
}

type registerBody struct {
	Username                 string    `json:"username"`
	Password                 string    `json:"password"`
	DeviceID                 string    `json:"device_id"`
	InitialDeviceDisplayName string    `json:"initial_device_display_name"`
	InhibitLogin             bool      `json:"inhibit_login"`
	RefreshToken             bool      `json:"refresh_token"`
	Auth                     *AuthDict `json:"auth"`
	Type                     string    `json:"type"` // legacy: some clients send auth type at top level
}

func (h *handlers) register(w http.ResponseWriter, r *http.Request) error {
	if kind := r.URL.Query().Get("kind"); kind == "guest" {
		return mxhttp.WithCode(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is disabled")
	} else if kind != "" && kind != "user" {
		return mxhttp.InvalidParam("Invalid kind %q", kind)
	}
	var body registerBody
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.Type == LoginTypeAppservice {
		return h.registerAppservice(w, r, body)
	}
	if !h.s.cfg.EnableRegistration {
		return mxhttp.Forbidden("Registration has been disabled")
	}
	if err := limit(h.lim.Registration, ClientIP(r)); err != nil {
		return err
	}
	local := strings.ToLower(body.Username)
	if body.Username != "" {
		// Check the name before UIA so clients learn early that it is taken.
		if err := h.s.CheckUsername(r.Context(), local); err != nil {
			return err
		}
		if err := h.s.checkNotExclusive(r.Context(), local); err != nil {
			return err
		}
	}
	if body.Password != "" {
		if err := h.s.checkNewPassword(body.Password); err != nil {
			return err
		}
	}
	flows := Flows{{StageDummy}}
	if h.s.cfg.RegistrationRequiresToken {
		// Synapse's flows: the token first, in every flow.
		flows = Flows{{StageRegistrationToken, StageDummy}}
	} else if !h.s.cfg.RegistrationWithoutVerify {
		// Without email/captcha support there is no stage a client could
		// complete; refuse clearly rather than offer an impossible flow.
		// A registration token is a verification, as in Synapse.
		return mxhttp.Forbidden("Registration requires verification, which this server does not offer; set enable_registration_without_verification or registration_requires_token")
	}
	uiaSession, err := h.s.runUIA(r.Context(), body.Auth, flows, "")
	if err != nil {
		return err
	}
	if local == "" {
		if local, err = h.generateLocalpart(r); err != nil {
			return err
		}
	}
	sess, err := h.s.Register(r.Context(), NewUser{Localpart: local, Password: body.Password, DeviceID: body.DeviceID,
		DeviceName: body.InitialDeviceDisplayName, InhibitLogin: body.InhibitLogin, RefreshToken: body.RefreshToken,
		UIASession: uiaSession})
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, sess)
}

// generateLocalpart picks a numeric localpart as Synapse does for
// registrations without a username.
func (h *handlers) generateLocalpart(r *http.Request) (string, error) {
	for i := 0; i < 20; i++ {
		cand := strconv.FormatInt(time.Now().UnixNano()/1000+h.userSeq.Add(1), 10)
		exists, err := h.s.UserExists(r.Context(), h.s.UserID(cand))
		if err != nil {
			return "", err
		}
		if !exists {
			return cand, nil
		}
	}
	return "", fmt.Errorf("could not generate a free user id")
}

func (h *handlers) loginFlows(w http.ResponseWriter, r *http.Request) error {
	flows := []map[string]any{}
	if !h.s.cfg.PasswordLoginDisabled {
		flows = append(flows, map[string]any{"type": StagePassword})
	}
	if h.s.appservices != nil {
		flows = append(flows, map[string]any{"type": LoginTypeAppservice})
	}
	return mxhttp.WriteJSON(w, 200, map[string]any{"flows": flows})
}

type loginBody struct {
	Type                     string      `json:"type"`
	Identifier               *Identifier `json:"identifier"`
	User                     string      `json:"user"`
	Password                 string      `json:"password"`
	DeviceID                 string      `json:"device_id"`
	InitialDeviceDisplayName string      `json:"initial_device_display_name"`
	RefreshToken             bool        `json:"refresh_token"`
}

func (h *handlers) login(w http.ResponseWriter, r *http.Request) error {
	var body loginBody
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if err := limit(h.lim.LoginAddress, ClientIP(r)); err != nil {
		return err
	}
	if body.Type == LoginTypeAppservice && h.s.appservices != nil {
		return h.loginAppservice(w, r, body)
	}
	if body.Type != StagePassword || h.s.cfg.PasswordLoginDisabled {
		return mxhttp.Unknown("Unknown login type %q", body.Type)
	}
	ident := body.User
	if body.Identifier != nil {
		if body.Identifier.Type != "m.id.user" {
			return mxhttp.Unknown("Unsupported identifier type %q", body.Identifier.Type)
		}
		ident = body.Identifier.User
	}
	if ident == "" {
		return mxhttp.MissingParam("Missing user identifier")
	}
	userID, err := h.s.QualifyUser(ident)
	if err != nil {
		return err
	}
	if err := limit(h.lim.LoginAccount, userID); err != nil {
		return err
	}
	if ok, wait := h.lim.LoginFailedAttempt.Peek(userID); !ok {
		return mxhttp.LimitExceeded(wait.Milliseconds() + 1)
	}
	if err := h.s.CheckPassword(r.Context(), userID, body.Password); err != nil {
		_, _ = h.lim.LoginFailedAttempt.Allow(userID)
		return err
	}
	sess, err := h.s.CreateSession(r.Context(), userID, body.DeviceID, body.InitialDeviceDisplayName, body.RefreshToken)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, sess)
}

func (h *handlers) logout(w http.ResponseWriter, r *http.Request, req *Requester) error {
	if err := h.s.Logout(r.Context(), req); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, struct{}{})
}

func (h *handlers) logoutAll(w http.ResponseWriter, r *http.Request, req *Requester) error {
	if err := h.s.LogoutAll(r.Context(), req.UserID); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, struct{}{})
}

func (h *handlers) whoami(w http.ResponseWriter, r *http.Request, req *Requester) error {
	return mxhttp.WriteJSON(w, 200, map[string]any{"user_id": req.UserID, "device_id": req.DeviceID, "is_guest": false})
}

func (h *handlers) password(w http.ResponseWriter, r *http.Request, req *Requester) error {
	var body struct {
		NewPassword   string    `json:"new_password"`
		LogoutDevices *bool     `json:"logout_devices"`
		Auth          *AuthDict `json:"auth"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if h.s.cfg.PasswordReauthDisabled {
		// Synapse's answer when passwords are off.
		return mxhttp.Forbidden("Password change disabled")
	}
	if body.NewPassword != "" {
		if err := h.s.checkNewPassword(body.NewPassword); err != nil {
			return err
		}
	}
	if err := h.reauth(r, body.Auth, req.UserID); err != nil {
		return err
	}
	if body.NewPassword == "" {
		return mxhttp.MissingParam("Missing new_password")
	}
	logout := body.LogoutDevices == nil || *body.LogoutDevices
	if err := h.s.ChangePassword(r.Context(), req.UserID, body.NewPassword, logout, req.DeviceID); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, struct{}{})
}

func (h *handlers) deactivate(w http.ResponseWriter, r *http.Request, req *Requester) error {
	var body struct {
		Auth  *AuthDict `json:"auth"`
		Erase bool      `json:"erase"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if err := h.reauth(r, body.Auth, req.UserID); err != nil {
		return err
	}
	if err := h.s.Deactivate(r.Context(), req.UserID); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, map[string]string{"id_server_unbind_result": "no-support"})
}

func (h *handlers) listDevices(w http.ResponseWriter, r *http.Request, req *Requester) error {
	ds, err := h.s.Devices(r.Context(), req.UserID)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, map[string]any{"devices": ds})
}

func (h *handlers) getDevice(w http.ResponseWriter, r *http.Request, req *Requester) error {
	d, err := h.s.Device(r.Context(), req.UserID, r.PathValue("deviceId"))
	if err != nil {
		return err
	}
	if d == nil {
		return mxhttp.NotFound("Device not found")
	}
	return mxhttp.WriteJSON(w, 200, d)
}

func (h *handlers) putDevice(w http.ResponseWriter, r *http.Request, req *Requester) error {
	var body struct {
		DisplayName *string `json:"display_name"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	id := r.PathValue("deviceId")
	if body.DisplayName == nil {
		d, err := h.s.Device(r.Context(), req.UserID, id)
		if err != nil {
			return err
		}
		if d == nil {
			return mxhttp.NotFound("Device not found")
		}
		return mxhttp.WriteJSON(w, 200, struct{}{})
	}
	if len(*body.DisplayName) > 100 {
		return mxhttp.InvalidParam("display_name too long")
	}
	ok, err := h.s.SetDeviceName(r.Context(), req.UserID, id, *body.DisplayName)
	if err != nil {
		return err
	}
	if !ok {
		return mxhttp.NotFound("Device not found")
	}
	return mxhttp.WriteJSON(w, 200, struct{}{})
}

func (h *handlers) deleteDevice(w http.ResponseWriter, r *http.Request, req *Requester) error {
	var body struct {
		Auth *AuthDict `json:"auth"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	id := r.PathValue("deviceId")
	d, err := h.s.Device(r.Context(), req.UserID, id)
	if err != nil {
		return err
	}
	if d == nil {
		return mxhttp.NotFound("Device not found")
	}
	if err := h.reauth(r, body.Auth, req.UserID); err != nil {
		return err
	}
	if err := h.s.DeleteDevices(r.Context(), req.UserID, []string{id}); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, struct{}{})
}

func (h *handlers) deleteDevices(w http.ResponseWriter, r *http.Request, req *Requester) error {
	var body struct {
		Devices []string  `json:"devices"`
		Auth    *AuthDict `json:"auth"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.Devices == nil {
		return mxhttp.MissingParam("Missing devices")
	}
	if err := h.reauth(r, body.Auth, req.UserID); err != nil {
		return err
	}
	if err := h.s.DeleteDevices(r.Context(), req.UserID, body.Devices); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, struct{}{})
}

func (h *handlers) localProfile(r *http.Request) (*Profile, error) {
	userID := r.PathValue("userId")
	if _, server, ok := SplitUserID(userID); !ok {
		return nil, mxhttp.InvalidParam("Invalid user id")
	} else if server != h.s.cfg.ServerName {
		return h.s.remoteProfile(r.Context(), userID)
	}
	p, err := h.s.GetProfile(r.Context(), userID)
	if err == nil && p == nil && h.s.appservices != nil && h.s.appservices.QueryUser(r.Context(), userID) {
		// An application service owning the id may create the user when
		// asked (the Application Service API's user query).
		p, err = h.s.GetProfile(r.Context(), userID)
	}
	if err != nil {
		return nil, err
	}
	if p == nil {
		return nil, mxhttp.NotFound("Profile not found")
	}
	return p, nil
}

func (h *handlers) getProfile(w http.ResponseWriter, r *http.Request) error {
	p, err := h.localProfile(r)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, p)
}

func (h *handlers) getProfileField(w http.ResponseWriter, r *http.Request) error {
	field := r.PathValue("field")
	if field != "displayname" && field != "avatar_url" {
		return mxhttp.NotFound("Unknown profile field")
	}
	p, err := h.localProfile(r)
	if err != nil {
		return err
	}
	v := p.DisplayName
	if field == "avatar_url" {
		v = p.AvatarURL
	}
	if v == nil {
		return mxhttp.NotFound("Profile field not set")
	}
	return mxhttp.WriteJSON(w, 200, map[string]string{field: *v})
}

func (h *handlers) putProfileField(w http.ResponseWriter, r *http.Request, req *Requester) error {
	field := r.PathValue("field")
	if field != "displayname" && field != "avatar_url" {
		return mxhttp.NotFound("Unknown profile field")
	}
	if r.PathValue("userId") != req.UserID {
		return mxhttp.Forbidden("Cannot set another user's profile")
	}
	var body map[string]any
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	var value *string
	switch v := body[field].(type) {
	case string:
		if len(v) > 256 && field == "displayname" {
			return mxhttp.WithCode(400, "M_TOO_LARGE", "displayname is too long (256 characters at most)")
		}
		if len(v) > 1000 {
			return mxhttp.WithCode(400, "M_TOO_LARGE", "%s is too long", field)
		}
		if v != "" {
			value = &v
		}
	case nil:
	default:
		return mxhttp.BadJSON("%s must be a string", field)
	}
	if err := h.s.SetProfileField(r.Context(), req.UserID, field, value); err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, struct{}{})
}

// Shared-secret registration, compatible with Synapse's
// register_new_matrix_user: GET a nonce, then POST with
// mac = HMAC-SHA1(secret, nonce NUL username NUL password NUL admin|notadmin).

// nonceTTL is how long a nonce stays usable, as in Synapse.
const nonceTTL = 60 * time.Second

// DefaultMaxOutstandingNonces bounds the unexpired nonces: a legitimate
// admin script uses one at a time, so this only stops someone filling the
// table faster than nonces expire.
const DefaultMaxOutstandingNonces = 1000

func (h *handlers) adminNonce(w http.ResponseWriter, r *http.Request) error {
	if h.s.cfg.RegistrationSharedSecret == "" {
		return mxhttp.WithCode(http.StatusBadRequest, "M_UNKNOWN", "Shared secret registration is not enabled")
	}
	if err := limit(h.lim.AdminNonce, ClientIP(r)); err != nil {
		return err
	}
	nonce := randomString(32, alnum)
	now := h.s.nowMS()
	if _, err := h.s.db.Exec(r.Context(), `DELETE FROM registration_nonces WHERE created_ts < $1`, now-nonceTTL.Milliseconds()); err != nil {
		return fmt.Errorf("expire nonces: %w", err)
	}
	maxNonces := h.s.cfg.MaxOutstandingNonces
	if maxNonces <= 0 {
		maxNonces = DefaultMaxOutstandingNonces
	}
	var outstanding int
	var oldest sql.NullInt64
	if err := h.s.db.Reader().QueryRowContext(r.Context(), `SELECT count(*), min(created_ts) FROM registration_nonces`).
		Scan(&outstanding, &oldest); err != nil {
		return fmt.Errorf("count nonces: %w", err)
	}
	if outstanding >= maxNonces {
		// Full until the oldest expires.
		return mxhttp.LimitExceeded(max(oldest.Int64+nonceTTL.Milliseconds()-now, 1))
	}
	if _, err := h.s.db.Exec(r.Context(), `INSERT INTO registration_nonces (nonce, created_ts) VALUES ($1, $2)`, nonce, now); err != nil {
		return fmt.Errorf("store nonce: %w", err)
	}
	return mxhttp.WriteJSON(w, 200, map[string]string{"nonce": nonce})
}

func (h *handlers) adminRegister(w http.ResponseWriter, r *http.Request) error {
	if h.s.cfg.RegistrationSharedSecret == "" {
		return mxhttp.WithCode(http.StatusBadRequest, "M_UNKNOWN", "Shared secret registration is not enabled")
	}
	var body struct {
		Nonce       string `json:"nonce"`
		Username    string `json:"username"`
		Password    string `json:"password"`
		Admin       bool   `json:"admin"`
		UserType    string `json:"user_type"`
		Displayname string `json:"displayname"`
		MAC         string `json:"mac"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.Nonce == "" || body.Username == "" || body.MAC == "" {
		return mxhttp.MissingParam("nonce, username and mac are required")
	}
	if strings.ContainsRune(body.Username, 0) || strings.ContainsRune(body.Password, 0) {
		return mxhttp.InvalidParam("Invalid username or password")
	}
	res, err := h.s.db.Exec(r.Context(), `DELETE FROM registration_nonces WHERE nonce = $1 AND created_ts >= $2`,
		body.Nonce, h.s.nowMS()-nonceTTL.Milliseconds())
	if err != nil {
		return fmt.Errorf("consume nonce: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return mxhttp.WithCode(http.StatusBadRequest, "M_UNKNOWN", "Unrecognised nonce")
	}
	mac := hmac.New(sha1.New, []byte(h.s.cfg.RegistrationSharedSecret))
	mac.Write([]byte(body.Nonce + "\x00" + body.Username + "\x00" + body.Password + "\x00"))
	if body.Admin {
		mac.Write([]byte("admin"))
	} else {
		mac.Write([]byte("notadmin"))
	}
	if body.UserType != "" {
		mac.Write([]byte("\x00" + body.UserType))
	}
	want := hex.EncodeToString(mac.Sum(nil))
	if !hmac.Equal([]byte(want), []byte(strings.ToLower(body.MAC))) {
		return mxhttp.Forbidden("HMAC incorrect")
	}
	sess, err := h.s.Register(r.Context(), NewUser{Localpart: strings.ToLower(body.Username), Password: body.Password,
		Admin: body.Admin, UserType: body.UserType, DisplayName: body.Displayname})
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, sess)
}
