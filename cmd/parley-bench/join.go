package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/gobwas/ws"
)

// joinSpec says how an idle connection joins a room before it counts as
// opened.
type joinSpec struct {
	proto  string // "plain": in lobby once greeted; "json": join, then wait for joined
	rooms  int    // json: connection g joins PREFIX(g mod rooms)
	prefix string
}

// describe names the membership for reports: "lobby", "1 room", "100 rooms".
func (j *joinSpec) describe() string {
	switch {
	case j.proto != "json":
		return "lobby"
	case j.rooms == 1:
		return "1 room"
	default:
		return strconv.Itoa(j.rooms) + " rooms"
	}
}

// room is the room connection g joins (json).
func (j *joinSpec) room(g int) string {
	return j.prefix + strconv.Itoa(g%max(j.rooms, 1))
}

// await sends the join (json) and reads until the membership is in effect:
// the joined frame (json) or the greeting (plain). pre holds bytes read
// with the handshake. It returns the start of a frame read past the join
// and not yet complete, for the holder's frameSkipper.
func (j *joinSpec) await(nc net.Conn, pre []byte, g int, timeout time.Duration) ([]byte, error) {
	_ = nc.SetDeadline(time.Now().Add(timeout))
	defer func() { _ = nc.SetDeadline(time.Time{}) }()
	if j.proto == "json" {
		if _, err := nc.Write(appendClientFrame(nil, ws.OpText, joinFrame(j.room(g)))); err != nil {
			return nil, fmt.Errorf("send join: %w", err)
		}
	}
	in := false
	handle := func(op ws.OpCode, payload []byte) error {
		switch {
		case in:
			return nil // what follows the join is the sweeper's to discard
		case op == ws.OpClose:
			return fmt.Errorf("closed by the node before joining: %s", closeText(payload))
		case op != ws.OpText:
			return nil
		case j.proto != "json":
			in = true
		case frameType(payload) == "joined":
			in = true
		case frameType(payload) == "error":
			return fmt.Errorf("join refused: %s", truncate(payload, 200))
		}
		return nil
	}
	var p frameParser
	if err := p.feed(pre, handle); err != nil {
		return nil, err
	}
	buf := make([]byte, 4096)
	for !in {
		n, err := nc.Read(buf)
		if n > 0 {
			if ferr := p.feed(buf[:n], handle); ferr != nil {
				return nil, ferr
			}
		}
		if err != nil && !in {
			return nil, fmt.Errorf("wait for the join: %w", err)
		}
	}
	return p.buf, nil
}

// closeText renders a close frame's payload: "CODE reason".
func closeText(payload []byte) string {
	if len(payload) < 2 {
		return "no code"
	}
	return fmt.Sprintf("%d %s", binary.BigEndian.Uint16(payload), truncate(payload[2:], 100))
}
