package e2e_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"ganglion/internal/config"
	"ganglion/internal/events"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/storage"
	"ganglion/internal/testutil"
	"ganglion/internal/testutil/testca"
)

// fakeRemote is another homeserver as far as our federation senders can
// tell: a TLS server (certificate from the test's CA) named by its IP and
// port, answering PUT /_matrix/federation/v1/send/{txnId} only for
// requests whose X-Matrix signature verifies with our published key, and
// deduplicating PDUs by event id as a real receiver does.
type fakeRemote struct {
	name string
	srv  *httptest.Server

	mu       sync.Mutex
	down     bool
	attempts int
	got      []string       // event ids, first copies, in arrival order
	copies   map[string]int // event id → copies in acknowledged transactions
	refused  []string       // why requests were refused (bad signatures)
	edus     []json.RawMessage
}

// ourKeys fetches a server's published verify keys from its key server.
type ourKeys struct{ url string }

func (k ourKeys) VerifyKey(ctx context.Context, serverName, keyID string, _ int64) (ed25519.PublicKey, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, k.url+"/_matrix/key/v2/server", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		ServerName string `json:"server_name"`
		VerifyKeys map[string]struct {
			Key string `json:"key"`
		} `json:"verify_keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, err
	}
	if body.ServerName != serverName {
		return nil, fmt.Errorf("key server is %q, not %q", body.ServerName, serverName)
	}
	vk, ok := body.VerifyKeys[keyID]
	if !ok {
		return nil, fmt.Errorf("no key %s", keyID)
	}
	return base64.RawStdEncoding.DecodeString(vk.Key)
}

func startFakeRemote(t *testing.T, ca *testca.CA) *fakeRemote {
	t.Helper()
	r := &fakeRemote{copies: map[string]int{}}
	r.srv = httptest.NewUnstartedServer(nil)
	r.srv.TLS = ca.ServerTLS(t, "127.0.0.1")
	r.srv.StartTLS()
	t.Cleanup(r.srv.Close)
	r.name = strings.TrimPrefix(r.srv.URL, "https://")
	return r
}

// serve starts answering, verifying signatures of origin with keys.
func (r *fakeRemote) serve(origin string, keys ourKeys) {
	rv, _ := events.LookupRoomVersion(events.DefaultRoomVersion)
	auth := &xmatrix.Authenticator{ServerName: r.name, Keys: keys, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	r.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.attempts++
		down := r.down
		r.mu.Unlock()
		if down {
			http.Error(w, `{"errcode":"M_UNKNOWN","error":"down for the test"}`, http.StatusServiceUnavailable)
			return
		}
		from, err := auth.Authenticate(req)
		if err != nil || from != origin || req.Method != http.MethodPut ||
			!strings.HasPrefix(req.URL.Path, "/_matrix/federation/v1/send/") {
			r.mu.Lock()
			r.refused = append(r.refused, fmt.Sprintf("%s %s from %q: %v", req.Method, req.URL.Path, from, err))
			r.mu.Unlock()
			http.Error(w, `{"errcode":"M_UNAUTHORIZED"}`, http.StatusUnauthorized)
			return
		}
		var txn struct {
			Origin string            `json:"origin"`
			PDUs   []json.RawMessage `json:"pdus"`
			EDUs   []json.RawMessage `json:"edus"`
		}
		body, _ := io.ReadAll(req.Body)
		if err := json.Unmarshal(body, &txn); err != nil || txn.Origin != origin || len(txn.PDUs) > 50 || len(txn.EDUs) > 100 {
			http.Error(w, `{"errcode":"M_BAD_JSON"}`, http.StatusBadRequest)
			return
		}
		results := map[string]any{}
		r.mu.Lock()
		r.edus = append(r.edus, txn.EDUs...)
		for _, pdu := range txn.PDUs {
			ev, err := events.Parse(pdu, rv)
			if err != nil {
				continue
			}
			if r.copies[ev.EventID()] == 0 {
				r.got = append(r.got, ev.EventID())
			}
			r.copies[ev.EventID()]++
			results[ev.EventID()] = map[string]any{}
		}
		r.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"pdus": results})
	})
}

func (r *fakeRemote) setDown(down bool) {
	r.mu.Lock()
	r.down = down
	r.mu.Unlock()
}

func (r *fakeRemote) received() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// fleetDB opens the fleet's database, for the one fixture federation
// cannot make yet: a remote user joined to one of our rooms.
func fleetDB(t *testing.T, f *fleet) *storage.DB {
	t.Helper()
	a := f.db["args"].(map[string]any)
	u := url.URL{Scheme: "postgres", Host: net.JoinHostPort(fmt.Sprint(a["host"]), fmt.Sprint(a["port"])),
		Path: "/" + fmt.Sprint(a["database"])}
	if a["port"] == nil {
		u.Host = fmt.Sprint(a["host"])
	}
	if user, ok := a["user"].(string); ok {
		if pw, ok := a["password"].(string); ok {
			u.User = url.UserPassword(user, pw)
		} else {
			u.User = url.User(user)
		}
	}
	if m, ok := a["sslmode"].(string); ok {
		u.RawQuery = "sslmode=" + m
	}
	db, err := storage.Open(context.Background(), storage.Options{Engine: storage.Postgres, DSN: u.String()},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("open the fleet's database: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// TestFederationSendersDeliverDurably runs the fleet with two federation
// sender workers and a remote server they reach over TLS through the
// federation client (X-Matrix signed; the remote checks the signature
// with our published key). Events sent while the remote is down and while
// the sender owning it is killed (-9) all arrive after both come back, in
// order, and what was acknowledged before is not sent again.
func TestFederationSendersDeliverDurably(t *testing.T) {
	ca := testca.New(t)
	remote := startFakeRemote(t, ca)
	senders := []string{"fed1", "fed2"}
	srv := startFleetServer(t,
		withKey("federation_sender_instances", senders),
		withKey("federation_custom_ca_list", []string{ca.WriteCA(t, t.TempDir())}),
		withKey("ip_range_whitelist", []string{"127.0.0.1"}),
		withKey("federation", map[string]any{"destination_min_retry_interval": "100ms", "destination_max_retry_interval": "400ms"}),
	)
	f := srv.fleet
	remote.serve(serverName, ourKeys{url: f.clientURL(instMain)})
	owner := config.ShardFor(senders, remote.name)
	ctx := testContext(t)

	alice := srv.register(t, ctx, "fedsend-alice")
	roomID := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	db := fleetDB(t, f)
	bob := "@bob:" + remote.name
	if _, err := db.Exec(ctx, `INSERT INTO current_state (room_id, type, state_key, event_id, stream_ordering, membership)
		VALUES ($1, 'm.room.member', $2, '$fixture-remote-join', 0, 'join')`, roomID.String(), bob); err != nil {
		t.Fatalf("insert the remote member: %v", err)
	}
	// A membership event makes the senders look at the room's servers again.
	if err := alice.SetDisplayName(ctx, "Alice"); err != nil {
		t.Fatal(err)
	}
	send := func(n int, prefix string) []string {
		var ids []string
		for i := range n {
			resp, err := alice.SendText(ctx, roomID, fmt.Sprintf("%s %d", prefix, i))
			if err != nil {
				t.Fatalf("send: %v", err)
			}
			ids = append(ids, resp.EventID.String())
		}
		return ids
	}
	waitFor := func(want []string) {
		t.Helper()
		testutil.EventuallyState(t, 45*time.Second, func() (bool, string) {
			var have []string
			for _, id := range remote.received() {
				if slices.Contains(want, id) {
					have = append(have, id)
				}
			}
			remote.mu.Lock()
			refused := slices.Clone(remote.refused)
			remote.mu.Unlock()
			return slices.Equal(have, want), fmt.Sprintf("the remote has %d of %d events in order (%v); refused requests: %q",
				len(have), len(want), have, refused)
		})
	}

	first := send(5, "before")
	waitFor(first)

	remote.setDown(true)
	remote.mu.Lock()
	seen := remote.attempts
	remote.mu.Unlock()
	second := send(10, "while the remote is down")
	testutil.EventuallyState(t, 30*time.Second, func() (bool, string) {
		remote.mu.Lock()
		defer remote.mu.Unlock()
		return remote.attempts > seen, "no attempt reached the remote while it was down"
	})
	f.killProc(t, owner)
	third := send(5, "while the sender is dead")
	remote.setDown(false)
	f.restartProc(t, owner)

	all := slices.Concat(first, second, third)
	waitFor(all)
	remote.mu.Lock()
	defer remote.mu.Unlock()
	for _, id := range first {
		if n := remote.copies[id]; n != 1 {
			t.Errorf("event %s, acknowledged before the outage, arrived %d times", id, n)
		}
	}
	if slices.ContainsFunc(remote.got, func(e string) bool { return strings.HasPrefix(e, "$fixture") }) {
		t.Error("the fixture join went out")
	}
	if len(remote.refused) > 0 {
		t.Errorf("the remote refused requests: %q", remote.refused)
	}
}
