package queries_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/events"
	"ganglion/internal/federation/client"
	"ganglion/internal/federation/queries"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
	"ganglion/internal/testutil/testca"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// remoteServer is another homeserver's query endpoints over TLS on
// loopback; its server name is "127.0.0.1:port". block makes it hold
// every request until the client gives up.
func remoteServer(t *testing.T, ca *testca.CA, block chan struct{}) string {
	t.Helper()
	mux := http.NewServeMux()
	var name string
	mux.HandleFunc("GET /_matrix/federation/v1/query/profile", func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.Header.Get("Authorization"), "X-Matrix ") {
			mxhttp.WriteError(w, mxhttp.WithCode(401, "M_UNAUTHORIZED", "unsigned"))
			return
		}
		if block != nil {
			select {
			case <-block:
			case <-r.Context().Done():
			}
			return
		}
		switch r.URL.Query().Get("user_id") {
		case "@bob:" + name:
			_ = mxhttp.WriteJSON(w, 200, map[string]string{"displayname": "Bob", "avatar_url": "mxc://x/y"})
		case "@private:" + name:
			mxhttp.WriteError(w, mxhttp.Forbidden("Profile lookup over federation is disabled"))
		default:
			mxhttp.WriteError(w, mxhttp.NotFound("Profile was not found"))
		}
	})
	mux.HandleFunc("GET /_matrix/federation/v1/query/directory", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("room_alias") == "#room:"+name {
			_ = mxhttp.WriteJSON(w, 200, map[string]any{"room_id": "!r:" + name, "servers": []string{name, "third.test"}})
			return
		}
		mxhttp.WriteError(w, mxhttp.NotFound("Room alias not found"))
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = ca.ServerTLS(t, "127.0.0.1")
	srv.StartTLS()
	t.Cleanup(srv.Close)
	name = srv.Listener.Addr().String()
	return name
}

// clientAPI serves GET /profile and GET /directory/room through the
// queries, over the real signed client trusting ca.
func clientAPI(t *testing.T, ca *testca.CA, timeout time.Duration) http.Handler {
	t.Helper()
	key, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(client.Options{ServerName: "local.test", Key: key, RootCAs: ca.Pool(),
		IPFilter: client.IPFilter{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}, Log: discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	q := queries.New(c, timeout)
	db := storagetest.NewDB(t, storage.SQLite)
	acc := accounts.NewService(db, accounts.Settings{ServerName: "local.test", BcryptRounds: 4}, discard)
	acc.SetRemoteProfiles(q)
	reg, err := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	roomSvc := rooms.NewService(rooms.Config{ServerName: "local.test"}, rooms.NewStore(db), nil, acc, reg, nil, discard)
	roomSvc.SetRemoteDirectory(q)
	mux := mxhttp.NewMux()
	srv := mxhttp.NewServer(discard)
	acc.Routes(mux, srv, accounts.Limits{})
	roomSvc.Routes(mux, srv, acc, false)
	return mux
}

func get(t *testing.T, h http.Handler, path string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("GET %s: %d %q", path, rec.Code, rec.Body.String())
	}
	return rec.Code, out
}

func TestFederationRemoteProfileAndDirectory(t *testing.T) {
	ca := testca.New(t)
	name := remoteServer(t, ca, nil)
	h := clientAPI(t, ca, 0)
	esc := url.PathEscape

	code, body := get(t, h, "/_matrix/client/v3/profile/"+esc("@bob:"+name))
	if code != 200 || body["displayname"] != "Bob" || body["avatar_url"] != "mxc://x/y" {
		t.Fatalf("remote profile: %d %v", code, body)
	}
	code, body = get(t, h, "/_matrix/client/v3/profile/"+esc("@bob:"+name)+"/displayname")
	if code != 200 || body["displayname"] != "Bob" || len(body) != 1 {
		t.Fatalf("remote displayname: %d %v", code, body)
	}
	for _, c := range []struct {
		path, errcode string
		status        int
	}{
		{"/_matrix/client/v3/profile/" + esc("@nobody:"+name), "M_NOT_FOUND", 404},
		{"/_matrix/client/v3/profile/" + esc("@private:"+name), "M_FORBIDDEN", 403},
		{"/_matrix/client/v3/profile/" + esc("@x:"+closedPort(t)), "M_UNKNOWN", 502},
		{"/_matrix/client/v3/directory/room/" + esc("#nope:"+name), "M_NOT_FOUND", 404},
		{"/_matrix/client/v3/directory/room/" + esc("#room:"+closedPort(t)), "M_UNKNOWN", 502},
	} {
		code, body := get(t, h, c.path)
		if code != c.status || body["errcode"] != c.errcode {
			t.Errorf("GET %s: %d %v, want %d %s", c.path, code, body, c.status, c.errcode)
		}
	}
	code, body = get(t, h, "/_matrix/client/v3/directory/room/"+esc("#room:"+name))
	servers, _ := body["servers"].([]any)
	if code != 200 || body["room_id"] != "!r:"+name || len(servers) != 2 {
		t.Fatalf("remote alias: %d %v", code, body)
	}
}

// A server that does not answer in time is a 504.
func TestFederationRemoteProfileTimeout(t *testing.T) {
	ca := testca.New(t)
	block := make(chan struct{})
	defer close(block)
	name := remoteServer(t, ca, block)
	h := clientAPI(t, ca, 200*time.Millisecond)
	code, body := get(t, h, "/_matrix/client/v3/profile/"+url.PathEscape("@bob:"+name))
	if code != 504 || body["errcode"] != "M_UNKNOWN" {
		t.Fatalf("slow server: %d %v", code, body)
	}
}

// closedPort is a loopback server name nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
