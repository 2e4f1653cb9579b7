// Package queries answers client API requests about other servers' users
// and aliases by asking those servers: GET /profile of a remote user
// (federation query/profile) and GET /directory/room of a remote alias
// (query/directory). Errors come back as the client's answers, as
// Synapse gives them: the remote server's 4xx (404 M_NOT_FOUND when it
// has no such user or alias), 502 when it cannot be reached or fails, 504
// when it does not answer in time.
package queries

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
)

// Federation is the signed outbound client (*client.Client).
type Federation interface {
	SignedGetJSON(ctx context.Context, destination, path string, out any) error
}

// DefaultTimeout bounds one query: a client is waiting.
const DefaultTimeout = 15 * time.Second

// Queries asks other servers.
type Queries struct {
	fed     Federation
	timeout time.Duration
}

// New builds the queries over fed; timeout 0 means DefaultTimeout.
func New(fed Federation, timeout time.Duration) *Queries {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Queries{fed: fed, timeout: timeout}
}

var (
	_ accounts.RemoteProfiles = (*Queries)(nil)
	_ rooms.RemoteDirectory   = (*Queries)(nil)
)

// RemoteProfile implements accounts.RemoteProfiles.
func (q *Queries) RemoteProfile(ctx context.Context, userID string) (*accounts.Profile, error) {
	_, server, ok := accounts.SplitUserID(userID)
	if !ok {
		return nil, mxhttp.InvalidParam("Invalid user id")
	}
	ctx, cancel := context.WithTimeout(ctx, q.timeout)
	defer cancel()
	var p accounts.Profile
	err := q.fed.SignedGetJSON(ctx, server, "/_matrix/federation/v1/query/profile?user_id="+url.QueryEscape(userID), &p)
	if err != nil {
		return nil, clientError(err, "Profile not found", "Failed to fetch profile")
	}
	return &p, nil
}

// RemoteAlias implements rooms.RemoteDirectory.
func (q *Queries) RemoteAlias(ctx context.Context, alias string) (string, []string, error) {
	server := ""
	for i := 1; i < len(alias); i++ {
		if alias[i] == ':' {
			server = alias[i+1:]
			break
		}
	}
	if alias == "" || alias[0] != '#' || server == "" {
		return "", nil, mxhttp.InvalidParam("Invalid room alias %q", alias)
	}
	ctx, cancel := context.WithTimeout(ctx, q.timeout)
	defer cancel()
	var ans struct {
		RoomID  string   `json:"room_id"`
		Servers []string `json:"servers"`
	}
	err := q.fed.SignedGetJSON(ctx, server, "/_matrix/federation/v1/query/directory?room_alias="+url.QueryEscape(alias), &ans)
	if err != nil {
		return "", nil, clientError(err, fmt.Sprintf("Room alias %s not found", alias), "Failed to fetch alias")
	}
	if ans.RoomID == "" || ans.RoomID[0] != '!' {
		return "", nil, mxhttp.WithCode(http.StatusBadGateway, "M_UNKNOWN", "Failed to fetch alias: %s answered no room id", server)
	}
	if ans.Servers == nil {
		ans.Servers = []string{server}
	}
	return ans.RoomID, ans.Servers, nil
}

// statusError is the federation client's *HTTPError.
type statusError interface {
	error
	StatusCode() int
}

// remoteErrcode is implemented by errors carrying the remote's errcode.
func remoteErrcode(err error) string {
	var e interface{ RemoteErrcode() string }
	if errors.As(err, &e) {
		return e.RemoteErrcode()
	}
	return ""
}

// clientError maps a failed query to the client's answer.
func clientError(err error, notFound, failed string) error {
	var se statusError
	switch {
	case errors.As(err, &se) && se.StatusCode() == http.StatusNotFound:
		return mxhttp.NotFound("%s", notFound)
	case errors.As(err, &se) && se.StatusCode() >= 400 && se.StatusCode() < 500:
		code := remoteErrcode(err)
		if code == "" {
			code = "M_UNKNOWN"
		}
		return mxhttp.WithCode(se.StatusCode(), code, "%s", failed)
	case errors.Is(err, context.DeadlineExceeded):
		return mxhttp.WithCode(http.StatusGatewayTimeout, "M_UNKNOWN", "%s: timed out", failed)
	}
	return mxhttp.WithCode(http.StatusBadGateway, "M_UNKNOWN", "%s", failed)
}
