//go:build !linux

package e2e_test

import "os/exec"

// setDeathSignal is Linux-only; elsewhere the harness's cleanups are the
// only guard against leftover children.
func setDeathSignal(*exec.Cmd) {}

// removeStaleBinaryDirs is Linux-only (it asks the kernel whether the
// owning process is alive).
func removeStaleBinaryDirs(string) {}
