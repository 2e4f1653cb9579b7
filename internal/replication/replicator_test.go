package replication_test

import (
	"context"
	"encoding/json"
	"fmt"
	"ganglion/internal/testutil"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"ganglion/internal/replication"
	"ganglion/internal/streams"
)

// redisOptions reads GANGLION_TEST_REDIS; the tests skip without it
// (scripts/test always sets it) unless CI demands every test.
func redisOptions(t *testing.T) replication.RedisOptions {
	t.Helper()
	raw := os.Getenv("GANGLION_TEST_REDIS")
	if raw == "" {
		if os.Getenv("CI") != "" || os.Getenv("GANGLION_REQUIRE_POSTGRES") != "" {
			t.Fatal("GANGLION_TEST_REDIS is not set")
		}
		t.Skip("GANGLION_TEST_REDIS not set; run scripts/test")
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(u.Port())
	return replication.RedisOptions{Host: u.Hostname(), Port: port}
}

// memSource is a table-backed stream's rows kept in memory: the "database"
// both processes of a test share.
type memSource struct {
	mu   sync.Mutex
	rows map[string][]streams.Row // writer → rows in token order
	seq  int64                    // ids handed out without rows (bound)
}

func newMemSource() *memSource { return &memSource{rows: map[string][]streams.Row{}} }

func (m *memSource) add(writer string, token int64, key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	data, _ := json.Marshal([]string{key})
	m.rows[writer] = append(m.rows[writer], streams.Row{Token: token, Data: data})
}

func (m *memSource) Rows(ctx context.Context, writer string, from, to int64, limit int) ([]streams.Row, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []streams.Row
	for _, r := range m.rows[writer] {
		if r.Token > from && r.Token <= to && len(out) < limit {
			out = append(out, r)
		}
	}
	return out, nil
}

// bound is the test's stand-in for the stream's sequence: the highest
// token any writer added.
func (m *memSource) bound(ctx context.Context, name streams.Name, writer string) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b int64
	for _, rows := range m.rows {
		for _, r := range rows {
			b = max(b, r.Token)
		}
	}
	return max(b, m.seq), nil
}

func (m *memSource) Apply(ctx context.Context, writer string, row streams.Row) []string {
	var keys []string
	_ = json.Unmarshal(row.Data, &keys)
	return keys
}

type process struct {
	reg    *streams.Registry
	rep    *replication.Replicator
	cancel context.CancelFunc
	done   chan struct{}
}

func start(t *testing.T, channel, instance string, writers map[streams.Name][]string, src *memSource) *process {
	t.Helper()
	reg, err := streams.NewRegistry(instance, streams.AllDefs(), writers, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	reg.SetSource(streams.AccountData, src)
	reg.SetSource(streams.Receipts, src)
	reg.SetSource(streams.Typing, src)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	bus := replication.NewBus(channel, redisOptions(t), log)
	rep := replication.NewReplicator(bus, reg, src.bound, log)
	ctx, cancel := context.WithCancel(context.Background())
	p := &process{reg: reg, rep: rep, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		_ = rep.Run(ctx)
	}()
	t.Cleanup(p.stop)
	return p
}

func (p *process) stop() {
	p.cancel()
	<-p.done
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, what, cond)
}

func uniqueChannel(t *testing.T) string {
	return fmt.Sprintf("replicator-test-%s-%d", t.Name(), time.Now().UnixNano())
}

// write simulates a committed write on a writer: rows first (the
// database), then the tracker (the position moves only after commit).
func write(p *process, tr *streams.Tracker, src *memSource, name streams.Name, id int64, key string) {
	res := tr.Reserve()
	res.Add(id)
	src.add(p.reg.Instance(), id, key)
	res.Done()
}

func TestRowsReachReaderAndWake(t *testing.T) {
	ch := uniqueChannel(t)
	src := newMemSource()
	writers := map[streams.Name][]string{streams.AccountData: {"w"}}
	w := start(t, ch, "w", writers, src)
	r := start(t, ch, "r", writers, src)
	tr := w.reg.LocalTracker(streams.AccountData, 0)
	eventually(t, "both connected", func() bool { return w.rep.Connected() && r.rep.Connected() })
	// Wait until the reader has applied a POSITION (it drops RDATA before).
	eventually(t, "reader knows the writer", func() bool { return r.reg.Current(streams.AccountData) == 0 && r.rep.Connected() })
	l := r.reg.Notifier().Listen(streams.UserKey("@u:x"))
	defer l.Close()
	write(w, tr, src, streams.AccountData, 1, streams.UserKey("@u:x"))
	eventually(t, "reader at 1", func() bool { return r.reg.Current(streams.AccountData) >= 1 })
	select {
	case <-l.C:
	case <-time.After(10 * time.Second):
		t.Fatal("reader's listener was not woken")
	}
}

