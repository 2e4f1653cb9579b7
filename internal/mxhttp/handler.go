package mxhttp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go.opentelemetry.io/otel/trace"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// HandlerFunc is an endpoint: it writes a success response itself and
// returns an error for everything else, which Handle turns into Matrix JSON.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// DefaultMaxBody caps JSON request bodies. Events are capped at 64 KiB by the
// spec, so 1 MiB leaves room for batch endpoints without letting a client
// make us buffer arbitrary amounts.
const DefaultMaxBody = 1 << 20

// Server turns HandlerFuncs into http.Handlers that share logging, panic
// recovery and error encoding.
type Server struct {
	log   *slog.Logger
	reqID atomic.Uint64
}

func NewServer(log *slog.Logger) *Server { return &Server{log: log} }

// Handle wraps h. Every panic is recovered here so no panic reaches a
// client, and logged with its stack so it can be fixed.
func (s *Server) Handle(h HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := s.reqID.Add(1)
		log := s.log
		if sc := trace.SpanContextFromContext(r.Context()); sc.HasTraceID() {
			// The request's log lines name its trace.
			log = log.With("trace_id", sc.TraceID().String())
		}
		rw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				log.Error("panic in handler", "request_id", id, "method", r.Method, "path", r.URL.Path,
					"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				if !rw.wrote {
					WriteError(rw, Internal(fmt.Errorf("panic: %v", p)))
				}
			}
		}()
		err := h(rw, r)
		if err != nil {
			var me *Error
			if !errors.As(err, &me) {
				me = Internal(err)
			}
			if me.Status >= 500 {
				log.Error("request failed", "request_id", id, "method", r.Method, "path", r.URL.Path,
					"status", me.Status, "err", err)
			} else {
				log.Debug("request refused", "request_id", id, "method", r.Method, "path", r.URL.Path,
					"status", me.Status, "errcode", me.Code, "err", me.Message)
			}
			if !rw.wrote {
				WriteError(rw, me)
			}
			return
		}
		log.Debug("request", "request_id", id, "method", r.Method, "path", r.URL.Path,
			"status", rw.status, "took", time.Since(start))
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.status, w.wrote = http.StatusOK, true
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// WriteJSON writes v as a JSON response.
func WriteJSON(w http.ResponseWriter, status int, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return Internal(fmt.Errorf("encode response: %w", err))
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
	return nil
}

// WriteError writes a Matrix error response.
func WriteError(w http.ResponseWriter, e *Error) {
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(int64((e.RetryAfter+time.Second-1)/time.Second), 10))
	}
	if e.Code == "M_LIMIT_EXCEEDED" {
		if ms, ok := e.Extra["retry_after_ms"].(int64); ok {
			w.Header().Set("Retry-After", strconv.FormatInt((ms+999)/1000, 10))
		}
	}
	_ = WriteJSON(w, e.Status, e.Body())
}

// ReadBody reads a request body up to limit bytes, answering M_TOO_LARGE past it.
func ReadBody(r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, TooLarge("Request body too large (limit %d bytes)", limit)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// The listener's body deadline (internal/httpguard) passed: the
		// client is too slow, and the server closes the connection after
		// this answer.
		return nil, &Error{Status: http.StatusRequestTimeout, Code: "M_UNKNOWN", Message: "Request body not received in time"}
	}
	if err != nil {
		return nil, Unknown("Could not read request body: %v", err)
	}
	if int64(len(body)) > limit {
		return nil, TooLarge("Request body too large (limit %d bytes)", limit)
	}
	return body, nil
}

// DecodeJSON reads a JSON object body into v. A body that is not JSON (or
// not an object) is M_NOT_JSON; JSON of the wrong shape is M_BAD_JSON, as
// Synapse distinguishes them. An empty body decodes as {} because several
// endpoints (join, leave, logout) allow it.
func DecodeJSON(r *http.Request, v any) error {
	body, err := ReadBody(r, DefaultMaxBody)
	if err != nil {
		return err
	}
	return DecodeJSONBytes(r, body, v)
}

// DecodeJSONBytes is DecodeJSON for a body already read.
func DecodeJSONBytes(r *http.Request, body []byte, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err == nil && mt != "application/json" && !strings.HasSuffix(mt, "+json") &&
			mt != "text/plain" && mt != "application/x-www-form-urlencoded" && mt != "application/octet-stream" {
			// Clients are sloppy about Content-Type; Synapse only looks at the
			// body, and so do we, except for types that cannot be JSON.
			if strings.HasPrefix(mt, "multipart/") || strings.HasPrefix(mt, "image/") {
				return NotJSON("Content not JSON (Content-Type %s)", mt)
			}
		}
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		body = []byte("{}")
	}
	// encoding/json lets invalid UTF-8 through (decoding it as U+FFFD);
	// such a body is not JSON, and is refused before anything else looks
	// at it (user-interactive auth included), as Synapse does.
	if !utf8.Valid(body) {
		return NotJSON("Content not JSON: invalid UTF-8")
	}
	if !json.Valid(body) {
		return NotJSON("Content not JSON")
	}
	if body[0] != '{' {
		return NotJSON("Content must be a JSON object")
	}
	if err := json.Unmarshal(body, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return BadJSON("Invalid type for '%s': expected %s", te.Field, te.Type)
		}
		return BadJSON("Invalid JSON: %v", err)
	}
	return nil
}
