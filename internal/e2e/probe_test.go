package e2e_test

import (
	"testing"

	"maunium.net/go/mautrix"
)

func TestProbe(t *testing.T) { _, _ = mautrix.NewClient("http://x", "", "") }
