package todevice_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
	"ganglion/internal/todevice"
)

const server = "td.test"

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type fixture struct {
	db  *storage.DB
	reg *streams.Registry
	w   *todevice.LocalWriter
	s   *todevice.Service
	acc *accounts.Service
}

// newFixture starts a to_device writer; a second call over the same
// database is a restart of the process.
func newFixture(t *testing.T, db *storage.DB) *fixture {
	t.Helper()
	reg, err := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	w, err := todevice.NewLocalWriter(ctxT(t), db, reg, server, discard)
	if err != nil {
		t.Fatal(err)
	}
	acc := accounts.NewService(db, accounts.Settings{ServerName: server, BcryptRounds: 4}, discard)
	return &fixture{db: db, reg: reg, w: w, s: todevice.NewService(db, reg, w, discard), acc: acc}
}

// user registers localpart with the given devices and returns the user id
// and the first device's access token.
func (f *fixture) user(t *testing.T, localpart string, devices ...string) (string, string) {
	t.Helper()
	ctx := ctxT(t)
	sess, err := f.acc.Register(ctx, accounts.NewUser{Localpart: localpart, DeviceID: devices[0]})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devices[1:] {
		if _, err := f.acc.CreateSession(ctx, sess.UserID, d, "", false); err != nil {
			t.Fatal(err)
		}
	}
	return sess.UserID, sess.AccessToken
}

func msg(v string) json.RawMessage { return json.RawMessage(fmt.Sprintf(`{"v":%q}`, v)) }

// bodies lists the "v" of each message, in order.
func bodies(t *testing.T, msgs []todevice.Message) []string {
	t.Helper()
	var out []string
	for _, m := range msgs {
		var c struct{ V string }
		if err := json.Unmarshal(m.Content, &c); err != nil {
			t.Fatal(err)
		}
		out = append(out, c.V)
	}
	return out
}

