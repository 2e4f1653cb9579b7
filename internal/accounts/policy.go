package accounts

import (
	"net/http"
	"unicode"
	"unicode/utf8"

	"ganglion/internal/mxhttp"
)

// PasswordPolicy is password_config.policy: rules a new password must
// meet, at registration and at a password change. As in Synapse, nothing
// is checked unless Enabled.
type PasswordPolicy struct {
	Enabled          bool
	MinimumLength    int
	RequireDigit     bool
	RequireSymbol    bool
	RequireLowercase bool
	RequireUppercase bool
	// Advertised is the body of GET /password_policy: the m.* keys of the
	// rules the config set (Synapse lists only those), empty when the
	// policy is off.
	Advertised map[string]any
}

// Check returns the first rule pw breaks, as a 400 with the spec's
// errcode, in Synapse's order: length, digit, symbol, uppercase,
// lowercase. Length counts characters, not bytes; a digit is any Unicode
// decimal digit, a symbol anything but an ASCII letter or digit, as
// Synapse's regular expressions decide.
func (p PasswordPolicy) Check(pw string) error {
	if !p.Enabled {
		return nil
	}
	if utf8.RuneCountInString(pw) < p.MinimumLength {
		return mxhttp.WithCode(http.StatusBadRequest, "M_PASSWORD_TOO_SHORT",
			"The password must be at least %d characters long", p.MinimumLength)
	}
	var digit, symbol, upper, lower bool
	for _, r := range pw {
		switch {
		case r >= 'a' && r <= 'z':
			lower = true
		case r >= 'A' && r <= 'Z':
			upper = true
		case r >= '0' && r <= '9':
			digit = true
		default:
			symbol = true
			if unicode.IsDigit(r) {
				digit = true
			}
		}
	}
	switch {
	case p.RequireDigit && !digit:
		return mxhttp.WithCode(http.StatusBadRequest, "M_PASSWORD_NO_DIGIT", "The password must include at least one digit")
	case p.RequireSymbol && !symbol:
		return mxhttp.WithCode(http.StatusBadRequest, "M_PASSWORD_NO_SYMBOL", "The password must include at least one symbol")
	case p.RequireUppercase && !upper:
		return mxhttp.WithCode(http.StatusBadRequest, "M_PASSWORD_NO_UPPERCASE", "The password must include at least one uppercase letter")
	case p.RequireLowercase && !lower:
		return mxhttp.WithCode(http.StatusBadRequest, "M_PASSWORD_NO_LOWERCASE", "The password must include at least one lowercase letter")
	}
	return nil
}

// checkNewPassword is what register and the password change run on a new
// password before user-interactive auth, as Synapse does, so a client
// learns of a weak password before it asks the user for anything else.
// A password bcrypt cannot take whole is refused with the spec's generic
// M_WEAK_PASSWORD, here as in HashPassword.
func (s *Service) checkNewPassword(pw string) error {
	if len(pw) > maxPasswordBytes {
		return errPasswordTooLong
	}
	return s.cfg.PasswordPolicy.Check(pw)
}

func (h *handlers) passwordPolicy(w http.ResponseWriter, r *http.Request) error {
	out := map[string]any{}
	if p := h.s.cfg.PasswordPolicy; p.Enabled {
		for k, v := range p.Advertised {
			out[k] = v
		}
	}
	return mxhttp.WriteJSON(w, http.StatusOK, out)
}
