package edus_test

import (
	"net"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"testing"

	"ganglion/internal/config"
	"ganglion/internal/federation/edus"
	"ganglion/internal/keys"
	"ganglion/internal/presence"
	"ganglion/internal/receipts"
	"ganglion/internal/replication"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
	"ganglion/internal/todevice"
	"ganglion/internal/typing"
)

// On a generic worker (the process serving /send for an origin) the
// handlers hold the forwarding writers, as the client API does there:
// every EDU reaches the writer ("main") over HTTP replication and lands in
// its streams.
func TestFederationEDUsOnWorker(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db) // the writer's side
		rpc := replication.NewServer("secret", f.reg, discard)
		typing.Serve(rpc, f.typing)
		receipts.Serve(rpc, f.receipts)
		todevice.Serve(rpc, f.tdw)
		keys.Serve(rpc, f.kw)
		presence.Serve(rpc, f.pres, f.pres.Position)
		presence.ServeFederation(rpc, f.pres)
		ts := httptest.NewServer(rpc)
		t.Cleanup(ts.Close)
		u, _ := url.Parse(ts.URL)
		host, portStr, _ := net.SplitHostPort(u.Host)
		port, _ := strconv.Atoi(portStr)

		workerReg, err := streams.NewRegistry("worker1", streams.AllDefs(), nil, streams.NewNotifier())
		if err != nil {
			t.Fatal(err)
		}
		// No registry for the client: nothing replicates the writer's rows
		// to this worker here, so there are no positions to wait for; the
		// test reads on the writer's side.
		cli := replication.NewClient(replication.InstanceLookup(map[string]config.InstanceLocation{"main": {Host: host, Port: port}}),
			"secret", "worker1", nil, discard)
		t.Cleanup(cli.CloseIdleConnections)
		workerKeys := keys.NewService(db, workerReg, keys.NewRemoteWriter(cli, "main"), server, discard)
		workerKeys.SetFederation(f.fed)
		worker := edus.New(edus.Options{ServerName: server}, edus.Deps{
			Typing:   typing.NewRemoteWriter(cli, "main"),
			Receipts: receipts.NewRemoteWriter(cli, "main"),
			Presence: presence.NewRemoteWriter(t.Context(), cli, "main", nil, "worker1", discard),
			ToDevice: todevice.NewRemoteWriter(cli, "main"),
			Keys:     workerKeys,
			Rooms:    f.store,
		}, discard)
		h := registrar{}
		worker.Register(h)
		do := func(typ string, content any) {
			t.Helper()
			if err := h[typ](t.Context(), remote, raw(content)); err != nil {
				t.Fatalf("%s: %v", typ, err)
			}
		}

		do(edus.Typing, map[string]any{"room_id": f.room, "user_id": bob, "typing": true})
		if got := f.typing.Typing(f.room); !slices.Equal(got, []string{bob}) {
			t.Fatalf("typers on the writer %v", got)
		}
		do(edus.Receipt, map[string]any{f.room: map[string]any{"m.read": map[string]any{bob: map[string]any{"event_ids": []string{"$e"}, "data": map[string]any{"ts": 1}}}}})
		if rows, err := receipts.NewStore(db).Rows(t.Context(), 0, f.receipts.Position(), 10); err != nil || len(rows) != 1 || rows[0].UserID != bob {
			t.Fatalf("receipts on the writer %+v %v", rows, err)
		}
		pos := f.pres.Position()
		do(edus.Presence, map[string]any{"push": []any{map[string]any{"user_id": bob, "presence": "unavailable", "last_active_ago": 10}}})
		if f.pres.Position() <= pos {
			t.Fatal("remote presence did not reach the presence writer")
		}
		do(edus.DirectToDevice, map[string]any{"sender": bob, "type": "m.x", "message_id": "w1",
			"messages": map[string]any{alice: map[string]any{"PHONE": map[string]any{"n": 1}}}})
		if msgs, _, err := f.td.Messages(t.Context(), alice, "PHONE", 0, f.td.Position(), 0); err != nil || len(msgs) != 1 {
			t.Fatalf("to-device on the writer %+v %v", msgs, err)
		}
		f.serveDevices(4, "B1")
		tok := f.reg.CurrentToken()
		do(edus.DeviceList, map[string]any{"user_id": bob, "device_id": "B1", "stream_id": 4, "prev_id": []int64{}})
		changed, _, err := f.keys.Changes(t.Context(), alice, tok, f.reg.CurrentToken())
		if err != nil || !slices.Contains(changed, bob) {
			t.Fatalf("device list change on the writer: %v %v", changed, err)
		}
		if got := f.bobKeys(); got["B1"] == nil {
			t.Fatalf("bob's cached devices %v", got)
		}
	})
}
