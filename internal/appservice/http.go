package appservice

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// Authenticator is how endpoints learn who is asking.
type Authenticator interface {
	Auth(h accounts.AuthedHandler) mxhttp.HandlerFunc
}

// Routes registers the client endpoints of application services: the
// ping (MSC2659, spec v1.7) and the third-party lookups proxied to the
// services that list a protocol.
func (s *Service) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, auth Authenticator) {
	mux.Handle("POST /_matrix/client/v1/appservice/{appserviceId}/ping", srv.Handle(auth.Auth(s.ping)))
	mux.HandleClient("GET", "/thirdparty/protocols", srv.Handle(auth.Auth(s.protocols)))
	mux.HandleClient("GET", "/thirdparty/protocol/{protocol}", srv.Handle(auth.Auth(s.protocol)))
	mux.HandleClient("GET", "/thirdparty/location/{protocol}", srv.Handle(auth.Auth(s.lookup("location", true))))
	mux.HandleClient("GET", "/thirdparty/user/{protocol}", srv.Handle(auth.Auth(s.lookup("user", true))))
	mux.HandleClient("GET", "/thirdparty/location", srv.Handle(auth.Auth(s.lookup("location", false))))
	mux.HandleClient("GET", "/thirdparty/user", srv.Handle(auth.Auth(s.lookup("user", false))))
}

// pingTimeout is how long the homeserver waits for the service's answer
// to a ping before answering M_CONNECTION_TIMEOUT.
const pingTimeout = 15 * time.Second

func (s *Service) ping(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	id := r.PathValue("appserviceId")
	if req.AppserviceID == "" || req.AppserviceID != id {
		return mxhttp.Forbidden("Only application service %s may ping itself", id)
	}
	var body struct {
		TransactionID string `json:"transaction_id"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	reg := s.byID[id]
	if reg.URL == "" {
		return mxhttp.WithCode(http.StatusBadRequest, "M_URL_NOT_SET", "Application service %s has no url", id)
	}
	ctx, cancel := context.WithTimeout(r.Context(), pingTimeout)
	defer cancel()
	out := map[string]any{}
	if body.TransactionID != "" {
		out["transaction_id"] = body.TransactionID
	}
	start := time.Now()
	_, err := s.client.do(ctx, reg, http.MethodPost, "/_matrix/app/v1/ping", nil, out)
	var se *StatusError
	var ne net.Error
	switch {
	case err == nil:
		return mxhttp.WriteJSON(w, 200, map[string]int64{"duration_ms": time.Since(start).Milliseconds()})
	case errors.As(err, &se):
		e := mxhttp.WithCode(http.StatusBadGateway, "M_BAD_STATUS", "Application service answered %d", se.Status)
		e.Extra = map[string]any{"status": se.Status, "body": string(se.Body)}
		return e
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		return mxhttp.WithCode(http.StatusGatewayTimeout, "M_CONNECTION_TIMEOUT", "Application service did not answer in time")
	default:
		return mxhttp.WithCode(http.StatusBadGateway, "M_CONNECTION_FAILED", "Could not reach the application service: %v", err)
	}
}

// protocols merges the protocol metadata of every service listing it;
// the instances of several services are concatenated.
func (s *Service) protocols(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	out := map[string]map[string]any{}
	for _, reg := range s.regs {
		for _, p := range reg.Protocols {
			if reg.URL == "" {
				continue
			}
			meta, ok := s.protocolOf(r.Context(), reg, p)
			if !ok {
				continue
			}
			if prev, ok := out[p]; ok {
				prevInst, _ := prev["instances"].([]any)
				inst, _ := meta["instances"].([]any)
				prev["instances"] = append(prevInst, inst...)
				continue
			}
			out[p] = meta
		}
	}
	return mxhttp.WriteJSON(w, 200, out)
}

func (s *Service) protocol(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	p := r.PathValue("protocol")
	var merged map[string]any
	for _, reg := range s.regs {
		if reg.URL == "" || !reg.HasProtocol(p) {
			continue
		}
		meta, ok := s.protocolOf(r.Context(), reg, p)
		if !ok {
			continue
		}
		if merged == nil {
			merged = meta
			continue
		}
		prevInst, _ := merged["instances"].([]any)
		inst, _ := meta["instances"].([]any)
		merged["instances"] = append(prevInst, inst...)
	}
	if merged == nil {
		return mxhttp.NotFound("Unknown protocol %s", p)
	}
	return mxhttp.WriteJSON(w, 200, merged)
}

func (s *Service) protocolOf(ctx context.Context, reg *Registration, p string) (map[string]any, bool) {
	qctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	b, err := s.client.do(qctx, reg, http.MethodGet, "/_matrix/app/v1/thirdparty/protocol/"+pathEscape(p), nil, nil)
	if err != nil {
		s.log.Info("application service protocol query failed", "appservice", reg.ID, "protocol", p, "err", err)
		return nil, false
	}
	var meta map[string]any
	if err := json.Unmarshal(b, &meta); err != nil || meta == nil {
		s.log.Info("application service sent bad protocol metadata", "appservice", reg.ID, "protocol", p, "err", err)
		return nil, false
	}
	if _, ok := meta["instances"].([]any); !ok {
		meta["instances"] = []any{}
	}
	return meta, true
}

// lookup proxies a third-party location or user lookup: with a protocol
// to the services listing it, without (by alias or user id) to every
// service; the answers' arrays are concatenated.
func (s *Service) lookup(kind string, withProtocol bool) accounts.AuthedHandler {
	return func(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
		p := r.PathValue("protocol")
		path := "/_matrix/app/v1/thirdparty/" + kind
		if withProtocol {
			path += "/" + pathEscape(p)
		}
		q := url.Values{}
		for k, v := range r.URL.Query() {
			if k != "access_token" {
				q[k] = v
			}
		}
		out := []any{}
		asked := false
		for _, reg := range s.regs {
			if reg.URL == "" || (withProtocol && !reg.HasProtocol(p)) {
				continue
			}
			asked = true
			qctx, cancel := context.WithTimeout(r.Context(), queryTimeout)
			b, err := s.client.do(qctx, reg, http.MethodGet, path, q, nil)
			cancel()
			if err != nil {
				s.log.Info("application service third-party lookup failed", "appservice", reg.ID, "kind", kind, "err", err)
				continue
			}
			var got []any
			if err := json.Unmarshal(b, &got); err != nil {
				s.log.Info("application service sent a bad third-party answer", "appservice", reg.ID, "kind", kind, "err", err)
				continue
			}
			out = append(out, got...)
		}
		if withProtocol && !asked {
			return mxhttp.NotFound("Unknown protocol %s", p)
		}
		return mxhttp.WriteJSON(w, 200, out)
	}
}
