package e2e_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/config"
	"ganglion/internal/testutil"
	"ganglion/internal/testutil/testca"
)

// The two-homeserver federation harness: a fleet and a monolith with
// different server names, talking to each other over TLS on loopback with
// certificates from a CA the test makes.
//
// Server names are IP literals with explicit ports ("127.0.0.1:PORT" for the
// fleet, "127.0.0.2:PORT" for the monolith: distinct hosts for ACLs), so
// the spec's resolution connects to that address directly (no
// .well-known, no SRV, no DNS) and checks the certificate's IP SAN. The
// port behind each name is a gate the test holds: a listener in the test
// process that passes connections on and can be cut, as a network
// partition cuts them, without stopping either server.
//   - fleet: the gate terminates TLS (the router does not: "terminate TLS
//     in front of the router", as a deployment does with a load balancer)
//     and proxies to `ganglion route`, which sends federation traffic to
//     the two generic workers (inbound /send sticky by origin). Two
//     federation sender workers (fed1, fed2) and two event persisters.
//   - monolith: the gate is a plain TCP relay to the monolith's own TLS
//     listener (tls: true with the test CA's certificate), so TLS runs end
//     to end; the monolith restarts behind the same name on the same port
//     and database.
//
// Both trust only the test CA (federation_custom_ca_list), allow loopback
// (ip_range_whitelist; private ranges are denied by default) and retry
// a failed destination quickly (federation.destination_*_retry_interval).

// hostA and hostB are the hosts of the two server names: two loopback
// addresses, so that what matches a server name without its port (server
// ACLs) tells the servers apart.
const (
	hostA = "127.0.0.1"
	hostB = "127.0.0.2"
)

// fedSenders are the fleet's federation sender workers.
var fedSenders = []string{"fed1", "fed2"}

// fedServer is one homeserver of the pair.
type fedServer struct {
	*server
	name string // server_name, "127.0.0.1:PORT" (the gate's port)
	gate *fedGate
}

// userID is localpart's user id on this server.
func (s *fedServer) userID(localpart string) id.UserID { return id.NewUserID(localpart, s.name) }

// fedPair is the fleet (a) and the monolith (b).
type fedPair struct {
	ca   *testca.CA
	a, b *fedServer
	// n numbers the users, rooms and messages the suites make, so subtests
	// sharing the pair never collide.
	n atomic.Int64
}

// unique returns prefix with a number no other call returned.
func (p *fedPair) unique(prefix string) string { return fmt.Sprintf("%s%d", prefix, p.n.Add(1)) }

// federationOptions are the config options both servers get.
func federationOptions(caPath, name string) []configOption {
	return []configOption{
		withKey("server_name", name),
		withKey("federation_custom_ca_list", []string{caPath}),
		withKey("ip_range_whitelist", []string{hostA, hostB}),
		withKey("federation", map[string]any{
			"destination_min_retry_interval": "100ms",
			"destination_max_retry_interval": "500ms",
		}),
		// Remote profiles and directory queries are part of the suite.
		withKey("allow_profile_lookup_over_federation", true),
	}
}

