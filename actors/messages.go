package actors

import (
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/gobwas/ws"

	"parley/relay"
)

// Messages to the connection actor.
type (
	connInit struct {
		t     Transport
		sess  *Session
		name  string
		plain bool
	}
	inbound struct {
		op      ws.OpCode
		payload []byte
	}
	closed struct{ err error }
	drain  struct {
		reason string
		after  time.Duration
	}
	// dropRoom: the room refused or lost the member; frame explains why.
	dropRoom struct {
		room  string
		frame []byte
	}
)

// opKind is the kind of a roomOp.
type opKind uint8

const (
	opJoin opKind = iota
	opLeave
	opSend
	opHistory
	opPresence
	opQuit // leave without reply (connection stopping)
)

// roomOp is a connection's request to a room; it travels connection ->
// directory -> room, so a connection's ops reach the room in order.
type roomOp struct {
	kind    opKind
	room    string
	conn    *actor.PID
	t       Transport // the connection's socket: the room replies on it directly
	id      string
	name    string // join
	session string // join
	plain   bool   // join
	since   *uint64
	epoch   string
	text    string // send
	before  uint64 // history
	limit   int    // history
}

// Messages to the directory.
type roomEmpty struct {
	room  string
	pid   *actor.PID
	joins uint64 // joins the room has seen
}

// Messages a room sends itself (results of broker calls).
type (
	publishDone struct {
		batch   []*roomOp
		results []pubResult
	}
	pubResult struct {
		pos relay.Position
		err error
	}
	presenceDone struct{}
	fetchDone    struct {
		res       relay.HistoryResult
		truncated bool
		err       error
	}
	replayDone struct {
		conn  *actor.PID
		gen   uint64
		since uint64
		epoch string
		res   relay.HistoryResult
		err   error
	}
	checkTick struct{}
)
