package client_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/events"
	"ganglion/internal/federation/client"
	"ganglion/internal/testutil/testca"
)

// fakeDNS answers from tables and counts lookups.
type fakeDNS struct {
	mu         sync.Mutex
	hosts      map[string][]string
	srv        map[string][]*net.SRV // "_matrix-fed._tcp.name"
	srvLookups map[string]int
}

func newDNS() *fakeDNS {
	return &fakeDNS{hosts: map[string][]string{}, srv: map[string][]*net.SRV{}, srvLookups: map[string]int{}}
}

func (d *fakeDNS) host(name string, ips ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.hosts[name] = ips
}

func (d *fakeDNS) addSRV(service, name, target string, port, prio uint16) {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := "_" + service + "._tcp." + name
	d.srv[k] = append(d.srv[k], &net.SRV{Target: target, Port: port, Priority: prio, Weight: 1})
}

func (d *fakeDNS) LookupIPAddr(_ context.Context, host string) ([]net.IPAddr, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ips, ok := d.hosts[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	out := make([]net.IPAddr, len(ips))
	for i, s := range ips {
		out[i] = net.IPAddr{IP: net.ParseIP(s)}
	}
	return out, nil
}

func (d *fakeDNS) LookupSRV(_ context.Context, service, proto, name string) (string, []*net.SRV, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := "_" + service + "._" + proto + "." + name
	d.srvLookups[k]++
	recs, ok := d.srv[k]
	if !ok {
		return "", nil, &net.DNSError{Err: "no such host", Name: k, IsNotFound: true}
	}
	return k, recs, nil
}

func (d *fakeDNS) srvCount(k string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.srvLookups[k]
}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// defaultFilter is Synapse's default blacklist; loopbackAllowed adds the
// exception tests on loopback need.
func defaultFilter(t testing.TB) client.IPFilter {
	var f client.IPFilter
	for _, s := range config.DefaultIPRangeBlacklist() {
		p, err := config.ParsePrefix(s)
		if err != nil {
			t.Fatal(err)
		}
		f.Block = append(f.Block, p)
	}
	return f
}

func loopbackAllowed(t testing.TB) client.IPFilter {
	f := defaultFilter(t)
	f.Allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	return f
}

// startTLS serves h over TLS on 127.0.0.1 with a certificate of ca for
// names, and returns the server and its port.
func startTLS(t testing.TB, ca *testca.CA, h http.Handler, names ...string) (*httptest.Server, int) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = ca.ServerTLS(t, names...)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, portStr, _ := net.SplitHostPort(srv.Listener.Addr().String())
	port, _ := strconv.Atoi(portStr)
	return srv, port
}

func mustKey(t testing.TB) events.SigningKey {
	t.Helper()
	k, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newClient(t testing.TB, o client.Options) *client.Client {
	t.Helper()
	if o.ServerName == "" {
		o.ServerName = "us.test"
	}
	if o.Key.ID == "" {
		o.Key = mustKey(t)
	}
	c, err := client.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func hp(host string, port int) string { return fmt.Sprintf("%s:%d", host, port) }

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }
