package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// DefaultTimeout bounds one broker call made by the relay actor.
const DefaultTimeout = 5 * time.Second

// ActorConfig configures the relay actor. Broker is required.
type ActorConfig struct {
	// Broker is the bus. Spawn installs the relay's Handler on it.
	Broker Broker
	// Logger receives subscription failures and bus transitions (nil: discard).
	Logger *slog.Logger
	// Timeout bounds each broker call (0: DefaultTimeout).
	Timeout time.Duration
	// Tasks, if set, counts the transient goroutines that run broker calls,
	// so the owner can wait for them at shutdown.
	Tasks *sync.WaitGroup
}

// Subscribe asks the relay to subscribe Room and route its deliveries to
// PID (the room actor). The relay answers PID with *Subscribed once the
// subscription is live (or failed). A later Subscribe for the same room
// replaces the routing target.
type Subscribe struct {
	Room string
	PID  *actor.PID
}

// Unsubscribe tells the relay that PID no longer owns Room. It is ignored
// if another PID has subscribed the room since.
type Unsubscribe struct {
	Room string
	PID  *actor.PID
}

// Subscribed answers Subscribe: Err is nil and Position is the room's
// position read after the subscription went live, or Err wraps the failure.
type Subscribed struct {
	Room     string
	Position Position
	Err      error
}

// Delivery carries one message of a subscribed room to its room actor.
type Delivery struct {
	Message Message
}

// PresenceDelivery carries one presence event to its room actor.
type PresenceDelivery struct {
	Event PresenceEvent
}

// Resync tells a room actor that deliveries may have been missed: it must
// check its position against history. Sent to every routed room after the
// broker reports HandleResync.
type Resync struct{}

// State is the bus state the relay last heard from HandleState.
type State struct {
	Up  bool
	Err error // the last error reported while down
}

// GetState asks the relay for its State (answered with *State to the sender
// via Respond; use RequestFuture).
type GetState struct{}

// relay actor internals (prefixed "actor" to stay clear of the broker
// implementations in this package).

type actorSubDone struct {
	room  string
	unsub bool
	pos   Position
	err   error
}

type actorBrokerMsg struct{ m Message }
type actorBrokerPresence struct{ e PresenceEvent }
type actorBrokerResync struct{}
type actorBrokerState struct{ err error }

// actorRoom is the relay's view of one room. Owned by the relay actor.
type actorRoom struct {
	want    *actor.PID   // room actor that should receive deliveries (nil: none)
	have    bool         // broker subscription believed live
	busy    bool         // a subscribe/unsubscribe call is in flight
	waiting []*actor.PID // room actors waiting for *Subscribed
}

type relayActor struct {
	cfg   ActorConfig
	log   *slog.Logger
	rooms map[string]*actorRoom
	state State
}

