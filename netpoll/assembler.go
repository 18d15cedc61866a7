package netpoll

import (
	"encoding/binary"
	"strconv"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// DefaultMaxMessageSize is the data message cap used when a limit is 0.
const DefaultMaxMessageSize = 64 << 10

// maxControlPayload is the largest control frame payload RFC 6455 allows.
const maxControlPayload = 125

// minGrow is the smallest capacity a message buffer grows to when the bytes
// of a frame arrive in pieces.
const minGrow = 512

// CloseError is a WebSocket close code with its reason. The Assembler returns
// it for a frame stream that must be answered by a close frame carrying Code;
// a connection reports it to Handler.HandleClose when the peer closed with an
// unusual code.
type CloseError struct {
	Code   ws.StatusCode
	Reason string
}

// Error implements error.
func (e *CloseError) Error() string {
	return "websocket close " + strconv.Itoa(int(e.Code)) + ": " + e.Reason
}

func protocolError(reason string) *CloseError {
	return &CloseError{Code: ws.StatusProtocolError, Reason: reason}
}

// Assembler is an incremental, non-blocking parser for the frames a
// WebSocket client sends (the server side of RFC 6455). Bytes are pushed in
// with Next in pieces of any size; it never reads from a connection and never
// waits. It unmasks payloads, joins fragmented data messages, and enforces
// MaxMessageSize before allocating, UTF-8 validity of text messages and close
// reasons, and the framing rules of RFC 6455 section 5.
//
// An Assembler is used by one goroutine at a time. The zero value is ready to
// use with the default message cap.
type Assembler struct {
	// MaxMessageSize caps one data message in bytes, fragments summed
	// (0: DefaultMaxMessageSize). A frame whose declared length would take the
	// message over the cap fails with close code 1009 before any allocation.
	MaxMessageSize int

	err error // sticky: once set, Next returns it forever

	msg   []byte  // payload of the open data message, unmasked
	ctl   []byte  // payload of the current control frame, unmasked
	mask  [4]byte // current frame's masking key
	hdr   [ws.MaxHeaderSize]byte
	hn    uint8     // header bytes in hdr while a header is incomplete
	inFrm bool      // a header was parsed; payload bytes are being read
	fin   bool      // current frame's FIN bit
	op    ws.OpCode // current frame's opcode
	msgOp ws.OpCode // opcode of the open data message; 0 when none is open

	remain int64 // payload bytes of the current frame not yet seen
	pos    int   // payload bytes of the current frame seen (mask offset)
}

// Idle reports whether the assembler sits between messages: no partial
// header, no frame in progress, no fragmented message open, no error. An idle
// assembler holds no buffer.
func (a *Assembler) Idle() bool {
	return a.err == nil && !a.inFrm && a.hn == 0 && a.msgOp == 0
}

// Err returns the sticky error, if any.
func (a *Assembler) Err() error { return a.err }

// Reset returns the assembler to its initial state, keeping MaxMessageSize.
func (a *Assembler) Reset() {
	*a = Assembler{MaxMessageSize: a.MaxMessageSize}
}

func (a *Assembler) max() int64 {
	if a.MaxMessageSize <= 0 {
		return DefaultMaxMessageSize
	}
	return int64(a.MaxMessageSize)
}

// Next consumes bytes from p until one complete data message or control frame
// is available or p is exhausted, and returns the number of bytes consumed.
//
// When a data message completes, op is ws.OpText or ws.OpBinary and payload
// is the whole unmasked message (never nil, owned by the caller). When a
// control frame completes, op is ws.OpPing, ws.OpPong or ws.OpClose and
// payload is its unmasked payload (a close payload is already validated: empty,
// or a valid code and a UTF-8 reason). When op is 0 every byte of p was
// consumed and more bytes are needed.
//
// A *CloseError reports a stream that must be closed with its Code; the
// error is sticky and the assembler consumes nothing more.
func (a *Assembler) Next(p []byte) (n int, op ws.OpCode, payload []byte, err error) {
	if a.err != nil {
		return 0, 0, nil, a.err
	}
	for {
		if !a.inFrm {
			if n == len(p) {
				return n, 0, nil, nil
			}
			k, ok, err := a.header(p[n:])
			n += k
			if err != nil {
				a.fail(err)
				return n, 0, nil, err
			}
			if !ok {
				return n, 0, nil, nil
			}
		}
		if a.remain > 0 {
			if n == len(p) {
				return n, 0, nil, nil
			}
			n += a.payload(p[n:])
			if a.remain > 0 {
				return n, 0, nil, nil
			}
		}
		a.inFrm = false
		if a.op.IsControl() {
			op, payload = a.op, a.ctl
			a.ctl = nil
			if payload == nil {
				payload = []byte{}
			}
			if op == ws.OpClose {
				if err := checkClosePayload(payload); err != nil {
					a.fail(err)
					return n, 0, nil, err
				}
			}
			return n, op, payload, nil
		}
		if !a.fin {
			continue
		}
		op, payload = a.msgOp, a.msg
		a.msgOp, a.msg = 0, nil
		if payload == nil {
			payload = []byte{}
		}
		if op == ws.OpText && !utf8.Valid(payload) {
			err := &CloseError{Code: ws.StatusInvalidFramePayloadData, Reason: "invalid UTF-8 in text message"}
			a.fail(err)
			return n, 0, nil, err
		}
		return n, op, payload, nil
	}
}

func (a *Assembler) fail(err error) {
	a.err = err
	a.msg, a.ctl = nil, nil
}

// header consumes header bytes from p. ok reports that a whole header was
// parsed and validated; the frame's payload comes next.
func (a *Assembler) header(p []byte) (n int, ok bool, err error) {
	need := 2
	if a.hn >= 2 {
		need = headerSize(a.hdr[1])
	}
	for {
		k := copy(a.hdr[a.hn:need], p[n:])
		a.hn += uint8(k)
		n += k
		if int(a.hn) < need {
			return n, false, nil
		}
		if need > 2 {
			break
		}
		if err := a.checkFirstBytes(); err != nil {
			return n, false, err
		}
		need = headerSize(a.hdr[1])
	}

	b := a.hdr[:a.hn]
	a.hn = 0
	var length int64
	switch l := b[1] & 0x7f; l {
	case 126:
		length = int64(binary.BigEndian.Uint16(b[2:4]))
		b = b[4:]
	case 127:
		if b[2]&0x80 != 0 {
			return n, false, protocolError("64-bit payload length with the most significant bit set")
		}
		length = int64(binary.BigEndian.Uint64(b[2:10]))
		b = b[10:]
	default:
		length = int64(l)
		b = b[2:]
	}
	copy(a.mask[:], b)

	op := ws.OpCode(a.hdr[0] & 0x0f)
	fin := a.hdr[0]&0x80 != 0
	switch {
	case op == ws.OpClose && length == 1:
		return n, false, protocolError("close frame with a 1-byte payload")
	case op == ws.OpContinuation && a.msgOp == 0:
		return n, false, protocolError("continuation frame without a started message")
	case op.IsData() && op != ws.OpContinuation && a.msgOp != 0:
		return n, false, protocolError("new data frame while a fragmented message is open")
	}
	if op.IsData() {
		if int64(len(a.msg))+length > a.max() {
			return n, false, &CloseError{Code: ws.StatusMessageTooBig, Reason: "message too big"}
		}
		if op != ws.OpContinuation {
			a.msgOp = op
		}
	} else if length > 0 {
		a.ctl = make([]byte, 0, length)
	}
	a.op, a.fin = op, fin
	a.remain, a.pos = length, 0
	a.inFrm = true
	return n, true, nil
}

// checkFirstBytes validates what the first two header bytes alone decide.
func (a *Assembler) checkFirstBytes() error {
	b0, b1 := a.hdr[0], a.hdr[1]
	op := ws.OpCode(b0 & 0x0f)
	switch {
	case b0&0x70 != 0:
		return protocolError("reserved bits set")
	case op.IsReserved():
		return protocolError("reserved opcode " + strconv.Itoa(int(op)))
	case b1&0x80 == 0:
		return protocolError("unmasked client frame")
	case op.IsControl() && b0&0x80 == 0:
		return protocolError("fragmented control frame")
	case op.IsControl() && b1&0x7f > maxControlPayload:
		return protocolError("control frame payload over 125 bytes")
	}
	return nil
}

// headerSize returns the whole header length announced by the second header
// byte of a masked frame.
func headerSize(b1 byte) int {
	switch b1 & 0x7f {
	case 126:
		return 2 + 2 + 4
	case 127:
		return 2 + 8 + 4
	default:
		return 2 + 4
	}
}

// payload copies and unmasks as much of the current frame's payload as p
// holds and returns the bytes consumed.
func (a *Assembler) payload(p []byte) int {
	k := len(p)
	if int64(k) > a.remain {
		k = int(a.remain)
	}
	var dst []byte
	if a.op.IsControl() {
		start := len(a.ctl)
		a.ctl = append(a.ctl, p[:k]...)
		dst = a.ctl[start:]
	} else {
		start := len(a.msg)
		a.grow(k)
		a.msg = append(a.msg, p[:k]...)
		dst = a.msg[start:]
	}
	ws.Cipher(dst, a.mask, a.pos)
	a.pos += k
	a.remain -= int64(k)
	return k
}

// grow makes room for k more message bytes. Capacity grows geometrically
// with the bytes that actually arrived (never with a declared length alone)
// and never beyond MaxMessageSize; in a final frame it stops at the frame's
// declared end, so a message that arrives whole gets an exact allocation.
// Geometric growth keeps the copying linear however small the fragments.
func (a *Assembler) grow(k int) {
	need := len(a.msg) + k
	if need <= cap(a.msg) {
		return
	}
	limit := int(a.max())
	if a.fin {
		limit = len(a.msg) + int(a.remain) // the message ends with this frame
	}
	c := max(2*cap(a.msg), minGrow, need)
	c = min(c, limit)
	m := make([]byte, len(a.msg), c)
	copy(m, a.msg)
	a.msg = m
}

// checkClosePayload validates a close frame payload: empty, or a code valid
// on the wire followed by a UTF-8 reason.
func checkClosePayload(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	code := ws.StatusCode(binary.BigEndian.Uint16(p))
	if !validCloseCode(code) {
		return protocolError("invalid close code " + strconv.Itoa(int(code)))
	}
	if !utf8.Valid(p[2:]) {
		return &CloseError{Code: ws.StatusInvalidFramePayloadData, Reason: "invalid UTF-8 in close reason"}
	}
	return nil
}

// validCloseCode reports whether code may appear in a close frame.
func validCloseCode(code ws.StatusCode) bool {
	switch {
	case code < 1000, code >= 5000:
		return false
	case code == 1004, code == 1005, code == 1006, code == 1015:
		return false
	case code >= 1016 && code <= 2999:
		return false
	}
	return true
}

// parseClosePayload splits a validated close payload. An empty payload gives
// ws.StatusNoStatusRcvd.
func parseClosePayload(p []byte) (ws.StatusCode, string) {
	if len(p) < 2 {
		return ws.StatusNoStatusRcvd, ""
	}
	return ws.StatusCode(binary.BigEndian.Uint16(p)), string(p[2:])
}
