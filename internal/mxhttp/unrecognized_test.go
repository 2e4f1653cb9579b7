package mxhttp_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"ganglion/internal/mxhttp"
)

func TestMuxReportsUnrecognized(t *testing.T) {
	m := mxhttp.NewMux()
	m.Handle("GET /known", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	var got []int
	m.OnUnrecognized = func(r *http.Request, status int) { got = append(got, status) }
	for _, req := range []*http.Request{
		httptest.NewRequest("GET", "/known", nil),
		httptest.NewRequest("GET", "/unknown", nil),
		httptest.NewRequest("POST", "/known", nil),
	} {
		m.ServeHTTP(httptest.NewRecorder(), req)
	}
	if len(got) != 2 || got[0] != http.StatusNotFound || got[1] != http.StatusMethodNotAllowed {
		t.Fatalf("OnUnrecognized heard %v, want [404 405]", got)
	}
}

func TestWriteErrorRetryAfter(t *testing.T) {
	rec := httptest.NewRecorder()
	mxhttp.WriteError(rec, &mxhttp.Error{Status: 503, Code: "M_UNKNOWN", Message: "down", RetryAfter: 1500 * time.Millisecond})
	if rec.Code != 503 || rec.Header().Get("Retry-After") != "2" {
		t.Fatalf("got %d Retry-After %q, want 503 and 2 (seconds, rounded up)", rec.Code, rec.Header().Get("Retry-After"))
	}
}
