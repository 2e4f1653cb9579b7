package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/testutil"
)

// Tokens of the test application service.
const (
	asToken = "as-token-e2e-bridge"
	hsToken = "hs-token-e2e-bridge"
)

// bridge is a real application service (mautrix-go's appservice package)
// on loopback, recording every event its transactions carry.
type bridge struct {
	as   *appservice.AppService
	port int

	mu       sync.Mutex
	events   []*event.Event // timeline events, in arrival order
	receipts []*event.Event // m.receipt ephemeral events
	typing   []*event.Event // m.typing ephemeral events
	presence []*event.Event // m.presence ephemeral events
	toDevice []*event.Event // to-device messages (MSC2409)
	// txns maps each transaction id the homeserver sent to its body;
	// txnOrder lists first arrivals.
	txns     map[string]string
	txnOrder []int
	resent   int // transactions answered 500 once on purpose, then re-sent
	done     chan struct{}
}

// startBridge starts the service's HTTP server on a free loopback port.
func startBridge(t *testing.T) *bridge {
	t.Helper()
	b := &bridge{port: freePort(t), done: make(chan struct{}), txns: map[string]string{}}
	t.Cleanup(func() { close(b.done) })
	return b
}

// registration is the service's registration file, Synapse's keys.
func (b *bridge) registration() map[string]any {
	return map[string]any{
		"id":                "bridge",
		"url":               fmt.Sprintf("http://127.0.0.1:%d", b.port),
		"as_token":          asToken,
		"hs_token":          hsToken,
		"sender_localpart":  "bridgebot",
		"rate_limited":      false,
		"receive_ephemeral": true,
		"protocols":         []string{"irc"},
		"namespaces": map[string]any{
			"users":   []any{map[string]any{"exclusive": true, "regex": "@puppet_.*:" + serverName}},
			"aliases": []any{map[string]any{"exclusive": true, "regex": "#bridge_.*:" + serverName}},
		},
	}
}

// withBridge writes the registration to dir and references it.
func withBridge(t *testing.T, b *bridge, extra map[string]any) configOption {
	path := writeYAML(t, filepath.Join(t.TempDir(), "bridge.yaml"), b.registration())
	return func(cfg map[string]any) {
		cfg["app_service_config_files"] = []string{path}
		for k, v := range extra {
			cfg[k] = v
		}
	}
}

// connect creates the mautrix service against srv and starts serving.
func (b *bridge) connect(t *testing.T, srv *server) {
	t.Helper()
	reg := &appservice.Registration{ID: "bridge", URL: fmt.Sprintf("http://127.0.0.1:%d", b.port),
		AppToken: asToken, ServerToken: hsToken, SenderLocalpart: "bridgebot", EphemeralEvents: true}
	as, err := appservice.CreateFull(appservice.CreateOpts{
		Registration: reg, HomeserverDomain: serverName, HomeserverURL: srv.url,
		HostConfig: appservice.HostConfig{Hostname: "127.0.0.1", Port: uint16(b.port)},
	})
	if err != nil {
		t.Fatalf("create appservice: %v", err)
	}
	as.HTTPClient = srv.http
	as.Middleware = append(as.Middleware, b.checkTxns(t))
	b.as = as
	go b.collect()
	b.start(t)
	t.Cleanup(b.as.Stop)
}

