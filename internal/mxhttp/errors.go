// Package mxhttp is the HTTP plumbing every Matrix endpoint shares: typed
// Matrix errors, handlers that return errors, JSON bodies with size limits,
// panic recovery and the 404/405 answers for unknown endpoints.
package mxhttp

import (
	"fmt"
	"net/http"
	"time"
)

// Error is a Matrix error response: an HTTP status, an errcode and a message,
// plus optional extra keys (retry_after_ms, flows, …).
type Error struct {
	Status  int
	Code    string
	Message string
	Extra   map[string]any
	// Cause is logged, never sent to the client.
	Cause error
	// Raw, when set, is sent as the whole body instead of errcode/error:
	// the UIA challenge is a 401 whose body is the flows object.
	Raw map[string]any
	// RetryAfter, when positive, is sent as the Retry-After header (whole
	// seconds, rounded up): a 503 from a writer that is down says when to
	// try again.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%s (%d): %s: %v", e.Code, e.Status, e.Message, e.Cause)
	}
	return fmt.Sprintf("%s (%d): %s", e.Code, e.Status, e.Message)
}

func (e *Error) Unwrap() error { return e.Cause }

// Body is the JSON object sent to the client.
func (e *Error) Body() map[string]any {
	if e.Raw != nil {
		return e.Raw
	}
	b := make(map[string]any, 2+len(e.Extra))
	for k, v := range e.Extra {
		b[k] = v
	}
	b["errcode"] = e.Code
	b["error"] = e.Message
	return b
}

func newErr(status int, code, format string, args []any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

func Forbidden(format string, args ...any) *Error {
	return newErr(http.StatusForbidden, "M_FORBIDDEN", format, args)
}
func NotFound(format string, args ...any) *Error {
	return newErr(http.StatusNotFound, "M_NOT_FOUND", format, args)
}
func BadJSON(format string, args ...any) *Error {
	return newErr(http.StatusBadRequest, "M_BAD_JSON", format, args)
}
func NotJSON(format string, args ...any) *Error {
	return newErr(http.StatusBadRequest, "M_NOT_JSON", format, args)
}
func InvalidParam(format string, args ...any) *Error {
	return newErr(http.StatusBadRequest, "M_INVALID_PARAM", format, args)
}
func MissingParam(format string, args ...any) *Error {
	return newErr(http.StatusBadRequest, "M_MISSING_PARAM", format, args)
}
func Unknown(format string, args ...any) *Error {
	return newErr(http.StatusBadRequest, "M_UNKNOWN", format, args)
}
func TooLarge(format string, args ...any) *Error {
	return newErr(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", format, args)
}
func MissingToken() *Error {
	return &Error{Status: http.StatusUnauthorized, Code: "M_MISSING_TOKEN", Message: "Missing access token"}
}
func UnknownToken(softLogout bool) *Error {
	e := &Error{Status: http.StatusUnauthorized, Code: "M_UNKNOWN_TOKEN", Message: "Unknown or expired access token"}
	if softLogout {
		e.Extra = map[string]any{"soft_logout": true}
	}
	return e
}
func Unrecognized(status int, format string, args ...any) *Error {
	return newErr(status, "M_UNRECOGNIZED", format, args)
}

// LimitExceeded carries retry_after_ms as the spec asks (and Retry-After is
// set by the writer).
func LimitExceeded(retryAfterMS int64) *Error {
	return &Error{Status: http.StatusTooManyRequests, Code: "M_LIMIT_EXCEEDED", Message: "Too many requests",
		Extra: map[string]any{"retry_after_ms": retryAfterMS}}
}

// Internal hides the cause from the client and keeps it for the log.
func Internal(cause error) *Error {
	return &Error{Status: http.StatusInternalServerError, Code: "M_UNKNOWN", Message: "Internal server error", Cause: cause}
}

// WithCode builds any other spec error (M_USER_IN_USE, M_INVALID_USERNAME,
// M_EXCLUSIVE, M_ROOM_IN_USE, M_UNSUPPORTED_ROOM_VERSION, …).
func WithCode(status int, code, format string, args ...any) *Error {
	return newErr(status, code, format, args)
}
