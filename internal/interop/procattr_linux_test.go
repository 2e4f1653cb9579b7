package interop_test

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill the child when the test process
// dies, so a test binary killed by -timeout leaves no Dendrite running.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
