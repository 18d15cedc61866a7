package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gobwas/ws"
)

// target is one node URL the bench dials.
type target struct {
	raw  string
	url  *url.URL
	ipv4 bool // dial over tcp4 and bind a 127.x source address
}

func newTarget(raw string) (target, error) {
	u, err := checkLoopbackURL(raw)
	if err != nil {
		return target{}, err
	}
	ip := net.ParseIP(u.Hostname())
	v4 := strings.EqualFold(u.Hostname(), "localhost") || (ip != nil && ip.To4() != nil)
	return target{raw: raw, url: u, ipv4: v4}, nil
}

// withName returns the target URL with name=NAME added to its query.
func (t target) withName(name string) string {
	u := *t.url
	q := u.Query()
	q.Set("name", name)
	u.RawQuery = q.Encode()
	return u.String()
}

// sourceIP returns the i-th loopback source address: 127.0.0.2 … 127.0.0.(1+n).
func sourceIP(i, n int) net.IP {
	if n < 1 {
		n = 1
	}
	if n > 253 {
		n = 253
	}
	return net.IPv4(127, 0, 0, byte(2+i%n))
}

// dialWS opens one WebSocket connection to t, from source address src (IPv4
// targets only), with the handshake bounded by timeout. It returns the bytes
// that arrived after the handshake response (possibly nil).
func dialWS(t target, name string, src net.IP, timeout time.Duration) (net.Conn, []byte, error) {
	d := ws.Dialer{
		Timeout:        timeout,
		ReadBufferSize: 1024,
		NetDial: func(ctx context.Context, _, addr string) (net.Conn, error) {
			if !t.ipv4 {
				var nd net.Dialer
				return nd.DialContext(ctx, "tcp6", addr)
			}
			nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}}
			return nd.DialContext(ctx, "tcp4", addr)
		},
	}
	nc, br, _, err := d.Dial(context.Background(), t.withName(name))
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s from %s: %w", t.raw, src, err)
	}
	var pre []byte
	if br != nil {
		if n := br.Buffered(); n > 0 {
			pre = make([]byte, n)
			_, _ = io.ReadFull(br, pre)
		}
		ws.PutReader(br)
	}
	return nc, pre, nil
}

// appendClientFrame appends one masked, final client frame to dst.
func appendClientFrame(dst []byte, op ws.OpCode, payload []byte) []byte {
	dst = append(dst, 0x80|byte(op))
	n := len(payload)
	switch {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	var mask [4]byte
	binary.LittleEndian.PutUint32(mask[:], rand.Uint32())
	dst = append(dst, mask[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	ws.Cipher(dst[start:], mask, 0)
	return dst
}

// errFrameTooBig is returned when a server frame exceeds the reader's limit.
var errFrameTooBig = errors.New("frame larger than the read limit")

// maxServerFrame caps a single server frame (and a reassembled message).
const maxServerFrame = 4 << 20

// frameParser assembles server frames from a byte stream without blocking:
// feed it whatever a read returned, and it calls back once per complete
// message (reassembling fragments) or control frame.
type frameParser struct {
	buf  []byte // unconsumed bytes
	frag []byte // payload of a fragmented message so far
	fop  ws.OpCode
}

// frameHandler receives complete messages and control frames. It must not
// keep payload after it returns.
type frameHandler func(op ws.OpCode, payload []byte) error

// feed appends data and calls h for each complete frame.
func (p *frameParser) feed(data []byte, h frameHandler) error {
	p.buf = append(p.buf, data...)
	off := 0
	defer func() {
		// Keep the incomplete tail at the start of the buffer.
		rest := copy(p.buf, p.buf[off:])
		p.buf = p.buf[:rest]
	}()
	for {
		b := p.buf[off:]
		if len(b) < 2 {
			return nil
		}
		fin := b[0]&0x80 != 0
		op := ws.OpCode(b[0] & 0x0f)
		masked := b[1]&0x80 != 0
		hl := 2
		length := uint64(b[1] & 0x7f)
		switch length {
		case 126:
			if len(b) < 4 {
				return nil
			}
			length = uint64(binary.BigEndian.Uint16(b[2:4]))
			hl = 4
		case 127:
			if len(b) < 10 {
				return nil
			}
			length = binary.BigEndian.Uint64(b[2:10])
			hl = 10
		}
		if length > maxServerFrame {
			return fmt.Errorf("server frame of %d bytes: %w", length, errFrameTooBig)
		}
		var mask [4]byte
		if masked {
			if len(b) < hl+4 {
				return nil
			}
			copy(mask[:], b[hl:hl+4])
			hl += 4
		}
		total := hl + int(length)
		if len(b) < total {
			return nil
		}
		payload := b[hl:total]
		if masked {
			ws.Cipher(payload, mask, 0)
		}
		off += total
		if op.IsControl() {
			if err := h(op, payload); err != nil {
				return err
			}
			continue
		}
		if op != ws.OpContinuation && fin && p.frag == nil {
			if err := h(op, payload); err != nil {
				return err
			}
			continue
		}
		if op != ws.OpContinuation {
			p.fop = op
			p.frag = p.frag[:0]
		}
		p.frag = append(p.frag, payload...)
		if len(p.frag) > maxServerFrame {
			return fmt.Errorf("fragmented message of %d bytes: %w", len(p.frag), errFrameTooBig)
		}
		if fin {
			msg := p.frag
			p.frag = nil
			if err := h(p.fop, msg); err != nil {
				return err
			}
		}
	}
}

// Payload format of a bench message: "pb1 SENDER SEQ UNIXNANOS " padded with
// 'x' to the requested size. It contains no character that JSON escapes.
const payloadPrefix = "pb1 "

// appendPayload appends a bench payload of at least size bytes.
func appendPayload(dst []byte, sender int, seq uint64, tsNanos int64, size int) []byte {
	start := len(dst)
	dst = append(dst, payloadPrefix...)
	dst = strconv.AppendInt(dst, int64(sender), 10)
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, tsNanos, 10)
	dst = append(dst, ' ')
	for len(dst)-start < size {
		dst = append(dst, 'x')
	}
	return dst
}

// parsePayload extracts sender, seq and send time from a bench payload.
func parsePayload(p []byte) (sender int, seq uint64, tsNanos int64, ok bool) {
	if len(p) < len(payloadPrefix) || string(p[:len(payloadPrefix)]) != payloadPrefix {
		return 0, 0, 0, false
	}
	p = p[len(payloadPrefix):]
	var fields [3]uint64
	for i := range fields {
		var v uint64
		n := 0
		for n < len(p) && p[n] >= '0' && p[n] <= '9' {
			v = v*10 + uint64(p[n]-'0')
			n++
		}
		if n == 0 || n > 19 || n >= len(p) || p[n] != ' ' {
			return 0, 0, 0, false
		}
		fields[i] = v
		p = p[n+1:]
	}
	return int(fields[0]), fields[1], int64(fields[2]), true
}
