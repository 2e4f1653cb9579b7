// Package fedproxy is outbound_federation_restricted_to (Synapse 1.88+):
// only the named instances talk to other servers; every other process
// hands its federation requests to one of them over HTTP replication,
// authenticated with worker_replication_secret, and gets the answer back.
// Synapse does this with an HTTP proxy on the replication listener; here it
// is a replication endpoint, so the secret check, retries of unreachable
// instances and the instance_map lookup are the replication RPC's.
//
// The request is built and signed by the process that makes it (every
// process has the server's signing key); the proxy only resolves the
// destination, connects with its own IP range blacklist, whitelist and
// certificate checks, and returns the status and body it got.
package fedproxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/federation/client"
	"ganglion/internal/mxhttp"
	"ganglion/internal/replication"
)

// Endpoint is the proxy's replication endpoint. It is not idempotent and
// not retried after a timeout: a federation PUT may not be safe to send
// twice from the proxy's side of things (the destination deduplicates
// transactions, but not every endpoint).
var Endpoint = replication.Endpoint{Name: "federation_proxy"}

// result is the endpoint's answer: the destination's response, or why
// there was none. Failures to reach the destination travel in the body,
// not as an HTTP error of the replication call, which the caller would
// take for the proxy being down and retry.
type result struct {
	Response *client.ProxiedResponse `json:"response,omitempty"`
	Error    string                  `json:"error,omitempty"`
}

// Forwarder is what the proxy sends with (the federation client).
type Forwarder interface {
	Forward(ctx context.Context, req client.ProxiedRequest) (*client.ProxiedResponse, error)
}

// Serve registers the endpoint on a proxy instance.
func Serve(srv *replication.Server, f Forwarder) {
	e := Endpoint
	e.Handle = func(ctx context.Context, req *replication.Request) (any, error) {
		var pr client.ProxiedRequest
		if err := json.Unmarshal(req.Body, &pr); err != nil {
			return nil, mxhttp.BadJSON("federation_proxy: %v", err)
		}
		if pr.Method == "" || pr.Destination == "" || pr.Path == "" {
			return nil, mxhttp.MissingParam("federation_proxy needs method, destination and path")
		}
		resp, err := f.Forward(ctx, pr)
		if err != nil {
			return result{Error: err.Error()}, nil
		}
		return result{Response: resp}, nil
	}
	srv.Register(e)
}

// Caller is the replication client.
type Caller interface {
	Call(ctx context.Context, instance string, e replication.Endpoint, args map[string]string, body any, out any,
		opts ...replication.CallOption) error
}

// Via sends requests through the proxy instances: each destination to
// one of them (by the senders' shard hash, so a destination's
// connections stay on one proxy), the others in turn when it is down.
type Via struct {
	rpc     Caller
	proxies []string
}

// NewVia builds the client side over the named instances
// (outbound_federation_restricted_to).
func NewVia(rpc Caller, proxies []string) *Via {
	return &Via{rpc: rpc, proxies: proxies}
}

// ErrProxy wraps a destination failure the proxy reported.
var ErrProxy = errors.New("outbound federation proxy could not reach the destination")

// Forward implements client.Proxy.
func (v *Via) Forward(ctx context.Context, req client.ProxiedRequest) (*client.ProxiedResponse, error) {
	first := config.ShardFor(v.proxies, req.Destination)
	order := []string{first}
	for _, p := range v.proxies {
		if p != first {
			order = append(order, p)
		}
	}
	// The request's own timeout, plus room for the two hops.
	budget := time.Duration(req.TimeoutMS)*time.Millisecond + 10*time.Second
	var errs []error
	for _, p := range order {
		var out result
		err := v.rpc.Call(ctx, p, Endpoint, nil, req, &out, replication.WithBudget(budget),
			replication.WithAttemptTimeout(budget), replication.WithoutTimeoutRetry(), replication.WithStreamPositions())
		if errors.Is(err, replication.ErrUnavailable) {
			errs = append(errs, fmt.Errorf("proxy %s: %w", p, err))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("proxy %s: %w", p, err)
		}
		if out.Response == nil {
			return nil, fmt.Errorf("%w (via %s): %s", ErrProxy, p, out.Error)
		}
		return out.Response, nil
	}
	return nil, errors.Join(errs...)
}
