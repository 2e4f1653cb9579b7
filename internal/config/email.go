package config

import (
	"net/mail"
	"strings"
	"time"
)

// EmailConfig is Synapse's email section, as far as email notifications
// use it (Ganglion has no email 3PIDs or password reset by email).
type EmailConfig struct {
	SMTPHost string `yaml:"smtp_host"`
	SMTPPort int    `yaml:"smtp_port"`
	SMTPUser string `yaml:"smtp_user"`
	SMTPPass string `yaml:"smtp_pass"`
	// RequireTransportSecurity refuses to send unless STARTTLS succeeds.
	RequireTransportSecurity bool `yaml:"require_transport_security"`
	// EnableTLS: use STARTTLS when the server offers it (default true).
	EnableTLS bool `yaml:"enable_tls"`
	// ForceTLS speaks TLS from the first byte (SMTPS, usually port 465)
	// instead of upgrading with STARTTLS.
	ForceTLS     bool   `yaml:"force_tls"`
	NotifFrom    string `yaml:"notif_from"`
	AppName      string `yaml:"app_name"`
	EnableNotifs bool   `yaml:"enable_notifs"`
	// NotifForNewUsers is accepted for Synapse configs; it has no effect:
	// it sets up email pushers for users registering with an email
	// address, and Ganglion registers none.
	NotifForNewUsers bool   `yaml:"notif_for_new_users"`
	ClientBaseURL    string `yaml:"client_base_url"`
	// NotifDelayBeforeMail is how long a notification waits, unread,
	// before it is mailed (default 10m).
	NotifDelayBeforeMail Duration `yaml:"notif_delay_before_mail"`
}

func defaultEmail() EmailConfig {
	return EmailConfig{SMTPHost: "localhost", SMTPPort: 25, EnableTLS: true, AppName: "Matrix",
		NotifForNewUsers: true, NotifDelayBeforeMail: "10m"}
}

// MailDelay is notif_delay_before_mail (10 minutes if it does not parse;
// Validate reports that).
func (e EmailConfig) MailDelay() time.Duration {
	d, err := e.NotifDelayBeforeMail.Parse()
	if err != nil || d <= 0 {
		return 10 * time.Minute
	}
	return d
}

func (c *Config) validateEmail(ps *problems) {
	e := c.Email
	if e.SMTPPort < 1 || e.SMTPPort > 65535 {
		ps.add("email.smtp_port", "must be between 1 and 65535, got %d", e.SMTPPort)
	}
	if e.ForceTLS && !e.EnableTLS {
		ps.add("email.force_tls", "cannot be true while email.enable_tls is false")
	}
	if d, err := e.NotifDelayBeforeMail.Parse(); err != nil || d <= 0 {
		ps.add("email.notif_delay_before_mail", "must be a positive duration such as 10m, got %q", string(e.NotifDelayBeforeMail))
	}
	if !e.EnableNotifs {
		return
	}
	if strings.TrimSpace(e.SMTPHost) == "" {
		ps.add("email.smtp_host", "required when email.enable_notifs is true")
	}
	if _, err := mail.ParseAddress(e.NotifFrom); err != nil {
		ps.add("email.notif_from", "required when email.enable_notifs is true: an address such as \"Matrix <noreply@example.org>\" (%v)", err)
	}
}