// start serves on the service's port and waits until it accepts.
func (b *bridge) start(t *testing.T) {
	t.Helper()
	go b.as.Start()
	testutil.Eventually(t, 10*time.Second, "appservice listening", func() bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(b.port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// checkTxns watches the raw transactions: ids must increase, a re-sent id
// must carry the same body, and the second transaction is refused once
// (500) to make the homeserver send it again.
func (b *bridge) checkTxns(t *testing.T) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			txnID, ok := strings.CutPrefix(r.URL.Path, "/_matrix/app/v1/transactions/")
			if !ok || r.Method != http.MethodPut {
				next.ServeHTTP(w, r)
				return
			}
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			b.mu.Lock()
			prev, seen := b.txns[txnID]
			fail := false
			if seen && prev != string(body) {
				t.Errorf("transaction %s re-sent with a different body:\n%s\nthen\n%s", txnID, prev, body)
			}
			if !seen {
				n, err := strconv.Atoi(txnID)
				if err != nil {
					t.Errorf("transaction id %q", txnID)
				} else if len(b.txnOrder) > 0 && n <= b.txnOrder[len(b.txnOrder)-1] {
					t.Errorf("transaction %d after %d", n, b.txnOrder[len(b.txnOrder)-1])
				}
				b.txns[txnID] = string(body)
				b.txnOrder = append(b.txnOrder, n)
				fail = len(b.txnOrder) == 2
				if fail {
					b.resent++
				}
			}
			b.mu.Unlock()
			if fail {
				http.Error(w, `{"errcode":"M_UNKNOWN","error":"refused once by the test"}`, 500)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

func (b *bridge) collect() {
	for {
		select {
		case <-b.done:
			return
		case ev := <-b.as.Events:
			b.mu.Lock()
			switch {
			case ev.Type == event.EphemeralEventReceipt:
				b.receipts = append(b.receipts, ev)
			case ev.Type == event.EphemeralEventTyping:
				b.typing = append(b.typing, ev)
			case ev.Type == event.EphemeralEventPresence:
				b.presence = append(b.presence, ev)
			case ev.ID != "":
				b.events = append(b.events, ev)
			}
			b.mu.Unlock()
		case ev := <-b.as.ToDeviceEvents:
			b.mu.Lock()
			b.toDevice = append(b.toDevice, ev)
			b.mu.Unlock()
		}
	}
}

// asLogin is POST /login with type m.login.application_service for user,
// authenticated with token; it returns the status and the decoded body.
func asLogin(t *testing.T, ctx context.Context, srv *server, token, user string) (int, map[string]any) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"type": "m.login.application_service",
		"identifier": map[string]any{"type": "m.id.user", "user": user}})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.url+"/_matrix/client/v3/login", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := srv.http.Do(req)
	if err != nil {
		t.Fatalf("login %s: %v", user, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("login %s: decode: %v", user, err)
	}
	return resp.StatusCode, out
}

// received returns the event ids received so far, in order.
func (b *bridge) received() []id.EventID {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]id.EventID, len(b.events))
	for i, e := range b.events {
		out[i] = e.ID
	}
	return out
}

// waitFor waits until every wanted event arrived, then checks that each
// arrived once and in the order sent, and that no unwanted one arrived.
func (b *bridge) waitFor(t *testing.T, want []id.EventID, unwanted map[id.EventID]bool) {
	t.Helper()
	testutil.Eventually(t, 60*time.Second, fmt.Sprintf("%d events at the appservice", len(want)), func() bool {
		got := map[id.EventID]bool{}
		for _, e := range b.received() {
			got[e] = true
		}
		for _, w := range want {
			if !got[w] {
				return false
			}
		}
		return true
	})
	got := b.received()
	seen := map[id.EventID]int{}
	for i, e := range got {
		if _, dup := seen[e]; dup {
			t.Errorf("event %s received twice", e)
		}
		seen[e] = i
		if unwanted[e] {
			t.Errorf("event %s outside the namespaces was sent to the appservice", e)
		}
	}
	last := -1
	for _, w := range want {
		if seen[w] < last {
			t.Errorf("event %s received out of order", w)
		}
		last = seen[w]
	}
}

// appserviceEngines are the deployments the appservice scenario runs on.
func appserviceEngines() []string { return []string{engineSQLite, enginePostgres, engineFleetRouter} }

