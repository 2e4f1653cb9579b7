package replication

// HTTP replication: the fleet's internal RPC. One generic endpoint type
// describes a call (name, path arguments, method, idempotency, whether the
// caller's stream positions must be waited for); Server serves registered
// endpoints on the replication listener and Client calls them on another
// instance, retrying while it is unreachable. Paths are Synapse's:
// /_synapse/replication/<name>/<arg>…[/<txn_id>].

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"ganglion/internal/config"
	"ganglion/internal/streams"
)

// PathPrefix is where every replication endpoint lives. Mount the Server on
// it, and only on listeners with the replication resource.
const PathPrefix = "/_synapse/replication/"

// positionsKey is the JSON key carrying stream positions for
// read-your-writes, in request and response bodies. Synapse's name, kept so
// the paths and bodies stay compatible.
const positionsKey = "_INT_STREAM_POS"

// callerHeader names the calling instance on every request, so a handler
// knows its caller even when no positions are sent (GET, or endpoints that
// do not wait for streams).
const callerHeader = "X-Ganglion-Instance"

var (
	// ErrUnavailable is wrapped by Call's error when the target could not be
	// reached (or kept answering 502/503/504) until the retry budget or the
	// context ran out. The error is an *mxhttp.Error with status 502.
	ErrUnavailable = errors.New("replication target unavailable")
	// ErrSelfCall is returned when an instance calls itself: the caller
	// should have used the local implementation.
	ErrSelfCall = errors.New("replication call to self")
	// ErrUnknownInstance is returned for a target missing from instance_map.
	ErrUnknownInstance = errors.New("instance not in instance_map")
)

// Endpoint is one replication RPC. The same value (without Handle) is used
// by callers to build requests, so define it once per endpoint next to its
// domain code.
type Endpoint struct {
	// Name is the first path segment after /_synapse/replication/.
	Name string
	// Method is POST (the default when empty), PUT or GET. GET requests
	// carry no body; their parameters travel in the query string.
	Method string
	// PathArgs names the path segments after Name, in order; their values
	// are Request.Args / Call's args.
	PathArgs []string
	// Idempotent endpoints get a transaction id as the last path segment,
	// generated once per Call and reused on retries; the server caches the
	// successful response per (Name, txn id) for 30 minutes so a retry does
	// not run Handle again.
	Idempotent bool
	// WaitForStreams makes the server wait (up to a bound) until it has seen
	// the caller's own writes reach the positions the caller sent, so the
	// handler reads what the caller wrote before calling.
	WaitForStreams bool
	// Handle runs the call on the serving instance. Return an *mxhttp.Error
	// (or an error wrapping one) to send a Matrix error; any other error is
	// a 500. Wrap the result with WithPositions when the call wrote to
	// streams, so the caller can wait for them before reading.
	Handle func(ctx context.Context, req *Request) (any, error)
}

// Request is what a handler gets.
type Request struct {
	// Args holds the path arguments by their PathArgs names, unescaped.
	Args map[string]string
	// Body is the JSON object sent by the caller without the positions key;
	// "{}" when empty and nil for GET.
	Body json.RawMessage
	// Query is the request's query string (GET parameters).
	Query url.Values
	// Caller is the calling instance's name ("" if it did not say).
	Caller string
}

// StreamPositions maps streams to positions of one writer instance.
type StreamPositions map[streams.Name]int64

// WithPositions wraps a handler's result with the positions this server
// reached on the streams it wrote during the call; the response then
// carries them and the caller waits until its own registry has seen them.
// result must encode as a JSON object (or be nil).
func WithPositions(result any, pos StreamPositions) any {
	return positioned{result: result, pos: pos}
}

type positioned struct {
	result any
	pos    StreamPositions
}

// wirePositions is the value of _INT_STREAM_POS in both directions: whose
// positions they are and where that writer had got to.
type wirePositions struct {
	InstanceName string          `json:"instance_name"`
	Streams      StreamPositions `json:"streams"`
}

// method returns the endpoint's HTTP method, POST by default.
func (e *Endpoint) method() string {
	if e.Method == "" {
		return http.MethodPost
	}
	return e.Method
}

// segments counts the path segments after PathPrefix: the name, the
// arguments and the transaction id.
func (e *Endpoint) segments() int {
	n := 1 + len(e.PathArgs)
	if e.Idempotent {
		n++
	}
	return n
}

