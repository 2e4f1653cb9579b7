package mxhttp_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"ganglion/internal/mxhttp"
)

// deadlineReader fails as a connection read past its deadline does.
type deadlineReader struct{}

func (deadlineReader) Read([]byte) (int, error) {
	return 0, fmt.Errorf("read tcp: %w", os.ErrDeadlineExceeded)
}

// TestReadBodyDeadline: a body cut off by the listener's body deadline is
// a 408, not a client error about the content.
func TestReadBodyDeadline(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/x", deadlineReader{})
	_, err := mxhttp.ReadBody(r, 1<<10)
	var me *mxhttp.Error
	if !errors.As(err, &me) || me.Status != http.StatusRequestTimeout || me.Code != "M_UNKNOWN" {
		t.Fatalf("ReadBody past the deadline: %v, want 408 M_UNKNOWN", err)
	}
}
