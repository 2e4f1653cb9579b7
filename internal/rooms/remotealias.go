package rooms

import "context"

// RemoteDirectory resolves aliases of other servers (federation
// query/directory). The error is the client's answer: M_NOT_FOUND when the
// server has no such alias, 502 when it cannot be asked.
type RemoteDirectory interface {
	RemoteAlias(ctx context.Context, alias string) (roomID string, servers []string, err error)
}

// SetRemoteDirectory lets GET /directory/room/{alias} answer for other
// servers' aliases. Without it they are not found. Call before serving.
func (s *Service) SetRemoteDirectory(d RemoteDirectory) { s.remoteAliases = d }
