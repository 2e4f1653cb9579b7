package accounts

import (
	"context"

	"ganglion/internal/mxhttp"
)

// RemoteProfiles fetches profiles of other servers' users (federation
// query/profile). The error is the client's answer: M_NOT_FOUND when the
// server says the user has none, 502 when the server cannot be asked.
type RemoteProfiles interface {
	RemoteProfile(ctx context.Context, userID string) (*Profile, error)
}

// SetRemoteProfiles lets GET /profile answer for other servers' users.
// Without it they are not found. Call before serving.
func (s *Service) SetRemoteProfiles(r RemoteProfiles) { s.remoteProfiles = r }

func (s *Service) remoteProfile(ctx context.Context, userID string) (*Profile, error) {
	if s.remoteProfiles == nil {
		return nil, mxhttp.NotFound("Profile not found")
	}
	return s.remoteProfiles.RemoteProfile(ctx, userID)
}
