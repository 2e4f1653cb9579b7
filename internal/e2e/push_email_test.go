package e2e_test

import (
	"bufio"
	"net"
	"net/http"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// smtpMail is one message the test SMTP server accepted.
type smtpMail struct {
	from, to, data string
}

// startSMTP runs a tiny SMTP server on loopback speaking enough of the
// protocol for net/smtp (EHLO, MAIL, RCPT, DATA, QUIT; no STARTTLS, no
// AUTH) and hands every accepted message to the channel.
func startSMTP(t *testing.T) (port int, mails <-chan smtpMail) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	out := make(chan smtpMail, 10)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go serveSMTP(conn, out)
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, out
}

func serveSMTP(conn net.Conn, out chan<- smtpMail) {
	defer conn.Close()
	r := bufio.NewReader(conn)
	say := func(s string) { _, _ = conn.Write([]byte(s + "\r\n")) }
	say("220 test.example ESMTP")
	var m smtpMail
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		cmd := strings.ToUpper(line)
		switch {
		case strings.HasPrefix(cmd, "EHLO"), strings.HasPrefix(cmd, "HELO"):
			say("250-test.example")
			say("250 8BITMIME")
		case strings.HasPrefix(cmd, "MAIL FROM:"):
			m = smtpMail{from: angleAddr(line)}
			say("250 OK")
		case strings.HasPrefix(cmd, "RCPT TO:"):
			m.to = angleAddr(line)
			say("250 OK")
		case cmd == "DATA":
			say("354 go on")
			var data strings.Builder
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
				data.WriteString(strings.TrimPrefix(l, "."))
			}
			m.data = data.String()
			out <- m
			say("250 queued")
		case cmd == "QUIT":
			say("221 bye")
			return
		default:
			say("250 OK")
		}
	}
}

// angleAddr is the <address> of a MAIL or RCPT command (parameters such
// as BODY=8BITMIME may follow it).
func angleAddr(line string) string {
	_, rest, _ := strings.Cut(line, "<")
	addr, _, _ := strings.Cut(rest, ">")
	return addr
}

// TestEmailNotifications: with email.enable_notifs, an email pusher
// (kind email, app_id m.email, the address as pushkey) gets the unread
// messages by mail after notif_delay_before_mail, listed by room in a
// plain text and an HTML part; without it, email pushers are refused.
func TestEmailNotifications(t *testing.T) {
	t.Parallel()
	port, mails := startSMTP(t)
	withEmail := func(cfg map[string]any) {
		cfg["email"] = map[string]any{
			"smtp_host": "127.0.0.1", "smtp_port": port, "enable_tls": false, "enable_notifs": true,
			"notif_from": "%(app)s <noreply@example.org>", "app_name": "GanglionTest",
			"client_base_url": "https://client.example.org", "notif_delay_before_mail": "2s",
		}
	}
	runDeployments(t, []string{engineSQLite}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "emalice")
		bob := srv.register(t, ctx, "embob")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Email room",
			Invite: []id.UserID{bob.UserID}})
		join(t, ctx, bob, room.String())
		pusher := func(appID, key string) int {
			return srv.doJSON(t, ctx, "POST", "/_matrix/client/v3/pushers/set", bob.AccessToken, map[string]any{
				"pushkey": key, "kind": "email", "app_id": appID, "app_display_name": "Email",
				"device_display_name": key, "lang": "en", "data": map[string]any{},
			}).status
		}
		if st := pusher("org.example", "bob@example.org"); st != http.StatusBadRequest {
			t.Fatalf("email pusher with app_id org.example: %d, want 400", st)
		}
		if st := pusher("m.email", "not an address"); st != http.StatusBadRequest {
			t.Fatalf("email pusher with a bad address: %d, want 400", st)
		}
		if st := pusher("m.email", "bob@example.org"); st != http.StatusOK {
			t.Fatalf("email pusher: %d", st)
		}
		send(t, ctx, alice, room, "first unread", "em1")
		send(t, ctx, alice, room, "second unread", "em2")
		var all strings.Builder
		for !strings.Contains(all.String(), "second unread") {
			select {
			case m := <-mails:
				if m.to != "bob@example.org" || m.from != "noreply@example.org" {
					t.Fatalf("mail from %q to %q", m.from, m.to)
				}
				for _, want := range []string{"From: GanglionTest <noreply@example.org>", "Subject: [GanglionTest]", "Email room", "text/plain", "text/html",
					"https://client.example.org/#/room/" + room.String(), alice.UserID.String()} {
					if !strings.Contains(m.data, want) {
						t.Fatalf("mail lacks %q:\n%s", want, m.data)
					}
				}
				all.WriteString(m.data)
			case <-ctx.Done():
				t.Fatalf("no mail with both messages arrived; got:\n%s", all.String())
			}
		}
		if !strings.Contains(all.String(), "first unread") {
			t.Fatalf("the first message was never mailed:\n%s", all.String())
		}
		// What bob reads before the delay is over is not mailed.
		read := send(t, ctx, alice, room, "read in time", "em3")
		if err := bob.MarkRead(ctx, room, read); err != nil {
			t.Fatal(err)
		}
		send(t, ctx, alice, room, "third unread", "em4")
		select {
		case m := <-mails:
			if !strings.Contains(m.data, "third unread") || strings.Contains(m.data, "read in time") {
				t.Fatalf("mail after a read receipt:\n%s", m.data)
			}
		case <-ctx.Done():
			t.Fatal("no mail for the third message")
		}
	}, withEmail)
	// Without email.enable_notifs the same pusher is refused.
	runDeployments(t, []string{engineSQLite}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		bob := srv.register(t, ctx, "embob2")
		r := srv.doJSON(t, ctx, "POST", "/_matrix/client/v3/pushers/set", bob.AccessToken, map[string]any{
			"pushkey": "bob@example.org", "kind": "email", "app_id": "m.email", "app_display_name": "Email",
			"device_display_name": "x", "lang": "en", "data": map[string]any{},
		})
		if r.status != http.StatusBadRequest || !strings.Contains(string(r.body), "email.enable_notifs") {
			t.Fatalf("email pusher without email notifications: %d %s", r.status, r.body)
		}
	})
}
