package actors

import (
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/gobwas/ws"

	"parley/auth"
	"parley/protocol"
	"parley/relay"
)

// Messages to the connection actor.
type (
	connInit struct {
		t        Transport
		sess     *Session
		name     string
		plain    bool
		id       *auth.Identity // authenticated on the upgrade (nil: not)
		needAuth bool           // the first frame must be auth
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
	// readStopped: the session reads no more frames; every frame it read
	// is ahead of this message in the mailbox (Session.stopReading).
	readStopped struct{}
	// flushed: a room answered every op this connection sent it before
	// its opFlush.
	flushed struct{}
	// queryDone: the answer to the connection's history or presence
	// request (the frame to queue: the reply or an error).
	queryDone struct{ frame []byte }
	// dropRoom: the room refused or lost the member; frame explains why.
	// query says the refused op was a history or presence request.
	dropRoom struct {
		room  string
		frame []byte
		query bool
		// err is the refusal as an error, when there is one: the plain
		// mode (which has no error frames) says why in a text line.
		err *protocol.Error
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
	opQuit  // leave without reply (connection stopping)
	opFlush // answer flushed once every earlier op of this connection is answered
)

// roomOp is a connection's request to a room; it travels connection ->
// directory -> room, so a connection's ops reach the room in order.
type roomOp struct {
	kind   opKind
	room   string
	conn   *actor.PID
	out    outbox // the connection's socket: the room replies on it directly
	id     string
	name   string   // join (send: filled in by the room)
	user   string   // join: the authenticated user id (send: filled in by the room)
	sess   *Session // join: the connection's session (its PID and id)
	plain  bool     // join (send: filled in by the room)
	since  *uint64
	epoch  string
	text   string // send
	before uint64 // history
	limit  int    // history
}

// roomEmpty: a room is empty and idle (to the directory).
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
		id    string // the join's id, for its error
		gen   uint64
		since uint64
		epoch string
		res   relay.HistoryResult
		err   error
	}
	// queryRead: a history or presence read for op is done; frame is the
	// reply to queue (the answer, or an error frame). pos is the room's
	// position as the read found it (history only; zero otherwise).
	queryRead struct {
		op    *roomOp
		frame []byte
		pos   relay.Position
	}
	// rolledOver: the answer of Broker.Rollover after a position check
	// found the bus behind the room.
	rolledOver struct {
		pos relay.Position
		err error
	}
	// positionRead: the room's position on the bus, read by the
	// directory's periodic check for every room at once (err: the read
	// failed; the room checks for itself).
	positionRead struct {
		pos relay.Position
		err error
	}
)

// Messages to the directory.
type (
	// checkTick: time for the periodic position check of every room.
	checkTick struct{}
	// checkDone: the position check's read is done (another may start).
	checkDone struct{}
)
