package mxhttp_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"ganglion/internal/mxhttp"
)

func TestDecodeJSONErrors(t *testing.T) {
	type body struct {
		Name string `json:"name"`
	}
	for _, tc := range []struct {
		in   string
		code string
	}{
		{`{"name":"x"}`, ""},
		{``, ""},
		{`not json`, "M_NOT_JSON"},
		{`[1,2]`, "M_NOT_JSON"},
		{`{"name":5}`, "M_BAD_JSON"},
		{`{"name":`, "M_NOT_JSON"},
		{"{\"name\":\"\xff\xfe\"}", "M_NOT_JSON"}, // invalid UTF-8 in a string
		{"{\"na\xc3me\":\"x\"}", "M_NOT_JSON"},    // invalid UTF-8 in a key
		{"{\"name\":\"caf\xc3\xa9\"}", ""},        // valid UTF-8
	} {
		r := httptest.NewRequest("POST", "/", strings.NewReader(tc.in))
		var b body
		err := mxhttp.DecodeJSON(r, &b)
		var me *mxhttp.Error
		switch {
		case tc.code == "" && err != nil:
			t.Errorf("%q: unexpected error %v", tc.in, err)
		case tc.code != "" && (!errors.As(err, &me) || me.Code != tc.code):
			t.Errorf("%q: error %v, want %s", tc.in, err, tc.code)
		}
	}
	big := httptest.NewRequest("POST", "/", bytes.NewReader(make([]byte, mxhttp.DefaultMaxBody+10)))
	var me *mxhttp.Error
	if err := mxhttp.DecodeJSON(big, &map[string]any{}); !errors.As(err, &me) || me.Status != 413 {
		t.Fatalf("oversize body: %v", err)
	}
}

func TestHandlerRecoversPanicsAndUnknownRoutes(t *testing.T) {
	srv := mxhttp.NewServer(nopLogger())
	mux := mxhttp.NewMux()
	mux.HandleClient("GET", "/boom", srv.Handle(func(w http.ResponseWriter, r *http.Request) error { panic("boom") }))
	mux.HandleClient("GET", "/ok/{id}", srv.Handle(func(w http.ResponseWriter, r *http.Request) error {
		return mxhttp.WriteJSON(w, 200, map[string]string{"id": r.PathValue("id")})
	}))
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/_matrix/client/v3/boom", 500, "M_UNKNOWN"},
		{"GET", "/_matrix/client/v3/nope", 404, "M_UNRECOGNIZED"},
		{"POST", "/_matrix/client/v3/ok/1", 405, "M_UNRECOGNIZED"},
		{"GET", "/_matrix/client/r0/ok/%21room%3Ax", 200, ""},
	} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		if rec.Code != tc.status {
			t.Errorf("%s %s: status %d, want %d", tc.method, tc.path, rec.Code, tc.status)
			continue
		}
		var b map[string]string
		if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil {
			t.Errorf("%s %s: body not JSON: %s", tc.method, tc.path, rec.Body)
			continue
		}
		if tc.code != "" && b["errcode"] != tc.code {
			t.Errorf("%s %s: errcode %q, want %s", tc.method, tc.path, b["errcode"], tc.code)
		}
		if tc.code == "" && b["id"] != "!room:x" {
			t.Errorf("path value = %q", b["id"])
		}
	}
}

func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":[1,{"b":null}]}`, `[]`, `"x"`, `{"a":1e400}`, "{\"a\":\"\\ud800\"}"} {
		f.Add([]byte(s))
	}
	// One request for every input: the body is passed as bytes, which is
	// what DecodeJSON hands on after reading and size-checking it.
	r := httptest.NewRequest("POST", "/", nil)
	f.Fuzz(func(t *testing.T, raw []byte) {
		var v map[string]any
		err := mxhttp.DecodeJSONBytes(r, raw, &v)
		if err == nil {
			return
		}
		var me *mxhttp.Error
		if !errors.As(err, &me) || me.Status < 400 || me.Status >= 500 {
			t.Fatalf("decode error is not a client error: %v", err)
		}
	})
}
