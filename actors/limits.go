package actors

import (
	"math"
	"strconv"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"golang.org/x/time/rate"

	"parley/netpoll"
	"parley/protocol"
)

// This file holds the node's defences against clients that ask for too
// much, one place each (ARCHITECTURE.md, "Limits"):
//
//   - a connection's frame rate: conn.allowFrame, called first in
//     conn.inbound;
//   - a room's publish queue: room.pubQueueFull, called before a send is
//     queued;
//   - rooms per node and their creation rate: directory.admitRoom, called
//     before a room actor is spawned;
//   - unique names per room: room.nameTaken, called before a member is
//     added.

// Defaults of the limits in Config.
const (
	DefaultMessageRate          = 100 // frames per second per connection
	DefaultRateLimitStrikes     = 20
	DefaultMaxPublishQueue      = 1024
	DefaultMaxPublishQueueBytes = 4 << 20
	DefaultMaxRooms             = 50000
	DefaultRoomCreateRate       = 1000 // rooms per second per node
)

// Limits are the actor-side defences against clients that ask for too
// much; zero values mean the defaults. A node passes them through as they
// are (node.Config.Limits), and cmd/parley has a flag for each.
type Limits struct {
	// MessageRate is the frames per second one connection may send,
	// sustained (0: 100); MessageBurst is how many it may send at once
	// (0: twice MessageRate). A frame over the limit is not served: the
	// client gets error rate_limited with retry_after_ms (a text line on /).
	MessageRate  float64
	MessageBurst int
	// RateLimitStrikes is how many frames a connection may have refused
	// for its rate before it is closed with 1008; one strike is forgiven
	// per second (0: 20).
	RateLimitStrikes int
	// MaxPublishQueue and MaxPublishQueueBytes cap the sends (count, and
	// bytes of text) a room holds while its batch is with the bus
	// (0: 1024 and 4 MiB). Past either, a send is answered unavailable at
	// once: a slow bus costs a bounded heap.
	MaxPublishQueue      int
	MaxPublishQueueBytes int
	// MaxRooms caps the rooms open on this node (0: 50,000); RoomCreateRate
	// caps how many may be opened per second (0: 1000, burst as many). A
	// join that would open one more gets error room_limit.
	MaxRooms       int
	RoomCreateRate float64
	// PresenceEventsMaxMembers: in a room with more members than this on
	// this node, member_joined/member_left are off (0: 1000), so a join
	// storm costs O(1) frames per member, not O(members): presence_gate.go.
	PresenceEventsMaxMembers int
}

// strikeForgiveness is how often one rate-limit strike is forgiven.
const strikeForgiveness = time.Second

// inboundLimit is one connection's rate limit: a token bucket for the
// frames it sends, and one for the frames it may have refused before it is
// closed. Allocated on the connection's first frame, so an idle connection
// that never sent one does not pay for it; 32 bytes (two x/time/rate
// Limiters were ~180, with a mutex the actor does not need). Owned by the
// connection actor.
type inboundLimit struct {
	frames  bucket
	strikes bucket
}

// bucket is a token bucket with the semantics of x/time/rate's AllowN(now,
// 1): it refills at a rate per second up to a burst, starts full, and takes
// one token per event allowed. The rate and burst are passed on each call,
// so a bucket is two words. Not safe for concurrent use.
type bucket struct {
	tokens float64 // at last
	last   int64   // monotonic nanoseconds (monoNow) of the last change
}

// monoBase anchors monoNow.
var monoBase = time.Now()

// monoNow is monotonic time in nanoseconds, for buckets.
func monoNow() int64 { return int64(time.Since(monoBase)) }

// fullBucket is a bucket holding burst tokens at now.
func fullBucket(burst int, now int64) bucket { return bucket{tokens: float64(burst), last: now} }

// tokensAt is how many tokens the bucket holds at now.
func (b *bucket) tokensAt(now int64, perSecond float64, burst int) float64 {
	elapsed := max(now-b.last, 0)
	return min(b.tokens+float64(elapsed)/float64(time.Second)*perSecond, float64(burst))
}

// allow takes a token at now if there is one, and reports whether it did.
// An infinite rate allows everything.
func (b *bucket) allow(now int64, perSecond float64, burst int) bool {
	if math.IsInf(perSecond, 1) {
		return true
	}
	t := b.tokensAt(now, perSecond, burst) - 1
	if t < 0 {
		return false
	}
	b.tokens, b.last = t, now
	return true
}

// allowFrame decides whether the connection may be served one more frame
// now. A refused frame is answered (error rate_limited with retry_after_ms
// on /ws, a text line on /), and a connection that collects more than
// RateLimitStrikes refusals (one forgiven per second) is closed with 1008.
// It reports whether the frame may be served.
func (c *conn) allowFrame(ctx actor.Context, payload []byte) bool {
	cfg := &c.s.cfg
	now := monoNow()
	if c.limit == nil {
		c.limit = &inboundLimit{frames: fullBucket(cfg.MessageBurst, now), strikes: fullBucket(cfg.RateLimitStrikes, now)}
	}
	if c.limit.frames.allow(now, cfg.MessageRate, cfg.MessageBurst) {
		return true
	}
	if !c.limit.strikes.allow(now, 1/strikeForgiveness.Seconds(), cfg.RateLimitStrikes) {
		c.close(ctx, closePolicy, "rate limit exceeded")
		return false
	}
	wait := (1 - c.limit.frames.tokensAt(now, cfg.MessageRate, cfg.MessageBurst)) / cfg.MessageRate // seconds until one token
	ms := int64(math.Ceil(wait * 1000))
	if c.plain {
		c.s.count.refused.add(protocol.CodeRateLimited)
		c.enqueue(ctx, netpoll.TextFrame([]byte("error: message not sent: rate limited, retry after "+strconv.FormatInt(ms, 10)+" ms")))
		return false
	}
	e := protocol.Errorf(protocol.CodeRateLimited, protocol.PeekID(payload),
		"more than %g frames per second: frame not served", cfg.MessageRate)
	e.RetryAfterMS = ms
	c.replyErr(ctx, e)
	return false
}

