package netpoll

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/gobwas/ws"
)

// faulty echoes every message except "boom", on which it panics: an
// injected fault in a handler callback.
type faulty struct{ *recorder }

func (f faulty) HandleMessage(c *Conn, op ws.OpCode, payload []byte) {
	if string(payload) == "boom" {
		panic("injected fault")
	}
	f.recorder.HandleMessage(c, op, payload)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestHandlerPanicClosesOneConn: a panic in HandleMessage closes that
// connection with 1011 and is logged once with its stack; the worker, the
// poller and the other connections carry on. One worker, so the panicking
// goroutine is the one that must serve the others afterwards.
func TestHandlerPanicClosesOneConn(t *testing.T) {
	var logs syncBuffer
	rec := newRecorder(true)
	s := startServer(t, Config{Workers: 1, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, faulty{rec})
	victim := dial(t, s, nil)
	s.nextConn(t)
	others := make([]*client, 3)
	for i := range others {
		others[i] = dial(t, s, nil)
		s.nextConn(t)
	}
	// "after" rides in the same write as "boom": it must not be delivered.
	victim.sendRaw(append(clientFrame(true, ws.OpText, []byte("boom"), maskA), clientFrame(true, ws.OpText, []byte("after"), maskA)...))
	code, reason, data := victim.readClose()
	if code != ws.StatusInternalServerError || reason != "internal error" || data != 0 {
		t.Fatalf("victim got close %d %q after %d data frames, want 1011 internal error and nothing else", code, reason, data)
	}
	victim.nc.Close() // as a browser would after the close frame
	if cl := rec.nextClose(t); cl.err == nil {
		t.Fatalf("HandleClose for the victim without a reason")
	}
	for i, cl := range others {
		msg := []byte("hello " + strings.Repeat("x", i))
		cl.send(true, ws.OpText, msg)
		if got := cl.mustRead(ws.OpText); !bytes.Equal(got, msg) {
			t.Fatalf("other %d: echo %q, want %q", i, got, msg)
		}
	}
	fresh := dial(t, s, nil)
	s.nextConn(t)
	fresh.send(true, ws.OpText, []byte("new"))
	if got := fresh.mustRead(ws.OpText); string(got) != "new" {
		t.Fatalf("new conn echo %q", got)
	}
	for {
		select {
		case m := <-rec.msgs:
			if string(m.payload) == "after" {
				t.Fatal(`"after" was delivered after the panic`)
			}
			continue
		default:
		}
		break
	}
	out := logs.String()
	if n := strings.Count(out, "handler panicked"); n != 1 {
		t.Fatalf("panic logged %d times, want once:\n%s", n, out)
	}
	if !strings.Contains(out, "injected fault") || !strings.Contains(out, "panic_test.go") {
		t.Fatalf("panic log lacks the value or the stack:\n%s", out)
	}
}
