package node

import (
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// TestProcessDrainsOnSIGTERM runs the node binary: on SIGTERM every JSON
// client gets reconnect and close 1001, a plain client close 1001, and
// the process exits cleanly within its grace period.
func TestProcessDrainsOnSIGTERM(t *testing.T) {
	proc := startProcess(t, "--node-id", "p1", "--shutdown-grace", "5s")
	addr := proc.addr
	var js []*client
	for i := 0; i < 3; i++ {
		c := dialURL(t, "ws://"+addr+"/ws")
		c.await("welcome")
		c.joinRoom("lobby")
		js = append(js, c)
	}
	plain := dialURL(t, "ws://"+addr+"/")
	if e := plain.next(); e.text != "connected to node p1" {
		t.Fatalf("plain greeting %q", e.text)
	}
	if err := proc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for _, c := range js {
		if r := c.await("reconnect"); r["reason"] == "" {
			t.Fatalf("reconnect %v", r)
		}
		if code := c.awaitClose(); code != ws.StatusGoingAway {
			t.Fatalf("close %d, want 1001", code)
		}
	}
	if code := plain.awaitClose(); code != ws.StatusGoingAway {
		t.Fatalf("plain close %d, want 1001", code)
	}
	select {
	case <-proc.exited:
		if proc.err != nil {
			t.Fatalf("process exit: %v", proc.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("process did not exit within its grace period")
	}
}
