package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// rdsShard is one subscriber connection: on a single server or Sentinel the
// only one (slot -1, plain SUBSCRIBE); on a Redis Cluster one per slot in
// use (SSUBSCRIBE), because go-redis binds a sharded PubSub to the slot of
// its first channel and resubscribes all channels in one command.
//
// Its goroutine (run) owns the receive side of the current PubSub and is
// the only one that replaces it. After a lost connection it drops the
// PubSub, makes a new one, subscribes every wanted room again and, once all
// are confirmed, calls HandleResync.
type rdsShard struct {
	r    *Redis
	slot int
	quit chan struct{} // closed by stop
	done chan struct{} // closed when run returns

	mu     sync.Mutex             // guards following
	rooms  map[string]*rdsRoomSub // by channel
	ps     *redis.PubSub          // current connection (nil between attempts)
	broken bool                   // counted in Redis.broken
	closed bool
}

// rdsRoomSub is one wanted room of a shard.
type rdsRoomSub struct {
	room  string
	ready chan struct{} // closed at the first subscribe confirmation
}

func (r *Redis) newShard(slot int) *rdsShard {
	s := &rdsShard{r: r, slot: slot, quit: make(chan struct{}), done: make(chan struct{}), rooms: map[string]*rdsRoomSub{}}
	r.wg.Add(1)
	go s.run()
	return s
}

// stop ends the shard's goroutine and closes its connection; it waits for
// the goroutine to return.
func (s *rdsShard) stop() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.done
		return
	}
	s.closed = true
	close(s.quit)
	ps := s.ps
	s.mu.Unlock()
	if ps != nil {
		_ = ps.Close()
	}
	<-s.done
}

func (s *rdsShard) newPubSub(ctx context.Context) *redis.PubSub {
	if s.r.cluster != nil {
		return s.r.cluster.SSubscribe(ctx)
	}
	return s.r.client.Subscribe(ctx)
}

func (s *rdsShard) subscribe(ctx context.Context, ps *redis.PubSub, channels ...string) error {
	if s.r.cluster != nil {
		return ps.SSubscribe(ctx, channels...)
	}
	return ps.Subscribe(ctx, channels...)
}

func (s *rdsShard) unsubscribe(ctx context.Context, ps *redis.PubSub, channels ...string) error {
	if s.r.cluster != nil {
		return ps.SUnsubscribe(ctx, channels...)
	}
	return ps.Unsubscribe(ctx, channels...)
}

func (s *rdsShard) run() {
	defer s.r.wg.Done()
	defer close(s.done)
	const minBackoff = 20 * time.Millisecond
	backoff := minBackoff
	resync := false // true after the first connection was lost
	for {
		wasLive := false
		ps, pending, err := s.connect()
		if err == nil && ps != nil {
			wasLive, err = s.receive(ps, pending, resync)
		}
		s.mu.Lock()
		s.ps = nil
		closed := s.closed
		s.mu.Unlock()
		if ps != nil {
			_ = ps.Close()
		}
		if closed {
			s.setBroken(false, nil)
			return
		}
		if err == nil {
			err = errors.New("connection ended")
		}
		if wasLive {
			backoff = minBackoff
		}
		resync = true
		s.setBroken(true, err)
		select {
		case <-s.quit:
			s.setBroken(false, nil)
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, s.r.cfg.BackoffMax)
	}
}

// setBroken updates the shard's broken flag and the broker state.
func (s *rdsShard) setBroken(b bool, err error) {
	s.mu.Lock()
	changed := s.broken != b
	s.broken = b
	s.mu.Unlock()
	if !changed {
		return
	}
	d := 1
	if b {
		s.r.log.Warn("redis subscriber lost", "slot", s.slot, "err", err)
	} else {
		d = -1
	}
	s.r.setState(nil, d, err)
}

