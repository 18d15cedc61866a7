// Package relaytest injects faults into a relay.Broker for tests. Broker
// wraps any relay.Broker (the memory broker in unit tests, a Redis broker in
// integration tests) and can fail calls before they reach the bus, lose
// their replies after they took effect, stall them, drop or duplicate
// deliveries, and fire resync and bus state events, so the production
// brokers carry no test hooks.
//
// # Ownership
//
// A Broker has no goroutines of its own. Its hooks run on the goroutine of
// the call they intercept (Before/After) or of the wrapped broker's delivery
// (the delivery filter: for the memory broker under its lock). Its fields are
// guarded by one mutex, never held while calling the wrapped broker, a hook
// or the handler.
package relaytest

import (
	"context"
	"fmt"
	"sync"

	"parley/relay"
)

// Op names a Broker call, as the hooks see it.
type Op string

// The calls a hook can intercept.
const (
	OpPublish        Op = "publish" // Publish and PublishBatch
	OpRollover       Op = "rollover"
	OpSubscribe      Op = "subscribe"
	OpUnsubscribe    Op = "unsubscribe"
	OpHistory        Op = "history"
	OpPositions      Op = "positions" // hooks run once per room of the call
	OpAddPresence    Op = "add presence"
	OpRemovePresence Op = "remove presence"
	OpPresence       Op = "presence"
)

// Hook decides the fate of one call. It runs on the caller's goroutine and
// may block (a stall), best until ctx is done. A non-nil error fails the
// call with that error; wrap relay.ErrUnavailable to look like the bus.
type Hook func(ctx context.Context, op Op, room string) error

// Broker is a relay.Broker that forwards to another one, with faults.
type Broker struct {
	inner relay.Broker

	mu          sync.Mutex // guards following
	handler     relay.Handler
	unavailable bool
	before      Hook
	after       Hook
	filter      func(relay.Message) int
	down        bool // the last SetState reported the bus down
}

var (
	_ relay.Broker  = (*Broker)(nil)
	_ relay.Handler = (*Broker)(nil)
)

// Wrap returns a Broker forwarding to inner. Install the handler on the
// wrapper (SetHandler), not on inner.
func Wrap(inner relay.Broker) *Broker {
	return &Broker{inner: inner}
}

// Inner returns the wrapped broker.
func (b *Broker) Inner() relay.Broker { return b.inner }

// SetUnavailable makes every call fail with an error wrapping
// relay.ErrUnavailable before it reaches the wrapped broker (on), or lets
// calls through again (off). It reports nothing to the handler; see
// SetState.
func (b *Broker) SetUnavailable(on bool) {
	b.mu.Lock()
	b.unavailable = on
	b.mu.Unlock()
}

// Before installs h (nil: none) to run before each call reaches the wrapped
// broker: an error fails the call, which then never reached the bus.
func (b *Broker) Before(h Hook) {
	b.mu.Lock()
	b.before = h
	b.mu.Unlock()
}

// After installs h (nil: none) to run after a call succeeded on the wrapped
// broker and before it returns: an error replaces the result, so the call
// took effect but its caller is told it failed — a lost reply, as after a
// timeout. Blocking in h stalls the reply (mid-batch: the messages are
// already published and delivered).
func (b *Broker) After(h Hook) {
	b.mu.Lock()
	b.after = h
	b.mu.Unlock()
}

// SetDeliveryFilter installs f (nil: deliver once): it returns how many
// times a delivered message is handed on to the handler — 0 drops it (a gap
// for the subscriber), 2 duplicates it.
func (b *Broker) SetDeliveryFilter(f func(relay.Message) int) {
	b.mu.Lock()
	b.filter = f
	b.mu.Unlock()
}

// Resync tells the handler the subscription was re-established, as a
// broker does after a reconnect.
func (b *Broker) Resync() {
	if h := b.handlerOf(); h != nil {
		h.HandleResync()
	}
}

// SetState reports a bus transition to the handler (err != nil: down, nil:
// up); Stats().Up follows it.
func (b *Broker) SetState(err error) {
	b.mu.Lock()
	b.down = err != nil
	h := b.handler
	b.mu.Unlock()
	if h != nil {
		h.HandleState(err)
	}
}

func (b *Broker) handlerOf() relay.Handler {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.handler
}

// enter runs the unavailable switch and the Before hook.
func (b *Broker) enter(ctx context.Context, op Op, room string) error {
	b.mu.Lock()
	unavailable, h := b.unavailable, b.before
	b.mu.Unlock()
	if unavailable {
		return fmt.Errorf("relaytest: %s %q: %w", op, room, relay.ErrUnavailable)
	}
	if h != nil {
		return h(ctx, op, room)
	}
	return nil
}

// leave runs the After hook for a call that succeeded.
func (b *Broker) leave(ctx context.Context, op Op, room string, err error) error {
	if err != nil {
		return err
	}
	b.mu.Lock()
	h := b.after
	b.mu.Unlock()
	if h != nil {
		return h(ctx, op, room)
	}
	return nil
}

// SetHandler installs h as the handler; the wrapper sits between the
// wrapped broker and h.
func (b *Broker) SetHandler(h relay.Handler) {
	b.mu.Lock()
	b.handler = h
	b.mu.Unlock()
	b.inner.SetHandler(b)
}

// Publish forwards to the wrapped broker, with faults.
func (b *Broker) Publish(ctx context.Context, m relay.Message) (relay.Position, error) {
	if err := b.enter(ctx, OpPublish, m.Room); err != nil {
		return relay.Position{}, err
	}
	p, err := b.inner.Publish(ctx, m)
	if err = b.leave(ctx, OpPublish, m.Room, err); err != nil {
		return relay.Position{}, err
	}
	return p, nil
}

