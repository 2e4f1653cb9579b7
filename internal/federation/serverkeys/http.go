package serverkeys

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"

	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
)

// Limits of one notary query: the batch form is unauthenticated, so what one
// request can make us fetch is bounded.
const (
	maxQueryServers  = 100
	maxQueryKeyIDs   = 500
	queryConcurrency = 8
	maxQueryBody     = 256 << 10
)

// Routes serves the key API: our keys (GET /_matrix/key/v2/server, and the
// deprecated /server/{keyId} form Synapse still answers, ignoring the key
// id) and the notary (POST /_matrix/key/v2/query, GET
// /_matrix/key/v2/query/{serverName}[/{keyId}]). Every worker can serve
// them: the answer is built from the config and the shared cache.
func (k *Keyring) Routes(mux *mxhttp.Mux, srv *mxhttp.Server) {
	server := srv.Handle(k.serveLocal)
	mux.Handle("GET "+PathServer, server)
	mux.Handle("GET "+PathServer+"/{$}", server)
	mux.Handle("GET "+PathServer+"/{keyID}", server)

	mux.Handle("POST "+PathQuery, srv.Handle(k.serveQueryBatch))
	get := srv.Handle(k.serveQueryOne)
	mux.Handle("GET "+PathQuery+"/{serverName}", get)
	mux.Handle("GET "+PathQuery+"/{serverName}/{$}", get)
	mux.Handle("GET "+PathQuery+"/{serverName}/{keyID}", get)
}

func (k *Keyring) serveLocal(w http.ResponseWriter, r *http.Request) error {
	body, err := k.local.Response()
	if err != nil {
		return mxhttp.Internal(err)
	}
	writeRawJSON(w, body)
	return nil
}

