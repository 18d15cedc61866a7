package node

import (
	"strings"
	"testing"
)

// TestHistoryBytesFitsTheQueue: a history reply may never be large enough
// to get its asker closed as a slow consumer, so the node refuses a byte
// cap over half the queue cap, and its default shrinks with a small queue.
func TestHistoryBytesFitsTheQueue(t *testing.T) {
	tests := []struct {
		name       string
		queue, cap int
		want       int // 0: New fails
	}{
		{"defaults", 0, 0, 256 << 10},
		{"small queue shrinks the default", 256 << 10, 0, 64 << 10},
		{"explicit within half", 1 << 20, 512 << 10, 512 << 10},
		{"over half refused", 1 << 20, 512<<10 + 1, 0},
		{"negative refused", 0, -1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.want == 0 {
				// Refused before New starts anything.
				_, err := New(Config{NodeID: "t1", MaxQueueBytes: tt.queue, HistoryBytes: tt.cap})
				if err == nil || !strings.Contains(err.Error(), "history bytes") {
					t.Fatalf("New accepted history bytes %d with queue %d (err %v)", tt.cap, tt.queue, err)
				}
				return
			}
			n := startNode(t, Config{MaxQueueBytes: tt.queue, HistoryBytes: tt.cap})
			if n.cfg.HistoryBytes != tt.want {
				t.Fatalf("history bytes %d, want %d", n.cfg.HistoryBytes, tt.want)
			}
		})
	}
}
