package actors

import (
	"fmt"
	"slices"
	"testing"
)

// TestSessionSet: sessions added and removed in any order, removed twice or
// added again as new sessions — Sessions() lists exactly the live ones, each
// once, every slot points back at its session, the plain count follows, and
// a shrunk peak gives its array back.
func TestSessionSet(t *testing.T) {
	cases := []struct {
		name string
		n    int   // sessions tracked; even ones are plain
		drop []int // forgotten, in this order (repeats: forget twice)
	}{
		{"none", 3, nil},
		{"first", 3, []int{0}},
		{"last", 3, []int{2}},
		{"middle", 3, []int{1}},
		{"all in order", 4, []int{0, 1, 2, 3}},
		{"all reversed", 4, []int{3, 2, 1, 0}},
		{"interleaved", 6, []int{4, 0, 5, 2}},
		{"twice", 3, []int{1, 1, 0, 1}},
		{"single", 1, []int{0, 0}},
		{"peak", 5000, func() []int {
			var d []int
			for i := 4999; i >= 10; i-- {
				d = append(d, (i*7919)%5000)
			}
			return d
		}()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &System{}
			all := make([]*Session, tc.n)
			for i := range all {
				all[i] = &Session{sys: s, id: fmt.Sprint("s", i)}
				if i%2 == 0 {
					all[i].flags.Store(sessPlain)
				}
				s.track(all[i])
			}
			gone := map[int]bool{}
			for _, i := range tc.drop {
				s.forget(all[i])
				gone[i] = true
			}
			var want []string
			plain := 0
			for i, sess := range all {
				if !gone[i] {
					want = append(want, sess.id)
					if i%2 == 0 {
						plain++
					}
				}
			}
			var got []string
			for _, sess := range s.Sessions() {
				got = append(got, sess.id)
			}
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("Sessions() = %v, want %v", got, want)
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			for i, sess := range s.conns {
				if int(sess.slot) != i {
					t.Fatalf("session %s in slot %d says slot %d", sess.id, i, sess.slot)
				}
			}
			for i, sess := range all {
				if gone[i] && sess.slot != -1 {
					t.Fatalf("forgotten session %s keeps slot %d", sess.id, sess.slot)
				}
			}
			if got := int(s.count.plain.Load()); got != plain {
				t.Fatalf("plain count %d, want %d", got, plain)
			}
			if c := cap(s.conns); c > 1024 && len(s.conns) < c/4 {
				t.Fatalf("%d sessions keep an array of %d", len(s.conns), c)
			}
			if st := s.conns[len(s.conns):cap(s.conns)]; slices.ContainsFunc(st, func(p *Session) bool { return p != nil }) {
				t.Fatal("a forgotten session is still referenced past the end")
			}
		})
	}
}
