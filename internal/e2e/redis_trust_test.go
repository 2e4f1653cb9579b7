package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/config"
	"ganglion/internal/storage"
)

// forgedPosition is what a stranger on Redis claims: far beyond anything
// the fleet has written.
const forgedPosition = 99999999

// forgedTypingPosition is a forged position of the typing stream, whose
// writer numbers positions from its clock (microseconds since 1970).
const forgedTypingPosition = 8_000_000_000_000_000_000

// TestRedisForgedPositionsIgnored: anyone who can publish on the fleet's
// Redis channel claims huge positions (POSITION and RDATA) for the event
// persisters and other writers. Nobody may believe them: a message sent
// afterwards reaches another user's /sync, no process reports a position
// near the forged one, and after a full restart it all still holds — even
// with a forged row planted in stream_positions, as older versions saved
// one when a persister took a forged position as its own.
func TestRedisForgedPositionsIgnored(t *testing.T) {
	t.Parallel()
	srv := startFrontServer(t, engineFleetRouter, "router")
	f := srv.fleet
	ctx := testContext(t)
	alice := srv.register(t, ctx, "alice")
	bob := srv.register(t, ctx, "bob")
	// A room on each persister: a persister that took a forged position
	// as its own would hide its own rooms' new messages.
	rooms := map[string]id.RoomID{}
	for i := 0; len(rooms) < 2; i++ {
		if i == 20 {
			t.Fatalf("20 rooms and still not one per persister: %v", rooms)
		}
		r := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		if p := config.ShardFor([]string{instPersister1, instPersister2}, r.String()); rooms[p] == "" {
			rooms[p] = r
			join(t, ctx, bob, r.String())
		}
	}
	room := rooms[instPersister1]
	bs, _ := newSyncer(t, ctx, bob, "")

	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", f.redis.port)})
	defer rdb.Close()
	row, _ := json.Marshal([]any{"ev", []any{"$forged", room.String(), "m.room.message", nil, nil, nil, nil, false, false}})
	forged := []string{
		fmt.Sprintf("POSITION events %s 0 %d", instPersister1, forgedPosition),
		fmt.Sprintf("POSITION events %s 0 %d", instPersister2, forgedPosition),
		fmt.Sprintf("RDATA events %s %d %s", instPersister1, forgedPosition+1, row),
		fmt.Sprintf("POSITION caches %s 0 %d", instMain, forgedPosition),
		fmt.Sprintf("POSITION to_device %s 0 %d", instWriter, forgedPosition),
		fmt.Sprintf("POSITION receipts %s 0 %d", instWriter, forgedPosition),
		// Typing positions come from the writer's clock; the writer itself
		// is asked.
		fmt.Sprintf("POSITION typing %s 0 %d", instWriter, forgedTypingPosition),
	}
	for _, line := range forged {
		// The channel is the server name (no channel_prefix here).
		if err := rdb.Publish(ctx, serverName, line).Err(); err != nil {
			t.Fatalf("publish %q: %v", line, err)
		}
	}

	// Every process handles the channel in order, so the forged lines are
	// in before the RDATA of anything sent now. The first message shows
	// in any case; the token after it would carry a forged position if one
	// had been believed, and the second message would then never show.
	sendAndSee := func(what string) {
		t.Helper()
		for p, room := range rooms {
			what := what + " in " + p + "'s room"
			ev := send(t, ctx, alice, room, what, strings.ReplaceAll(what, " ", "-"))
			bs.until(t, ctx, what, func(r *mautrix.RespSync) bool {
				return containsEvent(timelineOf(r, room), ev)
			})
		}
	}
	sendAndSee("after the forgery 1")
	sendAndSee("after the forgery 2")
	wantNoForgedPosition(t, ctx, f)

	// What an older version left behind: a persister's saved position
	// taken from Redis. It must not survive a restart.
	db := openFleetDB(t, ctx, f)
	if _, err := db.Exec(ctx, `INSERT INTO stream_positions (stream_name, instance_name, stream_id) VALUES ('events', $1, $2)
		ON CONFLICT (stream_name, instance_name) DO UPDATE SET stream_id = excluded.stream_id`,
		instPersister2, forgedPosition); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM stream_positions WHERE stream_id >= $1`, forgedPosition).Scan(&n); err != nil || n != 1 {
		t.Fatalf("planting the forged saved position: %d rows, %v", n, err)
	}
	srv.restart(t)
	for _, line := range forged {
		if err := rdb.Publish(ctx, serverName, line).Err(); err != nil {
			t.Fatalf("publish %q: %v", line, err)
		}
	}
	sendAndSee("after the restart 1")
	sendAndSee("after the restart 2")
	wantNoForgedPosition(t, ctx, f)
	if err := db.Reader().QueryRowContext(ctx, `SELECT count(*) FROM stream_positions WHERE stream_id >= $1`, forgedPosition).Scan(&n); err != nil || n != 0 {
		t.Errorf("stream_positions rows at the forged position after the restart: %d, %v", n, err)
	}
}

func containsEvent(evs []*event.Event, e id.EventID) bool {
	for _, ev := range evs {
		if ev.ID == e {
			return true
		}
	}
	return false
}

var anyPositionLine = regexp.MustCompile(`^ganglion_stream_position\{instance="([^"]+)",stream="([^"]+)",writer="([^"]+)"\} (\S+)$`)