func TestReaderCatchesUpAfterMissingRows(t *testing.T) {
	ch := uniqueChannel(t)
	src := newMemSource()
	writers := map[streams.Name][]string{streams.AccountData: {"w"}}
	w := start(t, ch, "w", writers, src)
	tr := w.reg.LocalTracker(streams.AccountData, 0)
	eventually(t, "writer connected", w.rep.Connected)
	// The reader is down while these are written: Redis drops them.
	for i := int64(1); i <= 250; i++ {
		write(w, tr, src, streams.AccountData, i, streams.UserKey(fmt.Sprint("@u", i, ":x")))
	}
	r := start(t, ch, "r", writers, src)
	l := r.reg.Notifier().Listen(streams.UserKey("@u250:x"))
	defer l.Close()
	// Its REPLICATE makes the writer announce 250; the gap is fetched from
	// the source in batches.
	eventually(t, "reader caught up to 250", func() bool { return r.reg.Current(streams.AccountData) == 250 })
	select {
	case <-l.C:
	case <-time.After(10 * time.Second):
		t.Fatal("catch-up did not wake the last row's key")
	}
}

func TestIdleWriterFollowsAndMinimumAdvances(t *testing.T) {
	ch := uniqueChannel(t)
	src := newMemSource()
	writers := map[streams.Name][]string{streams.Receipts: {"a", "b"}}
	a := start(t, ch, "a", writers, src)
	b := start(t, ch, "b", writers, src)
	r := start(t, ch, "r", writers, src)
	ta := a.reg.LocalTracker(streams.Receipts, 0)
	b.reg.LocalTracker(streams.Receipts, 0)
	eventually(t, "all connected", func() bool { return a.rep.Connected() && b.rep.Connected() && r.rep.Connected() })
	l := r.reg.Notifier().Listen(streams.RoomKey("!room:x"))
	defer l.Close()
	// Only a writes; b is idle and must not hold the minimum back.
	for i := int64(1); i <= 5; i++ {
		write(a, ta, src, streams.Receipts, i, streams.RoomKey("!room:x"))
	}
	eventually(t, "reader's minimum reaches 5", func() bool { return r.reg.Current(streams.Receipts) == 5 })
	if got := r.reg.WriterPosition(streams.Receipts, "b"); got < 5 {
		t.Fatalf("idle writer b at %d on the reader", got)
	}
	select {
	case <-l.C:
	case <-time.After(10 * time.Second):
		t.Fatal("wake-up held for the minimum never released")
	}
}

func TestBatchedRowsApplyTogether(t *testing.T) {
	ch := uniqueChannel(t)
	src := newMemSource()
	writers := map[streams.Name][]string{streams.AccountData: {"w"}}
	w := start(t, ch, "w", writers, src)
	r := start(t, ch, "r", writers, src)
	tr := w.reg.LocalTracker(streams.AccountData, 0)
	eventually(t, "connected", func() bool { return w.rep.Connected() && r.rep.Connected() })
	ls := []*streams.Listener{r.reg.Notifier().Listen(streams.UserKey("@a:x")), r.reg.Notifier().Listen(streams.UserKey("@b:x"))}
	// Two rows sharing one stream id (a to-device send to two users).
	res := tr.Reserve()
	res.Add(1)
	src.add("w", 1, streams.UserKey("@a:x"))
	src.add("w", 1, streams.UserKey("@b:x"))
	res.Done()
	eventually(t, "reader at 1", func() bool { return r.reg.Current(streams.AccountData) == 1 })
	for i, l := range ls {
		select {
		case <-l.C:
		case <-time.After(10 * time.Second):
			t.Fatalf("row %d of the batch not applied", i)
		}
		l.Close()
	}
}

// TestStalePositionDoesNotRewind: a POSITION below what a reader already
// applied (a writer's handshake announcement computed before, and
// published after, its latest row) is ignored, on the in-memory typing
// stream too: it must not read as a restart and drop applied rows.
func TestStalePositionDoesNotRewind(t *testing.T) {
	ch := uniqueChannel(t)
	src := newMemSource()
	writers := map[streams.Name][]string{streams.Typing: {"w"}, streams.AccountData: {"x"}}
	w := start(t, ch, "w", writers, src)
	r := start(t, ch, "r", writers, src)
	// The typing writer seeds its position from the clock; the bound
	// (its own answer over HTTP in a fleet) knows that.
	src.mu.Lock()
	src.seq = 100
	src.mu.Unlock()
	tr := w.reg.LocalTracker(streams.Typing, 100)
	eventually(t, "both connected", func() bool { return w.rep.Connected() && r.rep.Connected() })
	eventually(t, "reader knows the typing writer", func() bool { return r.reg.WriterPosition(streams.Typing, "w") == 100 })
	write(w, tr, src, streams.Typing, 101, streams.RoomKey("!r:x"))
	eventually(t, "reader at 101", func() bool { return r.reg.WriterPosition(streams.Typing, "w") == 101 })

	// Inject the stale announcement, then a marker on another stream:
	// commands are handled in order, so once the marker is in, so is the
	// stale POSITION.
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	inj := replication.NewBus(ch, redisOptions(t), log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = inj.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, "injector connected", inj.Connected)
	for _, c := range []replication.Command{
		replication.Position{Stream: string(streams.Typing), Instance: "w", Prev: 100, New: 100},
		replication.Position{Stream: string(streams.AccountData), Instance: "x", Prev: 5, New: 5},
	} {
		if err := inj.Publish(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "reader handled the marker", func() bool { return r.reg.WriterPosition(streams.AccountData, "x") == 5 })
	if got := r.reg.WriterPosition(streams.Typing, "w"); got != 101 {
		t.Fatalf("typing position after a stale POSITION: %d, want 101", got)
	}
}
