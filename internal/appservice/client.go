package appservice

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// Client makes the homeserver's requests to application services, each
// authenticated with the service's hs_token.
type Client struct {
	http *http.Client
}

// NewClient builds a client; timeout bounds each request.
func NewClient(timeout time.Duration) *Client {
	return &Client{http: &http.Client{Timeout: timeout}}
}

func pathEscape(s string) string { return url.PathEscape(s) }

// StatusError is a service's non-2xx answer.
type StatusError struct {
	Status int
	Body   []byte
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("application service answered %d: %.200s", e.Status, e.Body)
}

// do sends one request; body may be nil. A non-2xx answer is a
// *StatusError.
func (c *Client) do(ctx context.Context, reg *Registration, method, path string, query url.Values, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	u := reg.URL + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("build request to %s: %w", reg.ID, err)
	}
	req.Header.Set("Authorization", "Bearer "+reg.HSToken)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read answer of %s: %w", reg.ID, err)
	}
	if resp.StatusCode/100 != 2 {
		return out, &StatusError{Status: resp.StatusCode, Body: out}
	}
	return out, nil
}

// Query is a user or alias query: true when the service answered 200.
func (c *Client) Query(ctx context.Context, reg *Registration, path string) (bool, error) {
	_, err := c.do(ctx, reg, http.MethodGet, path, nil, nil)
	if se, ok := err.(*StatusError); ok && se.Status == http.StatusNotFound {
		return false, nil
	}
	return err == nil, err
}

// PutTransaction sends one transaction; body is its stored JSON, sent
// byte for byte as first written so a retry is the same transaction.
func (c *Client) PutTransaction(ctx context.Context, reg *Registration, txnID int64, body []byte) error {
	_, err := c.do(ctx, reg, http.MethodPut, fmt.Sprintf("/_matrix/app/v1/transactions/%d", txnID), nil, json.RawMessage(body))
	return err
}
