package replication_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"ganglion/internal/replication"
	"ganglion/internal/streams"
	"ganglion/internal/testutil"
)

// injector is a bare bus on a channel, publishing what a stranger with
// access to Redis could.
func injector(t *testing.T, channel string, o replication.RedisOptions) *replication.Bus {
	t.Helper()
	inj := replication.NewBus(channel, o, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = inj.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, "injector connected", inj.Connected)
	return inj
}

func publish(t *testing.T, b *replication.Bus, cmds ...replication.Command) {
	t.Helper()
	for _, c := range cmds {
		if err := b.Publish(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
}

// TestForgedPositionsIgnored: POSITION and RDATA lines claiming positions
// beyond anything committed (the bound) move no reader, and no writer of
// a multi-writer stream adopts them as its own (through Bump); real writes
// keep flowing afterwards.
func TestForgedPositionsIgnored(t *testing.T) {
	ch := uniqueChannel(t)
	src := newMemSource()
	writers := map[streams.Name][]string{streams.AccountData: {"w"}, streams.Receipts: {"a", "b"}}
	w := start(t, ch, "w", writers, src)
	a := start(t, ch, "a", writers, src)
	r := start(t, ch, "r", writers, src)
	tw := w.reg.LocalTracker(streams.AccountData, 0)
	ta := a.reg.LocalTracker(streams.Receipts, 0)
	eventually(t, "all connected", func() bool { return w.rep.Connected() && a.rep.Connected() && r.rep.Connected() })
	write(w, tw, src, streams.AccountData, 1, streams.UserKey("@u:x"))
	eventually(t, "reader at 1", func() bool { return r.reg.WriterPosition(streams.AccountData, "w") == 1 })

	const forged = 99999999
	row, _ := json.Marshal([]string{streams.UserKey("@u:x")})
	inj := injector(t, ch, redisOptions(t))
	publish(t, inj,
		replication.Position{Stream: string(streams.AccountData), Instance: "w", Prev: 0, New: forged},
		replication.RData{Stream: string(streams.AccountData), Instance: "w", Token: forged + 1, Row: row},
		// b never writes: a would take b's position as its own (Bump).
		replication.Position{Stream: string(streams.Receipts), Instance: "b", Prev: 0, New: forged},
		replication.RData{Stream: string(streams.Receipts), Instance: "b", Token: forged + 2, Row: row},
		// A claim about a itself, heard by a.
		replication.Position{Stream: string(streams.Receipts), Instance: "a", Prev: 0, New: forged},
	)
	// A real row after the forgeries: once it is in, so are they (one
	// channel, handled in order).
	write(w, tw, src, streams.AccountData, 2, streams.UserKey("@u:x"))
	eventually(t, "reader at 2", func() bool { return r.reg.WriterPosition(streams.AccountData, "w") == 2 })
	write(a, ta, src, streams.Receipts, 3, streams.RoomKey("!r:x"))
	eventually(t, "reader has a's row 3", func() bool { return r.reg.WriterPosition(streams.Receipts, "a") == 3 })

	for _, p := range []*process{w, a, r} {
		for name, ws := range p.reg.Positions() {
			for writer, pos := range ws {
				if pos >= forged {
					t.Errorf("%s believes %s of %s is at %d", p.reg.Instance(), name, writer, pos)
				}
			}
		}
	}
	if got := ta.Position(); got != 3 {
		t.Errorf("writer a's own position = %d, want 3 (its commit)", got)
	}
}

// TestCatchUpToWithoutRedis: a position reported by the writer over HTTP
// replication is caught up from the source at once, with no Redis message
// at all (read-your-writes while the bus is down).
func TestCatchUpToWithoutRedis(t *testing.T) {
	src := newMemSource()
	writers := map[streams.Name][]string{streams.AccountData: {"w"}}
	reg, err := streams.NewRegistry("r", streams.AllDefs(), writers, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	reg.SetSource(streams.AccountData, src)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// A bus that is never run: Redis plays no part.
	replication.NewReplicator(replication.NewBus("unused", replication.RedisOptions{Host: "127.0.0.1", Port: 1}, log), reg, src.bound, log)
	l := reg.Notifier().Listen(streams.UserKey("@u2:x"))
	defer l.Close()
	src.add("w", 1, streams.UserKey("@u1:x"))
	src.add("w", 2, streams.UserKey("@u2:x"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := reg.CatchUp(ctx, streams.AccountData, "w", 2); err != nil {
		t.Fatal(err)
	}
	if got := reg.WriterPosition(streams.AccountData, "w"); got != 2 {
		t.Fatalf("position after CatchUp = %d, want 2", got)
	}
	select {
	case <-l.C:
	default:
		t.Fatal("the caught-up row did not wake its key")
	}
	// Our own positions never come from elsewhere.
	if err := reg.CatchUp(ctx, streams.AccountData, "r", 50); err != nil {
		t.Fatal(err)
	}
	if got := reg.WriterPosition(streams.AccountData, "r"); got != 0 {
		t.Fatalf("own position moved to %d by CatchUp", got)
	}
}

// TestChannelPrefixSeparatesFleets: two fleets with one server name on one
// Redis, told apart by redis.channel_prefix, do not hear each other.
func TestChannelPrefixSeparatesFleets(t *testing.T) {
	if got := replication.Channel("", "example.com"); got != "example.com" {
		t.Fatalf("Channel without prefix = %q", got)
	}
	name := fmt.Sprintf("prefix-test-%d.example", time.Now().UnixNano())
	chA, chB := replication.Channel("fleetA:", name), replication.Channel("fleetB:", name)
	src := newMemSource()
	writers := map[streams.Name][]string{streams.AccountData: {"w"}}
	w := start(t, chA, "w", writers, src)
	rA := start(t, chA, "r", writers, src)
	rB := start(t, chB, "r", writers, src)
	tw := w.reg.LocalTracker(streams.AccountData, 0)
	eventually(t, "connected", func() bool { return w.rep.Connected() && rA.rep.Connected() && rB.rep.Connected() })
	write(w, tw, src, streams.AccountData, 1, streams.UserKey("@u:x"))
	eventually(t, "same-prefix reader at 1", func() bool { return rA.reg.WriterPosition(streams.AccountData, "w") == 1 })
	// The other fleet's bus counts every command it receives: w's RDATA,
	// POSITION (it sends one every second) never reach it.
	if n := rB.rep.Bus().Status().ByCommand["POSITION"] + rB.rep.Bus().Status().ByCommand["RDATA"]; n != 0 {
		t.Fatalf("the other fleet's reader received %d commands of this fleet", n)
	}
	if got := rB.reg.WriterPosition(streams.AccountData, "w"); got != 0 {
		t.Fatalf("the other fleet's reader is at %d", got)
	}
}

// redisBinary finds redis-server for tests that need a server with special
// settings; scripts/test (GANGLION_REQUIRE_POSTGRES) requires it.
func redisBinary(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" || os.Getenv("GANGLION_REQUIRE_POSTGRES") != "" {
			t.Fatalf("redis-server is not on PATH: %v", err)
		}
		t.Skipf("redis-server is not on PATH: %v", err)
	}
	return bin
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startRedisServer runs redis-server with extra arguments on a free port
// until the test ends; ready tells when it serves.
func startRedisServer(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(redisBinary(t), append([]string{"--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir(), "--daemonize", "no"}, args...)...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("redis-server output:\n%s", out.String())
		}
	})
}

// TestRedisPassword: with requirepass, the bus connects with the password
// and not without it.
func TestRedisPassword(t *testing.T) {
	port := freePort(t)
	startRedisServer(t, "--port", strconv.Itoa(port), "--requirepass", "s3cret pass")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	run := func(b *replication.Bus) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = b.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	good := replication.NewBus("auth-test", replication.RedisOptions{Host: "127.0.0.1", Port: port, Password: "s3cret pass"}, log)
	bad := replication.NewBus("auth-test", replication.RedisOptions{Host: "127.0.0.1", Port: port}, log)
	run(good)
	run(bad)
	testutil.Eventually(t, 20*time.Second, "bus with the password connected", good.Connected)
	testutil.Eventually(t, 20*time.Second, "bus without the password refused", func() bool {
		e := bad.Status().LastError
		return strings.Contains(e, "NOAUTH") || strings.Contains(e, "WRONGPASS") || strings.Contains(e, "Authentication")
	})
	if bad.Connected() {
		t.Fatal("bus without the password connected")
	}
}

// TestRedisTLS: a TLS-only Redis is reached with redis.use_tls and a CA
// file (and a client certificate, which the server demands); without TLS
// the bus does not connect, and a wrong CA is refused.
func TestRedisTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCA(t)
	writePEM(t, filepath.Join(dir, "ca.crt"), "CERTIFICATE", ca.Raw)
	issue(t, dir, "server", ca, caKey, x509.ExtKeyUsageServerAuth)
	issue(t, dir, "client", ca, caKey, x509.ExtKeyUsageClientAuth)
	other, _ := newCA(t)
	writePEM(t, filepath.Join(dir, "other.crt"), "CERTIFICATE", other.Raw)

	port := freePort(t)
	startRedisServer(t, "--port", "0", "--tls-port", strconv.Itoa(port),
		"--tls-cert-file", filepath.Join(dir, "server.crt"), "--tls-key-file", filepath.Join(dir, "server.key"),
		"--tls-ca-cert-file", filepath.Join(dir, "ca.crt"), "--tls-auth-clients", "yes")

	tlsCfg, err := replication.RedisTLS("127.0.0.1", filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"),
		filepath.Join(dir, "ca.crt"), "")
	if err != nil {
		t.Fatal(err)
	}
	wrongCA, err := replication.RedisTLS("127.0.0.1", filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"),
		filepath.Join(dir, "other.crt"), "")
	if err != nil {
		t.Fatal(err)
	}
	caDir := filepath.Join(dir, "cas")
	if err := os.Mkdir(caDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "ca.crt"), filepath.Join(caDir, "ca.pem")); err != nil {
		t.Fatal(err)
	}
	viaPath, err := replication.RedisTLS("127.0.0.1", filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"), "", caDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := replication.RedisTLS("127.0.0.1", "", "", filepath.Join(dir, "server.key"), ""); err == nil {
		t.Fatal("a CA file without a certificate was accepted")
	}

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	mk := func(tc *tls.Config) *replication.Bus {
		b := replication.NewBus("tls-test", replication.RedisOptions{Host: "127.0.0.1", Port: port, TLS: tc}, log)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = b.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return b
	}
	good, good2, plain, wrong := mk(tlsCfg), mk(viaPath), mk(nil), mk(wrongCA)
	testutil.Eventually(t, 20*time.Second, "TLS bus connected", good.Connected)
	testutil.Eventually(t, 20*time.Second, "TLS bus with ca_path connected", good2.Connected)
	testutil.Eventually(t, 20*time.Second, "wrong-CA bus refused", func() bool {
		return strings.Contains(wrong.Status().LastError, "certificate")
	})
	testutil.Eventually(t, 20*time.Second, "plain bus failed", func() bool { return plain.Status().LastError != "" })
	if plain.Connected() || wrong.Connected() {
		t.Fatal("a bus without TLS, or trusting another CA, connected")
	}
	// And the link works: a command goes round.
	if err := good.Publish(context.Background(), replication.Replicate{}); err != nil {
		t.Fatalf("publish over TLS: %v", err)
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func issue(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+".crt"), "CERTIFICATE", der)
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+".key"), "EC PRIVATE KEY", kb)
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestPositionWithForeignPrevReadsRows: a POSITION whose prev is not where
// this reader is (an honest writer's prev always is) has the rows in
// between read from the source, so committed rows whose RDATA never came
// still wake their listeners instead of being skipped.
func TestPositionWithForeignPrevReadsRows(t *testing.T) {
	ch := uniqueChannel(t)
	src := newMemSource()
	writers := map[streams.Name][]string{streams.AccountData: {"w"}}
	w := start(t, ch, "w", writers, src)
	r := start(t, ch, "r", writers, src)
	tw := w.reg.LocalTracker(streams.AccountData, 0)
	eventually(t, "connected", func() bool { return w.rep.Connected() && r.rep.Connected() })
	write(w, tw, src, streams.AccountData, 1, streams.UserKey("@a:x"))
	eventually(t, "reader at 1", func() bool { return r.reg.WriterPosition(streams.AccountData, "w") == 1 })
	// Rows 2 and 3 are committed, their RDATA lost.
	src.add("w", 2, streams.UserKey("@b:x"))
	src.add("w", 3, streams.UserKey("@c:x"))
	l := r.reg.Notifier().Listen(streams.UserKey("@b:x"))
	defer l.Close()
	inj := injector(t, ch, redisOptions(t))
	publish(t, inj, replication.Position{Stream: string(streams.AccountData), Instance: "w", Prev: 0, New: 3})
	eventually(t, "reader at 3", func() bool { return r.reg.WriterPosition(streams.AccountData, "w") == 3 })
	select {
	case <-l.C:
	case <-time.After(10 * time.Second):
		t.Fatal("row 2 was skipped: its listener was not woken")
	}
}
