package relay

import (
	"context"
	"errors"
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
	ID    string // the sender's client-side id (may be empty)
	TS    int64  // unix milliseconds, set by the publishing node
}

// Position is where a room's sequence stands.
type Position struct {
	Seq   uint64 // the last assigned seq (0: nothing published in this epoch)
	Epoch string
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

	// Publish assigns m the room's next seq (m.Seq and m.Epoch are ignored),
	// appends it to history and delivers it to every subscriber of the room,
	// atomically: when Publish returns nil the message is in history and will
	// reach every subscriber. On error nothing was published (or, after a
	// timeout, it is unknown: the error wraps ErrUnavailable either way).
	Publish(ctx context.Context, m Message) (Position, error)

	// Subscribe starts delivery of room's messages and presence events to
	// the handler. When it returns nil the subscription is live: every
	// message published after that reaches the handler. It returns the
	// room's position read after the subscription went live.
	Subscribe(ctx context.Context, room string) (Position, error)

	// Unsubscribe stops delivery for room.
	Unsubscribe(ctx context.Context, room string) error

	// History reads a room's history.
	History(ctx context.Context, room string, req HistoryRequest) (HistoryResult, error)

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

// BatchPublisher is implemented by brokers that publish several messages of
// one room at once (one round trip), with Publish's guarantees for each and
// all or none published. Room actors use it when the broker has it.
type BatchPublisher interface {
	PublishBatch(ctx context.Context, room string, msgs []Message) ([]Position, error)
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
)
