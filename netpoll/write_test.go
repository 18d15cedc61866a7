//go:build linux && !netpoll_goroutines

package netpoll

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// TestFinishMidWriteNeverReachesAnotherConn: a writev runs outside the
// conn's lock, so a conn can finish while one is in flight. Its fd must not
// be closed under the writer: the next connection accepted could get the
// same fd number and receive the old conn's frames. The writer is held
// between releasing the lock and its writev while the conn finishes and a
// new one is accepted; the new client must get only its own frames.
func TestFinishMidWriteNeverReachesAnotherConn(t *testing.T) {
	// Cleanups run last-in first-out: the hook goes after the poller.
	t.Cleanup(func() { testHookWritev = nil })
	h := newRecorder(false)
	s := startServer(t, Config{}, h)
	clA := dial(t, s, nil)
	a := s.nextConn(t)

	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	testHookWritev = func(c *Conn) {
		if c == a {
			once.Do(func() { close(entered); <-release })
		}
	}

	if err := a.Send(AppendFrame(nil, ws.OpText, []byte("from A"))); err != nil {
		t.Fatal(err)
	}
	<-entered // a's writer is between unlock and writev
	a.Abort(nil)
	if got := h.nextClose(t); got.c != a {
		t.Fatalf("HandleClose for conn %d, want A (%d)", got.c.ID(), a.ID())
	}
	clA.nc.Close()
	clB := dial(t, s, nil) // would get A's fd number if A's fd had been closed
	b := s.nextConn(t)
	close(release)
	if err := b.Send(AppendFrame(nil, ws.OpText, []byte("from B"))); err != nil {
		t.Fatal(err)
	}
	if got := string(clB.mustRead(ws.OpText)); got != "from B" {
		t.Fatalf("B's first frame is %q, want %q", got, "from B")
	}
}

// TestChurnMidWriteKeepsFramesApart: conns are aborted (and their peers
// hang up) while senders hammer them with large frames and new conns are
// accepted at the same time; every client checks that each frame it reads
// carries its own tag. Run with -race, it also checks the unlocked writev
// against everything that touches the conn meanwhile.
func TestChurnMidWriteKeepsFramesApart(t *testing.T) {
	const (
		live   = 8               // conns open at once
		total  = 200             // conns over the test
		bound  = 3 * time.Second // the churn stops early past this
		fillKB = 16              // payload size: long writevs
	)
	h := newRecorder(false)
	s := startServer(t, Config{MaxQueueFrames: 64, MaxQueueBytes: 64 * (fillKB + 1) << 10}, h)
	fill := bytes.Repeat([]byte{'x'}, fillKB<<10)

	type pair struct {
		c    *Conn
		cl   *client
		tag  []byte
		done chan struct{} // its sender stopped
	}
	var (
		readers sync.WaitGroup
		foreign = make(chan string, total)
	)
	open := func(n int) *pair {
		cl := dial(t, s, nil)
		p := &pair{c: s.nextConn(t), cl: cl, tag: fmt.Appendf(nil, "conn%04d:", n), done: make(chan struct{})}
		readers.Add(1)
		go func() { // the client: every text frame must be its own
			defer readers.Done()
			for {
				hd, payload, err := p.cl.read()
				if err != nil || hd.OpCode == ws.OpClose {
					return
				}
				if hd.OpCode == ws.OpText && !bytes.HasPrefix(payload, p.tag) {
					foreign <- fmt.Sprintf("%s got a frame of %s", p.tag, payload[:min(len(payload), 9)])
					return
				}
			}
		}()
		go func() { // the sender: as fast as the queue takes frames
			defer close(p.done)
			frame := AppendFrame(nil, ws.OpText, append(append([]byte(nil), p.tag...), fill...))
			for {
				err := p.c.Send(frame)
				if errors.Is(err, ErrClosed) {
					return
				}
				if errors.Is(err, ErrQueueFull) {
					time.Sleep(50 * time.Microsecond) // back off; the flusher drains
				}
			}
		}()
		return p
	}

	start := time.Now()
	var ring []*pair
	for n := 0; n < total && time.Since(start) < bound; n++ {
		ring = append(ring, open(n))
		if len(ring) < live {
			continue
		}
		old := ring[0]
		ring = ring[1:]
		if n%2 == 0 {
			old.c.Abort(nil) // the server ends it mid-write
		} else {
			old.cl.nc.Close() // the peer hangs up mid-write
			old.c.Abort(nil)
		}
		<-old.done
	}
	for _, p := range ring {
		p.c.Abort(nil)
		<-p.done
	}
	readers.Wait()
	close(foreign)
	for msg := range foreign {
		t.Error(msg)
	}
}
