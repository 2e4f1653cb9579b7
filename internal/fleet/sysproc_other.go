//go:build !linux

package fleet

import "syscall"

// sysProcAttr: outside Linux the children keep the supervisor's process
// group and are not stopped if it dies abruptly.
func sysProcAttr() *syscall.SysProcAttr { return nil }