// TestAppserviceTransactions drives a real bridge: it registers puppets
// with m.login.application_service, creates a room and sends as them by
// masquerading, and receives every event of its namespaces exactly once
// and in order, including those sent while it was down (and, on the
// fleet, while the notifier worker was killed).
func TestAppserviceTransactions(t *testing.T) {
	for _, engine := range appserviceEngines() {
		t.Run(engine, func(t *testing.T) {
			b := startBridge(t)
			var extra map[string]any
			fleet := engine != engineSQLite && engine != enginePostgres
			if fleet {
				// The fleet's second generic worker sends the transactions.
				extra = map[string]any{"notify_appservices_from_worker": instWorker2}
			}
			srv := startServer(t, engine, withBridge(t, b, extra))
			b.connect(t, srv)
			ctx := testContext(t)

			alice := b.as.Intent(id.NewUserID("puppet_alice", serverName))
			bob := b.as.Intent(id.NewUserID("puppet_bob", serverName))
			for _, p := range []*appservice.IntentAPI{alice, bob} {
				if err := p.EnsureRegistered(ctx); err != nil {
					t.Fatalf("register puppet %s: %v", p.UserID, err)
				}
			}
			resp, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "bridge_room"})
			if err != nil {
				t.Fatalf("puppet createRoom: %v", err)
			}
			room := resp.RoomID
			if _, err := bob.JoinRoomByID(ctx, room); err != nil {
				t.Fatalf("puppet join: %v", err)
			}
			carol := srv.register(t, ctx, "carol")
			if _, err := carol.JoinRoom(ctx, room.String(), nil); err != nil {
				t.Fatalf("carol join: %v", err)
			}
			// A room with no namespaced member: none of it is the bridge's.
			other, err := carol.CreateRoom(ctx, &mautrix.ReqCreateRoom{})
			if err != nil {
				t.Fatalf("carol createRoom: %v", err)
			}

			var want []id.EventID
			unwanted := map[id.EventID]bool{}
			send := func(c interface {
				SendText(context.Context, id.RoomID, string) (*mautrix.RespSendEvent, error)
			}, roomID id.RoomID, text string, interesting bool) {
				t.Helper()
				r, err := c.SendText(ctx, roomID, text)
				if err != nil {
					t.Fatalf("send %q: %v", text, err)
				}
				if interesting {
					want = append(want, r.EventID)
				} else {
					unwanted[r.EventID] = true
				}
			}
			for i := range 5 {
				send(alice, room, "alice "+itoa(i), true)
				send(bob, room, "bob "+itoa(i), true)
				send(carol, room, "carol "+itoa(i), true) // a namespaced user is a member
				send(carol, other.RoomID, "elsewhere "+itoa(i), false)
			}
			b.waitFor(t, want, unwanted)
			b.mu.Lock()
			resent := b.resent
			b.mu.Unlock()
			if resent != 1 {
				t.Errorf("refused %d transactions once, want 1 (then re-sent)", resent)
			}

			// A read receipt in the bridged room reaches it (MSC2409).
			if err := carol.MarkRead(ctx, room, want[len(want)-1]); err != nil {
				t.Fatalf("receipt: %v", err)
			}
			testutil.Eventually(t, 30*time.Second, "m.receipt at the appservice", func() bool {
				b.mu.Lock()
				defer b.mu.Unlock()
				for _, e := range b.receipts {
					if e.RoomID == room {
						if rc, ok := e.Content.Parsed.(*event.ReceiptEventContent); ok {
							if _, ok := (*rc)[want[len(want)-1]]; ok {
								return true
							}
						}
					}
				}
				return false
			})

			// So does a typing notification.
			if _, err := carol.UserTyping(ctx, room, true, 20*time.Second); err != nil {
				t.Fatalf("typing: %v", err)
			}
			testutil.Eventually(t, 30*time.Second, "m.typing at the appservice", func() bool {
				b.mu.Lock()
				defer b.mu.Unlock()
				for _, e := range b.typing {
					if tc, ok := e.Content.Parsed.(*event.TypingEventContent); ok && e.RoomID == room &&
						slices.Contains(tc.UserIDs, carol.UserID) {
						return true
					}
				}
				return false
			})

			// The bridge logs its puppet in (m.login.application_service),
			// which gives it a device; a to-device message to it reaches
			// the bridge with its recipient (MSC2409).
			status, login := asLogin(t, ctx, srv, asToken, "puppet_alice")
			if status != 200 || login["device_id"] == nil {
				t.Fatalf("appservice login of puppet_alice: %d %v", status, login)
			}
			puppetDevice := id.DeviceID(login["device_id"].(string))
			if _, err := carol.SendToDevice(ctx, event.NewEventType("com.example.bridge_ping"), &mautrix.ReqSendToDevice{
				Messages: map[id.UserID]map[id.DeviceID]*event.Content{
					alice.UserID: {"*": {Raw: map[string]any{"ping": "to the puppet"}}},
				}}); err != nil {
				t.Fatalf("send to-device: %v", err)
			}
			testutil.Eventually(t, 30*time.Second, "to-device message at the appservice", func() bool {
				b.mu.Lock()
				defer b.mu.Unlock()
				for _, e := range b.toDevice {
					if e.Sender == carol.UserID && e.ToUserID == alice.UserID && e.ToDeviceID == puppetDevice &&
						e.Type.Type == "com.example.bridge_ping" && e.Content.Raw["ping"] == "to the puppet" {
						return true
					}
				}
				return false
			})

			// Carol shares a room with the puppets: her presence reaches
			// the bridge.
			if err := carol.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "bridged"}); err != nil {
				t.Fatalf("set presence: %v", err)
			}
			testutil.Eventually(t, 30*time.Second, "m.presence at the appservice", func() bool {
				b.mu.Lock()
				defer b.mu.Unlock()
				for _, e := range b.presence {
					if pc, ok := e.Content.Parsed.(*event.PresenceEventContent); ok && e.Sender == carol.UserID &&
						pc.Presence == event.PresenceOnline && pc.StatusMessage == "bridged" {
						return true
					}
				}
				return false
			})

			// Down for a while: everything queued arrives after it returns.
			b.as.Stop()
			for i := range 5 {
				send(alice, room, "while down "+itoa(i), true)
				send(carol, room, "carol while down "+itoa(i), true)
			}
			b.start(t)
			b.waitFor(t, want, unwanted)

			if fleet {
				// Exactly one instance sends: the one the config names.
				for _, name := range fleetInstances() {
					started := strings.Count(srv.fleet.proc(name).logs.String(), "application service notifier started")
					if want := map[bool]int{true: 1, false: 0}[name == instWorker2]; started != want {
						t.Errorf("%s started the notifier %d times, want %d", name, started, want)
					}
				}
				// The notifier crashes and comes back: nothing is lost.
				srv.fleet.killProc(t, instWorker2)
				for i := range 5 {
					send(bob, room, "notifier down "+itoa(i), true)
				}
				srv.fleet.restartProc(t, instWorker2)
				for i := range 3 {
					send(alice, room, "notifier back "+itoa(i), true)
				}
				b.waitFor(t, want, unwanted)
			}
		})
	}
}

