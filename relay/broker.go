package relay

import (
	"context"
	"errors"
	"strconv"
	"time"
)

// Message is one chat message as the bus carries it.
type Message struct {
	Room  string
	Seq   uint64 // assigned by the broker: 1, 2, 3, … within one Epoch
	Epoch string // changes when the room's history is lost; Seq restarts with it
	From  string // sender's display name
	Node  string // id of the node the sender is connected to
	Text  string
	ID    string // the sender's client-side id (may be empty): its idempotency key
	TS    int64  // unix milliseconds, set by the publishing node
	User  string // the sender's authenticated user id (empty without auth)
}

// IdemKey is the idempotency key of m within its room: the sender's identity
// (User if set, else From) and ID, encoded so that no two different pairs
// give the same key. It is "" when ID is empty: such a message has no key
// and is never recognised as a repeat. Both brokers key their idempotency
// records by (room, IdemKey).
func (m Message) IdemKey() string {
	if m.ID == "" {
		return ""
	}
	kind, who := "n", m.From
	if m.User != "" {
		kind, who = "u", m.User
	}
	return kind + strconv.Itoa(len(who)) + ":" + who + m.ID
}

// Position is where a room's sequence stands, or where one published
// message landed.
type Position struct {
	Seq   uint64 // the last assigned seq (0: nothing published in this epoch)
	Epoch string // "" only from History of a room the bus holds nothing of
	// Repeat is set by Publish/PublishBatch for a message whose IdemKey was
	// already published in the room within the idempotency window, in the
	// room's current epoch: Seq and Epoch are the original's and nothing was
	// published again.
	Repeat bool
}

// HistoryRequest selects messages from a room's history.
type HistoryRequest struct {
	// Since: only messages with seq > Since (0: from the oldest kept).
	Since uint64
	// Before: only messages with seq < Before (0: no upper bound).
	Before uint64
	// Limit caps the result (0: the broker's window). With Before set the
	// newest Limit messages below Before are returned; otherwise the oldest
	// Limit messages above Since.
	Limit int
}

// HistoryResult is a slice of history plus the room's current position.
type HistoryResult struct {
	Messages []Message // ascending seq
	Position Position  // the room's position when the history was read
	// Earliest is the lowest seq still kept (0 if none is kept). A reader
	// resuming after seq S missed nothing iff Position.Epoch matches its
	// epoch and (Earliest == 0 && Position.Seq == S || Earliest <= S+1).
	Earliest uint64
}

// Member is one entry of a room's presence.
type Member struct {
	Session string // unique per connection, cluster-wide
	Name    string
	Node    string
}

// PresenceEvent says a member joined or left a room, somewhere in the cluster.
type PresenceEvent struct {
	Room   string
	Member Member
	Joined bool // true: member_joined; false: member_left
}

// Handler receives what the broker delivers. The broker calls it from its own
// goroutines; implementations must not block (the relay actor's handler only
// posts messages to the actor's mailbox).
type Handler interface {
	// HandleMessage delivers a message published to a subscribed room. Order
	// follows seq within an epoch while the subscription is healthy; after a
	// reconnect there may be gaps or duplicates, which the relay fixes.
	HandleMessage(m Message)
	// HandlePresence delivers a presence change of a subscribed room.
	HandlePresence(e PresenceEvent)
	// HandleResync says the subscription was (re)established after an
	// interruption: messages may have been missed, every room must check its
	// position against history.
	HandleResync()
	// HandleState reports the bus going down (err != nil) or up (err == nil);
	// called once per transition.
	HandleState(err error)
}

