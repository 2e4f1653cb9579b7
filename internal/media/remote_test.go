package media_test

import (
	"bytes"

	"encoding/json"
	"image/png"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/federation/client"
	"ganglion/internal/media"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/testutil"
)

// TestRemoteDownloadCached: remote media is fetched once over the
// authenticated federation endpoint (signed; the fake remote checks the
// signature), stored, and served from the cache afterwards, on the
// download and thumbnail endpoints alike.
func TestRemoteDownloadCached(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db, nil)
		fr := withRemote(t, e, media.RemoteSettings{}, nil)
		img := pngBytes(t, 200, 100)
		fr.add("cat", remoteItem{data: img, contentType: "image/png", name: "cat.png"})
		fr.add("far", remoteItem{data: []byte("elsewhere"), contentType: "text/plain", name: "far.txt", mode: "location"})

		for i := range 2 {
			resp, body := e.do("GET", authed+"/download/"+fr.name+"/cat", e.alice, nil, nil)
			if resp.StatusCode != 200 || !bytes.Equal(body, img) {
				t.Fatalf("download %d: %d, %d bytes (want %d)", i, resp.StatusCode, len(body), len(img))
			}
			if got := resp.Header.Get("Content-Disposition"); got != `inline; filename="cat.png"` {
				t.Errorf("Content-Disposition = %q", got)
			}
			if got := resp.Header.Get("Content-Type"); got != "image/png" {
				t.Errorf("Content-Type = %q", got)
			}
		}
		// A file name in the path overrides the remote's.
		resp, _ := e.do("GET", authed+"/download/"+fr.name+"/cat/other.png", e.alice, nil, nil)
		if got := resp.Header.Get("Content-Disposition"); resp.StatusCode != 200 || got != `inline; filename="other.png"` {
			t.Errorf("download with name: %d %q", resp.StatusCode, got)
		}
		// Thumbnails are made here from the cached original.
		resp, body := e.do("GET", authed+"/thumbnail/"+fr.name+"/cat?width=32&height=32&method=crop", e.alice, nil, nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" {
			t.Fatalf("thumbnail: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if cfg, err := png.DecodeConfig(bytes.NewReader(body)); err != nil || cfg.Width != 32 || cfg.Height != 32 {
			t.Errorf("thumbnail: %+v %v", cfg, err)
		}
		if n := fr.hitsOf("federation"); n != 1 {
			t.Errorf("remote asked %d times, want once", n)
		}
		if n := fr.hitsOf("unauthorized") + fr.hitsOf("legacy"); n != 0 {
			t.Errorf("%d unauthorized or legacy requests", n)
		}

		// A Location part is followed.
		for range 2 {
			resp, body = e.do("GET", authed+"/download/"+fr.name+"/far", e.alice, nil, nil)
			if resp.StatusCode != 200 || string(body) != "elsewhere" {
				t.Fatalf("download through Location: %d %q", resp.StatusCode, body)
			}
		}
		if n := fr.hitsOf("raw"); n != 1 {
			t.Errorf("Location fetched %d times, want once", n)
		}
	})
}

// TestRemoteLegacyFallback: a server without the federation media endpoint
// (404 M_UNRECOGNIZED) is asked through the legacy download with
// allow_remote=false; a 404 M_NOT_FOUND is final and maps to 404.
func TestRemoteLegacyFallback(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db, nil)
		fr := withRemote(t, e, media.RemoteSettings{}, nil)
		fr.add("old", remoteItem{data: []byte("legacy bytes"), contentType: "text/plain", name: "old.txt", mode: "legacy"})

		resp, body := e.do("GET", authed+"/download/"+fr.name+"/old", e.alice, nil, nil)
		if resp.StatusCode != 200 || string(body) != "legacy bytes" {
			t.Fatalf("download: %d %q", resp.StatusCode, body)
		}
		if got := resp.Header.Get("Content-Disposition"); got != `inline; filename="old.txt"` {
			t.Errorf("Content-Disposition = %q", got)
		}
		fr.mu.Lock()
		q := fr.legacyQuery
		fr.mu.Unlock()
		if q.Get("allow_remote") != "false" {
			t.Errorf("legacy request query %v lacks allow_remote=false", q)
		}
		e.do("GET", authed+"/download/"+fr.name+"/old", e.alice, nil, nil)
		if f, l := fr.hitsOf("federation"), fr.hitsOf("legacy"); f != 1 || l != 1 {
			t.Errorf("federation %d, legacy %d requests; want 1 and 1", f, l)
		}

		resp, body = e.do("GET", authed+"/download/"+fr.name+"/nothing", e.alice, nil, nil)
		wantError(t, "missing remote media", resp, body, 404, "M_NOT_FOUND")
		if l := fr.hitsOf("legacy"); l != 1 {
			t.Errorf("a 404 M_NOT_FOUND fell back to the legacy endpoint")
		}
		// Older servers' other ways of not knowing the endpoint.
		for _, mode := range []string{"legacy-bare404", "legacy-400", "legacy-405"} {
			fr.add(mode, remoteItem{data: []byte(mode), contentType: "text/plain", mode: mode})
			resp, body = e.do("GET", authed+"/download/"+fr.name+"/"+mode, e.alice, nil, nil)
			if resp.StatusCode != 200 || string(body) != mode {
				t.Errorf("%s: %d %q", mode, resp.StatusCode, body)
			}
		}
	})
}