func (f *fixture) pending(t *testing.T, userID, deviceID string) []string {
	t.Helper()
	msgs, _, err := f.s.Messages(ctxT(t), userID, deviceID, 0, f.s.Position(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	return bodies(t, msgs)
}

func TestSendExpandsAndSkips(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice, _ := f.user(t, "alice", "A1")
		bob, _ := f.user(t, "bob", "B1", "B2", "B3")

		l := f.reg.Notifier().Listen(streams.UserKey(bob))
		defer l.Close()
		err := f.w.Send(ctx, alice, "A1", "t1", "m.test", map[string]map[string]json.RawMessage{
			bob:                   {"*": msg("all"), "B2": msg("just-b2"), "NOPE": msg("unknown device")},
			"@ghost:" + server:    {"*": msg("unknown user"), "G1": msg("unknown user")},
			"@remote:elsewhere.x": {"R1": msg("remote")},
		})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-l.C:
		default:
			t.Fatal("send did not wake the recipient")
		}
		want := map[string][]string{"B1": {"all"}, "B2": {"just-b2"}, "B3": {"all"}, "NOPE": nil}
		for dev, w := range want {
			if got := f.pending(t, bob, dev); !slices.Equal(got, w) {
				t.Errorf("bob/%s got %v, want %v", dev, got, w)
			}
		}
		msgs, _, _ := f.s.Messages(ctx, bob, "B1", 0, f.s.Position(), 0)
		if len(msgs) != 1 || msgs[0].Sender != alice || msgs[0].Type != "m.test" {
			t.Fatalf("message = %+v", msgs)
		}
		var n int
		if err := db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM device_inbox`).Scan(&n); err != nil || n != 3 {
			t.Fatalf("inbox rows = %d, %v; want 3 (nothing for unknown or remote recipients)", n, err)
		}
	})
}

func TestSendIsIdempotentPerDeviceTxn(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice, _ := f.user(t, "alice", "A1", "A2")
		bob, _ := f.user(t, "bob", "B1")
		send := func(dev, txn, v string) {
			t.Helper()
			if err := f.w.Send(ctx, alice, dev, txn, "m.test", map[string]map[string]json.RawMessage{bob: {"B1": msg(v)}}); err != nil {
				t.Fatal(err)
			}
		}
		send("A1", "txn1", "first")
		send("A1", "txn1", "retry") // the retry of txn1 does nothing
		send("A2", "txn1", "other device")
		send("A1", "txn2", "second")
		if got := f.pending(t, bob, "B1"); !slices.Equal(got, []string{"first", "other device", "second"}) {
			t.Fatalf("bob got %v", got)
		}
		// A restarted writer still remembers the transaction.
		f2 := newFixture(t, db)
		if err := f2.w.Send(ctx, alice, "A1", "txn1", "m.test", map[string]map[string]json.RawMessage{bob: {"B1": msg("after restart")}}); err != nil {
			t.Fatal(err)
		}
		if got := f2.pending(t, bob, "B1"); len(got) != 3 {
			t.Fatalf("retry after restart delivered: %v", got)
		}
		// Pruning forgets old transactions.
		n, err := f2.s.PruneTxns(ctx, time.Now().Add(time.Hour), time.Minute)
		if err != nil || n != 3 {
			t.Fatalf("pruned %d, %v", n, err)
		}
	})
}

func TestMessagesWindowsLimitsAndAck(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice, _ := f.user(t, "alice", "A1")
		bob, _ := f.user(t, "bob", "B1")
		var ids []int64
		for i := range 5 {
			if err := f.w.Send(ctx, alice, "A1", fmt.Sprint(i), "m.test", map[string]map[string]json.RawMessage{bob: {"B1": msg(fmt.Sprint(i))}}); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, f.s.Position())
		}
		now := f.s.Position()
		cases := []struct {
			name     string
			from, to int64
			limit    int
			want     []string
			wantUpTo int64
		}{
			{"all", 0, now, 0, []string{"0", "1", "2", "3", "4"}, now},
			{"limited", 0, now, 2, []string{"0", "1"}, ids[1]},
			{"next page", ids[1], now, 2, []string{"2", "3"}, ids[3]},
			{"exactly the limit left", ids[2], now, 2, []string{"3", "4"}, now},
			{"bounded by to", 0, ids[2], 10, []string{"0", "1", "2"}, ids[2]},
			{"nothing new", now, now, 10, nil, now},
		}
		for _, c := range cases {
			msgs, upTo, err := f.s.Messages(ctx, bob, "B1", c.from, c.to, c.limit)
			if err != nil {
				t.Fatal(err)
			}
			if got := bodies(t, msgs); !slices.Equal(got, c.want) || upTo != c.wantUpTo {
				t.Errorf("%s: got %v up to %d, want %v up to %d", c.name, got, upTo, c.want, c.wantUpTo)
			}
		}

		// Sync 1 delivers two and hands out upTo; the client loses the
		// response and syncs again with its old token (0): nothing was
		// acknowledged, so it gets them again.
		_, upTo, _ := f.s.Messages(ctx, bob, "B1", 0, now, 2)
		if err := f.s.Ack(ctx, bob, "B1", 0); err != nil {
			t.Fatal(err)
		}
		again, _, _ := f.s.Messages(ctx, bob, "B1", 0, now, 2)
		if got := bodies(t, again); !slices.Equal(got, []string{"0", "1"}) {
			t.Fatalf("redelivery got %v", got)
		}
		// Presenting upTo acknowledges them: gone for good.
		if err := f.s.Ack(ctx, bob, "B1", upTo); err != nil {
			t.Fatal(err)
		}
		if got := f.pending(t, bob, "B1"); !slices.Equal(got, []string{"2", "3", "4"}) {
			t.Fatalf("after ack: %v", got)
		}
	})
}

func TestExactlyOnceAcrossRestart(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice, _ := f.user(t, "alice", "A1")
		bob, _ := f.user(t, "bob", "B1")
		send := func(f *fixture, txn string) {
			t.Helper()
			if err := f.w.Send(ctx, alice, "A1", txn, "m.test", map[string]map[string]json.RawMessage{bob: {"B1": msg(txn)}}); err != nil {
				t.Fatal(err)
			}
		}
		send(f, "m1")
		send(f, "m2")
		msgs, token, _ := f.s.Messages(ctx, bob, "B1", 0, f.s.Position(), 10)
		if len(msgs) != 2 {
			t.Fatalf("before restart: %v", bodies(t, msgs))
		}
		// The process dies before the client comes back with token; its
		// position was never saved and every row will be acknowledged.
		f2 := newFixture(t, db)
		if f2.s.Position() < token {
			t.Fatalf("restarted at %d, behind the client's token %d", f2.s.Position(), token)
		}
		if err := f2.s.Ack(ctx, bob, "B1", token); err != nil {
			t.Fatal(err)
		}
		// The inbox is now empty, so only the sequence says how far the
		// stream got: a second restart must not go back behind token.
		f3 := newFixture(t, db)
		if f3.s.Position() < token || f3.w.Position() < token {
			t.Fatalf("empty inbox: restarted at %d/%d, behind token %d", f3.s.Position(), f3.w.Position(), token)
		}
		send(f3, "m3")
		msgs, _, _ = f3.s.Messages(ctx, bob, "B1", token, f3.s.Position(), 10)
		if got := bodies(t, msgs); !slices.Equal(got, []string{"m3"}) {
			t.Fatalf("after restart: %v (each message exactly once)", got)
		}
	})
}

func TestDeleteDeviceInbox(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice, _ := f.user(t, "alice", "A1")
		bob, _ := f.user(t, "bob", "B1", "B2")
		if err := f.w.Send(ctx, alice, "A1", "t", "m.test", map[string]map[string]json.RawMessage{bob: {"*": msg("x")}}); err != nil {
			t.Fatal(err)
		}
		if err := f.s.DeleteDeviceInbox(ctx, bob, "B1"); err != nil {
			t.Fatal(err)
		}
		if got := f.pending(t, bob, "B1"); len(got) != 0 {
			t.Fatalf("deleted device still has %v", got)
		}
		if got := f.pending(t, bob, "B2"); !slices.Equal(got, []string{"x"}) {
			t.Fatalf("other device lost its message: %v", got)
		}
	})
}

func TestSendToDeviceHTTP(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		f := newFixture(t, db)
		_, token := f.user(t, "alice", "A1")
		bob, _ := f.user(t, "bob", "B1")
		mux := mxhttp.NewMux()
		f.s.Routes(mux, mxhttp.NewServer(discard), f.acc)
		put := func(path, body string) (int, string) {
			r := httptest.NewRequest("PUT", "/_matrix/client/v3/sendToDevice/"+path, bytes.NewBufferString(body))
			r.Header.Set("Authorization", "Bearer "+token)
			w := httptest.NewRecorder()
			// The embedded ServeMux: mxhttp.Mux.ServeHTTP leaves path
			// values unset (reported to the lead).
			mux.ServeMux.ServeHTTP(w, r)
			var e struct{ Errcode string }
			_ = json.Unmarshal(w.Body.Bytes(), &e)
			return w.Code, e.Errcode
		}
		cases := []struct {
			path, body string
			status     int
			code       string
		}{
			{"m.test/1", `{}`, 400, "M_BAD_JSON"},
			{"m.test/2", `{"messages":[1]}`, 400, "M_BAD_JSON"},
			{"m.test/3", `{"messages":{"` + bob + `":{"B1":"text"}}}`, 400, "M_BAD_JSON"},
			{"m.test/4", `{"messages":{"` + bob + `":{"B1":null}}}`, 400, "M_BAD_JSON"},
			{"m.test/5", `{"messages":{"bob":{"B1":{}}}}`, 400, "M_INVALID_PARAM"},
			{"m.test/6", `nope`, 400, "M_NOT_JSON"},
			{"m.test/7", `{"messages":{"` + bob + `":{"B1":{"v":"hello"}}}}`, 200, ""},
			{"m.test/7", `{"messages":{"` + bob + `":{"B1":{"v":"hello"}}}}`, 200, ""},
		}
		for _, c := range cases {
			if status, code := put(c.path, c.body); status != c.status || code != c.code {
				t.Errorf("PUT %s %s: %d %s, want %d %s", c.path, c.body, status, code, c.status, c.code)
			}
		}
		if got := f.pending(t, bob, "B1"); !slices.Equal(got, []string{"hello"}) {
			t.Fatalf("bob got %v", got)
		}
	})
}
