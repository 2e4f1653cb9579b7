package events_test

import (
	"testing"

	"ganglion/internal/events"
)

// The vectors below are the spec appendix "Cryptographic Test Vectors"
// (server "domain", key "ed25519:1", seed YJDBA9Xn…).

func TestSpecSignJSON(t *testing.T) {
	key := specKey(t)
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"empty object", `{}`, `{
		    "signatures": {"domain": {"ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"}}
		}`},
		{"data values", `{"one": 1, "two": "Two"}`, `{
		    "one": 1,
		    "signatures": {"domain": {"ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"}},
		    "two": "Two"
		}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := events.SignJSON([]byte(tt.in), "domain", key)
			if err != nil {
				t.Fatal(err)
			}
			if want := canonical(t, tt.want); string(got) != want {
				t.Fatalf("got  %s\nwant %s", got, want)
			}
			if err := events.VerifyJSON(got, "domain", "ed25519:1", key.Public()); err != nil {
				t.Errorf("VerifyJSON of own signature: %v", err)
			}
			// Verification ignores unsigned and other servers' signatures.
			withExtras, err := events.SignJSON(got, "other.example", key)
			if err != nil {
				t.Fatal(err)
			}
			if err := events.VerifyJSON(withExtras, "domain", "ed25519:1", key.Public()); err != nil {
				t.Errorf("VerifyJSON after a second signature: %v", err)
			}
		})
	}
}

func TestSpecEventSigning(t *testing.T) {
	key := specKey(t)
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"minimal event", `{
		    "room_id": "!x:domain",
		    "sender": "@a:domain",
		    "origin": "domain",
		    "origin_server_ts": 1000000,
		    "signatures": {},
		    "hashes": {},
		    "type": "X",
		    "content": {},
		    "prev_events": [],
		    "auth_events": [],
		    "depth": 3,
		    "unsigned": {"age_ts": 1000000}
		}`, `{
		    "auth_events": [],
		    "content": {},
		    "depth": 3,
		    "hashes": {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},
		    "origin": "domain",
		    "origin_server_ts": 1000000,
		    "prev_events": [],
		    "room_id": "!x:domain",
		    "sender": "@a:domain",
		    "signatures": {"domain": {"ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"}},
		    "type": "X",
		    "unsigned": {"age_ts": 1000000}
		}`},
		{"redactable content", `{
		    "content": {"body": "Here is the message content"},
		    "event_id": "$0:domain",
		    "origin": "domain",
		    "origin_server_ts": 1000000,
		    "type": "m.room.message",
		    "room_id": "!r:domain",
		    "sender": "@u:domain",
		    "signatures": {},
		    "unsigned": {"age_ts": 1000000}
		}`, `{
		    "content": {"body": "Here is the message content"},
		    "event_id": "$0:domain",
		    "hashes": {"sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"},
		    "origin": "domain",
		    "origin_server_ts": 1000000,
		    "type": "m.room.message",
		    "room_id": "!r:domain",
		    "sender": "@u:domain",
		    "signatures": {"domain": {"ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"}},
		    "unsigned": {"age_ts": 1000000}
		}`},
	}
	// The vectors predate v11 and keep "origin", so any version 1–10 applies.
	for _, version := range []string{"1", "3", "10"} {
		rv := roomVersion(t, version)
		for _, tt := range tests {
			t.Run(tt.name+"/v"+version, func(t *testing.T) {
				hashed, err := events.AddContentHash([]byte(tt.in))
				if err != nil {
					t.Fatal(err)
				}
				got, err := events.SignEvent(hashed, rv, "domain", key)
				if err != nil {
					t.Fatal(err)
				}
				if want := canonical(t, tt.want); string(got) != want {
					t.Fatalf("got  %s\nwant %s", got, want)
				}
			})
		}
	}
}

func TestSpecContentHash(t *testing.T) {
	got, err := events.ContentHash([]byte(`{"room_id":"!x:domain","sender":"@a:domain","origin":"domain",
		"origin_server_ts":1000000,"signatures":{"x":{}},"hashes":{"sha256":"junk"},"type":"X","content":{},
		"prev_events":[],"auth_events":[],"depth":3,"unsigned":{"age_ts":1}}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"; events.EncodeBase64(got) != want {
		t.Errorf("got %s, want %s", events.EncodeBase64(got), want)
	}
}

func TestBase64(t *testing.T) {
	// The spec appendix's unpadded Base64 examples.
	for _, tt := range []struct{ in, want string }{
		{"", ""}, {"f", "Zg"}, {"fo", "Zm8"}, {"foo", "Zm9v"}, {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"},
	} {
		if got := events.EncodeBase64([]byte(tt.in)); got != tt.want {
			t.Errorf("EncodeBase64(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	for _, tt := range []struct {
		in      string
		want    string
		wantErr bool
	}{
		{"Zm9vYg", "foob", false},
		{"Zm9vYg==", "foob", false},
		{"+/+/", "\xfb\xff\xbf", false},
		{"-_-_", "\xfb\xff\xbf", false},
		{"-_-_=", "\xfb\xff\xbf", false},
		{"+_", "", true},
		{"Zm9v!", "", true},
		{"Z", "", true},
	} {
		got, err := events.DecodeBase64(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("DecodeBase64(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if string(got) != tt.want {
			t.Errorf("DecodeBase64(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
