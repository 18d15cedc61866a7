package netpoll

import (
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// TestSendTracedReportsWriteCompletion: Written gets a traced frame's
// timestamp once, after the frame (and everything queued before it) is on
// the wire; a plain Send reports nothing; while one traced frame is
// pending, a second is sent untraced.
func TestSendTracedReportsWriteCompletion(t *testing.T) {
	written := make(chan int64, 10)
	s := startServer(t, Config{PingInterval: -1, Written: func(at int64) { written <- at }}, newRecorder(false))
	cl := dial(t, s, nil)
	c := s.nextConn(t)

	if err := c.Send(TextFrame([]byte("plain"))); err != nil {
		t.Fatal(err)
	}
	if err := c.SendTraced(TextFrame([]byte("traced")), 42); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"plain", "traced"} {
		if got := string(cl.mustRead(ws.OpText)); got != want {
			t.Fatalf("read %q, want %q", got, want)
		}
	}
	select {
	case at := <-written:
		if at != 42 {
			t.Fatalf("Written(%d), want 42", at)
		}
	case <-time.After(testTimeout):
		t.Fatal("Written not called after the traced frame was read")
	}
	select {
	case at := <-written:
		t.Fatalf("a second Written(%d) for one traced frame", at)
	default:
	}
	// Two traced frames queued back to back: the first is reported; the
	// second is reported only if the first was written before it was
	// queued (one traced frame per queue at a time).
	c.mu.Lock()
	_ = c.pushLocked(TextFrame([]byte("a")), true)
	c.mu.Unlock()
	if err := c.SendTraced(TextFrame([]byte("b")), 7); err != nil {
		t.Fatal(err)
	}
	if err := c.SendTraced(TextFrame([]byte("c")), 8); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"a", "b", "c"} {
		if got := string(cl.mustRead(ws.OpText)); got != want {
			t.Fatalf("read %q, want %q", got, want)
		}
	}
	if at := <-written; at != 7 {
		t.Fatalf("Written(%d), want 7", at)
	}
	// A close the server begins is counted under its code.
	c.Close(4001, "removed")
	if code, _, _ := cl.readClose(); code != 4001 {
		t.Fatalf("close %d", code)
	}
	eventually(t, testTimeout, func() error {
		for _, cc := range s.p.Closes() {
			if cc.Code == "4001" && cc.Side == SideServer && cc.N == 1 {
				return nil
			}
		}
		return errNotCounted
	})
	select {
	case at := <-written:
		if at != 8 {
			t.Fatalf("unexpected Written(%d)", at)
		}
	default:
	}
}

var errNotCounted = errorString("close not counted")

type errorString string

func (e errorString) Error() string { return string(e) }
