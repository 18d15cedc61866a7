package main

import (
	"bytes"
	"testing"

	"github.com/gobwas/ws"
)

// serverFrame is a frame as a node sends it: unmasked.
func serverFrame(t *testing.T, op ws.OpCode, payload []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := ws.WriteFrame(&b, ws.NewFrame(op, true, payload)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// The skipper finds every ping however the stream is cut into reads.
func TestFrameSkipperCountsPingsAcrossReads(t *testing.T) {
	text := bytes.Repeat([]byte("x"), 130)   // 16-bit length
	big := bytes.Repeat([]byte("y"), 70_000) // 64-bit length
	cases := []struct {
		name  string
		parts [][]byte
		pings int
	}{
		{"one ping", [][]byte{serverFrame(t, ws.OpPing, nil)}, 1},
		{"text then ping", [][]byte{serverFrame(t, ws.OpText, []byte("hello")), serverFrame(t, ws.OpPing, nil)}, 1},
		{"ping with payload between texts", [][]byte{serverFrame(t, ws.OpText, text), serverFrame(t, ws.OpPing, []byte("abc")), serverFrame(t, ws.OpText, big)}, 1},
		{"a text that looks like a ping inside", [][]byte{serverFrame(t, ws.OpText, []byte{0x89, 0x00, 0x89, 0x00})}, 0},
		{"two pings and a close", [][]byte{serverFrame(t, ws.OpPing, nil), serverFrame(t, ws.OpText, big), serverFrame(t, ws.OpPing, nil), serverFrame(t, ws.OpClose, []byte{3, 232})}, 2},
	}
	for _, tc := range cases {
		stream := bytes.Join(tc.parts, nil)
		for _, cut := range []int{1, 2, 3, 7, 64, 4096, len(stream)} {
			var s frameSkipper
			got := 0
			for b := stream; len(b) > 0; {
				n := min(cut, len(b))
				got += s.feed(b[:n])
				b = b[n:]
			}
			if got != tc.pings {
				t.Errorf("%s, reads of %d bytes: %d pings, want %d", tc.name, cut, got, tc.pings)
			}
			if s.skip != 0 || s.nh != 0 {
				t.Errorf("%s, reads of %d bytes: ends mid-frame (skip %d, header %d)", tc.name, cut, s.skip, s.nh)
			}
		}
	}
}
