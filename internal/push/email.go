package push

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/smtp"
	"strconv"
	"strings"
	"time"
)

// EmailSettings is what email pushers need: the SMTP server and the
// message's sender and wording (config.EmailConfig, resolved).
type EmailSettings struct {
	Host, User, Pass string
	Port             int
	// RequireTLS refuses to send unless STARTTLS succeeds; EnableTLS
	// uses it when the server offers it.
	RequireTLS, EnableTLS bool
	// ForceTLS is implicit TLS (SMTPS): the connection is TLS from the
	// start, STARTTLS is not used.
	ForceTLS      bool
	From          string
	AppName       string
	ClientBaseURL string
	// Delay is how long a notification waits, unread, before it is mailed.
	Delay time.Duration
	// TLSConfig is for tests (a custom root); nil verifies as usual.
	TLSConfig *tls.Config
}

// emailKind and emailAppID are what the spec and Synapse use for email
// pushers.
const (
	emailKind  = "email"
	emailAppID = "m.email"
)

// mailItem is one unread notification of a mail.
type mailItem struct {
	roomID, roomName, sender, body string
	ts                             int64
}

// sendMail delivers one message with net/smtp: STARTTLS when offered (and
// required if RequireTLS), AUTH PLAIN when a user is set.
func (e *EmailSettings) sendMail(ctx context.Context, to string, msg []byte) error {
	addr := net.JoinHostPort(e.Host, strconv.Itoa(e.Port))
	d := net.Dialer{Timeout: 30 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("connect to SMTP server %s: %w", addr, err)
	}
	tlsOn := false
	if e.ForceTLS {
		tc := tls.Client(conn, e.tlsConfig())
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return fmt.Errorf("TLS with SMTP server %s: %w", addr, err)
		}
		conn, tlsOn = tc, true
	}
	// One deadline for the whole conversation: a stuck server cannot hold
	// the pusher loop.
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	c, err := smtp.NewClient(conn, e.Host)
	if err != nil {
		conn.Close()
		return fmt.Errorf("SMTP greeting from %s: %w", addr, err)
	}
	defer c.Close()
	if err := c.Hello("localhost"); err != nil {
		return fmt.Errorf("SMTP EHLO: %w", err)
	}
	if ok, _ := c.Extension("STARTTLS"); !tlsOn && ok && (e.EnableTLS || e.RequireTLS) {
		if err := c.StartTLS(e.tlsConfig()); err != nil {
			return fmt.Errorf("SMTP STARTTLS: %w", err)
		}
		tlsOn = true
	}
	if e.RequireTLS && !tlsOn {
		return errors.New("SMTP server offers no STARTTLS and email.require_transport_security is set")
	}
	if e.User != "" {
		// smtp.PlainAuth itself refuses to send the password in clear
		// to anything but localhost.
		if err := c.Auth(smtp.PlainAuth("", e.User, e.Pass, e.Host)); err != nil {
			return fmt.Errorf("SMTP AUTH: %w", err)
		}
	}
	from, err := mail.ParseAddress(e.From)
	if err != nil {
		return fmt.Errorf("email.notif_from: %w", err)
	}
	if err := c.Mail(from.Address); err != nil {
		return fmt.Errorf("SMTP MAIL FROM: %w", err)
	}
	if err := c.Rcpt(to); err != nil {
		return fmt.Errorf("SMTP RCPT TO: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("SMTP DATA: %w", err)
	}
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("SMTP DATA: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("SMTP DATA: %w", err)
	}
	return c.Quit()
}

func (e *EmailSettings) tlsConfig() *tls.Config {
	if e.TLSConfig != nil {
		return e.TLSConfig
	}
	return &tls.Config{ServerName: e.Host}
}

