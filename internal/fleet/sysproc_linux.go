package fleet

import "syscall"

// sysProcAttr puts each child in its own process group, so a Ctrl-C on the
// terminal reaches only the supervisor (which then stops the children in
// order) and not every child at once; and asks the kernel to send the child
// SIGTERM if the supervisor dies without stopping it.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