// Spawn validates cfg, spawns the relay actor under root, installs its
// Handler on cfg.Broker and returns its PID. The relay is restarted on a
// panic with its state intact.
func Spawn(root *actor.RootContext, cfg ActorConfig) (*actor.PID, error) {
	if cfg.Broker == nil {
		return nil, errors.New("relay: spawn: Broker is required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	a := &relayActor{cfg: cfg, log: log, rooms: make(map[string]*actorRoom), state: State{Up: true}}
	props := actor.PropsFromProducer(func() actor.Actor { return a },
		actor.WithMailbox(actor.UnboundedLockfree()))
	pid, err := root.SpawnNamed(props, "relay")
	if err != nil {
		return nil, fmt.Errorf("relay: spawn: %w", err)
	}
	cfg.Broker.SetHandler(&actorHandler{root: root, pid: pid})
	return pid, nil
}

// actorHandler implements Handler by posting to the relay's mailbox.
type actorHandler struct {
	root *actor.RootContext
	pid  *actor.PID
}

func (h *actorHandler) HandleMessage(m Message)        { h.root.Send(h.pid, &actorBrokerMsg{m}) }
func (h *actorHandler) HandlePresence(e PresenceEvent) { h.root.Send(h.pid, &actorBrokerPresence{e}) }
func (h *actorHandler) HandleResync()                  { h.root.Send(h.pid, &actorBrokerResync{}) }
func (h *actorHandler) HandleState(err error)          { h.root.Send(h.pid, &actorBrokerState{err}) }

// Receive is the relay actor's message loop.
func (a *relayActor) Receive(ctx actor.Context) {
	switch msg := ctx.Message().(type) {
	case *Subscribe:
		r := a.room(msg.Room)
		r.want = msg.PID
		r.waiting = append(r.waiting, msg.PID)
		a.reconcile(ctx, msg.Room, r)
	case *Unsubscribe:
		r := a.rooms[msg.Room]
		if r == nil || r.want == nil || !r.want.Equal(msg.PID) {
			return
		}
		r.want = nil
		a.reconcile(ctx, msg.Room, r)
	case *actorSubDone:
		a.subDone(ctx, msg)
	case *actorBrokerMsg:
		if r := a.rooms[msg.m.Room]; r != nil && r.want != nil {
			ctx.Send(r.want, &Delivery{Message: msg.m})
		}
	case *actorBrokerPresence:
		if r := a.rooms[msg.e.Room]; r != nil && r.want != nil {
			ctx.Send(r.want, &PresenceDelivery{Event: msg.e})
		}
	case *actorBrokerDisconnect:
		a.routeDisconnect(ctx, msg) // control.go
	case *actorBrokerResync:
		a.log.Info("relay: bus resync: every room checks its position", "rooms", len(a.rooms))
		for _, r := range a.rooms {
			if r.want != nil {
				ctx.Send(r.want, &Resync{})
			}
		}
	case *actorBrokerState:
		if msg.err != nil {
			a.log.Warn("relay: bus down", "err", msg.err)
			a.state = State{Up: false, Err: msg.err}
		} else {
			a.log.Info("relay: bus up")
			a.state = State{Up: true}
		}
	case *GetState:
		if ctx.Sender() != nil {
			s := a.state
			ctx.Respond(&s)
		}
	}
}

func (a *relayActor) room(name string) *actorRoom {
	r := a.rooms[name]
	if r == nil {
		r = &actorRoom{}
		a.rooms[name] = r
	}
	return r
}

// reconcile starts the broker call that moves room toward what is wanted,
// unless one is in flight (it reconciles again when that one is done).
func (a *relayActor) reconcile(ctx actor.Context, name string, r *actorRoom) {
	if r.busy {
		return
	}
	switch {
	case r.want != nil && (len(r.waiting) > 0 || !r.have):
		r.busy = true
		a.call(ctx, name, false)
	case r.want == nil && r.have:
		r.busy = true
		a.call(ctx, name, true)
	case r.want == nil && !r.have:
		delete(a.rooms, name)
	}
}

// call runs one subscribe or unsubscribe on a transient goroutine and
// posts the result back.
func (a *relayActor) call(ctx actor.Context, room string, unsub bool) {
	self, sys := ctx.Self(), ctx.ActorSystem()
	b, timeout := a.cfg.Broker, a.cfg.Timeout
	if a.cfg.Tasks != nil {
		a.cfg.Tasks.Add(1)
	}
	go func() {
		if a.cfg.Tasks != nil {
			defer a.cfg.Tasks.Done()
		}
		cctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		done := &actorSubDone{room: room, unsub: unsub}
		if unsub {
			done.err = b.Unsubscribe(cctx, room)
		} else {
			done.pos, done.err = b.Subscribe(cctx, room)
		}
		sys.Root.Send(self, done)
	}()
}

func (a *relayActor) subDone(ctx actor.Context, d *actorSubDone) {
	r := a.rooms[d.room]
	if r == nil {
		return
	}
	r.busy = false
	if d.unsub {
		if d.err != nil {
			a.log.Warn("relay: unsubscribe failed", "room", d.room, "err", d.err)
		}
		// Either way we stop routing; a failed unsubscribe only costs
		// deliveries that are dropped here.
		r.have = false
	} else {
		waiting := r.waiting
		r.waiting = nil
		var err error
		if d.err != nil {
			err = fmt.Errorf("relay: subscribe %q: %w", d.room, d.err)
			a.log.Warn("relay: subscribe failed", "room", d.room, "err", d.err)
		} else {
			r.have = true
		}
		for _, pid := range waiting {
			// Only the current owner gets the answer; a replaced owner is gone.
			if r.want != nil && pid.Equal(r.want) {
				ctx.Send(pid, &Subscribed{Room: d.room, Position: d.pos, Err: err})
			}
		}
		if err != nil && r.want != nil {
			// The owner was told; it decides whether to ask again.
			r.want = nil
		}
	}
	a.reconcile(ctx, d.room, r)
}
