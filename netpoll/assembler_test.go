package netpoll

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/gobwas/ws"
)

// event is one thing an Assembler produced.
type event struct {
	op      ws.OpCode
	payload []byte
}

var (
	maskZero = [4]byte{}
	maskOnes = [4]byte{0xff, 0xff, 0xff, 0xff}
	maskA    = [4]byte{0x37, 0xfa, 0x21, 0x3d}
	maskB    = [4]byte{0x01, 0x02, 0x03, 0x04}
)

// clientFrame builds a masked client frame.
func clientFrame(fin bool, op ws.OpCode, payload []byte, mask [4]byte) []byte {
	return rawFrame(fin, 0, op, true, payload, mask, -1)
}

// rawFrame builds any frame. lenForm forces the length encoding: 7, 16 or 64
// (-1: minimal).
func rawFrame(fin bool, rsv byte, op ws.OpCode, masked bool, payload []byte, mask [4]byte, lenForm int) []byte {
	var b []byte
	b0 := byte(op) | rsv<<4
	if fin {
		b0 |= 0x80
	}
	b = append(b, b0)
	var mbit byte
	if masked {
		mbit = 0x80
	}
	n := len(payload)
	if lenForm < 0 {
		switch {
		case n <= 125:
			lenForm = 7
		case n <= 0xffff:
			lenForm = 16
		default:
			lenForm = 64
		}
	}
	switch lenForm {
	case 7:
		b = append(b, mbit|byte(n))
	case 16:
		b = append(b, mbit|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, mbit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if masked {
		b = append(b, mask[:]...)
		start := len(b)
		b = append(b, payload...)
		ws.Cipher(b[start:], mask, 0)
	} else {
		b = append(b, payload...)
	}
	return b
}

// header builds a masked header alone, declaring length.
func header(fin bool, op ws.OpCode, length uint64) []byte {
	b0 := byte(op)
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0, 0x80 | 127}
	b = binary.BigEndian.AppendUint64(b, length)
	return append(b, maskA[:]...)
}

func closeBody(code ws.StatusCode, reason string) []byte {
	return ws.NewCloseFrameBody(code, reason)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func ev(op ws.OpCode, s string) event { return event{op: op, payload: []byte(s)} }

// assemblerCase is shared by the split tests, the TCP tests and the fuzz seeds.
type assemblerCase struct {
	name   string
	max    int
	input  []byte
	want   []event
	code   ws.StatusCode // expected close code of the error, 0: none
	onlyUT bool          // not usable over TCP (needs more bytes, or a tiny max)
}

var bigPayload = bytes.Repeat([]byte("0123456789abcdef"), 70000/16)

var assemblerCases = []assemblerCase{
	{
		name:  "small text",
		input: clientFrame(true, ws.OpText, []byte("hello"), maskA),
		want:  []event{ev(ws.OpText, "hello")},
	},
	{
		name:  "empty text",
		input: clientFrame(true, ws.OpText, nil, maskA),
		want:  []event{ev(ws.OpText, "")},
	},
	{
		name:  "binary zero mask",
		input: clientFrame(true, ws.OpBinary, []byte{0, 1, 2, 0xff}, maskZero),
		want:  []event{{op: ws.OpBinary, payload: []byte{0, 1, 2, 0xff}}},
	},
	{
		name:  "text all-ones mask",
		input: clientFrame(true, ws.OpText, []byte("masked with ff"), maskOnes),
		want:  []event{ev(ws.OpText, "masked with ff")},
	},
	{
		name:  "125 bytes",
		input: clientFrame(true, ws.OpText, bytes.Repeat([]byte("a"), 125), maskB),
		want:  []event{ev(ws.OpText, string(bytes.Repeat([]byte("a"), 125)))},
	},
	{
		name:  "126 bytes 16-bit length",
		input: clientFrame(true, ws.OpText, bytes.Repeat([]byte("b"), 126), maskA),
		want:  []event{ev(ws.OpText, string(bytes.Repeat([]byte("b"), 126)))},
	},
	{
		name:  "300 bytes 64-bit length form",
		input: rawFrame(true, 0, ws.OpBinary, true, bytes.Repeat([]byte{7}, 300), maskB, 64),
		want:  []event{{op: ws.OpBinary, payload: bytes.Repeat([]byte{7}, 300)}},
	},
	{
		name:  "70000 bytes 64-bit length",
		max:   1 << 17,
		input: clientFrame(true, ws.OpBinary, bigPayload, maskA),
		want:  []event{{op: ws.OpBinary, payload: bigPayload}},
	},
	{
		name: "two messages",
		input: cat(
			clientFrame(true, ws.OpText, []byte("one"), maskA),
			clientFrame(true, ws.OpBinary, []byte("two"), maskB),
		),
		want: []event{ev(ws.OpText, "one"), ev(ws.OpBinary, "two")},
	},
	{
		name: "fragmented text with interleaved ping",
		input: cat(
			clientFrame(false, ws.OpText, []byte("hel"), maskA),
			clientFrame(true, ws.OpPing, []byte("p"), maskB),
			clientFrame(true, ws.OpContinuation, []byte("lo"), maskB),
		),
		want: []event{ev(ws.OpPing, "p"), ev(ws.OpText, "hello")},
	},
	{
		name: "fragmented binary with empty middle",
		input: cat(
			clientFrame(false, ws.OpBinary, []byte("ab"), maskA),
			clientFrame(false, ws.OpContinuation, nil, maskB),
			clientFrame(true, ws.OpContinuation, []byte("cd"), maskOnes),
		),
		want: []event{ev(ws.OpBinary, "abcd")},
	},
	{
		name: "utf-8 rune split across fragments",
		input: cat(
			clientFrame(false, ws.OpText, []byte("\xe2\x82"), maskA),
			clientFrame(true, ws.OpContinuation, []byte("\xac"), maskB),
		),
		want: []event{ev(ws.OpText, "€")},
	},
	{
		name:  "ping and pong",
		input: cat(clientFrame(true, ws.OpPing, nil, maskA), clientFrame(true, ws.OpPong, []byte("x"), maskB)),
		want:  []event{ev(ws.OpPing, ""), ev(ws.OpPong, "x")},
	},
	{
		name:  "close with code",
		input: clientFrame(true, ws.OpClose, closeBody(1000, "bye"), maskA),
		want:  []event{{op: ws.OpClose, payload: closeBody(1000, "bye")}},
	},
	{
		name:  "close without code",
		input: clientFrame(true, ws.OpClose, nil, maskA),
		want:  []event{ev(ws.OpClose, "")},
	},
	{
		name:  "close 1012 (IANA) accepted",
		input: clientFrame(true, ws.OpClose, closeBody(1012, ""), maskA),
		want:  []event{{op: ws.OpClose, payload: closeBody(1012, "")}},
	},
	{
		name:  "close 3000 accepted",
		input: clientFrame(true, ws.OpClose, closeBody(3000, ""), maskA),
		want:  []event{{op: ws.OpClose, payload: closeBody(3000, "")}},
	},
	{
		name:  "close 4999 accepted",
		input: clientFrame(true, ws.OpClose, closeBody(4999, "x"), maskA),
		want:  []event{{op: ws.OpClose, payload: closeBody(4999, "x")}},
	},
	{
		name:  "message at exactly max",
		max:   10,
		input: clientFrame(true, ws.OpBinary, bytes.Repeat([]byte{1}, 10), maskA),
		want:  []event{{op: ws.OpBinary, payload: bytes.Repeat([]byte{1}, 10)}},
	},

	// Errors.
	{name: "rsv1 set", input: rawFrame(true, 4, ws.OpText, true, []byte("x"), maskA, -1), code: 1002},
	{name: "rsv3 set", input: rawFrame(true, 1, ws.OpText, true, []byte("x"), maskA, -1), code: 1002},
	{name: "opcode 3", input: rawFrame(true, 0, 3, true, nil, maskA, -1), code: 1002},
	{name: "opcode 7", input: rawFrame(true, 0, 7, true, nil, maskA, -1), code: 1002},
	{name: "opcode 0xB", input: rawFrame(true, 0, 0xb, true, nil, maskA, -1), code: 1002},
	{name: "opcode 0xF", input: rawFrame(true, 0, 0xf, true, nil, maskA, -1), code: 1002},
	{name: "unmasked", input: rawFrame(true, 0, ws.OpText, false, []byte("x"), maskA, -1), code: 1002},
	{name: "fragmented ping", input: clientFrame(false, ws.OpPing, nil, maskA), code: 1002},
	{name: "ping over 125", input: clientFrame(true, ws.OpPing, bytes.Repeat([]byte("p"), 126), maskA), code: 1002},
	{name: "close over 125", input: clientFrame(true, ws.OpClose, append(closeBody(1000, ""), bytes.Repeat([]byte("r"), 124)...), maskA), code: 1002},
	{name: "continuation without start", input: clientFrame(true, ws.OpContinuation, []byte("x"), maskA), code: 1002},
	{
		name: "text while fragmented open",
		input: cat(
			clientFrame(false, ws.OpText, []byte("a"), maskA),
			clientFrame(true, ws.OpText, []byte("b"), maskA),
		),
		code: 1002,
	},
	{name: "close 1-byte payload", input: clientFrame(true, ws.OpClose, []byte{3}, maskA), code: 1002},
	{name: "close 999", input: clientFrame(true, ws.OpClose, closeBody(999, ""), maskA), code: 1002},
	{name: "close 1004", input: clientFrame(true, ws.OpClose, closeBody(1004, ""), maskA), code: 1002},
	{name: "close 1005", input: clientFrame(true, ws.OpClose, closeBody(1005, ""), maskA), code: 1002},
	{name: "close 1006", input: clientFrame(true, ws.OpClose, closeBody(1006, ""), maskA), code: 1002},
	{name: "close 1015", input: clientFrame(true, ws.OpClose, closeBody(1015, ""), maskA), code: 1002},
	{name: "close 1016", input: clientFrame(true, ws.OpClose, closeBody(1016, ""), maskA), code: 1002},
	{name: "close 2999", input: clientFrame(true, ws.OpClose, closeBody(2999, ""), maskA), code: 1002},
	{name: "close 5000", input: clientFrame(true, ws.OpClose, closeBody(5000, ""), maskA), code: 1002},
	{name: "close reason bad utf-8", input: clientFrame(true, ws.OpClose, closeBody(1000, "\xff\xfe"), maskA), code: 1007},
	{name: "text bad utf-8", input: clientFrame(true, ws.OpText, []byte("ok\xc3\x28"), maskB), code: 1007},
	{
		name: "fragmented text bad utf-8",
		input: cat(
			clientFrame(false, ws.OpText, []byte("ok"), maskA),
			clientFrame(true, ws.OpContinuation, []byte{0xed, 0xa0, 0x80}, maskB),
		),
		code: 1007,
	},
	{name: "declared length over max", input: header(true, ws.OpBinary, DefaultMaxMessageSize+1), code: 1009},
	{name: "declared length 2^62", input: header(true, ws.OpBinary, 1<<62), code: 1009},
	{
		name: "fragments over max",
		max:  10,
		input: cat(
			clientFrame(false, ws.OpText, []byte("123456"), maskA),
			clientFrame(true, ws.OpContinuation, []byte("78901"), maskA),
		),
		code:   1009,
		onlyUT: true,
	},
	{name: "64-bit length msb set", input: header(true, ws.OpBinary, 1<<63), code: 1002},
	{
		name: "message then error",
		input: cat(
			clientFrame(true, ws.OpText, []byte("fine"), maskA),
			rawFrame(true, 0, ws.OpText, false, []byte("x"), maskA, -1),
		),
		want: []event{ev(ws.OpText, "fine")},
		code: 1002,
	},
	{
		name:   "incomplete frame waits",
		input:  clientFrame(true, ws.OpText, []byte("hello"), maskA)[:8],
		onlyUT: true,
	},
}

// feed pushes chunks through a and collects events until an error.
func feed(a *Assembler, chunks ...[]byte) ([]event, error) {
	var out []event
	for _, p := range chunks {
		for len(p) > 0 {
			n, op, payload, err := a.Next(p)
			p = p[n:]
			if err != nil {
				return out, err
			}
			if op != 0 {
				out = append(out, event{op: op, payload: payload})
			} else if len(p) != 0 {
				return out, fmt.Errorf("Next returned no event with %d bytes left", len(p))
			}
		}
	}
	return out, nil
}

func closeCode(err error) ws.StatusCode {
	var ce *CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return 0
}

func checkResult(t *testing.T, how string, tc assemblerCase, got []event, err error) {
	t.Helper()
	if code := closeCode(err); code != tc.code || (err != nil && code == 0) {
		t.Fatalf("%s: error %v (code %d), want code %d", how, err, code, tc.code)
	}
	if len(got) != len(tc.want) {
		t.Fatalf("%s: got %d events, want %d", how, len(got), len(tc.want))
	}
	for i := range got {
		if got[i].op != tc.want[i].op || !bytes.Equal(got[i].payload, tc.want[i].payload) {
			t.Fatalf("%s: event %d = op %d %q, want op %d %q",
				how, i, got[i].op, trim(got[i].payload), tc.want[i].op, trim(tc.want[i].payload))
		}
		if got[i].payload == nil {
			t.Fatalf("%s: event %d has a nil payload", how, i)
		}
		limit := tc.max
		if limit == 0 {
			limit = DefaultMaxMessageSize
		}
		if got[i].op.IsData() && cap(got[i].payload) > limit {
			t.Fatalf("%s: payload cap %d over the message cap", how, cap(got[i].payload))
		}
	}
}

func trim(b []byte) []byte {
	if len(b) > 32 {
		return b[:32]
	}
	return b
}

// splitPoints returns every boundary for small inputs, a spread for big ones.
func splitPoints(n int) []int {
	if n <= 4096 {
		pts := make([]int, n+1)
		for i := range pts {
			pts[i] = i
		}
		return pts
	}
	var pts []int
	for i := 0; i <= 20; i++ {
		pts = append(pts, i, n-i)
	}
	for i := 21; i < n; i += 997 {
		pts = append(pts, i)
	}
	return pts
}

func TestAssemblerSplits(t *testing.T) {
	for _, tc := range assemblerCases {
		t.Run(tc.name, func(t *testing.T) {
			a := &Assembler{MaxMessageSize: tc.max}
			got, err := feed(a, tc.input)
			checkResult(t, "whole", tc, got, err)

			for _, i := range splitPoints(len(tc.input)) {
				a := &Assembler{MaxMessageSize: tc.max}
				got, err := feed(a, tc.input[:i], tc.input[i:])
				checkResult(t, fmt.Sprintf("split at %d", i), tc, got, err)
			}

			if len(tc.input) <= 1<<16 {
				a = &Assembler{MaxMessageSize: tc.max}
				chunks := make([][]byte, len(tc.input))
				for i := range tc.input {
					chunks[i] = tc.input[i : i+1]
				}
				got, err = feed(a, chunks...)
				checkResult(t, "byte by byte", tc, got, err)
			}

			rng := rand.New(rand.NewPCG(1, uint64(len(tc.input))))
			for range 20 {
				a := &Assembler{MaxMessageSize: tc.max}
				var chunks [][]byte
				for rest := tc.input; len(rest) > 0; {
					k := min(len(rest), 1+rng.IntN(40))
					chunks, rest = append(chunks, rest[:k]), rest[k:]
				}
				got, err := feed(a, chunks...)
				checkResult(t, "random chunks", tc, got, err)
			}
		})
	}
}

func TestAssemblerStickyErrorAndIdle(t *testing.T) {
	a := &Assembler{}
	if !a.Idle() {
		t.Fatal("new assembler not idle")
	}
	frame := clientFrame(true, ws.OpText, []byte("hello"), maskA)
	if _, err := feed(a, frame[:4]); err != nil {
		t.Fatal(err)
	}
	if a.Idle() {
		t.Fatal("idle with a partial header")
	}
	if _, err := feed(a, frame[4:]); err != nil {
		t.Fatal(err)
	}
	if !a.Idle() || a.msg != nil || a.ctl != nil {
		t.Fatal("not idle (or holding a buffer) after a whole message")
	}
	_, err := feed(a, rawFrame(true, 0, ws.OpText, false, nil, maskA, -1))
	if closeCode(err) != ws.StatusProtocolError {
		t.Fatalf("err %v, want 1002", err)
	}
	n, op, _, err2 := a.Next(frame)
	if n != 0 || op != 0 || err2 != err {
		t.Fatalf("after error: n=%d op=%d err=%v, want the sticky error", n, op, err2)
	}
}

// TestAssemblerNoAllocOnDeclaredLength checks that an oversized or trickling
// frame allocates nothing for its declared length.
func TestAssemblerNoAllocOnDeclaredLength(t *testing.T) {
	tests := []struct {
		name  string
		input []byte
		max   int // bytes that may be allocated at most
	}{
		{
			name:  "over max",
			input: header(true, ws.OpBinary, 1<<40),
			max:   0,
		},
		{
			name:  "max-sized header with 10 bytes",
			input: append(header(true, ws.OpBinary, DefaultMaxMessageSize), make([]byte, 10)...),
			max:   minGrow,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := &Assembler{}
			_, _ = feed(a, tc.input)
			if cap(a.msg) > tc.max {
				t.Fatalf("message buffer cap %d, want <= %d", cap(a.msg), tc.max)
			}
		})
	}
}

// TestAssemblerFragmentGrowthIsGeometric guards against quadratic copying
// when a message comes in many tiny fragments.
func TestAssemblerFragmentGrowthIsGeometric(t *testing.T) {
	const fragments = 4096
	stream := clientFrame(false, ws.OpBinary, []byte{1}, maskA)
	for range fragments - 2 {
		stream = append(stream, clientFrame(false, ws.OpContinuation, []byte{1}, maskA)...)
	}
	stream = append(stream, clientFrame(true, ws.OpContinuation, []byte{1}, maskA)...)
	a := &Assembler{}
	allocs := testing.AllocsPerRun(5, func() {
		got, err := feed(a, stream)
		if err != nil || len(got) != 1 || len(got[0].payload) != fragments {
			t.Fatalf("got %d events, err %v", len(got), err)
		}
	})
	if allocs > 12 { // a handful of doublings plus feed's own slice
		t.Fatalf("%v allocations for one %d-fragment message", allocs, fragments)
	}
}

// drain feeds chunks to a, discarding events, for benchmarks.
func drain(b *testing.B, a *Assembler, chunks ...[]byte) {
	for _, p := range chunks {
		for len(p) > 0 {
			n, _, _, err := a.Next(p)
			if err != nil {
				b.Fatal(err)
			}
			p = p[n:]
		}
	}
}

func BenchmarkAssembler(b *testing.B) {
	for _, size := range []int{16, 128, 1024, 16 << 10} {
		payload := bytes.Repeat([]byte("x"), size)
		var stream []byte
		for range 8 {
			stream = append(stream, clientFrame(true, ws.OpText, payload, maskA)...)
		}
		b.Run(fmt.Sprintf("text-%d-x8", size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(stream)))
			a := &Assembler{}
			for b.Loop() {
				drain(b, a, stream)
			}
		})
	}
	b.Run("fragmented-64x16", func(b *testing.B) {
		part := bytes.Repeat([]byte("y"), 16)
		stream := clientFrame(false, ws.OpBinary, part, maskA)
		for range 62 {
			stream = append(stream, clientFrame(false, ws.OpContinuation, part, maskA)...)
		}
		stream = append(stream, clientFrame(true, ws.OpContinuation, part, maskA)...)
		b.ReportAllocs()
		b.SetBytes(int64(len(stream)))
		a := &Assembler{}
		for b.Loop() {
			drain(b, a, stream[:100], stream[100:])
		}
	})
}
