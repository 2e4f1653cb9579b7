package media

import (
	"context"
	"errors"
	"fmt"
	"image"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/PuerkitoBio/goquery"
	"golang.org/x/net/html/charset"
)

// PreviewSettings are the url_preview_* config values.
type PreviewSettings struct {
	Enabled bool
	// Block and Allow are url_preview_ip_range_blacklist and _whitelist:
	// an address in Allow may be reached even if it is in Block.
	Block, Allow []netip.Prefix
	// URLBlock is url_preview_url_blacklist.
	URLBlock []map[string]string
	// MaxSize is max_spider_size.
	MaxSize int64
}

// Errors of a preview, mapped to answers by the handler.
var (
	errBlockedIP  = errors.New("address blocked by url_preview_ip_range_blacklist")
	errBlockedURL = errors.New("URL blocked by url_preview_url_blacklist")
)

// previewer fetches pages for URL previews. Every connection it opens, to
// the first URL and to each redirect target and image, is checked in the
// dialer's Control hook against the address actually being connected to,
// after name resolution: a name that resolves to a blocked address, a
// redirect to one, or a DNS answer that changes between lookups can never
// reach a blocked network.
type previewer struct {
	cfg    PreviewSettings
	client *http.Client
	now    func() time.Time
}

func newPreviewer(cfg PreviewSettings) *previewer {
	p := &previewer{cfg: cfg, now: time.Now}
	dialer := &net.Dialer{
		Timeout: 10 * time.Second,
		Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: unparseable address %q", errBlockedIP, address)
			}
			if !p.allowedIP(ap.Addr()) {
				return fmt.Errorf("%w: %s", errBlockedIP, ap.Addr())
			}
			return nil
		},
	}
	transport := &http.Transport{
		Proxy:                 nil, // a proxy would connect on our behalf, unchecked
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		MaxIdleConns:          10,
		IdleConnTimeout:       30 * time.Second,
	}
	p.client = &http.Client{
		Transport: transport,
		Timeout:   30 * time.Second,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 {
				return errors.New("too many redirects")
			}
			return p.checkURL(req.URL)
		},
	}
	return p
}

// allowedIP applies the lists. The unspecified addresses (0.0.0.0, ::)
// reach the local host on many systems and are always refused.
func (p *previewer) allowedIP(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.IsUnspecified() {
		return false
	}
	for _, r := range p.cfg.Allow {
		if r.Contains(ip) {
			return true
		}
	}
	for _, r := range p.cfg.Block {
		if r.Contains(ip) {
			return false
		}
	}
	return true
}

// checkURL refuses non-HTTP schemes and URLs matching url_preview_url_blacklist.
func (p *previewer) checkURL(u *url.URL) error {
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%w: scheme %q", errBlockedURL, u.Scheme)
	}
	parts := map[string]string{"scheme": u.Scheme, "netloc": u.Host, "path": u.Path, "query": u.RawQuery,
		"fragment": u.Fragment, "username": u.User.Username()}
	if pw, ok := u.User.Password(); ok {
		parts["password"] = pw
	}
	for _, pattern := range p.cfg.URLBlock {
		match := len(pattern) > 0
		for k, v := range pattern {
			if !componentMatches(v, parts[k]) {
				match = false
				break
			}
		}
		if match {
			return errBlockedURL
		}
	}
	return nil
}

// componentMatches: a value starting with ^ is a regular expression,
// anything else a glob whose * and ? match any characters ("/" included),
// as in Synapse.
func componentMatches(pattern, value string) bool {
	if !strings.HasPrefix(pattern, "^") {
		var b strings.Builder
		b.WriteString("^")
		for _, c := range pattern {
			switch c {
			case '*':
				b.WriteString(".*")
			case '?':
				b.WriteString(".")
			default:
				b.WriteString(regexp.QuoteMeta(string(c)))
			}
		}
		b.WriteString("$")
		pattern = b.String()
	}
	re, err := regexp.Compile(pattern)
	return err == nil && re.MatchString(value)
}

func (p *previewer) get(ctx context.Context, u string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "Ganglion (bot; URL preview)")
	req.Header.Set("Accept", "text/html,application/xhtml+xml,image/*;q=0.9,*/*;q=0.5")
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		resp.Body.Close()
		return nil, fmt.Errorf("fetch %s: HTTP %d", u, resp.StatusCode)
	}
	return resp, nil
}

