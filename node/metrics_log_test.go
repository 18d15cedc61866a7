package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// logBuffer is a goroutine-safe log sink for tests.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// records returns the JSON log records written so far.
func (b *logBuffer) records(t testing.TB) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestLogsLimitsOncePerReasonNoText: a flood of refusals gives one "limit
// hit" line per reason and interval with the exact count; the start line
// carries the configuration; nothing logged (at debug) holds a message's
// text.
func TestLogsLimitsOncePerReasonNoText(t *testing.T) {
	var logs logBuffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	n := startNode(t, Config{Logger: log, LimitLogInterval: 200 * time.Millisecond})

	c := dial(t, n, "/ws?name=ann")
	c.await("welcome")
	c.joinRoom("r")
	const secret = "SECRET-TEXT-1234"
	c.send(map[string]any{"type": "send", "room": "r", "text": secret, "id": "s1"})
	c.await("message")
	const badFrames, badUpgrades = 50, 3
	for i := range badFrames {
		c.send(map[string]any{"type": "send", "room": "bad room", "text": secret, "id": fmt.Sprint(i)})
	}
	for range badFrames {
		c.await("error")
	}
	for range badUpgrades {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _, _, err := ws.Dial(ctx, "ws://"+n.Addr()+"/ws?name=%3Cb%3E")
		cancel()
		if err == nil {
			t.Fatal("bad name accepted")
		}
	}
	sum := func(what, reason string) (count float64, lines int) {
		for _, r := range logs.records(t) {
			if r["msg"] == "limit hit" && r["what"] == what && r["reason"] == reason {
				count += r["count"].(float64)
				lines++
			}
		}
		return
	}
	eventually(t, 10*time.Second, func() error {
		if got, _ := sum("frame refused", "bad_room"); got != badFrames {
			return fmt.Errorf("logged %v bad_room refusals, want %d", got, badFrames)
		}
		if got, _ := sum("upgrade refused", "name"); got != badUpgrades {
			return fmt.Errorf("logged %v name refusals, want %d", got, badUpgrades)
		}
		return nil
	})
	if _, lines := sum("frame refused", "bad_room"); lines > 5 {
		t.Errorf("%d lines for %d refusals: not rate-limited", lines, badFrames)
	}
	var start map[string]any
	for _, r := range logs.records(t) {
		if r["msg"] == "node listening" {
			start = r
		}
	}
	if start == nil || start["bus"] != "memory" || start["server_api"] != "off" || start["max_queue_bytes"] == nil {
		t.Errorf("start line %v lacks the configuration summary", start)
	}
	if strings.Contains(logs.String(), secret) {
		t.Errorf("a message's text reached the log")
	}
}
