package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/asynkron/protoactor-go/actor"
)

// Cluster-wide control: the server API's "disconnect this user from this
// room" must reach every node that has the user's connections. It travels
// the room's own channel (every node with members in the room is
// subscribed to it), so it needs no subscription of its own. Brokers
// implement Disconnector; a Handler that acts on it implements
// DisconnectHandler (the relay actor's does, and routes it to the room).
// Both are optional interfaces, so other Brokers and Handlers (test
// wrappers, recorders) need not change.

// Disconnector is implemented by brokers that carry disconnects.
type Disconnector interface {
	// Disconnect asks every node subscribed to room (this one included)
	// to close user's connections that are members of room. It returns
	// once the bus took the request; delivery is at most once, like any
	// pub/sub message.
	Disconnect(ctx context.Context, room, user string) error
}

// DisconnectHandler is implemented by Handlers that act on disconnects.
// Like every Handler method it must not block.
type DisconnectHandler interface {
	HandleDisconnect(room, user string)
}

// Disconnect is what the relay actor sends a room actor when the bus
// delivers a disconnect for its room.
type Disconnect struct {
	Room string
	User string
}

// actorBrokerDisconnect is the relay actor's own message for a disconnect.
type actorBrokerDisconnect struct{ room, user string }

// HandleDisconnect posts a disconnect to the relay actor.
func (h *actorHandler) HandleDisconnect(room, user string) {
	h.root.Send(h.pid, &actorBrokerDisconnect{room: room, user: user})
}

// routeDisconnect hands a disconnect to the room's actor, if it has one.
func (a *relayActor) routeDisconnect(ctx actor.Context, d *actorBrokerDisconnect) {
	if r := a.rooms[d.room]; r != nil && r.want != nil {
		ctx.Send(r.want, &Disconnect{Room: d.room, User: d.user})
	}
}

// Disconnect delivers a disconnect to the handler if the room is
// subscribed: one node, so "every node" is this one.
func (m *Memory) Disconnect(ctx context.Context, room, user string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("relay: memory disconnect %q: %w: %w", room, ErrUnavailable, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.memCheckLocked("disconnect", room); err != nil {
		return err
	}
	if _, ok := m.subs[room]; ok {
		if h, ok := m.handler.(DisconnectHandler); ok {
			h.HandleDisconnect(room, user)
		}
	}
	return nil
}

// rdsDisconnect is the body of a disconnect payload, "k" + JSON.
type rdsDisconnect struct {
	User string `json:"user"`
}

// Disconnect publishes a disconnect on the room's channel.
func (r *Redis) Disconnect(ctx context.Context, room, user string) error {
	if err := rdsCheckRoom(room); err != nil {
		return err
	}
	if !r.isUp() {
		return r.unavailable("disconnect", room, errors.New("bus is down"))
	}
	b, err := json.Marshal(rdsDisconnect{User: user})
	if err != nil {
		return fmt.Errorf("relay: redis disconnect %q: %w", room, err)
	}
	if err := r.client.Do(ctx, r.pubCmd, rdsChannel(room), "k"+string(b)).Err(); err != nil {
		return r.unavailable("disconnect", room, err)
	}
	return nil
}

// dispatchDisconnect decodes a disconnect payload (after its "k").
func (s *rdsShard) dispatchDisconnect(h Handler, room, body string) {
	dh, ok := h.(DisconnectHandler)
	if !ok {
		return
	}
	var d rdsDisconnect
	if err := json.Unmarshal([]byte(body), &d); err != nil || d.User == "" {
		s.r.log.Warn("bad disconnect payload", "room", room)
		return
	}
	dh.HandleDisconnect(room, d.User)
}

var (
	_ Disconnector      = (*Memory)(nil)
	_ Disconnector      = (*Redis)(nil)
	_ DisconnectHandler = (*actorHandler)(nil)
)
