package rooms

import (
	"context"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/ratelimit"
)

// Limits are the rc_* limits room actions apply besides rc_message. A nil
// limiter allows everything.
type Limits struct {
	JoinsLocal       *ratelimit.Limiter // rc_joins.local, per joining user
	JoinsRemote      *ratelimit.Limiter // rc_joins.remote, per user joining through another server
	JoinsPerRoom     *ratelimit.Limiter // rc_joins_per_room, per room
	InvitesPerRoom   *ratelimit.Limiter // rc_invites.per_room, per room (per creator for createRoom's invite list, as Synapse)
	InvitesPerUser   *ratelimit.Limiter // rc_invites.per_user, per invited user
	InvitesPerIssuer *ratelimit.Limiter // rc_invites.per_issuer, per inviting user
	RoomCreation     *ratelimit.Limiter // rc_room_creation, per user
	// AdminRedaction is rc_admin_redaction; nil when unset, and then
	// admins' redactions are treated like their other events.
	AdminRedaction *ratelimit.Limiter
}

// SetLimits installs the limits; the zero Limits (the default) limits
// nothing.
func (s *Service) SetLimits(l Limits) { s.limits = l }

// take is n actions against one limiter's bucket for key.
type take struct {
	l   *ratelimit.Limiter
	key string
	n   int
}

// takeAll takes every action or none: all buckets are checked first, so a
// request refused by one limit does not use up another.
func takeAll(ts ...take) error {
	var wait time.Duration
	refused := false
	for _, t := range ts {
		if ok, w := t.l.PeekN(t.key, t.n); !ok {
			refused = true
			wait = max(wait, w)
		}
	}
	if !refused {
		for _, t := range ts {
			if ok, w := t.l.AllowN(t.key, t.n); !ok {
				// Lost a race with a concurrent request since the peek.
				refused = true
				wait = max(wait, w)
			}
		}
	}
	if refused {
		return mxhttp.LimitExceeded(wait.Milliseconds() + 1)
	}
	return nil
}

// checkEventRate applies rc_message, except that a server admin's
// redactions fall under rc_admin_redaction when that is set, as in Synapse.
func (s *Service) checkEventRate(req *accounts.Requester, evType string) error {
	if req.RateLimitExempt {
		return nil
	}
	if evType == "m.room.redaction" && req.Admin && s.limits.AdminRedaction != nil {
		return takeAll(take{s.limits.AdminRedaction, req.UserID, 1})
	}
	return s.checkMessageRate(req)
}

// checkMembershipRate applies the join and invite limits to a membership
// change. A join by a user already in the room (a profile refresh) is not
// a join for the limits, as in Synapse.
func (s *Service) checkMembershipRate(ctx context.Context, req *accounts.Requester, roomID string, ch MembershipChange) error {
	if req.RateLimitExempt {
		return nil
	}
	switch ch.Membership {
	case "join":
		if ch.Target != req.UserID {
			return nil
		}
		cur, _, err := s.store.Membership(ctx, roomID, ch.Target)
		if err != nil {
			return err
		}
		if cur == "join" {
			return nil
		}
		return takeAll(take{s.limits.JoinsPerRoom, roomID, 1}, take{s.limits.JoinsLocal, req.UserID, 1})
	case "invite":
		return takeAll(take{s.limits.InvitesPerRoom, roomID, 1}, take{s.limits.InvitesPerUser, ch.Target, 1},
			take{s.limits.InvitesPerIssuer, req.UserID, 1})
	}
	return nil
}

// checkCreateRate applies rc_room_creation, and rc_invites.per_room to the
// invite list as one batch keyed by the creator (the room has no id yet),
// as Synapse does.
func (s *Service) checkCreateRate(req *accounts.Requester, invites int) error {
	if req.RateLimitExempt {
		return nil
	}
	return takeAll(take{s.limits.RoomCreation, req.UserID, 1}, take{s.limits.InvitesPerRoom, req.UserID, invites})
}