// validate catches malformed endpoint definitions; they are programming
// errors, found at registration or on the first call.
func (e *Endpoint) validate() error {
	if e.Name == "" || strings.Contains(e.Name, "/") || e.Name != url.PathEscape(e.Name) {
		return fmt.Errorf("replication endpoint %q: name must be a plain path segment", e.Name)
	}
	switch e.method() {
	case http.MethodPost, http.MethodPut, http.MethodGet:
	default:
		return fmt.Errorf("replication endpoint %s: method %s not allowed", e.Name, e.Method)
	}
	seen := make(map[string]bool, len(e.PathArgs))
	for _, a := range e.PathArgs {
		if a == "" || seen[a] {
			return fmt.Errorf("replication endpoint %s: path args must be non-empty and distinct, got %q", e.Name, e.PathArgs)
		}
		seen[a] = true
	}
	return nil
}

// path builds the request path. Every argument is escaped as one segment
// ('/' included), as Synapse's quote(arg, safe="") does.
func (e *Endpoint) path(args map[string]string, txn string) (string, error) {
	if len(args) != len(e.PathArgs) {
		return "", fmt.Errorf("replication endpoint %s: want args %q, got %d", e.Name, e.PathArgs, len(args))
	}
	var b strings.Builder
	b.WriteString(PathPrefix)
	b.WriteString(e.Name)
	for _, name := range e.PathArgs {
		v, ok := args[name]
		if !ok {
			return "", fmt.Errorf("replication endpoint %s: missing path arg %s", e.Name, name)
		}
		// An empty segment or a dot segment would be rewritten by path
		// cleaning on the way; no identifier we pass looks like that.
		if v == "" || v == "." || v == ".." {
			return "", fmt.Errorf("replication endpoint %s: path arg %s may not be %q", e.Name, name, v)
		}
		b.WriteByte('/')
		b.WriteString(url.PathEscape(v))
	}
	if e.Idempotent {
		b.WriteByte('/')
		b.WriteString(txn)
	}
	return b.String(), nil
}

// ConstantTimeEqual compares two secrets in time that depends only on the
// length of a (which the caller sent), never on where they differ nor on
// how long b is: both are hashed to a fixed length first, because
// subtle.ConstantTimeCompare returns early on a length mismatch.
func ConstantTimeEqual(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	sameLen := subtle.ConstantTimeEq(int32(len(a)), int32(len(b)))
	return subtle.ConstantTimeCompare(ha[:], hb[:])&sameLen == 1
}

// canonicalInstance maps Synapse's old name for the main process onto ours.
func canonicalInstance(name string) string {
	if name == "master" {
		return config.MainInstance
	}
	return name
}

// InstanceLookup adapts instance_map for NewClient; "master" and "main"
// name the same instance.
func InstanceLookup(m map[string]config.InstanceLocation) func(string) (config.InstanceLocation, bool) {
	return func(name string) (config.InstanceLocation, bool) {
		name = canonicalInstance(name)
		if loc, ok := m[name]; ok {
			return loc, true
		}
		if name == config.MainInstance {
			loc, ok := m["master"]
			return loc, ok
		}
		return config.InstanceLocation{}, false
	}
}

// addPositions appends the positions key to a JSON object produced by
// json.Marshal (compact, so it starts with '{' and ends with '}'). Putting
// it last means it wins if the object already had one.
func addPositions(obj []byte, p wirePositions) ([]byte, error) {
	if len(obj) < 2 || obj[0] != '{' || obj[len(obj)-1] != '}' {
		return nil, errors.New("positions need a JSON object body")
	}
	pj, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode positions: %w", err)
	}
	out := make([]byte, 0, len(obj)+len(positionsKey)+len(pj)+4)
	out = append(out, obj[:len(obj)-1]...)
	if len(obj) > 2 {
		out = append(out, ',')
	}
	out = append(out, '"')
	out = append(out, positionsKey...)
	out = append(out, '"', ':')
	out = append(out, pj...)
	out = append(out, '}')
	return out, nil
}

// splitPositions removes the positions key from a JSON object, returning
// the rest and the positions (nil when absent). The body is only re-encoded
// when the key is there.
func splitPositions(obj []byte) ([]byte, *wirePositions, error) {
	if !bytes.Contains(obj, []byte(`"`+positionsKey+`"`)) {
		return obj, nil, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil {
		return nil, nil, fmt.Errorf("decode body: %w", err)
	}
	raw, ok := m[positionsKey]
	if !ok { // the text appeared inside a value
		return obj, nil, nil
	}
	delete(m, positionsKey)
	var p wirePositions
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, nil, fmt.Errorf("decode %s: %w", positionsKey, err)
	}
	rest, err := json.Marshal(m)
	if err != nil {
		return nil, nil, fmt.Errorf("re-encode body: %w", err)
	}
	return rest, &p, nil
}