// TestAppserviceRefusals checks authentication and namespace rules.
func TestAppserviceRefusals(t *testing.T) {
	b := startBridge(t)
	srv := startServer(t, engineSQLite, withBridge(t, b, nil), withMessageRateLimit(0.01, 3))
	b.connect(t, srv)
	ctx := testContext(t)
	carol := srv.register(t, ctx, "carol")

	// A user may not take a name a service claims exclusively.
	r := srv.doJSON(t, ctx, "POST", "/_matrix/client/v3/register", "", map[string]any{
		"username": "puppet_mallory", "password": password("mallory"), "auth": map[string]any{"type": "m.login.dummy"}})
	wantRawError(t, r, http.StatusBadRequest, "M_EXCLUSIVE")
	// The service may not register outside its namespace.
	r = srv.doJSON(t, ctx, "POST", "/_matrix/client/v3/register", asToken, map[string]any{
		"username": "outsider", "type": "m.login.application_service"})
	wantRawError(t, r, http.StatusBadRequest, "M_EXCLUSIVE")
	// Nor with an unknown token.
	r = srv.doJSON(t, ctx, "POST", "/_matrix/client/v3/register", "not-an-as-token", map[string]any{
		"username": "puppet_x", "type": "m.login.application_service"})
	wantRawError(t, r, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")
	// The hs_token is not a client token.
	r = srv.do(t, ctx, "GET", "/_matrix/client/v3/account/whoami", hsToken, nil)
	wantRawError(t, r, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")

	// The as_token alone acts as the sender; user_id masquerades within
	// the namespace only.
	r = srv.do(t, ctx, "GET", "/_matrix/client/v3/account/whoami", asToken, nil)
	if got := r.object(t)["user_id"]; got != "@bridgebot:"+serverName {
		t.Errorf("whoami with the as_token = %v, want the sender", got)
	}
	r = srv.do(t, ctx, "GET", "/_matrix/client/v3/account/whoami?user_id="+carol.UserID.String(), asToken, nil)
	wantRawError(t, r, http.StatusForbidden, "M_FORBIDDEN")
	r = srv.do(t, ctx, "GET", "/_matrix/client/v3/account/whoami?user_id=@puppet_unregistered:"+serverName, asToken, nil)
	wantRawError(t, r, http.StatusForbidden, "M_FORBIDDEN")
	puppet := b.as.Intent(id.NewUserID("puppet_dave", serverName))
	if err := puppet.EnsureRegistered(ctx); err != nil {
		t.Fatalf("register puppet: %v", err)
	}
	r = srv.do(t, ctx, "GET", "/_matrix/client/v3/account/whoami?access_token="+asToken+"&user_id=@puppet_dave:"+serverName, "", nil)
	if got := r.object(t)["user_id"]; got != "@puppet_dave:"+serverName {
		t.Errorf("whoami masquerading (access_token query) = %v, want the puppet", got)
	}

	// MSC3202: a device of the masqueraded user, which must exist.
	r = srv.do(t, ctx, "GET", "/_matrix/client/v3/account/whoami?user_id=@puppet_dave:"+serverName+
		"&org.matrix.msc3202.device_id=NOSUCHDEVICE", asToken, nil)
	wantRawError(t, r, http.StatusBadRequest, "M_UNKNOWN_DEVICE")

	// rate_limited: false exempts the service's users from rc_message;
	// a user is still limited.
	shared, err := carol.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatalf("createRoom: %v", err)
	}
	if _, err := puppet.JoinRoomByID(ctx, shared.RoomID); err != nil {
		t.Fatalf("puppet join: %v", err)
	}
	// Aliases of the exclusive namespace are the service's.
	room := shared
	r = srv.doJSON(t, ctx, "PUT", clientPath("directory", "room", "#bridge_carol:"+serverName), carol.AccessToken,
		map[string]any{"room_id": room.RoomID})
	wantRawError(t, r, http.StatusBadRequest, "M_EXCLUSIVE")
	r = srv.doJSON(t, ctx, "POST", "/_matrix/client/v3/createRoom", carol.AccessToken, map[string]any{"room_alias_name": "bridge_x"})
	wantRawError(t, r, http.StatusBadRequest, "M_EXCLUSIVE")

	for i := range 10 {
		if _, err := puppet.SendText(ctx, shared.RoomID, "unlimited "+itoa(i)); err != nil {
			t.Fatalf("puppet send %d under a tight rc_message: %v", i, err)
		}
	}
	var limited error
	for i := 0; i < 10 && limited == nil; i++ {
		_, limited = carol.SendText(ctx, shared.RoomID, "limited "+itoa(i))
	}
	wantMatrixError(t, limited, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")

	// Ping: the service pings itself through the homeserver.
	r = srv.doJSON(t, ctx, "POST", "/_matrix/client/v1/appservice/bridge/ping", asToken, map[string]any{"transaction_id": "t1"})
	if r.status != 200 {
		t.Errorf("ping: %d %s", r.status, r.body)
	} else if _, ok := r.object(t)["duration_ms"]; !ok {
		t.Errorf("ping answer %s has no duration_ms", r.body)
	}
	r = srv.doJSON(t, ctx, "POST", "/_matrix/client/v1/appservice/bridge/ping", carol.AccessToken, map[string]any{})
	wantRawError(t, r, http.StatusForbidden, "M_FORBIDDEN")
	b.as.Stop()
	r = srv.doJSON(t, ctx, "POST", "/_matrix/client/v1/appservice/bridge/ping", asToken, map[string]any{})
	wantRawError(t, r, http.StatusBadGateway, "M_CONNECTION_FAILED")
}

// bridgeQueries answers the homeserver's user and alias queries by
// creating what was asked for, as bridges do.
type bridgeQueries struct {
	t  *testing.T
	as *appservice.AppService
}

func (q bridgeQueries) QueryUser(userID id.UserID) bool {
	if err := q.as.Intent(userID).EnsureRegistered(context.Background()); err != nil {
		q.t.Errorf("register queried user %s: %v", userID, err)
		return false
	}
	return true
}

func (q bridgeQueries) QueryAlias(alias id.RoomAlias) bool {
	_, err := q.as.BotIntent().CreateRoom(context.Background(), &mautrix.ReqCreateRoom{RoomAliasName: strings.TrimPrefix(strings.SplitN(string(alias), ":", 2)[0], "#")})
	if err != nil {
		q.t.Errorf("create room for queried alias %s: %v", alias, err)
		return false
	}
	return true
}

// serveThirdParty answers the third-party lookups for protocol irc,
// checking that the homeserver presents the hs_token.
func (b *bridge) serveThirdParty(t *testing.T) {
	answer := func(v any) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bearer "+hsToken {
				t.Errorf("%s without the hs_token", r.URL.Path)
				http.Error(w, "{}", 403)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(v)
		}
	}
	b.as.Router.HandleFunc("GET /_matrix/app/v1/thirdparty/protocol/irc", answer(map[string]any{
		"user_fields": []string{"network", "nickname"}, "location_fields": []string{"network", "channel"},
		"icon": "mxc://example.org/irc", "field_types": map[string]any{},
		"instances": []any{map[string]any{"desc": "Libera", "fields": map[string]any{}, "network_id": "libera"}},
	}))
	b.as.Router.HandleFunc("GET /_matrix/app/v1/thirdparty/location/irc", answer([]any{
		map[string]any{"alias": "#bridge_irc_x:" + serverName, "protocol": "irc", "fields": map[string]any{"channel": "#x"}}}))
	b.as.Router.HandleFunc("GET /_matrix/app/v1/thirdparty/user/irc", answer([]any{
		map[string]any{"userid": "@puppet_irc_bob:" + serverName, "protocol": "irc", "fields": map[string]any{"nickname": "bob"}}}))
}

