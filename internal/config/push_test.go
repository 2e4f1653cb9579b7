package config_test

import (
	"slices"
	"testing"
	"time"

	"ganglion/internal/config"
)

// push.enabled is Synapse's key: true by default; false turns evaluation
// off. The section's other Synapse keys are accepted.
func TestLoadPushEnabled(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain})
	if !cfg.Push.Enabled {
		t.Errorf("push.enabled defaults to false, want true")
	}
	cfg = mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain + "push: {enabled: false, include_content: true}\n"})
	if cfg.Push.Enabled {
		t.Errorf("push.enabled: false loaded as true")
	}
	for _, k := range cfg.UnknownKeys {
		if k == "push" {
			t.Errorf("push reported as an unknown key")
		}
	}
}

// The email section: Synapse's defaults, and enable_notifs needs a sender.
func TestLoadEmail(t *testing.T) {
	cfg := mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain})
	e := cfg.Email
	if e.SMTPHost != "localhost" || e.SMTPPort != 25 || !e.EnableTLS || e.AppName != "Matrix" || e.EnableNotifs ||
		e.MailDelay() != 10*time.Minute {
		t.Errorf("email defaults %+v", e)
	}
	cfg = mustLoad(t, nil, [2]string{"homeserver.yaml", minimalMain + `email:
  smtp_host: mail.example.org
  smtp_port: 587
  notif_from: "Example <noreply@example.org>"
  enable_notifs: true
  notif_delay_before_mail: 30s
`})
	if !cfg.Email.EnableNotifs || cfg.Email.SMTPPort != 587 || cfg.Email.MailDelay() != 30*time.Second {
		t.Errorf("email %+v", cfg.Email)
	}
	for _, k := range cfg.NotBuiltKeys {
		if k == "email" {
			t.Errorf("email is still reported as not built")
		}
	}
	_, err := config.Load(writeFiles(t, [2]string{"homeserver.yaml", minimalMain +
		"email: {enable_notifs: true, smtp_port: 0, notif_delay_before_mail: soon, force_tls: true, enable_tls: false}\n"}), nil)
	if err == nil {
		t.Fatal("Load succeeded, want problems")
	}
	if got, want := problemPaths(t, err), []string{"email.force_tls", "email.notif_delay_before_mail", "email.notif_from", "email.smtp_port"}; !slices.Equal(got, want) {
		t.Errorf("problem paths %v, want %v", got, want)
	}
}
