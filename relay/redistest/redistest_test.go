package redistest

import (
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestServerRestart(t *testing.T) {
	s := Start(t)
	if got := s.Do(t, "SET", "k", "v"); got != "OK" {
		t.Fatalf("SET = %q", got)
	}
	if got := s.Do(t, "GET", "k"); got != "v" {
		t.Fatalf("GET = %q", got)
	}
	s.Restart(t)
	if got := s.Do(t, "EXISTS", "k"); got != "0" {
		t.Fatalf("after restart EXISTS = %q (data should be gone)", got)
	}
	s.Kill()
	if _, err := Do(s.Addr(), "PING"); err == nil {
		t.Fatal("killed server answers")
	}
	s.Start(t)
	if !strings.HasPrefix(s.URL(), "redis://127.0.0.1:") {
		t.Fatalf("URL %q", s.URL())
	}
}

func TestCluster(t *testing.T) {
	c := StartCluster(t, 3)
	if len(c.Addrs()) != 3 {
		t.Fatalf("addrs %v", c.Addrs())
	}
	if slot := c.KeySlot(t, "parley:{room}:ch"); slot != c.KeySlot(t, "{room}") {
		t.Fatalf("hash tag ignored: %d", slot)
	}
}

func TestSentinel(t *testing.T) {
	m := Start(t)
	s := StartSentinel(t, m, "mm")
	if out := s.Do(t, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mm"); out != "127.0.0.1\n"+strconv.Itoa(m.Port()) {
		t.Fatalf("master addr %q", out)
	}
}
