package accounts

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"ganglion/internal/mxhttp"
)

// Appservices is what accounts needs from application services
// (internal/appservice), wired at start-up to break the import cycle.
type Appservices interface {
	// Requester resolves an application service's as_token, applying the
	// user_id (masquerading) and device_id query parameters of r; ok is
	// false when token is not an as_token.
	Requester(ctx context.Context, r *http.Request, token string) (req *Requester, ok bool, err error)
	// CheckRegistration allows registering userID: by the service whose
	// as_token is asToken (which must be given, with type
	// m.login.application_service, and own the name), or, with asToken
	// empty, by anyone when no service claims the name exclusively.
	CheckRegistration(ctx context.Context, asToken, userID string) error
	// QueryUser asks the services whose namespace holds the unknown
	// userID whether it exists (they register it if so); true if one said
	// yes.
	QueryUser(ctx context.Context, userID string) bool
}

// SetAppservices wires application services in.
func (s *Service) SetAppservices(a Appservices) { s.appservices = a }

// AuthenticateRequest resolves the request's access token: an
// application service's as_token first, then users' tokens.
func (s *Service) AuthenticateRequest(r *http.Request) (*Requester, error) {
	token := TokenFromRequest(r)
	if s.appservices != nil && token != "" {
		req, ok, err := s.appservices.Requester(r.Context(), r, token)
		if ok || err != nil {
			return req, err
		}
	}
	return s.Authenticate(r.Context(), token)
}

// LoginTypeAppservice is the registration type of application services.
const LoginTypeAppservice = "m.login.application_service"

// checkNotExclusive refuses a user's registration of a name an
// application service claims exclusively.
func (s *Service) checkNotExclusive(ctx context.Context, localpart string) error {
	if s.appservices == nil {
		return nil
	}
	return s.appservices.CheckRegistration(ctx, "", s.UserID(localpart))
}

// registerAppservice is POST /register with type
// m.login.application_service: the service registers a user of its
// namespace, without user-interactive auth or the registration limits
// (the as_token is the authentication), even with registration closed.
func (h *handlers) registerAppservice(w http.ResponseWriter, r *http.Request, body registerBody) error {
	token := TokenFromRequest(r)
	if token == "" {
		return mxhttp.MissingToken()
	}
	if h.s.appservices == nil {
		return mxhttp.UnknownToken(false)
	}
	if body.Username == "" {
		return mxhttp.MissingParam("username is required with type %s", LoginTypeAppservice)
	}
	local := strings.ToLower(body.Username)
	if !ValidLocalpart(local) {
		return h.s.CheckUsername(r.Context(), local)
	}
	if err := h.s.appservices.CheckRegistration(r.Context(), token, h.s.UserID(local)); err != nil {
		return err
	}
	sess, err := h.s.Register(r.Context(), NewUser{Localpart: local, DeviceID: body.DeviceID,
		DeviceName: body.InitialDeviceDisplayName, InhibitLogin: body.InhibitLogin, RefreshToken: body.RefreshToken})
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, sess)
}

// KnownUser is UserExists, except that an unknown user in an application
// service's namespace is first asked about (the service may register it):
// used where a user is invited, as in Synapse.
func (s *Service) KnownUser(ctx context.Context, userID string) (bool, error) {
	exists, err := s.UserExists(ctx, userID)
	if err != nil || exists || s.appservices == nil {
		return exists, err
	}
	if !s.appservices.QueryUser(ctx, userID) {
		return false, nil
	}
	return s.UserExists(ctx, userID)
}

// loginAppservice is POST /login with type m.login.application_service: a
// service logs in (gets a device and token for) an existing user of its
// user namespace; the as_token is the authentication, so no password and
// no failed-login limits.
func (h *handlers) loginAppservice(w http.ResponseWriter, r *http.Request, body loginBody) error {
	token := TokenFromRequest(r)
	if token == "" {
		return mxhttp.MissingToken()
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
	if err := h.s.appservices.CheckRegistration(r.Context(), token, userID); err != nil {
		var me *mxhttp.Error
		if errors.As(err, &me) && me.Code == "M_EXCLUSIVE" {
			return mxhttp.Forbidden("%s is not in the application service's user namespace", userID)
		}
		return err
	}
	exists, err := h.s.UserExists(r.Context(), userID)
	if err != nil {
		return err
	}
	if !exists {
		return mxhttp.Forbidden("Invalid username")
	}
	sess, err := h.s.CreateSession(r.Context(), userID, body.DeviceID, body.InitialDeviceDisplayName, body.RefreshToken)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, 200, sess)
}