// PublishBatch forwards to the wrapped broker, with faults.
func (b *Broker) PublishBatch(ctx context.Context, room string, known relay.Position, msgs []relay.Message) ([]relay.Position, error) {
	if err := b.enter(ctx, OpPublish, room); err != nil {
		return nil, err
	}
	ps, err := b.inner.PublishBatch(ctx, room, known, msgs)
	if err = b.leave(ctx, OpPublish, room, err); err != nil {
		return nil, err
	}
	return ps, nil
}

// Rollover forwards to the wrapped broker, with faults.
func (b *Broker) Rollover(ctx context.Context, room string, known relay.Position) (relay.Position, error) {
	if err := b.enter(ctx, OpRollover, room); err != nil {
		return relay.Position{}, err
	}
	p, err := b.inner.Rollover(ctx, room, known)
	if err = b.leave(ctx, OpRollover, room, err); err != nil {
		return relay.Position{}, err
	}
	return p, nil
}

// Subscribe forwards to the wrapped broker, with faults.
func (b *Broker) Subscribe(ctx context.Context, room string) (relay.Position, error) {
	if err := b.enter(ctx, OpSubscribe, room); err != nil {
		return relay.Position{}, err
	}
	p, err := b.inner.Subscribe(ctx, room)
	if err = b.leave(ctx, OpSubscribe, room, err); err != nil {
		return relay.Position{}, err
	}
	return p, nil
}

// Unsubscribe forwards to the wrapped broker, with faults.
func (b *Broker) Unsubscribe(ctx context.Context, room string) error {
	if err := b.enter(ctx, OpUnsubscribe, room); err != nil {
		return err
	}
	return b.leave(ctx, OpUnsubscribe, room, b.inner.Unsubscribe(ctx, room))
}

// History forwards to the wrapped broker, with faults.
func (b *Broker) History(ctx context.Context, room string, req relay.HistoryRequest) (relay.HistoryResult, error) {
	if err := b.enter(ctx, OpHistory, room); err != nil {
		return relay.HistoryResult{}, err
	}
	hr, err := b.inner.History(ctx, room, req)
	if err = b.leave(ctx, OpHistory, room, err); err != nil {
		return relay.HistoryResult{}, err
	}
	return hr, nil
}

// Positions forwards to the wrapped broker, with faults: the hooks run for
// each room (one that fails fails the call, as one pipeline would).
func (b *Broker) Positions(ctx context.Context, rooms []string) ([]relay.Position, error) {
	for _, room := range rooms {
		if err := b.enter(ctx, OpPositions, room); err != nil {
			return nil, err
		}
	}
	pos, err := b.inner.Positions(ctx, rooms)
	for _, room := range rooms {
		if err = b.leave(ctx, OpPositions, room, err); err != nil {
			return nil, err
		}
	}
	return pos, nil
}

// AddPresence forwards to the wrapped broker, with faults.
func (b *Broker) AddPresence(ctx context.Context, room string, m relay.Member) error {
	if err := b.enter(ctx, OpAddPresence, room); err != nil {
		return err
	}
	return b.leave(ctx, OpAddPresence, room, b.inner.AddPresence(ctx, room, m))
}

// RemovePresence forwards to the wrapped broker, with faults.
func (b *Broker) RemovePresence(ctx context.Context, room string, m relay.Member) error {
	if err := b.enter(ctx, OpRemovePresence, room); err != nil {
		return err
	}
	return b.leave(ctx, OpRemovePresence, room, b.inner.RemovePresence(ctx, room, m))
}

// Presence forwards to the wrapped broker, with faults.
func (b *Broker) Presence(ctx context.Context, room string) ([]relay.Member, error) {
	if err := b.enter(ctx, OpPresence, room); err != nil {
		return nil, err
	}
	ms, err := b.inner.Presence(ctx, room)
	if err = b.leave(ctx, OpPresence, room, err); err != nil {
		return nil, err
	}
	return ms, nil
}

// Stats returns the wrapped broker's counters; Up is false while the
// wrapper is unavailable or SetState reported the bus down.
func (b *Broker) Stats() relay.Stats {
	st := b.inner.Stats()
	b.mu.Lock()
	if b.unavailable || b.down {
		st.Up = false
	}
	b.mu.Unlock()
	return st
}

// Close closes the wrapped broker.
func (b *Broker) Close() error { return b.inner.Close() }

// HandleMessage passes a delivery of the wrapped broker on to the handler
// through the delivery filter.
func (b *Broker) HandleMessage(m relay.Message) {
	b.mu.Lock()
	h, f := b.handler, b.filter
	b.mu.Unlock()
	if h == nil {
		return
	}
	n := 1
	if f != nil {
		n = f(m)
	}
	for range n {
		h.HandleMessage(m)
	}
}

// HandlePresence passes a presence event on to the handler.
func (b *Broker) HandlePresence(e relay.PresenceEvent) {
	if h := b.handlerOf(); h != nil {
		h.HandlePresence(e)
	}
}

// HandleResync passes a resync on to the handler.
func (b *Broker) HandleResync() {
	if h := b.handlerOf(); h != nil {
		h.HandleResync()
	}
}

// HandleState passes a state change on to the handler.
func (b *Broker) HandleState(err error) {
	if h := b.handlerOf(); h != nil {
		h.HandleState(err)
	}
}
