package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// errorBodyLimit bounds what is read of a streamed request's error answer.
const errorBodyLimit = 64 << 10

// Stream sends req and returns a 2xx response with its body unread, for
// answers too large to hold in memory (media). req.Out and
// req.MaxResponseBytes are not used: the caller bounds what it reads. The
// caller must close the body, which also ends the request's timeout. Any
// other status is an *HTTPError.
func (c *Client) Stream(ctx context.Context, req Request) (*http.Response, error) {
	resp, cancel, err := c.send(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("federation %s %s%s: %w", req.Method, req.Destination, pathOnly(req.Path), err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, errorBodyLimit))
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("federation %s %s%s: %w", req.Method, req.Destination, pathOnly(req.Path),
			httpError(req.Destination, resp.StatusCode, data))
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// cancelBody ends a request's context when its body is closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// maxURLRedirects bounds the redirects FetchURL follows.
const maxURLRedirects = 5

// FetchURL GETs an absolute http or https URL without a signature: the
// place another server's media download points to with a Location. As
// for every federation request it connects only to addresses the IP range
// blacklist allows (redirects included) and checks certificates against
// federation_custom_ca_list. A 2xx response is returned with its body
// unread (the caller closes it); anything else is an *HTTPError.
func (c *Client) FetchURL(ctx context.Context, rawURL string) (*http.Response, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("fetch %q: not an absolute http(s) URL", rawURL)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	hc := &http.Client{
		// One connection per fetch: these URLs are rare and point
		// anywhere, so there is nothing worth keeping alive.
		Transport: &http.Transport{
			Proxy:                  nil,
			DialContext:            c.dialer.DialContext,
			TLSClientConfig:        c.tlsBase.Clone(),
			TLSHandshakeTimeout:    10 * time.Second,
			DisableKeepAlives:      true,
			MaxResponseHeaderBytes: 64 << 10,
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= maxURLRedirects {
				return fmt.Errorf("more than %d redirects", maxURLRedirects)
			}
			if req.URL.Scheme != "https" && req.URL.Scheme != "http" {
				return fmt.Errorf("redirect to scheme %q", req.URL.Scheme)
			}
			return nil
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("fetch %s: %w", u.Redacted(), err)
	}
	req.Header.Set("User-Agent", c.userAgent)
	resp, err := hc.Do(req)
	if err != nil {
		cancel()
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("fetch %s: %w", u.Redacted(), err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, errorBodyLimit))
		resp.Body.Close()
		cancel()
		host, _, _ := net.SplitHostPort(u.Host)
		if host == "" {
			host = u.Host
		}
		return nil, fmt.Errorf("fetch %s: %w", u.Redacted(), httpError(host, resp.StatusCode, data))
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}
