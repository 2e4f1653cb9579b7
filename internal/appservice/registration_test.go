package appservice_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ganglion/internal/appservice"
)

const goodReg = `id: bridge
url: http://127.0.0.1:29318
as_token: as-secret
hs_token: hs-secret
sender_localpart: bridgebot
rate_limited: false
protocols: [irc]
de.sorunome.msc2409.push_ephemeral: true
namespaces:
  users:
    - {exclusive: true, regex: '@irc_.*:example\.org'}
  aliases:
    - {exclusive: false, regex: '#irc_.*'}
  rooms: []
`

func write(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadRegistrationGood(t *testing.T) {
	dir := t.TempDir()
	regs, err := appservice.LoadRegistrations([]string{write(t, dir, "a.yaml", goodReg)})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	r := regs[0]
	if r.ID != "bridge" || r.RateLimited || !r.ReceiveEphemeral || !r.HasProtocol("irc") || r.URL != "http://127.0.0.1:29318" {
		t.Errorf("parsed %+v", r)
	}
	if !r.IsInterestedInUser("@irc_bob:example.org", "example.org") || !r.IsInterestedInUser("@bridgebot:example.org", "example.org") {
		t.Error("namespace or sender user not matched")
	}
	// Synapse's re.match: anchored at the start only.
	if r.IsInterestedInUser("@x@irc_bob:example.org", "example.org") {
		t.Error("regex matched in the middle of a user id")
	}
	if !r.IsInterestedInAlias("#irc_chan:example.org") || r.IsInterestedInAlias("#other:example.org") {
		t.Error("alias namespace")
	}
	nullURL := strings.Replace(goodReg, "url: http://127.0.0.1:29318", "url: null", 1)
	regs, err = appservice.LoadRegistrations([]string{write(t, dir, "b.yaml", nullURL)})
	if err != nil || regs[0].URL != "" {
		t.Errorf("url: null: %v %+v", err, regs)
	}
}

func TestLoadRegistrationRefused(t *testing.T) {
	tests := []struct {
		name  string
		files []string
		want  []string // substrings, each of one problem ("file: key: …")
	}{
		{"missing fields", []string{"id: x\nurl: null\n"},
			[]string{"as_token: required", "hs_token: required", "sender_localpart: required"}},
		{"missing url key", []string{strings.Replace(goodReg, "url: http://127.0.0.1:29318\n", "", 1)},
			[]string{"url: required"}},
		{"bad url", []string{strings.Replace(goodReg, "http://127.0.0.1:29318", "ftp://x", 1)},
			[]string{"url: must be an http"}},
		{"bad regex", []string{strings.Replace(goodReg, `'@irc_.*:example\.org'`, `'@irc_(('`, 1)},
			[]string{"namespaces.users[0].regex: invalid regex"}},
		{"namespace without exclusive", []string{strings.Replace(goodReg, "{exclusive: false, regex: '#irc_.*'}", "{regex: '#irc_.*'}", 1)},
			[]string{"namespaces.aliases[0].exclusive: required"}},
		{"same tokens", []string{strings.Replace(goodReg, "hs_token: hs-secret", "hs_token: as-secret", 1)},
			[]string{"hs_token: must differ from as_token"}},
		{"duplicate id and tokens", []string{goodReg, goodReg},
			[]string{"id: \"bridge\" is also the id of", "as_token: also the as_token of", "hs_token: also the hs_token of"}},
		{"not yaml", []string{"id: [unclosed"}, []string{"invalid YAML"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var paths []string
			for i, f := range tc.files {
				paths = append(paths, write(t, dir, "reg"+string(rune('a'+i))+".yaml", f))
			}
			_, err := appservice.LoadRegistrations(paths)
			var ce *appservice.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want a ConfigError", err)
			}
			for _, w := range tc.want {
				found := false
				for _, p := range ce.Problems {
					if strings.Contains(p, w) && strings.HasPrefix(p, dir) {
						found = true
					}
				}
				if !found {
					t.Errorf("no problem with the file path and %q in:\n%s", w, err)
				}
			}
		})
	}
	_, err := appservice.LoadRegistrations([]string{"/nonexistent/reg.yaml"})
	if err == nil || !strings.Contains(err.Error(), "app_service_config_files[0]") {
		t.Errorf("missing file: %v", err)
	}
}
