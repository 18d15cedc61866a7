package actors

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/gobwas/ws"

	"parley/relay"
)

// panicky is a transport whose Send panics on a pong frame: an injected
// fault inside the connection actor (only it sends pong).
type panicky struct{ *fakeTransport }

func (p panicky) Send(frame []byte) error {
	if bytes.Contains(frame, []byte(`"type":"pong"`)) {
		panic("injected fault")
	}
	return p.fakeTransport.Send(frame)
}

// lockedBuffer is a log sink safe for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestConnActorPanicClosesWith1011(t *testing.T) {
	var logs lockedBuffer
	env := newEnv(t, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))}, relay.MemoryConfig{})
	other := env.connect(t, "other", false)
	other.join("r")

	ft := newFake()
	sess, err := env.sys.Connect(panicky{ft}, ConnInfo{Name: "victim"})
	if err != nil {
		t.Fatal(err)
	}
	ft.mu.Lock()
	ft.sess = sess
	ft.mu.Unlock()
	victim := &client{t: t, sess: sess, ft: ft, typed: make(map[string]int)}
	victim.next("welcome")
	victim.join("r")
	victim.send(`{"type":"ping"}`)
	ft.await(t, "close 1011", func() bool { return ft.closed })
	ft.mu.Lock()
	code, reason := ft.code, ft.reason
	ft.mu.Unlock()
	if code != ws.StatusInternalServerError || reason != "internal error" {
		t.Fatalf("closed with %d %q, want 1011 internal error", code, reason)
	}
	// The room forgets the victim; the other member carries on.
	other.next("member_left")
	other.send(`{"type":"send","room":"r","text":"still here","id":"s1"}`)
	if m := other.next("message"); m["text"] != "still here" {
		t.Fatalf("message %v", m)
	}
	other.next("ack")
	env.connect(t, "newcomer", false).join("r")

	out := logs.String()
	if n := strings.Count(out, "connection actor panicked"); n != 1 {
		t.Fatalf("panic logged %d times, want once:\n%s", n, out)
	}
	if !strings.Contains(out, "injected fault") || !strings.Contains(out, "panic_test.go") {
		t.Fatalf("panic log lacks the value or the stack:\n%s", out)
	}
}