// connect makes a new PubSub and subscribes every wanted room. It returns
// the channels whose confirmation is pending.
func (s *rdsShard) connect() (*redis.PubSub, map[string]bool, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, nil, nil
	}
	ps := s.newPubSub(s.r.ctx)
	s.ps = ps
	pending := make(map[string]bool, len(s.rooms))
	channels := make([]string, 0, len(s.rooms))
	for ch := range s.rooms {
		pending[ch] = true
		channels = append(channels, ch)
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(s.r.ctx, s.r.cfg.IOTimeout)
	defer cancel()
	var err error
	if len(channels) > 0 {
		err = s.subscribe(ctx, ps, channels...)
	} else {
		err = ps.Ping(ctx)
	}
	if err != nil {
		return ps, nil, fmt.Errorf("subscribe: %w", err)
	}
	return ps, pending, nil
}

func rdsIsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// receive reads ps until the connection fails or the shard stops. Pending
// holds the channels subscribed by connect and not yet confirmed; when the
// last is confirmed the shard is live again and, after a loss (resync),
// the handler is told to resync.
func (s *rdsShard) receive(ps *redis.PubSub, pending map[string]bool, resync bool) (live bool, err error) {
	goLive := func() {
		live = true
		s.setBroken(false, nil)
		if resync {
			s.r.nReconnects.Add(1)
			s.r.nResyncs.Add(1)
			s.r.log.Info("redis subscriber resubscribed", "slot", s.slot)
			if h := s.r.handlerOf(); h != nil {
				h.HandleResync()
			}
		}
	}
	if len(pending) == 0 {
		goLive()
	}
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(s.r.ctx, s.r.cfg.PingInterval)
		if err != nil {
			select {
			case <-s.quit:
				return live, nil
			default:
			}
			if rdsIsTimeout(err) && !pinged {
				pinged = true
				ctx, cancel := context.WithTimeout(s.r.ctx, s.r.cfg.IOTimeout)
				err = ps.Ping(ctx)
				cancel()
				if err == nil {
					continue
				}
			}
			return live, err
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Message:
			s.dispatch(m)
		case *redis.Subscription:
			switch m.Kind {
			case "subscribe", "ssubscribe":
				s.confirm(m.Channel)
				if !live && pending[m.Channel] {
					delete(pending, m.Channel)
					if len(pending) == 0 {
						goLive()
					}
				}
			case "sunsubscribe":
				// Redis Cluster unsubscribes a shard channel whose slot
				// moved: reconnect to the new owner if still wanted.
				if s.wants(m.Channel) {
					return live, fmt.Errorf("shard channel %s unsubscribed by the server", m.Channel)
				}
			}
		case *redis.Pong:
		}
	}
}

func (s *rdsShard) wants(channel string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.rooms[channel]
	return ok
}

func (s *rdsShard) confirm(channel string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rs, ok := s.rooms[channel]; ok {
		select {
		case <-rs.ready:
		default:
			close(rs.ready)
		}
	}
}

// dispatch decodes one payload of a room channel and hands it to the
// handler. Payloads: "m<seq> <epoch> <body JSON>" (message), "j<member
// JSON>" (member_joined), "l<member JSON>" (member_left), "k<JSON>"
// (disconnect, control.go).
func (s *rdsShard) dispatch(m *redis.Message) {
	room, ok := rdsRoomOf(m.Channel)
	if !ok || m.Payload == "" || !s.wants(m.Channel) {
		return
	}
	h := s.r.handlerOf()
	if h == nil {
		return
	}
	p := m.Payload
	switch p[0] {
	case 'm':
		seqStr, rest, ok1 := strings.Cut(p[1:], " ")
		epoch, body, ok2 := strings.Cut(rest, " ")
		seq, err := strconv.ParseUint(seqStr, 10, 64)
		if !ok1 || !ok2 || err != nil {
			s.r.log.Warn("bad message payload", "room", room)
			return
		}
		msg, err := rdsDecodeBody(room, seq, epoch, body)
		if err != nil {
			s.r.log.Warn("bad message payload", "room", room, "err", err)
			return
		}
		s.r.nDeliveries.Add(1)
		h.HandleMessage(msg)
	case 'k':
		s.dispatchDisconnect(h, room, p[1:]) // control.go
	case 'j', 'l':
		var mb rdsMember
		if err := json.Unmarshal([]byte(p[1:]), &mb); err != nil {
			s.r.log.Warn("bad presence payload", "room", room, "err", err)
			return
		}
		h.HandlePresence(PresenceEvent{Room: room, Member: Member{Session: mb.Session, Name: mb.Name, Node: mb.Node}, Joined: p[0] == 'j'})
	}
}

