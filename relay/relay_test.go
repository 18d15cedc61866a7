package relay_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"parley/relay"
	"parley/relay/relaytest"
)

func actorTestSystem(t *testing.T) *actor.ActorSystem {
	t.Helper()
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}))
	t.Cleanup(sys.Shutdown)
	return sys
}

// actorProbe spawns an actor that forwards every user message to a channel.
func actorProbe(t *testing.T, sys *actor.ActorSystem) (*actor.PID, chan any) {
	ch := make(chan any, 100)
	pid := sys.Root.Spawn(actor.PropsFromFunc(func(ctx actor.Context) {
		switch ctx.Message().(type) {
		case *actor.Started, *actor.Stopping, *actor.Stopped:
		default:
			ch <- ctx.Message()
		}
	}))
	t.Cleanup(func() { _ = sys.Root.StopFuture(pid).Wait() })
	return pid, ch
}

func actorExpect[T any](t *testing.T, ch chan any) T {
	t.Helper()
	select {
	case m := <-ch:
		v, ok := m.(T)
		if !ok {
			t.Fatalf("got %T %+v, want %T", m, m, v)
		}
		return v
	case <-time.After(5 * time.Second):
		var v T
		t.Fatalf("timeout waiting for %T", v)
		return v
	}
}

func TestRelayActorRouting(t *testing.T) {
	sys := actorTestSystem(t)
	b := relaytest.Wrap(relay.NewMemory(relay.MemoryConfig{}))
	pid, err := relay.Spawn(sys.Root, relay.ActorConfig{Broker: b})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sys.Root.PoisonFuture(pid).Wait() })
	room, ch := actorProbe(t, sys)
	ctx := context.Background()
	if _, err := b.Publish(ctx, relay.Message{Room: "r", Text: "before"}); err != nil {
		t.Fatal(err)
	}

	sys.Root.Send(pid, &relay.Subscribe{Room: "r", PID: room})
	sub := actorExpect[*relay.Subscribed](t, ch)
	if sub.Err != nil || sub.Position.Seq != 1 {
		t.Fatalf("subscribed: %+v", sub)
	}
	if _, err := b.Publish(ctx, relay.Message{Room: "r", Text: "live"}); err != nil {
		t.Fatal(err)
	}
	if d := actorExpect[*relay.Delivery](t, ch); d.Message.Seq != 2 || d.Message.Text != "live" {
		t.Fatalf("delivery %+v", d)
	}
	if err := b.AddPresence(ctx, "r", relay.Member{Session: "s", Name: "n"}); err != nil {
		t.Fatal(err)
	}
	if p := actorExpect[*relay.PresenceDelivery](t, ch); !p.Event.Joined || p.Event.Member.Name != "n" {
		t.Fatalf("presence %+v", p)
	}
	b.Resync()
	actorExpect[*relay.Resync](t, ch)

	b.SetState(context.DeadlineExceeded)
	res, err := sys.Root.RequestFuture(pid, &relay.GetState{}, 5*time.Second).Result()
	if err != nil || res.(*relay.State).Up {
		t.Fatalf("state after down: %+v %v", res, err)
	}

	// Unsubscribe from a PID that does not own the room is ignored: a
	// message published after it (same sender, so the relay sees it after
	// the unsubscribe) is still delivered.
	sys.Root.Send(pid, &relay.Unsubscribe{Room: "r", PID: sys.NewLocalPID("other")})
	if _, err := b.Publish(ctx, relay.Message{Room: "r", Text: "still"}); err != nil {
		t.Fatal(err)
	}
	if d := actorExpect[*relay.Delivery](t, ch); d.Message.Text != "still" {
		t.Fatalf("delivery after a foreign unsubscribe %+v", d)
	}
	sys.Root.Send(pid, &relay.Unsubscribe{Room: "r", PID: room})
	deadline := time.Now().Add(5 * time.Second)
	for b.Stats().Subscribed != 0 {
		if time.Now().After(deadline) {
			t.Fatal("room still subscribed")
		}
		time.Sleep(time.Millisecond) // polling, not synchronisation
	}
	if _, err := b.Publish(ctx, relay.Message{Room: "r", Text: "after"}); err != nil {
		t.Fatal(err)
	}

	// relay.Subscribe failure is reported, not swallowed.
	b.SetUnavailable(true)
	sys.Root.Send(pid, &relay.Subscribe{Room: "r2", PID: room})
	if sub := actorExpect[*relay.Subscribed](t, ch); sub.Err == nil {
		t.Fatal("want subscribe error")
	}
	b.SetUnavailable(false)
	// The failure is not retried behind the room's back: the next thing the
	// room hears is the answer to its next request.
	sys.Root.Send(pid, &relay.Subscribe{Room: "r3", PID: room})
	if sub := actorExpect[*relay.Subscribed](t, ch); sub.Err != nil || sub.Room != "r3" {
		t.Fatalf("subscribe after the bus came back: %+v", sub)
	}
}