// TestRemoteErrors: what cannot be fetched gets Synapse's answers, and
// nothing of it is cached.
func TestRemoteErrors(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db, func(s *media.Settings) { s.MaxUploadSize = 1000 })
		fr := withRemote(t, e, media.RemoteSettings{PreventDownloadsFrom: map[string]bool{}}, nil)
		fr.add("big", remoteItem{data: bytes.Repeat([]byte("x"), 1001), contentType: "application/octet-stream"})
		fr.add("bigredirect", remoteItem{data: bytes.Repeat([]byte("y"), 5000), contentType: "text/plain", mode: "location"})
		fr.add("exact", remoteItem{data: bytes.Repeat([]byte("z"), 1000), contentType: "application/octet-stream"})
		fr.add("broken", remoteItem{mode: "fail"})

		for i := range 2 {
			resp, body := e.do("GET", authed+"/download/"+fr.name+"/big", e.alice, nil, nil)
			wantError(t, "too large", resp, body, 502, "M_TOO_LARGE")
			if n := fr.hitsOf("federation"); n != i+1 {
				t.Errorf("attempt %d: %d remote requests (a refused file must not be cached)", i, n)
			}
		}
		resp, body := e.do("GET", authed+"/download/"+fr.name+"/bigredirect", e.alice, nil, nil)
		wantError(t, "too large behind Location", resp, body, 502, "M_TOO_LARGE")
		resp, body = e.do("GET", authed+"/download/"+fr.name+"/exact", e.alice, nil, nil)
		if resp.StatusCode != 200 || len(body) != 1000 {
			t.Errorf("file of exactly max_upload_size: %d, %d bytes", resp.StatusCode, len(body))
		}
		resp, body = e.do("GET", authed+"/download/"+fr.name+"/broken", e.alice, nil, nil)
		wantError(t, "remote failure", resp, body, 502, "M_UNKNOWN")
		resp, body = e.do("GET", authed+"/download/not a server/x", e.alice, nil, nil)
		wantError(t, "invalid server name", resp, body, 404, "M_NOT_FOUND")
		resp, body = e.do("GET", authed+"/download/"+fr.name+"/bad.id", e.alice, nil, nil)
		wantError(t, "invalid media id", resp, body, 404, "M_NOT_FOUND")
	})
}