// slotOf returns the shard key of room: its cluster slot, or -1.
func (r *Redis) slotOf(room string) int {
	if r.cluster == nil {
		return -1
	}
	return rdsSlot(rdsChannel(room))
}

// Subscribe starts delivery of room. It returns once Redis confirmed the
// subscription, then reads the room's position (starting its epoch if it
// has none, with Rollover). While the bus is down it fails at once with ErrUnavailable.
// Subscribing an already subscribed room just reads the position.
func (r *Redis) Subscribe(ctx context.Context, room string) (Position, error) {
	if err := rdsCheckRoom(room); err != nil {
		return Position{}, err
	}
	if !r.isUp() {
		return Position{}, r.unavailable("subscribe", room, errors.New("bus is down"))
	}
	ch := rdsChannel(room)
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return Position{}, fmt.Errorf("relay: redis subscribe %q: broker closed", room)
	}
	s := r.rooms[room]
	var rs *rdsRoomSub
	var ps *redis.PubSub
	if s == nil {
		slot := r.slotOf(room)
		s = r.shards[slot]
		if s == nil {
			s = r.newShard(slot)
			r.shards[slot] = s
		}
		r.rooms[room] = s
		r.nSubscribed.Store(int64(len(r.rooms)))
		rs = &rdsRoomSub{room: room, ready: make(chan struct{})}
		s.mu.Lock()
		s.rooms[ch] = rs
		ps = s.ps
		s.mu.Unlock()
	} else {
		s.mu.Lock()
		rs = s.rooms[ch]
		s.mu.Unlock()
	}
	r.mu.Unlock()

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.cfg.SubscribeWait)
		defer cancel()
	}
	if ps != nil {
		// On error the shard's goroutine reconnects and subscribes the
		// room with the others; we still wait for the confirmation.
		_ = s.subscribe(ctx, ps, ch)
	}
	select {
	case <-rs.ready:
	case <-ctx.Done():
		_ = r.Unsubscribe(context.Background(), room)
		return Position{}, r.unavailable("subscribe", room, fmt.Errorf("no confirmation: %w", ctx.Err()))
	}
	pos, err := r.Rollover(ctx, room, Position{})
	if err != nil {
		_ = r.Unsubscribe(context.Background(), room)
		return Position{}, err
	}
	return pos, nil
}

// Unsubscribe stops delivery of room. A shard left without rooms is closed.
func (r *Redis) Unsubscribe(ctx context.Context, room string) error {
	ch := rdsChannel(room)
	r.mu.Lock()
	s := r.rooms[room]
	if s == nil {
		r.mu.Unlock()
		return nil
	}
	delete(r.rooms, room)
	r.nSubscribed.Store(int64(len(r.rooms)))
	s.mu.Lock()
	delete(s.rooms, ch)
	empty := len(s.rooms) == 0
	ps := s.ps
	s.mu.Unlock()
	if empty {
		delete(r.shards, s.slot)
	}
	r.mu.Unlock()
	if empty {
		s.stop()
		return nil
	}
	if ps != nil {
		if err := s.unsubscribe(ctx, ps, ch); err != nil {
			// The connection is failing; the reconnect will not include
			// the room any more.
			r.log.Debug("redis unsubscribe", "room", room, "err", err)
		}
	}
	return nil
}
