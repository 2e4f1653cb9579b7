package appservice

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// Accounts is what the service needs from accounts.
type Accounts interface {
	UserExists(ctx context.Context, userID string) (bool, error)
	Device(ctx context.Context, userID, deviceID string) (*accounts.Device, error)
	Register(ctx context.Context, u accounts.NewUser) (accounts.Session, error)
}

// Service holds the registered application services of this process and
// answers the questions other domains ask about them (who a token is,
// whether a name is claimed). Every process has one; only the notifier
// instance also sends transactions (Notifier).
type Service struct {
	regs       []*Registration
	byASToken  map[string]*Registration
	byID       map[string]*Registration
	serverName string
	accounts   Accounts
	client     *Client
	log        *slog.Logger
}

var (
	_ accounts.Appservices = (*Service)(nil)
)

// NewService builds the service over loaded registrations.
func NewService(regs []*Registration, serverName string, acc Accounts, client *Client, log *slog.Logger) *Service {
	s := &Service{regs: regs, byASToken: map[string]*Registration{}, byID: map[string]*Registration{},
		serverName: serverName, accounts: acc, client: client, log: log}
	for _, r := range regs {
		s.byASToken[r.ASToken] = r
		s.byID[r.ID] = r
	}
	return s
}

// Registrations lists the services, by id.
func (s *Service) Registrations() []*Registration { return s.regs }

// EnsureSenderUsers creates each service's sender user if missing, so the
// service can act as itself from its first request. Run on the main
// process; a concurrent creation elsewhere is fine.
func (s *Service) EnsureSenderUsers(ctx context.Context) error {
	for _, r := range s.regs {
		uid := r.SenderUserID(s.serverName)
		exists, err := s.accounts.UserExists(ctx, uid)
		if err != nil {
			return err
		}
		if exists {
			continue
		}
		_, err = s.accounts.Register(ctx, accounts.NewUser{Localpart: r.SenderLocalpart, InhibitLogin: true})
		var me *mxhttp.Error
		if err != nil && !(errors.As(err, &me) && me.Code == "M_USER_IN_USE") {
			return err
		}
		s.log.Info("registered application service sender", "appservice", r.ID, "user_id", uid)
	}
	return nil
}

// Requester resolves an as_token. The service acts as its sender unless
// user_id names a user of its namespace (masquerading), and on a device of
// that user with MSC3202's device_id.
func (s *Service) Requester(ctx context.Context, r *http.Request, token string) (*accounts.Requester, bool, error) {
	reg := s.byASToken[token]
	if reg == nil {
		return nil, false, nil
	}
	q := r.URL.Query()
	userID := reg.SenderUserID(s.serverName)
	if as := q.Get("user_id"); as != "" && as != userID {
		if !reg.IsInterestedInUser(as, s.serverName) {
			return nil, true, mxhttp.Forbidden("Application service cannot masquerade as this user (%s)", as)
		}
		exists, err := s.accounts.UserExists(ctx, as)
		if err != nil {
			return nil, true, err
		}
		if !exists {
			return nil, true, mxhttp.Forbidden("Application service has not registered this user (%s)", as)
		}
		userID = as
	}
	req := &accounts.Requester{UserID: userID, AppserviceID: reg.ID, RateLimitExempt: !reg.RateLimited}
	device := q.Get("org.matrix.msc3202.device_id")
	if device == "" {
		device = q.Get("device_id")
	}
	if device != "" {
		d, err := s.accounts.Device(ctx, userID, device)
		if err != nil {
			return nil, true, err
		}
		if d == nil {
			return nil, true, mxhttp.WithCode(http.StatusBadRequest, "M_UNKNOWN_DEVICE",
				"Application service has no device %s for %s", device, userID)
		}
		req.DeviceID = device
	}
	return req, true, nil
}

func errExclusive(format string, args ...any) *mxhttp.Error {
	return mxhttp.WithCode(http.StatusBadRequest, "M_EXCLUSIVE", format, args...)
}

// CheckRegistration: see accounts.Appservices.
func (s *Service) CheckRegistration(ctx context.Context, asToken, userID string) error {
	if asToken == "" {
		for _, r := range s.regs {
			if matches(r.Users, userID, true) || userID == r.SenderUserID(s.serverName) {
				return errExclusive("%s is reserved by an application service", userID)
			}
		}
		return nil
	}
	reg := s.byASToken[asToken]
	if reg == nil {
		return mxhttp.UnknownToken(false)
	}
	if !reg.IsInterestedInUser(userID, s.serverName) {
		return errExclusive("%s is not in the user namespace of application service %s", userID, reg.ID)
	}
	return nil
}

// CheckAliasCreation refuses an alias a service claims exclusively to
// anyone but that service, and an alias outside its namespace to a service
// with an exclusive alias namespace of its own, as Synapse does.
func (s *Service) CheckAliasCreation(req *accounts.Requester, alias string) error {
	for _, r := range s.regs {
		if r.ID != req.AppserviceID && matches(r.Aliases, alias, true) {
			return errExclusive("%s is reserved by an application service", alias)
		}
	}
	if own := s.byID[req.AppserviceID]; own != nil && len(own.Aliases) > 0 && !own.IsInterestedInAlias(alias) {
		return errExclusive("This application service has not reserved %s", alias)
	}
	return nil
}

// queryTimeout bounds a user or alias query: a slow service must not hold
// a client's profile lookup or join for long.
const queryTimeout = 10 * time.Second

// QueryUser: see accounts.Appservices.
func (s *Service) QueryUser(ctx context.Context, userID string) bool {
	for _, r := range s.regs {
		if r.URL == "" || !matches(r.Users, userID, false) {
			continue
		}
		qctx, cancel := context.WithTimeout(ctx, queryTimeout)
		ok, err := s.client.Query(qctx, r, "/_matrix/app/v1/users/"+pathEscape(userID))
		cancel()
		if err != nil {
			s.log.Warn("application service user query failed", "appservice", r.ID, "user_id", userID, "err", err)
		}
		if ok {
			return true
		}
	}
	return false
}

// QueryAlias: see rooms.Appservices.
func (s *Service) QueryAlias(ctx context.Context, alias string) bool {
	for _, r := range s.regs {
		if r.URL == "" || !r.IsInterestedInAlias(alias) {
			continue
		}
		qctx, cancel := context.WithTimeout(ctx, queryTimeout)
		ok, err := s.client.Query(qctx, r, "/_matrix/app/v1/rooms/"+pathEscape(alias))
		cancel()
		if err != nil {
			s.log.Warn("application service alias query failed", "appservice", r.ID, "alias", alias, "err", err)
		}
		if ok {
			return true
		}
	}
	return false
}
