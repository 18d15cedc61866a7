package node

import (
	"strings"
	"testing"
)

// TestProbeUpgradeSaysWhy: a plain GET /ws tells what an upgrade with the
// same query would get, so a browser that only saw 1006 can say why.
func TestProbeUpgradeSaysWhy(t *testing.T) {
	n := startNode(t, Config{})
	cases := []struct {
		path string
		code int
		body string
	}{
		{"/ws?name=alice", 426, "would be accepted"},
		{"/ws?name=%3Cb%3E", 400, "bad name"},
		{"/ws?name=" + strings.Repeat("x", 100), 400, "bad name"},
	}
	for _, tc := range cases {
		code, body := httpGet(t, n.Addr(), tc.path)
		if code != tc.code || !strings.Contains(body, tc.body) {
			t.Errorf("GET %s: %d %q, want %d with %q", tc.path, code, body, tc.code, tc.body)
		}
	}
	n.unready.Store(true)
	n.draining.Store(true)
	if code, body := httpGet(t, n.Addr(), "/ws?name=alice"); code != 503 || !strings.Contains(body, "draining") {
		t.Errorf("GET /ws while draining: %d %q, want 503 draining", code, body)
	}
	n.draining.Store(false) // let the cleanup's Shutdown run its course
	n.unready.Store(false)
}

// TestWelcomeCarriesMaxMessageSize: a client learns the node's message cap
// from welcome and can refuse an oversized send before it costs a 1009.
func TestWelcomeCarriesMaxMessageSize(t *testing.T) {
	for _, size := range []int{0, 4096} {
		n := startNode(t, Config{MaxMessageSize: size})
		c := dial(t, n, "/ws")
		w := c.await("welcome")
		want := float64(size)
		if size == 0 {
			want = 64 << 10
		}
		if w["max_message_size"] != want {
			t.Errorf("MaxMessageSize %d: welcome %v, want max_message_size %v", size, w, want)
		}
	}
}