// wantNoForgedPosition checks every process's view of every writer.
func wantNoForgedPosition(t *testing.T, ctx context.Context, f *fleet) {
	t.Helper()
	for _, p := range f.procs {
		body, err := f.get(ctx, fmt.Sprintf("http://127.0.0.1:%d/metrics", p.replPort))
		if err != nil {
			t.Fatalf("metrics of %s: %v", p.name, err)
		}
		for _, line := range strings.Split(body, "\n") {
			m := anyPositionLine.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			limit := int64(forgedPosition)
			if m[2] == "typing" {
				// Typing positions come from the writer's clock.
				limit = forgedTypingPosition
			}
			if pos := sampleInt(m[4]); pos >= limit {
				t.Errorf("%s believes a forged position: %s", p.name, line)
			}
		}
	}
}

// openFleetDB opens the fleet's database as its config names it.
func openFleetDB(t *testing.T, ctx context.Context, f *fleet) *storage.DB {
	t.Helper()
	cfg, err := config.Load([]string{f.shared}, nil)
	if err != nil {
		t.Fatal(err)
	}
	db, err := storage.Open(ctx, storage.Options{Engine: storage.Postgres, DSN: cfg.Database.DSN(), MaxConns: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// outageSendLimit bounds how long the load may take to make progress while
// Redis is unavailable: well below the 5 s position wait a send used to
// spend on the missing doorbell, and far above a send's normal time.
const outageSendLimit = 4 * time.Second

// TestFaultRedisOutageDoesNotStallSends: while Redis is paused (SIGSTOP:
// connections stay open and nothing answers) and then while it is down,
// sends return as soon as they are committed: every message loop makes
// progress before Redis is back. Afterwards every reader catches up and
// the usual fault checks (nothing lost, gapless timelines) hold.
func TestFaultRedisOutageDoesNotStallSends(t *testing.T) {
	t.Parallel()
	runFault(t, func(t *testing.T, fx *faultFixture) {
		fx.f.redis.signal(t, syscall.SIGSTOP)
		progressed := fx.progressWithin(2, outageSendLimit, fx.messageLoops()...)
		fx.f.redis.signal(t, syscall.SIGCONT)
		if !progressed {
			t.Fatalf("sends while Redis is paused: the message loops did not make 2 acknowledged sends each in %v (load: %s)",
				outageSendLimit, fx.load.summary())
		}
		fx.waitProgress(t, "every loop after Redis resumed", 3, fx.allLoops()...)

		fx.f.redis.stop()
		progressed = fx.progressWithin(2, outageSendLimit, fx.messageLoops()...)
		if err := fx.f.redis.start(); err != nil {
			t.Fatalf("restart redis-server on port %d: %v", fx.f.redis.port, err)
		}
		if !progressed {
			t.Fatalf("sends while Redis is down: the message loops did not make 2 acknowledged sends each in %v (load: %s)",
				outageSendLimit, fx.load.summary())
		}
		fx.f.waitAllReady(t)
		fx.waitProgress(t, "every loop after Redis restarted", 3, fx.allLoops()...)
	})
}

// progressWithin reports whether each loop got n more acknowledgements
// within limit.
func (fx *faultFixture) progressWithin(n int, limit time.Duration, loops ...string) bool {
	base := map[string]int{}
	for _, l := range loops {
		base[l] = fx.load.acks(l)
	}
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		done := true
		for _, l := range loops {
			if fx.load.acks(l)-base[l] < n {
				done = false
			}
		}
		if done {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
}

// signal sends sig to the running redis-server (SIGSTOP pauses it with its
// connections open, SIGCONT resumes it).
func (r *redisServer) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	r.mu.Lock()
	c := r.run
	r.mu.Unlock()
	if c == nil {
		t.Fatal("redis-server is not running")
	}
	if err := c.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal redis-server: %v", err)
	}
	if sig == syscall.SIGSTOP {
		// A paused server never answers: resume it whatever the test does.
		t.Cleanup(func() { _ = c.cmd.Process.Signal(syscall.SIGCONT) })
	}
}
