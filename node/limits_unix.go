//go:build unix

package node

import "syscall"

// defaultMaxConns leaves 512 of the process's open files for listeners,
// handshakes, HTTP and the bus.
func defaultMaxConns() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<24 {
		return 1 << 20
	}
	return max(int(rl.Cur)-512, 64)
}
