package voip

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"testing"
	"time"
)

func TestCredentialsSharedSecret(t *testing.T) {
	now := time.Unix(1700000000, 0)
	s := Settings{URIs: []string{"turn:turn.example.org?transport=udp"}, SharedSecret: "s3cret", Lifetime: 2 * time.Hour}
	c := s.Credentials("@alice:example.org", now)
	if c == nil {
		t.Fatal("no credentials")
	}
	if want := "1700007200:@alice:example.org"; c.Username != want {
		t.Fatalf("username %q, want %q", c.Username, want)
	}
	mac := hmac.New(sha1.New, []byte("s3cret"))
	mac.Write([]byte(c.Username))
	if want := base64.StdEncoding.EncodeToString(mac.Sum(nil)); c.Password != want {
		t.Fatalf("password %q, want %q", c.Password, want)
	}
	if c.TTL != 7200 || len(c.URIs) != 1 {
		t.Fatalf("ttl %d uris %v", c.TTL, c.URIs)
	}
}

func TestCredentialsStaticAndUnconfigured(t *testing.T) {
	now := time.Unix(1700000000, 0)
	c := Settings{URIs: []string{"turn:t"}, Username: "u", Password: "p", Lifetime: time.Hour}.Credentials("@a:b", now)
	if c == nil || c.Username != "u" || c.Password != "p" || c.TTL != 3600 {
		t.Fatalf("static: %+v", c)
	}
	if c := (Settings{URIs: []string{"turn:t"}, Lifetime: time.Hour}).Credentials("@a:b", now); c != nil {
		t.Fatalf("no secret and no account: %+v, want nil", c)
	}
	if c := (Settings{SharedSecret: "x", Lifetime: time.Hour}).Credentials("@a:b", now); c != nil {
		t.Fatalf("no uris: %+v, want nil", c)
	}
}
