package typing_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/replication"
	"ganglion/internal/streams"
	"ganglion/internal/typing"
)

// TestFetchPosition: a reader asks the typing writer over HTTP replication
// for its position (the bound of typing positions heard on Redis), and the
// answer follows the writer's changes.
func TestFetchPosition(t *testing.T) {
	f := newFixture(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := replication.NewServer("secret", f.reg, log)
	f.reg.SetSource(streams.Typing, f.svc)
	typing.ServeStreamUpdates(srv, f.reg)
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	u, _ := url.Parse(ts.URL)
	host, port, _ := net.SplitHostPort(u.Host)
	p, _ := strconv.Atoi(port)
	cli := replication.NewClient(replication.InstanceLookup(map[string]config.InstanceLocation{"main": {Host: host, Port: p}}),
		"secret", "worker1", nil, log)
	t.Cleanup(cli.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	before, err := typing.FetchPosition(ctx, cli, streams.Typing, "main")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.svc.SetTyping(ctx, "!r:x", "@u:x", true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	after, err := typing.FetchPosition(ctx, cli, streams.Typing, "main")
	if err != nil {
		t.Fatal(err)
	}
	if want := f.reg.WriterPosition(streams.Typing, "main"); after != want || after <= before {
		t.Fatalf("FetchPosition before %d, after %d; writer at %d", before, after, want)
	}
}
