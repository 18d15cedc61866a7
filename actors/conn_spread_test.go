package actors

import (
	"testing"
	"time"
)

func TestSpreadStaysInRange(t *testing.T) {
	cases := []time.Duration{0, time.Millisecond, time.Second, time.Minute}
	for _, d := range cases {
		seen := map[time.Duration]bool{}
		for i := 0; i < 200; i++ {
			got := spread(d)
			if d == 0 && got != 0 || d > 0 && (got < d || got >= 2*d) {
				t.Fatalf("spread(%v) = %v, want in [%v, %v)", d, got, d, 2*d)
			}
			seen[got] = true
		}
		if d >= time.Second && len(seen) < 100 {
			t.Fatalf("spread(%v) gave only %d distinct values in 200 draws", d, len(seen))
		}
	}
}
