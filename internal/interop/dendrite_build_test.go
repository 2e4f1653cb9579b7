package interop_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dendriteVersion is the Dendrite release the interoperation suite runs
// against. The Go module proxy serves it, so every machine with Go and
// network access to the proxy (CI included) can build it.
const dendriteVersion = "v0.13.8"

// dendriteModule is Dendrite's Go module path.
const dendriteModule = "github.com/matrix-org/dendrite"

// dendriteCommands are the binaries the suite needs: the server, its key
// generator and its config generator.
var dendriteCommands = []string{"dendrite", "generate-keys", "generate-config"}

// dendriteBuildTimeout bounds the build (downloads included). A cold build
// takes a minute or two on two cores.
const dendriteBuildTimeout = 15 * time.Minute

// dendriteBinDir is where the built binaries are kept between runs:
// GANGLION_DENDRITE_BIN if set, else ganglion-dendrite/VERSION beside Go's
// build cache (whatever keeps that between CI runs can keep this too), else
// in the temporary directory. Keyed by version, so a version bump rebuilds.
func dendriteBinDir(t testing.TB, goBin string) string {
	t.Helper()
	if d := os.Getenv("GANGLION_DENDRITE_BIN"); d != "" {
		return d
	}
	base := os.TempDir()
	out, err := exec.Command(goBin, "env", "GOCACHE").Output()
	if cache := strings.TrimSpace(string(out)); err == nil && filepath.IsAbs(cache) {
		base = filepath.Dir(cache)
	}
	return filepath.Join(base, "ganglion-dendrite", dendriteVersion)
}

// buildDendrite returns the directory holding the Dendrite binaries,
// building them with `go install` from the module proxy the first time.
// Test packages run in parallel and several may want the build at once: a
// file lock in the directory makes one build and the others wait for it.
// A failed build fails the test; it never skips.
func buildDendrite(t testing.TB) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building Dendrite needs the go command on PATH: %v", err)
	}
	dir := dendriteBinDir(t, goBin)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("create the Dendrite binary directory: %v", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatalf("open the Dendrite build lock: %v", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatalf("take the Dendrite build lock: %v", err)
	}
	// Closing the file releases the lock.

	// The marker is written only after every binary is in place, so a build
	// killed halfway is redone.
	marker := filepath.Join(dir, ".complete")
	if _, err := os.Stat(marker); err == nil && dendriteBinariesPresent(dir) {
		return dir
	}
	if err := os.Remove(marker); err != nil && !os.IsNotExist(err) {
		t.Fatalf("clear the Dendrite build marker: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), dendriteBuildTimeout)
	defer cancel()
	args := []string{"install"}
	for _, c := range dendriteCommands {
		args = append(args, fmt.Sprintf("%s/cmd/%s@%s", dendriteModule, c, dendriteVersion))
	}
	cmd := exec.CommandContext(ctx, goBin, args...)
	// Outside any module: pkg@version ignores the current one anyway, and a
	// go.work or -mod flag of the caller must not leak in. CGO off: Dendrite
	// then uses its pure-Go SQLite driver and the build needs no C compiler.
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=")
	setDeathSignal(cmd)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build Dendrite %s (go %v): %v\n%s", dendriteVersion, args, err, tail(string(out), 8<<10))
	}
	if !dendriteBinariesPresent(dir) {
		t.Fatalf("go install of Dendrite %s succeeded but the binaries are not all in %s", dendriteVersion, dir)
	}
	if err := os.WriteFile(marker, []byte(dendriteVersion+"\n"), 0o644); err != nil {
		t.Fatalf("mark the Dendrite build complete: %v", err)
	}
	t.Logf("built Dendrite %s into %s in %v", dendriteVersion, dir, time.Since(start).Round(time.Second))
	return dir
}

func dendriteBinariesPresent(dir string) bool {
	for _, c := range dendriteCommands {
		fi, err := os.Stat(filepath.Join(dir, c))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}
