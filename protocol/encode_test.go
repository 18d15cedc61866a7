package protocol

import (
	"encoding/json"
	"strings"
	"testing"
)

// benchMessages are the message frames the encode benchmarks use: a short
// chat line and a 64 KiB text of '<' (the amplification case).
var benchMessages = []struct {
	name string
	msg  Message
}{
	{"short", Message{Type: TypeMessage, Room: "lobby", Seq: 12345, Epoch: "c0ffee12", From: "alice",
		Text: "hello, how is everyone doing today? <3 & see you at 5 > 4", ID: "c-17", TS: 1795776000000}},
	{"64KiB-lt", Message{Type: TypeMessage, Room: "lobby", Seq: 12345, Epoch: "c0ffee12", From: "alice",
		Text: strings.Repeat("<", 64<<10), ID: "c-17", TS: 1795776000000}},
}

// BenchmarkEncode encodes one message frame per op: the fan-out hot path
// (a room encodes each message once for all its members).
func BenchmarkEncode(b *testing.B) {
	for _, bm := range benchMessages {
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			var n int
			for b.Loop() {
				n = len(Encode(bm.msg))
			}
			b.ReportMetric(float64(n), "frame-bytes")
		})
	}
}

// TestEncodeNoAmplification: a text costs its own size in a frame, plus
// the envelope; '<', '>' and '&' are not HTML-escaped.
func TestEncodeNoAmplification(t *testing.T) {
	base := Message{Type: TypeMessage, Room: "lobby", Seq: 7, Epoch: "e1", From: "zoë", ID: "c1", TS: 1795776000000}
	envelope := len(Encode(base)) // the same frame with an empty text
	cases := []struct {
		name, text string
		slack      int // bytes the encoding may add beyond text + envelope
	}{
		{"lt", strings.Repeat("<", 64<<10), 0},
		{"amp gt lt", strings.Repeat("<&>", 20000), 0},
		{"markup", `<script>alert("x")</script> & more`, 4},
		{"non-ascii", "Zoë 😀 日本語 <b>", 0},
		{"line breaks", "a\nb\tc", 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := base
			m.Text = tc.text
			b := Encode(m)
			if extra := len(b) - envelope - len(tc.text); extra < 0 || extra > tc.slack {
				t.Fatalf("frame %d bytes for a %d-byte text and a %d-byte envelope: %d bytes of escaping, want at most %d",
					len(b), len(tc.text), envelope, extra, tc.slack)
			}
			var back Message
			if err := json.Unmarshal(b, &back); err != nil || back != m {
				t.Fatalf("round trip: %v, got %+v", err, back)
			}
		})
	}
}

// TestEncodeWith: the wrapper sees exactly the JSON (no trailing newline)
// and a pooled buffer is never shared between two results.
func TestEncodeWith(t *testing.T) {
	a := EncodeWith(Pong{Type: TypePong}, func(b []byte) []byte { return append([]byte("<"), b...) })
	b := Encode(ErrorFrame{Type: TypeError, Code: CodeRateLimited, Message: "slow down", RetryAfterMS: 250})
	if string(a) != `<{"type":"pong"}` {
		t.Fatalf("EncodeWith: %q", a)
	}
	if string(b) != `{"type":"error","code":"rate_limited","message":"slow down","retry_after_ms":250}` {
		t.Fatalf("Encode: %q", b)
	}
}