// TestRemoteRefusedDestinations: federation_domain_whitelist,
// ip_range_blacklist and prevent_media_downloads_from keep the repository
// from contacting the remote.
func TestRemoteRefusedDestinations(t *testing.T) {
	blocked := func(o *client.Options) {
		for _, s := range config.DefaultIPRangeBlacklist() {
			p, err := config.ParsePrefix(s)
			if err != nil {
				t.Fatal(err)
			}
			o.IPFilter.Block = append(o.IPFilter.Block, p)
		}
	}
	cases := []struct {
		name     string
		settings func(remote string) media.RemoteSettings
		tweak    func(*client.Options)
		status   int
		code     string
	}{
		{"federation_domain_whitelist", func(string) media.RemoteSettings { return media.RemoteSettings{} },
			func(o *client.Options) { o.DomainWhitelist = map[string]bool{"other.test": true} }, 403, "M_FORBIDDEN"},
		{"ip_range_blacklist", func(string) media.RemoteSettings { return media.RemoteSettings{} }, blocked, 502, "M_UNKNOWN"},
		{"prevent_media_downloads_from", func(r string) media.RemoteSettings {
			return media.RemoteSettings{PreventDownloadsFrom: map[string]bool{r: true}}
		}, nil, 404, "M_NOT_FOUND"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, storagetest.NewDB(t, storage.SQLite), nil)
			key := mustSigningKey(t)
			fr := newFakeRemote(t, key)
			fr.add("cat", remoteItem{data: []byte("meow"), contentType: "text/plain"})
			e.svc.SetFederation(federationClient(t, key, fr.ca, c.tweak), c.settings(fr.name))
			resp, body := e.do("GET", authed+"/download/"+fr.name+"/cat", e.alice, nil, nil)
			wantError(t, c.name, resp, body, c.status, c.code)
			if n := fr.hitsOf("federation") + fr.hitsOf("legacy"); n != 0 {
				t.Errorf("the remote was asked %d times", n)
			}
		})
	}
	// The blacklist's exception lets the same request through.
	e := newEnv(t, storagetest.NewDB(t, storage.SQLite), nil)
	fr := withRemote(t, e, media.RemoteSettings{}, func(o *client.Options) {
		blocked(o)
		o.IPFilter.Allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	fr.add("cat", remoteItem{data: []byte("meow"), contentType: "text/plain"})
	if resp, body := e.do("GET", authed+"/download/"+fr.name+"/cat", e.alice, nil, nil); resp.StatusCode != 200 {
		t.Errorf("with ip_range_whitelist: %d %s", resp.StatusCode, body)
	}
	// prevent_media_downloads_from also hides what is already cached (as
	// in Synapse).
	e.svc.SetFederation(federationClient(t, mustSigningKey(t), fr.ca, nil),
		media.RemoteSettings{PreventDownloadsFrom: map[string]bool{fr.name: true}})
	resp, body := e.do("GET", authed+"/download/"+fr.name+"/cat", e.alice, nil, nil)
	wantError(t, "cached media of a prevented server", resp, body, 404, "M_NOT_FOUND")
	resp, body = e.do("GET", authed+"/thumbnail/"+fr.name+"/cat?width=32&height=32", e.alice, nil, nil)
	wantError(t, "thumbnail of a prevented server", resp, body, 404, "M_NOT_FOUND")
}

// TestRemoteLegacyClientEndpoints: the unauthenticated endpoints honour
// allow_remote=false, and under enable_authenticated_media never fetch.
func TestRemoteLegacyClientEndpoints(t *testing.T) {
	db := storagetest.NewDB(t, storage.SQLite)
	e := newEnv(t, db, func(s *media.Settings) { s.AuthenticatedMedia = false })
	fr := withRemote(t, e, media.RemoteSettings{}, nil)
	fr.add("cat", remoteItem{data: []byte("meow"), contentType: "text/plain"})
	resp, body := e.do("GET", "/_matrix/media/v3/download/"+fr.name+"/cat?allow_remote=false", "", nil, nil)
	wantError(t, "allow_remote=false", resp, body, 404, "M_NOT_FOUND")
	if n := fr.hitsOf("federation"); n != 0 {
		t.Errorf("allow_remote=false asked the remote")
	}
	resp, body = e.do("GET", "/_matrix/media/v3/download/"+fr.name+"/cat", "", nil, nil)
	if resp.StatusCode != 200 || string(body) != "meow" {
		t.Fatalf("legacy download: %d %q", resp.StatusCode, body)
	}

	authedEnv := newEnv(t, storagetest.NewDB(t, storage.SQLite), nil)
	fr2 := withRemote(t, authedEnv, media.RemoteSettings{}, nil)
	fr2.add("cat", remoteItem{data: []byte("meow"), contentType: "text/plain"})
	resp, body = authedEnv.do("GET", "/_matrix/media/v3/download/"+fr2.name+"/cat", "", nil, nil)
	wantError(t, "legacy download under enable_authenticated_media", resp, body, 404, "M_NOT_FOUND")
	if n := fr2.hitsOf("federation"); n != 0 {
		t.Errorf("legacy endpoint fetched under enable_authenticated_media")
	}
}

// TestRemoteFetchCoalesced: concurrent requests for the same remote file
// wait on one fetch.
func TestRemoteFetchCoalesced(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db, nil)
		fr := withRemote(t, e, media.RemoteSettings{}, nil)
		data := bytes.Repeat([]byte("slow"), 1000)
		fr.add("slow", remoteItem{data: data, contentType: "application/octet-stream", mode: "gate"})
		const n = 5
		var wg sync.WaitGroup
		results := make([]int, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, body := e.do("GET", authed+"/download/"+fr.name+"/slow", e.alice, nil, nil)
				if !bytes.Equal(body, data) {
					resp.StatusCode = -resp.StatusCode
				}
				results[i] = resp.StatusCode
			}()
		}
		testutil.Eventually(t, 10*time.Second, "every request waiting on the fetch", func() bool {
			return e.svc.FetchWaiters(fr.name, "slow") == n
		})
		fr.release()
		wg.Wait()
		for i, s := range results {
			if s != 200 {
				t.Errorf("request %d: %d", i, s)
			}
		}
		if h := fr.hitsOf("federation"); h != 1 {
			t.Errorf("%d remote requests for %d concurrent downloads, want 1", h, n)
		}
	})
}