// composeMail builds a multipart/alternative message (plain text and
// HTML) listing the unread messages per room, in order.
func (e *EmailSettings) composeMail(to, userID string, items []mailItem, now time.Time) []byte {
	var rooms []string
	byRoom := map[string][]mailItem{}
	for _, it := range items {
		if _, ok := byRoom[it.roomID]; !ok {
			rooms = append(rooms, it.roomID)
		}
		byRoom[it.roomID] = append(byRoom[it.roomID], it)
	}
	name := func(it mailItem) string {
		if it.roomName != "" {
			return it.roomName
		}
		return it.roomID
	}
	subject := fmt.Sprintf("[%s] You have %d unread message(s)", e.AppName, len(items))
	if len(rooms) == 1 {
		subject = fmt.Sprintf("[%s] You have %d unread message(s) in %s", e.AppName, len(items), name(byRoom[rooms[0]][0]))
	}
	var text, htm strings.Builder
	fmt.Fprintf(&text, "You have unread messages, %s:\n", userID)
	fmt.Fprintf(&htm, "<html><body><p>You have unread messages, %s:</p>\n", html.EscapeString(userID))
	for _, r := range rooms {
		list := byRoom[r]
		fmt.Fprintf(&text, "\n%s\n", name(list[0]))
		fmt.Fprintf(&htm, "<h3>%s</h3>\n<ul>\n", html.EscapeString(name(list[0])))
		for _, it := range list {
			at := time.UnixMilli(it.ts).UTC().Format("15:04")
			fmt.Fprintf(&text, "  %s %s: %s\n", at, it.sender, it.body)
			fmt.Fprintf(&htm, "<li>%s <b>%s</b>: %s</li>\n", at, html.EscapeString(it.sender), html.EscapeString(it.body))
		}
		htm.WriteString("</ul>\n")
		if e.ClientBaseURL != "" {
			link := strings.TrimRight(e.ClientBaseURL, "/") + "/#/room/" + r
			fmt.Fprintf(&text, "  Open: %s\n", link)
			fmt.Fprintf(&htm, "<p><a href=\"%s\">Open the room</a></p>\n", html.EscapeString(link))
		}
	}
	fmt.Fprintf(&text, "\nYou are receiving this email because you have email notifications on in %s.\n", e.AppName)
	fmt.Fprintf(&htm, "<p><small>You are receiving this email because you have email notifications on in %s.</small></p></body></html>\n",
		html.EscapeString(e.AppName))

	var rb [12]byte
	_, _ = rand.Read(rb[:])
	boundary := "ganglion-" + hex.EncodeToString(rb[:])
	var b bytes.Buffer
	hdr := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, v) }
	hdr("From", e.From)
	hdr("To", to)
	hdr("Subject", mimeWord(subject))
	hdr("Date", now.UTC().Format(time.RFC1123Z))
	hdr("Message-ID", "<"+hex.EncodeToString(rb[:])+"@"+strings.TrimPrefix(userID[strings.LastIndexByte(userID, ':')+1:], ":")+">")
	hdr("MIME-Version", "1.0")
	hdr("Content-Type", `multipart/alternative; boundary="`+boundary+`"`)
	b.WriteString("\r\n")
	for _, part := range []struct{ typ, body string }{{"text/plain", text.String()}, {"text/html", htm.String()}} {
		fmt.Fprintf(&b, "--%s\r\nContent-Type: %s; charset=UTF-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n", boundary, part.typ)
		qw := quotedprintable.NewWriter(&b)
		_, _ = qw.Write([]byte(strings.ReplaceAll(part.body, "\n", "\r\n")))
		_ = qw.Close()
		b.WriteString("\r\n")
	}
	fmt.Fprintf(&b, "--%s--\r\n", boundary)
	return b.Bytes()
}

// mimeWord encodes a header value with non-ASCII characters (RFC 2047).
func mimeWord(s string) string {
	for _, r := range s {
		if r > 127 {
			return mime.QEncoding.Encode("UTF-8", s)
		}
	}
	return s
}

// itemFromEvent reads a notification's sender and body from its event.
func itemFromEvent(raw []byte) (sender, body string, ts int64) {
	var ev struct {
		Sender  string `json:"sender"`
		Type    string `json:"type"`
		TS      int64  `json:"origin_server_ts"`
		Content struct {
			Body string `json:"body"`
		} `json:"content"`
	}
	_ = json.Unmarshal(raw, &ev)
	body = ev.Content.Body
	if body == "" {
		body = "(" + ev.Type + ")"
	}
	if r := []rune(body); len(r) > 500 {
		body = string(r[:500]) + "…"
	}
	return ev.Sender, body, ev.TS
}

