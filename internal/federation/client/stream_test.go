package client_test

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"ganglion/internal/federation/client"
	"ganglion/internal/testutil/testca"
)

// Stream returns a signed request's answer with its body unread, maps error answers to *HTTPError like Do, and keeps to the
// domain whitelist.
func TestStream(t *testing.T) {
	ca := testca.New(t)
	key := mustKey(t)
	rm := startRemote(t, ca, "127.0.0.1", key, "127.0.0.1")
	c := newClient(t, client.Options{Key: key, IPFilter: loopbackAllowed(t), RootCAs: ca.Pool()})
	dest := hp("127.0.0.1", rm.port)
	ctx := t.Context()

	resp, err := c.Stream(ctx, client.Request{Method: "GET", Destination: dest, Path: "/_matrix/key/v2/server?y=1"})
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !contains(body, `"auth":"X-Matrix origin=\"us.test\"`) || !contains(body, `"uri":"/_matrix/key/v2/server?y=1"`) {
		t.Fatalf("streamed answer %s (%v)", body, err)
	}

	_, err = c.Stream(ctx, client.Request{Method: "GET", Destination: dest, Path: "/_matrix/test/forbidden"})
	var he *client.HTTPError
	if !errors.As(err, &he) || he.Status != http.StatusForbidden || he.Errcode != "M_FORBIDDEN" {
		t.Errorf("error answer: %v", err)
	}
	wl := newClient(t, client.Options{Key: key, IPFilter: loopbackAllowed(t), RootCAs: ca.Pool(),
		DomainWhitelist: map[string]bool{"other.test": true}})
	if _, err := wl.Stream(ctx, client.Request{Method: "GET", Destination: dest, Path: "/_matrix/test/big"}); !errors.Is(err, client.ErrNotWhitelisted) {
		t.Errorf("outside the whitelist: %v", err)
	}
}

// FetchURL gets a plain URL (a media Location) through the IP range
// blacklist, its exception and the configured CAs, and follows redirects
// only within those rules.
func TestFetchURL(t *testing.T) {
	ca := testca.New(t)
	key := mustKey(t)
	rm := startRemote(t, ca, "127.0.0.1", key, "127.0.0.1")
	url := "https://" + hp("127.0.0.1", rm.port) + "/_matrix/test/redirect"
	ctx := t.Context()

	c := newClient(t, client.Options{Key: key, IPFilter: loopbackAllowed(t), RootCAs: ca.Pool()})
	resp, err := c.FetchURL(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !contains(body, `"x":"aaaa`) || resp.Header.Get("Authorization") != "" {
		t.Errorf("fetched %.40s", body)
	}
	hits := rm.hits.Load()

	blocked := newClient(t, client.Options{Key: key, IPFilter: defaultFilter(t), RootCAs: ca.Pool()})
	if _, err := blocked.FetchURL(ctx, url); !errors.Is(err, client.ErrBlockedIP) {
		t.Errorf("blacklisted address: %v", err)
	}
	untrusted := newClient(t, client.Options{Key: key, IPFilter: loopbackAllowed(t)})
	if _, err := untrusted.FetchURL(ctx, url); err == nil {
		t.Error("a certificate of an unknown CA was accepted")
	}
	if rm.hits.Load() != hits {
		t.Errorf("refused fetches reached the server")
	}
	for _, bad := range []string{"ftp://127.0.0.1/x", "/relative", "https://", "::"} {
		if _, err := c.FetchURL(ctx, bad); err == nil {
			t.Errorf("%q: fetched", bad)
		}
	}
	_, err = c.FetchURL(ctx, "https://"+hp("127.0.0.1", rm.port)+"/_matrix/test/forbidden")
	var he *client.HTTPError
	if !errors.As(err, &he) || he.Status != http.StatusForbidden {
		t.Errorf("error answer: %v", err)
	}
}

func contains(b []byte, s string) bool { return strings.Contains(string(b), s) }