// TestAppserviceQueries: unknown users and aliases of a namespace are
// asked about (and created by the service), and third-party lookups are
// proxied to the services listing the protocol.
func TestAppserviceQueries(t *testing.T) {
	for _, engine := range []string{engineSQLite, engineFleetRouter} {
		t.Run(engine, func(t *testing.T) {
			b := startBridge(t)
			srv := startServer(t, engine, withBridge(t, b, nil))
			b.connect(t, srv)
			b.as.QueryHandler = bridgeQueries{t: t, as: b.as}
			b.serveThirdParty(t)
			ctx := testContext(t)
			carol := srv.register(t, ctx, "carol")

			// Alias resolution asks the service, which creates the room.
			r := srv.do(t, ctx, "GET", clientPath("directory", "room", "#bridge_lazy:"+serverName), carol.AccessToken, nil)
			if r.status != 200 || r.object(t)["room_id"] == nil {
				t.Errorf("resolve queried alias: %d %s", r.status, r.body)
			}
			r = srv.do(t, ctx, "GET", clientPath("directory", "room", "#bridge_missing_not:elsewhere"), carol.AccessToken, nil)
			if r.status == 200 {
				t.Errorf("alias on another server resolved: %s", r.body)
			}
			// Profile lookup asks about an unknown puppet.
			r = srv.do(t, ctx, "GET", clientPath("profile", "@puppet_lazy:"+serverName), carol.AccessToken, nil)
			if r.status != 200 {
				t.Errorf("profile of queried user: %d %s", r.status, r.body)
			}
			// So does an invite.
			room, err := carol.CreateRoom(ctx, &mautrix.ReqCreateRoom{})
			if err != nil {
				t.Fatalf("createRoom: %v", err)
			}
			if _, err := carol.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: id.NewUserID("puppet_invited", serverName)}); err != nil {
				t.Errorf("invite a puppet the service creates on demand: %v", err)
			}
			// A user outside every namespace is not asked about.
			r = srv.do(t, ctx, "GET", clientPath("profile", "@nobody:"+serverName), carol.AccessToken, nil)
			wantRawError(t, r, http.StatusNotFound, "M_NOT_FOUND")

			// Third-party lookups.
			r = srv.do(t, ctx, "GET", "/_matrix/client/v3/thirdparty/protocols", carol.AccessToken, nil)
			if irc, ok := r.object(t)["irc"].(map[string]any); r.status != 200 || !ok || irc["icon"] != "mxc://example.org/irc" {
				t.Errorf("protocols: %d %s", r.status, r.body)
			}
			r = srv.do(t, ctx, "GET", "/_matrix/client/v3/thirdparty/protocol/irc", carol.AccessToken, nil)
			if r.status != 200 {
				t.Errorf("protocol irc: %d %s", r.status, r.body)
			}
			r = srv.do(t, ctx, "GET", "/_matrix/client/v3/thirdparty/protocol/xmpp", carol.AccessToken, nil)
			wantRawError(t, r, http.StatusNotFound, "M_NOT_FOUND")
			r = srv.do(t, ctx, "GET", "/_matrix/client/v3/thirdparty/location/irc?channel=%23x", carol.AccessToken, nil)
			if r.status != 200 || !bytes.Contains(r.body, []byte("#bridge_irc_x:")) {
				t.Errorf("location lookup: %d %s", r.status, r.body)
			}
			r = srv.do(t, ctx, "GET", "/_matrix/client/v3/thirdparty/user/irc?nickname=bob", carol.AccessToken, nil)
			if r.status != 200 || !bytes.Contains(r.body, []byte("@puppet_irc_bob:")) {
				t.Errorf("user lookup: %d %s", r.status, r.body)
			}
			r = srv.do(t, ctx, "GET", "/_matrix/client/v3/thirdparty/protocols", "", nil)
			wantRawError(t, r, http.StatusUnauthorized, "M_MISSING_TOKEN")
		})
	}
}

