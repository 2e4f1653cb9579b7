package media_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"
)

// TestPreviewURLCache: a second preview of a URL is answered from the
// database without fetching the page again; ts picks the fetch closest
// before it; an expired entry is fetched anew and deleted by the
// background job.
func TestPreviewURLCache(t *testing.T) {
	var page *site
	page = newSite(t, "127.0.0.1:0", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		// The title names the fetch, so an answer shows which one it is.
		fmt.Fprintf(w, `<html><head><title>fetch %d</title></head></html>`, page.hits.Load())
	})
	e := previewEnv(t, []string{"127.0.0.0/8", "::1/128"}, []string{"127.0.0.1/32"})
	t0 := time.UnixMilli(1_800_000_000_000)
	now := t0
	e.svc.SetClock(func() time.Time { return now })
	target := page.URL + "/page"
	preview := func(ts int64) string {
		t.Helper()
		q := "url=" + url.QueryEscape(target)
		if ts != 0 {
			q += fmt.Sprintf("&ts=%d", ts)
		}
		resp, body := e.do("GET", authed+"/preview_url?"+q, e.alice, nil, nil)
		var og map[string]any
		if resp.StatusCode != 200 || json.Unmarshal(body, &og) != nil {
			t.Fatalf("preview: %d %s", resp.StatusCode, body)
		}
		title, _ := og["og:title"].(string)
		return title
	}

	if got := preview(0); got != "fetch 1" || page.hits.Load() != 1 {
		t.Fatalf("first preview %q after %d fetches", got, page.hits.Load())
	}
	now = t0.Add(10 * time.Minute)
	if got := preview(0); got != "fetch 1" || page.hits.Load() != 1 {
		t.Fatalf("second preview %q after %d fetches; want the cached one, no fetch", got, page.hits.Load())
	}
	// A ts before the first fetch gets the oldest cached copy.
	if got := preview(t0.Add(-time.Hour).UnixMilli()); got != "fetch 1" || page.hits.Load() != 1 {
		t.Fatalf("preview at an earlier ts: %q after %d fetches", got, page.hits.Load())
	}

	// Past the hour the cache serves, the page is fetched again.
	now = t0.Add(2 * time.Hour)
	if got := preview(0); got != "fetch 2" || page.hits.Load() != 2 {
		t.Fatalf("preview after expiry %q after %d fetches", got, page.hits.Load())
	}
	// ts chooses the fetch closest before it, while that one was fresh.
	if got := preview(t0.Add(30 * time.Minute).UnixMilli()); got != "fetch 1" || page.hits.Load() != 2 {
		t.Fatalf("preview at ts of the first fetch: %q after %d fetches", got, page.hits.Load())
	}

	// The background job deletes the expired entry and keeps the fresh one.
	countRows := func() int {
		var n int
		if err := e.db.Reader().QueryRowContext(t.Context(), `SELECT count(*) FROM local_media_repository_url_cache`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := countRows(); n != 2 {
		t.Fatalf("%d cached previews, want 2", n)
	}
	if err := e.svc.ExpireURLCache(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := countRows(); n != 1 {
		t.Fatalf("%d cached previews after the expiry job, want 1", n)
	}
	if got := preview(0); got != "fetch 2" || page.hits.Load() != 2 {
		t.Fatalf("preview after the expiry job %q after %d fetches", got, page.hits.Load())
	}
	resp, _ := e.do("GET", authed+"/preview_url?url="+url.QueryEscape(target)+"&ts=soon", e.alice, nil, nil)
	if resp.StatusCode != 400 {
		t.Fatalf("ts=soon: %d, want 400", resp.StatusCode)
	}
}