// startFedPair starts the fleet and the monolith and waits until each has
// fetched the other's signing key over TLS through its gate (which proves
// names, certificates, the IP filter and both fronts are right before any
// suite runs).
func startFedPair(t *testing.T) *fedPair {
	t.Helper()
	p := &fedPair{ca: testca.New(t)}
	caPath := p.ca.WriteCA(t, t.TempDir())

	// The gates first: the server names carry their ports.
	gateA := newFedGate(t, hostA)
	gateB := newFedGate(t, hostB)

	// The monolith: its own TLS listener on a fixed loopback port (kept
	// across restarts), reached through gate B.
	certDir := t.TempDir()
	cert, key := p.ca.WriteServerCert(t, certDir, hostB)
	tlsPort := fleetPort(t)
	monoOpts := append(federationOptions(caPath, gateB.name),
		withKey("tls_certificate_path", cert),
		withKey("tls_private_key_path", key),
		func(cfg map[string]any) {
			l := httpListener(tlsPort, "federation", "keys")
			l["tls"] = true
			cfg["listeners"] = append(cfg["listeners"].([]any), l)
		})
	mono := startServer(t, engineSQLite, monoOpts...)
	gateB.relayTo(fmt.Sprintf("127.0.0.1:%d", tlsPort))
	p.b = &fedServer{server: mono, name: gateB.name, gate: gateB}

	// The fleet behind its router, the router behind gate A's TLS.
	fleetOpts := append(federationOptions(caPath, gateA.name),
		withKey("federation_sender_instances", fedSenders))
	f := startFleet(t, fleetOpts...)
	f.routerPools = map[string][]string{
		"federation":         clientWorkers(),
		"federation_inbound": clientWorkers(),
	}
	f.front = startFront(t, f, "router")
	gateA.serveTLS(t, p.ca.ServerTLS(t, hostA), f.front.url)
	p.a = &fedServer{
		server: &server{
			engine: engineFleetRouter,
			fleet:  f,
			url:    f.front.url,
			opts:   fleetOpts,
			http: &http.Client{Timeout: 30 * time.Second,
				Transport: settleFirst{f: f, base: http.DefaultTransport.(*http.Transport).Clone()}},
		},
		name: gateA.name,
		gate: gateA,
	}

	ctx := testContext(t)
	p.wantKeys(t, ctx, p.a, p.b)
	p.wantKeys(t, ctx, p.b, p.a)
	return p
}

// wantKeys checks that from, as a notary, serves of's signing key: from
// fetched it from of over TLS (through of's gate) and it is the key of
// publishes itself.
func (p *fedPair) wantKeys(t testing.TB, ctx context.Context, from, of *fedServer) {
	t.Helper()
	direct := of.do(t, ctx, http.MethodGet, "/_matrix/key/v2/server", "", nil)
	if direct.status != http.StatusOK {
		t.Fatalf("%s: GET /_matrix/key/v2/server: %d %s", of.name, direct.status, truncate(direct.body))
	}
	published := direct.object(t)
	if published["server_name"] != of.name {
		t.Fatalf("%s publishes keys for server_name %v", of.name, published["server_name"])
	}
	want, _ := published["verify_keys"].(map[string]any)
	if len(want) == 0 {
		t.Fatalf("%s publishes no verify_keys: %s", of.name, truncate(direct.body))
	}
	testutil.EventuallyState(t, 30*time.Second, func() (bool, string) {
		r := from.do(t, ctx, http.MethodGet, "/_matrix/key/v2/query/"+url.PathEscape(of.name), "", nil)
		if r.status != http.StatusOK {
			return false, fmt.Sprintf("%s's notary answers %d for %s: %s", from.name, r.status, of.name, truncate(r.body))
		}
		var keys []any
		if m := r.object(t); m != nil {
			keys, _ = m["server_keys"].([]any)
		}
		for _, k := range keys {
			sk, _ := k.(map[string]any)
			got, _ := sk["verify_keys"].(map[string]any)
			if sk["server_name"] != of.name {
				continue
			}
			for keyID, v := range want {
				if g, ok := got[keyID].(map[string]any); !ok || g["key"] != v.(map[string]any)["key"] {
					return false, fmt.Sprintf("%s's notary serves %v for %s, which publishes %v", from.name, got, of.name, want)
				}
			}
			sigs, _ := sk["signatures"].(map[string]any)
			if sigs[of.name] == nil {
				return false, fmt.Sprintf("%s's notary answer for %s lacks %s's own signature: %v", from.name, of.name, of.name, sk)
			}
			return true, ""
		}
		return false, fmt.Sprintf("%s's notary has no keys of %s: %s", from.name, of.name, truncate(r.body))
	})
}

// register creates localpart on s and returns a logged-in client.
func (s *fedServer) register(t testing.TB, ctx context.Context, localpart string) *mautrix.Client {
	t.Helper()
	c := s.client(t, "", "")
	resp, err := c.RegisterDummy(ctx, &mautrix.ReqRegister[any]{
		Username: localpart, Password: password(localpart), InitialDeviceDisplayName: "e2e " + localpart,
	})
	if err != nil {
		t.Fatalf("register %s on %s: %v", localpart, s.name, err)
	}
	if want := s.userID(localpart); resp.UserID != want {
		t.Fatalf("register %s on %s: user_id %q, want %q", localpart, s.name, resp.UserID, want)
	}
	c.SetCredentials(resp.UserID, resp.AccessToken)
	c.DeviceID = resp.DeviceID
	return c
}