func writeRawJSON(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// KeyQuery is a parsed notary query: per server, the key ids asked for
// with their minimum_valid_until_ts (nil when not given); no key ids means
// every key.
type KeyQuery map[string]map[string]*int64

func (k *Keyring) serveQueryBatch(w http.ResponseWriter, r *http.Request) error {
	body, err := mxhttp.ReadBody(r, maxQueryBody)
	if err != nil {
		return err
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil || raw == nil {
		return mxhttp.NotJSON("Content not JSON")
	}
	var servers map[string]map[string]map[string]json.RawMessage
	if err := json.Unmarshal(raw["server_keys"], &servers); err != nil || servers == nil {
		return mxhttp.BadJSON("server_keys must map server names to objects of key ids")
	}
	if len(servers) > maxQueryServers {
		return mxhttp.BadJSON("server_keys names %d servers; at most %d per query", len(servers), maxQueryServers)
	}
	q := KeyQuery{}
	n := 0
	for server, keys := range servers {
		if !validServerName(server) {
			return mxhttp.BadJSON("server_keys: %q is not a server name", server)
		}
		q[server] = map[string]*int64{}
		for keyID, criteria := range keys {
			if n++; n > maxQueryKeyIDs {
				return mxhttp.BadJSON("server_keys asks for more than %d keys", maxQueryKeyIDs)
			}
			var min *int64
			if v, ok := criteria["minimum_valid_until_ts"]; ok && string(v) != "null" {
				var ts int64
				if err := json.Unmarshal(v, &ts); err != nil {
					return mxhttp.BadJSON("server_keys.%s.%s.minimum_valid_until_ts must be an integer", server, keyID)
				}
				min = &ts
			}
			q[server][keyID] = min
		}
	}
	return k.answerQuery(w, r, q)
}

func (k *Keyring) serveQueryOne(w http.ResponseWriter, r *http.Request) error {
	server := r.PathValue("serverName")
	if !validServerName(server) {
		return mxhttp.InvalidParam("%q is not a server name", server)
	}
	q := KeyQuery{server: {}}
	if keyID := r.PathValue("keyID"); keyID != "" {
		var min *int64
		if v := r.URL.Query().Get("minimum_valid_until_ts"); v != "" {
			ts, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return mxhttp.InvalidParam("minimum_valid_until_ts must be an integer")
			}
			min = &ts
		}
		q[server][keyID] = min
	}
	return k.answerQuery(w, r, q)
}

func (k *Keyring) answerQuery(w http.ResponseWriter, r *http.Request, q KeyQuery) error {
	answers, err := k.Query(r.Context(), q)
	if err != nil {
		return mxhttp.Internal(err)
	}
	// Each answer is already canonical and signed; splice them in rather
	// than decode and re-encode what the servers signed.
	var b strings.Builder
	b.WriteString(`{"server_keys":[`)
	for i, a := range answers {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(a)
	}
	b.WriteString(`]}`)
	writeRawJSON(w, []byte(b.String()))
	return nil
}

// Query answers a notary query: for each server, the cached answers holding
// the keys asked for, refetched first when missing or stale (older than the
// minimum_valid_until_ts asked for, or past half their life when none is
// given), each with our signature added. Our own keys come from Local.
// Servers whose keys cannot be had are left out, as the spec says.
func (k *Keyring) Query(ctx context.Context, q KeyQuery) ([][]byte, error) {
	servers := make([]string, 0, len(q))
	for s := range q {
		servers = append(servers, s)
	}
	sort.Strings(servers)
	results := make([][][]byte, len(servers))
	errs := make([]error, len(servers))
	sem := make(chan struct{}, queryConcurrency)
	var wg sync.WaitGroup
	for i, s := range servers {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			results[i], errs[i] = k.queryServer(ctx, s, q[s])
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	var out [][]byte
	for i, rs := range results {
		if errs[i] != nil {
			return nil, errs[i]
		}
		for _, raw := range rs {
			if seen[string(raw)] {
				continue
			}
			seen[string(raw)] = true
			signed, err := events.SignJSON(raw, k.local.ServerName(), k.local.SigningKey())
			if err != nil {
				return nil, fmt.Errorf("sign key answer of %s: %w", servers[i], err)
			}
			out = append(out, signed)
		}
	}
	return out, nil
}

// queryServer returns the answers (as stored) for one server of a query.
// Only database errors are errors: a server we cannot reach is left out.
func (k *Keyring) queryServer(ctx context.Context, server string, keys map[string]*int64) ([][]byte, error) {
	if server == k.local.ServerName() {
		body, err := k.local.Response()
		if err != nil {
			return nil, err
		}
		return [][]byte{body}, nil
	}
	now := k.opts.Now().UnixMilli()
	fresh := func(sk StoredKey, min *int64) bool {
		if min != nil {
			return sk.ResponseValidUntilTS >= *min
		}
		return (sk.AddedTS+sk.ResponseValidUntilTS)/2 >= now
	}
	if len(keys) == 0 {
		stored, err := k.store.Keys(ctx, server)
		if err != nil {
			return nil, err
		}
		anyFresh := false
		for _, sk := range stored {
			anyFresh = anyFresh || fresh(sk, nil)
		}
		if !anyFresh {
			if err := k.fetch(ctx, server, "", now); err != nil {
				k.log.Debug("notary: no fresh keys", "server", server, "err", err)
			}
			if stored, err = k.store.Keys(ctx, server); err != nil {
				return nil, err
			}
		}
		var out [][]byte
		for _, sk := range stored {
			out = append(out, sk.KeyJSON)
		}
		return out, nil
	}
	ids := make([]string, 0, len(keys))
	for id := range keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out [][]byte
	for _, id := range ids {
		sk, ok, err := k.store.Key(ctx, server, id)
		if err != nil {
			return nil, err
		}
		if !ok || !fresh(sk, keys[id]) {
			min := now
			if keys[id] != nil {
				min = *keys[id]
			}
			if err := k.fetch(ctx, server, id, min); err != nil {
				k.log.Debug("notary: could not refresh key", "server", server, "key_id", id, "err", err)
			}
			if sk, ok, err = k.store.Key(ctx, server, id); err != nil {
				return nil, err
			}
		}
		if ok {
			out = append(out, sk.KeyJSON)
		}
	}
	return out, nil
}

// validServerName applies the server name grammar loosely (hostname, IPv4
// or bracketed IPv6, optional port): enough to refuse what could not be a
// server before anything is fetched.
func validServerName(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(".-:[]", c) >= 0) {
			return false
		}
	}
	return true
}
