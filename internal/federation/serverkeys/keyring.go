package serverkeys

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// Notary is a trusted key server (an entry of trusted_key_servers).
type Notary struct {
	ServerName string
	// VerifyKeys sign the notary's answers; empty means its answers are
	// believed without checking its signature (TLS authenticates it), as
	// Synapse does. The origin's own signature is checked either way.
	VerifyKeys map[string]ed25519.PublicKey
}

// Options tune the keyring; zero values take the defaults noted.
type Options struct {
	// Getter fetches keys from servers directly; nil turns that off.
	Getter Getter
	// Poster queries the notaries; nil (or no Notaries) turns that off.
	Poster   Poster
	Notaries []Notary
	// FetchTimeout bounds one fetch of a server's keys over every source
	// (default 30s).
	FetchTimeout time.Duration
	// MinRefetchInterval: after a server answered, its keys are not fetched
	// again for this long (default 1m), so requests naming unknown key ids
	// cannot make us fetch once per request.
	MinRefetchInterval time.Duration
	// BackoffMin and BackoffMax bound the wait after a server (and every
	// notary) failed to give its keys: it starts at BackoffMin and doubles
	// per consecutive failure (defaults 30s and 1h).
	BackoffMin, BackoffMax time.Duration
	// CacheSize bounds the in-process key cache (default 4096 keys);
	// CacheTTL is how long an entry is believed before the database is
	// read again (default 10m), so a key another worker replaced is seen.
	CacheSize int
	CacheTTL  time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (o *Options) defaults() {
	if o.FetchTimeout <= 0 {
		o.FetchTimeout = 30 * time.Second
	}
	if o.MinRefetchInterval <= 0 {
		o.MinRefetchInterval = time.Minute
	}
	if o.BackoffMin <= 0 {
		o.BackoffMin = 30 * time.Second
	}
	if o.BackoffMax < o.BackoffMin {
		o.BackoffMax = max(time.Hour, o.BackoffMin)
	}
	if o.CacheSize <= 0 {
		o.CacheSize = 4096
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = 10 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// maxTrackedServers bounds the per-server fetch bookkeeping.
const maxTrackedServers = 10000

// Keyring finds servers' verification keys: ours from Local, others from
// the in-process cache, then the shared database, then (one fetch per
// server at a time, coalescing concurrent callers) the trusted notaries and
// the server itself, storing what they answer for every worker.
type Keyring struct {
	local *Local
	store *Store
	opts  Options
	log   *slog.Logger

	mu      sync.Mutex
	cache   map[cacheKey]cachedKey
	flights map[string]*flight
	servers map[string]*serverState

	// Fetches run detached from their callers; Close ends them (closing)
	// and waits for them (running), so none writes to a closed database.
	closeOnce sync.Once
	closing   chan struct{}
	running   sync.WaitGroup
}

type cacheKey struct{ server, keyID string }

type cachedKey struct {
	key        ed25519.PublicKey
	validUntil int64
	cachedAt   time.Time
}

// flight is one fetch of a server's keys in progress; err is set before
// done closes.
type flight struct {
	done    chan struct{}
	err     error
	waiters int // callers that joined the leader, for tests
}

type serverState struct {
	lastAnswer time.Time     // last time a source gave verified keys
	retryAt    time.Time     // no fetch before this, after failures
	wait       time.Duration // the current backoff step
}

var _ VerifyKeyFinder = (*Keyring)(nil)

// NewKeyring builds a keyring for the server local speaks for.
func NewKeyring(local *Local, store *Store, opts Options, log *slog.Logger) *Keyring {
	opts.defaults()
	return &Keyring{local: local, store: store, opts: opts, log: log, closing: make(chan struct{}),
		cache: map[cacheKey]cachedKey{}, flights: map[string]*flight{}, servers: map[string]*serverState{}}
}

// Close cancels the fetches in flight and waits for them to end (or for
// ctx). Lookups after Close fetch nothing.
func (k *Keyring) Close(ctx context.Context) error {
	// Under mu: fetch checks closing and adds to running under mu, so no
	// fetch starts once Wait may have begun.
	k.mu.Lock()
	k.closeOnce.Do(func() { close(k.closing) })
	k.mu.Unlock()
	done := make(chan struct{})
	go func() { k.running.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for server key fetches: %w", ctx.Err())
	}
}

// VerifyKey returns serverName's key keyID if it was valid at atTS (in
// milliseconds). atTS 0 accepts a key whatever its validity, which is what
// room versions 1–4 ask for (Synapse checks them at time 0); callers
// verifying events of later versions pass origin_server_ts, and request
// verifiers pass the current time.
func (k *Keyring) VerifyKey(ctx context.Context, serverName, keyID string, atTS int64) (ed25519.PublicKey, error) {
	if serverName == k.local.ServerName() {
		return k.local.verifyKey(keyID, atTS)
	}
	if serverName == "" || !strings.HasPrefix(keyID, "ed25519:") {
		return nil, fmt.Errorf("%w: key %q of %q: unsupported", ErrKeyNotFound, keyID, serverName)
	}
	if c, ok := k.cached(serverName, keyID); ok && c.validUntil >= atTS {
		return c.key, nil
	}
	have, found, err := k.load(ctx, serverName, keyID)
	if err != nil {
		return nil, err
	}
	if found && have.ValidUntilTS >= atTS {
		return have.Key, nil
	}
	// Read the cache again whatever the fetch says: a source may have
	// answered (and been stored) while another failed.
	fetchErr := k.fetch(ctx, serverName, keyID, atTS)
	if ctxErr := ctx.Err(); ctxErr != nil {
		return nil, fmt.Errorf("find key %s of %s: %w", keyID, serverName, ctxErr)
	}
	if have, found, err = k.load(ctx, serverName, keyID); err != nil {
		return nil, err
	}
	if found && have.ValidUntilTS >= atTS {
		return have.Key, nil
	}
	if found {
		return nil, fmt.Errorf("%w: key %s of %s is valid until %d, not at %d (refetch: %v)",
			ErrKeyNotValid, keyID, serverName, have.ValidUntilTS, atTS, fetchErr)
	}
	if fetchErr != nil {
		return nil, fmt.Errorf("%w: key %s of %s: %w", ErrKeyNotFound, keyID, serverName, fetchErr)
	}
	return nil, fmt.Errorf("%w: %s does not list key %s", ErrKeyNotFound, serverName, keyID)
}

func (k *Keyring) cached(server, keyID string) (cachedKey, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, ok := k.cache[cacheKey{server, keyID}]
	if ok && k.opts.Now().Sub(c.cachedAt) > k.opts.CacheTTL {
		delete(k.cache, cacheKey{server, keyID})
		return cachedKey{}, false
	}
	return c, ok
}

// load reads the shared cache and remembers what it found in process.
func (k *Keyring) load(ctx context.Context, server, keyID string) (StoredKey, bool, error) {
	sk, ok, err := k.store.Key(ctx, server, keyID)
	if err != nil || !ok {
		return sk, ok, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.cache) >= k.opts.CacheSize {
		// Drop an arbitrary entry: a miss costs one indexed read.
		for ck := range k.cache {
			delete(k.cache, ck)
			break
		}
	}
	k.cache[cacheKey{server, keyID}] = cachedKey{key: sk.Key, validUntil: sk.ValidUntilTS, cachedAt: k.opts.Now()}
	return sk, true, nil
}

// errNoFetch: the keyring was not given a way to fetch keys.
var errNoFetch = errors.New("no key sources configured")

// fetch gets server's keys from the sources unless that is pointless right
// now (backoff after failures, or an answer moments ago), joining a fetch
// already in flight for the server. The fetch itself runs detached from
// ctx, bounded by FetchTimeout, so that a caller giving up does not fail
// the others waiting for it; the caller stops waiting when ctx ends.
func (k *Keyring) fetch(ctx context.Context, server, keyID string, minValid int64) error {
	if k.opts.Getter == nil && (k.opts.Poster == nil || len(k.opts.Notaries) == 0) {
		return errNoFetch
	}
	k.mu.Lock()
	f := k.flights[server]
	if f == nil {
		select {
		case <-k.closing:
			k.mu.Unlock()
			return errors.New("keyring closed")
		default:
		}
		now := k.opts.Now()
		if st := k.servers[server]; st != nil {
			if now.Before(st.retryAt) {
				k.mu.Unlock()
				return fmt.Errorf("fetching keys of %s failed recently; next attempt after %s", server, st.retryAt.UTC().Format(time.RFC3339))
			}
			if !st.lastAnswer.IsZero() && now.Sub(st.lastAnswer) < k.opts.MinRefetchInterval {
				k.mu.Unlock()
				return fmt.Errorf("keys of %s were fetched %s ago", server, now.Sub(st.lastAnswer).Round(time.Millisecond))
			}
		}
		f = &flight{done: make(chan struct{})}
		k.flights[server] = f
		k.running.Add(1)
		go k.run(context.WithoutCancel(ctx), f, server, keyID, minValid)
	} else {
		f.waiters++
	}
	k.mu.Unlock()
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (k *Keyring) run(ctx context.Context, f *flight, server, keyID string, minValid int64) {
	defer k.running.Done()
	ctx, cancel := context.WithTimeout(ctx, k.opts.FetchTimeout)
	go func() {
		select {
		case <-k.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	answered, err := k.fetchFromSources(ctx, server, keyID, minValid)
	cancel()
	k.mu.Lock()
	delete(k.flights, server)
	st := k.servers[server]
	if st == nil {
		k.pruneServersLocked()
		st = &serverState{}
		k.servers[server] = st
	}
	now := k.opts.Now()
	if answered {
		st.lastAnswer, st.retryAt, st.wait = now, time.Time{}, 0
	} else {
		st.wait = min(max(2*st.wait, k.opts.BackoffMin), k.opts.BackoffMax)
		st.retryAt = now.Add(st.wait)
	}
	f.err = err
	wait := st.wait
	k.mu.Unlock()
	if !answered {
		k.log.Warn("could not fetch server keys", "server", server, "key_id", keyID, "retry_in", wait, "err", err)
	}
	close(f.done)
}

// pruneServersLocked forgets servers whose bookkeeping no longer matters
// (no backoff pending, last answer long ago) once there are too many.
func (k *Keyring) pruneServersLocked() {
	if len(k.servers) < maxTrackedServers {
		return
	}
	now := k.opts.Now()
	for s, st := range k.servers {
		if now.After(st.retryAt) && now.Sub(st.lastAnswer) > k.opts.MinRefetchInterval {
			delete(k.servers, s)
		}
	}
}

// fetchFromSources asks the notaries in order, then the server itself, as
// Synapse does, stopping at the first that gives keyID valid at minValid
// (keyID "" means any answer will do). answered reports whether any source
// gave verified keys; err says why the others did not.
func (k *Keyring) fetchFromSources(ctx context.Context, server, keyID string, minValid int64) (answered bool, err error) {
	var errs []error
	if k.opts.Poster != nil {
		for _, n := range k.opts.Notaries {
			rs, err := k.queryNotary(ctx, n, server, keyID, minValid)
			if err != nil {
				errs = append(errs, fmt.Errorf("notary %s: %w", n.ServerName, err))
				continue
			}
			answered = true
			if satisfies(rs, keyID, minValid) {
				return true, nil
			}
		}
	}
	if k.opts.Getter != nil {
		r, err := k.fetchDirect(ctx, server)
		if err != nil {
			errs = append(errs, fmt.Errorf("direct: %w", err))
		} else {
			answered = true
			if satisfies([]*Response{r}, keyID, minValid) {
				return true, nil
			}
		}
	}
	if len(errs) == 0 {
		return answered, nil
	}
	return answered, errors.Join(errs...)
}

// satisfies reports whether the answers hold keyID valid at minValid.
func satisfies(rs []*Response, keyID string, minValid int64) bool {
	for _, r := range rs {
		if keyID == "" {
			return true
		}
		if _, ok := r.VerifyKeys[keyID]; ok && r.ValidUntilTS >= minValid {
			return true
		}
		if old, ok := r.OldVerifyKeys[keyID]; ok && old.ExpiredTS >= minValid {
			return true
		}
	}
	return false
}

// fetchDirect asks the server for its keys and stores a verified answer.
func (k *Keyring) fetchDirect(ctx context.Context, server string) (*Response, error) {
	var raw json.RawMessage
	if err := k.opts.Getter.GetJSON(ctx, server, PathServer, &raw); err != nil {
		return nil, fmt.Errorf("get %s from %s: %w", PathServer, server, err)
	}
	r, err := ParseResponse(raw)
	if err != nil {
		return nil, err
	}
	if r.ServerName != server {
		return nil, fmt.Errorf("%w: %s answered for %q", ErrBadResponse, server, r.ServerName)
	}
	if err := r.CheckSelfSigned(); err != nil {
		return nil, err
	}
	if err := k.store.Put(ctx, r, server, k.opts.Now().UnixMilli()); err != nil {
		return nil, err
	}
	return r, nil
}

type notaryQuery struct {
	ServerKeys map[string]map[string]notaryCriteria `json:"server_keys"`
}

type notaryCriteria struct {
	MinimumValidUntilTS int64 `json:"minimum_valid_until_ts"`
}

// queryNotary asks notary n for server's keys, keeping (and storing) the
// answers about server that carry both the notary's signature (when its
// keys are configured) and the server's own.
func (k *Keyring) queryNotary(ctx context.Context, n Notary, server, keyID string, minValid int64) ([]*Response, error) {
	q := notaryQuery{ServerKeys: map[string]map[string]notaryCriteria{server: {}}}
	if keyID != "" {
		q.ServerKeys[server][keyID] = notaryCriteria{MinimumValidUntilTS: minValid}
	}
	var resp struct {
		ServerKeys []json.RawMessage `json:"server_keys"`
	}
	if err := k.opts.Poster.PostJSON(ctx, n.ServerName, PathQuery, q, &resp); err != nil {
		return nil, fmt.Errorf("post %s: %w", PathQuery, err)
	}
	var out []*Response
	var errs []error
	for _, raw := range resp.ServerKeys {
		r, err := ParseResponse(raw)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if r.ServerName != server {
			errs = append(errs, fmt.Errorf("%w: asked about %s, answered about %q", ErrBadResponse, server, r.ServerName))
			continue
		}
		if len(n.VerifyKeys) > 0 {
			if err := checkSignedBy(r.Raw, n.ServerName, n.VerifyKeys); err != nil {
				errs = append(errs, fmt.Errorf("notary signature: %w", err))
				continue
			}
		}
		if err := r.CheckSelfSigned(); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := k.store.Put(ctx, r, n.ServerName, k.opts.Now().UnixMilli()); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if len(out) == 0 {
		if len(errs) == 0 {
			return nil, fmt.Errorf("%w: no keys of %s in the answer", ErrKeyNotFound, server)
		}
		return nil, errors.Join(errs...)
	}
	return out, nil
}