// fedGate is the port of a server name. While open it passes connections
// on; cut closes every connection it passed and refuses (accepts and at
// once closes) new ones, so each side's federation requests fail as they
// do when the network between two servers breaks.
type fedGate struct {
	ln   net.Listener
	name string // 127.0.0.1:PORT

	mu       sync.Mutex
	closed   bool // cut
	conns    map[net.Conn]struct{}
	accepted int // connections accepted, cut or not: attempts to reach the server
}

func newFedGate(t *testing.T, host string) *fedGate {
	t.Helper()
	var ln net.Listener
	var err error
	for range 5 {
		// Below the ephemeral range: the name must stay this server's for
		// the whole test, and fleetPort's ports do not collide with the
		// fleets' own.
		if ln, err = net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(fleetPort(t)))); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("gate listener: %v", err)
	}
	g := &fedGate{ln: ln, name: ln.Addr().String(), conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() {
		_ = ln.Close()
		g.cut()
	})
	return g
}

// Accept is net.Listener's: it returns connections accepted while open.
func (g *fedGate) Accept() (net.Conn, error) {
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return nil, err
		}
		g.mu.Lock()
		g.accepted++
		if g.closed {
			g.mu.Unlock()
			_ = c.Close()
			continue
		}
		gc := &gateConn{Conn: c, g: g}
		g.conns[gc] = struct{}{}
		g.mu.Unlock()
		return gc, nil
	}
}

func (g *fedGate) Close() error   { return g.ln.Close() }
func (g *fedGate) Addr() net.Addr { return g.ln.Addr() }

// attempts is how many connections reached the gate so far.
func (g *fedGate) attempts() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.accepted
}

// cut partitions the server: open connections are closed, new ones
// refused.
func (g *fedGate) cut() {
	g.mu.Lock()
	g.closed = true
	conns := make([]net.Conn, 0, len(g.conns))
	for c := range g.conns {
		conns = append(conns, c)
	}
	g.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// heal opens the gate again.
func (g *fedGate) heal() {
	g.mu.Lock()
	g.closed = false
	g.mu.Unlock()
}

type gateConn struct {
	net.Conn
	g    *fedGate
	once sync.Once
}

func (c *gateConn) Close() error {
	c.once.Do(func() {
		c.g.mu.Lock()
		delete(c.g.conns, c)
		c.g.mu.Unlock()
	})
	return c.Conn.Close()
}

// relayTo passes each connection to target, byte for byte (TLS stays end
// to end). A target that is down (the monolith stopped) makes the
// connection close at once, as a refused connection would fail.
func (g *fedGate) relayTo(target string) {
	go func() {
		for {
			c, err := g.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
				<-done // either side closing ends both
			}()
		}
	}()
}

// serveTLS terminates TLS with cfg and proxies every request to backend
// (the router), keeping the Host header.
func (g *fedGate) serveTLS(t *testing.T, cfg *tls.Config, backend string) {
	t.Helper()
	u, err := url.Parse(backend)
	if err != nil {
		t.Fatal(err)
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host
			r.SetXForwarded()
		},
		// A cut connection mid-request is the test's doing; say so
		// quietly.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	srv := &http.Server{Handler: proxy, TLSConfig: cfg, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.ServeTLS(g, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
}

// partition cuts both servers off each other (and everyone else) until
// heal. Clients keep reaching each server on its own client port.
func (p *fedPair) partition() { p.a.gate.cut(); p.b.gate.cut() }

func (p *fedPair) heal() { p.a.gate.heal(); p.b.gate.heal() }

// senderOf is the fleet's federation sender worker that owns destination
// b (the seed's shard hash over federation_sender_instances).
func (p *fedPair) senderOf() string { return config.ShardFor(fedSenders, p.b.name) }

// stopB stops the monolith (an orderly shutdown). Its name keeps pointing
// at the gate, which now closes every connection at once.
func (p *fedPair) stopB(t testing.TB) { p.b.stop(t) }

