package keys

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"sync"
	"time"
)

// statusError is an error carrying the HTTP status another server
// answered (the federation client's HTTPError has StatusCode).
type statusError interface{ StatusCode() int }

// remoteFailureOf is a failures entry for a server that could not answer,
// as Synapse writes it: the status it answered, else 503.
func remoteFailureOf(err error) json.RawMessage {
	status := 503
	var se statusError
	if errors.As(err, &se) && se.StatusCode() > 0 {
		status = se.StatusCode()
	}
	b, _ := json.Marshal(map[string]any{"status": status, "message": err.Error()})
	return b
}

// byServer groups user ids by their server, servers sorted.
func byServer[V any](users map[string]V) (servers []string, grouped map[string]map[string]V) {
	grouped = map[string]map[string]V{}
	for u, v := range users {
		srv := serverOf(u)
		if grouped[srv] == nil {
			grouped[srv] = map[string]V{}
			servers = append(servers, srv)
		}
		grouped[srv][u] = v
	}
	sort.Strings(servers)
	return servers, grouped
}

// remoteQueryAnswer is the body of a user/keys/query answer.
type remoteQueryAnswer struct {
	DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
	MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
	SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
}

// queryRemote answers the remote users of a /keys/query. Users whose list
// we follow and is fresh are answered from the cache (returned in
// fromCache, for the caller's cache read); the others' servers are asked
// in parallel, each within timeout. A server that fails is listed in
// failures, except that its users with cached devices are answered from
// the cache.
func (s *Service) queryRemote(ctx context.Context, remote map[string][]string, timeout time.Duration, res *QueryResult) (fromCache []string, err error) {
	users := make([]string, 0, len(remote))
	for u := range remote {
		users = append(users, u)
	}
	fresh, err := s.followedFresh(ctx, users)
	if err != nil {
		return nil, err
	}
	ask := map[string][]string{}
	for u, devices := range remote {
		if fresh[u] {
			fromCache = append(fromCache, u)
		} else {
			ask[u] = devices
		}
	}
	servers, grouped := byServer(ask)
	answers, errs := askEach[remoteQueryAnswer](ctx, servers, timeout, func(ctx context.Context, srv string, out *remoteQueryAnswer) error {
		return s.fed.SignedPostJSON(ctx, srv, "/_matrix/federation/v1/user/keys/query", map[string]any{"device_keys": grouped[srv]}, out)
	})
	for i, srv := range servers {
		if errs[i] != nil {
			s.log.Info("remote key query failed", "server", srv, "err", errs[i])
			asked := make([]string, 0, len(grouped[srv]))
			for u := range grouped[srv] {
				asked = append(asked, u)
			}
			cached, err := s.hasCachedDevices(ctx, asked)
			if err != nil {
				return nil, err
			}
			for _, u := range asked {
				if cached[u] {
					fromCache = append(fromCache, u)
				} else {
					res.Failures[srv] = remoteFailureOf(errs[i])
				}
			}
			continue
		}
		s.takeQueryAnswer(ctx, grouped[srv], answers[i], res)
	}
	sort.Strings(fromCache)
	return fromCache, nil
}

// takeQueryAnswer copies what a server said about the users it was asked
// about (and only those) into res, checking each key names its owner, and
// caches it for when the server is unreachable.
func (s *Service) takeQueryAnswer(ctx context.Context, asked map[string][]string, a remoteQueryAnswer, res *QueryResult) {
	for u := range asked {
		devices := map[string]json.RawMessage{}
		for deviceID, raw := range a.DeviceKeys[u] {
			if _, _, err := RemoteDeviceKeys(raw, u, deviceID); err != nil {
				s.log.Info("ignoring remote device keys", "user_id", u, "err", err)
				continue
			}
			devices[deviceID] = raw
		}
		res.DeviceKeys[u] = devices
		cs := s.remoteCrossSigning(u, map[string]json.RawMessage{KeyMaster: a.MasterKeys[u], KeySelfSigning: a.SelfSigningKeys[u]})
		if k := a.MasterKeys[u]; cs[KeyMaster] != nil {
			res.MasterKeys[u] = k
		}
		if k := a.SelfSigningKeys[u]; cs[KeySelfSigning] != nil {
			res.SelfSigningKeys[u] = k
		}
		if err := s.fillCache(ctx, u, devices, cs); err != nil {
			s.log.Warn("cache remote device keys", "user_id", u, "err", err)
		}
	}
}

// claimRemote claims one-time keys of remote users from their servers, in
// parallel, each within timeout; a server that fails is listed in
// failures. One-time keys are never cached: each is handed out once.
func (s *Service) claimRemote(ctx context.Context, remote map[string]map[string]string, timeout time.Duration, res *ClaimResult) {
	servers, grouped := byServer(remote)
	type answer struct {
		OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
	}
	answers, errs := askEach[answer](ctx, servers, timeout, func(ctx context.Context, srv string, out *answer) error {
		return s.fed.SignedPostJSON(ctx, srv, "/_matrix/federation/v1/user/keys/claim", map[string]any{"one_time_keys": grouped[srv]}, out)
	})
	for i, srv := range servers {
		if errs[i] != nil {
			s.log.Info("remote key claim failed", "server", srv, "err", errs[i])
			res.Failures[srv] = remoteFailureOf(errs[i])
			continue
		}
		for u, devices := range grouped[srv] {
			for deviceID := range devices {
				if k, ok := answers[i].OneTimeKeys[u][deviceID]; ok && len(k) > 0 {
					if res.OneTimeKeys[u] == nil {
						res.OneTimeKeys[u] = map[string]map[string]json.RawMessage{}
					}
					res.OneTimeKeys[u][deviceID] = k
				}
			}
		}
	}
}

// askEach asks every server at once, each within timeout, and returns
// the answers and errors in the servers' order: one slow or dead server
// costs the request its timeout, not the sum of them.
func askEach[T any](ctx context.Context, servers []string, timeout time.Duration, ask func(ctx context.Context, srv string, out *T) error) ([]T, []error) {
	answers := make([]T, len(servers))
	errs := make([]error, len(servers))
	var wg sync.WaitGroup
	for i, srv := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			errs[i] = ask(cctx, srv, &answers[i])
		}()
	}
	wg.Wait()
	return answers, errs
}
