package netpoll

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// referenceParse is a plain whole-buffer parser of a client frame stream,
// written for clarity over speed, using gobwas/ws for the header. It returns
// the events and the close code of the first violation (0 if the stream is
// valid so far; an incomplete tail is not a violation).
func referenceParse(b []byte, maxMsg int) ([]event, ws.StatusCode) {
	var (
		out   []event
		msgOp ws.OpCode
		msg   []byte
	)
	for len(b) > 0 {
		if len(b) < 2 {
			return out, 0
		}
		op := ws.OpCode(b[0] & 0x0f)
		switch {
		case b[0]&0x70 != 0, op.IsReserved(), b[1]&0x80 == 0:
			return out, 1002
		case op.IsControl() && (b[0]&0x80 == 0 || b[1]&0x7f > 125):
			return out, 1002
		}
		r := bytes.NewReader(b)
		h, err := ws.ReadHeader(r)
		if errors.Is(err, ws.ErrHeaderLengthMSB) {
			return out, 1002
		}
		if err != nil {
			return out, 0 // incomplete header
		}
		switch {
		case op == ws.OpClose && h.Length == 1:
			return out, 1002
		case op == ws.OpContinuation && msgOp == 0:
			return out, 1002
		case (op == ws.OpText || op == ws.OpBinary) && msgOp != 0:
			return out, 1002
		case op.IsData() && int64(len(msg))+h.Length > int64(maxMsg):
			return out, 1009
		}
		hlen := len(b) - r.Len()
		if int64(r.Len()) < h.Length {
			return out, 0 // incomplete payload
		}
		payload := append([]byte{}, b[hlen:hlen+int(h.Length)]...)
		ws.Cipher(payload, h.Mask, 0)
		b = b[hlen+int(h.Length):]
		if op.IsControl() {
			if op == ws.OpClose && len(payload) >= 2 {
				code := ws.StatusCode(binary.BigEndian.Uint16(payload))
				if code < 1000 || code >= 5000 || code == 1004 || code == 1005 || code == 1006 || code == 1015 || (code >= 1016 && code <= 2999) {
					return out, 1002
				}
				if !utf8.Valid(payload[2:]) {
					return out, 1007
				}
			}
			out = append(out, event{op: op, payload: payload})
			continue
		}
		if op != ws.OpContinuation {
			msgOp = op
		}
		msg = append(msg, payload...)
		if h.Fin {
			if msgOp == ws.OpText && !utf8.Valid(msg) {
				return out, 1007
			}
			out = append(out, event{op: msgOp, payload: append([]byte{}, msg...)})
			msgOp, msg = 0, nil
		}
	}
	return out, 0
}

// FuzzAssembler checks that the Assembler never panics, never lets a message
// buffer outgrow MaxMessageSize, gives the same result however the input is
// split, and agrees with referenceParse.
func FuzzAssembler(f *testing.F) {
	for _, tc := range assemblerCases {
		if len(tc.input) < 4096 {
			f.Add(uint16(tc.max), uint64(len(tc.input)/2), tc.input)
		}
	}
	f.Fuzz(func(t *testing.T, max16 uint16, splitSeed uint64, input []byte) {
		maxMsg := int(max16)
		if maxMsg == 0 {
			maxMsg = DefaultMaxMessageSize
		}
		want, wantCode := referenceParse(input, maxMsg)

		check := func(how string, a *Assembler, chunks [][]byte) {
			var got []event
			var err error
		outer:
			for _, p := range chunks {
				for len(p) > 0 {
					n, op, payload, e := a.Next(p)
					if n < 0 || n > len(p) {
						t.Fatalf("%s: Next consumed %d of %d", how, n, len(p))
					}
					p = p[n:]
					if cap(a.msg) > maxMsg {
						t.Fatalf("%s: message buffer cap %d over max %d", how, cap(a.msg), maxMsg)
					}
					if e != nil {
						err = e
						break outer
					}
					if op != 0 {
						if op.IsData() && cap(payload) > maxMsg {
							t.Fatalf("%s: payload cap %d over max %d", how, cap(payload), maxMsg)
						}
						got = append(got, event{op: op, payload: payload})
					}
				}
			}
			if code := closeCode(err); code != wantCode || (err != nil && code == 0) {
				t.Fatalf("%s: error %v, reference code %d", how, err, wantCode)
			}
			if len(got) != len(want) {
				t.Fatalf("%s: %d events, reference %d", how, len(got), len(want))
			}
			for i := range got {
				if got[i].op != want[i].op || !bytes.Equal(got[i].payload, want[i].payload) {
					t.Fatalf("%s: event %d differs from the reference", how, i)
				}
			}
		}

		check("whole", &Assembler{MaxMessageSize: int(max16)}, [][]byte{input})
		if len(input) > 0 {
			i := int(splitSeed % uint64(len(input)+1))
			check("split", &Assembler{MaxMessageSize: int(max16)}, [][]byte{input[:i], input[i:]})
		}
		var chunks [][]byte
		s := splitSeed | 1
		for rest := input; len(rest) > 0; {
			s = s*6364136223846793005 + 1442695040888963407
			k := min(len(rest), 1+int(s>>59))
			chunks, rest = append(chunks, rest[:k]), rest[k:]
		}
		check("chunks", &Assembler{MaxMessageSize: int(max16)}, chunks)
	})
}