// startB starts the monolith again on the same config, ports and database.
func (p *fedPair) startB(t testing.TB) {
	t.Helper()
	p.b.launch(t)
	p.b.http.CloseIdleConnections()
}

// fedContext bounds one federation subtest's requests: longer than
// testContext, as a subtest waits for several deliveries and outages.
func fedContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// ---- timelines --------------------------------------------------------------

// roomTimeline follows one client's /sync for one room and collects the
// m.room.message events of its timeline, in the order sync delivered them.
type roomTimeline struct {
	c    *mautrix.Client
	room id.RoomID
	s    *syncer
	msgs []*event.Event
	ids  map[id.EventID]int // copies seen
	// limited counts incremental syncs that said the timeline was
	// limited (events left out).
	limited int
}

// timelineFilter asks for long timelines, so the incremental syncs of a
// burst are never limited.
func timelineFilter(t testing.TB) string {
	return filterJSON(t, map[string]any{"room": map[string]any{"timeline": map[string]any{"limit": 500}}})
}

// followRoom starts following room as c: an initial sync, whose events are
// not collected; everything later is.
func followRoom(t testing.TB, ctx context.Context, c *mautrix.Client, room id.RoomID) *roomTimeline {
	t.Helper()
	s, _ := newSyncer(t, ctx, c, timelineFilter(t))
	return &roomTimeline{c: c, room: room, s: s, ids: map[id.EventID]int{}}
}

// pull does one incremental sync (a short long-poll) and collects.
func (rt *roomTimeline) pull(t testing.TB, ctx context.Context) *mautrix.RespSync {
	t.Helper()
	resp := rt.s.next(t, ctx, pollTimeout)
	if jr := resp.Rooms.Join[rt.room]; jr != nil {
		if jr.Timeline.Limited {
			rt.limited++
		}
		for _, ev := range jr.Timeline.Events {
			if ev.Type != event.EventMessage {
				continue
			}
			rt.ids[ev.ID]++
			rt.msgs = append(rt.msgs, ev)
		}
	}
	return resp
}

// bodies returns the bodies of collected messages that start with prefix,
// in order, duplicates included.
func (rt *roomTimeline) bodies(prefix string) []string {
	var out []string
	for _, ev := range rt.msgs {
		if b, _ := ev.Content.Raw["body"].(string); strings.HasPrefix(b, prefix) {
			out = append(out, b)
		}
	}
	return out
}

// waitFor pulls until every body of want was collected (or within
// passes), then checks each arrived exactly once; with ordered, also that
// they came in want's order.
func (rt *roomTimeline) waitFor(t testing.TB, ctx context.Context, within time.Duration, prefix string, want []string, ordered bool) {
	t.Helper()
	rt.waitArrived(t, ctx, within, prefix, want)
	// One more sync: a duplicate sent right behind the last original
	// would show up now.
	rt.pull(t, ctx)
	got := rt.bodies(prefix)
	counts := map[string]int{}
	for _, b := range got {
		counts[b]++
	}
	for b, n := range counts {
		if n != 1 {
			t.Errorf("%s: message %q arrived %d times", rt.c.UserID, b, n)
		}
		if !slices.Contains(want, b) {
			t.Errorf("%s: unexpected message %q", rt.c.UserID, b)
		}
	}
	if ordered && !slices.Equal(got, want) {
		t.Errorf("%s: messages %q… arrived as %q, want %q", rt.c.UserID, prefix, got, want)
	}
	for id, n := range rt.ids {
		if n != 1 {
			t.Errorf("%s: event %s arrived %d times", rt.c.UserID, id, n)
		}
	}
}

// waitArrived pulls until every body of want was collected, failing the
// test after within; it judges nothing else (waitFor does).
func (rt *roomTimeline) waitArrived(t testing.TB, ctx context.Context, within time.Duration, prefix string, want []string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := rt.bodies(prefix)
		missing := 0
		for _, w := range want {
			if !slices.Contains(got, w) {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: after %v, %d of %d messages %q… have not arrived in %s; have %q (limited syncs: %d)",
				rt.c.UserID, within, missing, len(want), prefix, rt.room, got, rt.limited)
		}
		rt.pull(t, ctx)
	}
}

