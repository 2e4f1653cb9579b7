package media_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"ganglion/internal/media"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// site is a web server on a loopback address that counts its requests.
type site struct {
	*httptest.Server
	hits atomic.Int64
}

func newSite(t *testing.T, addr string, h http.HandlerFunc) *site {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	s := &site{}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		h(w, r)
	}))
	s.Listener.Close()
	s.Listener = ln
	s.Start()
	t.Cleanup(s.Close)
	return s
}

func prefixes(t *testing.T, rs ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, r := range rs {
		p, err := netip.ParsePrefix(r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

func previewEnv(t *testing.T, block, allow []string, urlBlock ...map[string]string) *env {
	db := storagetest.NewDB(t, storage.SQLite)
	return newEnv(t, db, func(s *media.Settings) {
		s.Preview = media.PreviewSettings{Enabled: true, Block: prefixes(t, block...), Allow: prefixes(t, allow...),
			URLBlock: urlBlock, MaxSize: 1 << 20}
	})
}

func (e *env) preview(target string) (*http.Response, map[string]any) {
	e.t.Helper()
	resp, body := e.do("GET", authed+"/preview_url?url="+url.QueryEscape(target), e.alice, nil, nil)
	var out map[string]any
	_ = json.Unmarshal(body, &out)
	return resp, out
}

func TestPreviewURL(t *testing.T) {
	png := pngBytes(t, 30, 20)
	page := newSite(t, "127.0.0.1:0", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/img.png":
			w.Header().Set("Content-Type", "image/png")
			w.Write(png)
		case "/plain":
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			fmt.Fprint(w, `<html><head><title> Just a title </title><meta name="description" content="About it"></head></html>`)
		default:
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			fmt.Fprint(w, `<html><head><meta property="og:title" content="Hello &amp; welcome">
<meta property="og:description" content="A page"><meta property="og:image" content="/img.png"></head><body>x</body></html>`)
		}
	})
	e := previewEnv(t, []string{"127.0.0.0/8", "::1/128"}, []string{"127.0.0.1/32"})
	resp, og := e.preview(page.URL + "/page")
	if resp.StatusCode != 200 || og["og:title"] != "Hello & welcome" || og["og:description"] != "A page" {
		t.Fatalf("preview: %d %v", resp.StatusCode, og)
	}
	mxc, _ := og["og:image"].(string)
	id, ok := strings.CutPrefix(mxc, "mxc://"+serverName+"/")
	if !ok || og["matrix:image:size"] != float64(len(png)) || og["og:image:width"] != float64(30) {
		t.Fatalf("og:image %v", og)
	}
	if resp, body := e.do("GET", authed+"/download/"+serverName+"/"+id, e.bob, nil, nil); resp.StatusCode != 200 || string(body) != string(png) {
		t.Fatalf("preview image download: %d", resp.StatusCode)
	}
	resp, og = e.preview(page.URL + "/plain")
	if resp.StatusCode != 200 || og["og:title"] != "Just a title" || og["og:description"] != "About it" {
		t.Fatalf("fallback title: %d %v", resp.StatusCode, og)
	}
	resp, og = e.preview(page.URL + "/img.png")
	if resp.StatusCode != 200 || og["og:image:type"] != "image/png" {
		t.Fatalf("image preview: %d %v", resp.StatusCode, og)
	}
	for _, c := range []struct{ name, query string }{{"missing url", ""}, {"file scheme", "url=file:///etc/passwd"}} {
		resp, body := e.do("GET", authed+"/preview_url?"+c.query, e.alice, nil, nil)
		if resp.StatusCode/100 != 4 {
			t.Errorf("%s: %d %s", c.name, resp.StatusCode, body)
		}
	}
}

// The SSRF guard: blocked addresses are never connected to, whether
// given as a literal, reached through a name, or through a redirect from
// an allowed site; the URL blacklist refuses by pattern.
func TestPreviewURLGuard(t *testing.T) {
	inner := newSite(t, "127.0.0.2:0", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, `<title>internal secrets</title>`)
	})
	outer := newSite(t, "127.0.0.1:0", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/to-inner":
			http.Redirect(w, r, inner.URL+"/", http.StatusFound)
		case "/to-localhost":
			http.Redirect(w, r, strings.Replace(inner.URL, "127.0.0.2", "localhost", 1)+"/", http.StatusFound)
		case "/img-inner":
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprintf(w, `<meta property="og:title" content="outer"><meta property="og:image" content="%s/x.png">`, inner.URL)
		default:
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprint(w, `<title>outer</title>`)
		}
	})
	_, innerPort, _ := net.SplitHostPort(strings.TrimPrefix(inner.URL, "http://"))

	// Only 127.0.0.1 is allowed out of the blocked loopback range.
	e := previewEnv(t, []string{"127.0.0.0/8", "::1/128"}, []string{"127.0.0.1/32"})
	if resp, og := e.preview(outer.URL + "/"); resp.StatusCode != 200 || og["og:title"] != "outer" {
		t.Fatalf("allowed site: %d %v", resp.StatusCode, og)
	}
	for _, target := range []string{
		inner.URL + "/",                          // a blocked literal address
		"http://[::ffff:127.0.0.2]:" + innerPort, // the same, IPv4-mapped
		outer.URL + "/to-inner",                  // a redirect to it
		"http://0.0.0.0:" + innerPort + "/",      // the unspecified address
	} {
		resp, og := e.preview(target)
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("%s: %d %v, want 502", target, resp.StatusCode, og)
		}
	}
	// An og:image on a blocked address is left out, the rest is served.
	if resp, og := e.preview(outer.URL + "/img-inner"); resp.StatusCode != 200 || og["og:title"] != "outer" || og["og:image"] != nil {
		t.Fatalf("page with a blocked image: %d %v", resp.StatusCode, og)
	}
	if n := inner.hits.Load(); n != 0 {
		t.Fatalf("the blocked server was reached %d times", n)
	}

	// Without the allow entry, a name that resolves into the blocked
	// range is refused too (localhost is 127.0.0.1 or ::1).
	strict := previewEnv(t, []string{"127.0.0.0/8", "::1/128"}, nil)
	before := outer.hits.Load()
	for _, target := range []string{strings.Replace(outer.URL, "127.0.0.1", "localhost", 1) + "/", outer.URL + "/"} {
		if resp, og := strict.preview(target); resp.StatusCode != http.StatusBadGateway {
			t.Errorf("%s under the strict lists: %d %v", target, resp.StatusCode, og)
		}
	}
	if outer.hits.Load() != before {
		t.Fatalf("a blocked server was reached")
	}

	// url_preview_url_blacklist.
	byURL := previewEnv(t, []string{"10.0.0.0/8"}, nil, map[string]string{"netloc": "127.0.0.1:*", "path": "/secret*"})
	resp, body := byURL.do("GET", authed+"/preview_url?url="+url.QueryEscape(outer.URL+"/secret/x"), byURL.alice, nil, nil)
	wantError(t, "blacklisted URL", resp, body, 403, "M_FORBIDDEN")
	if resp, og := byURL.preview(outer.URL + "/public"); resp.StatusCode != 200 {
		t.Fatalf("URL not on the blacklist: %d %v", resp.StatusCode, og)
	}
}