// valid reports whether no limit is negative (or not a number).
func (cfg *Limits) valid() bool {
	return cfg.MessageRate >= 0 && cfg.MessageBurst >= 0 && cfg.RateLimitStrikes >= 0 &&
		cfg.MaxPublishQueue >= 0 && cfg.MaxPublishQueueBytes >= 0 && cfg.MaxRooms >= 0 && cfg.RoomCreateRate >= 0 &&
		cfg.PresenceEventsMaxMembers >= 0
}

// setLimitDefaults fills the zero limits with their defaults.
func (cfg *Limits) setLimitDefaults() {
	if cfg.PresenceEventsMaxMembers == 0 {
		cfg.PresenceEventsMaxMembers = DefaultPresenceEventsMaxMembers
	}
	if cfg.MessageRate == 0 {
		cfg.MessageRate = DefaultMessageRate
	}
	if cfg.MessageBurst == 0 {
		cfg.MessageBurst = max(1, int(math.Ceil(2*cfg.MessageRate)))
	}
	if cfg.RateLimitStrikes == 0 {
		cfg.RateLimitStrikes = DefaultRateLimitStrikes
	}
	if cfg.MaxPublishQueue == 0 {
		cfg.MaxPublishQueue = DefaultMaxPublishQueue
	}
	if cfg.MaxPublishQueueBytes == 0 {
		cfg.MaxPublishQueueBytes = DefaultMaxPublishQueueBytes
	}
	if cfg.MaxRooms == 0 {
		cfg.MaxRooms = DefaultMaxRooms
	}
	if cfg.RoomCreateRate == 0 {
		cfg.RoomCreateRate = DefaultRoomCreateRate
	}
}

// pubQueueFull reports whether op would take the room's queue past
// MaxPublishQueue sends or MaxPublishQueueBytes bytes of text. Sends pile up
// only while a batch is with the bus, so this bounds what a slow or stalled
// bus costs: the sender is told unavailable at once instead (queueFull).
func (r *room) pubQueueFull(op *roomOp) bool {
	cfg := &r.s.cfg
	return r.queued >= cfg.MaxPublishQueue || r.queuedB+len(op.text) > cfg.MaxPublishQueueBytes
}

// queueFull refuses a send the room's queue has no room for.
func (r *room) queueFull(op *roomOp) {
	r.s.count.pubErrors.Add(1)
	if i, ok := r.byConn.find(r.members, op.conn.Id); ok && r.members[i].plain {
		r.s.count.refused.add(protocol.CodeUnavailable)
		_ = op.out.send(netpoll.TextFrame([]byte("error: message not sent: the room's publish queue is full (the bus is slow)")))
		return
	}
	_ = op.out.send(r.s.errFrame(protocol.Errorf(protocol.CodeUnavailable, op.id,
		"message not sent: the room's publish queue is full (the bus is slow): retry later")))
}

// newCreateLimiter is the directory's room creation bucket: perSecond
// rooms a second, and as many at once.
func newCreateLimiter(perSecond float64) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(perSecond), max(1, int(math.Ceil(perSecond))))
}

// admitRoom decides whether a join may open a new room on this node: no
// more than MaxRooms at once, no faster than RoomCreateRate. A refusal is
// the error room_limit (with retry_after_ms for the rate).
func (d *directory) admitRoom(op *roomOp) *protocol.Error {
	cfg := &d.s.cfg
	if len(d.rooms) >= cfg.MaxRooms {
		return protocol.Errorf(protocol.CodeRoomLimit, op.id,
			"this node holds %d rooms, its limit: try again later", cfg.MaxRooms)
	}
	now := time.Now()
	if !d.create.AllowN(now, 1) {
		e := protocol.Errorf(protocol.CodeRoomLimit, op.id,
			"rooms are being opened faster than %g per second on this node: try again later", cfg.RoomCreateRate)
		e.RetryAfterMS = int64(math.Ceil((1 - d.create.TokensAt(now)) / cfg.RoomCreateRate * 1000))
		return e
	}
	return nil
}

// nameTaken reports whether another member of the room has name. Names
// are unique per room at any moment, so a second "alice" is refused
// (name_taken) while the first is there; the same connection joining
// again is not a second member.
func (r *room) nameTaken(op *roomOp) bool {
	if op.user != "" {
		// With token auth the token names the user: the same user may be
		// in a room twice (two tabs); names are the issuer's business.
		return false
	}
	i, ok := r.byName.find(r.members, op.name)
	return ok && !r.members[i].sess.pid.Equal(op.conn)
}
