package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// fanClient is one simulated chat client of a fanout or storm run. Its
// reader goroutine alone owns parser, tracker and the counters marked
// reader-owned; writes go through wmu.
type fanClient struct {
	id     int
	node   int // index into targets
	room   int
	sender int // sender index, or -1
	nc     net.Conn
	ready  chan struct{} // closed when joined (json) or greeted (plain)
	rdy    bool          // reader-owned: ready already signalled
	done   chan struct{} // closed when the reader returns

	wmu  sync.Mutex // guards wbuf and writes to nc
	wbuf []byte

	dialAt   time.Time // set before the reader starts
	readyAt  time.Time // reader-owned; read after ready is closed
	tracker  *deliveryTracker
	acks     int64  // reader-owned
	presence int64  // reader-owned: member_joined and member_left frames
	closedBy uint16 // reader-owned: the close code the server sent (0: none)
}

func (c *fanClient) write(op ws.OpCode, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf = appendClientFrame(c.wbuf[:0], op, payload)
	_ = c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.nc.Write(c.wbuf); err != nil {
		return fmt.Errorf("client %d: write: %w", c.id, err)
	}
	return nil
}

func (c *fanClient) markReady(now time.Time) {
	if !c.rdy {
		c.rdy = true
		c.readyAt = now
		close(c.ready)
	}
}

var errPeerClosed = errors.New("server sent close")

// fanReader is the state of one client's reader goroutine between reads.
type fanReader struct {
	c       *fanClient
	st      *fanState
	now     time.Time
	nowNano int64
	lat     []int64 // latencies (µs) of this read's deliveries
	batch   int64   // deliveries of this read
}

// readLoop reads and accounts every frame until the connection ends.
func (c *fanClient) readLoop(st *fanState, pre []byte) {
	defer close(c.done)
	r := &fanReader{c: c, st: st, lat: make([]int64, 0, 64)}
	var (
		p   frameParser
		buf = make([]byte, 8<<10)
		err error
	)
	if len(pre) > 0 {
		r.stamp()
		err = p.feed(pre, r.handle)
		r.flush()
	}
	for err == nil {
		var n int
		n, err = c.nc.Read(buf)
		if n > 0 {
			r.stamp()
			st.lastFrame.Store(r.nowNano)
			if ferr := p.feed(buf[:n], r.handle); ferr != nil {
				err = ferr
			}
			r.flush()
		}
	}
	if !st.closing.Load() {
		st.disconnect.Add(1)
		st.firstErr.set(fmt.Errorf("client %d disconnected: %w", c.id, err))
	}
}

// stamp takes the clock once per read: every frame of a read arrived then.
func (r *fanReader) stamp() {
	r.now = time.Now()
	r.nowNano = r.now.UnixNano()
}

// handle accounts one frame.
func (r *fanReader) handle(op ws.OpCode, payload []byte) error {
	c, st := r.c, r.st
	switch op {
	case ws.OpPing:
		return c.write(ws.OpPong, payload)
	case ws.OpClose:
		if len(payload) >= 2 {
			c.closedBy = binary.BigEndian.Uint16(payload)
		}
		_ = c.write(ws.OpClose, nil)
		return errPeerClosed
	case ws.OpText, ws.OpBinary:
	default:
		return nil
	}
	text := payload
	if st.cfg.proto == "plain" {
		c.markReady(r.now)
	} else {
		switch frameType(payload) {
		case "message":
			text = jsonText(payload)
		case "joined":
			c.markReady(r.now)
			return nil
		case "ack":
			c.acks++
			return nil
		case "member_joined", "member_left":
			c.presence++
			return nil
		case "error":
			st.errFrames.Add(1)
			st.firstErr.set(fmt.Errorf("client %d: error frame: %s", c.id, truncate(payload, 200)))
			return nil
		default:
			return nil
		}
	}
	if !bytes.HasPrefix(text, []byte(payloadPrefix)) {
		return nil // e.g. the plain greeting "connected to node …"
	}
	sender, seq, ts, ok := parsePayload(text)
	if !ok {
		c.tracker.foreign++
		return nil
	}
	if c.tracker.observe(st.localSender(c.room, sender), seq) {
		r.batch++
		r.lat = append(r.lat, (r.nowNano-ts)/1000)
	}
	return nil
}

// flush hands this read's deliveries to the shared counters in one go.
func (r *fanReader) flush() {
	if r.batch == 0 {
		return
	}
	st := r.st
	st.recorders[r.c.node].recordBatch(r.c.id, r.lat)
	st.delivered.Add(r.batch)
	st.lastRecv.Store(r.nowNano)
	if i := st.bucket(r.nowNano); i >= 0 {
		st.recvTL[i].Add(r.batch)
	}
	r.lat = r.lat[:0]
	r.batch = 0
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

var typePrefix = []byte(`{"type":"`)

// frameType returns the "type" of a JSON node frame, fast when type is the
// first field.
func frameType(p []byte) string {
	if bytes.HasPrefix(p, typePrefix) {
		rest := p[len(typePrefix):]
		if i := bytes.IndexByte(rest, '"'); i >= 0 {
			return string(rest[:i])
		}
	}
	var probe struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal(p, &probe)
	return probe.Type
}

var textKey = []byte(`"text":"`)

// jsonText returns the text field of a message frame. Bench payloads need no
// escaping, so the fast path is a byte search; anything else is decoded.
func jsonText(p []byte) []byte {
	if i := bytes.Index(p, textKey); i >= 0 {
		rest := p[i+len(textKey):]
		if j := bytes.IndexByte(rest, '"'); j >= 0 && bytes.IndexByte(rest[:j], '\\') < 0 {
			return rest[:j]
		}
	}
	var m struct {
		Text string `json:"text"`
	}
	if err := json.Unmarshal(p, &m); err != nil {
		return nil
	}
	return []byte(m.Text)
}

// sendLoop writes one message per token until tokens is closed.
func (c *fanClient) sendLoop(st *fanState, tokens <-chan struct{}) {
	var (
		seq  uint64
		pbuf []byte
		mbuf []byte
	)
	size := st.cfg.size
	for range tokens {
		now := time.Now().UnixNano()
		pbuf = appendPayload(pbuf[:0], c.sender, seq, now, size)
		msg := pbuf
		if st.cfg.proto == "json" {
			mbuf = append(mbuf[:0], st.roomFrames[c.room]...)
			mbuf = append(mbuf, pbuf...)
			mbuf = append(mbuf, `","id":"s`...)
			mbuf = strconv.AppendInt(mbuf, int64(c.sender), 10)
			mbuf = append(mbuf, '-')
			mbuf = strconv.AppendUint(mbuf, seq, 10)
			mbuf = append(mbuf, `"}`...)
			msg = mbuf
		}
		seq++
		if err := c.write(ws.OpText, msg); err != nil {
			st.sendErrs.Add(1)
			st.firstErr.set(err)
			continue
		}
		st.sentRoom[c.room].Add(1)
		if i := st.bucket(now); i >= 0 {
			st.sendTL[i].Add(1)
		}
	}
}
