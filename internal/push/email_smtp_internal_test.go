package push

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"
)

// testCert is a self-signed certificate for 127.0.0.1 and the pool that
// trusts it.
func testCert(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "smtp test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// smtpSession is what the fake server saw of one conversation.
type smtpSession struct {
	tls      bool   // the conversation was encrypted when MAIL FROM came
	authUser string // the AUTH PLAIN identity, if any
	data     string
}

// fakeSMTP is an SMTP server with the parts sendMail may use: STARTTLS
// (when offerStartTLS), implicit TLS (when implicit), AUTH PLAIN (offered
// only once encrypted; accepts user/pass) and one message per session.
func fakeSMTP(t *testing.T, cert tls.Certificate, offerStartTLS, implicit bool, user, pass string) (int, <-chan smtpSession) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	out := make(chan smtpSession, 4)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go serveFakeSMTP(conn, cfg, offerStartTLS, implicit, user, pass, out)
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, out
}

func serveFakeSMTP(conn net.Conn, cfg *tls.Config, offerStartTLS, implicit bool, user, pass string, out chan<- smtpSession) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	var s smtpSession
	if implicit {
		conn = tls.Server(conn, cfg)
		s.tls = true
	}
	rw := bufio.NewReadWriter(bufio.NewReader(conn), bufio.NewWriter(conn))
	say := func(line string) { rw.WriteString(line + "\r\n"); rw.Flush() }
	say("220 fake ESMTP")
	for {
		line, err := rw.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		verb := strings.ToUpper(strings.Fields(line + " x")[0])
		switch verb {
		case "EHLO", "HELO":
			ext := []string{"250-fake"}
			if offerStartTLS && !s.tls {
				ext = append(ext, "250-STARTTLS")
			}
			if s.tls && user != "" {
				ext = append(ext, "250-AUTH PLAIN")
			}
			ext = append(ext, "250 8BITMIME")
			say(strings.Join(ext, "\r\n"))
		case "STARTTLS":
			say("220 go ahead")
			tc := tls.Server(conn, cfg)
			if err := tc.Handshake(); err != nil {
				return
			}
			conn, s.tls = tc, true
			rw = bufio.NewReadWriter(bufio.NewReader(conn), bufio.NewWriter(conn))
		case "AUTH":
			f := strings.Fields(line)
			raw, err := base64.StdEncoding.DecodeString(f[len(f)-1])
			parts := strings.Split(string(raw), "\x00")
			if err != nil || len(parts) != 3 || parts[1] != user || parts[2] != pass {
				say("535 authentication failed")
				continue
			}
			s.authUser = parts[1]
			say("235 ok")
		case "MAIL", "RCPT", "RSET", "NOOP":
			if verb == "MAIL" && user != "" && s.authUser == "" {
				say("530 authentication required")
				continue
			}
			say("250 ok")
		case "DATA":
			say("354 go on")
			var b strings.Builder
			for {
				l, err := rw.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
				b.WriteString(l)
			}
			s.data = b.String()
			say("250 queued")
			out <- s
		case "QUIT":
			say("221 bye")
			return
		default:
			say("502 unknown")
		}
	}
}

func TestSendMailTransportSecurity(t *testing.T) {
	cert, pool := testCert(t)
	trusting := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	msg := []byte("Subject: hi\r\n\r\nhello\r\n")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	settings := func(port int) *EmailSettings {
		return &EmailSettings{Host: "127.0.0.1", Port: port, From: "Matrix <noreply@example.org>", TLSConfig: trusting}
	}
	received := func(t *testing.T, ch <-chan smtpSession) smtpSession {
		t.Helper()
		select {
		case s := <-ch:
			return s
		case <-ctx.Done():
			t.Fatal("no message arrived")
			return smtpSession{}
		}
	}

	t.Run("STARTTLS then AUTH PLAIN", func(t *testing.T) {
		port, got := fakeSMTP(t, cert, true, false, "mailer", "s3cret")
		e := settings(port)
		e.EnableTLS, e.User, e.Pass = true, "mailer", "s3cret"
		if err := e.sendMail(ctx, "alice@example.org", msg); err != nil {
			t.Fatalf("send: %v", err)
		}
		if s := received(t, got); !s.tls || s.authUser != "mailer" || !strings.Contains(s.data, "hello") {
			t.Fatalf("session %+v", s)
		}
	})
	t.Run("wrong password is an error", func(t *testing.T) {
		port, _ := fakeSMTP(t, cert, true, false, "mailer", "s3cret")
		e := settings(port)
		e.EnableTLS, e.User, e.Pass = true, "mailer", "wrong"
		if err := e.sendMail(ctx, "alice@example.org", msg); err == nil || !strings.Contains(err.Error(), "SMTP AUTH") {
			t.Fatalf("want an AUTH error, got %v", err)
		}
	})
	t.Run("an untrusted certificate is refused", func(t *testing.T) {
		port, _ := fakeSMTP(t, cert, true, false, "", "")
		e := settings(port)
		e.EnableTLS, e.TLSConfig = true, &tls.Config{ServerName: "127.0.0.1", RootCAs: x509.NewCertPool()}
		if err := e.sendMail(ctx, "alice@example.org", msg); err == nil || !strings.Contains(err.Error(), "STARTTLS") {
			t.Fatalf("want a STARTTLS error, got %v", err)
		}
	})
	t.Run("require_transport_security without STARTTLS refuses to send", func(t *testing.T) {
		port, got := fakeSMTP(t, cert, false, false, "", "")
		e := settings(port)
		e.EnableTLS, e.RequireTLS = true, true
		if err := e.sendMail(ctx, "alice@example.org", msg); err == nil || !strings.Contains(err.Error(), "require_transport_security") {
			t.Fatalf("want a refusal, got %v", err)
		}
		select {
		case s := <-got:
			t.Fatalf("a message went out in clear: %+v", s)
		default:
		}
	})
	t.Run("enable_tls false stays in clear", func(t *testing.T) {
		port, got := fakeSMTP(t, cert, true, false, "", "")
		e := settings(port)
		if err := e.sendMail(ctx, "alice@example.org", msg); err != nil {
			t.Fatalf("send: %v", err)
		}
		if s := received(t, got); s.tls {
			t.Fatal("STARTTLS used with enable_tls false")
		}
	})
	t.Run("force_tls speaks TLS from the start", func(t *testing.T) {
		port, got := fakeSMTP(t, cert, false, true, "mailer", "s3cret")
		e := settings(port)
		e.EnableTLS, e.ForceTLS, e.User, e.Pass = true, true, "mailer", "s3cret"
		if err := e.sendMail(ctx, "alice@example.org", msg); err != nil {
			t.Fatalf("send: %v", err)
		}
		if s := received(t, got); !s.tls || s.authUser != "mailer" {
			t.Fatalf("session %+v", s)
		}
	})
}