// TestRemoteCacheExpiry: the remote_media_lifetime job purges cached
// remote media not served for that long (content and thumbnails too),
// keeps what was served since, and never touches local media; the admin
// purge_media_cache does the same on demand.
func TestRemoteCacheExpiry(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		const day = 24 * time.Hour
		e := newEnv(t, db, func(s *media.Settings) { s.ThumbnailSizes, s.DynamicThumbnails = nil, true })
		now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		e.svc.SetClock(func() time.Time { return now })
		fr := withRemote(t, e, media.RemoteSettings{Lifetime: 3 * day}, nil)
		fr.add("a", remoteItem{data: []byte("aaa"), contentType: "text/plain"})
		fr.add("b", remoteItem{data: pngBytes(t, 64, 64), contentType: "image/png"})
		local := e.upload(e.alice, "text/plain", "", []byte("local"))
		get := func(id string) int {
			resp, _ := e.do("GET", authed+"/download/"+fr.name+"/"+id, e.alice, nil, nil)
			return resp.StatusCode
		}
		get("a")
		get("b")
		if resp, _ := e.do("GET", authed+"/thumbnail/"+fr.name+"/b?width=16&height=16", e.alice, nil, nil); resp.StatusCode != 200 {
			t.Fatalf("thumbnail: %d", resp.StatusCode)
		}
		files := countFiles(t, e.dir+"/content")
		now = now.Add(2 * day)
		get("b") // b was served two days later
		now = now.Add(2 * day)
		if err := e.svc.ExpireRemoteCache(t.Context()); err != nil {
			t.Fatal(err)
		}
		// a (last served 4 days ago) is gone, b (2 days ago) stays.
		if got := countFiles(t, e.dir+"/content"); got != files-1 {
			t.Errorf("files after expiry: %d, want %d", got, files-1)
		}
		if get("a") != 200 || get("b") != 200 || fr.hitsOf("federation") != 3 {
			t.Errorf("after expiry: %d remote requests, want 3 (a fetched again, b cached)", fr.hitsOf("federation"))
		}
		now = now.Add(10 * day)
		if err := e.svc.ExpireRemoteCache(t.Context()); err != nil {
			t.Fatal(err)
		}
		if got := countFiles(t, e.dir+"/content"); got != 1 {
			t.Errorf("files after expiring everything remote: %d, want 1 (the local upload)", got)
		}
		if resp, body := e.do("GET", authed+"/download/"+serverName+"/"+local, e.alice, nil, nil); resp.StatusCode != 200 || string(body) != "local" {
			t.Errorf("local media after expiry: %d %q", resp.StatusCode, body)
		}

		// The admin API purges by last access.
		get("a")
		resp, body := e.do("POST", "/_synapse/admin/v1/purge_media_cache", e.admin, nil, nil)
		wantError(t, "purge without before_ts", resp, body, 400, "M_MISSING_PARAM")
		resp, body = e.do("POST", "/_synapse/admin/v1/purge_media_cache?before_ts=1", e.alice, nil, nil)
		wantError(t, "purge by a non-admin", resp, body, 403, "M_FORBIDDEN")
		resp, body = e.do("POST", "/_synapse/admin/v1/purge_media_cache?before_ts="+strconv.FormatInt(now.Add(time.Hour).UnixMilli(), 10), e.admin, nil, nil)
		var out struct {
			Deleted int `json:"deleted"`
		}
		if json.Unmarshal(body, &out); resp.StatusCode != 200 || out.Deleted != 1 {
			t.Errorf("purge_media_cache: %d %s", resp.StatusCode, body)
		}
	})
}

// TestRemoteQuarantined: quarantined cached remote media is not served and
// not fetched again, and the expiry keeps it (so it stays refused).
func TestRemoteQuarantined(t *testing.T) {
	db := storagetest.NewDB(t, storage.SQLite)
	e := newEnv(t, db, nil)
	now := time.Now()
	e.svc.SetClock(func() time.Time { return now })
	fr := withRemote(t, e, media.RemoteSettings{Lifetime: time.Hour}, nil)
	fr.add("bad", remoteItem{data: []byte("bad"), contentType: "text/plain"})
	if resp, _ := e.do("GET", authed+"/download/"+fr.name+"/bad", e.alice, nil, nil); resp.StatusCode != 200 {
		t.Fatalf("download: %d", resp.StatusCode)
	}
	if resp, body := e.do("POST", "/_synapse/admin/v1/media/quarantine/"+fr.name+"/bad", e.admin, nil, nil); resp.StatusCode != 200 {
		t.Fatalf("quarantine: %d %s", resp.StatusCode, body)
	}
	now = now.Add(2 * time.Hour)
	if err := e.svc.ExpireRemoteCache(t.Context()); err != nil {
		t.Fatal(err)
	}
	resp, body := e.do("GET", authed+"/download/"+fr.name+"/bad", e.alice, nil, nil)
	wantError(t, "quarantined remote media", resp, body, 404, "M_NOT_FOUND")
	if n := fr.hitsOf("federation"); n != 1 {
		t.Errorf("%d remote requests, want 1", n)
	}
}