// TestAppserviceHSTokenMismatch: a service that does not recognise the
// homeserver's hs_token refuses its transactions (401 M_UNKNOWN_TOKEN);
// they stay queued and arrive once the service accepts the token.
func TestAppserviceHSTokenMismatch(t *testing.T) {
	b := startBridge(t)
	srv := startServer(t, engineSQLite, withBridge(t, b, nil))
	b.connect(t, srv)
	ctx := testContext(t)
	b.as.Stop()
	b.as.Registration.ServerToken = "some-other-hs-token"
	b.start(t)

	puppet := b.as.Intent(id.NewUserID("puppet_erin", serverName))
	if err := puppet.EnsureRegistered(ctx); err != nil {
		t.Fatalf("register puppet: %v", err)
	}
	room, err := puppet.CreateRoom(ctx, &mautrix.ReqCreateRoom{})
	if err != nil {
		t.Fatalf("createRoom: %v", err)
	}
	sent, err := puppet.SendText(ctx, room.RoomID, "held back")
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	// Transactions go oldest first: the first one is refused again and
	// again, and everything after it waits behind it.
	testutil.Eventually(t, 30*time.Second, "a refused transaction", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.txns) > 0
	})
	if got := b.received(); len(got) > 0 {
		t.Fatalf("the service accepted events with the wrong hs_token: %v", got)
	}
	b.as.Stop()
	b.as.Registration.ServerToken = hsToken
	b.start(t)
	b.waitFor(t, []id.EventID{sent.EventID}, nil)
}