// Preview describes a URL with Open Graph properties as of ts (ms since the
// epoch; 0 for now): from the cache when a preview fetched around ts is
// still fresh, else by fetching the page (then cached for an hour).
func (s *Service) Preview(ctx context.Context, userID, rawURL string, ts int64) (map[string]any, error) {
	now := s.nowMS()
	if ts <= 0 {
		ts = now
	}
	og, err := s.meta.cachedPreview(ctx, rawURL, ts)
	if err != nil || og != nil {
		return og, err
	}
	og, err = s.fetchPreview(ctx, userID, rawURL)
	if err != nil {
		return nil, err
	}
	if err := s.meta.cachePreview(ctx, rawURL, og, now, now+urlCacheFor.Milliseconds()); err != nil {
		// The preview itself is good; the next request fetches again.
		s.log.Warn("could not cache URL preview", "url", rawURL, "err", err)
	}
	return og, nil
}

// fetchPreview fetches a URL and describes it with Open Graph properties;
// an image (the page itself, or its og:image) is stored as media of userID
// and named by its mxc URI.
func (s *Service) fetchPreview(ctx context.Context, userID, rawURL string) (map[string]any, error) {
	p := s.preview
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%w: invalid URL", errBlockedURL)
	}
	if err := p.checkURL(u); err != nil {
		return nil, err
	}
	resp, err := p.get(ctx, u.String())
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	og := map[string]any{}
	if strings.HasPrefix(mt, "image/") {
		if err := s.previewImage(ctx, userID, resp, mt, og); err != nil {
			return nil, err
		}
		return og, nil
	}
	if mt != "text/html" && mt != "application/xhtml+xml" {
		return og, nil
	}
	body, err := charset.NewReader(io.LimitReader(resp.Body, p.cfg.MaxSize), resp.Header.Get("Content-Type"))
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", u, err)
	}
	doc, err := goquery.NewDocumentFromReader(body)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", u, err)
	}
	doc.Find("meta[property], meta[name]").Each(func(_ int, m *goquery.Selection) {
		key, _ := m.Attr("property")
		if key == "" {
			key, _ = m.Attr("name")
		}
		content, ok := m.Attr("content")
		if !ok || !strings.HasPrefix(key, "og:") {
			return
		}
		if _, seen := og[key]; !seen {
			og[key] = truncateText(content, 1000)
		}
	})
	if _, ok := og["og:title"]; !ok {
		if title := strings.TrimSpace(doc.Find("title").First().Text()); title != "" {
			og["og:title"] = truncateText(title, 1000)
		}
	}
	if _, ok := og["og:description"]; !ok {
		if d, ok := doc.Find(`meta[name="description"]`).First().Attr("content"); ok && d != "" {
			og["og:description"] = truncateText(d, 1000)
		}
	}
	if img, ok := og["og:image"].(string); ok {
		delete(og, "og:image")
		ref, err := resp.Request.URL.Parse(img)
		if err == nil && p.checkURL(ref) == nil {
			if iresp, err := p.get(ctx, ref.String()); err == nil {
				imt, _, _ := mime.ParseMediaType(iresp.Header.Get("Content-Type"))
				if strings.HasPrefix(imt, "image/") {
					if err := s.previewImage(ctx, userID, iresp, imt, og); err != nil {
						s.log.Debug("could not store preview image", "url", ref.String(), "err", err)
					}
				}
				iresp.Body.Close()
			} else {
				s.log.Debug("could not fetch preview image", "url", ref.String(), "err", err)
			}
		}
	}
	return og, nil
}

// previewImage stores an image response as media and describes it.
func (s *Service) previewImage(ctx context.Context, userID string, resp *http.Response, contentType string, og map[string]any) error {
	if resp.ContentLength > s.preview.cfg.MaxSize {
		return fmt.Errorf("image of %d bytes exceeds max_spider_size", resp.ContentLength)
	}
	st, err := s.store.Stage(ctx, resp.Body, s.preview.cfg.MaxSize)
	if err != nil {
		return err
	}
	defer st.Discard()
	if err := st.Publish(); err != nil {
		return err
	}
	id, err := newMediaID()
	if err != nil {
		return err
	}
	m := &Media{ServerName: s.cfg.ServerName, MediaID: id, UserID: userID, CreatedTS: s.nowMS(), ContentType: contentType,
		Uploaded: true, Length: st.Size(), SHA256: st.SHA256(), Authenticated: s.cfg.AuthenticatedMedia}
	if err := s.meta.insert(ctx, m); err != nil {
		return err
	}
	if err := st.Publish(); err != nil {
		return err
	}
	og["og:image"] = "mxc://" + s.cfg.ServerName + "/" + id
	og["og:image:type"] = contentType
	og["matrix:image:size"] = st.Size()
	if c, err := s.store.Open(ctx, m.SHA256); err == nil {
		if cfg, _, err := image.DecodeConfig(c); err == nil {
			og["og:image:width"], og["og:image:height"] = cfg.Width, cfg.Height
		}
		c.Close()
	}
	return nil
}

func truncateText(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8Start(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }
