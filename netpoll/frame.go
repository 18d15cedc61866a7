package netpoll

import (
	"errors"

	"github.com/gobwas/ws"
)

// ErrQueueFull is returned by Conn.Enqueue when the connection's outbound
// queue is over its byte or frame cap: the peer is a slow consumer.
var ErrQueueFull = errors.New("netpoll: outbound queue full")

// ErrClosed is returned by operations on a closed (or closing) connection.
var ErrClosed = errors.New("netpoll: connection closed")

// AppendFrame appends one complete, unmasked, final server frame of opcode
// op carrying payload to dst and returns the extended slice. Fan-out builds a
// frame once with it and hands the same bytes to every connection.
func AppendFrame(dst []byte, op ws.OpCode, payload []byte) []byte {
	h := ws.Header{Fin: true, OpCode: op, Length: int64(len(payload))}
	var hb [ws.MaxHeaderSize]byte
	n := headerLen(h.Length)
	writeHeader(hb[:n], h)
	dst = append(dst, hb[:n]...)
	return append(dst, payload...)
}

// TextFrame returns a new final text frame carrying payload.
func TextFrame(payload []byte) []byte {
	return AppendFrame(make([]byte, 0, headerLen(int64(len(payload)))+len(payload)), ws.OpText, payload)
}

func headerLen(length int64) int {
	switch {
	case length <= 125:
		return 2
	case length <= 0xffff:
		return 4
	default:
		return 10
	}
}

// writeHeader writes the unmasked header h into b, which is exactly
// headerLen(h.Length) bytes long.
func writeHeader(b []byte, h ws.Header) {
	b[0] = byte(h.OpCode)
	if h.Fin {
		b[0] |= 0x80
	}
	switch len(b) {
	case 2:
		b[1] = byte(h.Length)
	case 4:
		b[1] = 126
		b[2] = byte(h.Length >> 8)
		b[3] = byte(h.Length)
	default:
		b[1] = 127
		for i := 0; i < 8; i++ {
			b[9-i] = byte(h.Length >> (8 * i))
		}
	}
}