// emailPass mails the unread notifications of this instance's email
// pushers once the oldest has waited Delay, and moves each pusher past
// what it has handled (mailed, or read meanwhile). It returns when the
// next waiting notification becomes due (zero if none waits).
func (s *Delivery) emailPass(ctx context.Context, keys []pusherKey, upTo int64, now time.Time) (time.Time, error) {
	var wake time.Time
	e := s.opts.Email
	if e == nil {
		return wake, nil // email notifications off: email pushers were refused
	}
	for _, k := range keys {
		items, maxPos, oldest, err := s.unreadForMail(ctx, k, upTo)
		if err != nil {
			return wake, err
		}
		if maxPos == 0 {
			continue // nothing pending
		}
		if len(items) > 0 {
			if due := time.UnixMilli(oldest).Add(e.Delay); due.After(now) {
				if wake.IsZero() || due.Before(wake) {
					wake = due
				}
				continue
			}
			msg := e.composeMail(k.pushkey, k.user, items, now)
			if err := e.sendMail(ctx, k.pushkey, msg); err != nil {
				if ctx.Err() != nil {
					return wake, ctx.Err()
				}
				r := s.retry[k]
				if r == nil {
					r = &retryState{backoff: s.opts.MinBackoff, since: now}
					s.retry[k] = r
				} else {
					r.backoff = min(2*r.backoff, s.opts.MaxBackoff)
				}
				r.next = now.Add(r.backoff)
				s.log.Info("email notification failed; will retry", "user_id", k.user, "retry_in", r.backoff, "err", err)
				continue
			}
			delete(s.retry, k)
			s.log.Info("email notification sent", "user_id", k.user, "messages", len(items))
		}
		if _, err := s.db.Exec(ctx, `UPDATE pushers SET last_stream_ordering = $4 WHERE user_id = $1 AND app_id = $2 AND pushkey = $3
			AND last_stream_ordering < $4`, k.user, k.app, k.pushkey, maxPos); err != nil {
			return wake, fmt.Errorf("advance email pusher of %s: %w", k.user, err)
		}
	}
	return wake, nil
}

// mailBatch bounds the notifications one mail lists.
const mailBatch = 100

// unreadForMail reads an email pusher's pending notifications: the unread
// ones as mail items, the highest position read, and the oldest unread
// one's timestamp.
func (s *Delivery) unreadForMail(ctx context.Context, k pusherKey, upTo int64) (items []mailItem, maxPos, oldest int64, err error) {
	rows, err := s.db.Reader().QueryContext(ctx, notifying(`epa.room_id, epa.stream_ordering AS stream_ordering, e.json,
		CASE WHEN `+unreadCond("p.user_id")+` THEN 1 ELSE 0 END`, "pushers p, events e", "p.user_id",
		`p.user_id = $1 AND p.app_id = $2 AND p.pushkey = $3
		AND epa.stream_ordering > p.last_stream_ordering AND epa.stream_ordering <= $4 AND e.event_id = epa.event_id`)+`
		ORDER BY stream_ordering LIMIT $5`, k.user, k.app, k.pushkey, upTo, mailBatch)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("read email notifications of %s: %w", k.user, err)
	}
	names := map[string]string{}
	for rows.Next() {
		var it mailItem
		var raw []byte
		var pos int64
		var unread int
		if err := rows.Scan(&it.roomID, &pos, &raw, &unread); err != nil {
			rows.Close()
			return nil, 0, 0, fmt.Errorf("read email notifications of %s: %w", k.user, err)
		}
		maxPos = max(maxPos, pos)
		if unread == 0 {
			continue
		}
		it.sender, it.body, it.ts = itemFromEvent(raw)
		if oldest == 0 || it.ts < oldest {
			oldest = it.ts
		}
		names[it.roomID] = ""
		items = append(items, it)
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return nil, 0, 0, fmt.Errorf("read email notifications of %s: %w", k.user, err)
	}
	for room := range names {
		var raw []byte
		err := s.db.Reader().QueryRowContext(ctx, `SELECT e.json FROM current_state cs JOIN events e ON e.event_id = cs.event_id
			WHERE cs.room_id = $1 AND cs.type = 'm.room.name' AND cs.state_key = ''`, room).Scan(&raw)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return nil, 0, 0, fmt.Errorf("read room name for email: %w", err)
		}
		var ev struct {
			Content struct {
				Name string `json:"name"`
			} `json:"content"`
		}
		_ = json.Unmarshal(raw, &ev)
		names[room] = ev.Content.Name
	}
	for i := range items {
		items[i].roomName = names[items[i].roomID]
	}
	return items, maxPos, oldest, nil
}