// TestAppserviceLogin checks POST /login with m.login.application_service:
// advertised in the flows, only with the service's as_token, only for
// existing users of its namespace.
func TestAppserviceLogin(t *testing.T) {
	b := startBridge(t)
	srv := startServer(t, engineSQLite, withBridge(t, b, nil))
	b.connect(t, srv)
	ctx := testContext(t)

	flows, err := mautrix.NewClient(srv.url, "", "")
	if err != nil {
		t.Fatal(err)
	}
	flows.Client = srv.http
	resp, err := flows.GetLoginFlows(ctx)
	if err != nil {
		t.Fatalf("GET /login: %v", err)
	}
	if !resp.HasFlow(mautrix.AuthTypeAppservice) || !resp.HasFlow(mautrix.AuthTypePassword) {
		t.Errorf("login flows %+v, want m.login.password and m.login.application_service", resp.Flows)
	}

	puppet := b.as.Intent(id.NewUserID("puppet_dave", serverName))
	if status, body := asLogin(t, ctx, srv, asToken, "puppet_dave"); status != 403 || body["errcode"] != "M_FORBIDDEN" {
		t.Errorf("login of an unregistered puppet: %d %v, want 403 M_FORBIDDEN", status, body)
	}
	if err := puppet.EnsureRegistered(ctx); err != nil {
		t.Fatalf("register puppet: %v", err)
	}
	srv.register(t, ctx, "erin")
	for _, c := range []struct {
		token, user string
		status      int
		code        string
	}{
		{"", "puppet_dave", 401, "M_MISSING_TOKEN"},
		{"not-an-as-token", "puppet_dave", 401, "M_UNKNOWN_TOKEN"},
		{asToken, "erin", 403, "M_FORBIDDEN"}, // outside the namespace
	} {
		if status, body := asLogin(t, ctx, srv, c.token, c.user); status != c.status || body["errcode"] != c.code {
			t.Errorf("login of %s with token %q: %d %v, want %d %s", c.user, c.token, status, body, c.status, c.code)
		}
	}
	status, body := asLogin(t, ctx, srv, asToken, "@puppet_dave:"+serverName)
	if status != 200 || body["user_id"] != "@puppet_dave:"+serverName {
		t.Fatalf("login of puppet_dave: %d %v", status, body)
	}
	// The token works as the puppet's own.
	c, err := mautrix.NewClient(srv.url, id.UserID(body["user_id"].(string)), body["access_token"].(string))
	if err != nil {
		t.Fatal(err)
	}
	c.Client = srv.http
	who, err := c.Whoami(ctx)
	if err != nil || who.UserID != puppet.UserID || string(who.DeviceID) != body["device_id"] {
		t.Errorf("whoami with the puppet's token: %+v %v", who, err)
	}
}
