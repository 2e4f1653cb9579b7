package version_test

import (
	"strings"
	"testing"

	"ganglion/internal/version"
)

func TestString(t *testing.T) {
	v := version.String()
	if v == "" || strings.ContainsAny(v, " /") {
		t.Fatalf("version %q", v)
	}
	if ua := version.UserAgent(); ua != "Ganglion/"+v {
		t.Fatalf("user agent %q", ua)
	}
}
