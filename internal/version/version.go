// Package version says which Ganglion this is, for the federation version
// endpoint and the User-Agent of outbound requests.
package version

import (
	"runtime/debug"
	"strings"
)

// Name is the server implementation's name.
const Name = "Ganglion"

// String is the module version when built as a released module, else a
// development version naming the VCS revision the binary was built from.
func String() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "0.0.0-dev"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return strings.TrimPrefix(v, "v")
	}
	var rev string
	dirty := false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	out := "0.0.0-dev"
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" {
		out += "+" + rev
		if dirty {
			out += ".dirty"
		}
	}
	return out
}

// UserAgent is the User-Agent of Ganglion's outbound requests.
func UserAgent() string { return Name + "/" + String() }