// Broker is the bus between nodes: it sequences each room's messages, keeps
// a bounded history, fans messages out to every node subscribed to the room,
// and tracks presence. The memory broker (NewMemory) is the embedded default
// and the fake for unit tests; the Redis broker is the cluster bus. Both keep
// the same semantics. All methods are safe for concurrent use.
type Broker interface {
	// SetHandler sets the one handler deliveries go to. Call it before
	// Subscribe.
	SetHandler(h Handler)

	// Publish is PublishBatch(ctx, m.Room, Position{}, []Message{m}).
	Publish(ctx context.Context, m Message) (Position, error)

	// PublishBatch publishes msgs (all of room; their Room, Seq and Epoch
	// fields are ignored) in order, all or none, in one round trip. Each
	// message gets the room's next seq, is appended to history and is
	// delivered to every subscriber of the room, atomically: when
	// PublishBatch returns nil every message is in history and will reach
	// every subscriber. On error nothing was published, or — after a
	// timeout, or a replica wait that fell short — it is unknown; the error
	// wraps ErrUnavailable either way, and a retry with the same IDs is safe.
	//
	// Idempotency: a message whose IdemKey was published in room within the
	// idempotency window, in the room's current epoch, is not published
	// again; its Position is the original's with Repeat set. A key whose
	// epoch is gone is published anew.
	//
	// known is the room's position as the caller last delivered it (zero:
	// none). If the bus holds room in known.Epoch with a seq below
	// known.Seq, the bus lost writes (failover, restore): it starts a new
	// epoch before sequencing, so no seq of an epoch is ever reused.
	PublishBatch(ctx context.Context, room string, known Position, msgs []Message) ([]Position, error)

	// Rollover applies PublishBatch's rollback check alone: if the bus holds
	// room in known.Epoch with a seq below known.Seq, or holds nothing of
	// room, it starts a new epoch. It returns the room's position after the
	// check. Callers use it when a position check (History) shows a seq
	// below what they delivered in the same epoch, or no epoch at all.
	Rollover(ctx context.Context, room string, known Position) (Position, error)

	// Subscribe starts delivery of room's messages and presence events to
	// the handler. When it returns nil the subscription is live: every
	// message published after that reaches the handler. It returns the
	// room's position read after the subscription went live, starting the
	// room's epoch if the bus holds nothing of it (the epoch is never "").
	Subscribe(ctx context.Context, room string) (Position, error)

	// Unsubscribe stops delivery for room.
	Unsubscribe(ctx context.Context, room string) error

	// History reads a room's history. It writes nothing: for a room the
	// bus holds nothing of it returns an empty result with Position{} (epoch
	// ""); the room's next publish (or Subscribe, Rollover) starts its epoch.
	History(ctx context.Context, room string, req HistoryRequest) (HistoryResult, error)

	// Positions reads the position of each of rooms, in order, in one round
	// trip (Redis: one pipeline, split by slot on a Cluster). It writes
	// nothing: a room the bus holds nothing of reads as Position{} (epoch
	// ""). A node's periodic position check reads all its rooms with it at
	// once; a room whose position differs from what it delivered then reads
	// History for itself.
	Positions(ctx context.Context, rooms []string) ([]Position, error)

	// AddPresence records m as present in room and announces member_joined
	// to every subscriber. RemovePresence undoes it and announces member_left.
	AddPresence(ctx context.Context, room string, m Member) error
	RemovePresence(ctx context.Context, room string, m Member) error
	// Presence lists the room's members on every live node.
	Presence(ctx context.Context, room string) ([]Member, error)

	// Stats returns counters for /debug/stats.
	Stats() Stats

	// Close stops every goroutine of the broker and releases its connections.
	Close() error
}

// Stats counts what a broker did since it started.
type Stats struct {
	Kind        string `json:"kind"` // "memory" or "redis"
	Up          bool   `json:"up"`
	Publishes   uint64 `json:"publishes"`
	Deliveries  uint64 `json:"deliveries"` // messages handed to the handler
	Resyncs     uint64 `json:"resyncs"`
	Errors      uint64 `json:"errors"`
	Subscribed  int    `json:"subscribed_rooms"`
	Reconnects  uint64 `json:"reconnects"`
	LastErrorAt int64  `json:"last_error_unix_ms,omitempty"`
}

// ErrUnavailable is wrapped by every error that means "the bus cannot be
// reached now"; clients see it as error code "unavailable".
var ErrUnavailable = errors.New("relay: bus unavailable")

// Defaults shared by the brokers.
const (
	DefaultHistorySize = 1000           // messages kept per room
	DefaultHistoryTTL  = 24 * time.Hour // a room idle this long forgets its history (new epoch)
	// DefaultHistoryMaxBytes caps the stored size of one room's history;
	// the oldest messages go first (the newest is always kept).
	DefaultHistoryMaxBytes = 1 << 20
	// DefaultIdempotencyWindow is how long a message's IdemKey is
	// remembered: a retry within it is answered as a repeat.
	DefaultIdempotencyWindow = 10 * time.Minute
)

// rolledBack reports whether a bus holding a room at (epoch, seq) went back
// in time relative to known, the position a node delivered: same epoch,
// lower seq. One place for the rule both brokers apply (the Redis scripts
// apply the same comparison).
func rolledBack(epoch string, seq uint64, known Position) bool {
	return known.Epoch != "" && epoch == known.Epoch && seq < known.Seq
}