// wantSubsequence checks that the messages of got that are in want come
// in want's order (one sender's messages within a mix of senders).
func wantSubsequence(t testing.TB, who string, got, want []string) {
	t.Helper()
	var sub []string
	for _, b := range got {
		if slices.Contains(want, b) {
			sub = append(sub, b)
		}
	}
	if !slices.Equal(sub, want) {
		t.Errorf("%s: %d messages arrived in the order %q, want %q", who, len(want), sub, want)
	}
}

// sendAll sends bodies one after another (each acknowledged before the
// next) and returns their event ids.
func sendAll(t testing.TB, ctx context.Context, c *mautrix.Client, room id.RoomID, bodies []string) []id.EventID {
	t.Helper()
	var out []id.EventID
	for _, b := range bodies {
		out = append(out, send(t, ctx, c, room, b, "txn-"+strings.ReplaceAll(b, " ", "-")))
	}
	return out
}

// numbered returns "prefix 0" … "prefix n-1".
func numbered(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s %02d", prefix, i)
	}
	return out
}

// waitMembership waits until c's server holds target's membership in room
// as want (GET /rooms/{roomId}/members).
func waitMembership(t testing.TB, ctx context.Context, c *mautrix.Client, room id.RoomID, target id.UserID, want event.Membership) {
	t.Helper()
	testutil.EventuallyState(t, 45*time.Second, func() (bool, string) {
		resp, err := c.Members(ctx, room)
		if err != nil {
			return false, fmt.Sprintf("%s: members of %s: %v", c.UserID, room, err)
		}
		got := map[id.UserID]event.Membership{}
		for _, ev := range resp.Chunk {
			if ev.StateKey != nil {
				got[id.UserID(*ev.StateKey)] = ev.Content.AsMember().Membership
			}
		}
		return got[target] == want, fmt.Sprintf("%s sees %s as %q in %s (want %q); members: %v",
			c.UserID, target, got[target], room, want, got)
	})
}

// joinRemote joins room (an id or an alias) as c, retrying while the join
// fails with an error a remote join can give transiently (a server error,
// or the resident server not yet reachable after a restart).
func joinRemote(t testing.TB, ctx context.Context, c *mautrix.Client, room string, via ...string) id.RoomID {
	t.Helper()
	var resp *mautrix.RespJoinRoom
	var last error
	testutil.EventuallyState(t, 45*time.Second, func() (bool, string) {
		var err error
		resp, err = c.JoinRoom(ctx, room, &mautrix.ReqJoinRoom{Via: via})
		if err == nil {
			return true, ""
		}
		last = err
		var he mautrix.HTTPError
		// A 4xx other than 429 is the servers' final answer: fail at once
		// rather than at the deadline. (5xx and transport errors are
		// retried: a server just restarted.)
		if errors.As(err, &he) && he.Response != nil && he.Response.StatusCode >= 400 && he.Response.StatusCode < 500 &&
			he.Response.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("%s: join %s via %v: %v", c.UserID, room, via, err)
		}
		return false, fmt.Sprintf("%s: join %s via %v: %v", c.UserID, room, via, last)
	})
	return resp.RoomID
}

// stateIDs is a room's current state as one server's client API serves it:
// (type, state_key) → event id.
func stateIDs(t testing.TB, ctx context.Context, c *mautrix.Client, room id.RoomID) (map[string]id.EventID, error) {
	t.Helper()
	st, err := c.State(ctx, room)
	if err != nil {
		return nil, err
	}
	out := map[string]id.EventID{}
	for typ, byKey := range st {
		for key, ev := range byKey {
			out[typ.Type+"|"+key] = ev.ID
		}
	}
	return out, nil
}

// diffState describes how two state maps differ.
func diffState(a, b map[string]id.EventID) string {
	var d []string
	for k, v := range a {
		if b[k] != v {
			d = append(d, fmt.Sprintf("%s: %s vs %s", k, v, b[k]))
		}
	}
	for k, v := range b {
		if _, ok := a[k]; !ok {
			d = append(d, fmt.Sprintf("%s: (none) vs %s", k, v))
		}
	}
	slices.Sort(d)
	return strings.Join(d, "; ")
}
